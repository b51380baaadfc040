//! How the stemcell crate runs `qemu-img` (disk conversions, checks,
//! compares): through core's one exec helper ([`opsbake_core::exec::Cmd`],
//! blocking here: the conversions run on blocking threads), so a failed
//! conversion says what qemu-img said. iaas-vbox runs qemu-img through the
//! same helper, for its overlays and the captured disk.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

pub use opsbake_core::exec::ExecError;
use opsbake_core::exec::{Cmd, Output};

/// The captured result of a command that ran (core's [`Output`]).
pub type Captured = Output;

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
        Cmd::new(self.program.as_os_str())
            .args(args)
            .output_blocking()?
            .checked()
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
        let c = Cmd::new(self.program.as_os_str())
            .args(args)
            .output_blocking()?;
        match c.code {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(c.failed()),
        }
    }
}
