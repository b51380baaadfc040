//! Command output: streamed line by line as build events, with the last
//! lines kept for error messages.

use std::collections::VecDeque;
use std::sync::Mutex;

use opsbake_core::events::{Emitter, EventKind};
use opsbake_core::transport::{OutputSink, Stream};

/// How many lines of output a failing step shows.
pub const TAIL_LINES: usize = 20;

/// Sends each line to the build's events (`[aws] [shell setup.sh] ...`) and
/// keeps the last [`TAIL_LINES`].
pub struct StepSink {
    events: Option<Emitter>,
    step: String,
    tail: Mutex<VecDeque<(Stream, String)>>,
}

impl StepSink {
    /// A sink for `step`, emitting into `events` (none: only keep the tail).
    pub fn new(events: Option<Emitter>, step: &str) -> StepSink {
        StepSink {
            events,
            step: step.to_string(),
            tail: Mutex::new(VecDeque::with_capacity(TAIL_LINES)),
        }
    }

    /// The kept lines, oldest first.
    pub fn tail(&self) -> Vec<(Stream, String)> {
        self.tail
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Every kept line joined (stdout only or both), for parsing probe output.
    pub fn stdout_text(&self) -> String {
        self.tail()
            .into_iter()
            .filter(|(s, _)| *s == Stream::Stdout)
            .map(|(_, l)| l)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The tail formatted for an error message (empty when there was no
    /// output).
    pub fn tail_message(&self) -> String {
        format_tail(&self.tail())
    }
}

/// Format kept lines for an error message.
pub fn format_tail(lines: &[(Stream, String)]) -> String {
    if lines.is_empty() {
        return "; no output".to_string();
    }
    let mut s = format!("; last {} line(s) of output:", lines.len());
    for (stream, l) in lines {
        let tag = match stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        };
        s.push_str(&format!("\n  {tag}| {l}"));
    }
    s
}

impl OutputSink for StepSink {
    fn line(&self, stream: Stream, line: &str) {
        if let Some(ev) = &self.events {
            ev.emit(EventKind::Output {
                step: self.step.clone(),
                stream,
                line: line.to_string(),
            });
        }
        if let Ok(mut t) = self.tail.lock() {
            if t.len() == TAIL_LINES {
                t.pop_front();
            }
            t.push_back((stream, line.to_string()));
        }
    }
}
