//! azurite (npm, Azure Blob storage emulator) on 127.0.0.1, for the azure
//! builder's page-blob tests; and a byte-counting TCP proxy that can cut
//! every connection, for the resume-after-cut tests.
//!
//! The server is `node <OPSBAKE_AZURITE>` (the blob server's `main.js`,
//! installed by `.ci/setup.d/36-azurite.sh`) started directly, so that the
//! PID is the server's, with `--inMemoryPersistence --disableTelemetry
//! --skipApiVersionCheck --silent` on a random port. Readiness: an HTTP
//! answer (any status) to `GET /devstoreaccount1?comp=list`. Stopped by PID.
//! Account `devstoreaccount1` with its well-known key, path-style URLs.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The development account.
pub const ACCOUNT: &str = "devstoreaccount1";

/// Errors starting azurite.
#[derive(Debug, thiserror::Error)]
pub enum AzuriteError {
    /// Not installed.
    #[error("azurite not found ({0}): run .ci/setup.d/36-azurite.sh and export OPSBAKE_AZURITE=<dir>/node_modules/azurite/dist/src/blob/main.js (or OPSBAKE_SKIP_PEERS=1)")]
    Missing(String),
    /// A process or socket operation failed.
    #[error("azurite {what}: {source}")]
    Io {
        /// What.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Not ready in time.
    #[error("azurite on 127.0.0.1:{port} not ready after {after:?}:\n{log}")]
    NotReady {
        /// Port.
        port: u16,
        /// Deadline.
        after: Duration,
        /// Its output.
        log: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AzuriteError {
    let what = what.into();
    move |source| AzuriteError::Io { what, source }
}

/// The blob server's `main.js`.
pub fn main_js() -> Result<PathBuf, AzuriteError> {
    match std::env::var_os("OPSBAKE_AZURITE") {
        Some(p) if PathBuf::from(&p).is_file() => Ok(PathBuf::from(p)),
        Some(p) => Err(AzuriteError::Missing(format!(
            "OPSBAKE_AZURITE={} is not a file",
            PathBuf::from(p).display()
        ))),
        None => Err(AzuriteError::Missing("OPSBAKE_AZURITE is not set".into())),
    }
}

/// A running azurite blob server.
pub struct Azurite {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Azurite {
    /// Start it on a random port and wait for an HTTP answer (30 s).
    pub fn start() -> Result<Azurite, AzuriteError> {
        let js = main_js()?;
        let mut last = None;
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("opsbake-azurite-")
                .tempdir()
                .map_err(io("tempdir"))?;
            let port = {
                let l = TcpListener::bind("127.0.0.1:0").map_err(io("bind"))?;
                l.local_addr().map_err(io("local_addr"))?.port()
            };
            let log = dir.path().join("azurite.log");
            let out = std::fs::File::create(&log).map_err(io("log"))?;
            let err = out.try_clone().map_err(io("log"))?;
            let child = Command::new("node")
                .arg(&js)
                .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
                .args([
                    "--inMemoryPersistence",
                    "--disableTelemetry",
                    "--skipApiVersionCheck",
                    "--silent",
                ])
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::from(out))
                .stderr(Stdio::from(err))
                .spawn()
                .map_err(io("spawn node"))?;
            let mut a = Azurite {
                child: Some(child),
                port,
                dir,
            };
            match a.wait_ready(Duration::from_secs(30)) {
                Ok(()) => return Ok(a),
                Err(e) => {
                    a.stop();
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(AzuriteError::Missing("never started".into())))
    }

    fn wait_ready(&mut self, after: Duration) -> Result<(), AzuriteError> {
        let deadline = Instant::now() + after;
        let mut delay = Duration::from_millis(50);
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
            }
            if crate::moto::http(
                self.port,
                "GET",
                &format!("/{ACCOUNT}?comp=list"),
                b"",
                Duration::from_secs(2),
            )
            .is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(500));
        }
        Err(AzuriteError::NotReady {
            port: self.port,
            after,
            log: std::fs::read_to_string(self.dir.path().join("azurite.log")).unwrap_or_default(),
        })
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `http://127.0.0.1:PORT/devstoreaccount1` (the account's blob endpoint).
    pub fn account_url(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    /// The PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A blob's bytes through anonymous read (the container must allow
    /// public read): `None` when it does not exist.
    pub fn get_public(&self, container: &str, blob: &str) -> Option<Vec<u8>> {
        match crate::moto::http(
            self.port,
            "GET",
            &format!("/{ACCOUNT}/{container}/{blob}"),
            b"",
            Duration::from_secs(60),
        ) {
            Ok((200, b)) => Some(b),
            _ => None,
        }
    }

    /// The names in a container with public read (anonymous List Blobs).
    pub fn list_public(&self, container: &str) -> Vec<String> {
        match crate::moto::http(
            self.port,
            "GET",
            &format!("/{ACCOUNT}/{container}?restype=container&comp=list"),
            b"",
            Duration::from_secs(10),
        ) {
            Ok((200, b)) => {
                let text = String::from_utf8_lossy(&b).to_string();
                text.split("<Name>")
                    .skip(1)
                    .filter_map(|s| s.split("</Name>").next())
                    .map(str::to_string)
                    .collect()
            }
            _ => Vec::new(),
        }
    }

    /// Stop it by its PID.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            crate::process::terminate(&mut c, Duration::from_secs(5));
        }
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP proxy on 127.0.0.1 counting the bytes clients send; once
/// [`CutProxy::cut_after`] bytes have passed, it closes every connection and
/// refuses new ones until [`CutProxy::heal`].
pub struct CutProxy {
    addr: SocketAddr,
    sent: Arc<AtomicU64>,
    cut_at: Arc<AtomicU64>,
    cut: Arc<AtomicBool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CutProxy {
    /// Forward 127.0.0.1:random to `target` (loopback only).
    pub fn start(target: SocketAddr) -> Result<CutProxy, AzuriteError> {
        if !target.ip().is_loopback() {
            return Err(AzuriteError::Missing(format!("{target} is not loopback")));
        }
        let std_l = TcpListener::bind("127.0.0.1:0").map_err(io("bind proxy"))?;
        std_l.set_nonblocking(true).map_err(io("nonblocking"))?;
        let addr = std_l.local_addr().map_err(io("local_addr"))?;
        let sent = Arc::new(AtomicU64::new(0));
        let cut_at = Arc::new(AtomicU64::new(u64::MAX));
        let cut = Arc::new(AtomicBool::new(false));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (s2, c2, cut2) = (sent.clone(), cut_at.clone(), cut.clone());
        let thread = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(l) = tokio::net::TcpListener::from_std(std_l) else {
                    return;
                };
                let (kill_tx, _) = tokio::sync::broadcast::channel::<()>(1);
                let accept = async {
                    loop {
                        let Ok((mut inbound, _)) = l.accept().await else {
                            continue;
                        };
                        if cut2.load(Ordering::SeqCst) {
                            drop(inbound);
                            continue;
                        }
                        let (s, c, cut, kill) =
                            (s2.clone(), c2.clone(), cut2.clone(), kill_tx.clone());
                        let mut killed = kill_tx.subscribe();
                        tokio::spawn(async move {
                            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                            let Ok(mut out) = tokio::net::TcpStream::connect(target).await else {
                                return;
                            };
                            let (mut ir, mut iw) = inbound.split();
                            let (mut or, mut ow) = out.split();
                            let up = async {
                                let mut buf = vec![0u8; 64 * 1024];
                                loop {
                                    let n = match ir.read(&mut buf).await {
                                        Ok(0) | Err(_) => return,
                                        Ok(n) => n,
                                    };
                                    let total = s.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
                                    if total >= c.load(Ordering::SeqCst) {
                                        cut.store(true, Ordering::SeqCst);
                                        let _ = kill.send(());
                                        return;
                                    }
                                    if ow.write_all(&buf[..n]).await.is_err() {
                                        return;
                                    }
                                }
                            };
                            let down = tokio::io::copy(&mut or, &mut iw);
                            tokio::select! {
                                _ = up => {}
                                _ = down => {}
                                _ = killed.recv() => {}
                            }
                        });
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stop_rx => {}
                }
            });
        });
        Ok(CutProxy {
            addr,
            sent,
            cut_at,
            cut,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Bytes clients sent so far (requests: headers and bodies).
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    /// Cut everything once `n` more bytes have passed.
    pub fn cut_after(&self, n: u64) {
        self.cut_at.store(self.sent() + n, Ordering::SeqCst);
    }

    /// Whether the cut happened.
    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    /// Accept connections again (no more cut).
    pub fn heal(&self) {
        self.cut_at.store(u64::MAX, Ordering::SeqCst);
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
