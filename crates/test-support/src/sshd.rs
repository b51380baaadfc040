//! A real OpenSSH `sshd`, hardened like a BOSH stemcell, for transport and
//! provisioning tests.
//!
//! The daemon runs inside a private mount namespace (`unshare -m`) in which
//! copies of `/etc/passwd`, `/etc/group` and `/etc/shadow` that add a `vcap`
//! user (in `bosh_sshers`) are bind-mounted over the host's files, together
//! with a private PAM stack (pam_unix + pam_faillock, `deny=3`, as on a
//! stemcell, with its tally kept in the test directory) and, when sudo is
//! installed, a private `/etc/sudoers.d`. The host's own files and services are
//! never touched.
//!
//! `unshare` and `sh` both `exec`, so the PID we hold is sshd's own: it is
//! stopped by that PID. Readiness is the SSH banner arriving on the port.

use std::fmt::Write as _;
use std::io::{BufRead as _, Read as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The user a stemcell lets in.
pub const USER: &str = "vcap";
/// Its password in the test sshd (a stemcell's default is `c1oudc0w`; the
/// test one differs so that nothing real is ever guessed).
pub const DEFAULT_PASSWORD: &str = "c1oudc0w-test";

/// Ciphers a hardened stemcell allows (no chacha20).
pub const CIPHERS: &str =
    "aes256-gcm@openssh.com,aes128-gcm@openssh.com,aes256-ctr,aes192-ctr,aes128-ctr";
/// MACs a hardened stemcell allows.
pub const MACS: &str = "hmac-sha2-512-etm@openssh.com,hmac-sha2-256-etm@openssh.com,hmac-sha2-512,hmac-sha2-256,umac-128@openssh.com";

/// Errors starting or driving the test sshd.
#[derive(Debug, thiserror::Error)]
pub enum SshdError {
    /// A binary the peer needs is missing.
    #[error("{binary} not found: install Debian's openssh-server (and util-linux) or run .ci/setup.d/10-sshd.sh (or set OPSBAKE_SKIP_PEERS=1 to skip peer tests)")]
    Missing {
        /// The binary.
        binary: String,
    },
    /// A file operation on the test directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A helper command failed.
    #[error("{command} failed: {message}")]
    Command {
        /// The command.
        command: String,
        /// Its output.
        message: String,
    },
    /// sshd did not become ready.
    #[error(
        "sshd on 127.0.0.1:{port} not ready after {after:?}: {reason}; log {log}:\n{log_tail}"
    )]
    NotReady {
        /// The port.
        port: u16,
        /// The deadline.
        after: Duration,
        /// What was last seen.
        reason: String,
        /// The log file.
        log: PathBuf,
        /// The end of the log.
        log_tail: String,
    },
    /// An option cannot be honoured.
    #[error("invalid sshd option: {0}")]
    Invalid(String),
}

fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> SshdError {
    let path = path.into();
    move |source| SshdError::Io { path, source }
}

/// True when peer tests may be skipped (`OPSBAKE_SKIP_PEERS=1`).
pub use crate::skip_peers;

/// `AuthorizedKeysCommand` settings (for tests of IaaS key channels).
#[derive(Debug, Clone)]
pub struct AuthorizedKeysCommand {
    /// The program. sshd refuses it under a world-writable directory such as
    /// `/tmp`: use [`private_script_dir`].
    pub command: PathBuf,
    /// Arguments (sshd tokens like `%u` allowed).
    pub args: String,
    /// The user it runs as (`nobody` if unsure).
    pub user: String,
}

/// How to configure the daemon.
#[derive(Debug, Clone)]
pub struct SshdOptions {
    /// `PasswordAuthentication yes` (vSphere stemcells).
    pub password_auth: bool,
    /// `KbdInteractiveAuthentication yes` (through PAM).
    pub kbd_interactive: bool,
    /// Offer the sftp subsystem (an SCP-only server when false).
    pub sftp: bool,
    /// vcap's password (stored as a SHA-512 crypt hash in the private shadow).
    pub password: String,
    /// Lines for vcap's `~/.ssh/authorized_keys`.
    pub authorized_keys: Vec<String>,
    /// An `AuthorizedKeysCommand`.
    pub authorized_keys_command: Option<AuthorizedKeysCommand>,
    /// Give vcap `sudo` with a password (needs sudo installed).
    pub sudo_with_password: bool,
    /// `MaxAuthTries` (3 on a stemcell).
    pub max_auth_tries: u32,
    /// Extra `sshd_config` lines, written first so they override the
    /// hardened defaults (e.g. `Ciphers aes256-ctr`).
    pub extra_config: Vec<String>,
    /// Generate an ed25519 key for OpenSSH clients (benchmarks) and authorize it.
    pub openssh_client_key: bool,
    /// How long to wait for the banner.
    pub ready_timeout: Duration,
}

impl Default for SshdOptions {
    fn default() -> Self {
        SshdOptions {
            password_auth: false,
            kbd_interactive: false,
            sftp: true,
            password: DEFAULT_PASSWORD.to_string(),
            authorized_keys: Vec::new(),
            authorized_keys_command: None,
            sudo_with_password: false,
            max_auth_tries: 3,
            extra_config: Vec::new(),
            openssh_client_key: false,
            ready_timeout: Duration::from_secs(15),
        }
    }
}

/// A running sshd.
pub struct Sshd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    port: u16,
    uid: u32,
    gid: u32,
    home: PathBuf,
    log: PathBuf,
    host_keys: Vec<String>,
    client_key: Option<PathBuf>,
    restart: Option<Restart>,
}

struct Restart {
    unshare: PathBuf,
    sshd: PathBuf,
    cfg: PathBuf,
    sudo: bool,
    ready_timeout: Duration,
}

fn find(binary: &str, candidates: &[&str]) -> Result<PathBuf, SshdError> {
    for c in candidates {
        let p = Path::new(c);
        if p.exists() {
            return Ok(p.to_path_buf());
        }
    }
    Err(SshdError::Missing {
        binary: binary.to_string(),
    })
}

fn run(cmd: &mut Command) -> Result<String, SshdError> {
    let desc = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| SshdError::Command {
        command: desc.clone(),
        message: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(SshdError::Command {
            command: desc,
            message: format!(
                "{}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn write(path: &Path, contents: &str, mode: u32) -> Result<(), SshdError> {
    std::fs::write(path, contents).map_err(io_err(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err(path))
}

/// A directory for scripts that sshd will run (`AuthorizedKeysCommand`):
/// next to the test binary (under `target/`), not under `/tmp`, created with
/// mode 0755. Every parent must be owned by root and not group/world
/// writable, or sshd refuses the command; that is checked here.
pub fn private_script_dir(name: &str) -> Result<PathBuf, SshdError> {
    let exe = std::env::current_exe().map_err(io_err("current_exe"))?;
    let base = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| SshdError::Invalid(format!("no parent for {}", exe.display())))?;
    let dir = base.join("opsbake-sshd-scripts").join(name);
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let mut p = Some(dir.as_path());
    while let Some(d) = p {
        let md = std::fs::metadata(d).map_err(io_err(d))?;
        if md.uid() != 0 || md.mode() & 0o022 != 0 {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
                .map_err(io_err(d))?;
            let md = std::fs::metadata(d).map_err(io_err(d))?;
            if md.uid() != 0 || md.mode() & 0o022 != 0 {
                return Err(SshdError::Invalid(format!(
                    "{} is not a safe path for sshd (owner {} mode {:o})",
                    d.display(),
                    md.uid(),
                    md.mode()
                )));
            }
        }
        p = d.parent();
    }
    Ok(dir)
}

fn free_id(existing: &str, field: usize, from: u32) -> u32 {
    let used: Vec<u32> = existing
        .lines()
        .filter_map(|l| l.split(':').nth(field)?.parse().ok())
        .collect();
    let mut id = from;
    while used.contains(&id) {
        id += 1;
    }
    id
}

fn pick_port() -> Result<u16, SshdError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io_err("127.0.0.1:0"))?;
    let port = l.local_addr().map_err(io_err("127.0.0.1:0"))?.port();
    Ok(port)
}

/// Read an SSH banner from `addr`, within `timeout`.
pub fn read_banner(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut r = std::io::BufReader::new(&mut s);
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    if line.starts_with("SSH-") {
        Ok(line.trim_end().to_string())
    } else {
        Err(format!("unexpected first line {line:?}"))
    }
}

impl Sshd {
    /// Start a daemon with `opts`. Fails with a clear message when sshd or
    /// unshare is missing.
    pub fn start(opts: SshdOptions) -> Result<Sshd, SshdError> {
        let sshd = find("sshd", &["/usr/sbin/sshd"])?;
        let unshare = find("unshare", &["/usr/bin/unshare", "/bin/unshare"])?;
        let keygen = find("ssh-keygen", &["/usr/bin/ssh-keygen"])?;
        let sftp_server = find(
            "sftp-server",
            &["/usr/lib/openssh/sftp-server", "/usr/libexec/sftp-server"],
        );
        if opts.sftp && sftp_server.is_err() {
            return Err(SshdError::Missing {
                binary: "sftp-server (openssh-sftp-server)".into(),
            });
        }
        if opts.sudo_with_password && !Path::new("/etc/sudoers.d").is_dir() {
            return Err(SshdError::Missing {
                binary: "sudo".into(),
            });
        }

        let dir = tempfile::Builder::new()
            .prefix("opsbake-sshd-")
            .tempdir()
            .map_err(io_err(std::env::temp_dir()))?;
        let d = dir.path().to_path_buf();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).map_err(io_err(&d))?;

        // Host keys.
        let mut host_keys = Vec::new();
        let mut host_key_paths = Vec::new();
        for (t, bits) in [("rsa", "3072"), ("ecdsa", "256"), ("ed25519", "")] {
            let p = d.join(format!("ssh_host_{t}_key"));
            let mut cmd = Command::new(&keygen);
            cmd.args(["-q", "-t", t, "-N", "", "-C", "opsbake-test-host", "-f"])
                .arg(&p);
            if !bits.is_empty() {
                cmd.args(["-b", bits]);
            }
            run(&mut cmd)?;
            let pubp = p.with_extension("pub");
            let pubk = std::fs::read_to_string(&pubp).map_err(io_err(&pubp))?;
            host_keys.push(pubk.trim().to_string());
            host_key_paths.push(p);
        }

        // Users.
        let passwd = std::fs::read_to_string("/etc/passwd").map_err(io_err("/etc/passwd"))?;
        let group = std::fs::read_to_string("/etc/group").map_err(io_err("/etc/group"))?;
        let shadow = std::fs::read_to_string("/etc/shadow").map_err(io_err("/etc/shadow"))?;
        let uid = free_id(&passwd, 2, 1000);
        let gid = free_id(&group, 2, uid);
        let sshers_gid = free_id(&group, 2, gid + 1);
        let home = d.join("home").join(USER);
        let ssh_dir = home.join(".ssh");
        std::fs::create_dir_all(&ssh_dir).map_err(io_err(&ssh_dir))?;
        let hash = run(Command::new("openssl").args([
            "passwd",
            "-6",
            "-salt",
            "opsbaketest",
            &opts.password,
        ]))?;
        let mut passwd = passwd
            .lines()
            .filter(|l| !l.starts_with("vcap:"))
            .collect::<Vec<_>>()
            .join("\n");
        let _ = write!(
            passwd,
            "\n{USER}:x:{uid}:{gid}:opsbake test vcap:{}:/bin/bash\n",
            home.display()
        );
        let mut group = group
            .lines()
            .filter(|l| !l.starts_with("vcap:") && !l.starts_with("bosh_sshers:"))
            .collect::<Vec<_>>()
            .join("\n");
        let _ = write!(
            group,
            "\n{USER}:x:{gid}:\nbosh_sshers:x:{sshers_gid}:{USER}\n"
        );
        let mut shadow = shadow
            .lines()
            .filter(|l| !l.starts_with("vcap:"))
            .collect::<Vec<_>>()
            .join("\n");
        let _ = write!(shadow, "\n{USER}:{}:19000:0:99999:7:::\n", hash.trim());
        let etc = d.join("etc");
        std::fs::create_dir_all(&etc).map_err(io_err(&etc))?;
        write(&etc.join("passwd"), &passwd, 0o644)?;
        write(&etc.join("group"), &group, 0o644)?;
        write(&etc.join("shadow"), &shadow, 0o640)?;

        // PAM: the stemcell's faillock (deny=3), tally kept here.
        let faillock = d.join("faillock");
        std::fs::create_dir_all(&faillock).map_err(io_err(&faillock))?;
        let fl = format!("dir={} deny=3 unlock_time=604800", faillock.display());
        let pam = format!(
            "auth requisite pam_faillock.so preauth {fl}\n\
             auth [success=1 default=bad] pam_unix.so\n\
             auth [default=die] pam_faillock.so authfail {fl}\n\
             auth sufficient pam_faillock.so authsucc {fl}\n\
             auth required pam_deny.so\n\
             account required pam_faillock.so {fl}\n\
             account required pam_unix.so\n\
             password required pam_unix.so sha512\n\
             session required pam_unix.so\n"
        );
        write(&etc.join("pam-stack"), &pam, 0o644)?;
        let sudoers = etc.join("sudoers.d");
        std::fs::create_dir_all(&sudoers).map_err(io_err(&sudoers))?;
        if opts.sudo_with_password {
            write(
                &sudoers.join("opsbake-test"),
                &format!("{USER} ALL=(ALL) ALL\nDefaults:{USER} !lecture\n"),
                0o440,
            )?;
        }

        // Home and keys.
        let mut ak = opts.authorized_keys.join("\n");
        ak.push('\n');
        let mut client_key = None;
        if opts.openssh_client_key {
            let p = d.join("client_ed25519");
            run(Command::new(&keygen)
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "opsbake-bench", "-f"])
                .arg(&p))?;
            let pubp = p.with_extension("pub");
            let pubk = std::fs::read_to_string(&pubp).map_err(io_err(&pubp))?;
            ak.push_str(pubk.trim());
            ak.push('\n');
            let mut kh = String::new();
            for k in &host_keys {
                let mut parts = k.split_whitespace();
                if let (Some(t), Some(b)) = (parts.next(), parts.next()) {
                    let _ = writeln!(kh, "[127.0.0.1]:PORT {t} {b}");
                }
            }
            write(&d.join("known_hosts.in"), &kh, 0o644)?;
            client_key = Some(p);
        }
        write(&ssh_dir.join("authorized_keys"), &ak, 0o600)?;
        chown_tree(&d.join("home"), uid, gid)?;

        let log = d.join("sshd.log");
        let mut sshd_ = Sshd {
            dir,
            child: None,
            port: 0,
            uid,
            gid,
            home,
            log,
            host_keys,
            client_key,
            restart: None,
        };
        let mut last = None;
        for _attempt in 0..3 {
            let port = pick_port()?;
            let cfg = sshd_.config(&opts, port, &host_key_paths, sftp_server.as_ref().ok())?;
            match sshd_.spawn(
                &unshare,
                &sshd,
                &cfg,
                port,
                opts.sudo_with_password,
                opts.ready_timeout,
            ) {
                Ok(()) => {
                    sshd_.port = port;
                    sshd_.restart = Some(Restart {
                        unshare: unshare.clone(),
                        sshd: sshd.clone(),
                        cfg: cfg.clone(),
                        sudo: opts.sudo_with_password,
                        ready_timeout: opts.ready_timeout,
                    });
                    if let Some(_k) = &sshd_.client_key {
                        let kin = sshd_.dir.path().join("known_hosts.in");
                        let kh = std::fs::read_to_string(&kin).map_err(io_err(&kin))?;
                        write(
                            &sshd_.dir.path().join("known_hosts"),
                            &kh.replace("PORT", &port.to_string()),
                            0o644,
                        )?;
                    }
                    return Ok(sshd_);
                }
                Err(e) => {
                    let retry = matches!(&e, SshdError::NotReady { log_tail, .. } if log_tail.contains("Address already in use"));
                    last = Some(e);
                    if !retry {
                        break;
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| SshdError::Invalid("sshd did not start".into())))
    }

    fn config(
        &self,
        opts: &SshdOptions,
        port: u16,
        host_keys: &[PathBuf],
        sftp_server: Option<&PathBuf>,
    ) -> Result<PathBuf, SshdError> {
        let d = self.dir.path();
        let yn = |b: bool| if b { "yes" } else { "no" };
        let mut c = String::new();
        // sshd keeps the first value of a keyword: extra lines go first so
        // that they override the defaults below.
        for l in &opts.extra_config {
            let _ = writeln!(c, "{l}");
        }
        let _ = writeln!(c, "Port {port}\nListenAddress 127.0.0.1");
        for k in host_keys {
            let _ = writeln!(c, "HostKey {}", k.display());
        }
        let _ = writeln!(
            c,
            "PidFile {pid}\n\
             LogLevel VERBOSE\n\
             StrictModes no\n\
             AuthorizedKeysFile .ssh/authorized_keys\n\
             PermitRootLogin no\n\
             DenyUsers root\n\
             AllowGroups bosh_sshers\n\
             MaxAuthTries {mat}\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication {pw}\n\
             KbdInteractiveAuthentication {kbd}\n\
             PermitEmptyPasswords no\n\
             UsePAM yes\n\
             ClientAliveInterval 180\n\
             ClientAliveCountMax 1\n\
             Ciphers {CIPHERS}\n\
             MACs {MACS}\n\
             HostKeyAlgorithms ssh-ed25519,ecdsa-sha2-nistp256,rsa-sha2-512,rsa-sha2-256\n\
             PrintMotd no\n\
             PrintLastLog no\n\
             X11Forwarding no\n\
             AllowTcpForwarding yes\n\
             MaxStartups 100:30:200",
            pid = d.join("sshd.pid").display(),
            mat = opts.max_auth_tries,
            pw = yn(opts.password_auth),
            kbd = yn(opts.kbd_interactive),
        );
        if opts.sftp {
            if let Some(s) = sftp_server {
                let _ = writeln!(c, "Subsystem sftp {}", s.display());
            }
        }
        if let Some(akc) = &opts.authorized_keys_command {
            let _ = writeln!(
                c,
                "AuthorizedKeysCommand {} {}\nAuthorizedKeysCommandUser {}",
                akc.command.display(),
                akc.args,
                akc.user
            );
        }
        let p = d.join("sshd_config");
        write(&p, &c, 0o644)?;
        Ok(p)
    }

    fn spawn(
        &mut self,
        unshare: &Path,
        sshd: &Path,
        cfg: &Path,
        port: u16,
        sudo: bool,
        ready_timeout: Duration,
    ) -> Result<(), SshdError> {
        let d = self.dir.path();
        let etc = d.join("etc");
        std::fs::create_dir_all("/run/sshd").map_err(io_err("/run/sshd"))?;
        let q = |p: &Path| format!("'{}'", p.display());
        let mut script = format!(
            "set -e; mount --bind {p} /etc/passwd; mount --bind {g} /etc/group; mount --bind {s} /etc/shadow; mount --bind {pam} /etc/pam.d/sshd; ",
            p = q(&etc.join("passwd")),
            g = q(&etc.join("group")),
            s = q(&etc.join("shadow")),
            pam = q(&etc.join("pam-stack")),
        );
        if Path::new("/etc/pam.d/sudo").exists() {
            let _ = write!(
                script,
                "mount --bind {} /etc/pam.d/sudo; ",
                q(&etc.join("pam-stack"))
            );
        }
        if sudo || Path::new("/etc/sudoers.d").is_dir() {
            let _ = write!(
                script,
                "mount --bind {} /etc/sudoers.d; ",
                q(&etc.join("sudoers.d"))
            );
        }
        let _ = write!(
            script,
            "exec {} -D -f {} -E {}",
            q(sshd),
            q(cfg),
            q(&self.log)
        );
        let child = Command::new(unshare)
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_err(unshare))?;
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + ready_timeout;
        let mut delay = Duration::from_millis(5);
        let mut reason;
        loop {
            match read_banner(addr, Duration::from_secs(2)) {
                Ok(_) => return Ok(()),
                Err(e) => reason = e,
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(st)) = child.try_wait() {
                    let mut err = String::new();
                    if let Some(mut s) = child.stderr.take() {
                        let _ = s.read_to_string(&mut err);
                    }
                    self.child = None;
                    return Err(SshdError::NotReady {
                        port,
                        after: ready_timeout,
                        reason: format!("sshd exited with {st}: {err}"),
                        log: self.log.clone(),
                        log_tail: self.log_text(),
                    });
                }
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(SshdError::NotReady {
                    port,
                    after: ready_timeout,
                    reason,
                    log: self.log.clone(),
                    log_tail: self.log_text(),
                });
            }
            // Polling interval of a readiness check, bounded by the deadline.
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(100));
        }
    }

    /// Stop sshd and start it again on the same port with the same host
    /// keys and configuration (a VM "reboot" as the transport sees it).
    pub fn restart(&mut self) -> Result<(), SshdError> {
        self.stop();
        let r = self
            .restart
            .as_ref()
            .ok_or_else(|| SshdError::Invalid("sshd was never started".into()))?;
        let (unshare, sshd, cfg, sudo, t) = (
            r.unshare.clone(),
            r.sshd.clone(),
            r.cfg.clone(),
            r.sudo,
            r.ready_timeout,
        );
        // The old listener may linger for a moment: retry until the deadline.
        let deadline = Instant::now() + t;
        loop {
            match self.spawn(&unshare, &sshd, &cfg, self.port, sudo, t) {
                Ok(()) => return Ok(()),
                Err(e)
                    if Instant::now() < deadline
                        && e.to_string().contains("Address already in use") =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The address sshd listens on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// sshd's PID.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// vcap's home directory (on the host's file system).
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The test directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// uid and gid of vcap.
    pub fn ids(&self) -> (u32, u32) {
        (self.uid, self.gid)
    }

    /// The host public keys (OpenSSH format: rsa, ecdsa, ed25519).
    pub fn host_public_keys(&self) -> &[String] {
        &self.host_keys
    }

    /// The ed25519 host public key line.
    pub fn host_ed25519_key(&self) -> Option<&str> {
        self.host_keys
            .iter()
            .find(|k| k.starts_with("ssh-ed25519 "))
            .map(String::as_str)
    }

    /// Replace vcap's `authorized_keys`.
    pub fn set_authorized_keys(&self, lines: &[String]) -> Result<(), SshdError> {
        let p = self.home.join(".ssh/authorized_keys");
        let mut s = lines.join("\n");
        s.push('\n');
        write(&p, &s, 0o600)?;
        chown(&p, self.uid, self.gid)
    }

    /// The log path (`LogLevel VERBOSE`).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Count log lines that contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Arguments for OpenSSH clients (`ssh`, `scp`, `sftp`) that log in as
    /// vcap with the generated client key and check the host key strictly.
    /// Needs [`SshdOptions::openssh_client_key`]. Includes `-o Port` rather
    /// than `-p`/`-P` (they differ between ssh and scp).
    pub fn openssh_args(&self) -> Result<Vec<String>, SshdError> {
        let key = self
            .client_key
            .as_ref()
            .ok_or_else(|| SshdError::Invalid("openssh_client_key was not set".into()))?;
        Ok(vec![
            "-i".into(),
            key.display().to_string(),
            "-o".into(),
            format!("Port={}", self.port),
            "-o".into(),
            format!(
                "UserKnownHostsFile={}",
                self.dir.path().join("known_hosts").display()
            ),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            format!("User={USER}"),
            "-F".into(),
            "/dev/null".into(),
        ])
    }

    /// Stop sshd (SIGTERM to its PID, SIGKILL after 5 s). Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::process::terminate(&mut child, Duration::from_secs(5));
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn chown(p: &Path, uid: u32, gid: u32) -> Result<(), SshdError> {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).map_err(io_err(p))
}

fn chown_tree(p: &Path, uid: u32, gid: u32) -> Result<(), SshdError> {
    chown(p, uid, gid)?;
    let md = std::fs::symlink_metadata(p).map_err(io_err(p))?;
    if md.is_dir() {
        for e in std::fs::read_dir(p).map_err(io_err(p))? {
            let e = e.map_err(io_err(p))?;
            chown_tree(&e.path(), uid, gid)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openssh_client_logs_in_as_vcap() {
        let sshd = Sshd::start(SshdOptions {
            openssh_client_key: true,
            ..Default::default()
        })
        .unwrap();
        let banner = read_banner(sshd.addr(), Duration::from_secs(2)).unwrap();
        assert!(banner.starts_with("SSH-2.0-OpenSSH"), "{banner}");
        let out = Command::new("ssh")
            .args(sshd.openssh_args().unwrap())
            .args(["127.0.0.1", "id -un; id -Gn; pwd"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout} {} log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            sshd.log_text()
        );
        let mut lines = stdout.lines();
        assert_eq!(lines.next(), Some("vcap"));
        assert!(lines.next().unwrap_or_default().contains("bosh_sshers"));
        assert_eq!(lines.next(), Some(sshd.home().to_str().unwrap()));
        assert_eq!(sshd.log_count("Accepted publickey for vcap"), 1);
        // The host's own files are untouched.
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
        assert!(!passwd.contains("opsbake test vcap"));
    }
}

#[cfg(test)]
mod akc_tests {
    use super::*;

    #[test]
    fn authorized_keys_command_outside_tmp() {
        // First start: get a client key generated, then serve it from the command.
        let dir = private_script_dir("akc-test").unwrap();
        let script = dir.join("keys.sh");
        let probe = Sshd::start(SshdOptions {
            openssh_client_key: true,
            ..Default::default()
        })
        .unwrap();
        let args = probe.openssh_args().unwrap();
        let pubkey = std::fs::read_to_string(format!("{}.pub", args[1])).unwrap();
        write(
            &script,
            &format!("#!/bin/sh\n[ \"$1\" = vcap ] && echo '{}'\n", pubkey.trim()),
            0o755,
        )
        .unwrap();
        let sshd = Sshd::start(SshdOptions {
            openssh_client_key: true,
            authorized_keys_command: Some(AuthorizedKeysCommand {
                command: script.clone(),
                args: "%u".into(),
                user: "nobody".into(),
            }),
            ..Default::default()
        })
        .unwrap();
        // vcap's authorized_keys holds only this sshd's own client key; log
        // in with the probe's key, which only the command knows.
        sshd.set_authorized_keys(&[]).unwrap();
        let mut a = sshd.openssh_args().unwrap();
        a[1] = args[1].clone();
        let out = Command::new("ssh")
            .args(&a)
            .args(["127.0.0.1", "id -un"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            sshd.log_text()
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "vcap");
    }
}
