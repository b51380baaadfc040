//! Disk format conversion between raw, streamOptimized VMDK, fixed VHD and
//! qcow2.
//!
//! opsbake's own code handles what needs speed or reproducible bytes
//! (raw → VMDK with parallel compression, raw ↔ fixed VHD, VMDK → raw);
//! `qemu-img` (through [`crate::exec::QemuImg`]) does the rest, or
//! everything when [`Engine::QemuImg`] is asked for. Output goes to a
//! temporary file next to the destination and is renamed into place.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::exec::{ExecError, QemuImg};
use crate::vhd::{self, VhdError};
use crate::vmdk::{self, VmdkError, VmdkOptions};

/// A disk format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskFormat {
    /// Raw disk (aws-raw `root.img`, google `disk.raw`).
    Raw,
    /// streamOptimized VMDK (vSphere, OVA).
    Vmdk,
    /// Fixed VHD, whole MiB (Azure).
    Vhd,
    /// qcow2 (OpenStack, QEMU).
    Qcow2,
}

impl DiskFormat {
    /// qemu-img's name for it.
    pub fn qemu_name(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Vmdk => "vmdk",
            DiskFormat::Vhd => "vpc",
            DiskFormat::Qcow2 => "qcow2",
        }
    }

    /// qemu-img's `-o` options when writing it.
    pub fn qemu_create_options(self) -> Option<&'static str> {
        match self {
            DiskFormat::Vmdk => Some("subformat=streamOptimized"),
            DiskFormat::Vhd => Some("subformat=fixed,force_size=on"),
            _ => None,
        }
    }

    /// Guess from a file name's extension.
    pub fn from_path(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "raw" | "img" => Some(DiskFormat::Raw),
            "vmdk" => Some(DiskFormat::Vmdk),
            "vhd" => Some(DiskFormat::Vhd),
            "qcow2" => Some(DiskFormat::Qcow2),
            _ => None,
        }
    }
}

impl FromStr for DiskFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "raw" | "img" | "rawdisk" => Ok(DiskFormat::Raw),
            "vmdk" | "streamoptimized" => Ok(DiskFormat::Vmdk),
            "vhd" | "vpc" => Ok(DiskFormat::Vhd),
            "qcow2" => Ok(DiskFormat::Qcow2),
            other => Err(format!(
                "unknown disk format {other:?} (raw, vmdk, vhd, qcow2)"
            )),
        }
    }
}

/// Who does the conversion.
#[derive(Debug, Clone, Default)]
pub enum Engine {
    /// opsbake's own code where it has it, qemu-img for the rest.
    #[default]
    Auto,
    /// qemu-img for everything.
    QemuImg,
}

/// Conversion errors.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// qemu-img failed.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// The VMDK code failed.
    #[error(transparent)]
    Vmdk(#[from] VmdkError),
    /// The VHD code failed.
    #[error(transparent)]
    Vhd(#[from] VhdError),
    /// File handling around the conversion failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Options for [`convert`].
#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    /// Who converts.
    pub engine: Engine,
    /// VMDK writer options.
    pub vmdk: VmdkOptions,
    /// Timestamp for VHD footers (Unix seconds).
    pub timestamp: i64,
    /// qemu-img to use.
    pub qemu_img: QemuImg,
}

/// Convert `src` (format `from`) to `dst` (format `to`).
pub fn convert(
    src: &Path,
    from: DiskFormat,
    dst: &Path,
    to: DiskFormat,
    opts: &ConvertOptions,
) -> Result<(), ConvertError> {
    let dir = match dst.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ConvertError::Io { path, source }
    };
    // Keep the destination's file name inside the temp dir: the VMDK
    // descriptor names its extent after it.
    let tmp = tempfile::Builder::new()
        .prefix(".opsbake-convert-")
        .tempdir_in(dir)
        .map_err(io(dir))?;
    let name = dst
        .file_name()
        .map_or_else(|| std::ffi::OsString::from("disk"), |n| n.to_os_string());
    let out = tmp.path().join(&name);
    let own = matches!(opts.engine, Engine::Auto);
    use DiskFormat::*;
    match (from, to, own) {
        (Raw, Vmdk, true) => {
            vmdk::write_stream_optimized(src, &out, &opts.vmdk)?;
        }
        (Raw, Vhd, true) => {
            vhd::write_fixed_vhd(src, &out, opts.timestamp)?;
        }
        (Vhd, Raw, true) => {
            vhd::fixed_vhd_to_raw(src, &out)?;
        }
        (Vmdk, Raw, true)
            if vmdk::read_descriptor(src)
                .map(|d| d.contains("streamOptimized"))
                .unwrap_or(false) =>
        {
            vmdk::stream_optimized_to_raw(src, &out)?;
        }
        (Raw, Raw, _) => {
            let mut s = std::fs::File::open(src).map_err(io(src))?;
            let len = s.metadata().map_err(io(src))?.len();
            let mut d = std::fs::File::create(&out).map_err(io(&out))?;
            crate::sparse::copy_sparse(&mut s, &mut d, len).map_err(|e| match e {
                crate::sparse::SparseCopyError::Read(e) => io(src)(e),
                crate::sparse::SparseCopyError::Write(e) => io(&out)(e),
            })?;
            d.set_len(len).map_err(io(&out))?;
        }
        (_, Vhd, _) => {
            // qemu-img keeps the exact size; a fixed VHD for Azure must be
            // whole MiB, so pad a raw copy first.
            let padded = tmp.path().join(".padded.raw");
            let mut src_for_vhd = src.to_path_buf();
            let mut src_fmt = from;
            if from != Raw {
                opts.qemu_img
                    .convert(src, from.qemu_name(), &padded, "raw", None)?;
                src_for_vhd = padded.clone();
                src_fmt = Raw;
            }
            let len = std::fs::metadata(&src_for_vhd)
                .map_err(io(&src_for_vhd))?
                .len();
            let whole = len.div_ceil(1 << 20) << 20;
            if whole != len {
                if src_for_vhd != padded {
                    let mut s = std::fs::File::open(&src_for_vhd).map_err(io(&src_for_vhd))?;
                    let mut d = std::fs::File::create(&padded).map_err(io(&padded))?;
                    crate::sparse::copy_sparse(&mut s, &mut d, len).map_err(|e| match e {
                        crate::sparse::SparseCopyError::Read(e) => io(&src_for_vhd)(e),
                        crate::sparse::SparseCopyError::Write(e) => io(&padded)(e),
                    })?;
                }
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&padded)
                    .and_then(|f| f.set_len(whole))
                    .map_err(io(&padded))?;
                src_for_vhd = padded.clone();
            }
            opts.qemu_img.convert(
                &src_for_vhd,
                src_fmt.qemu_name(),
                &out,
                to.qemu_name(),
                to.qemu_create_options(),
            )?;
        }
        _ => {
            opts.qemu_img.convert(
                src,
                from.qemu_name(),
                &out,
                to.qemu_name(),
                to.qemu_create_options(),
            )?;
        }
    }
    std::fs::rename(&out, dst).map_err(io(dst))?;
    Ok(())
}
