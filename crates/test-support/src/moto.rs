//! `moto_server` (PyPI `moto[server]`): EC2, EBS direct APIs and S3 on
//! 127.0.0.1, for the AWS builder's tests.
//!
//! The binary comes from `OPSBAKE_MOTO_SERVER` (set by
//! `.ci/setup.d/30-moto.sh`, a venv cached outside the clone) or `PATH`.
//! The server is started on a random port of 127.0.0.1 with the validation
//! flags on and moto's 1,301 default AMIs off; a base AMI can be seeded
//! through `MOTO_AMIS_PATH`. Readiness is `GET /moto-api/` answering; the
//! server is stopped by its PID (on [`Moto::stop`] or drop).
//!
//! moto's instances never run and its invented addresses (10.x, 54.x) must
//! never be contacted: tests reach "the instance" through an explicit SSH
//! host override pointing at a local sshd.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The account moto answers as.
pub const ACCOUNT: &str = "123456789012";

/// Errors starting or talking to moto.
#[derive(Debug, thiserror::Error)]
pub enum MotoError {
    /// The binary is missing.
    #[error("moto_server not found ({looked}): run .ci/setup.d/30-moto.sh and export OPSBAKE_MOTO_SERVER=<venv>/bin/moto_server (or set OPSBAKE_SKIP_PEERS=1 to skip peer tests)")]
    Missing {
        /// Where we looked.
        looked: String,
    },
    /// A file or process operation failed.
    #[error("moto {what}: {source}")]
    Io {
        /// What was done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The server did not become ready.
    #[error("moto_server on 127.0.0.1:{port} not ready after {after:?}; log {log}:\n{tail}")]
    NotReady {
        /// The port.
        port: u16,
        /// The deadline.
        after: Duration,
        /// The log file.
        log: PathBuf,
        /// The end of the log.
        tail: String,
    },
    /// An HTTP call to moto's own API failed.
    #[error("moto api {path}: {message}")]
    Api {
        /// The path.
        path: String,
        /// What happened.
        message: String,
    },
}

/// An AMI seeded through `MOTO_AMIS_PATH` (EBS-backed, HVM: what a light
/// stemcell points at).
#[derive(Debug, Clone)]
pub struct SeedAmi {
    /// `ami-...` (moto takes the id as given).
    pub ami_id: String,
    /// Name.
    pub name: String,
    /// Root device, e.g. `/dev/sda1`.
    pub root_device_name: String,
}

/// How to start moto.
#[derive(Debug, Clone, Default)]
pub struct MotoOptions {
    /// AMIs to seed (every region gets them). Empty: no AMIs at all.
    pub seed_amis: Vec<SeedAmi>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
}

/// A running moto_server.
pub struct Moto {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

/// The moto_server binary, or why it is missing.
pub fn binary() -> Result<PathBuf, MotoError> {
    if let Some(p) = std::env::var_os("OPSBAKE_MOTO_SERVER") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(MotoError::Missing {
            looked: format!("OPSBAKE_MOTO_SERVER={}", p.display()),
        });
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let c = d.join("moto_server");
            if c.is_file() {
                return Ok(c);
            }
        }
    }
    Err(MotoError::Missing {
        looked: "OPSBAKE_MOTO_SERVER unset, not on PATH".into(),
    })
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> MotoError {
    let what = what.into();
    move |source| MotoError::Io { what, source }
}

fn free_port() -> Result<u16, MotoError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io("bind 127.0.0.1:0"))?;
    Ok(l.local_addr().map_err(io("local_addr"))?.port())
}

/// One HTTP/1.1 request to 127.0.0.1:port; returns (status, body).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(u16, Vec<u8>), std::io::Error> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text_end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP head in the answer"))?;
    let head = String::from_utf8_lossy(&out[..text_end]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    let mut rest = out[text_end + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        rest = dechunk(&rest);
    }
    Ok((status, rest))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(
            String::from_utf8_lossy(&b[..i])
                .split(';')
                .next()
                .unwrap_or("0")
                .trim(),
            16,
        )
        .unwrap_or(0);
        if n == 0 || b.len() < i + 2 + n {
            break;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + n]);
        b = &b[(i + 4 + n).min(b.len())..];
    }
    out
}

fn seed_json(amis: &[SeedAmi]) -> String {
    let items: Vec<String> = amis
        .iter()
        .map(|a| {
            format!(
                r#"{{"ami_id":"{}","name":"{}","description":"opsbake test base image","owner_id":"{ACCOUNT}","public":false,"virtualization_type":"hvm","architecture":"x86_64","state":"available","platform":null,"image_type":"machine","hypervisor":"xen","root_device_name":"{}","root_device_type":"ebs","sriov":"simple"}}"#,
                a.ami_id, a.name, a.root_device_name
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

impl Moto {
    /// Start moto_server on a random port of 127.0.0.1 and wait until
    /// `GET /moto-api/` answers (30 s deadline).
    pub fn start(opts: MotoOptions) -> Result<Moto, MotoError> {
        let bin = binary()?;
        let mut last = None;
        // A port picked free can be taken before moto binds it: try a few.
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("opsbake-moto-")
                .tempdir()
                .map_err(io("tempdir"))?;
            let amis = dir.path().join("amis.json");
            std::fs::write(&amis, seed_json(&opts.seed_amis))
                .map_err(io(format!("write {}", amis.display())))?;
            let log = dir.path().join("moto.log");
            let port = free_port()?;
            let logf =
                std::fs::File::create(&log).map_err(io(format!("create {}", log.display())))?;
            let errf = logf.try_clone().map_err(io("dup log"))?;
            let mut cmd = Command::new(&bin);
            cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .env("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
                .env("MOTO_AMIS_PATH", &amis)
                .env("MOTO_ENABLE_AMI_VALIDATION", "true")
                .env("MOTO_ENABLE_KEYPAIR_VALIDATION", "true")
                .env("AWS_EC2_METADATA_DISABLED", "true")
                .stdin(Stdio::null())
                .stdout(Stdio::from(logf))
                .stderr(Stdio::from(errf));
            for (k, v) in &opts.env {
                cmd.env(k, v);
            }
            let child = cmd
                .spawn()
                .map_err(io(format!("spawn {}", bin.display())))?;
            let mut m = Moto {
                child: Some(child),
                port,
                dir,
            };
            match m.wait_ready(Duration::from_secs(30)) {
                Ok(()) => return Ok(m),
                Err(e) => {
                    m.stop();
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(MotoError::Api {
            path: "/moto-api/".into(),
            message: "never started".into(),
        }))
    }

    fn wait_ready(&mut self, after: Duration) -> Result<(), MotoError> {
        let deadline = Instant::now() + after;
        let mut delay = Duration::from_millis(50);
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
            }
            if let Ok((200, _)) = http(self.port, "GET", "/moto-api/", b"", Duration::from_secs(2))
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(500));
        }
        let log = self.log_path();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: String = text
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        Err(MotoError::NotReady {
            port: self.port,
            after,
            log,
            tail,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The server's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("moto.log")
    }

    /// Its working directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `POST /moto-api/reset`: forget every resource.
    pub fn reset(&self) -> Result<(), MotoError> {
        match http(
            self.port,
            "POST",
            "/moto-api/reset",
            b"",
            Duration::from_secs(10),
        ) {
            Ok((200, _)) => Ok(()),
            Ok((s, b)) => Err(MotoError::Api {
                path: "/moto-api/reset".into(),
                message: format!("HTTP {s}: {}", String::from_utf8_lossy(&b)),
            }),
            Err(e) => Err(MotoError::Api {
                path: "/moto-api/reset".into(),
                message: e.to_string(),
            }),
        }
    }

    /// Stop the server by its PID (SIGTERM, then SIGKILL after 5 s).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            crate::process::terminate(&mut c, Duration::from_secs(5));
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// True when peer tests may be skipped (`OPSBAKE_SKIP_PEERS=1`).
pub use crate::skip_peers;

/// An `AuthorizedKeysCommand` for the test sshd that plays moto's instance:
/// it asks moto (directly, not through a proxy) for the user data of every
/// running instance of `region` (DescribeInstances, then
/// DescribeInstanceAttribute userData) and prints `env.bosh.authorized_keys`
/// of the BOSH agent settings found there, so that a login proves the key
/// travelled through the settings as on AWS. Written with Debian's python3
/// into a directory sshd accepts ([`crate::sshd::private_script_dir`]).
pub fn user_data_keys_command(
    moto: &Moto,
    region: &str,
) -> Result<crate::sshd::AuthorizedKeysCommand, crate::sshd::SshdError> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = crate::sshd::private_script_dir("aws-user-data")?;
    let script = dir.join(format!("keys-{}-{region}", moto.port()));
    let text = format!(
        r#"#!/usr/bin/python3
# Prints env.bosh.authorized_keys of every running instance's user data.
import base64, json, urllib.parse, urllib.request, xml.etree.ElementTree as ET
EP = "{ep}"
def call(**params):
    params.update(Version="2016-11-15")
    body = urllib.parse.urlencode(params).encode()
    req = urllib.request.Request(EP + "/", data=body, headers={{
        "Content-Type": "application/x-www-form-urlencoded",
        "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20260101/{region}/ec2/aws4_request, SignedHeaders=host, Signature=x"}})
    with urllib.request.urlopen(req, timeout=5) as r:
        return ET.fromstring(r.read())
def strip(t):
    return t.split("}}", 1)[-1]
root = call(Action="DescribeInstances")
for item in root.iter():
    if strip(item.tag) != "item":
        continue
    iid = state = None
    for c in item:
        if strip(c.tag) == "instanceId":
            iid = c.text
        if strip(c.tag) == "instanceState":
            for s in c:
                if strip(s.tag) == "name":
                    state = s.text
    if not iid or state != "running":
        continue
    a = call(Action="DescribeInstanceAttribute", InstanceId=iid, Attribute="userData")
    for v in a.iter():
        if strip(v.tag) == "value" and v.text:
            for k in json.loads(base64.b64decode(v.text))["env"]["bosh"]["authorized_keys"]:
                print(k)
"#,
        ep = moto.endpoint(),
    );
    std::fs::write(&script, text).map_err(|source| crate::sshd::SshdError::Io {
        path: script.clone(),
        source,
    })?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).map_err(
        |source| crate::sshd::SshdError::Io {
            path: script.clone(),
            source,
        },
    )?;
    Ok(crate::sshd::AuthorizedKeysCommand {
        command: script,
        args: "%u".into(),
        user: "nobody".into(),
    })
}

/// A hardened test sshd ([`crate::sshd::Sshd`]) that plays moto's instances
/// of `region`: no authorized_keys, only [`user_data_keys_command`].
pub fn instance_sshd(
    moto: &Moto,
    region: &str,
) -> Result<crate::sshd::Sshd, crate::sshd::SshdError> {
    crate::sshd::Sshd::start(crate::sshd::SshdOptions {
        authorized_keys_command: Some(user_data_keys_command(moto, region)?),
        ..crate::sshd::SshdOptions::default()
    })
}
