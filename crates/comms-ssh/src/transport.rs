//! [`SshTransport`]: core's `Transport` over SSH/SFTP.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use opsbake_core::transport::{
    Download, ExecRequest, ExitStatus, OutputSink, TransferReport, Transport, TransportError,
    Upload,
};
use tokio::sync::RwLock;

use crate::channels::ChannelLimits;
use crate::conn::Conn;
use crate::connect::{wait_for_login, LoginReport, SshOptions};
use crate::plan;
use crate::sftp::{self, UploadState};
use crate::tarstream;

/// Big files worth a second connection, in all (see
/// `SshTransport::second_connection`).
pub const SECOND_CONNECTION_BYTES: u64 = 64 << 20;
/// The round trip from which a second connection pays for its login.
pub const SECOND_CONNECTION_RTT: Duration = Duration::from_millis(10);

/// A second connection being made (or made) for one upload.
struct SecondConnection {
    sessions: sftp::ExtraSessions,
    abort: tokio::task::AbortHandle,
    conn: Arc<Mutex<Option<Arc<Conn>>>>,
}

impl SecondConnection {
    /// Stop its login if it is still going, and close it.
    async fn close(self) {
        self.abort.abort();
        let conn = self.conn.lock().ok().and_then(|mut c| c.take());
        drop(self.sessions);
        if let Some(c) = conn {
            let _ = c
                .handle
                .disconnect(russh::Disconnect::ByApplication, "upload done", "en")
                .await;
        }
    }
}

/// An SSH connection to a build VM.
pub struct SshTransport {
    opts: SshOptions,
    describe: String,
    conn: RwLock<Arc<Conn>>,
    last_login: Mutex<LoginReport>,
}

impl SshTransport {
    /// Wait for a login (up to `opts.login_timeout`) and return the
    /// connected transport.
    pub async fn connect(opts: SshOptions) -> Result<SshTransport, TransportError> {
        let c = wait_for_login(&opts, opts.login_timeout).await?;
        let describe = format!("ssh {}", opts.target);
        Ok(SshTransport {
            describe: describe.clone(),
            last_login: Mutex::new(c.report),
            conn: RwLock::new(Conn::new(c.handle, c.jump, describe.clone(), &opts, None)),
            opts,
        })
    }

    /// How the most recent login went (attempts, time to login, host key).
    pub fn login_report(&self) -> LoginReport {
        self.last_login
            .lock()
            .map(|r| r.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// The options.
    pub fn options(&self) -> &SshOptions {
        &self.opts
    }

    async fn current(&self) -> Arc<Conn> {
        self.conn.read().await.clone()
    }

    /// The channel budget of the current connection: what `max_sessions`
    /// allows, what the server taught us (after it refused a channel), how
    /// many channels are open and how big the SFTP pool is.
    pub fn channel_limits(&self) -> ChannelLimits {
        match self.conn.try_read() {
            Ok(c) => c.limits(),
            Err(_) => ChannelLimits {
                configured: self.opts.max_sessions,
                allowed: 0,
                learned: None,
                open: 0,
                sftp_pool: 0,
            },
        }
    }

    async fn relogin(&self, stale: &Arc<Conn>, timeout: Duration) -> Result<(), TransportError> {
        let mut guard = self.conn.write().await;
        if !Arc::ptr_eq(&guard, stale) {
            return Ok(()); // someone else reconnected already
        }
        let _ = guard
            .handle
            .disconnect(russh::Disconnect::ByApplication, "reconnecting", "en")
            .await;
        let c = wait_for_login(&self.opts, timeout).await?;
        if let Ok(mut r) = self.last_login.lock() {
            *r = c.report;
        }
        let learned = guard.budget.learned();
        *guard = Conn::new(c.handle, c.jump, self.describe.clone(), &self.opts, learned);
        Ok(())
    }

    /// The small files, directories and symlinks of a plan as one tar
    /// stream (done once: `tar_report` keeps it across a reconnect), then
    /// the big files over SFTP. `Ok(None)`: the target has no tar.
    async fn upload_tar(
        &self,
        c: &Arc<Conn>,
        small: &plan::Plan,
        big: &plan::Plan,
        big_state: &Mutex<UploadState>,
        tar_report: &mut Option<TransferReport>,
    ) -> Result<Option<TransferReport>, TransportError> {
        let mut rep = match tar_report {
            Some(r) => r.clone(),
            None => match tarstream::upload_all(c, small).await? {
                tarstream::TarOutcome::Done(r) => {
                    c.set_has_tar(true);
                    *tar_report = Some(r.clone());
                    r
                }
                tarstream::TarOutcome::NoTar => {
                    tracing::info!(target = %self.describe, "no tar on the target: uploading over sftp");
                    c.set_has_tar(false);
                    return Ok(None);
                }
            },
        };
        if !big.files.is_empty() {
            let b = self.upload_sftp(c, big, big_state).await?;
            rep.files += b.files;
            rep.bytes += b.bytes;
        }
        Ok(Some(rep))
    }

    /// A plan over the SFTP pool (or scp without an sftp subsystem), then
    /// the sha256 check.
    async fn upload_sftp(
        &self,
        c: &Arc<Conn>,
        plan: &plan::Plan,
        state: &Mutex<UploadState>,
    ) -> Result<TransferReport, TransportError> {
        // Before the first channel the round trip is not known: the second
        // connection's login starts with the pool's opens, and is dropped if
        // they show a fast link.
        let early = self.second_connection(c, plan);
        let pool = match c.pool().await {
            Ok(Some(pool)) => pool,
            other => {
                if let Some(s) = early {
                    s.close().await;
                }
                return match other {
                    Err(e) => Err(e),
                    // No sftp subsystem.
                    Ok(_) => crate::scp::upload(c, plan).await,
                };
            }
        };
        // A one-CPU target's channel opens also wait for the target (a
        // slow guest forks each session): a ping says whether the link is
        // slow before a second connection is kept for it.
        let mut rtt = c.rtt();
        if early.is_some() && c.cpus <= 1 && rtt.is_some_and(|r| r >= SECOND_CONNECTION_RTT) {
            rtt = c.measure_rtt().await.or(rtt);
        }
        let second = match early {
            Some(s) if rtt.is_some_and(|r| r < SECOND_CONNECTION_RTT) => {
                s.close().await;
                None
            }
            other => other,
        };
        let extra = second.as_ref().map(|s| &s.sessions);
        // Requests on a dead connection may never be answered: a drop ends
        // the attempt at once (not at the request timeout) so that it can
        // resume on a new connection.
        let r = tokio::select! {
            r = sftp::upload(&c.handle, &self.describe, &self.opts, &pool, extra, plan, state) => r,
            _ = sftp::connection_closed(&c.handle) => Err(TransportError::Disconnected {
                target: self.describe.clone(),
                reason: "connection lost during the upload".into(),
            }),
        };
        if let Some(s) = second {
            s.close().await;
        }
        // Give the pool back before the sha256 command: with a tight budget
        // that command may need one of its channels.
        drop(pool);
        c.pool_released();
        match r {
            Ok(rep) => plan::verify_sha256(c, plan).await.map(|()| rep),
            Err(e) => Err(e),
        }
    }

    /// A second connection for the big files of `plan`, when they are worth
    /// it: at least [`SECOND_CONNECTION_BYTES`] in files that are split, a
    /// round trip of at least [`SECOND_CONNECTION_RTT`] (as channel opens
    /// measured it; not known yet: made, and the caller drops it if the
    /// pool's opens show a faster link), and `opts.second_connection`. sshd gives each channel a
    /// 2 MiB window and each connection `MaxSessions` channels, so on a slow
    /// link one connection carries at most about 16 MiB per round trip; the
    /// second one's channels join the upload when its login is done. It is
    /// made in a task of its own; failing to make it is not an error (the
    /// upload goes on over the first).
    fn second_connection(&self, c: &Arc<Conn>, plan: &plan::Plan) -> Option<SecondConnection> {
        let big: u64 = plan
            .files
            .iter()
            .filter(|f| f.size >= sftp::SPLIT_AT)
            .map(|f| f.size)
            .sum();
        let rtt = c.rtt();
        if !self.opts.second_connection
            || big < SECOND_CONNECTION_BYTES
            || rtt.is_some_and(|r| r < SECOND_CONNECTION_RTT)
        {
            return None;
        }
        tracing::debug!(target = %self.describe, bytes = big, rtt_ms = rtt.map(|r| r.as_millis() as u64), "a second connection for the big files");
        let opts = self.opts.clone();
        let describe = self.describe.clone();
        let slot: Arc<Mutex<Option<Arc<Conn>>>> = Arc::new(Mutex::new(None));
        let kept = slot.clone();
        let task = tokio::spawn(async move {
            let timeout = opts.login_timeout.min(opts.attempt_timeout);
            let c = match wait_for_login(&opts, timeout).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::info!(target = %describe, error = %e, "no second connection: the upload goes on over one");
                    return None;
                }
            };
            let conn = Conn::new(c.handle, c.jump, describe.clone(), &opts, None);
            if let Ok(mut s) = kept.lock() {
                *s = Some(conn.clone());
            }
            match conn.pool().await {
                Ok(p) => p,
                Err(e) => {
                    tracing::info!(target = %describe, error = %e, "second connection without sftp channels");
                    None
                }
            }
        });
        let abort = task.abort_handle();
        let sessions: sftp::ExtraSessions =
            futures::FutureExt::shared(Box::pin(async move { task.await.ok().flatten() })
                as futures::future::BoxFuture<'static, _>);
        Some(SecondConnection {
            sessions,
            abort,
            conn: slot,
        })
    }

    /// Send a raw SSH keepalive and wait for the answer: true if the
    /// connection is alive.
    pub async fn ping(&self) -> bool {
        let c = self.current().await;
        !c.handle.is_closed() && c.handle.send_ping().await.is_ok()
    }
}

#[async_trait]
impl Transport for SshTransport {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn trusted_on_first_use(&self) -> Option<String> {
        let v = &self.opts.host_keys;
        match v.policy() {
            crate::hostkey::HostKeyPolicy::TrustOnFirstUse => v
                .learned()
                .map(|k| format!("{} {}", k.algorithm(), crate::hostkey::fingerprint(&k))),
            _ => None,
        }
    }

    async fn exec(
        &self,
        req: ExecRequest,
        sink: Arc<dyn OutputSink>,
    ) -> Result<ExitStatus, TransportError> {
        let c = self.current().await;
        tracing::debug!(target = %self.describe, command = %req.command, pty = req.pty, "exec");
        c.exec(req, sink).await
    }

    async fn upload(&self, items: Vec<Upload>) -> Result<TransferReport, TransportError> {
        let plan = plan::plan(&items)?;
        let split = if self.opts.tar_stream {
            tarstream::split(&plan)
        } else {
            None
        };
        let state = Mutex::new(UploadState::default());
        let big_state = Mutex::new(UploadState::default());
        let mut tar_report: Option<TransferReport> = None;
        let mut attempt = 0;
        loop {
            let c = self.current().await;
            let res = match &split {
                Some((small, big)) if c.has_tar() != Some(false) => {
                    self.upload_tar(&c, small, big, &big_state, &mut tar_report)
                        .await
                }
                _ => Ok(None),
            };
            let res = match res {
                Ok(Some(rep)) => Ok(rep),
                // No tar on the target (or not usable for this plan): SFTP.
                Ok(None) => self.upload_sftp(&c, &plan, &state).await,
                Err(e) => Err(e),
            };
            match res {
                Err(e) if e.is_disconnect() && attempt < self.opts.transfer_retries => {
                    attempt += 1;
                    tracing::warn!(target = %self.describe, error = %e, attempt, "connection dropped during upload; reconnecting to resume");
                    self.relogin(&c, self.opts.login_timeout).await?;
                }
                other => return other,
            }
        }
    }

    async fn download(&self, items: Vec<Download>) -> Result<TransferReport, TransportError> {
        let c = self.current().await;
        let r = match c.pool().await? {
            Some(pool) => {
                let r =
                    crate::download::download(&c.handle, &self.describe, &self.opts, &pool, &items)
                        .await;
                drop(pool);
                c.pool_released();
                r
            }
            None => Err(TransportError::Other {
                target: self.describe.clone(),
                message: "downloads need the sftp subsystem, which this server does not offer"
                    .into(),
            }),
        };
        r
    }

    async fn reconnect(&self, timeout: Duration) -> Result<(), TransportError> {
        let c = self.current().await;
        self.relogin(&c, timeout).await
    }

    async fn close(&self) -> Result<(), TransportError> {
        let c = self.current().await;
        c.handle
            .disconnect(russh::Disconnect::ByApplication, "done", "en")
            .await
            .map_err(|e| TransportError::Disconnected {
                target: self.describe.clone(),
                reason: format!("closing: {e}"),
            })
    }
}
