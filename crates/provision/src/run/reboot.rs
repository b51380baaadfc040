//! Steps that reboot the target: the first-boot wait, watching for the
//! drop, logging in again and staging again if the dir is gone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use opsbake_core::transport::{ExecRequest, TransportError};

use super::Session;
use crate::error::ProvisionError;
use crate::output::StepSink;

impl Session<'_> {
    /// Before a reboot: a stemcell makes its host keys on the first boot
    /// (`/root/firstboot.sh`) and marks them done with `/root/firstboot_done`
    /// a little after the first login is possible. A reboot before the
    /// marker makes new host keys, which the pinned host key then refuses.
    /// Wait for the marker (best effort: needs root to look).
    pub(super) async fn wait_firstboot(&self, label: &str) {
        let sink = Arc::new(StepSink::new(None, label));
        let script = "if [ -e /root/firstboot.sh ] || [ -e /etc/systemd/system/firstboot.service ]; then i=0; while [ ! -e /root/firstboot_done ] && [ $i -lt 300 ]; do sleep 1; i=$((i+1)); done; [ -e /root/firstboot_done ] || { echo 'no /root/firstboot_done after 300 s' >&2; exit 3; }; fi";
        let cmd = format!(
            "{}sh -c {}",
            self.sudo(),
            opsbake_core::transport::shell_quote(script)
        );
        match self
            .transport
            .exec(ExecRequest::new(cmd), sink.clone())
            .await
        {
            Ok(st) if st.success() => {}
            Ok(st) => self.ctx.events.warn(format!(
                "{label}: could not wait for the first-boot host keys before the reboot ({st}){}",
                sink.tail_message()
            )),
            Err(e) => self.ctx.events.warn(format!(
                "{label}: could not wait for the first-boot host keys before the reboot: {e}"
            )),
        }
    }

    /// After a step that may reboot exited: watch the connection for the
    /// drop (polling the kernel boot id), then reconnect.
    pub(super) async fn await_disconnect(
        &mut self,
        label: &str,
        wait: Duration,
    ) -> Result<(), ProvisionError> {
        let deadline = Instant::now() + self.opts.disconnect_grace;
        loop {
            let sink = Arc::new(StepSink::new(None, label));
            let mut req = ExecRequest::new("cat /proc/sys/kernel/random/boot_id");
            req.timeout = Some(Duration::from_secs(10));
            match self.transport.exec(req, sink.clone()).await {
                Err(e) if e.is_disconnect() || matches!(e, TransportError::Timeout { .. }) => {
                    self.ctx.events.info(format!(
                        "{label}: disconnected as expected; waiting up to {wait:?} for a login"
                    ));
                    return self.reconnect(label, wait).await;
                }
                Err(TransportError::Cancelled) => return Err(ProvisionError::Cancelled),
                Err(e) => {
                    // A refused channel on a server going down is a drop too.
                    self.ctx.events.info(format!(
                        "{label}: the connection failed ({e}); waiting up to {wait:?} for a login"
                    ));
                    return self.reconnect(label, wait).await;
                }
                Ok(st) => {
                    let id = sink.stdout_text().trim().to_string();
                    if st.success()
                        && !id.is_empty()
                        && id != self.boot_id
                        && !self.boot_id.is_empty()
                    {
                        self.boot_id = id;
                        return self.after_reconnect(label).await;
                    }
                }
            }
            if Instant::now() >= deadline {
                self.ctx.events.info(format!(
                    "{label}: expect_disconnect, but the connection stayed up for {:?}; going on",
                    self.opts.disconnect_grace
                ));
                return Ok(());
            }
            tokio::select! {
                _ = self.ctx.cancel.cancelled() => return Err(ProvisionError::Cancelled),
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    pub(super) async fn reconnect(
        &mut self,
        label: &str,
        wait: Duration,
    ) -> Result<(), ProvisionError> {
        let started = Instant::now();
        self.transport
            .reconnect(wait)
            .await
            .map_err(Self::tr(label))?;
        self.ctx.events.info(format!(
            "{label}: logged in again after {:.1}s",
            started.elapsed().as_secs_f64()
        ));
        self.after_reconnect(label).await
    }

    /// After a reboot: learn the new boot id, and stage again if the staging
    /// dir did not survive (a tmpfs, or a bind mount the agent no longer makes).
    pub(super) async fn after_reconnect(&mut self, label: &str) -> Result<(), ProvisionError> {
        let sink = Arc::new(StepSink::new(None, label));
        let check = format!(
            "cat /proc/sys/kernel/random/boot_id; test -d {}",
            opsbake_core::transport::shell_quote(&self.staging.cdir)
        );
        let st = self
            .transport
            .exec(ExecRequest::new(check), sink.clone())
            .await
            .map_err(Self::tr(label))?;
        let id = sink.stdout_text().trim().to_string();
        if !id.is_empty() {
            self.boot_id = id;
        }
        if !st.success() {
            self.ctx.events.warn(format!(
                "{label}: the staging dir {} is gone after the reboot; staging again",
                self.staging.cdir
            ));
            self.prepare().await?;
            self.upload_batch().await?;
        }
        Ok(())
    }
}
