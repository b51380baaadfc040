//! Event sinks: human lines (prefixed per build, colored on a TTY,
//! optional timestamps) or one JSON object per line. On a terminal each
//! build has one live line at the bottom (indicatif): its IaaS, current
//! step and elapsed time, and bytes and rate while a step reports progress
//! (uploads, imports); the builds' output lines scroll above them.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;

use console::Style;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use opsbake_core::events::{Event, EventKind, EventSink};
use opsbake_core::redactor;
use opsbake_core::transport::Stream;

/// `--json`: one event per line on stdout.
pub struct JsonSink {
    out: Mutex<std::io::Stdout>,
}

impl JsonSink {
    pub fn new() -> JsonSink {
        JsonSink {
            out: Mutex::new(std::io::stdout()),
        }
    }
}

impl EventSink for JsonSink {
    fn emit(&self, event: Event) {
        let line = event.to_json_line();
        if let Ok(mut o) = self.out.lock() {
            let _ = writeln!(o, "{line}");
            let _ = o.flush();
        }
    }
}

/// Human output on stderr.
pub struct HumanSink {
    timestamps: bool,
    color: bool,
    progress: Option<MultiProgress>,
    /// The live line of each build (terminal only), by its IaaS prefix.
    bars: Mutex<HashMap<String, ProgressBar>>,
    /// The last failed step and its error, per build: the build's end does
    /// not print the same error again.
    failed: Mutex<HashMap<String, (String, String)>>,
}

/// Colour only on a terminal, and never with `NO_COLOR` set to anything
/// non-empty (no-color.org): for human output and `OPSBAKE_LOG` lines alike.
pub fn color_allowed(is_terminal: bool) -> bool {
    is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

const PALETTE: [u8; 6] = [33, 35, 36, 32, 34, 208];

/// A fixed colour per IaaS (256-colour palette), so that a build keeps its
/// colour from run to run; other prefixes hash into [`PALETTE`].
fn iaas_color(build: &str) -> u8 {
    match build {
        "aws" => 208,
        "gcp" => 33,
        "azure" => 36,
        "vsphere" => 34,
        "vbox" => 35,
        other => PALETTE[other.bytes().map(usize::from).sum::<usize>() % PALETTE.len()],
    }
}

const STATUS_STYLE: &str = "{spinner} {prefix} {msg} [{elapsed}]";
const BYTES_STYLE: &str =
    "{spinner} {prefix} {msg} {bar:24} {bytes}/{total_bytes} {bytes_per_sec} [{elapsed}]";
const BYTES_NO_TOTAL_STYLE: &str = "{spinner} {prefix} {msg} {bytes} {bytes_per_sec} [{elapsed}]";
const COUNT_STYLE: &str = "{spinner} {prefix} {msg} {bar:24} {pos}/{len} [{elapsed}]";

fn style(t: &str) -> Option<ProgressStyle> {
    ProgressStyle::with_template(t).ok()
}

impl HumanSink {
    pub fn new(timestamps: bool, progress: bool) -> HumanSink {
        let tty = console::Term::stderr().is_term();
        HumanSink {
            timestamps,
            color: color_allowed(tty) && console::colors_enabled_stderr(),
            progress: (tty && progress).then(MultiProgress::new),
            bars: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
        }
    }

    fn prefix(&self, ev: &Event) -> String {
        let mut p = String::new();
        if self.timestamps {
            p.push_str(&ev.ts);
            p.push(' ');
        }
        if let Some(b) = &ev.build {
            let tag = format!("[{b}]");
            if self.color {
                p.push_str(
                    &Style::new()
                        .color256(iaas_color(b))
                        .bold()
                        .apply_to(tag)
                        .to_string(),
                );
            } else {
                p.push_str(&tag);
            }
            p.push(' ');
        }
        p
    }

    fn print(&self, line: String) {
        let line = redactor().scrub(&line);
        match &self.progress {
            Some(mp) => {
                let _ = mp.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    fn dim(&self, s: String) -> String {
        if self.color {
            Style::new().dim().apply_to(s).to_string()
        } else {
            s
        }
    }

    fn red(&self, s: String) -> String {
        if self.color {
            Style::new().red().apply_to(s).to_string()
        } else {
            s
        }
    }

    fn yellow(&self, s: String) -> String {
        if self.color {
            Style::new().yellow().apply_to(s).to_string()
        } else {
            s
        }
    }
}

impl HumanSink {
    /// Update the build's live line (terminal only).
    fn live(&self, ev: &Event, p: &str) {
        let (Some(mp), Some(build)) = (&self.progress, &ev.build) else {
            return;
        };
        let Ok(mut bars) = self.bars.lock() else {
            return;
        };
        let bar = bars.entry(build.clone()).or_insert_with(|| {
            let b = mp.add(ProgressBar::new_spinner());
            if let Some(st) = style(STATUS_STYLE) {
                b.set_style(st);
            }
            b.set_prefix(p.trim_end().to_string());
            b.set_message("starting");
            b.enable_steady_tick(std::time::Duration::from_millis(200));
            b
        });
        match &ev.kind {
            EventKind::StepStarted { step } => {
                if let Some(st) = style(STATUS_STYLE) {
                    bar.set_style(st);
                }
                bar.set_message(step.clone());
            }
            EventKind::StepFinished { step, .. } => {
                if let Some(st) = style(STATUS_STYLE) {
                    bar.set_style(st);
                }
                bar.set_message(format!("{step} done"));
            }
            EventKind::Progress {
                step,
                done,
                total,
                unit,
            } => {
                let t = match (unit.as_str(), *total) {
                    ("bytes", 0) => BYTES_NO_TOTAL_STYLE,
                    ("bytes", _) => BYTES_STYLE,
                    _ => COUNT_STYLE,
                };
                if let Some(st) = style(t) {
                    bar.set_style(st);
                }
                bar.set_message(step.clone());
                bar.set_length(*total);
                bar.set_position(*done);
            }
            EventKind::BuildFinished {
                outcome, seconds, ..
            } => {
                if let Some(st) = style("  {prefix} {msg}") {
                    bar.set_style(st);
                }
                let msg = format!("{outcome} in {seconds:.1}s");
                bar.finish_with_message(if outcome == "succeeded" {
                    msg
                } else {
                    self.red(msg)
                });
            }
            _ => {}
        }
    }
}

impl EventSink for HumanSink {
    fn emit(&self, ev: Event) {
        let p = self.prefix(&ev);
        self.live(&ev, &p);
        let line = match &ev.kind {
            EventKind::BuildStarted {
                template,
                state_dir,
            } => format!(
                "{p}build {} of {template} started (journal in {state_dir})",
                ev.build_id.as_deref().unwrap_or("")
            ),
            EventKind::StepStarted { step } => format!("{p}==> {step}"),
            EventKind::StepFinished { step, seconds } => {
                self.dim(format!("{p}    {step} done in {seconds:.1}s"))
            }
            EventKind::StepFailed { step, error } => {
                if let Ok(mut f) = self.failed.lock() {
                    f.insert(
                        ev.build.clone().unwrap_or_default(),
                        (step.clone(), error.clone()),
                    );
                }
                self.red(format!("{p}!!! {step} failed: {error}"))
            }
            EventKind::Message { level, text } => match level.as_str() {
                "warn" => self.yellow(format!("{p}warning: {text}")),
                "error" => self.red(format!("{p}error: {text}")),
                _ => format!("{p}{text}"),
            },
            EventKind::Output { step, stream, line } => match stream {
                Stream::Stdout => format!("{p}[{step}] {line}"),
                Stream::Stderr => format!("{p}[{step}] {}", self.yellow(line.clone())),
            },
            EventKind::ResourceIntent { .. } => return,
            EventKind::ResourceCreated { kind, id, .. } => {
                self.dim(format!("{p}    created {kind} {id}"))
            }
            EventKind::ResourceDeleted { kind, id, .. } => {
                self.dim(format!("{p}    deleted {kind} {id}"))
            }
            EventKind::ResourceDeleteFailed {
                kind, id, error, ..
            } => self.red(format!("{p}could not delete {kind} {id}: {error}")),
            EventKind::ResourceKept { kind, id, .. } => format!("{p}    kept {kind} {id}"),
            // On the live line only (a terminal); too many for plain lines.
            EventKind::Progress { .. } => return,
            EventKind::BuildFinished {
                outcome,
                seconds,
                artifact_id,
                error,
            } => match (outcome.as_str(), artifact_id, error) {
                ("succeeded", Some(a), _) => {
                    format!("{p}build succeeded in {seconds:.1}s: {a}")
                }
                ("succeeded", None, _) => format!("{p}build succeeded in {seconds:.1}s"),
                (o, _, Some(e)) => {
                    let step = self
                        .failed
                        .lock()
                        .ok()
                        .and_then(|mut f| f.remove(&ev.build.clone().unwrap_or_default()))
                        .filter(|(_, err)| err == e)
                        .map(|(step, _)| step);
                    match step {
                        // Printed with the step above: once is enough.
                        Some(step) => {
                            self.red(format!("{p}build {o} after {seconds:.1}s (in step {step})"))
                        }
                        None => self.red(format!("{p}build {o} after {seconds:.1}s: {e}")),
                    }
                }
                (o, _, None) => self.red(format!("{p}build {o} after {seconds:.1}s")),
            },
        };
        self.print(line);
    }
}
