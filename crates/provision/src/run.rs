//! The provisioning run: staging, every step in order with its retries,
//! timeouts and pauses, the hand-off, and the staging dir's removal.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use opsbake_core::builder::{BuildContext, BuildError, Provisioning};
use opsbake_core::events::EventKind;
use opsbake_core::local::LocalTransport;
use opsbake_core::template::{Dur, Provisioner, ShellProvisioner, Tv};
use opsbake_core::transport::{ExecRequest, ExitStatus, Transport, TransportError, Upload};

use crate::breakpoint::{Pauser, TtyPauser};
use crate::chef;
use crate::error::ProvisionError;
use crate::file;
use crate::handoff::{self, HandoffConfig, Identity};
use crate::output::StepSink;
use crate::shell::{self, CommandParts};
use crate::staging::{self, StagedScripts, Staging};

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
        } else if !handoff_done {
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

    /// Create the staging dir and learn who and where we are.
    async fn prepare(&mut self) -> Result<Identity, ProvisionError> {
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
    async fn upload_batch(&self) -> Result<(), ProvisionError> {
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
                if batch.len() > 1 && !s.expect_disconnect {
                    return self.shell_batch(s, &label, batch, timeout).await;
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

    async fn exec_checked(
        &self,
        label: &str,
        command: String,
        sink: &Arc<StepSink>,
        timeout: Option<Duration>,
        valid: &[u32],
    ) -> Result<(), ProvisionError> {
        let mut req = ExecRequest::new(command);
        req.timeout = timeout;
        let st = self
            .transport
            .exec(req, sink.clone())
            .await
            .map_err(|e| timeout_or_transport(label, e, sink))?;
        check_status(label, st, valid, sink)
    }

    /// The rendered `execute_command` of one staged script.
    fn script_command(
        &self,
        s: &ShellProvisioner,
        label: &str,
        name: &str,
    ) -> Result<String, ProvisionError> {
        let use_sudo = s.sudo.unwrap_or(true) && !self.root;
        let vars = shell::render_vars(Some(&self.staging), &s.environment_vars);
        let path = self.staging.cpath(&format!("scripts/{name}"));
        let run = self.staging.run_path();
        let parts = CommandParts {
            path: &path,
            vars: &vars,
            run: &run,
            staging: &self.staging.cdir,
            sudo: if use_sudo { "sudo -n " } else { "" },
        };
        let template = s
            .execute_command
            .as_deref()
            .unwrap_or(shell::DEFAULT_EXECUTE_COMMAND);
        shell::render_command(template, &parts).map_err(|message| ProvisionError::Config {
            step: label.to_string(),
            message,
        })
    }

    /// Every script of a step in one exec ([`shell::batch_command`]): each
    /// is named as it starts, its output goes to its own label, and the
    /// first status not in `valid_exit_codes` fails the step naming it.
    async fn shell_batch(
        &self,
        s: &ShellProvisioner,
        label: &str,
        batch: Vec<(String, String, Arc<StepSink>)>,
        timeout: Option<Duration>,
    ) -> Result<(), ProvisionError> {
        let mut scripts = Vec::with_capacity(batch.len());
        for (l, name, sink) in batch {
            let command = self.script_command(s, &l, &name)?;
            scripts.push(shell::BatchScript {
                label: l,
                name,
                command,
                sink,
            });
        }
        let valid = valid_codes(s);
        let tag = format!("{:016x}", rand_tag());
        let cmd = shell::batch_command(&tag, &scripts, &valid);
        let bsink = Arc::new(shell::BatchSink::new(
            &tag,
            &scripts,
            self.ctx.events.clone(),
        ));
        let mut req = ExecRequest::new(cmd);
        req.timeout = timeout;
        let r = self.transport.exec(req, bsink.clone()).await;
        let state = bsink.state();
        let at = |i: Option<usize>| {
            let sc = scripts.get(i.unwrap_or(0)).or(scripts.first());
            sc.map(|x| (x.label.as_str(), x.sink.clone()))
                .unwrap_or((label, Arc::new(StepSink::new(None, label))))
        };
        let st = match r {
            Ok(st) => st,
            Err(e) => {
                let (l, sink) = at(state.current);
                return Err(timeout_or_transport(l, e, &sink));
            }
        };
        for (i, rc) in state.exits.iter().enumerate() {
            match rc {
                Some(rc) if valid.contains(rc) => continue,
                Some(rc) => {
                    let (l, sink) = at(Some(i));
                    return check_status(l, ExitStatus::Code(*rc), &valid, &sink);
                }
                // The runner ends 0 only after the last script: a
                // transport that delivers no output at all still agrees.
                None if st.success() && state.current.is_none() => return Ok(()),
                None => {
                    // Started and ended without a report (killed, or an
                    // `exit` that ended the runner): the channel's status
                    // is its own. Never started: the runner failed first.
                    let (l, sink) = at(state.current.or(Some(i)));
                    return check_status(l, st, &[], &sink);
                }
            }
        }
        Ok(())
    }

    async fn shell_script(
        &mut self,
        s: &ShellProvisioner,
        label: &str,
        name: &str,
        sink: &Arc<StepSink>,
        timeout: Option<Duration>,
    ) -> Result<(), ProvisionError> {
        let cmd = self.script_command(s, label, name)?;
        let valid = valid_codes(s);
        if s.expect_disconnect {
            self.wait_firstboot(label).await;
        }
        let mut req = ExecRequest::new(cmd);
        req.timeout = timeout;
        let r = self.transport.exec(req, sink.clone()).await;
        if !s.expect_disconnect {
            let st = r.map_err(|e| timeout_or_transport(label, e, sink))?;
            return check_status(label, st, &valid, sink);
        }
        let wait = tv_dur(&s.start_retry_timeout).unwrap_or(DEFAULT_START_RETRY_TIMEOUT);
        match r {
            Err(e) if e.is_disconnect() => {
                self.ctx.events.info(format!(
                    "{label}: disconnected as expected; waiting up to {wait:?} for a login"
                ));
                self.reconnect(label, wait).await
            }
            Err(e) => Err(timeout_or_transport(label, e, sink)),
            Ok(ExitStatus::Signal { .. }) => {
                // Killed by the shutdown it started: the drop follows.
                self.await_disconnect(label, wait).await
            }
            Ok(st) => {
                check_status(label, st, &valid, sink)?;
                self.await_disconnect(label, wait).await
            }
        }
    }

    /// Before a reboot: a stemcell makes its host keys on the first boot
    /// (`/root/firstboot.sh`) and marks them done with `/root/firstboot_done`
    /// a little after the first login is possible. A reboot before the
    /// marker makes new host keys, which the pinned host key then refuses.
    /// Wait for the marker (best effort: needs root to look).
    async fn wait_firstboot(&self, label: &str) {
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
    async fn await_disconnect(
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

    async fn reconnect(&mut self, label: &str, wait: Duration) -> Result<(), ProvisionError> {
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
    async fn after_reconnect(&mut self, label: &str) -> Result<(), ProvisionError> {
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

    async fn shell_local(
        &self,
        index: usize,
        s: &ShellProvisioner,
        label: &str,
        sink: &Arc<StepSink>,
        timeout: Option<Duration>,
    ) -> Result<(), ProvisionError> {
        let dir = self.ctx.plan.template_dir.clone();
        let local = LocalTransport::new(dir.clone());
        let mut paths: Vec<PathBuf> = Vec::new();
        if !s.inline.is_empty() {
            let p = self
                .ctx
                .state_dir()
                .join(format!("shell-local-{:02}.sh", index + 1));
            std::fs::write(&p, staging::inline_script(&s.inline)).map_err(|source| {
                ProvisionError::Io {
                    path: p.clone(),
                    source,
                }
            })?;
            paths.push(p);
        }
        for sc in s.script.iter().chain(s.scripts.iter()) {
            paths.push(dir.join(sc));
        }
        let valid: Vec<u32> = if s.valid_exit_codes.is_empty() {
            vec![0]
        } else {
            s.valid_exit_codes.clone()
        };
        let vars = shell::render_vars(None, &s.environment_vars);
        for p in paths {
            use std::os::unix::fs::PermissionsExt as _;
            let exec_bit = std::fs::metadata(&p)
                .map(|m| m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false);
            let path = p.display().to_string();
            let default = if exec_bit {
                "env {{vars}} {{path}}"
            } else {
                "env {{vars}} /bin/sh {{path}}"
            };
            let parts = CommandParts {
                path: &path,
                vars: &vars,
                run: "",
                staging: "",
                sudo: "",
            };
            let cmd =
                shell::render_command(s.execute_command.as_deref().unwrap_or(default), &parts)
                    .map_err(|message| ProvisionError::Config {
                        step: label.to_string(),
                        message,
                    })?;
            let mut req = ExecRequest::new(cmd);
            req.timeout = timeout;
            let st = local
                .exec(req, sink.clone())
                .await
                .map_err(|e| timeout_or_transport(label, e, sink))?;
            check_status(label, st, &valid, sink)?;
        }
        Ok(())
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

fn valid_codes(s: &ShellProvisioner) -> Vec<u32> {
    if s.valid_exit_codes.is_empty() {
        vec![0]
    } else {
        s.valid_exit_codes.clone()
    }
}

/// A tag for the batch runner's report lines.
fn rand_tag() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

fn scripts_label_needed(s: &ShellProvisioner) -> bool {
    s.common.name.is_none() && s.scripts.len() > 1
}

fn timeout_or_transport(label: &str, e: TransportError, sink: &StepSink) -> ProvisionError {
    match e {
        TransportError::Timeout { after, .. } => ProvisionError::Timeout {
            step: label.to_string(),
            after,
            tail: sink.tail_message(),
        },
        source => ProvisionError::transport(label, source),
    }
}

fn check_status(
    label: &str,
    st: ExitStatus,
    valid: &[u32],
    sink: &StepSink,
) -> Result<(), ProvisionError> {
    match st.code() {
        Some(c) if valid.contains(&c) => Ok(()),
        _ => Err(ProvisionError::Command {
            step: label.to_string(),
            status: Box::new(st),
            valid: valid.to_vec(),
            tail: sink.tail_message(),
        }),
    }
}
