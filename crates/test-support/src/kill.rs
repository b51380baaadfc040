//! A kill-test harness for any IaaS: start `opsbake ... --json build ...`,
//! read its events, stop it with SIGKILL or SIGINT when a chosen event is
//! seen, then (after SIGKILL) run `opsbake cleanup <build id>`; the caller
//! collects what its peer still holds and asserts it is nothing.
//!
//! Only the child this harness started is signalled, by its PID. No sleeps:
//! the kill follows the event itself; the wait for it is bounded.
//!
//! ```ignore
//! let k = kill::run_until(cmd, |v| kill::created(v, "virtual_machine"), Signal::Kill, secs(60))?;
//! let out = kill::cleanup(&kill::CleanupCmd { bin, state_dir, cwd, envs }, &k.build_id)?;
//! ```

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How the build is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGKILL: nothing unwinds; `opsbake cleanup` must delete what the
    /// journal (and the sweep by tag) finds.
    Kill,
    /// SIGINT: the build unwinds its journal itself.
    Int,
}

impl Signal {
    /// `kill` / `int`, for test names and messages.
    pub fn label(self) -> &'static str {
        match self {
            Signal::Kill => "SIGKILL",
            Signal::Int => "SIGINT",
        }
    }
}

/// A build stopped on an event.
#[derive(Debug)]
pub struct Killed {
    /// The build id read from the events.
    pub build_id: String,
    /// Events seen up to and including the one that triggered the signal.
    pub events: Vec<Value>,
    /// The CLI's exit status.
    pub status: ExitStatus,
}

/// Errors of the harness.
#[derive(Debug, thiserror::Error)]
pub enum KillError {
    /// The CLI could not be started or signalled.
    #[error("{what}: {source}")]
    Io {
        /// What was done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The event never came.
    #[error("the event was not seen within {after:?} (the build ended or stalled); seen: {seen}")]
    NotSeen {
        /// The limit.
        after: Duration,
        /// The events seen, one JSON per line.
        seen: String,
    },
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> KillError + '_ {
    move |source| KillError::Io {
        what: what.to_string(),
        source,
    }
}

/// `resource_created` of `kind`.
pub fn created(v: &Value, kind: &str) -> bool {
    v["event"] == "resource_created" && v["kind"] == kind
}

/// `resource_intent` of `kind` (journaled, create call not yet answered).
pub fn intent(v: &Value, kind: &str) -> bool {
    v["event"] == "resource_intent" && v["kind"] == kind
}

/// `step_started` of `step` (`provision`, `capture`...).
pub fn step_started(v: &Value, step: &str) -> bool {
    v["event"] == "step_started" && v["step"] == step
}

/// A `message` event whose text contains `part`.
pub fn message(v: &Value, part: &str) -> bool {
    v["event"] == "message" && v["text"].as_str().is_some_and(|t| t.contains(part))
}

/// Run `cmd` (a `--json` build; its stdout is taken) until an event
/// satisfies `pred`, then send `signal` to it and wait for its exit.
pub fn run_until(
    mut cmd: Command,
    pred: impl Fn(&Value) -> bool,
    signal: Signal,
    limit: Duration,
) -> Result<Killed, KillError> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(io("start the opsbake CLI"))?;
    let Some(out) = child.stdout.take() else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(KillError::Io {
            what: "the CLI's stdout".into(),
            source: std::io::Error::other("not piped"),
        });
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if tx.send(v).is_err() {
                    break;
                }
            }
        }
    });
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    let mut build_id = String::new();
    loop {
        let v = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(v) => v,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(KillError::NotSeen {
                    after: limit,
                    seen: seen
                        .iter()
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join("\n"),
                });
            }
        };
        if let Some(b) = v["build_id"].as_str() {
            build_id = b.to_string();
        }
        let hit = pred(&v);
        seen.push(v);
        if hit {
            break;
        }
    }
    match signal {
        Signal::Kill => child.kill().map_err(io("SIGKILL the CLI"))?,
        Signal::Int => {
            let st = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()
                .map_err(io("SIGINT the CLI"))?;
            if !st.success() {
                let _ = child.kill();
            }
        }
    }
    let status = child.wait().map_err(io("wait for the CLI"))?;
    Ok(Killed {
        build_id,
        events: seen,
        status,
    })
}

/// How to run `opsbake cleanup`.
#[derive(Debug, Clone)]
pub struct CleanupCmd {
    /// The opsbake binary.
    pub bin: PathBuf,
    /// `--state-dir` of the build.
    pub state_dir: PathBuf,
    /// Working directory.
    pub cwd: PathBuf,
    /// Environment to set (credentials of the test peers, PATH).
    pub envs: Vec<(String, String)>,
    /// Extra arguments after `cleanup` (e.g. `--sweep-template`, a template).
    pub extra: Vec<String>,
}

/// `opsbake --state-dir S --no-progress cleanup <extra...> <build id>`.
pub fn cleanup(c: &CleanupCmd, build_id: &str) -> Result<Output, KillError> {
    Command::new(&c.bin)
        .current_dir(&c.cwd)
        .arg("--state-dir")
        .arg(&c.state_dir)
        .args(["--no-progress", "cleanup"])
        .args(&c.extra)
        .arg(build_id)
        .envs(c.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .map_err(io("run opsbake cleanup"))
}
