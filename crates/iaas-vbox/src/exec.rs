//! The one exec helper of the crate: runs a program, captures its output and
//! puts the end of it into the error. Arguments never hold secrets (those go
//! through `stdin`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::AsyncWriteExt as _;

use crate::error::{tail, VboxError};

/// One command to run.
#[derive(Debug, Clone, Default)]
pub struct Cmd {
    /// The program.
    pub program: OsString,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Bytes for its standard input (then EOF).
    pub stdin: Option<Vec<u8>>,
}

impl Cmd {
    /// `program` with no arguments.
    pub fn new(program: impl Into<OsString>) -> Cmd {
        Cmd {
            program: program.into(),
            ..Cmd::default()
        }
    }

    /// Add an argument.
    pub fn arg(mut self, a: impl Into<OsString>) -> Cmd {
        self.args.push(a.into());
        self
    }

    /// Add arguments.
    pub fn args<I, S>(mut self, a: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(a.into_iter().map(Into::into));
        self
    }

    /// Set an environment variable.
    pub fn env(mut self, k: &str, v: impl Into<String>) -> Cmd {
        self.env.push((k.to_string(), v.into()));
        self
    }

    /// The command line for messages.
    pub fn display(&self) -> String {
        std::iter::once(&self.program)
            .chain(self.args.iter())
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Run it; a non-zero exit is an error with the end of its output.
    /// Returns standard output.
    pub async fn run(&self) -> Result<String, VboxError> {
        let command = self.display();
        tracing::debug!(%command, "exec");
        let mut c = tokio::process::Command::new(&self.program);
        c.args(&self.args)
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        let mut child = c.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                VboxError::Missing {
                    program: self.program.to_string_lossy().into_owned(),
                    package: package_of(&self.program.to_string_lossy()).to_string(),
                }
            } else {
                VboxError::Io {
                    path: PathBuf::from(&self.program),
                    source: e,
                }
            }
        })?;
        if let (Some(bytes), Some(mut si)) = (&self.stdin, child.stdin.take()) {
            si.write_all(bytes)
                .await
                .map_err(crate::error::io_err(Path::new("stdin")))?;
            drop(si);
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(crate::error::io_err(PathBuf::from(&self.program)))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            return Ok(stdout);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(VboxError::Command {
            command,
            status: out.status.to_string(),
            output: tail(&format!("{stdout}{stderr}"), 30),
        })
    }
}

/// The Debian package that holds a program (for "missing" messages).
pub fn package_of(program: &str) -> &'static str {
    match Path::new(program)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
    {
        "qemu-system-x86_64" => "qemu-system-x86",
        "qemu-img" => "qemu-utils",
        "mkfs.ext4" | "debugfs" | "e2fsck" => "e2fsprogs",
        "fallocate" | "unshare" | "mount" => "util-linux",
        "openssl" => "openssl",
        "VBoxManage" => "virtualbox (from Oracle; not in Debian main)",
        _ => "(unknown)",
    }
}

/// Find a program on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// A program that must be on PATH.
pub fn require(program: &str) -> Result<PathBuf, VboxError> {
    which(program).ok_or_else(|| VboxError::Missing {
        program: program.to_string(),
        package: package_of(program).to_string(),
    })
}
