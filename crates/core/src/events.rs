//! Build events: what the CLI shows (human lines or `--json`), one stream for
//! every concurrent build, each event tagged with its build.

use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::transport::Stream;

/// What happened.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// A build started.
    BuildStarted {
        /// The template.
        template: String,
        /// The build's state directory (journal).
        state_dir: String,
    },
    /// A step started.
    StepStarted {
        /// Step name.
        step: String,
    },
    /// A step finished.
    StepFinished {
        /// Step name.
        step: String,
        /// How long it took.
        seconds: f64,
    },
    /// A step failed.
    StepFailed {
        /// Step name.
        step: String,
        /// The error.
        error: String,
    },
    /// A message for the user.
    Message {
        /// `info`, `warn` or `error`.
        level: String,
        /// The text.
        text: String,
    },
    /// One line of a command's output.
    Output {
        /// The step (e.g. `shell setup.sh`).
        step: String,
        /// stdout or stderr.
        stream: Stream,
        /// The line.
        line: String,
    },
    /// About to create a resource (journal intent written).
    ResourceIntent {
        /// Journal sequence number.
        seq: u64,
        /// Kind.
        kind: String,
        /// Name.
        name: String,
    },
    /// A resource was created (journal record written).
    ResourceCreated {
        /// Journal sequence number.
        seq: u64,
        /// Kind.
        kind: String,
        /// Its id.
        id: String,
    },
    /// A resource was deleted.
    ResourceDeleted {
        /// Journal sequence number.
        seq: u64,
        /// Kind.
        kind: String,
        /// Its id or name.
        id: String,
    },
    /// A resource could not be deleted.
    ResourceDeleteFailed {
        /// Journal sequence number.
        seq: u64,
        /// Kind.
        kind: String,
        /// Its id or name.
        id: String,
        /// Why.
        error: String,
    },
    /// A resource is kept as an artifact.
    ResourceKept {
        /// Journal sequence number.
        seq: u64,
        /// Kind.
        kind: String,
        /// Its id.
        id: String,
    },
    /// Progress of a long step.
    Progress {
        /// Step.
        step: String,
        /// Units done.
        done: u64,
        /// Units in all (0 if unknown).
        total: u64,
        /// Unit (`bytes`, `files`).
        unit: String,
    },
    /// A build ended.
    BuildFinished {
        /// `succeeded`, `failed` or `cancelled`.
        outcome: String,
        /// Wall time.
        seconds: f64,
        /// The artifact id, if any.
        artifact_id: Option<String>,
        /// The error, if any.
        error: Option<String>,
    },
}

/// One event.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    /// RFC 3339 time with milliseconds.
    pub ts: String,
    /// The build's IaaS (its log prefix), if the event belongs to a build.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
    /// The build id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

impl Event {
    /// The event as one JSON line, with registered secrets scrubbed.
    pub fn to_json_line(&self) -> String {
        let s = serde_json::to_string(self).unwrap_or_else(|e| {
            format!(
                "{{\"event\":\"message\",\"level\":\"error\",\"text\":\"unencodable event: {e}\"}}"
            )
        });
        crate::secret::redactor().scrub(&s)
    }
}

/// Receives events.
pub trait EventSink: Send + Sync {
    /// Handle one event.
    fn emit(&self, event: Event);
}

/// Collects events in memory (tests).
#[derive(Default)]
pub struct MemorySink {
    events: Mutex<Vec<Event>>,
}

impl MemorySink {
    /// Every event so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

impl EventSink for MemorySink {
    fn emit(&self, event: Event) {
        if let Ok(mut e) = self.events.lock() {
            e.push(event);
        }
    }
}

/// The current time as RFC 3339 with milliseconds (UTC).
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    now.format(&fmt)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

/// Emits events for one build (or for no build: cleanup, validate).
#[derive(Clone)]
pub struct Emitter {
    sink: Arc<dyn EventSink>,
    build: Option<String>,
    build_id: Option<String>,
}

impl Emitter {
    /// An emitter for one build.
    pub fn for_build(sink: Arc<dyn EventSink>, build: &str, build_id: &str) -> Emitter {
        Emitter {
            sink,
            build: Some(build.to_string()),
            build_id: Some(build_id.to_string()),
        }
    }

    /// An emitter for events that belong to no build.
    pub fn global(sink: Arc<dyn EventSink>) -> Emitter {
        Emitter {
            sink,
            build: None,
            build_id: None,
        }
    }

    /// Emit.
    pub fn emit(&self, kind: EventKind) {
        self.sink.emit(Event {
            ts: now_rfc3339(),
            build: self.build.clone(),
            build_id: self.build_id.clone(),
            kind,
        });
    }

    /// An informational message.
    pub fn info(&self, text: impl Into<String>) {
        self.emit(EventKind::Message {
            level: "info".into(),
            text: text.into(),
        });
    }

    /// A warning.
    pub fn warn(&self, text: impl Into<String>) {
        self.emit(EventKind::Message {
            level: "warn".into(),
            text: text.into(),
        });
    }

    /// The sink.
    pub fn sink(&self) -> Arc<dyn EventSink> {
        self.sink.clone()
    }
}
