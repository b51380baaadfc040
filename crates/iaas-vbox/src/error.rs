//! The crate's typed errors: each names the file, command or VM it is about.

use std::path::PathBuf;

/// What went wrong in the `vbox` builder.
#[derive(Debug, thiserror::Error)]
pub enum VboxError {
    /// A program the builder needs is missing.
    #[error("{program} not found on PATH: install Debian's {package} (scripts/setup.sh or .ci/setup.d/40-vbox.sh do)")]
    Missing {
        /// The program.
        program: String,
        /// The Debian package that has it.
        package: String,
    },
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A command failed; its output is kept.
    #[error("`{command}` failed ({status}): {output}")]
    Command {
        /// The command line (never holds secrets).
        command: String,
        /// Exit status.
        status: String,
        /// The end of its output.
        output: String,
    },
    /// QEMU exited before the build was done with it.
    #[error("QEMU (pid {pid}) exited early with {status}; {log}:\n{log_tail}\nserial console {serial}:\n{serial_tail}")]
    QemuExited {
        /// Its PID.
        pid: u32,
        /// Its exit status.
        status: String,
        /// QEMU's own output file.
        log: PathBuf,
        /// The end of it.
        log_tail: String,
        /// The serial console log.
        serial: PathBuf,
        /// The end of it.
        serial_tail: String,
    },
    /// A QMP exchange failed.
    #[error("QMP `{command}` on {socket}: {message}")]
    Qmp {
        /// The command.
        command: String,
        /// The socket.
        socket: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The stemcell cannot be used for VirtualBox.
    #[error("stemcell {path}: {message}")]
    Stemcell {
        /// The stemcell.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The disk image cannot be normalised.
    #[error("disk {path}: {message}")]
    Disk {
        /// The disk.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// An option is wrong.
    #[error("{0}")]
    Config(String),
    /// `--offline` forbids this.
    #[error("--offline: {0}")]
    Offline(String),
    /// The stemcell crate failed.
    #[error(transparent)]
    StemcellRead(#[from] opsbake_stemcell::ReadError),
    /// The VMDK writer/reader failed.
    #[error(transparent)]
    Vmdk(#[from] opsbake_stemcell::vmdk::VmdkError),
    /// OVF writing failed.
    #[error(transparent)]
    Ovf(#[from] opsbake_stemcell::OvfError),
    /// OVA writing failed (the stemcell crate's writer).
    #[error(transparent)]
    Ova(#[from] opsbake_stemcell::ova::OvaError),
    /// The settings ISO could not be written.
    #[error(transparent)]
    Iso(#[from] opsbake_stemcell::IsoError),
}

/// Map an I/O error on `path`.
pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> VboxError {
    let path = path.into();
    move |source| VboxError::Io { path, source }
}

/// The last `n` lines of `text`.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl From<VboxError> for opsbake_core::builder::BuildError {
    fn from(e: VboxError) -> Self {
        opsbake_core::builder::BuildError::iaas(opsbake_core::template::Iaas::Vbox, e)
    }
}
