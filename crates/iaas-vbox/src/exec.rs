//! The crate runs programs through core's one exec helper
//! ([`opsbake_core::exec::Cmd`]: output captured and put into the error,
//! kill on drop, optional timeout); this module only maps its errors to
//! [`VboxError`]. Arguments never hold secrets (those go through `stdin`).

use std::path::PathBuf;

pub use opsbake_core::exec::{package_of, which, Cmd, ExecError};

use crate::error::{tail, VboxError};

impl From<ExecError> for VboxError {
    fn from(e: ExecError) -> Self {
        match e {
            ExecError::NotFound { program, package } => VboxError::Missing { program, package },
            ExecError::Spawn { program, source } => VboxError::Io {
                path: PathBuf::from(program),
                source,
            },
            ExecError::Failed {
                command,
                status,
                stdout,
                stderr,
            } => VboxError::Command {
                command,
                status,
                output: tail(&[stdout, stderr].join("\n"), 30).trim().to_string(),
            },
            ExecError::Io { command, source } => VboxError::Io {
                path: PathBuf::from(command),
                source,
            },
            ExecError::TimedOut { command, after } => VboxError::Command {
                command,
                status: format!("killed after {after:?}"),
                output: String::new(),
            },
            e @ ExecError::Output { .. } => VboxError::Config(e.to_string()),
        }
    }
}

/// A program that must be on PATH.
pub fn require(program: &str) -> Result<PathBuf, VboxError> {
    Ok(opsbake_core::exec::require(program)?)
}
