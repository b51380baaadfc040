//! One live connection: its channel budget, the exec channel opened ahead
//! of the next step, and the SFTP pool.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use opsbake_core::transport::{ExecRequest, ExitStatus, OutputSink, TransportError};
use russh::client::Msg;
use russh::Channel;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, OwnedSemaphorePermit};

use crate::channels::{Budget, ChannelKind, ChannelLimits, ChannelRefused, RefusalReason};
use crate::connect::{SshHandle, SshOptions};
use crate::exec::disconnected;
use crate::sftp::{self, SftpPool};

/// After this many refusals in one `open`, give up even before the deadline
/// (each one means a channel of ours closed and the server still refused).
const MAX_REFUSALS: u32 = 16;

/// A channel and the budget permit it holds (given back when the channel
/// has closed).
pub(crate) struct Leased {
    pub ch: Channel<Msg>,
    pub permit: OwnedSemaphorePermit,
}

/// How long an SFTP channel we are done with may take to be closed by the
/// server (after our EOF, sftp-server exits and sshd closes the channel)
/// before we close it ourselves.
const SERVER_CLOSE_WAIT: Duration = Duration::from_secs(10);

/// A channel as a byte stream whose permit goes back only when the *server*
/// closed the channel. russh's `ChannelStream` sends CHANNEL_CLOSE itself
/// when dropped, and sshd keeps counting the session until its sftp-server
/// exited: a permit given back then would let the next channel be refused.
/// Here, dropping the stream sends only EOF (through the SFTP session's
/// shutdown); a task owns the channel, feeds incoming data to the reader and
/// holds the permit until the server's CLOSE (or, after
/// [`SERVER_CLOSE_WAIT`], closes the channel itself).
pub(crate) struct PermitStream {
    rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    pending: bytes::Bytes,
    writer: Pin<Box<dyn AsyncWrite + Send + Sync>>,
}

impl PermitStream {
    pub(crate) fn new(l: Leased) -> PermitStream {
        let Leased { ch, permit } = l;
        let (mut read_half, write_half) = ch.split();
        let writer = Box::pin(write_half.make_writer());
        let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(64);
        tokio::spawn(async move {
            let _permit = permit;
            let mut tx = Some(tx);
            let mut reader_gone: Option<Instant> = None;
            loop {
                let closed = async {
                    match &tx {
                        Some(t) => t.closed().await,
                        None => std::future::pending().await,
                    }
                };
                let give_up = async {
                    match reader_gone {
                        Some(t) => tokio::time::sleep_until((t + SERVER_CLOSE_WAIT).into()).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    m = read_half.wait() => match m {
                        Some(russh::ChannelMsg::Data { data }) => {
                            if let Some(t) = &tx {
                                if t.send(bytes::Bytes::copy_from_slice(&data)).await.is_err() {
                                    tx = None;
                                    reader_gone.get_or_insert_with(Instant::now);
                                }
                            }
                        }
                        // EOF for the reader.
                        Some(russh::ChannelMsg::Eof) => tx = None,
                        Some(russh::ChannelMsg::Close) | None => break,
                        Some(_) => {}
                    },
                    _ = closed, if reader_gone.is_none() => {
                        tx = None;
                        reader_gone = Some(Instant::now());
                    }
                    _ = give_up => {
                        let _ = write_half.close().await;
                        break;
                    }
                }
            }
        });
        PermitStream {
            rx,
            pending: bytes::Bytes::new(),
            writer,
        }
    }
}

impl AsyncRead for PermitStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = buf.remaining().min(self.pending.len());
                let chunk = self.pending.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            match std::task::ready!(self.rx.poll_recv(cx)) {
                Some(b) => self.pending = b,
                None => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl AsyncWrite for PermitStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.writer.as_mut().poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.writer.as_mut().poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.writer.as_mut().poll_shutdown(cx)
    }
}

/// Why `open` failed.
pub(crate) enum OpenError {
    /// The server refused (typed; the connection is alive).
    Refused(ChannelRefused),
    /// The connection is gone, or waiting for our own channels timed out.
    Transport(TransportError),
}

impl From<OpenError> for TransportError {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::Refused(r) => r.into(),
            OpenError::Transport(t) => t,
        }
    }
}

/// The SFTP slot: not probed yet, no subsystem, or a pool (`None` inside
/// `Some` after an idle pool was closed to free channels: reopened on use).
enum SftpSlot {
    Unknown,
    NoSubsystem,
    Pool(Option<Arc<SftpPool>>),
}

/// One live connection.
pub(crate) struct Conn {
    pub handle: SshHandle,
    _jump: Option<Arc<SshHandle>>,
    pub target: String,
    pub budget: Budget,
    spare: Mutex<Option<Leased>>,
    refilling: AtomicBool,
    sftp: tokio::sync::Mutex<SftpSlot>,
    /// Signalled when a spare channel was stored or the SFTP pool became
    /// idle (both can be taken by someone waiting for a channel).
    freed: Notify,
    sftp_channels: usize,
    /// The target's CPUs (`SshOptions::target_cpus`, 2 when unknown).
    pub cpus: usize,
    sftp_timeout: Duration,
    channel_wait: Duration,
    /// The target's `tar`: 0 not tried yet, 1 there, 2 missing (learned
    /// once per connection by the first tar upload).
    tar: AtomicU8,
    /// The shortest channel open seen, in microseconds (`u64::MAX`: none
    /// yet).
    rtt_us: AtomicU64,
}

/// What `wait_permit` found.
enum Got {
    Permit(OwnedSemaphorePermit),
    Spare(Leased),
}

impl Conn {
    pub(crate) fn new(
        handle: SshHandle,
        jump: Option<Arc<SshHandle>>,
        target: String,
        opts: &SshOptions,
        carried: Option<(usize, RefusalReason)>,
    ) -> Arc<Conn> {
        // A limit learned on the previous connection to this target is kept
        // (a reboot does not change sshd_config); "none at all" is probed
        // again.
        let carried = carried.filter(|(n, _)| *n > 0);
        Arc::new(Conn {
            handle,
            _jump: jump,
            target,
            budget: Budget::new(opts.max_sessions.max(1), carried),
            spare: Mutex::new(None),
            refilling: AtomicBool::new(false),
            sftp: tokio::sync::Mutex::new(SftpSlot::Unknown),
            freed: Notify::new(),
            sftp_channels: opts.sftp_channels.max(1),
            cpus: opts.target_cpus.unwrap_or(2).max(1),
            sftp_timeout: opts.sftp_request_timeout,
            channel_wait: opts.channel_wait,
            tar: AtomicU8::new(0),
            rtt_us: AtomicU64::new(u64::MAX),
        })
    }

    /// The round trip to the server as the quickest channel open showed it
    /// (not the login's: a slow guest's key check would pass for a slow
    /// link); None before the first channel.
    pub(crate) fn rtt(&self) -> Option<Duration> {
        match self.rtt_us.load(Ordering::Relaxed) {
            u64::MAX => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// The budget now.
    /// The round trip measured now with an SSH keepalive (a global request
    /// sshd answers itself: no session, no fork), kept if it is quicker
    /// than what the channel opens showed; then [`Conn::rtt`]. A channel
    /// open also waits for the target (sshd sets up the session; right
    /// after a login it may still be setting up the user's), which on a
    /// slow one-vCPU guest passes for a slow link: a 10 ms open on a
    /// loopback QEMU guest, where the ping takes about 1 ms.
    pub(crate) async fn measure_rtt(&self) -> Option<Duration> {
        let asked = Instant::now();
        if self.handle.send_ping().await.is_ok() {
            let us = u64::try_from(asked.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.rtt_us.fetch_min(us.max(1), Ordering::Relaxed);
        }
        self.rtt()
    }

    pub(crate) fn limits(&self) -> ChannelLimits {
        let sftp_pool = match self.sftp.try_lock() {
            Ok(g) => match &*g {
                SftpSlot::Pool(Some(p)) => p.sessions.len(),
                _ => 0,
            },
            Err(_) => 0,
        };
        ChannelLimits {
            configured: self.budget.configured(),
            allowed: self.budget.capacity(),
            learned: self.budget.learned(),
            open: self.budget.in_use(),
            sftp_pool,
        }
    }

    /// SFTP channels a pool may have now: `sftp_channels`, at most the
    /// budget minus two (room for a command and the next command's channel),
    /// at least one.
    fn pool_size(&self) -> usize {
        self.sftp_channels
            .min(self.budget.capacity().saturating_sub(2))
            .max(1)
    }

    fn take_spare(&self) -> Option<Leased> {
        self.spare.lock().ok().and_then(|mut s| s.take())
    }

    /// Open the next exec's channel in the background, if the budget has a
    /// free permit (never waits).
    pub(crate) fn refill_spare(self: &Arc<Self>) {
        if self.handle.is_closed() || self.refilling.swap(true, Ordering::SeqCst) {
            return;
        }
        let c = self.clone();
        tokio::spawn(async move {
            let has = c.spare.lock().map(|s| s.is_some()).unwrap_or(true);
            if !has {
                if let Some(permit) = c.budget.try_acquire() {
                    match c.try_open(permit).await {
                        Ok(l) => {
                            let extra = match c.spare.lock() {
                                Ok(mut s) if s.is_none() => {
                                    *s = Some(l);
                                    None
                                }
                                _ => Some(l),
                            };
                            if let Some(l) = extra {
                                release(l).await;
                            }
                            c.freed.notify_waiters();
                        }
                        Err(_) => {
                            tracing::debug!(target = %c.target, "no spare exec channel (budget or server limit)");
                        }
                    }
                }
            }
            c.refilling.store(false, Ordering::SeqCst);
        });
    }

    /// Close an idle SFTP pool so that its channels can be used for
    /// something else; it is reopened (smaller, if the budget shrank) by the
    /// next transfer. True if one was closed.
    fn shed_idle_pool(&self) -> bool {
        let Ok(mut g) = self.sftp.try_lock() else {
            return false;
        };
        if let SftpSlot::Pool(p) = &mut *g {
            if p.as_ref().is_some_and(|p| Arc::strong_count(p) == 1) {
                tracing::debug!(target = %self.target, "closing the idle sftp pool to free channels");
                *p = None;
                return true;
            }
        }
        false
    }

    /// A permit (or, for a command, the spare channel), waiting until one of
    /// our channels closes; spare channels and an idle SFTP pool are given
    /// up for it.
    async fn wait_permit(
        &self,
        kind: ChannelKind,
        start: Instant,
        deadline: Instant,
        refusal: &Option<(RefusalReason, usize)>,
    ) -> Result<Got, OpenError> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(p) = self.budget.try_acquire() {
                return Ok(Got::Permit(p));
            }
            if let Some(l) = self.take_spare() {
                if kind == ChannelKind::Exec {
                    return Ok(Got::Spare(l));
                }
                release(l).await;
                continue;
            }
            if self.shed_idle_pool() {
                continue;
            }
            if self.budget.capacity() == 0 {
                let (reason, _) = self
                    .budget
                    .learned()
                    .map(|(n, r)| (r, n))
                    .unwrap_or((RefusalReason::ConnectFailed, 0));
                return Err(OpenError::Refused(ChannelRefused {
                    target: self.target.clone(),
                    kind,
                    reason,
                    open_channels: 0,
                    waited: start.elapsed(),
                }));
            }
            if self.handle.is_closed() {
                return Err(OpenError::Transport(disconnected(
                    &self.target,
                    "waiting for a free channel",
                    "connection closed",
                )));
            }
            tokio::select! {
                p = self.budget.acquire() => match p {
                    Some(p) => return Ok(Got::Permit(p)),
                    None => return Err(OpenError::Transport(disconnected(&self.target, "channel budget", "closed"))),
                },
                _ = &mut freed => continue,
                _ = tokio::time::sleep_until(deadline.into()) => {
                    let waited = start.elapsed();
                    return Err(match (refusal, self.budget.learned()) {
                        (Some((reason, open)), _) => OpenError::Refused(ChannelRefused {
                            target: self.target.clone(),
                            kind,
                            reason: reason.clone(),
                            open_channels: *open,
                            waited,
                        }),
                        (None, Some((n, reason))) => OpenError::Refused(ChannelRefused {
                            target: self.target.clone(),
                            kind,
                            reason,
                            open_channels: n,
                            waited,
                        }),
                        (None, None) => OpenError::Transport(TransportError::Timeout {
                            target: self.target.clone(),
                            what: format!(
                                "waiting for a free channel for {kind} ({} of {} in use)",
                                self.budget.in_use(),
                                self.budget.capacity()
                            ),
                            after: waited,
                        }),
                    });
                }
            }
        }
    }

    /// Open a session channel with `permit`. A refusal is retried once after
    /// a round trip (sshd frees a session whose CLOSE it just read at the
    /// end of its loop iteration, possibly after reading our OPEN); a second
    /// one teaches the budget the server's limit. `Err((reason, open))`:
    /// refused while `open` other channels of ours were open.
    async fn try_open(
        &self,
        permit: OwnedSemaphorePermit,
    ) -> Result<Leased, Result<(RefusalReason, usize), TransportError>> {
        let mut second = false;
        loop {
            let asked = Instant::now();
            match self.handle.channel_open_session().await {
                Ok(ch) => {
                    let us = u64::try_from(asked.elapsed().as_micros()).unwrap_or(u64::MAX - 1);
                    self.rtt_us.fetch_min(us, Ordering::Relaxed);
                    return Ok(Leased { ch, permit });
                }
                Err(russh::Error::ChannelOpenFailure(f)) => {
                    let reason = RefusalReason::from(&f);
                    if !second {
                        second = true;
                        tracing::debug!(target = %self.target, %reason, "channel refused; retrying once after a round trip");
                        self.handle.send_ping().await.map_err(|e| {
                            Err(disconnected(
                                &self.target,
                                "keepalive after a refused channel",
                                e,
                            ))
                        })?;
                        continue;
                    }
                    let others = self.budget.in_use().saturating_sub(1);
                    self.budget.learn(permit, others, reason.clone());
                    tracing::warn!(
                        target = %self.target, %reason, open = others,
                        allowed = self.budget.capacity(),
                        "the server refused a channel with {others} of ours open (sshd MaxSessions): using at most {} at once on this connection",
                        self.budget.capacity()
                    );
                    return Err(Ok((reason, others)));
                }
                Err(e) => {
                    return Err(Err(disconnected(
                        &self.target,
                        "opening a session channel",
                        e,
                    )))
                }
            }
        }
    }

    /// A session channel for `kind`: waits (up to `channel_wait`) for one
    /// of ours to close when the budget is used up or the server refuses.
    /// The flag is true for the spare channel (opened earlier).
    pub(crate) async fn open(&self, kind: ChannelKind) -> Result<(Leased, bool), OpenError> {
        let start = Instant::now();
        let deadline = start + self.channel_wait;
        let mut refusals = 0;
        let mut last: Option<(RefusalReason, usize)> = None;
        loop {
            let permit = match self.wait_permit(kind, start, deadline, &last).await? {
                Got::Spare(l) => return Ok((l, true)),
                Got::Permit(p) => p,
            };
            match self.try_open(permit).await {
                Ok(l) => return Ok((l, false)),
                Err(Err(t)) => return Err(OpenError::Transport(t)),
                Err(Ok((reason, open))) => {
                    refusals += 1;
                    let refused = ChannelRefused {
                        target: self.target.clone(),
                        kind,
                        reason: reason.clone(),
                        open_channels: open,
                        waited: start.elapsed(),
                    };
                    // Nothing of ours to wait for, or refused again and again.
                    if open == 0 || refusals >= MAX_REFUSALS {
                        return Err(OpenError::Refused(refused));
                    }
                    last = Some((reason, open));
                }
            }
        }
    }

    /// Whether the target has a `tar` (None: not tried on this connection).
    pub(crate) fn has_tar(&self) -> Option<bool> {
        match self.tar.load(Ordering::SeqCst) {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        }
    }

    /// Remember what the first tar upload found.
    pub(crate) fn set_has_tar(&self, yes: bool) {
        self.tar.store(if yes { 1 } else { 2 }, Ordering::SeqCst);
    }

    /// A channel for a command (the spare one when there is one; the next
    /// spare is opened in the background).
    pub(crate) async fn exec_channel(self: &Arc<Self>) -> Result<Leased, TransportError> {
        let l = match self.take_spare() {
            Some(l) => l,
            None => self.open(ChannelKind::Exec).await?.0,
        };
        self.refill_spare();
        Ok(l)
    }

    /// Run a command (on the spare channel when there is one).
    pub(crate) async fn exec(
        self: &Arc<Self>,
        req: ExecRequest,
        sink: Arc<dyn OutputSink>,
    ) -> Result<ExitStatus, TransportError> {
        let (leased, had_spare) = match self.take_spare() {
            Some(l) => (l, true),
            None => self.open(ChannelKind::Exec).await?,
        };
        self.refill_spare();
        match crate::exec::exec_on(
            &self.handle,
            &self.target,
            req.clone(),
            sink.clone(),
            leased,
        )
        .await
        {
            // A spare channel the server closed meanwhile: once more on a
            // fresh one (nothing ran: the exec request itself failed).
            Err(TransportError::Other { message, .. })
                if had_spare
                    && message.contains("refused the exec request")
                    && !self.handle.is_closed() =>
            {
                let (leased, _) = loop {
                    // Not the next spare: it may be as stale.
                    match self.open(ChannelKind::Exec).await? {
                        (l, true) => release(l).await,
                        fresh => break fresh,
                    }
                };
                crate::exec::exec_on(&self.handle, &self.target, req, sink, leased).await
            }
            other => other,
        }
    }

    /// The SFTP pool (opened on first use), or `None` without an sftp
    /// subsystem. Hold the `Arc` only while transferring: an idle pool may
    /// be closed to free channels for commands.
    pub(crate) async fn pool(&self) -> Result<Option<Arc<SftpPool>>, TransportError> {
        let mut g = self.sftp.lock().await;
        match &*g {
            SftpSlot::NoSubsystem => return Ok(None),
            SftpSlot::Pool(Some(p)) if p.sessions.len() <= self.pool_size() => {
                return Ok(Some(p.clone()))
            }
            _ => {}
        }
        // Close a pool that is now bigger than the budget allows first.
        *g = SftpSlot::Pool(None);
        match self.open_pool().await? {
            Some(p) => {
                let p = Arc::new(p);
                *g = SftpSlot::Pool(Some(p.clone()));
                Ok(Some(p))
            }
            None => {
                tracing::info!(target = %self.target, "no sftp subsystem: falling back to scp -t");
                *g = SftpSlot::NoSubsystem;
                Ok(None)
            }
        }
    }

    /// Tell waiters that a transfer gave its pool reference back.
    pub(crate) fn pool_released(&self) {
        self.freed.notify_waiters();
    }

    /// Open up to `pool_size()` SFTP channels, all at once (each is three
    /// round trips: the open, the subsystem request, the SFTP version): the
    /// first waits for the budget, the others take only free permits, one
    /// left for the first; channels the server refuses are not used (and
    /// the pool keeps room for commands within the limit it taught us).
    /// None when the first finds no sftp subsystem.
    async fn open_pool(&self) -> Result<Option<SftpPool>, TransportError> {
        let want = self.pool_size();
        let free = self.budget.capacity().saturating_sub(self.budget.in_use());
        let extra = want.saturating_sub(1).min(free.saturating_sub(1));
        let permits: Vec<_> = (0..extra)
            .map_while(|_| self.budget.try_acquire())
            .collect();
        let first = async {
            let (l, _) = self.open(ChannelKind::Sftp).await?;
            sftp::open_session(&self.handle, &self.target, l, self.sftp_timeout).await
        };
        let others = futures::future::join_all(permits.into_iter().map(|p| async move {
            match self.try_open(p).await {
                Ok(l) => sftp::open_session(&self.handle, &self.target, l, self.sftp_timeout).await,
                Err(Ok(_)) => Ok(None),
                Err(Err(e)) => Err(e),
            }
        }));
        let (first, opened) = futures::future::join(first, others).await;
        let Some(first) = first? else {
            // No subsystem: the others (if any opened) are dropped, which
            // closes their channels.
            return Ok(None);
        };
        let mut sessions = vec![first];
        for s in opened {
            match s {
                Ok(Some(s)) => sessions.push(s),
                Ok(None) => {}
                Err(e) if !self.handle.is_closed() => {
                    tracing::debug!(target = %self.target, error = %e, "extra sftp channel not opened");
                }
                Err(e) => return Err(e),
            }
        }
        // The server may have taught us a lower limit meanwhile.
        let keep = self.pool_size();
        if sessions.len() > keep {
            sessions.truncate(keep);
        }
        tracing::debug!(target = %self.target, channels = sessions.len(), wanted = want, "sftp channels open");
        Ok(Some(SftpPool { sessions }))
    }
}

/// Close a channel we will not use (no command runs on it: sshd frees it
/// as soon as it reads our CLOSE) and give its permit back.
pub(crate) async fn release(l: Leased) {
    let _ = l.ch.close().await;
    drop(l.permit);
}
