//! Typed errors of the provisioners.

use std::path::PathBuf;
use std::time::Duration;

use opsbake_core::builder::BuildError;
use opsbake_core::transport::{ExitStatus, TransportError};

/// Why a provisioning step failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// Talking to the target failed.
    #[error("step `{step}`: {source}")]
    Transport {
        /// The step.
        step: String,
        /// What the transport said.
        #[source]
        source: Box<TransportError>,
    },
    /// A command ended with a status the step does not accept.
    #[error("step `{step}` failed: {status} (valid exit codes: {valid:?}){tail}")]
    Command {
        /// The step.
        step: String,
        /// How it ended.
        status: Box<ExitStatus>,
        /// The codes that count as success.
        valid: Vec<u32>,
        /// The last lines of its output, formatted for the message.
        tail: String,
    },
    /// A step's script runner (one exec for its scripts, under `sudo -n`
    /// by default) ended before its first script started: `sudo` wanted a
    /// password, the staging dir was gone, the shell failed.
    #[error("step `{step}` failed: {status} before its first script started{tail}")]
    NotStarted {
        /// The step.
        step: String,
        /// How the runner ended.
        status: Box<ExitStatus>,
        /// The last lines of its output (sudo's words, for one).
        tail: String,
    },
    /// A step took longer than allowed.
    #[error("step `{step}` timed out after {after:?}{tail}")]
    Timeout {
        /// The step.
        step: String,
        /// The limit.
        after: Duration,
        /// The last lines of its output.
        tail: String,
    },
    /// The template asks for something that cannot work.
    #[error("step `{step}`: {message}")]
    Config {
        /// The step.
        step: String,
        /// What is wrong.
        message: String,
    },
    /// Two different scripts would have the same name in the staging dir.
    #[error("two different scripts are both named `{name}` in the staging dir: {first} and {second} (rename one: scripts call each other by name)")]
    NameClash {
        /// The name.
        name: String,
        /// One source.
        first: String,
        /// The other.
        second: String,
    },
    /// A local file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The hand-off (or a scrub) refused to run on this target.
    #[error("hand-off refused: {reason}")]
    Refused {
        /// Why.
        reason: String,
    },
    /// The hand-off or the sudo grant did not have the effect it checks for.
    #[error("{what} failed: {message}{tail}")]
    Handoff {
        /// `sudo grant`, `hand-off`, ...
        what: String,
        /// What was seen.
        message: String,
        /// The last lines of the output.
        tail: String,
    },
    /// The build was cancelled.
    #[error("cancelled")]
    Cancelled,
}

impl ProvisionError {
    /// A transport error of `step`.
    pub fn transport(step: impl Into<String>, source: TransportError) -> ProvisionError {
        match source {
            TransportError::Cancelled => ProvisionError::Cancelled,
            source => ProvisionError::Transport {
                step: step.into(),
                source: Box::new(source),
            },
        }
    }
}

impl From<ProvisionError> for BuildError {
    fn from(e: ProvisionError) -> BuildError {
        match e {
            ProvisionError::Cancelled => BuildError::Cancelled,
            ProvisionError::Transport { source, .. }
                if matches!(*source, TransportError::Cancelled) =>
            {
                BuildError::Cancelled
            }
            ProvisionError::Config { step, message } => BuildError::Step { step, message },
            other => {
                let step = match &other {
                    ProvisionError::Transport { step, .. }
                    | ProvisionError::Command { step, .. }
                    | ProvisionError::NotStarted { step, .. }
                    | ProvisionError::Timeout { step, .. } => step.clone(),
                    ProvisionError::Refused { .. } | ProvisionError::Handoff { .. } => {
                        "handoff".to_string()
                    }
                    _ => "provision".to_string(),
                };
                // The build error says "step `x` failed: " itself: the
                // message is said once, without the step's own prefix.
                let text = other.to_string();
                let message = [
                    format!("step `{step}` failed: "),
                    format!("step `{step}`: "),
                    format!("step `{step}` "),
                ]
                .iter()
                .find_map(|p| text.strip_prefix(p.as_str()))
                .unwrap_or(&text)
                .to_string();
                BuildError::Step { step, message }
            }
        }
    }
}
