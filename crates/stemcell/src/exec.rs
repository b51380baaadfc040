//! How the stemcell crate runs `qemu-img` (disk conversions): output is
//! captured and put into the error, so a failed conversion says what
//! qemu-img said. (iaas-vbox runs qemu-img too, through its own `exec`
//! helper, for overlays and the captured disk.)

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A failed external command.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The program is not installed.
    #[error("{program} is not installed or not on PATH (Debian: apt-get install qemu-utils)")]
    NotFound {
        /// The program.
        program: String,
    },
    /// It could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// It exited with an error.
    #[error("`{command}` failed ({status}): {stderr}{stdout}")]
    Failed {
        /// The command line.
        command: String,
        /// Exit status.
        status: String,
        /// Its standard output (trimmed).
        stdout: String,
        /// Its standard error (trimmed).
        stderr: String,
    },
    /// Its output was not what we expected.
    #[error("`{command}` printed something unexpected: {detail}")]
    Output {
        /// The command line.
        command: String,
        /// What was wrong.
        detail: String,
    },
}

/// The captured result of a command that ran.
#[derive(Debug, Clone)]
pub struct Captured {
    /// Exit code (None: killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// The command line, for messages.
    pub command: String,
}

impl Captured {
    fn failed(self) -> ExecError {
        ExecError::Failed {
            status: self
                .code
                .map_or_else(|| "killed by a signal".to_string(), |c| format!("exit {c}")),
            stdout: self.stdout.trim().to_string(),
            stderr: self.stderr.trim().to_string(),
            command: self.command,
        }
    }
}

/// Run `program args...`, capturing both outputs, whatever the exit status.
pub fn run_captured(program: &OsStr, args: &[OsString]) -> Result<Captured, ExecError> {
    let command = std::iter::once(program)
        .chain(args.iter().map(OsString::as_os_str))
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    tracing::debug!(%command, "exec");
    let out = Command::new(program).args(args).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ExecError::NotFound {
                program: program.to_string_lossy().into_owned(),
            }
        } else {
            ExecError::Spawn {
                program: program.to_string_lossy().into_owned(),
                source: e,
            }
        }
    })?;
    Ok(Captured {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        command,
    })
}

/// `qemu-img`, from `$OPSBAKE_QEMU_IMG` or PATH.
#[derive(Debug, Clone)]
pub struct QemuImg {
    program: PathBuf,
}

impl Default for QemuImg {
    fn default() -> Self {
        QemuImg {
            program: std::env::var_os("OPSBAKE_QEMU_IMG")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("qemu-img")),
        }
    }
}

/// What `qemu-img info` says about an image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ImageInfo {
    /// qemu's format name (`raw`, `vmdk`, `vpc`, `qcow2`).
    pub format: String,
    /// Virtual size in bytes.
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
    /// Bytes allocated on the host.
    #[serde(rename = "actual-size", default)]
    pub actual_size: u64,
}

impl QemuImg {
    /// Use a specific binary.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        QemuImg {
            program: program.into(),
        }
    }

    /// Run `qemu-img args...`; a non-zero exit is an error holding its output.
    pub fn run<I, S>(&self, args: I) -> Result<Captured, ExecError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<OsString> = args
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        let c = run_captured(self.program.as_os_str(), &args)?;
        if c.code == Some(0) {
            Ok(c)
        } else {
            Err(c.failed())
        }
    }

    /// `qemu-img convert -f FROM -O TO [-o OPTS] SRC DST`.
    pub fn convert(
        &self,
        src: &Path,
        from: &str,
        dst: &Path,
        to: &str,
        options: Option<&str>,
    ) -> Result<(), ExecError> {
        let mut args: Vec<OsString> = vec![
            "convert".into(),
            "-f".into(),
            from.into(),
            "-O".into(),
            to.into(),
        ];
        if let Some(o) = options {
            args.push("-o".into());
            args.push(o.into());
        }
        args.push(src.into());
        args.push(dst.into());
        self.run(args).map(|_| ())
    }

    /// `qemu-img info --output=json [-f FMT]`. Give the format for fixed
    /// VHDs: qemu-img only recognises a VHD by a header at the start, which
    /// fixed VHDs do not have, and would call it raw.
    pub fn info(&self, path: &Path, format: Option<&str>) -> Result<ImageInfo, ExecError> {
        let mut args: Vec<OsString> = vec!["info".into(), "--output=json".into()];
        if let Some(f) = format {
            args.push("-f".into());
            args.push(f.into());
        }
        args.push(path.into());
        let c = self.run(args)?;
        serde_json::from_str(&c.stdout).map_err(|e| ExecError::Output {
            command: c.command.clone(),
            detail: e.to_string(),
        })
    }

    /// `qemu-img check -f FMT`: Ok when qemu-img finds no error.
    pub fn check(&self, path: &Path, format: &str) -> Result<String, ExecError> {
        self.run([
            OsStr::new("check"),
            OsStr::new("-f"),
            OsStr::new(format),
            path.as_os_str(),
        ])
        .map(|c| c.stdout)
    }

    /// `qemu-img compare -f A -F B a b`: true when the guest-visible contents are equal.
    pub fn compare(&self, a: &Path, a_fmt: &str, b: &Path, b_fmt: &str) -> Result<bool, ExecError> {
        let args: Vec<OsString> = vec![
            "compare".into(),
            "-f".into(),
            a_fmt.into(),
            "-F".into(),
            b_fmt.into(),
            a.into(),
            b.into(),
        ];
        let c = run_captured(self.program.as_os_str(), &args)?;
        match c.code {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(c.failed()),
        }
    }
}
