//! `shell` and `shell-local`: how a staged script is invoked.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use opsbake_core::events::Emitter;
use opsbake_core::transport::{shell_quote, OutputSink, Stream};

use crate::output::StepSink;
use crate::staging::Staging;

/// The default `execute_command` of `shell`: through sudo where the login
/// user needs it, with the variables passed by `env` (sudo resets the
/// environment), through the staging wrapper.
pub const DEFAULT_EXECUTE_COMMAND: &str = "{{sudo}}env {{vars}} {{run}} {{path}}";

/// `{{vars}}`: `OPSBAKE_STAGING='...' K='v' ...`, each value quoted so that
/// quotes and spaces arrive intact, usable both as `env` arguments and as
/// shell assignments before a command.
pub fn render_vars(staging: Option<&Staging>, vars: &BTreeMap<String, String>) -> String {
    let mut parts = Vec::new();
    if let Some(s) = staging {
        parts.push(format!("OPSBAKE_STAGING={}", shell_quote(&s.cdir)));
    }
    for (k, v) in vars {
        if k == "OPSBAKE_STAGING" && staging.is_some() {
            continue;
        }
        parts.push(format!("{k}={}", shell_quote(v)));
    }
    parts.join(" ")
}

/// The values an `execute_command` may reference.
pub struct CommandParts<'a> {
    /// The script, as commands on the target see it.
    pub path: &'a str,
    /// Rendered `{{vars}}`.
    pub vars: &'a str,
    /// The wrapper (empty for shell-local).
    pub run: &'a str,
    /// The staging dir (empty for shell-local).
    pub staging: &'a str,
    /// `sudo -n ` or empty.
    pub sudo: &'a str,
}

/// Fill in an `execute_command`: `{{path}}`, `{{vars}}`, `{{run}}`,
/// `{{staging}}`, `{{sudo}}`, and Packer's `{{.Path}}` and `{{.Vars}}`.
/// Unknown placeholders are an error.
pub fn render_command(template: &str, p: &CommandParts<'_>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(format!("unclosed `{{{{` in execute_command `{template}`"));
        };
        let key = after[..end].trim();
        let value = match key {
            "path" | ".Path" => shell_quote(p.path),
            "vars" | ".Vars" => p.vars.to_string(),
            "run" => {
                if p.run.is_empty() {
                    return Err("`{{run}}` is not available here (no staging)".to_string());
                }
                shell_quote(p.run)
            }
            "staging" => {
                if p.staging.is_empty() {
                    return Err("`{{staging}}` is not available here (no staging)".to_string());
                }
                shell_quote(p.staging)
            }
            "sudo" => p.sudo.to_string(),
            other => {
                return Err(format!(
                    "unknown placeholder `{{{{{other}}}}}` in execute_command (known: path, vars, run, staging, sudo)"
                ))
            }
        };
        out.push_str(&value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// One script of a `shell` step run in a batch.
pub struct BatchScript {
    /// Its label in the output (`shell NAME` or the step's name).
    pub label: String,
    /// Its staged name.
    pub name: String,
    /// The rendered `execute_command`.
    pub command: String,
    /// Where its output goes.
    pub sink: Arc<StepSink>,
}

/// The marker that starts the batch runner's report lines (an ASCII record
/// separator, then a per-run tag no script prints by chance).
fn marker(tag: &str) -> String {
    format!("\u{1e}OPSBAKE-{tag}")
}

/// One remote command that runs every script of a step in turn: before
/// each, a start line; after each, an exit line with its status; the first
/// status not in `valid` ends the batch with that status (as running them
/// one by one did). Each script runs in a subshell (an `exit` in a custom
/// `execute_command` ends only that script). `cleanup`: a command run
/// (from `/`, output discarded) after the last script when every status was
/// valid, reporting `cleaned` if it succeeded: the staging dir's removal
/// rides on the last step's exec instead of costing one of its own.
pub fn batch_command(
    tag: &str,
    scripts: &[BatchScript],
    valid: &[u32],
    cleanup: Option<&str>,
) -> String {
    let m = format!("\\036OPSBAKE-{tag}");
    let valid: Vec<String> = valid.iter().map(u32::to_string).collect();
    let mut c = String::new();
    for (i, sc) in scripts.iter().enumerate() {
        c.push_str(&format!("printf '{m} start {i}\\n'\n"));
        c.push_str(&format!("( {}\n)\n", sc.command));
        c.push_str(&format!(
            "rc=$?; printf '{m} exit {i} %s\\n' \"$rc\"\ncase ' {} ' in *\" $rc \"*) ;; *) exit \"$rc\";; esac\n",
            valid.join(" ")
        ));
    }
    if let Some(cl) = cleanup {
        c.push_str(&format!(
            "( cd / && {cl}\n) >/dev/null 2>&1 && printf '{m} cleaned\n'\n"
        ));
    }
    c.push_str("exit 0\n");
    c
}

/// Splits the batch's output by script: report lines move the current
/// script on (and name it in the build's output as it starts), every other
/// line goes to the current script's sink.
pub struct BatchSink {
    marker: String,
    scripts: Vec<(String, String, Arc<StepSink>)>,
    /// Lines before the first script starts (the runner's own: `sudo`'s
    /// complaint, for one), under the step's label.
    before: Arc<StepSink>,
    events: Emitter,
    state: Mutex<BatchState>,
}

/// What the batch reported so far.
#[derive(Debug, Default, Clone)]
pub struct BatchState {
    /// The script running now (the last one started).
    pub current: Option<usize>,
    /// Exit status of each finished script.
    pub exits: Vec<Option<u32>>,
    /// The batch's `cleanup` ran and succeeded.
    pub cleaned: bool,
}

impl BatchSink {
    /// A sink for `scripts` of a batch run with `tag`; `before`: the step's
    /// sink, for what the runner prints before the first script starts.
    pub fn new(
        tag: &str,
        scripts: &[BatchScript],
        before: Arc<StepSink>,
        events: Emitter,
    ) -> BatchSink {
        BatchSink {
            marker: marker(tag),
            before,
            scripts: scripts
                .iter()
                .map(|s| (s.label.clone(), s.name.clone(), s.sink.clone()))
                .collect(),
            events,
            state: Mutex::new(BatchState {
                current: None,
                exits: vec![None; scripts.len()],
                cleaned: false,
            }),
        }
    }

    /// The state now.
    pub fn state(&self) -> BatchState {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn current_sink(&self) -> Option<Arc<StepSink>> {
        let i = self.state.lock().ok()?.current?;
        self.scripts.get(i).map(|s| s.2.clone())
    }

    fn report(&self, rest: &str) {
        if rest.trim() == "cleaned" {
            if let Ok(mut s) = self.state.lock() {
                s.cleaned = true;
            }
            return;
        }
        let mut words = rest.split_whitespace();
        let (Some(kind), Some(i)) = (words.next(), words.next().and_then(|i| i.parse().ok()))
        else {
            return;
        };
        let i: usize = i;
        let Some((label, name, _)) = self.scripts.get(i) else {
            return;
        };
        match kind {
            "start" => {
                if let Ok(mut s) = self.state.lock() {
                    s.current = Some(i);
                }
                self.events.info(format!(
                    "{label}: running {name} ({} of {})",
                    i + 1,
                    self.scripts.len()
                ));
            }
            "exit" => {
                let rc = words.next().and_then(|c| c.parse().ok());
                if let Ok(mut s) = self.state.lock() {
                    if let Some(e) = s.exits.get_mut(i) {
                        *e = rc;
                    }
                }
            }
            _ => {}
        }
    }
}

impl OutputSink for BatchSink {
    fn line(&self, stream: Stream, line: &str) {
        if stream == Stream::Stdout {
            if let Some(at) = line.find(&self.marker) {
                // A script's last line without a newline comes first.
                if at > 0 {
                    if let Some(s) = self.current_sink() {
                        s.line(stream, &line[..at]);
                    }
                }
                self.report(&line[at + self.marker.len()..]);
                return;
            }
        }
        match self.current_sink() {
            Some(s) => s.line(stream, line),
            None => self.before.line(stream, line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_command_renders_with_and_without_sudo() {
        let st = Staging::new("/var/tmp/opsbake", "b1", |p| p.to_string());
        let mut vars = BTreeMap::new();
        vars.insert("GREETING".to_string(), "it's a \"test\"".to_string());
        let v = render_vars(Some(&st), &vars);
        assert_eq!(
            v,
            "OPSBAKE_STAGING=/var/tmp/opsbake/b1 GREETING='it'\\''s a \"test\"'"
        );
        let parts = CommandParts {
            path: "/var/tmp/opsbake/b1/scripts/a b.sh",
            vars: &v,
            run: &st.run_path(),
            staging: &st.cdir,
            sudo: "sudo -n ",
        };
        let c = render_command(DEFAULT_EXECUTE_COMMAND, &parts).unwrap();
        assert_eq!(
            c,
            "sudo -n env OPSBAKE_STAGING=/var/tmp/opsbake/b1 GREETING='it'\\''s a \"test\"' /var/tmp/opsbake/b1/run '/var/tmp/opsbake/b1/scripts/a b.sh'"
        );
        let c = render_command("chmod +x {{.Path}}; {{.Vars}} {{.Path}}", &parts).unwrap();
        assert!(c.starts_with("chmod +x '/var/tmp/opsbake/b1/scripts/a b.sh'; OPSBAKE_STAGING="));
        assert!(render_command("{{nope}}", &parts).is_err());
        assert!(render_command("{{path", &parts).is_err());
    }

    /// The batch in a real shell: output goes to the right script (a last
    /// line without a newline included), statuses are reported, and the
    /// first invalid status stops the batch.
    #[test]
    fn the_batch_runs_in_turn_reports_and_stops_at_the_first_failure() {
        let mem = Arc::new(opsbake_core::events::MemorySink::default());
        let emitter = Emitter::global(mem.clone());
        let mk = |name: &str, cmd: &str| BatchScript {
            label: format!("shell {name}"),
            name: name.into(),
            command: cmd.into(),
            sink: Arc::new(StepSink::new(None, name)),
        };
        let scripts = vec![
            mk("a.sh", "echo one; printf 'no newline'"),
            mk("b.sh", "echo two >&2; exit 3"),
            mk("c.sh", "echo never"),
        ];
        let cmd = batch_command("t1", &scripts, &[0, 3], None);
        let step = Arc::new(StepSink::new(None, "shell"));
        let sink = BatchSink::new("t1", &scripts, step.clone(), emitter.clone());
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .output();
        let Ok(out) = out else { panic!("sh") };
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            sink.line(Stream::Stdout, l);
        }
        for l in String::from_utf8_lossy(&out.stderr).lines() {
            sink.line(Stream::Stderr, l);
        }
        let st = sink.state();
        assert_eq!(st.exits, [Some(0), Some(3), Some(0)]);
        assert_eq!(out.status.code(), Some(0));
        let a: Vec<String> = scripts[0].sink.tail().into_iter().map(|x| x.1).collect();
        assert_eq!(a, ["one", "no newline"]);
        // 3 is not valid now: the batch stops after b.sh.
        let cmd = batch_command("t2", &scripts, &[0], None);
        let sink = BatchSink::new("t2", &scripts, step, emitter);
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .output();
        let Ok(out) = out else { panic!("sh") };
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            sink.line(Stream::Stdout, l);
        }
        assert_eq!(out.status.code(), Some(3));
        let st = sink.state();
        assert_eq!(st.current, Some(1));
        assert_eq!(st.exits, [Some(0), Some(3), None]);
        // Each script is named as it starts.
        let names: Vec<String> = mem
            .events()
            .into_iter()
            .filter_map(|e| match e.kind {
                opsbake_core::events::EventKind::Message { text, .. } => Some(text),
                _ => None,
            })
            .collect();
        assert!(
            names.iter().any(|t| t.contains("running b.sh (2 of 3)")),
            "{names:?}"
        );
        // c.sh started in the first batch only.
        assert_eq!(
            names.iter().filter(|t| t.contains("running c.sh")).count(),
            1
        );
    }
}
