//! Shell steps: staged scripts (one exec per step, or one per script
//! for a step that reboots), `shell-local`, and their exit statuses.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use opsbake_core::local::LocalTransport;
use opsbake_core::template::ShellProvisioner;
use opsbake_core::transport::{shell_quote, ExecRequest, ExitStatus, Transport, TransportError};

use super::{tv_dur, Session, DEFAULT_START_RETRY_TIMEOUT};
use crate::error::ProvisionError;
use crate::output::StepSink;
use crate::shell::{self, CommandParts};
use crate::staging;

impl Session<'_> {
    pub(super) async fn exec_checked(
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
    pub(super) fn script_command(
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
    /// `remove_staging` (the last step): the staging dir is removed by the
    /// same exec once every script succeeded (`staging_removed` says it was).
    /// A runner that ends before its first script starts (`sudo -n` wanting
    /// a password) fails the step under its own label (`step_sink`), not
    /// the first script.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn shell_batch(
        &mut self,
        s: &ShellProvisioner,
        label: &str,
        step_sink: &Arc<StepSink>,
        batch: Vec<(String, String, Arc<StepSink>)>,
        timeout: Option<Duration>,
        remove_staging: bool,
    ) -> Result<(), ProvisionError> {
        // The default `execute_command` (sudo, env, the staging wrapper,
        // then the script: four programs and a PAM session per script) is
        // folded into the batch: one sudo for the whole step, the wrapper's
        // PATH and directory set once, and each script started directly in
        // its own subshell with the step's variables exported. The script
        // sees the same user, environment, PATH and working directory.
        let fold = s.execute_command.is_none();
        let vars = shell::render_vars(Some(&self.staging), &s.environment_vars);
        let mut scripts = Vec::with_capacity(batch.len());
        for (l, name, sink) in batch {
            let command = if fold {
                let path = self.staging.cpath(&format!("scripts/{name}"));
                format!("export {vars}; exec {}", shell_quote(&path))
            } else {
                self.script_command(s, &l, &name)?
            };
            scripts.push(shell::BatchScript {
                label: l,
                name,
                command,
                sink,
            });
        }
        let valid = valid_codes(s);
        let tag = format!("{:016x}", rand_tag());
        // The runner is root when the folded batch runs under sudo: its
        // removal needs no sudo of its own then.
        let as_root = self.root || (fold && s.sudo.unwrap_or(true));
        let cleanup = remove_staging.then(|| self.staging.remove_command(!as_root));
        let mut cmd = shell::batch_command(&tag, &scripts, &valid, cleanup.as_deref());
        if fold {
            let dir = shell_quote(&self.staging.cpath("scripts"));
            cmd = format!("PATH={dir}:\"$PATH\"; export PATH; cd {dir} || exit 125\n{cmd}");
            if s.sudo.unwrap_or(true) && !self.root {
                cmd = format!("sudo -n /bin/sh -c {}", shell_quote(&cmd));
            }
        }
        let bsink = Arc::new(shell::BatchSink::new(
            &tag,
            &scripts,
            step_sink.clone(),
            self.ctx.events.clone(),
        ));
        let mut req = ExecRequest::new(cmd);
        req.timeout = timeout;
        let r = self.transport.exec(req, bsink.clone()).await;
        let state = bsink.state();
        self.staging_removed = state.cleaned;
        // Where a failure belongs: the script running (or the one that
        // ended), else the step itself.
        let at = |i: Option<usize>| {
            i.and_then(|i| scripts.get(i))
                .map(|x| (x.label.as_str(), x.sink.clone()))
                .unwrap_or((label, step_sink.clone()))
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
                // The runner ended before the first script started.
                None if state.current.is_none() => {
                    return Err(ProvisionError::NotStarted {
                        step: label.to_string(),
                        status: Box::new(st),
                        tail: step_sink.tail_message(),
                    });
                }
                None => {
                    // Started and ended without a report (killed, or an
                    // `exit` that ended the runner): the channel's status
                    // is its own.
                    let (l, sink) = at(state.current);
                    return check_status(l, st, &[], &sink);
                }
            }
        }
        Ok(())
    }

    pub(super) async fn shell_script(
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

    pub(super) async fn shell_local(
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
}

pub(super) fn valid_codes(s: &ShellProvisioner) -> Vec<u32> {
    if s.valid_exit_codes.is_empty() {
        vec![0]
    } else {
        s.valid_exit_codes.clone()
    }
}

/// A tag for the batch runner's report lines.
pub(super) fn rand_tag() -> u64 {
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

pub(super) fn scripts_label_needed(s: &ShellProvisioner) -> bool {
    s.common.name.is_none() && s.scripts.len() > 1
}

pub(super) fn timeout_or_transport(
    label: &str,
    e: TransportError,
    sink: &StepSink,
) -> ProvisionError {
    match e {
        TransportError::Timeout { after, .. } => ProvisionError::Timeout {
            step: label.to_string(),
            after,
            tail: sink.tail_message(),
        },
        source => ProvisionError::transport(label, source),
    }
}

pub(super) fn check_status(
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
