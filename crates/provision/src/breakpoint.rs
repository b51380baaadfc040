//! `breakpoint`: wait for Enter on a terminal; skipped with a warning when
//! there is none. `--debug` adds one after every step.

use std::io::IsTerminal as _;

use async_trait::async_trait;
use opsbake_core::builder::BuildContext;

use crate::error::ProvisionError;

/// Waits at a breakpoint.
#[async_trait]
pub trait Pauser: Send + Sync {
    /// Pause the build at `label` showing `note`; return when it may go on.
    async fn pause(
        &self,
        ctx: &BuildContext,
        label: &str,
        note: &str,
    ) -> Result<(), ProvisionError>;
}

/// One terminal is shared by every concurrent build: one breakpoint at a time.
static TTY_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits for Enter when stdin and stderr are terminals; otherwise warns and
/// goes on.
pub struct TtyPauser;

#[async_trait]
impl Pauser for TtyPauser {
    async fn pause(
        &self,
        ctx: &BuildContext,
        label: &str,
        note: &str,
    ) -> Result<(), ProvisionError> {
        if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
            ctx.events.warn(format!(
                "breakpoint `{label}` skipped: no terminal to wait on ({note})"
            ));
            return Ok(());
        }
        let _g = TTY_LOCK.lock().await;
        ctx.events.info(format!(
            "breakpoint `{label}`: {note}; press Enter to continue"
        ));
        eprintln!(
            "[{}] breakpoint `{label}`: {note}\n[{}] press Enter to continue (Ctrl-C cancels the build)",
            ctx.plan.iaas, ctx.plan.iaas
        );
        let read = tokio::task::spawn_blocking(|| {
            let mut s = String::new();
            std::io::stdin().read_line(&mut s).map(|_| ())
        });
        tokio::select! {
            _ = ctx.cancel.cancelled() => Err(ProvisionError::Cancelled),
            r = read => match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(ProvisionError::Io { path: "stdin".into(), source: e }),
                Err(e) => Err(ProvisionError::Config { step: label.to_string(), message: format!("breakpoint reader: {e}") }),
            },
        }
    }
}
