//! The provisioning run: staging, every step in order with its retries,
//! timeouts and pauses, the hand-off, and the staging dir's removal.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use opsbake_core::builder::{BuildContext, BuildError, Provisioning};
use opsbake_core::events::EventKind;
use opsbake_core::template::{Dur, Provisioner, Tv};
use opsbake_core::transport::{ExecRequest, Transport, TransportError, Upload};

use crate::breakpoint::{Pauser, TtyPauser};
use crate::chef;
use crate::error::ProvisionError;
use crate::file;
use crate::handoff::{self, HandoffConfig, Identity};
use crate::output::StepSink;
use crate::staging::{self, StagedScripts, Staging};

mod reboot;
mod scripts;
mod stage;

use scripts::scripts_label_needed;

/// Default wait for a login after an expected disconnect.
pub const DEFAULT_START_RETRY_TIMEOUT: Duration = Duration::from_secs(300);

/// Options of the provisioning runner that templates cannot set.
#[derive(Debug, Clone)]
pub struct ProvisionOptions {
    /// Parent of the staging dirs on the target.
    pub staging_root: String,
    /// Tests only: allow the hand-off on a loopback target of the `ssh`
    /// builder (a QEMU guest behind a forwarded port). The boot id and
    /// machine id checks still apply.
    pub allow_loopback_handoff: bool,
    /// After a step with `expect_disconnect` exits without the connection
    /// dropping, how long to watch for the drop (a `reboot` returns before
    /// the machine goes away).
    pub disconnect_grace: Duration,
    /// Wait between attempts of a step with `max_retries`.
    pub retry_backoff: Duration,
}

impl Default for ProvisionOptions {
    fn default() -> Self {
        ProvisionOptions {
            staging_root: staging::DEFAULT_STAGING_ROOT.to_string(),
            allow_loopback_handoff: false,
            disconnect_grace: Duration::from_secs(30),
            retry_backoff: Duration::from_secs(2),
        }
    }
}

/// Runs a plan's provisioners (core's [`Provisioning`]).
pub struct Provision {
    opts: ProvisionOptions,
    pauser: Arc<dyn Pauser>,
}

impl Default for Provision {
    fn default() -> Self {
        Provision::new(ProvisionOptions::default())
    }
}

impl Provision {
    /// A runner with these options and the terminal breakpoint.
    pub fn new(opts: ProvisionOptions) -> Provision {
        Provision {
            opts,
            pauser: Arc::new(TtyPauser),
        }
    }

    /// Replace how breakpoints wait (tests).
    pub fn with_pauser(mut self, pauser: Arc<dyn Pauser>) -> Provision {
        self.pauser = pauser;
        self
    }
}

fn tv_dur(v: &Option<Tv<Dur>>) -> Option<Duration> {
    v.as_ref().and_then(|t| t.get().ok()).map(|d| d.0)
}

fn uses_target(p: &Provisioner) -> bool {
    !matches!(p, Provisioner::ShellLocal(_) | Provisioner::Breakpoint(_))
}

/// The hand-off must be the last step that uses the VM (its sudo and the
/// build's key are gone after it), and there is at most one.
pub fn check_order(steps: &[Provisioner]) -> Result<(), ProvisionError> {
    let mut seen = false;
    for s in steps {
        if seen && uses_target(s) {
            return Err(ProvisionError::Config {
                step: s.label(),
                message: "comes after the hand-off, which must be the last step that uses the VM (move it before `handoff`)".into(),
            });
        }
        if matches!(s, Provisioner::Handoff(_)) {
            seen = true;
        }
    }
    Ok(())
}

struct Session<'a> {
    ctx: &'a BuildContext,
    transport: Arc<dyn Transport>,
    staging: Staging,
    scripts: StagedScripts,
    batch: Vec<Upload>,
    /// The batch went up with the staging dir's mkdir (no upload).
    staged_inline: bool,
    /// The last step's exec removed the staging dir.
    staging_removed: bool,
    chef: Vec<Option<chef::ChefStage>>,
    handoff: Option<HandoffConfig>,
    /// The login user is root: no sudo.
    root: bool,
    boot_id: String,
    opts: &'a ProvisionOptions,
    pauser: Arc<dyn Pauser>,
}

#[async_trait]
impl Provisioning for Provision {
    async fn run(
        &self,
        ctx: &BuildContext,
        transport: Arc<dyn Transport>,
    ) -> Result<(), BuildError> {
        self.run_inner(ctx, transport)
            .await
            .map_err(BuildError::from)
    }
}

impl Provision {
    async fn run_inner(
        &self,
        ctx: &BuildContext,
        transport: Arc<dyn Transport>,
    ) -> Result<(), ProvisionError> {
        let plan = &ctx.plan;
        let steps = &plan.provision;
        check_order(steps)?;
        let staging = Staging::new(&self.opts.staging_root, &plan.build_id, |p| {
            transport.command_path(p)
        });
        let scripts = staging::stage_scripts(steps, &plan.template_dir, &staging)?;
        let log_level = |c: &opsbake_core::template::ChefSoloProvisioner| {
            if ctx.options.debug {
                "debug".to_string()
            } else {
                c.log_level
                    .clone()
                    .unwrap_or_else(|| chef::DEFAULT_LOG_LEVEL.to_string())
            }
        };
        let chef: Vec<Option<chef::ChefStage>> = steps
            .iter()
            .enumerate()
            .map(|(i, s)| match s {
                Provisioner::ChefSolo(c) => Some(chef::stage(
                    c,
                    i,
                    &plan.template_dir,
                    &staging,
                    &log_level(c),
                )),
                _ => None,
            })
            .collect();
        let handoff = steps.iter().find_map(|s| match s {
            Provisioner::Handoff(h) => Some(HandoffConfig::from_step(
                h,
                plan.iaas,
                &plan.ssh.user,
                &plan.build_id,
                ctx.options.keep_staging,
            )),
            _ => None,
        });
        if let Some(h) = &handoff {
            handoff::check_config(h)?;
        }
        let mut batch = scripts.uploads.clone();
        for c in chef.iter().flatten() {
            batch.extend(c.uploads.iter().cloned());
        }
        if let Some(h) = &handoff {
            batch.extend(handoff::uploads(h, &staging));
        }
        let mut s = Session {
            ctx,
            transport: transport.clone(),
            staging,
            scripts,
            batch,
            staged_inline: false,
            staging_removed: false,
            chef,
            handoff,
            root: false,
            boot_id: String::new(),
            opts: &self.opts,
            pauser: self.pauser.clone(),
        };
        let remote = steps.iter().any(uses_target);
        // Nothing to stage (`file` steps only): no staging dir to make and
        // remove (two execs), and no empty parent left behind.
        if !remote || (s.batch.is_empty() && s.handoff.is_none()) {
            return s.steps().await;
        }
        let ident = s.prepare().await?;
        let r = async {
            if s.handoff.is_some() {
                handoff::guard(
                    &ident,
                    &Identity::local(),
                    plan.iaas,
                    plan.ssh.host.as_deref(),
                    self.opts.allow_loopback_handoff,
                )?;
            }
            s.upload_batch().await?;
            if s.handoff.is_some() && !s.root {
                let hs = steps.iter().find_map(|x| match x {
                    Provisioner::Handoff(h) => Some(h),
                    _ => None,
                });
                let pw = hs
                    .and_then(|h| h.sudo_password.as_ref())
                    .or(plan.ssh.password.as_ref());
                handoff::grant(&s.transport, &ctx.events, &plan.ssh.user, pw).await?;
            }
            s.steps().await
        }
        .await;
        let handoff_done = r.is_ok() && s.handoff.is_some();
        if ctx.options.keep_staging {
            ctx.events.info(format!(
                "keeping the staging dir {} on the VM (--keep-staging)",
                s.staging.cdir
            ));
        } else if !(handoff_done || s.staging_removed) {
            // The hand-off removes it itself (and vcap's sudo is gone then).
            let sink = Arc::new(StepSink::new(None, "staging"));
            let cmd = s.staging.remove_command(!s.root);
            match s.transport.exec(ExecRequest::new(cmd), sink.clone()).await {
                Ok(st) if st.success() => {}
                Ok(st) => ctx.events.warn(format!(
                    "could not remove the staging dir {} ({st}){}",
                    s.staging.cdir,
                    sink.tail_message()
                )),
                Err(e) => ctx.events.warn(format!(
                    "could not remove the staging dir {}: {e}",
                    s.staging.cdir
                )),
            }
        }
        r
    }
}

impl Session<'_> {
    fn tr(step: &str) -> impl FnOnce(TransportError) -> ProvisionError + '_ {
        move |source| ProvisionError::transport(step, source)
    }

    fn sudo(&self) -> &'static str {
        if self.root {
            ""
        } else {
            "sudo -n "
        }
    }

    async fn steps(&mut self) -> Result<(), ProvisionError> {
        let steps = self.ctx.plan.provision.clone();
        for (i, step) in steps.iter().enumerate() {
            let label = step.label();
            let c = step.common();
            if let Some(p) = tv_dur(&c.pause_before) {
                self.ctx
                    .events
                    .info(format!("{label}: pausing {p:?} before the step"));
                tokio::select! {
                    _ = self.ctx.cancel.cancelled() => return Err(ProvisionError::Cancelled),
                    _ = tokio::time::sleep(p) => {}
                }
            }
            let retries = c
                .max_retries
                .as_ref()
                .and_then(|t| t.get().ok())
                .unwrap_or(0);
            let retryable = !matches!(step, Provisioner::Handoff(_) | Provisioner::Breakpoint(_));
            let started = Instant::now();
            self.ctx.events.emit(EventKind::StepStarted {
                step: label.clone(),
            });
            let mut attempt = 0u32;
            let r = loop {
                let r = self.step_with_timeout(i, step).await;
                match r {
                    Err(e)
                        if retryable
                            && attempt < retries
                            && !matches!(
                                e,
                                ProvisionError::Cancelled
                                    | ProvisionError::Config { .. }
                                    | ProvisionError::Refused { .. }
                            ) =>
                    {
                        attempt += 1;
                        self.ctx.events.warn(format!(
                            "{label}: attempt {attempt} of {} failed, retrying: {e}",
                            retries + 1
                        ));
                        tokio::select! {
                            _ = self.ctx.cancel.cancelled() => break Err(ProvisionError::Cancelled),
                            _ = tokio::time::sleep(self.opts.retry_backoff) => {}
                        }
                    }
                    r => break r,
                }
            };
            match &r {
                Ok(()) => self.ctx.events.emit(EventKind::StepFinished {
                    step: label.clone(),
                    seconds: started.elapsed().as_secs_f64(),
                }),
                Err(e) => self.ctx.events.emit(EventKind::StepFailed {
                    step: label.clone(),
                    error: e.to_string(),
                }),
            }
            r?;
            if self.ctx.options.debug && !matches!(step, Provisioner::Breakpoint(_)) {
                self.pauser
                    .pause(self.ctx, &format!("after {label}"), "--debug")
                    .await?;
            }
        }
        Ok(())
    }

    async fn step_with_timeout(
        &mut self,
        index: usize,
        step: &Provisioner,
    ) -> Result<(), ProvisionError> {
        let label = step.label();
        let sink = Arc::new(StepSink::new(Some(self.ctx.events.clone()), &label));
        let timeout = tv_dur(&step.common().timeout);
        match timeout {
            // The hand-off is never cut short half-way.
            Some(t) if !matches!(step, Provisioner::Handoff(_)) => {
                match tokio::time::timeout(t, self.step(index, step, &sink, Some(t))).await {
                    Ok(r) => r,
                    Err(_) => Err(ProvisionError::Timeout {
                        step: label,
                        after: t,
                        tail: sink.tail_message(),
                    }),
                }
            }
            _ => self.step(index, step, &sink, None).await,
        }
    }

    async fn step(
        &mut self,
        index: usize,
        step: &Provisioner,
        sink: &Arc<StepSink>,
        timeout: Option<Duration>,
    ) -> Result<(), ProvisionError> {
        let label = step.label();
        match step {
            Provisioner::Shell(s) => {
                let scripts = self
                    .scripts
                    .per_step
                    .get(index)
                    .cloned()
                    .unwrap_or_default();
                let mut batch = Vec::new();
                for sc in scripts {
                    let l = if scripts_label_needed(s) {
                        format!("shell {}", sc.name)
                    } else {
                        label.clone()
                    };
                    let sink = if l == label {
                        sink.clone()
                    } else {
                        Arc::new(StepSink::new(Some(self.ctx.events.clone()), &l))
                    };
                    batch.push((l, sc.name, sink));
                }
                // Several scripts: one exec runs them in turn (a round trip
                // and an sshd session per step, not per script). A step that
                // reboots keeps one exec per script (the drop is expected).
                // The last step of a build removes the staging dir in the
                // same exec (one script too), unless it is kept or the
                // hand-off removes it.
                let remove_staging = index + 1 == self.ctx.plan.provision.len()
                    && !self.ctx.options.keep_staging
                    && self.handoff.is_none();
                if !s.expect_disconnect && (batch.len() > 1 || remove_staging) {
                    return self
                        .shell_batch(s, &label, sink, batch, timeout, remove_staging)
                        .await;
                }
                for (l, name, sink) in batch {
                    self.shell_script(s, &l, &name, &sink, timeout).await?;
                }
                Ok(())
            }
            Provisioner::ShellLocal(s) => self.shell_local(index, s, &label, sink, timeout).await,
            Provisioner::File(f) => self.file(f, &label).await,
            Provisioner::ChefSolo(c) => {
                let Some(stage) = self.chef.get(index).cloned().flatten() else {
                    return Err(ProvisionError::Config {
                        step: label,
                        message: "chef step was not staged".into(),
                    });
                };
                let sudo = self.sudo();
                let install = c.install.as_deref().unwrap_or("skip");
                let pre = match chef::install_command(install, sudo) {
                    Some(cmd) => {
                        if self.ctx.options.offline && install == "omnitruck" {
                            return Err(ProvisionError::Config {
                                step: label,
                                message: "install: omnitruck downloads from the internet, which --offline forbids".into(),
                            });
                        }
                        cmd
                    }
                    None => chef::CHECK_COMMAND.to_string(),
                };
                self.exec_checked(&label, pre, sink, timeout, &[0]).await?;
                let level = if self.ctx.options.debug {
                    "debug".to_string()
                } else {
                    c.log_level
                        .clone()
                        .unwrap_or_else(|| chef::DEFAULT_LOG_LEVEL.to_string())
                };
                let cmd = chef::command(&stage, sudo, &level);
                self.exec_checked(&label, cmd, sink, timeout, &[0]).await
            }
            Provisioner::Breakpoint(b) => {
                let note = b.note.clone().unwrap_or_else(|| "paused".to_string());
                self.pauser.pause(self.ctx, &label, &note).await
            }
            Provisioner::Handoff(_) => {
                let Some(cfg) = self.handoff.clone() else {
                    return Err(ProvisionError::Config {
                        step: label,
                        message: "hand-off was not prepared".into(),
                    });
                };
                handoff::run(
                    &self.transport,
                    &self.ctx.events,
                    &self.staging,
                    &cfg,
                    self.root,
                )
                .await
            }
        }
    }

    async fn file(
        &self,
        f: &opsbake_core::template::FileProvisioner,
        label: &str,
    ) -> Result<(), ProvisionError> {
        let started = Instant::now();
        let dir = &self.ctx.plan.template_dir;
        let rep = if f.direction.as_deref() == Some("download") {
            let items = file::downloads(f, dir)?;
            for d in &items {
                if let Some(p) = d.local.parent() {
                    std::fs::create_dir_all(p).map_err(|source| ProvisionError::Io {
                        path: p.to_path_buf(),
                        source,
                    })?;
                }
            }
            self.transport
                .download(items)
                .await
                .map_err(Self::tr(label))?
        } else {
            let items = file::uploads(f, dir)?;
            self.transport
                .upload(items)
                .await
                .map_err(Self::tr(label))?
        };
        self.ctx.events.info(format!(
            "{label}: {} file(s), {} dir(s), {} symlink(s), {} byte(s) in {:.2}s",
            rep.files,
            rep.dirs,
            rep.symlinks,
            rep.bytes,
            started.elapsed().as_secs_f64()
        ));
        Ok(())
    }
}
