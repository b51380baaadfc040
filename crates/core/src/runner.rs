//! The step runner: runs one build per IaaS concurrently, each through
//! validate, base image, launch, connect, provision, capture and export,
//! with a cancellation token; unwinds each build's journal in reverse on
//! failure, cancel, and (for temporary resources) success.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::builder::{
    delete_local, Access, Artifact, ArtifactFile, BuildContext, BuildError, Builder, ConnectTarget,
    Connector, Deleted, Deleter, Provisioning, RunOptions,
};
use crate::events::{Emitter, EventKind, EventSink};
use crate::journal::{Header, Journal, Outcome, ProcessIdentity, Resource};
use crate::local::LocalTransport;
use crate::manifest::Inputs;
use crate::plan::BuildPlan;
use crate::transport::Transport;

/// What to do with a failed build's resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// Delete them (default).
    #[default]
    Cleanup,
    /// Keep them for debugging; print how to clean up later.
    Abort,
    /// Ask on the terminal.
    Ask,
}

/// Answers `--on-error=ask`.
pub trait Asker: Send + Sync {
    /// Return true to clean up.
    fn ask_cleanup(&self, build: &str, error: &str) -> bool;
}

/// What is being cleaned right now (shown on a second Ctrl-C).
#[derive(Default)]
pub struct CleanupTracker {
    pending: Mutex<Vec<(String, String)>>,
}

impl CleanupTracker {
    fn set(&self, build: &str, items: Vec<String>) {
        if let Ok(mut p) = self.pending.lock() {
            p.retain(|(b, _)| b != build);
            p.extend(items.into_iter().map(|i| (build.to_string(), i)));
        }
    }

    fn done(&self, build: &str, item: &str) {
        if let Ok(mut p) = self.pending.lock() {
            if let Some(i) = p.iter().position(|(b, x)| b == build && x == item) {
                p.remove(i);
            }
        }
    }

    /// `(build, resource)` pairs still to delete.
    pub fn pending(&self) -> Vec<(String, String)> {
        self.pending.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

/// Holds every build after its `validate` step until all have validated,
/// so that a failed validation (credentials, quotas) stops the run before
/// any build creates anything.
pub struct ValidationGate {
    barrier: tokio::sync::Barrier,
    failed: Mutex<Vec<String>>,
}

impl ValidationGate {
    fn new(n: usize) -> ValidationGate {
        ValidationGate {
            barrier: tokio::sync::Barrier::new(n.max(1)),
            failed: Mutex::new(Vec::new()),
        }
    }

    /// Report this build's validation and wait for the others. `Err` lists
    /// the builds whose validation failed.
    async fn arrive(
        &self,
        build: &str,
        ok: bool,
        cancel: &CancellationToken,
    ) -> Result<(), Vec<String>> {
        if !ok {
            if let Ok(mut f) = self.failed.lock() {
                f.push(build.to_string());
            }
        }
        tokio::select! {
            _ = self.barrier.wait() => {}
            _ = cancel.cancelled() => {}
        }
        let failed = self.failed.lock().map(|f| f.clone()).unwrap_or_default();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed)
        }
    }
}

/// One build to run.
pub struct BuildJob {
    /// The plan.
    pub plan: BuildPlan,
    /// The IaaS's builder.
    pub builder: Arc<dyn Builder>,
    /// Digests of the inputs (for the manifest), made while the build runs.
    pub inputs: Inputs,
}

/// How one build ended.
#[derive(Debug, Clone)]
pub struct BuildResult {
    /// The IaaS.
    pub iaas: String,
    /// The build id.
    pub build_id: String,
    /// The outcome.
    pub outcome: Outcome,
    /// The artifact, on success.
    pub artifact: Option<Artifact>,
    /// The error, on failure.
    pub error: Option<String>,
    /// Resources that could not be deleted (or were kept by
    /// `--on-error=abort`): `opsbake cleanup <build_id>` deletes them.
    pub leftovers: Vec<Resource>,
    /// True when resources were kept on purpose (`--on-error=abort`).
    pub kept_on_error: bool,
    /// Wall time.
    pub seconds: f64,
}

/// Runs builds.
pub struct Runner {
    /// Where journals live.
    pub state_dir: PathBuf,
    /// Where events go.
    pub sink: Arc<dyn EventSink>,
    /// SSH (comms-ssh); required for builders that return an SSH target.
    pub connector: Option<Arc<dyn Connector>>,
    /// Provisioners (provision); required when a plan has steps.
    pub provisioning: Option<Arc<dyn Provisioning>>,
    /// Options.
    pub options: RunOptions,
    /// What to do on failure.
    pub on_error: OnError,
    /// Cancel the other builds when one fails.
    pub fail_fast: bool,
    /// For `--on-error=ask`.
    pub asker: Option<Arc<dyn Asker>>,
    /// What is being cleaned (for the second Ctrl-C).
    pub tracker: Arc<CleanupTracker>,
    /// Serialises manifest writes of concurrent builds.
    manifest_lock: tokio::sync::Mutex<()>,
}

impl Runner {
    /// A runner with defaults.
    pub fn new(state_dir: PathBuf, sink: Arc<dyn EventSink>) -> Runner {
        Runner {
            state_dir,
            sink,
            connector: None,
            provisioning: None,
            options: RunOptions::default(),
            on_error: OnError::default(),
            fail_fast: false,
            asker: None,
            tracker: Arc::new(CleanupTracker::default()),
            manifest_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Run every job concurrently. Returns one result per job, in order.
    pub async fn run_all(
        &self,
        jobs: Vec<BuildJob>,
        cancel: CancellationToken,
    ) -> Vec<BuildResult> {
        let group = cancel.child_token();
        let gate = Arc::new(ValidationGate::new(jobs.len()));
        let futs = jobs.into_iter().map(|job| {
            let group = group.clone();
            let gate = gate.clone();
            async move {
                let r = self.run_one(job, group.clone(), &gate).await;
                if self.fail_fast && r.outcome == Outcome::Failed {
                    group.cancel();
                }
                r
            }
        });
        futures::future::join_all(futs).await
    }

    async fn run_one(
        &self,
        job: BuildJob,
        cancel: CancellationToken,
        gate: &ValidationGate,
    ) -> BuildResult {
        let started = Instant::now();
        let plan = Arc::new(job.plan);
        let iaas = plan.iaas.to_string();
        let events = Emitter::for_build(self.sink.clone(), &iaas, &plan.build_id);
        let fail = |error: String, outcome: Outcome| BuildResult {
            iaas: iaas.clone(),
            build_id: plan.build_id.clone(),
            outcome,
            artifact: None,
            error: Some(error),
            leftovers: Vec::new(),
            kept_on_error: false,
            seconds: started.elapsed().as_secs_f64(),
        };
        let header = Header {
            build_id: plan.build_id.clone(),
            iaas: iaas.clone(),
            template: plan.template_path.display().to_string(),
            started_at: crate::events::now_rfc3339(),
            process: ProcessIdentity::current(),
            cleanup_config: job.builder.cleanup_config(),
        };
        let journal = match Journal::create(&self.state_dir, header) {
            Ok(j) => Arc::new(j),
            Err(e) => {
                let _ = gate.arrive(&iaas, false, &cancel).await;
                let msg = e.to_string();
                events.emit(EventKind::BuildFinished {
                    outcome: "failed".into(),
                    seconds: started.elapsed().as_secs_f64(),
                    artifact_id: None,
                    error: Some(msg.clone()),
                });
                return fail(msg, Outcome::Failed);
            }
        };
        events.emit(EventKind::BuildStarted {
            template: plan.template_path.display().to_string(),
            state_dir: journal.dir().display().to_string(),
        });
        let ctx = BuildContext {
            plan: plan.clone(),
            journal: journal.clone(),
            events: events.clone(),
            cancel: cancel.clone(),
            options: self.options.clone(),
            creating: Default::default(),
        };
        let result = self
            .steps(&ctx, job.builder.as_ref(), job.inputs, gate, started)
            .await;
        let (outcome, artifact, error) = match result {
            Ok(a) => (Outcome::Succeeded, Some(a), None),
            Err(BuildError::Cancelled) => (Outcome::Cancelled, None, Some("cancelled".to_string())),
            Err(e) => {
                let msg = e.to_string();
                (Outcome::Failed, None, Some(msg))
            }
        };
        // Unwind: temporary resources always; everything not kept on failure,
        // unless the user wants to keep it.
        let keep = match (outcome, self.on_error) {
            (Outcome::Succeeded, _) => false,
            (_, OnError::Cleanup) => false,
            (_, OnError::Abort) => true,
            (_, OnError::Ask) => match &self.asker {
                Some(a) => !a.ask_cleanup(&iaas, error.as_deref().unwrap_or("")),
                None => false,
            },
        };
        let leftovers = if keep {
            let live = journal.state().live;
            if !live.is_empty() {
                events.warn(format!(
                    "keeping {} resource(s) for debugging; delete them later with `opsbake cleanup {}`",
                    live.len(),
                    plan.build_id
                ));
            }
            live
        } else {
            unwind(&journal, job.builder.as_ref(), &events, &self.tracker).await
        };
        if let Err(e) = journal.finished(outcome) {
            events.warn(format!("could not record the outcome in the journal: {e}"));
        }
        let seconds = started.elapsed().as_secs_f64();
        events.emit(EventKind::BuildFinished {
            outcome: match outcome {
                Outcome::Succeeded => "succeeded",
                Outcome::Failed => "failed",
                Outcome::Cancelled => "cancelled",
            }
            .into(),
            seconds,
            artifact_id: artifact.as_ref().map(|a| a.id.clone()),
            error: error.clone(),
        });
        BuildResult {
            iaas,
            build_id: plan.build_id.clone(),
            outcome,
            artifact,
            error,
            kept_on_error: keep && !leftovers.is_empty(),
            leftovers,
            seconds,
        }
    }

    async fn steps(
        &self,
        ctx: &BuildContext,
        builder: &dyn Builder,
        inputs: Inputs,
        gate: &ValidationGate,
        started: Instant,
    ) -> Result<Artifact, BuildError> {
        let plan = &ctx.plan;
        // Every build validates before any of them creates anything.
        // The builder's offline checks first (the CLI already reported them
        // with their places; a runner used directly still refuses).
        let offline = builder.offline_checks();
        let validated = if offline.is_empty() {
            step(ctx, "validate", builder.validate(ctx)).await
        } else {
            let msg: Vec<String> = offline
                .iter()
                .map(|f| format!("{}: {}", f.key, f.message))
                .collect();
            step(ctx, "validate", async {
                Err(BuildError::Other(msg.join("; ")))
            })
            .await
        };
        let others_ok = gate
            .arrive(&plan.iaas.to_string(), validated.is_ok(), &ctx.cancel)
            .await;
        validated?;
        if let Err(failed) = others_ok {
            return Err(BuildError::Other(format!(
                "not started: validation of the {} build failed",
                failed.join(", ")
            )));
        }
        let base = step(ctx, "base_image", builder.base_image(ctx)).await?;
        let mut access = Access::default();
        if let Some(c) = &self.connector {
            let comment = format!("opsbake-{}", plan.build_id);
            let key = c.generate_key(builder.key_algorithm(), &comment)?;
            crate::secret::redactor().register(key.private_openssh.expose());
            if ctx.options.debug_keep_key {
                let path = ctx.state_dir().join("id_build");
                write_private_key(&path, key.private_openssh.expose())?;
                ctx.events.warn(format!(
                    "--debug-keep-key: the build's private key is in {} (delete it when done)",
                    path.display()
                ));
            }
            access.key = Some(Arc::new(key));
        }
        let target = step(ctx, "launch", builder.launch(ctx, &base, &access)).await?;
        let transport: Arc<dyn Transport> = match target {
            ConnectTarget::Local { dir } => Arc::new(LocalTransport::new(dir)),
            ConnectTarget::Ssh(t) => {
                let Some(c) = &self.connector else {
                    return Err(BuildError::NotImplemented {
                        what: "SSH connections (no connector configured)".into(),
                    });
                };
                let c = c.clone();
                let cancel = ctx.cancel.clone();
                step(ctx, "connect", async move {
                    c.connect(&t, cancel).await.map_err(BuildError::from)
                })
                .await?
            }
        };
        if let Some(fp) = transport.trusted_on_first_use() {
            ctx.events.info(format!(
                "host key {fp} trusted on first use and pinned for this build (compare it with the VM's; pin it with ssh.host_key to check it)"
            ));
        }
        step(
            ctx,
            "before_provision",
            builder.before_provision(ctx, transport.as_ref()),
        )
        .await?;
        if !plan.provision.is_empty() {
            let Some(p) = &self.provisioning else {
                return Err(BuildError::NotImplemented {
                    what: "provisioning (no provisioner runner configured)".into(),
                });
            };
            step(ctx, "provision", p.run(ctx, transport.clone())).await?;
        }
        step(
            ctx,
            "after_provision",
            builder.after_provision(ctx, transport.as_ref()),
        )
        .await?;
        if let Err(e) = transport.close().await {
            ctx.events.warn(format!("closing the connection: {e}"));
        }
        let mut artifact = step(ctx, "capture", builder.capture(ctx)).await?;
        step(ctx, "export", builder.export(ctx, &mut artifact)).await?;
        // Checksums and manifest.
        let types = if plan.template.outputs.checksums.is_empty() {
            vec![crate::template::ChecksumType::Sha256]
        } else {
            plan.template.outputs.checksums.clone()
        };
        let sums = crate::manifest::write_checksums(&artifact.files, &types)?;
        artifact.files.extend(sums);
        let mut entry = crate::manifest::entry(plan, &artifact, inputs.get().await?);
        entry.build_seconds = Some((started.elapsed().as_secs_f64() * 10.0).round() / 10.0);
        {
            let _g = self.manifest_lock.lock().await;
            crate::manifest::append(&plan.manifest_path, entry)?;
        }
        artifact.files.push(ArtifactFile {
            name: plan.manifest_path.display().to_string(),
            size: std::fs::metadata(&plan.manifest_path)
                .map(|m| m.len())
                .unwrap_or(0),
        });
        Ok(artifact)
    }
}

/// Write a private key readable by its owner only (created 0600, never
/// widened).
fn write_private_key(path: &std::path::Path, key: &str) -> Result<(), BuildError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(BuildError::io(path))?;
    f.write_all(key.as_bytes()).map_err(BuildError::io(path))
}

/// Run one step: events around it, and cancellation.
pub async fn step<T>(
    ctx: &BuildContext,
    name: &str,
    fut: impl std::future::Future<Output = Result<T, BuildError>>,
) -> Result<T, BuildError> {
    if ctx.cancel.is_cancelled() {
        return Err(BuildError::Cancelled);
    }
    let started = Instant::now();
    ctx.events
        .emit(EventKind::StepStarted { step: name.into() });
    let mut fut = std::pin::pin!(fut);
    let r = tokio::select! {
        biased;
        _ = ctx.cancel.cancelled() => None,
        r = &mut fut => Some(r),
    };
    let r = match r {
        Some(r) => r,
        None => finish_creates(ctx, name, fut).await,
    };
    match &r {
        Ok(_) => ctx.events.emit(EventKind::StepFinished {
            step: name.into(),
            seconds: started.elapsed().as_secs_f64(),
        }),
        Err(e) => ctx.events.emit(EventKind::StepFailed {
            step: name.into(),
            error: e.to_string(),
        }),
    }
    r
}

/// How long a stopped step may run on to finish the create calls it has
/// under way ([`BuildContext::create_resource`]); a second Ctrl-C stops at
/// once.
pub const CREATE_STOP_GRACE: Duration = Duration::from_secs(30);

/// A stopped step: dropped at once, unless a create call is under way; then
/// it runs on until no create call is (its resource recorded or its call
/// failed), it ends, or [`CREATE_STOP_GRACE`] has passed.
async fn finish_creates<T>(
    ctx: &BuildContext,
    name: &str,
    mut fut: std::pin::Pin<&mut impl std::future::Future<Output = Result<T, BuildError>>>,
) -> Result<T, BuildError> {
    let n = ctx.creating.count();
    if n == 0 {
        return Err(BuildError::Cancelled);
    }
    ctx.events.info(format!(
        "stopping: {name} has {n} create call(s) under way; waiting up to {}s to record what they made",
        CREATE_STOP_GRACE.as_secs()
    ));
    tokio::select! {
        biased;
        // the build was stopped: whatever the step ends with, it is
        // cancelled (a create call's wait that saw the stop fails in the
        // IaaS's own words)
        r = &mut fut => {
            if let Err(e) = r {
                if !matches!(e, BuildError::Cancelled) {
                    ctx.events.info(format!("stopping: {name} ended with: {e}"));
                }
            }
            Err(BuildError::Cancelled)
        },
        _ = ctx.creating.settled() => Err(BuildError::Cancelled),
        _ = tokio::time::sleep(CREATE_STOP_GRACE) => {
            ctx.events.warn(format!(
                "stopping: {name}'s create call(s) did not finish in {}s; the unwind looks for what they made by name and tag",
                CREATE_STOP_GRACE.as_secs()
            ));
            Err(BuildError::Cancelled)
        }
    }
}

/// Delete every live resource of a journal in reverse creation order (one
/// more pass for those that failed: a security group may only go once its
/// instance is gone). Returns what could not be deleted.
pub async fn unwind(
    journal: &Journal,
    deleter: &dyn Deleter,
    events: &Emitter,
    tracker: &CleanupTracker,
) -> Vec<Resource> {
    let build = journal.build_id().to_string();
    let mut failed = Vec::new();
    for pass in 0..2 {
        let live: Vec<Resource> = journal.state().live.into_iter().rev().collect();
        if live.is_empty() {
            break;
        }
        tracker.set(&build, live.iter().map(describe).collect());
        failed.clear();
        for res in live {
            let label = describe(&res);
            let r = match delete_local(&res).await {
                Some(r) => r,
                None => deleter.delete(&res).await,
            };
            let id = res.id.clone().unwrap_or_else(|| res.name.clone());
            match r {
                Ok(how) => {
                    if let Err(e) = journal.deleted(res.seq) {
                        events.warn(format!("journal: {e}"));
                    }
                    if how == Deleted::Now {
                        events.emit(EventKind::ResourceDeleted {
                            seq: res.seq,
                            kind: res.kind.clone(),
                            id,
                        });
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    if let Err(e) = journal.delete_failed(res.seq, &msg) {
                        events.warn(format!("journal: {e}"));
                    }
                    if pass == 1 {
                        events.emit(EventKind::ResourceDeleteFailed {
                            seq: res.seq,
                            kind: res.kind.clone(),
                            id,
                            error: msg,
                        });
                    }
                    failed.push(res);
                }
            }
            tracker.done(&build, &label);
        }
    }
    tracker.set(&build, Vec::new());
    failed
}

fn describe(r: &Resource) -> String {
    format!("{} {}", r.kind, r.id.as_deref().unwrap_or(&r.name))
}
