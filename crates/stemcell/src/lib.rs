//! opsbake-stemcell: BOSH stemcell names and `stemcell.MF`, safe streaming
//! reading and extraction, disk format conversion (raw, VMDK, VHD, qcow2),
//! OVF descriptors, and the ISO9660 writer for the agent settings CD-ROM.
//!
//! Everything here is blocking I/O; async callers run it on
//! `tokio::task::spawn_blocking`.

pub mod iso;
pub mod settings;

pub use iso::{
    agent_settings_iso, write_agent_settings_iso, write_ovf_env_iso, IsoError, IsoWriter,
};
pub use settings::AgentSettings;
pub mod manifest;
pub mod name;

pub use manifest::{CloudImageRef, Manifest, ManifestError};
pub use name::{NameError, StemcellName};
pub mod reader;

pub use reader::{
    extract, read_manifest, scan, verify, ExtractOptions, ExtractReport, Limits, Progress,
    ReadError, UnsafeReason, VerifyReport,
};
pub mod convert;
pub mod exec;
pub mod sparse;
pub mod vhd;
pub mod vmdk;

pub use convert::{convert, ConvertError, ConvertOptions, DiskFormat, Engine};
pub use exec::{ExecError, QemuImg};
pub mod ovf;
pub mod xml;

pub use ovf::{Ovf, OvfError};
pub mod ova;
