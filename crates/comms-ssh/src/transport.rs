//! [`SshTransport`]: core's `Transport` over SSH/SFTP.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use opsbake_core::transport::{
    Download, ExecRequest, ExitStatus, OutputSink, TransferReport, Transport, TransportError,
    Upload,
};
use russh::client::Msg;
use russh::Channel;
use tokio::sync::{OnceCell, RwLock};

use crate::connect::{wait_for_login, LoginReport, SshHandle, SshOptions};
use crate::sftp::{self, SftpPool, UploadState};

/// One live connection and its lazily opened SFTP channels.
struct Conn {
    handle: SshHandle,
    _jump: Option<Arc<SshHandle>>,
    /// `None` inside: the server has no sftp subsystem (use SCP).
    sftp: OnceCell<Option<SftpPool>>,
    /// A session channel opened ahead of the next exec.
    spare: tokio::sync::Mutex<Option<Channel<Msg>>>,
}

impl Conn {
    fn new(handle: SshHandle, jump: Option<Arc<SshHandle>>) -> Arc<Conn> {
        Arc::new(Conn {
            handle,
            _jump: jump,
            sftp: OnceCell::new(),
            spare: tokio::sync::Mutex::new(None),
        })
    }

    /// Open the next exec's channel in the background.
    fn refill_spare(self: &Arc<Self>) {
        let c = self.clone();
        tokio::spawn(async move {
            let mut slot = c.spare.lock().await;
            if slot.is_none() && !c.handle.is_closed() {
                if let Ok(ch) = c.handle.channel_open_session().await {
                    *slot = Some(ch);
                }
            }
        });
    }

    async fn take_spare(&self) -> Option<Channel<Msg>> {
        // Do not wait for a refill in progress: open our own channel then.
        match self.spare.try_lock() {
            Ok(mut g) => g.take(),
            Err(_) => None,
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
            describe,
            last_login: Mutex::new(c.report),
            conn: RwLock::new(Conn::new(c.handle, c.jump)),
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

    async fn pool<'a>(&self, conn: &'a Conn) -> Result<Option<&'a SftpPool>, TransportError> {
        let target = self.describe.clone();
        let p = conn
            .sftp
            .get_or_try_init(|| {
                sftp::open_pool(
                    &conn.handle,
                    &target,
                    self.opts.sftp_channels,
                    self.opts.sftp_request_timeout,
                )
            })
            .await?;
        if p.is_none() {
            tracing::info!(target = %self.describe, "no sftp subsystem: falling back to scp -t");
        }
        Ok(p.as_ref())
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
        *guard = Conn::new(c.handle, c.jump);
        Ok(())
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

    async fn exec(
        &self,
        req: ExecRequest,
        sink: Arc<dyn OutputSink>,
    ) -> Result<ExitStatus, TransportError> {
        let c = self.current().await;
        tracing::debug!(target = %self.describe, command = %req.command, pty = req.pty, "exec");
        let spare = c.take_spare().await;
        let had_spare = spare.is_some();
        c.refill_spare();
        match crate::exec::exec_on(&c.handle, &self.describe, req.clone(), sink.clone(), spare)
            .await
        {
            // A spare channel the server closed meanwhile: once more on a
            // fresh one (nothing ran: the exec request itself failed).
            Err(TransportError::Other { message, .. })
                if had_spare
                    && message.contains("refused the exec request")
                    && !c.handle.is_closed() =>
            {
                crate::exec::exec(&c.handle, &self.describe, req, sink).await
            }
            other => other,
        }
    }

    async fn upload(&self, items: Vec<Upload>) -> Result<TransferReport, TransportError> {
        let plan = sftp::plan(&items)?;
        let state = Mutex::new(UploadState::default());
        let mut attempt = 0;
        loop {
            let c = self.current().await;
            let res = match self.pool(&c).await {
                Ok(Some(pool)) => {
                    // Requests on a dead connection may never be answered:
                    // a drop ends the attempt at once (not at the request
                    // timeout) so that it can resume on a new connection.
                    tokio::select! {
                        r = sftp::upload(&c.handle, &self.describe, &self.opts, pool, &plan, &state) => r,
                        _ = sftp::connection_closed(&c.handle) => Err(TransportError::Disconnected {
                            target: self.describe.clone(),
                            reason: "connection lost during the upload".into(),
                        }),
                    }
                }
                Ok(None) => crate::scp::upload(&c.handle, &self.describe, &plan).await,
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
        match self.pool(&c).await? {
            Some(pool) => sftp::download(&c.handle, &self.describe, &self.opts, pool, &items).await,
            None => Err(TransportError::Other {
                target: self.describe.clone(),
                message: "downloads need the sftp subsystem, which this server does not offer"
                    .into(),
            }),
        }
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
