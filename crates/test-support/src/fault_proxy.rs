//! A fault-injecting HTTP/1.1 proxy on 127.0.0.1, put in front of moto.
//!
//! moto flips states instantly, so waiters, retries and the kill tests need a
//! way to slow, fail or hold calls. Each request is named by its AWS action
//! (`Action=` of the EC2 query protocol, `X-Amz-Target`, or the REST route of
//! the EBS direct APIs: `StartSnapshot`, `PutSnapshotBlock`,
//! `CompleteSnapshot`, `GetSnapshotBlock`, `ListSnapshotBlocks`), and rules
//! match on that name:
//! - [`Fault::Delay`]: wait before forwarding;
//! - [`Fault::Status`]: answer with that HTTP status and an AWS error body
//!   without forwarding (503 `Unavailable`);
//! - [`Fault::Throttle`]: answer a throttling error (EC2
//!   `RequestLimitExceeded`, REST `ThrottlingException`);
//! - [`Fault::HoldRequest`]: park the call before it reaches moto until
//!   [`FaultProxy::release`];
//! - [`Fault::HoldResponse`]: forward it (the resource exists in moto), but
//!   park the answer: the client never learns the id, as when a process is
//!   killed between a create call and its journal record.
//!
//! Every call is recorded (name, status, time) for assertions and API call
//! counts. The proxy runs on its own thread with its own Tokio runtime and
//! stops when dropped. It only forwards to a target on 127.0.0.0/8.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

/// What to do with a matching call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Wait this long, then forward.
    Delay(Duration),
    /// Answer with this status and an AWS error body (not forwarded).
    Status(u16),
    /// Answer a throttling error (not forwarded).
    Throttle,
    /// Park the call before forwarding until released.
    HoldRequest,
    /// Forward the call, park its answer until released.
    HoldResponse,
}

/// One recorded call.
#[derive(Debug, Clone)]
pub struct Call {
    /// The action name.
    pub action: String,
    /// `METHOD path`.
    pub route: String,
    /// The status sent back (0: the client went away first).
    pub status: u16,
    /// When it arrived, from the proxy's start.
    pub at: Duration,
    /// The fault applied, if any.
    pub fault: Option<Fault>,
}

struct Rule {
    action: String,
    fault: Fault,
    left: Option<usize>,
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    calls: Vec<Call>,
    held: VecDeque<String>,
}

/// Errors starting the proxy.
#[derive(Debug, thiserror::Error)]
pub enum FaultProxyError {
    /// Binding failed.
    #[error("fault proxy {what}: {source}")]
    Io {
        /// What was done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The target is not on loopback.
    #[error("fault proxy: target {0} is not on 127.0.0.0/8")]
    NotLoopback(SocketAddr),
}

/// A running proxy.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    release: watch::Sender<u64>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    started: Instant,
}

impl FaultProxy {
    /// Listen on a random port of 127.0.0.1 and forward to `target`.
    pub fn start(target: SocketAddr) -> Result<FaultProxy, FaultProxyError> {
        if !target.ip().is_loopback() {
            return Err(FaultProxyError::NotLoopback(target));
        }
        let io = |what: &str| {
            let what = what.to_string();
            move |source| FaultProxyError::Io { what, source }
        };
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("bind"))?;
        std_listener
            .set_nonblocking(true)
            .map_err(io("set_nonblocking"))?;
        let addr = std_listener.local_addr().map_err(io("local_addr"))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(io("runtime"))?;
        let state = Arc::new(Mutex::new(State::default()));
        let (release, release_rx) = watch::channel(0u64);
        let (stop_tx, stop_rx) = oneshot::channel();
        let started = Instant::now();
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                let Ok(listener) = TcpListener::from_std(std_listener) else {
                    return;
                };
                let accept = async {
                    loop {
                        let Ok((sock, _)) = listener.accept().await else {
                            continue;
                        };
                        let st = st.clone();
                        let rx = release_rx.clone();
                        tokio::spawn(async move {
                            let _ = serve(sock, target, st, rx, started).await;
                        });
                    }
                };
                tokio::select! {
                    _ = stop_rx => {}
                    _ = accept => {}
                }
            });
            rt.shutdown_background();
        });
        Ok(FaultProxy {
            addr,
            state,
            release,
            stop: Some(stop_tx),
            thread: Some(thread),
            started,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Apply `fault` to the next `times` calls named `action` (`*`: any;
    /// `None`: every call from now on).
    pub fn rule(&self, action: &str, fault: Fault, times: Option<usize>) {
        if let Ok(mut s) = self.state.lock() {
            s.rules.push(Rule {
                action: action.to_string(),
                fault,
                left: times,
            });
        }
    }

    /// Drop every rule (held calls stay held until [`FaultProxy::release`]).
    pub fn clear_rules(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.rules.clear();
        }
    }

    /// Let every held call go on.
    pub fn release(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.held.clear();
        }
        self.release.send_modify(|g| *g += 1);
    }

    /// Wait until a call is held; returns its action name.
    pub fn wait_held(&self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(s) = self.state.lock() {
                if let Some(a) = s.held.front() {
                    return Some(a.clone());
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state
            .lock()
            .map(|s| s.calls.clone())
            .unwrap_or_default()
    }

    /// How many calls named `action` were made.
    pub fn count(&self, action: &str) -> usize {
        self.calls().iter().filter(|c| c.action == action).count()
    }

    /// Time since the proxy started (to compare with [`Call::at`]).
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.release.send_modify(|g| *g += 1);
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn action(&self) -> String {
        if let Some(t) = self.header("x-amz-target") {
            return t.rsplit('.').next().unwrap_or(t).to_string();
        }
        let form = String::from_utf8_lossy(&self.body);
        for kv in form.split('&') {
            if let Some(a) = kv.strip_prefix("Action=") {
                return a.to_string();
            }
        }
        if let Some(q) = self.path.split_once('?').map(|(_, q)| q) {
            for kv in q.split('&') {
                if let Some(a) = kv.strip_prefix("Action=") {
                    return a.to_string();
                }
            }
        }
        let path = self.path.split('?').next().unwrap_or("");
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (self.method.as_str(), parts.as_slice()) {
            ("POST", ["snapshots"]) => "StartSnapshot".into(),
            ("PUT", ["snapshots", _, "blocks", _]) => "PutSnapshotBlock".into(),
            ("GET", ["snapshots", _, "blocks", _]) => "GetSnapshotBlock".into(),
            ("GET", ["snapshots", _, "blocks"]) => "ListSnapshotBlocks".into(),
            ("GET", ["snapshots", _, "changedblocks"]) => "ListChangedBlocks".into(),
            ("POST", ["snapshots", "completion", _]) => "CompleteSnapshot".into(),
            _ => format!("{} {}", self.method, path),
        }
    }

    fn is_rest(&self) -> bool {
        self.path.starts_with("/snapshots")
    }
}

async fn read_head<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<(String, Vec<(String, String)>)>> {
    let mut first = String::new();
    if r.read_line(&mut first).await? == 0 {
        return Ok(None);
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Err(std::io::Error::other("connection closed inside a head"));
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok(Some((first.trim_end().to_string(), headers)))
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

async fn read_body<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    h: &[(String, String)],
    until_close: bool,
) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if header(h, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut line = String::new();
            r.read_line(&mut line).await?;
            let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(|e| std::io::Error::other(format!("bad chunk size: {e}")))?;
            if n == 0 {
                // trailers
                loop {
                    let mut t = String::new();
                    if r.read_line(&mut t).await? == 0 || t.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + n, 0);
            r.read_exact(&mut body[start..]).await?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf).await?;
        }
    } else if let Some(n) = header(h, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(n, 0);
        r.read_exact(&mut body).await?;
    } else if until_close {
        r.read_to_end(&mut body).await?;
    }
    Ok(body)
}

fn error_answer(
    req: &Request,
    status: u16,
    throttle: bool,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    if req.is_rest() {
        let (etype, msg) = if throttle {
            ("ThrottlingException", "Rate exceeded (fault proxy)")
        } else {
            (
                "InternalServerException",
                "Service unavailable (fault proxy)",
            )
        };
        let status = if throttle { 429 } else { status };
        (
            status,
            vec![
                ("Content-Type".into(), "application/json".into()),
                ("x-amzn-ErrorType".into(), etype.into()),
            ],
            format!(r#"{{"message":"{msg}"}}"#).into_bytes(),
        )
    } else {
        let code = if throttle {
            "RequestLimitExceeded"
        } else {
            "Unavailable"
        };
        let status = if throttle { 503 } else { status };
        (
            status,
            vec![("Content-Type".into(), "text/xml".into())],
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>fault proxy: {code}</Message></Error></Errors><RequestID>fault-proxy</RequestID></Response>"
            )
            .into_bytes(),
        )
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

async fn write_answer<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in headers {
        let kl = k.to_ascii_lowercase();
        if kl == "content-length" || kl == "transfer-encoding" || kl == "connection" {
            continue;
        }
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut msg = head.into_bytes();
    msg.extend_from_slice(body);
    w.write_all(&msg).await?;
    w.flush().await
}

async fn wait_release(rx: &mut watch::Receiver<u64>) {
    let _ = rx.changed().await;
}

fn take_fault(st: &Mutex<State>, action: &str) -> Option<Fault> {
    let mut s = st.lock().ok()?;
    let i = s
        .rules
        .iter()
        .position(|r| (r.action == action || r.action == "*") && r.left != Some(0))?;
    let r = &mut s.rules[i];
    if let Some(n) = r.left.as_mut() {
        *n -= 1;
    }
    Some(r.fault.clone())
}

async fn forward(
    target: SocketAddr,
    req: &Request,
) -> std::io::Result<(u16, Vec<(String, String)>, Vec<u8>)> {
    let up = TcpStream::connect(target).await?;
    up.set_nodelay(true)?;
    let (ur, mut uw) = up.into_split();
    let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.path);
    for (k, v) in &req.headers {
        let kl = k.to_ascii_lowercase();
        if kl == "connection" || kl == "transfer-encoding" || kl == "content-length" {
            continue;
        }
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        req.body.len()
    ));
    let mut msg = head.into_bytes();
    msg.extend_from_slice(&req.body);
    uw.write_all(&msg).await?;
    uw.flush().await?;
    let mut ur = BufReader::new(ur);
    let (status_line, headers) = read_head(&mut ur)
        .await?
        .ok_or_else(|| std::io::Error::other("upstream closed without an answer"))?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(502);
    let body = if req.method == "HEAD" {
        Vec::new()
    } else {
        read_body(&mut ur, &headers, true).await?
    };
    Ok((status, headers, body))
}

async fn serve(
    sock: TcpStream,
    target: SocketAddr,
    st: Arc<Mutex<State>>,
    mut release: watch::Receiver<u64>,
    started: Instant,
) -> std::io::Result<()> {
    sock.set_nodelay(true)?;
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    loop {
        let Some((line, headers)) = read_head(&mut r).await? else {
            return Ok(());
        };
        let mut it = line.split_whitespace();
        let method = it.next().unwrap_or("").to_string();
        let path = it.next().unwrap_or("/").to_string();
        if header(&headers, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
            w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        let body = read_body(&mut r, &headers, false).await?;
        let req = Request {
            method,
            path,
            headers,
            body,
        };
        let action = req.action();
        let at = started.elapsed();
        let fault = take_fault(&st, &action);
        let record = |status: u16| {
            if let Ok(mut s) = st.lock() {
                s.calls.push(Call {
                    action: action.clone(),
                    route: format!(
                        "{} {}",
                        req.method,
                        req.path.split('?').next().unwrap_or("")
                    ),
                    status,
                    at,
                    fault: fault.clone(),
                });
            }
        };
        let hold = |st: &Mutex<State>| {
            if let Ok(mut s) = st.lock() {
                s.held.push_back(action.clone());
            }
        };
        let answer = match &fault {
            Some(Fault::Status(code)) => Some(error_answer(&req, *code, false)),
            Some(Fault::Throttle) => Some(error_answer(&req, 503, true)),
            _ => None,
        };
        let (status, headers, body) = match answer {
            Some(a) => a,
            None => {
                match &fault {
                    Some(Fault::Delay(d)) => tokio::time::sleep(*d).await,
                    Some(Fault::HoldRequest) => {
                        release.borrow_and_update();
                        hold(&st);
                        // A client that goes away meanwhile (a killed
                        // process) never gets its call forwarded.
                        tokio::select! {
                            _ = wait_release(&mut release) => {}
                            r = r.fill_buf() => {
                                if r.map(|b| b.is_empty()).unwrap_or(true) {
                                    record(0);
                                    return Ok(());
                                }
                            }
                        }
                    }
                    _ => {}
                }
                let a = match forward(target, &req).await {
                    Ok(a) => a,
                    Err(e) => {
                        record(0);
                        return Err(e);
                    }
                };
                if fault == Some(Fault::HoldResponse) {
                    release.borrow_and_update();
                    hold(&st);
                    wait_release(&mut release).await;
                }
                a
            }
        };
        // Recorded before the answer goes out: a client that has its
        // answer finds its call counted (recording after the write raced
        // a test that counts calls as soon as its request returned).
        record(status);
        let sent = write_answer(&mut w, status, &headers, &body).await;
        if sent.is_err() {
            if let Ok(mut s) = st.lock() {
                if let Some(c) = s
                    .calls
                    .iter_mut()
                    .rev()
                    .find(|c| c.at == at && c.action == action)
                {
                    c.status = 0;
                }
            }
        }
        sent?;
    }
}
