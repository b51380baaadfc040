//! The `Transport` trait: how provisioners reach a build VM.
//!
//! `comms-ssh` implements it over SSH/SFTP; `provision` runs over it and knows
//! nothing of SSH; a local implementation (shell-local, tests) runs commands on
//! the build host.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::secret::Secret;

/// Which output stream a chunk of command output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Receives a command's output as it arrives, one complete line at a time
/// (without the trailing newline; a final unterminated line is delivered when
/// the stream ends).
pub trait OutputSink: Send + Sync {
    /// One line of output.
    fn line(&self, stream: Stream, line: &str);
}

/// An [`OutputSink`] that drops everything.
pub struct NullSink;

impl OutputSink for NullSink {
    fn line(&self, _stream: Stream, _line: &str) {}
}

impl<F: Fn(Stream, &str) + Send + Sync> OutputSink for F {
    fn line(&self, stream: Stream, line: &str) {
        self(stream, line)
    }
}

/// A command to run on the target.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    /// The command line, run by the remote user's shell.
    pub command: String,
    /// Environment variables. Transports pass them in a way that keeps quotes
    /// and spaces intact (SSH `env` requests are usually refused by sshd, so
    /// `comms-ssh` prefixes the command with safely quoted `export`s).
    pub env: BTreeMap<String, String>,
    /// Allocate a pseudo-terminal (stdout and stderr are then merged).
    pub pty: bool,
    /// Give up after this long (the command is then signalled and the result
    /// is [`TransportError::Timeout`]).
    pub timeout: Option<Duration>,
    /// Bytes written to the command's standard input, then EOF. Used for a
    /// `sudo -S` password: never put such values in `command` or `env`.
    pub stdin: Option<Secret<Vec<u8>>>,
}

impl ExecRequest {
    /// A request for `command` with no environment, PTY or timeout.
    pub fn new(command: impl Into<String>) -> Self {
        ExecRequest {
            command: command.into(),
            ..Default::default()
        }
    }
}

/// How a remote command ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// It exited with this code.
    Code(u32),
    /// It was killed by a signal (name without `SIG`, e.g. `KILL`).
    Signal {
        /// Signal name.
        signal: String,
        /// Whether it dumped core.
        core_dumped: bool,
        /// The server's message, if any.
        message: String,
    },
}

impl ExitStatus {
    /// True for exit code 0.
    pub fn success(&self) -> bool {
        matches!(self, ExitStatus::Code(0))
    }

    /// The exit code, if it exited.
    pub fn code(&self) -> Option<u32> {
        match self {
            ExitStatus::Code(c) => Some(*c),
            ExitStatus::Signal { .. } => None,
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal {
                signal,
                core_dumped,
                ..
            } => {
                write!(f, "signal {signal}")?;
                if *core_dumped {
                    write!(f, " (core dumped)")?;
                }
                Ok(())
            }
        }
    }
}

/// What to send in one upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadSource {
    /// A local file or directory tree (directories are copied recursively,
    /// with modes and symlinks).
    Path(PathBuf),
    /// Bytes generated in memory (scripts, wrappers, config files).
    Bytes(Vec<u8>),
}

/// One upload.
///
/// Destination semantics (the same for every transport): `remote` is the full
/// path the source will have on the target. A file is written at exactly that
/// path; a directory's *contents* are copied into `remote` (created if
/// missing), like `rsync -a src/ remote/`. Missing parent directories are
/// created.
#[derive(Debug, Clone)]
pub struct Upload {
    /// What to send.
    pub source: UploadSource,
    /// Where it goes (an absolute path on the target).
    pub remote: String,
    /// Mode for the file (for [`UploadSource::Bytes`]; files from disk keep
    /// their own mode unless this is set).
    pub mode: Option<u32>,
    /// Also compare the SHA-256 of what arrived with the source.
    pub verify_sha256: bool,
}

/// One download: a remote file or tree to a local path (same semantics as
/// [`Upload`], reversed).
#[derive(Debug, Clone)]
pub struct Download {
    /// Remote path.
    pub remote: String,
    /// Local path.
    pub local: PathBuf,
}

/// Totals of a transfer.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TransferReport {
    /// Regular files moved.
    pub files: u64,
    /// Directories created.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Payload bytes moved.
    pub bytes: u64,
    /// Tar streams (one channel each) the tree went up in; 0 when it went
    /// file by file.
    pub tar_streams: u64,
}

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The connection dropped (or the server went away) while the operation
    /// ran: distinct from a command that failed.
    #[error("connection to {target} lost: {reason}")]
    Disconnected {
        /// Who we were talking to.
        target: String,
        /// What was seen.
        reason: String,
    },
    /// The operation did not finish in time.
    #[error("{what} on {target} timed out after {after:?}")]
    Timeout {
        /// Who we were talking to.
        target: String,
        /// What timed out.
        what: String,
        /// The limit.
        after: Duration,
    },
    /// Logging in failed.
    #[error("authentication as {user} on {target} failed: {reason}")]
    Auth {
        /// Who we were talking to.
        target: String,
        /// The user.
        user: String,
        /// Why.
        reason: String,
    },
    /// The server presented a host key that the policy refuses.
    #[error("host key of {target} refused: {reason}")]
    HostKey {
        /// Who we were talking to.
        target: String,
        /// Why (fingerprints included, never private material).
        reason: String,
    },
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    LocalIo {
        /// The local path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The server refused a file operation.
    #[error("{target}: {op} {path}: {reason}")]
    Remote {
        /// Who we were talking to.
        target: String,
        /// The operation (open, write, mkdir, ...).
        op: String,
        /// The remote path.
        path: String,
        /// What the server said.
        reason: String,
    },
    /// A verified transfer arrived with different content.
    #[error(
        "{target}: {path}: {what} mismatch after transfer (expected {expected}, got {actual})"
    )]
    Verify {
        /// Who we were talking to.
        target: String,
        /// The remote path.
        path: String,
        /// size or sha256.
        what: String,
        /// Expected value.
        expected: String,
        /// Actual value.
        actual: String,
    },
    /// The server refused to open a channel (SSH_MSG_CHANNEL_OPEN_FAILURE,
    /// e.g. sshd's `MaxSessions` reached) and none of ours closed in time.
    /// The connection is alive: not a disconnect.
    #[error("{target}: {detail}")]
    ChannelRefused {
        /// Who we were talking to.
        target: String,
        /// The server's reason code (RFC 4254 §5.1).
        code: u32,
        /// The reason, the channel kind and what was waited for.
        detail: String,
    },
    /// The operation was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// Anything else, with context.
    #[error("{target}: {message}")]
    Other {
        /// Who we were talking to.
        target: String,
        /// What happened.
        message: String,
    },
}

impl TransportError {
    /// True when the error means the connection is gone (retrying after a
    /// reconnect may help), as opposed to a refused operation.
    pub fn is_disconnect(&self) -> bool {
        matches!(self, TransportError::Disconnected { .. })
    }
}

/// A connection to a build VM (or the build host).
#[async_trait]
pub trait Transport: Send + Sync {
    /// A short description for logs, e.g. `ssh vcap@127.0.0.1:40022`.
    fn describe(&self) -> String;

    /// The host key this connection trusted on first use (`ALG SHA256:...`),
    /// when the policy was trust-on-first-use: the build prints it so that
    /// a user can compare it with the VM's console. Default: none.
    fn trusted_on_first_use(&self) -> Option<String> {
        None
    }

    /// Run a command, streaming its output line by line into `sink`.
    async fn exec(
        &self,
        req: ExecRequest,
        sink: Arc<dyn OutputSink>,
    ) -> Result<ExitStatus, TransportError>;

    /// Send files, trees and generated bytes; several at once where the
    /// transport can.
    async fn upload(&self, items: Vec<Upload>) -> Result<TransferReport, TransportError>;

    /// Fetch files or trees.
    async fn download(&self, items: Vec<Download>) -> Result<TransferReport, TransportError>;

    /// Reconnect after the target went away on purpose (a reboot with
    /// `expect_disconnect`), waiting up to `timeout` for a login. Host key
    /// policy still applies: the target must present the key it had.
    async fn reconnect(&self, timeout: Duration) -> Result<(), TransportError>;

    /// Close the connection.
    async fn close(&self) -> Result<(), TransportError>;

    /// The path a *command* on the target sees for the remote path `remote`
    /// of uploads and downloads. The same path for every transport except
    /// those that root remote paths in a directory (the local transport).
    fn command_path(&self, remote: &str) -> String {
        remote.to_string()
    }
}

/// Quote a string for a POSIX shell (single quotes, with `'` escaped).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@%+,".contains(&b))
    {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// `export K='v'; ...` prefix for a command, for transports that cannot set
/// the environment directly. Keys must be valid shell identifiers.
pub fn env_prefix(env: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    for (k, v) in env {
        let valid = !k.is_empty()
            && k.bytes().enumerate().all(|(i, b)| {
                b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit())
            });
        if !valid {
            return Err(format!("invalid environment variable name {k:?}"));
        }
        out.push_str("export ");
        out.push_str(k);
        out.push('=');
        out.push_str(&shell_quote(v));
        out.push_str("; ");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_a_real_shell() {
        let mut env = BTreeMap::new();
        env.insert(
            "A".to_string(),
            "it's \"quoted\" $HOME `x` \\ end".to_string(),
        );
        env.insert("B".to_string(), "two  spaces".to_string());
        let cmd = format!(
            "{}printf '%s|%s' \"$A\" \"$B\"",
            env_prefix(&env).unwrap_or_default()
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .output();
        let out = match out {
            Ok(o) => o,
            Err(e) => panic!("sh: {e}"),
        };
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "it's \"quoted\" $HOME `x` \\ end|two  spaces"
        );
    }

    #[test]
    fn bad_env_names_are_refused() {
        let mut env = BTreeMap::new();
        env.insert("A;rm".to_string(), "x".to_string());
        assert!(env_prefix(&env).is_err());
    }
}
