//! A userspace TCP delay proxy on 127.0.0.1 (the kernel here has no netem).
//!
//! Each chunk read from one side is stamped with its arrival time and written
//! to the other side `one_way` later, so a round trip through the proxy costs
//! `2 * one_way` while throughput is preserved: the reader never waits for the
//! writer (up to [`MAX_IN_FLIGHT`] bytes buffered per direction, a generous
//! bandwidth-delay product), so round trips are not serialised.
//!
//! The proxy runs on its own thread with its own Tokio runtime, so it serves
//! sync and async tests alike, and stops when dropped.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream as TokioStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Bytes that may wait in the proxy per direction of one connection.
pub const MAX_IN_FLIGHT: usize = 64 << 20;
const CHUNK: usize = 256 << 10;

/// Errors starting the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Binding or measuring failed.
    #[error("delay proxy {what}: {source}")]
    Io {
        /// What was done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// A running proxy.
pub struct DelayProxy {
    addr: SocketAddr,
    one_way: Duration,
    /// Each connection accepted, in order.
    links: Arc<Mutex<Vec<Arc<Link>>>>,
    /// After how many client bytes a connection goes silent, by its index
    /// ([`DelayProxy::stall_after`]; read when it is accepted).
    silence: Arc<Mutex<HashMap<usize, u64>>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DelayProxy {
    /// Listen on a random port of 127.0.0.1 and forward every connection to
    /// `target` (which must be on 127.0.0.0/8), delaying each direction by
    /// `one_way`.
    pub fn start(target: SocketAddr, one_way: Duration) -> Result<DelayProxy, ProxyError> {
        DelayProxy::start_limited(target, one_way, usize::MAX)
    }

    /// [`DelayProxy::start`], forwarding only the first `max_connections`
    /// connections: later ones are accepted and closed at once (as a
    /// firewall or `MaxStartups` would refuse them).
    pub fn start_limited(
        target: SocketAddr,
        one_way: Duration,
        max_connections: usize,
    ) -> Result<DelayProxy, ProxyError> {
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").map_err(|source| ProxyError::Io {
                what: "bind 127.0.0.1:0".into(),
                source,
            })?;
        std_listener
            .set_nonblocking(true)
            .map_err(|source| ProxyError::Io {
                what: "set_nonblocking".into(),
                source,
            })?;
        let addr = std_listener.local_addr().map_err(|source| ProxyError::Io {
            what: "local_addr".into(),
            source,
        })?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let links: Arc<Mutex<Vec<Arc<Link>>>> = Arc::default();
        let accepted = links.clone();
        let silence: Arc<Mutex<HashMap<usize, u64>>> = Arc::default();
        let silence_rules = silence.clone();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|source| ProxyError::Io {
                what: "runtime".into(),
                source,
            })?;
        let thread = std::thread::Builder::new()
            .name(format!("delay-proxy-{}", addr.port()))
            .spawn(move || {
                rt.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(std_listener) else {
                        return;
                    };
                    let accept = async {
                        loop {
                            let Ok((client, _)) = listener.accept().await else {
                                continue;
                            };
                            let admitted = match accepted.lock() {
                                Ok(mut c) if c.len() < max_connections => {
                                    let after = silence_rules
                                        .lock()
                                        .ok()
                                        .and_then(|r| r.get(&c.len()).copied())
                                        .unwrap_or(u64::MAX);
                                    let link = Arc::new(Link {
                                        sent: AtomicU64::new(0),
                                        silent_after: AtomicU64::new(after),
                                        silent: AtomicBool::new(false),
                                    });
                                    c.push(link.clone());
                                    Some(link)
                                }
                                _ => None,
                            };
                            let Some(link) = admitted else {
                                drop(client);
                                continue;
                            };
                            tokio::spawn(async move {
                                let Ok(server) = TokioStream::connect(target).await else {
                                    return;
                                };
                                let _ = client.set_nodelay(true);
                                let _ = server.set_nodelay(true);
                                let (cr, cw) = client.into_split();
                                let (sr, sw) = server.into_split();
                                let a = tokio::spawn(pump(cr, sw, one_way, link.clone(), true));
                                let b = tokio::spawn(pump(sr, cw, one_way, link, false));
                                let _ = a.await;
                                let _ = b.await;
                            });
                        }
                    };
                    tokio::select! {
                        _ = accept => {}
                        _ = stop_rx => {}
                    }
                });
                rt.shutdown_background();
            })
            .map_err(|source| ProxyError::Io {
                what: "spawn thread".into(),
                source,
            })?;
        Ok(DelayProxy {
            addr,
            one_way,
            links,
            silence,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Bytes each forwarded connection sent from the client to the server,
    /// in the order they were accepted.
    pub fn client_bytes(&self) -> Vec<u64> {
        self.links
            .lock()
            .map(|v| v.iter().map(|l| l.sent.load(Ordering::Relaxed)).collect())
            .unwrap_or_default()
    }

    /// Connection `connection`, once accepted.
    fn link(&self, connection: usize) -> Option<Arc<Link>> {
        self.links.lock().ok()?.get(connection).cloned()
    }

    /// The configured one-way delay (RTT is twice this).
    pub fn one_way(&self) -> Duration {
        self.one_way
    }

    /// From the moment connection `connection` (0-based, in the order
    /// accepted; it may not exist yet) has carried `bytes` from the client,
    /// the proxy drops everything it reads on it, both ways, and keeps both
    /// sockets open: a link gone silent (no FIN, no RST), as behind a dead
    /// NAT or a pulled cable. Only a keepalive or a timeout notices.
    pub fn stall_after(&self, connection: usize, bytes: u64) {
        if let Ok(mut r) = self.silence.lock() {
            r.insert(connection, bytes);
        }
        if let Some(l) = self.link(connection) {
            l.silent_after.store(bytes, Ordering::SeqCst);
        }
    }

    /// Whether connection `connection` has gone silent.
    pub fn stalled(&self, connection: usize) -> bool {
        self.link(connection)
            .is_some_and(|l| l.silent.load(Ordering::SeqCst))
    }
}

/// One forwarded connection: its client-to-server bytes, and from how many
/// of them on it is silent (`u64::MAX`: never).
#[derive(Debug)]
struct Link {
    sent: AtomicU64,
    silent_after: AtomicU64,
    silent: AtomicBool,
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    link: Arc<Link>,
    from_client: bool,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Option<Vec<u8>>)>();
    let budget = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let budget_w = budget.clone();
    let writer = tokio::spawn(async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
            match chunk {
                Some(c) => {
                    let n = c.len();
                    if w.write_all(&c).await.is_err() {
                        return;
                    }
                    budget_w.add_permits(n);
                }
                None => {
                    let _ = w.shutdown().await;
                    return;
                }
            }
        }
    });
    loop {
        // Read into a buffer of its own that is handed on as it is (no
        // copy): the proxy shares the machine's CPUs with what it measures.
        let mut buf = Vec::with_capacity(CHUNK);
        let n = match r.read_buf(&mut buf).await {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        let due = Instant::now() + delay;
        if n == 0 {
            let _ = tx.send((due, None));
            break;
        }
        if from_client {
            let total = link.sent.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
            if total >= link.silent_after.load(Ordering::SeqCst) {
                link.silent.store(true, Ordering::SeqCst);
            }
        }
        if link.silent.load(Ordering::SeqCst) {
            // Silent: read and dropped, never forwarded, never closed.
            continue;
        }
        let Ok(permit) = budget.acquire_many(n as u32).await else {
            break;
        };
        permit.forget();
        if tx.send((due, Some(buf))).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// What [`measure`] saw through a proxy.
#[derive(Debug, Clone)]
pub struct ProxyFigures {
    /// Median round trip of a 1-byte ping-pong.
    pub rtt: Duration,
    /// One-way bulk throughput in MiB/s.
    pub mib_per_s: f64,
}

/// Measure a proxy in front of a local echo/sink server: the median RTT of
/// `pings` 1-byte round trips and the throughput of `bulk` bytes sent one
/// way (the sink answers with one byte after the last one arrived).
pub fn measure(one_way: Duration, pings: usize, bulk: usize) -> Result<ProxyFigures, ProxyError> {
    let io = |what: &str| {
        let what = what.to_string();
        move |source| ProxyError::Io { what, source }
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("bind"))?;
    let target = listener.local_addr().map_err(io("local_addr"))?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        // First connection: echo. Second: sink then ack.
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut b = [0u8; 1];
        while s.read(&mut b)? == 1 {
            s.write_all(&b)?;
        }
        let (mut s, _) = listener.accept()?;
        let mut len = [0u8; 8];
        s.read_exact(&mut len)?;
        let mut left = u64::from_le_bytes(len);
        let mut buf = vec![0u8; CHUNK];
        while left > 0 {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            left = left.saturating_sub(n as u64);
        }
        s.write_all(&[1])?;
        Ok(())
    });
    let proxy = DelayProxy::start(target, one_way)?;
    let mut rtts = Vec::with_capacity(pings);
    {
        let mut c = TcpStream::connect(proxy.addr()).map_err(io("connect"))?;
        c.set_nodelay(true).map_err(io("nodelay"))?;
        let mut b = [7u8; 1];
        for _ in 0..pings {
            let t = Instant::now();
            c.write_all(&b).map_err(io("ping"))?;
            c.read_exact(&mut b).map_err(io("pong"))?;
            rtts.push(t.elapsed());
        }
    }
    let mut c = TcpStream::connect(proxy.addr()).map_err(io("connect"))?;
    let t = Instant::now();
    c.write_all(&(bulk as u64).to_le_bytes())
        .map_err(io("send"))?;
    let chunk = vec![0x5au8; CHUNK];
    let mut left = bulk;
    while left > 0 {
        let n = left.min(CHUNK);
        c.write_all(&chunk[..n]).map_err(io("send"))?;
        left -= n;
    }
    let mut ack = [0u8; 1];
    c.read_exact(&mut ack).map_err(io("ack"))?;
    let secs = t.elapsed().as_secs_f64();
    let _ = server.join();
    rtts.sort();
    let rtt = rtts.get(rtts.len() / 2).copied().unwrap_or_default();
    Ok(ProxyFigures {
        rtt,
        mib_per_s: bulk as f64 / (1u64 << 20) as f64 / secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtt_is_twice_the_delay_and_throughput_survives() {
        let f = measure(Duration::from_millis(25), 5, 64 << 20).unwrap();
        assert!(f.rtt >= Duration::from_millis(50), "{f:?}");
        assert!(f.rtt < Duration::from_millis(80), "{f:?}");
        // 64 MiB over a 50 ms RTT path must not be bound by round trips.
        assert!(f.mib_per_s > 100.0, "{f:?}");
        let z = measure(Duration::ZERO, 20, 64 << 20).unwrap();
        assert!(z.rtt < Duration::from_millis(20), "{z:?}");
    }
}
