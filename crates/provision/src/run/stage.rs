//! Making the staging dir on the target and uploading its batch.

use std::sync::Arc;
use std::time::Instant;

use opsbake_core::transport::ExecRequest;

use super::Session;
use crate::error::ProvisionError;
use crate::handoff::Identity;
use crate::output::StepSink;

impl Session<'_> {
    /// Create the staging dir and learn who and where we are.
    pub(super) async fn prepare(&mut self) -> Result<Identity, ProvisionError> {
        let sink = Arc::new(StepSink::new(None, "staging"));
        let st = self
            .transport
            .exec(ExecRequest::new(self.staging.mkdir_command()), sink.clone())
            .await
            .map_err(Self::tr("staging"))?;
        if !st.success() {
            return Err(ProvisionError::Command {
                step: format!("staging (mkdir {})", self.staging.cdir),
                status: Box::new(st),
                valid: vec![0],
                tail: sink.tail_message(),
            });
        }
        let ident = Identity::parse(&sink.stdout_text());
        self.root = ident.uid == Some(0);
        self.boot_id = ident.boot_id.clone();
        Ok(ident)
    }

    /// Every script, cookbook and hand-off file in one batch.
    pub(super) async fn upload_batch(&self) -> Result<(), ProvisionError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let rep = self
            .transport
            .upload(self.batch.clone())
            .await
            .map_err(Self::tr("staging"))?;
        self.ctx.events.info(format!(
            "staged {} file(s) ({} byte(s)) to {}, took {:.2}s",
            rep.files,
            rep.bytes,
            self.staging.cdir,
            started.elapsed().as_secs_f64()
        ));
        Ok(())
    }
}
