//! OVA packages: a USTAR tarball holding the OVF descriptor first, then its
//! `.mf`, then the files in the order of the descriptor's `References`
//! (OVF 1.0, §5.3). Written deterministically: fixed owner, mode and mtime,
//! no directories, no `./` prefixes.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::ovf::{self, ApplianceSpec, DigestAlgo, DiskBus, MfEntry, Ovf, OvfError};
use crate::vmdk::{self, VmdkError, VmdkOptions, VmdkReport};
use crate::xml::Element;

/// OVA errors.
#[derive(Debug, thiserror::Error)]
pub enum OvaError {
    /// I/O.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A member name that cannot go into an OVA.
    #[error("{0:?} cannot be an OVA member name (plain file names only, at most 100 bytes)")]
    BadName(String),
    /// The OVF descriptor.
    #[error(transparent)]
    Ovf(#[from] OvfError),
    /// The VMDK writer.
    #[error(transparent)]
    Vmdk(#[from] VmdkError),
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> OvaError + '_ {
    move |source| OvaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Write an OVA at `out` from files on disk: `ovf` first, then `mf` (if
/// any), then `files` in the order given. Each is `(name in the OVA, path)`.
pub fn write_ova(
    out: &Path,
    ovf: (&str, &Path),
    mf: Option<(&str, &Path)>,
    files: &[(&str, &Path)],
    mtime: u64,
) -> Result<(), OvaError> {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err(dir))?;
    {
        let mut b = tar::Builder::new(BufWriter::with_capacity(1 << 20, tmp.as_file()));
        let members = std::iter::once(ovf).chain(mf).chain(files.iter().copied());
        for (name, path) in members {
            if name.is_empty() || name.contains('/') || name.len() > 100 || name.starts_with('.') {
                return Err(OvaError::BadName(name.to_string()));
            }
            let f = File::open(path).map_err(io_err(path))?;
            let len = f.metadata().map_err(io_err(path))?.len();
            let mut h = tar::Header::new_ustar();
            h.set_path(name).map_err(io_err(path))?;
            h.set_size(len);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(mtime);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_username("root").map_err(io_err(path))?;
            h.set_groupname("root").map_err(io_err(path))?;
            h.set_cksum();
            b.append(&h, io::BufReader::with_capacity(1 << 20, f))
                .map_err(io_err(out))?;
        }
        let w = b.into_inner().map_err(io_err(out))?;
        w.into_inner()
            .map_err(|e| io_err(out)(e.into_error()))?
            .flush()
            .map_err(io_err(out))?;
    }
    tmp.as_file().sync_all().map_err(io_err(out))?;
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .map_err(io_err(out))?;
    tmp.persist(out).map_err(|e| io_err(out)(e.error))?;
    Ok(())
}

/// What to build an OVA from a raw disk with.
#[derive(Debug, Clone)]
pub struct OvaBuild {
    /// VM name (also the base of the member names).
    pub name: String,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// OVF OS id (94 Ubuntu 64-bit, 96 Debian 64-bit).
    pub os_id: u32,
    /// OS description (e.g. `Ubuntu_64`).
    pub os_description: String,
    /// NIC network name.
    pub network: String,
    /// Digest algorithm of the `.mf` (SHA1 for OVF 1.0 tools; VirtualBox reads both).
    pub digest: DigestAlgo,
    /// mtime of every member (Unix seconds).
    pub mtime: u64,
    /// VMDK writer options.
    pub vmdk: VmdkOptions,
    /// Extra sections for the virtual system (e.g. `vbox:Machine`).
    pub extra_sections: Vec<Element>,
    /// Disk controller layout of the descriptor.
    pub bus: DiskBus,
}

impl Default for OvaBuild {
    fn default() -> Self {
        OvaBuild {
            name: "appliance".into(),
            cpus: 2,
            memory_mib: 4096,
            os_id: 94,
            os_description: "Ubuntu_64".into(),
            network: "NAT".into(),
            digest: DigestAlgo::Sha256,
            mtime: 0,
            vmdk: VmdkOptions::default(),
            extra_sections: Vec::new(),
            bus: DiskBus::Scsi,
        }
    }
}

impl OvaBuild {
    /// The descriptor settings for this OVA with the disk `disk_href` the
    /// VMDK writer reported on.
    pub fn appliance(&self, disk_href: &str, vmdk: &VmdkReport) -> ApplianceSpec {
        ApplianceSpec {
            name: self.name.clone(),
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            disk_href: disk_href.to_string(),
            disk_file_size: vmdk.file_size,
            disk_capacity: vmdk.capacity,
            os_id: self.os_id,
            os_description: self.os_description.clone(),
            network: self.network.clone(),
            bus: self.bus,
        }
    }
}

/// What [`write_ova_from_raw`] produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OvaReport {
    /// The VMDK.
    pub vmdk: VmdkReport,
    /// The `.mf` lines.
    pub digests: Vec<MfEntry>,
    /// OVA size.
    pub size: u64,
}

/// The member names of the OVA of a VM called `name`: `<name>.ovf`,
/// `<name>.mf`, `<name>-disk1.vmdk` (checked to fit a USTAR name).
pub fn member_names(name: &str) -> Result<[String; 3], OvaError> {
    let names = [
        format!("{name}.ovf"),
        format!("{name}.mf"),
        format!("{name}-disk1.vmdk"),
    ];
    for n in &names {
        if n.contains('/') || n.len() > 99 || n.starts_with('.') {
            return Err(OvaError::BadName(n.clone()));
        }
    }
    Ok(names)
}

/// Package a descriptor and its disk, both named by [`member_names`] of
/// `name`: write `<name>.ovf` and the `.mf` (with `digest`) into `work` (the
/// disk must already be there), then the OVA at `out` (OVF, MF, VMDK in
/// that order, every member with `mtime`). Returns the `.mf` lines.
pub fn package(
    work: &Path,
    out: &Path,
    name: &str,
    descriptor: &Ovf,
    digest: DigestAlgo,
    mtime: u64,
) -> Result<Vec<MfEntry>, OvaError> {
    let [ovf_name, mf_name, disk_name] = member_names(name)?;
    let ovf_path = work.join(&ovf_name);
    std::fs::write(&ovf_path, descriptor.to_xml()).map_err(io_err(&ovf_path))?;
    let digests = ovf::write_mf(work, &mf_name, &[&ovf_name, &disk_name], digest)?;
    let mf_path = work.join(&mf_name);
    write_ova(
        out,
        (&ovf_name, &ovf_path),
        Some((&mf_name, &mf_path)),
        &[(&disk_name, &work.join(&disk_name))],
        mtime,
    )?;
    Ok(digests)
}

/// Build an OVA from a raw disk: streamOptimized VMDK (parallel, deterministic),
/// an OVF 1.0 descriptor, a `.mf`, and the tarball.
pub fn write_ova_from_raw(raw: &Path, out: &Path, spec: &OvaBuild) -> Result<OvaReport, OvaError> {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let work = tempfile::Builder::new()
        .prefix(".opsbake-ova-")
        .tempdir_in(dir)
        .map_err(io_err(dir))?;
    write_ova_in(raw, out, work.path(), spec, |_, _, _| Ok::<_, OvaError>(()))
}

/// [`write_ova_from_raw`] with the intermediate files (VMDK, OVF, `.mf`) in
/// `work` (created if missing, left for the caller), and `edit` called on
/// the descriptor after the VMDK is written and `spec.extra_sections` are
/// added (given the VMDK's path and report), before it is written: what an
/// IaaS adds of its own (VirtualBox's `vbox:` sections) goes there.
pub fn write_ova_in<E: From<OvaError>>(
    raw: &Path,
    out: &Path,
    work: &Path,
    spec: &OvaBuild,
    edit: impl FnOnce(&mut Ovf, &Path, &VmdkReport) -> Result<(), E>,
) -> Result<OvaReport, E> {
    let [_, _, disk_name] = member_names(&spec.name)?;
    std::fs::create_dir_all(work)
        .map_err(io_err(work))
        .map_err(E::from)?;
    let disk = work.join(&disk_name);
    let vmdk = vmdk::write_stream_optimized(raw, &disk, &spec.vmdk).map_err(OvaError::from)?;
    let mut descriptor = Ovf::new_appliance(&spec.appliance(&disk_name, &vmdk));
    for s in &spec.extra_sections {
        descriptor
            .add_virtual_system_section(s.clone())
            .map_err(OvaError::from)?;
    }
    edit(&mut descriptor, &disk, &vmdk)?;
    let digests = package(work, out, &spec.name, &descriptor, spec.digest, spec.mtime)?;
    let size = std::fs::metadata(out).map_err(io_err(out))?.len();
    Ok(OvaReport {
        vmdk,
        digests,
        size,
    })
}
