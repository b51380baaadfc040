//! Waiting through `WaitForUpdatesEx` (a private property collector and
//! filter per wait; no sleep loop) and the tasks built on it.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::xml::{el, Node};
use super::{filter_spec, short, this, typed_fault, MoRef, Props, Vim};
use crate::error::VsphereError;

/// How long a stopped build still waits for a task it started (after
/// `CancelTask`) or an import lease, to learn what it made: under the
/// runner's bound for a create call under way (`CREATE_STOP_GRACE`, 30 s).
pub const TASK_STOP_GRACE: Duration = Duration::from_secs(20);

impl Vim {
    /// Wait with `WaitForUpdatesEx` until `check` says done. `check` gets
    /// the object's current values of `paths` after every update and returns
    /// `None` (not yet) or the outcome. `timeout` bounds the whole wait.
    pub async fn wait_for<T>(
        &self,
        obj: &MoRef,
        paths: &[&str],
        what: &str,
        timeout: Duration,
        cancel: &CancellationToken,
        mut check: impl FnMut(&Props) -> Option<Result<T, VsphereError>>,
    ) -> Result<T, VsphereError> {
        let pc = self
            .call_moref(
                "CreatePropertyCollector",
                &this(&self.sc.property_collector),
                what,
            )
            .await?;
        let r = async {
            let body = format!(
                "{}<spec>{}</spec><partialUpdates>false</partialUpdates>",
                this(&pc),
                filter_spec(obj, paths, false)
            );
            self.call_moref("CreateFilter", &body, &obj.to_string())
                .await?;
            let deadline = tokio::time::Instant::now() + timeout;
            let mut version = String::new();
            let mut props = Props::new();
            let mut last = "no update yet".to_string();
            loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return Err(VsphereError::Timeout {
                        what: what.to_string(),
                        object: obj.to_string(),
                        after: timeout,
                        last,
                    });
                }
                // whole seconds, at least 1, at most 60 per call
                let secs = left.as_secs().clamp(1, 60);
                let body = format!(
                    "{}{}<options><maxWaitSeconds>{secs}</maxWaitSeconds></options>",
                    this(&pc),
                    el("version", &version)
                );
                let objs = obj.to_string();
                let call = self.call_rv("WaitForUpdatesEx", &body, &objs);
                let rv = tokio::select! {
                    r = call => r?,
                    _ = cancel.cancelled() => return Err(VsphereError::Cancelled(format!("waiting for {what} of {obj}"))),
                    _ = tokio::time::sleep_until(deadline) => continue,
                };
                let Some(set) = rv else { continue };
                if let Some(v) = set.text_of("version") {
                    version = v.to_string();
                }
                for fs in set.children("filterSet") {
                    for os in fs.children("objectSet") {
                        for ch in os.children("changeSet") {
                            let (Some(name), op) = (ch.text_of("name"), ch.text_of("op"))
                            else {
                                continue;
                            };
                            match (op, ch.child("val")) {
                                (Some("remove"), _) | (_, None) => {
                                    props.remove(name);
                                }
                                (_, Some(v)) => {
                                    props.insert(name.to_string(), v.clone());
                                }
                            }
                        }
                        if os.text_of("kind") == Some("leave") {
                            return Err(VsphereError::ManagedObjectNotFound {
                                op: format!("waiting for {what}"),
                                object: obj.to_string(),
                            });
                        }
                    }
                }
                last = props
                    .iter()
                    .map(|(k, v)| format!("{k}={}", short(&v.text)))
                    .collect::<Vec<_>>()
                    .join(", ");
                if let Some(done) = check(&props) {
                    return done;
                }
            }
        }
        .await;
        let _ = self
            .call("DestroyPropertyCollector", &this(&pc), &pc.to_string())
            .await;
        r
    }

    /// Wait for a task; its `info.result` on success, a typed error naming
    /// `op` and `object` on failure.
    pub async fn wait_task(
        &self,
        task: &MoRef,
        op: &str,
        object: &str,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<Option<Node>, VsphereError> {
        let what = format!("{op} task");
        self.wait_for(task, &["info"], &what, timeout, cancel, |p| {
            let info = p.get("info")?;
            match info.text_of("state")? {
                "success" => Some(Ok(info.child("result").cloned())),
                "error" => {
                    let e = info.child("error");
                    let fault = e.and_then(|e| e.child("fault"));
                    let kind = fault
                        .and_then(Node::xsi_type)
                        .unwrap_or("SystemError")
                        .to_string();
                    let msg = e
                        .and_then(|e| e.text_of("localizedMessage"))
                        .unwrap_or_default()
                        .to_string();
                    Some(Err(match typed_fault(op, object, &kind, &msg, fault) {
                        VsphereError::Fault { fault, message, .. } => VsphereError::Task {
                            task: task.value.clone(),
                            op: op.to_string(),
                            object: object.to_string(),
                            fault,
                            message,
                        },
                        other => other,
                    }))
                }
                _ => None,
            }
        })
        .await
    }

    /// Run a `*_Task` method and wait for it.
    ///
    /// Stopped (`cancel`) while the task runs, the server's task does not
    /// stop with us: it is asked to (`CancelTask`, best effort: not every
    /// task can be cancelled, and vcsim has no `CancelTask`), then waited
    /// for a little longer ([`TASK_STOP_GRACE`]), so that a VM a clone made
    /// anyway is returned and recorded rather than appearing after the
    /// unwind looked for it. This only matters where the caller is still
    /// polled after the stop: inside a create call (`create_resource`).
    pub async fn run_task(
        &self,
        op: &str,
        body: &str,
        object: &str,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<Option<Node>, VsphereError> {
        let task = self.call_moref(op, body, object).await?;
        match self.wait_task(&task, op, object, timeout, cancel).await {
            Err(stopped @ VsphereError::Cancelled(_)) => {
                if let Err(e) = self.call("CancelTask", &this(&task), object).await {
                    tracing::debug!("CancelTask {task} ({op} of {object}): {e}");
                }
                match self
                    .wait_task(
                        &task,
                        op,
                        object,
                        TASK_STOP_GRACE,
                        &CancellationToken::new(),
                    )
                    .await
                {
                    Ok(r) => Ok(r),
                    Err(e) => {
                        tracing::debug!("{op} of {object} after the stop: {e}");
                        Err(stopped)
                    }
                }
            }
            r => r,
        }
    }
}
