#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Helpers for the comms-ssh integration tests: a hardened sshd with our
//! key installed, options, and a fault-injecting TCP proxy.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opsbake_comms_ssh::{
    Auth, HostKeyPolicy, HostKeyVerifier, KeyKind, KeyPair, SshOptions, Target,
};
use opsbake_test_support::sshd::{Sshd, SshdOptions, USER};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "opsbake_comms_ssh=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

pub fn key() -> KeyPair {
    KeyPair::generate(KeyKind::Ed25519, "opsbake-test").unwrap()
}

/// A started sshd that authorizes `key`, or None when OPSBAKE_SKIP_PEERS=1
/// and sshd is missing.
pub fn sshd_with(key: &KeyPair, mut opts: SshdOptions) -> Sshd {
    opts.authorized_keys.push(key.public_openssh().to_string());
    match Sshd::start(opts) {
        Ok(s) => s,
        Err(e) => panic!("test sshd: {e}"),
    }
}

pub fn target(addr: SocketAddr) -> Target {
    Target {
        host: addr.ip().to_string(),
        port: addr.port(),
        user: USER.to_string(),
    }
}

pub fn pinned(sshd: &Sshd) -> Arc<HostKeyVerifier> {
    HostKeyVerifier::new(HostKeyPolicy::Pin(sshd.host_public_keys().to_vec()))
}

pub fn opts(addr: SocketAddr, key: &KeyPair, hk: Arc<HostKeyVerifier>) -> SshOptions {
    let mut o = SshOptions::new(target(addr), Auth::Key(key.clone()), hk);
    o.login_timeout = Duration::from_secs(20);
    o.attempt_timeout = Duration::from_secs(10);
    o
}

/// Lines of output collected by a sink.
#[derive(Default, Clone)]
pub struct Collected(pub Arc<Mutex<Vec<(opsbake_core::transport::Stream, String)>>>);

impl Collected {
    pub fn sink(&self) -> Arc<dyn opsbake_core::transport::OutputSink> {
        let v = self.0.clone();
        Arc::new(move |s, l: &str| v.lock().unwrap().push((s, l.to_string())))
    }
    pub fn lines(&self, s: opsbake_core::transport::Stream) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|x| x.0 == s)
            .map(|x| x.1.clone())
            .collect()
    }
}

/// A TCP proxy for fault injection in front of a real sshd: it can switch
/// its upstream (a different server answers on the same address, as after a
/// VM was replaced), cut the connection once after N client bytes, or stall
/// (stop forwarding in both directions).
pub struct FaultProxy {
    pub addr: SocketAddr,
    pub upstream: Arc<Mutex<SocketAddr>>,
    pub cut_after: Arc<Mutex<Option<u64>>>,
    pub cuts: Arc<AtomicU64>,
    pub stall: Arc<AtomicBool>,
    pub connections: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let up = Arc::new(Mutex::new(upstream));
        let cut_after = Arc::new(Mutex::new(None));
        let cuts = Arc::new(AtomicU64::new(0));
        let stall = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicU64::new(0));
        let (u2, c2, cu2, s2, n2) = (
            up.clone(),
            cut_after.clone(),
            cuts.clone(),
            stall.clone(),
            connections.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = l.accept().await else {
                    continue;
                };
                let upstream = *u2.lock().unwrap();
                let cut = c2.lock().unwrap().take();
                let (cuts, stall) = (cu2.clone(), s2.clone());
                n2.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.split();
                    let (mut sr, mut sw) = server.split();
                    let up = async {
                        let mut buf = vec![0u8; 64 << 10];
                        let mut total = 0u64;
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            while stall.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            total += n as u64;
                            if let Some(c) = cut {
                                if total >= c {
                                    cuts.fetch_add(1, Ordering::SeqCst);
                                    return;
                                }
                            }
                            if sw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    let down = async {
                        let mut buf = vec![0u8; 64 << 10];
                        loop {
                            let n = match sr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            while stall.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            if cw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    // Either direction ending (or a cut) drops both sockets.
                    tokio::select! { _ = up => {}, _ = down => {} }
                });
            }
        });
        FaultProxy {
            addr,
            upstream: up,
            cut_after,
            cuts,
            stall,
            connections,
            task,
        }
    }
}

pub async fn whoami(t: &opsbake_comms_ssh::SshTransport) -> String {
    use opsbake_core::transport::Transport as _;
    let c = Collected::default();
    let st = t
        .exec(
            opsbake_core::transport::ExecRequest::new("id -un"),
            c.sink(),
        )
        .await
        .unwrap();
    assert!(st.success(), "{st}");
    c.lines(opsbake_core::transport::Stream::Stdout).join("\n")
}
