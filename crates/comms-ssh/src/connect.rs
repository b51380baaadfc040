//! Connecting and logging in: wait for a *login*, not for an open port.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opsbake_core::secret::Secret;
use opsbake_core::transport::TransportError;
use rand::Rng as _;
use russh::client::{self, Handle, KeyboardInteractiveAuthResponse};
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{cipher, mac, MethodKind, Preferred};

use crate::hostkey::{fingerprint, HostKeyVerifier, Verdict};
use crate::keys::KeyPair;

/// Ciphers we offer, fastest first. Hardened stemcells allow only the AES
/// ones; chacha20 is last for servers that prefer it.
pub const CIPHERS: &[cipher::Name] = &[
    cipher::AES_128_GCM,
    cipher::AES_256_GCM,
    cipher::AES_128_CTR,
    cipher::AES_192_CTR,
    cipher::AES_256_CTR,
    cipher::CHACHA20_POLY1305,
];
/// MACs we offer (used with the CTR ciphers).
pub const MACS: &[mac::Name] = &[
    mac::HMAC_SHA256_ETM,
    mac::HMAC_SHA512_ETM,
    mac::HMAC_SHA256,
    mac::HMAC_SHA512,
];

/// Where to log in.
#[derive(Debug, Clone)]
pub struct Target {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// User (`vcap` on a stemcell).
    pub user: String,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}:{}", self.user, self.host, self.port)
    }
}

/// The "password spent" flag of a build: a password that was rejected once
/// is never sent again (pam_faillock locks vcap for a week after three).
/// Share one guard across every connection of a build.
#[derive(Debug, Default)]
pub struct PasswordGuard {
    rejected: AtomicBool,
    attempts: std::sync::atomic::AtomicU32,
    /// When the key of an [`Auth::KeyThenPassword`] was first refused.
    key_refused_since: Mutex<Option<Instant>>,
    /// Held from the "spent?" check to the server's answer: login attempts
    /// overlap, and two of them must not both send the password.
    sending: tokio::sync::Mutex<()>,
}

impl PasswordGuard {
    /// A fresh guard.
    pub fn new() -> Arc<PasswordGuard> {
        Arc::new(PasswordGuard::default())
    }

    /// True once a password was rejected.
    pub fn is_spent(&self) -> bool {
        self.rejected.load(Ordering::SeqCst)
    }

    /// How many times a password was sent.
    pub fn attempts(&self) -> u32 {
        self.attempts.load(Ordering::SeqCst)
    }

    /// How long the key has been refused (this refusal counts: the first
    /// one starts the clock).
    fn key_refused_for(&self) -> Duration {
        let Ok(mut since) = self.key_refused_since.lock() else {
            return Duration::ZERO;
        };
        since.get_or_insert_with(Instant::now).elapsed()
    }
}

/// How to authenticate. Exactly one identity is offered per connection.
#[derive(Debug, Clone)]
pub enum Auth {
    /// A key (retried until the login timeout: the key may not be installed yet).
    Key(KeyPair),
    /// A password (`PasswordAuthentication`), sent at most once unless it
    /// succeeded before; never retried after a rejection.
    Password {
        /// The password.
        password: Secret<String>,
        /// The build's guard.
        guard: Arc<PasswordGuard>,
    },
    /// The key, retried like [`Auth::Key`]; once it has been refused for
    /// `after` and the server offers password authentication, the password
    /// is sent on that connection (at most once per build, like
    /// [`Auth::Password`]).
    KeyThenPassword {
        /// The key.
        key: KeyPair,
        /// The password.
        password: Secret<String>,
        /// The build's guard.
        guard: Arc<PasswordGuard>,
        /// How long the key must have been refused first.
        after: Duration,
    },
    /// Keyboard-interactive (PAM): the password answers the hidden prompt.
    KeyboardInteractive {
        /// The password.
        password: Secret<String>,
        /// The build's guard.
        guard: Arc<PasswordGuard>,
    },
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct SshOptions {
    /// Where to log in.
    pub target: Target,
    /// The identity.
    pub auth: Auth,
    /// Host-key policy (shared by the whole build).
    pub host_keys: Arc<HostKeyVerifier>,
    /// Overall time to wait for a login.
    pub login_timeout: Duration,
    /// Limit for one attempt (TCP connect, handshake and auth).
    pub attempt_timeout: Duration,
    /// How long an attempt waits for the server's first byte (TCP connect
    /// included); it grows by a quarter after each attempt that got
    /// nothing, up to `attempt_timeout`. An attempt whose server sent
    /// something gets the whole `attempt_timeout`. Short, because a booting VM's port forward (QEMU
    /// user networking, VirtualBox NAT, a cloud load balancer) accepts the
    /// TCP connection and then holds it silently until the guest's sshd
    /// listens: waiting out a long timeout there costs up to
    /// `attempt_timeout` per attempt.
    pub handshake_timeout: Duration,
    /// SSH keepalive interval (the connection is declared dead after three
    /// unanswered ones).
    pub keepalive: Option<Duration>,
    /// Log in through this bastion first (ProxyJump style).
    pub jump: Option<Box<SshOptions>>,
    /// Session channels this connection keeps open at once, of every kind
    /// (SFTP pool, commands, the command channel opened ahead, SCP): sshd's
    /// `MaxSessions` (default 10, also on stemcells). If the server refuses
    /// a channel earlier, the lower limit is learned and kept.
    pub max_sessions: usize,
    /// How long an operation waits for one of our channels to close when
    /// none is free (budget used up, or the server refused one).
    pub channel_wait: Duration,
    /// SFTP channels used in parallel for transfers, at most. The pool also
    /// stays at most `max_sessions - 2` (room for a command and the next
    /// command's channel), and at least 1.
    pub sftp_channels: usize,
    /// Bytes of SFTP writes kept in flight per channel.
    pub sftp_window: usize,
    /// Timeout of one SFTP request.
    pub sftp_request_timeout: Duration,
    /// Reconnect-and-resume attempts for a transfer hit by a dropped connection.
    pub transfer_retries: u32,
    /// Send trees and small files as one tar stream into the target's
    /// `tar` (when it has one; SFTP otherwise). Big files always go over
    /// SFTP. False: SFTP only.
    pub tar_stream: bool,
    /// The target's CPUs, when known (a VM the builder sized): a target
    /// with one CPU gets a big tree in one tar stream (more only on a slow
    /// link); others in up to 6. Unknown: taken as 2.
    pub target_cpus: Option<usize>,
    /// Big files on a slow link may use a second connection to the same
    /// target (its channels join the first's; see
    /// `SshTransport::second_connection`). False: one connection only.
    pub second_connection: bool,
}

impl SshOptions {
    /// Defaults for `target` with `auth`.
    pub fn new(target: Target, auth: Auth, host_keys: Arc<HostKeyVerifier>) -> SshOptions {
        SshOptions {
            target,
            auth,
            host_keys,
            login_timeout: Duration::from_secs(300),
            attempt_timeout: Duration::from_secs(20),
            handshake_timeout: Duration::from_secs(3),
            keepalive: Some(Duration::from_secs(15)),
            jump: None,
            max_sessions: 10,
            channel_wait: Duration::from_secs(120),
            sftp_channels: 8,
            sftp_window: 2 << 20,
            sftp_request_timeout: Duration::from_secs(60),
            transfer_retries: 3,
            tar_stream: true,
            target_cpus: None,
            second_connection: true,
        }
    }
}

/// What a login took.
#[derive(Debug, Clone)]
pub struct LoginReport {
    /// Attempts made (1 = first try).
    pub attempts: u32,
    /// From the first try to a successful login.
    pub elapsed: Duration,
    /// The host key's fingerprint.
    pub host_key: String,
}

/// The russh handler: host-key checks.
pub(crate) struct ClientHandler {
    target: String,
    verifier: Arc<HostKeyVerifier>,
    refusal: Arc<Mutex<Option<String>>>,
    seen: Arc<Mutex<Option<String>>>,
}

impl client::Handler for ClientHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key,
            PublicKeyOrCertificate::Certificate(_) => {
                if let Ok(mut r) = self.refusal.lock() {
                    *r = Some("host certificates are not supported".into());
                }
                return Ok(false);
            }
        };
        if let Ok(mut s) = self.seen.lock() {
            *s = Some(fingerprint(key));
        }
        match self.verifier.check(&self.target, key) {
            Verdict::Accept => Ok(true),
            Verdict::Refuse(reason) => {
                // The connect error carries the reason and is printed once
                // by the caller; this is for OPSBAKE_LOG diagnostics only.
                tracing::debug!(target = %self.target, %reason, "host key refused");
                if let Ok(mut r) = self.refusal.lock() {
                    *r = Some(reason);
                }
                Ok(false)
            }
        }
    }
}

pub(crate) type SshHandle = Handle<ClientHandler>;

/// A logged-in connection (plus the bastion connection it runs through).
pub(crate) struct Connected {
    pub handle: SshHandle,
    pub jump: Option<Arc<SshHandle>>,
    pub report: LoginReport,
}

/// Why one attempt failed.
#[derive(Debug)]
enum AttemptError {
    Refused(String),
    Timeout(String),
    HandshakeTimeout(String),
    Banner(String),
    AuthRejected(String),
    Fatal(TransportError),
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttemptError::Refused(m) => write!(f, "connection refused: {m}"),
            AttemptError::Timeout(m) => write!(f, "timeout: {m}"),
            AttemptError::HandshakeTimeout(m) => write!(f, "no SSH banner/handshake: {m}"),
            AttemptError::Banner(m) => write!(f, "no SSH banner/handshake: {m}"),
            AttemptError::AuthRejected(m) => write!(f, "authentication rejected: {m}"),
            AttemptError::Fatal(e) => write!(f, "{e}"),
        }
    }
}

pub(crate) fn client_config(opts: &SshOptions) -> Arc<client::Config> {
    Arc::new(client::Config {
        keepalive_interval: opts.keepalive,
        keepalive_max: 3,
        inactivity_timeout: None,
        window_size: 8 << 20,
        nodelay: true,
        // Our russh patch (vendor/README.md): the signed key request at
        // once, right behind the service request: two round trips fewer.
        pipelined_publickey_auth: true,
        preferred: Preferred {
            cipher: Cow::Borrowed(CIPHERS),
            mac: Cow::Borrowed(MACS),
            ..Preferred::default()
        },
        ..client::Config::default()
    })
}

/// Wait until a login succeeds (or the login timeout passes), retrying the
/// whole TCP connect + handshake + key auth with a short jittered backoff.
pub(crate) async fn wait_for_login(
    opts: &SshOptions,
    timeout: Duration,
) -> Result<Connected, TransportError> {
    let target = opts.target.to_string();
    let start = Instant::now();
    let deadline = start + timeout;
    let jump = match &opts.jump {
        Some(j) => {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let c = Box::pin(wait_for_login(j, remaining)).await?;
            tracing::info!(bastion = %j.target, "logged in to bastion");
            Some(Arc::new(c.handle))
        }
        None => None,
    };
    let mut attempts = 0u32;
    let mut delay = Duration::from_millis(100);
    let mut handshake = opts
        .handshake_timeout
        .min(opts.attempt_timeout)
        .max(Duration::from_millis(100));
    // Attempts overlap: while the ones started earlier wait silently (a
    // port forward holding the connection for a guest whose sshd is not up;
    // its SYNs to the guest are lost and retried by the guest's TCP timers),
    // a new one starts every HEDGE_INTERVAL, so that the first login follows
    // the banner within a fraction of a second instead of a handshake
    // timeout later. A connection that got bytes from the server is not
    // hedged (it is talking).
    let mut pending = futures::stream::FuturesUnordered::new();
    let mut next_launch = Instant::now();
    let mut last_err: Option<AttemptError> = None;
    // The "got bytes" flag of each running attempt.
    let mut flags: Vec<Arc<AtomicBool>> = Vec::new();
    loop {
        let now = Instant::now();
        let talking = flags.iter().any(|f| f.load(Ordering::SeqCst));
        if now >= deadline && pending.is_empty() {
            return Err(login_failed(
                opts, &target, attempts, start, timeout, last_err,
            ));
        }
        if now >= next_launch && now < deadline && !talking && pending.len() < MAX_HEDGED {
            attempts += 1;
            let remaining = deadline.saturating_duration_since(now);
            let per = remaining.min(opts.attempt_timeout);
            let seen = Arc::new(Mutex::new(None));
            let got = Arc::new(AtomicBool::new(jump.is_some()));
            let this_handshake = handshake;
            let jump = jump.clone();
            flags.push(got.clone());
            let (seen2, got2) = (seen.clone(), got.clone());
            pending.push(Box::pin(async move {
                let r = match tokio::time::timeout(
                    per,
                    attempt(opts, jump.as_deref(), seen2, got2, this_handshake),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => Err(AttemptError::Timeout(format!(
                        "attempt did not finish within {per:?}"
                    ))),
                };
                (r, seen, got)
            }) as HedgedAttempt<'_>);
            next_launch = now + HEDGE_INTERVAL;
        }
        let now = Instant::now();
        let wake = if now < deadline && !talking && pending.len() < MAX_HEDGED {
            next_launch.min(deadline)
        } else if pending.is_empty() {
            deadline
        } else {
            // Nothing to start now: wait for a running attempt to end.
            now + Duration::from_secs(3600)
        };
        let done = tokio::select! {
            Some(d) = futures::StreamExt::next(&mut pending) => d,
            _ = tokio::time::sleep_until(wake.into()) => continue,
        };
        let (res, seen, got) = done;
        flags.retain(|f| !Arc::ptr_eq(f, &got));
        if let Err(AttemptError::HandshakeTimeout(_)) = &res {
            // nothing arrived: a forward holding the connection for a guest
            // that is not up yet, or a link slower than the limit; grow it
            // gently so that a slow link gets there too
            handshake = handshake.mul_f64(1.25).min(opts.attempt_timeout);
        }
        match res {
            Ok(handle) => {
                let report = LoginReport {
                    attempts,
                    elapsed: start.elapsed(),
                    host_key: seen.lock().ok().and_then(|s| s.clone()).unwrap_or_default(),
                };
                tracing::info!(%target, attempts, elapsed_ms = report.elapsed.as_millis() as u64, host_key = %report.host_key, "logged in");
                // The other attempts are dropped (their sockets close).
                return Ok(Connected {
                    handle,
                    jump,
                    report,
                });
            }
            Err(AttemptError::Fatal(e)) => return Err(e),
            Err(e) => {
                tracing::debug!(%target, attempts, error = %e, "login attempt failed");
                // Refused or dropped: the server is not there yet; retry
                // soon (a short cap: the first login should follow sshd's
                // start closely). Rejected keys (not installed yet) back off
                // further.
                let cap = match e {
                    AttemptError::AuthRejected(_) => Duration::from_secs(1),
                    _ => RETRY_CAP,
                };
                let jitter = rand::thread_rng().gen_range(0.75..1.25);
                let d = delay.min(cap).mul_f64(jitter);
                let retry_at = Instant::now() + d;
                if !matches!(e, AttemptError::HandshakeTimeout(_)) {
                    next_launch = next_launch.max(retry_at);
                    delay = delay.mul_f64(1.6).min(cap);
                }
                // A refused key says more than a later attempt that ran
                // out of time (a loaded machine, a slow link): it is kept.
                let refused =
                    |e: &Option<AttemptError>| matches!(e, Some(AttemptError::AuthRejected(_)));
                if !refused(&last_err) || matches!(e, AttemptError::AuthRejected(_)) {
                    last_err = Some(e);
                }
                if retry_at >= deadline && pending.is_empty() {
                    return Err(login_failed(
                        opts, &target, attempts, start, timeout, last_err,
                    ));
                }
            }
        }
    }
}

/// Attempts running at once, at most (only while none got any bytes).
const MAX_HEDGED: usize = 8;
/// A new attempt starts this often while the earlier ones wait silently.
const HEDGE_INTERVAL: Duration = Duration::from_millis(250);
/// Longest wait before retrying a refused or dropped connection.
const RETRY_CAP: Duration = Duration::from_millis(200);

type HedgedAttempt<'a> = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = (
                    Result<SshHandle, AttemptError>,
                    Arc<Mutex<Option<String>>>,
                    Arc<AtomicBool>,
                ),
            > + Send
            + 'a,
    >,
>;

/// The error after the last attempt.
fn login_failed(
    opts: &SshOptions,
    target: &str,
    attempts: u32,
    start: Instant,
    timeout: Duration,
    last: Option<AttemptError>,
) -> TransportError {
    match last {
        Some(AttemptError::AuthRejected(reason)) => TransportError::Auth {
            target: target.to_string(),
            user: opts.target.user.clone(),
            reason: format!("{reason} ({attempts} attempts over {:?})", start.elapsed()),
        },
        other => TransportError::Timeout {
            target: target.to_string(),
            what: match other {
                Some(e) => format!("login ({attempts} attempts; last error: {e})"),
                None => format!("login ({attempts} attempts)"),
            },
            after: timeout,
        },
    }
}

fn classify_io(e: &std::io::Error) -> AttemptError {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => AttemptError::Refused(e.to_string()),
        K::TimedOut => AttemptError::Timeout(e.to_string()),
        _ => AttemptError::Banner(e.to_string()),
    }
}

async fn attempt(
    opts: &SshOptions,
    jump: Option<&SshHandle>,
    seen: Arc<Mutex<Option<String>>>,
    got_bytes: Arc<AtomicBool>,
    handshake: Duration,
) -> Result<SshHandle, AttemptError> {
    // Through a bastion the channel's bytes are not watched (the flag starts
    // set): no short limit.
    let phase = handshake_phase(opts, jump, seen, got_bytes.clone());
    tokio::pin!(phase);
    let connected = tokio::select! {
        r = &mut phase => r,
        _ = tokio::time::sleep(handshake) => {
            if got_bytes.load(Ordering::SeqCst) {
                // a live server, just slow: the attempt's own limit applies
                phase.await
            } else {
                Err(AttemptError::HandshakeTimeout(format!(
                    "the TCP connection was accepted but nothing arrived within {handshake:?}"
                )))
            }
        }
    };
    let mut handle = connected?;
    authenticate(opts, &mut handle).await?;
    Ok(handle)
}

/// The SSH connection's TCP stream. Notes when its first byte arrives (a
/// port forward that accepted the connection for a guest that is not
/// listening yet sends nothing at all), and asks the kernel to acknowledge
/// at once after each read (`TCP_QUICKACK`): sshd leaves Nagle's algorithm on
/// for sessions without a pty, so after a small packet it holds the next
/// one until our ACK comes, and a delayed ACK (40 ms on Linux) stalled the
/// first command after every login (seen at 0 ms: the first channel open
/// answered 42 ms late).
struct FirstByte<S> {
    inner: S,
    got: Arc<AtomicBool>,
}

impl tokio::io::AsyncRead for FirstByte<tokio::net::TcpStream> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.got.store(true, Ordering::SeqCst);
            // Quick-ACK mode lapses by itself: set it again after each read.
            let _ = socket2::SockRef::from(&this.inner).set_tcp_quickack(true);
        }
        r
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FirstByte<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// TCP connect (or a direct-tcpip channel through the bastion) and the SSH
/// handshake up to the host key check.
async fn handshake_phase(
    opts: &SshOptions,
    jump: Option<&SshHandle>,
    seen: Arc<Mutex<Option<String>>>,
    got_bytes: Arc<AtomicBool>,
) -> Result<SshHandle, AttemptError> {
    let target = opts.target.to_string();
    let refusal = Arc::new(Mutex::new(None));
    let handler = ClientHandler {
        target: target.clone(),
        verifier: opts.host_keys.clone(),
        refusal: refusal.clone(),
        seen,
    };
    let config = client_config(opts);
    let connected = match jump {
        Some(j) => {
            let ch = j
                .channel_open_direct_tcpip(
                    opts.target.host.clone(),
                    u32::from(opts.target.port),
                    "127.0.0.1",
                    0,
                )
                .await
                .map_err(|e| match e {
                    russh::Error::ChannelOpenFailure(f) => {
                        AttemptError::Refused(format!("bastion could not connect: {f:?}"))
                    }
                    other => AttemptError::Fatal(TransportError::Disconnected {
                        target: target.clone(),
                        reason: format!("bastion connection: {other}"),
                    }),
                })?;
            client::connect_stream(config, ch.into_stream(), handler).await
        }
        None => {
            let stream =
                tokio::net::TcpStream::connect((opts.target.host.as_str(), opts.target.port))
                    .await
                    .map_err(|e| classify_io(&e))?;
            let _ = stream.set_nodelay(true);
            let stream = FirstByte {
                inner: stream,
                got: got_bytes,
            };
            client::connect_stream(config, stream, handler).await
        }
    };
    match connected {
        Ok(h) => Ok(h),
        Err(e) => {
            if let Some(reason) = refusal.lock().ok().and_then(|r| r.clone()) {
                return Err(AttemptError::Fatal(TransportError::HostKey {
                    target,
                    reason,
                }));
            }
            Err(match e {
                russh::Error::IO(io) => classify_io(&io),
                russh::Error::NoCommonAlgo { kind, ours, theirs } => {
                    AttemptError::Fatal(TransportError::Other {
                        target,
                        message: format!(
                            "no common {kind:?} algorithm: ours {ours:?}, theirs {theirs:?}"
                        ),
                    })
                }
                other => AttemptError::Banner(other.to_string()),
            })
        }
    }
}

async fn authenticate(opts: &SshOptions, handle: &mut SshHandle) -> Result<(), AttemptError> {
    let user = opts.target.user.clone();
    let target = opts.target.to_string();
    let fatal = |reason: String| {
        AttemptError::Fatal(TransportError::Auth {
            target: target.clone(),
            user: user.clone(),
            reason,
        })
    };
    let russh_err = |e: russh::Error| AttemptError::Banner(format!("during authentication: {e}"));
    match &opts.auth {
        Auth::Key(key) => match try_key(handle, &user, key).await? {
            None => Ok(()),
            Some(_) => Err(AttemptError::AuthRejected(format!(
                "public key {} not accepted for {user}",
                key.fingerprint()
            ))),
        },
        Auth::KeyThenPassword {
            key,
            password,
            guard,
            after,
        } => {
            let Some(methods) = try_key(handle, &user, key).await? else {
                return Ok(());
            };
            let refused_for = guard.key_refused_for();
            if refused_for < *after || !methods.contains(&MethodKind::Password) {
                return Err(AttemptError::AuthRejected(format!(
                    "public key {} not accepted for {user} (refused for {:.1}s; the password follows after {:?} if the server offers it)",
                    key.fingerprint(),
                    refused_for.as_secs_f64(),
                    after
                )));
            }
            let _sending = guard.sending.lock().await;
            if guard.is_spent() {
                return Err(fatal(
                    "the key was refused and the password was rejected once already in this build; not sending it again".into(),
                ));
            }
            tracing::warn!(target = %target, %user, refused_ms = refused_for.as_millis() as u64, "the build's key is still refused (the stemcell did not take it from its settings): trying the password once");
            guard.attempts.fetch_add(1, Ordering::SeqCst);
            let ok = handle
                .authenticate_password(user.clone(), password.expose().clone())
                .await
                .map_err(russh_err)?
                .success();
            if ok {
                Ok(())
            } else {
                guard.rejected.store(true, Ordering::SeqCst);
                Err(fatal(
                    "the key was refused and then the password was rejected; it will not be sent again in this build".into(),
                ))
            }
        }
        Auth::Password { password, guard } | Auth::KeyboardInteractive { password, guard } => {
            let kbd = matches!(opts.auth, Auth::KeyboardInteractive { .. });
            let _sending = guard.sending.lock().await;
            if guard.is_spent() {
                return Err(fatal(
                    "the password was rejected once already in this build; not sending it again (pam_faillock locks the account after 3 failures)".into(),
                ));
            }
            // "none" does not count as a failed attempt and tells us the
            // methods on offer, so the password is only sent where it can work.
            let none = handle
                .authenticate_none(user.clone())
                .await
                .map_err(russh_err)?;
            let methods = match none {
                russh::client::AuthResult::Success => return Ok(()),
                russh::client::AuthResult::Failure {
                    remaining_methods, ..
                } => remaining_methods,
            };
            let want = if kbd {
                MethodKind::KeyboardInteractive
            } else {
                MethodKind::Password
            };
            if !methods.contains(&want) {
                return Err(fatal(format!(
                    "the server does not offer {} authentication (it offers {:?}); password not sent",
                    if kbd { "keyboard-interactive" } else { "password" },
                    methods.iter().map(<&str>::from).collect::<Vec<_>>()
                )));
            }
            guard.attempts.fetch_add(1, Ordering::SeqCst);
            let ok = if kbd {
                let mut resp = handle
                    .authenticate_keyboard_interactive_start(user.clone(), None)
                    .await
                    .map_err(russh_err)?;
                let mut rounds = 0;
                loop {
                    match resp {
                        KeyboardInteractiveAuthResponse::Success => break true,
                        KeyboardInteractiveAuthResponse::Failure { .. } => break false,
                        KeyboardInteractiveAuthResponse::InfoRequest { prompts, .. } => {
                            rounds += 1;
                            let hidden = prompts.iter().filter(|p| !p.echo).count();
                            if rounds > 3 || hidden > 1 {
                                break false;
                            }
                            let answers = prompts
                                .iter()
                                .map(|p| {
                                    if p.echo {
                                        String::new()
                                    } else {
                                        password.expose().clone()
                                    }
                                })
                                .collect();
                            resp = handle
                                .authenticate_keyboard_interactive_respond(answers)
                                .await
                                .map_err(russh_err)?;
                        }
                    }
                }
            } else {
                handle
                    .authenticate_password(user.clone(), password.expose().clone())
                    .await
                    .map_err(russh_err)?
                    .success()
            };
            if ok {
                Ok(())
            } else {
                guard.rejected.store(true, Ordering::SeqCst);
                Err(fatal(
                    "password rejected; it will not be sent again in this build".into(),
                ))
            }
        }
    }
}

/// Offer `key`: `None` when it logged in, else the methods the server still
/// offers.
async fn try_key(
    handle: &mut SshHandle,
    user: &str,
    key: &KeyPair,
) -> Result<Option<Vec<MethodKind>>, AttemptError> {
    let russh_err = |e: russh::Error| AttemptError::Banner(format!("during authentication: {e}"));
    let hash = if key.is_rsa() {
        handle
            .best_supported_rsa_hash()
            .await
            .map_err(russh_err)?
            .flatten()
    } else {
        None
    };
    let res = handle
        .authenticate_publickey(
            user.to_string(),
            PrivateKeyWithHashAlg::new(key.private(), hash),
        )
        .await
        .map_err(russh_err)?;
    Ok(match res {
        russh::client::AuthResult::Success => None,
        russh::client::AuthResult::Failure {
            remaining_methods, ..
        } => Some(remaining_methods.iter().copied().collect()),
    })
}
