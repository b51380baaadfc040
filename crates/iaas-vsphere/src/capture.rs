//! Capture: shut the guest down (`ShutdownGuest`, then a power-off after
//! `shutdown_timeout`), take the settings CD-ROM out and clear
//! `guestinfo.userdata`, delete the ISO from the datastore, then rename the
//! VM to the template name and mark it as a template. Export: `ExportVm` and
//! the lease's downloads through vCenter, written into an OVA with the
//! stemcell crate's writer (the one the vbox builder uses).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use opsbake_core::events::Emitter;
use tokio_util::sync::CancellationToken;

use crate::config::TASK_TIMEOUT;
use crate::error::VsphereError;
use crate::import::{device_urls, lease_abort, lease_ready, with_progress, DeviceUrl, LEASE_READY};
use crate::inventory::{self, KEY_ROLE};
use crate::vim::xml::el;
use crate::vim::{this, MoRef, Vim};

/// Shut the guest down; power off when it does not stop in time. Returns
/// how it stopped.
pub async fn shutdown(
    vim: &Vim,
    vm: &MoRef,
    what: &str,
    timeout: Duration,
    cancel: &CancellationToken,
    events: &Emitter,
) -> Result<&'static str, VsphereError> {
    if inventory::power_state(vim, vm).await? == "poweredOff" {
        return Ok("already off");
    }
    match vim.call("ShutdownGuest", &this(vm), what).await {
        Ok(_) => {}
        Err(VsphereError::InvalidPowerState { .. }) => return Ok("already off"),
        Err(e) => {
            events.warn(format!("ShutdownGuest on {what}: {e}; powering off"));
            inventory::power_off(vim, vm, what, cancel).await?;
            return Ok("powered off (no guest shutdown)");
        }
    }
    let r = vim
        .wait_for(
            vm,
            &["runtime.powerState"],
            "guest shutdown",
            timeout,
            cancel,
            |p| {
                (p.get("runtime.powerState").map(|s| s.text.as_str()) == Some("poweredOff"))
                    .then_some(Ok(()))
            },
        )
        .await;
    match r {
        Ok(()) => Ok("guest shutdown"),
        Err(VsphereError::Timeout { .. }) => {
            events.warn(format!(
                "{what} did not shut down within {timeout:?} (shutdown_timeout): powering off"
            ));
            inventory::power_off(vim, vm, what, cancel).await?;
            Ok("powered off after the shutdown timeout")
        }
        Err(e) => Err(e),
    }
}

/// Take the settings ISO out (remove the drive opsbake added, or empty the
/// one it used) and clear `guestinfo.userdata`.
pub async fn detach_settings(
    vim: &Vim,
    vm: &MoRef,
    what: &str,
    iso: &str,
    added: bool,
    cancel: &CancellationToken,
) -> Result<(), VsphereError> {
    let devs = inventory::devices(vim, vm).await?;
    let mut change = String::new();
    if let Some(cd) = devs.iter().find(|d| {
        d.xsi_type() == Some("VirtualCdrom")
            && d.path("backing.fileName").is_some_and(|f| f.text == iso)
    }) {
        if added {
            change.push_str("<deviceChange><operation>remove</operation>");
            cd.write_as("device", &mut change);
            change.push_str("</deviceChange>");
        } else {
            let mut d = cd.clone();
            crate::launch::set_child(
                &mut d,
                "<backing xsi:type=\"VirtualCdromRemotePassthroughBackingInfo\"><deviceName></deviceName><exclusive>false</exclusive></backing>",
                "deviceInfo",
            )?;
            crate::launch::set_child(
                &mut d,
                "<connectable><startConnected>false</startConnected><allowGuestControl>true</allowGuestControl><connected>false</connected></connectable>",
                "backing",
            )?;
            change.push_str("<deviceChange><operation>edit</operation>");
            d.write_as("device", &mut change);
            change.push_str("</deviceChange>");
        }
    }
    let spec = format!(
        "{change}{}",
        inventory::extra_config_xml(&[
            ("guestinfo.userdata", ""),
            ("guestinfo.userdata.encoding", ""),
        ])
    );
    inventory::reconfigure(vim, vm, what, &spec, cancel).await
}

/// Rename the VM and mark it as a template (an `artifact`).
pub async fn make_template(
    vim: &Vim,
    vm: &MoRef,
    name: &str,
    cancel: &CancellationToken,
) -> Result<(), VsphereError> {
    let body = format!("{}{}", this(vm), el("newName", name));
    vim.run_task("Rename_Task", &body, name, TASK_TIMEOUT, cancel)
        .await?;
    inventory::reconfigure(
        vim,
        vm,
        name,
        &inventory::extra_config_xml(&[(KEY_ROLE, "artifact"), ("opsbake.token", "")]),
        cancel,
    )
    .await?;
    vim.call("MarkAsTemplate", &this(vm), name).await?;
    Ok(())
}

/// Download a lease's files into `dir`; returns (target name, path) of each
/// disk. Progress goes to the lease; any failure aborts it.
pub async fn download_lease(
    vim: &Vim,
    lease: &MoRef,
    urls: &[DeviceUrl],
    dir: &Path,
    cancel: &CancellationToken,
) -> Result<Vec<(String, PathBuf)>, VsphereError> {
    let done = Arc::new(AtomicU64::new(0));
    let d2 = done.clone();
    let work = async move {
        let done = d2;
        let mut out = Vec::new();
        for (i, u) in urls.iter().filter(|u| u.disk).enumerate() {
            let name = if u.target_id.is_empty() || u.target_id.contains('/') {
                format!("disk-{i}.vmdk")
            } else {
                u.target_id.clone()
            };
            let path = dir.join(&name);
            tokio::select! {
                r = download(vim, &u.url, &path, done.clone()) => r?,
                _ = cancel.cancelled() => return Err(VsphereError::Cancelled("downloading the export".into())),
            }
            out.push((name, path));
        }
        if out.is_empty() {
            return Err(VsphereError::Protocol {
                op: "ExportVm".into(),
                message: format!("lease {lease} offers no disk"),
            });
        }
        Ok(out)
    };
    // the total is unknown before the downloads (vCenter gives no sizes)
    match with_progress(vim, lease, u64::MAX / 200, done, work).await {
        Ok(v) => Ok(v),
        Err(e) => {
            lease_abort(vim, lease, &e.to_string()).await;
            Err(e)
        }
    }
}

async fn download(
    vim: &Vim,
    url: &str,
    path: &Path,
    done: Arc<AtomicU64>,
) -> Result<(), VsphereError> {
    use futures::StreamExt as _;
    use tokio::io::AsyncWriteExt as _;
    let mut req = vim.http().get(url);
    if let Some(c) = vim.cookie() {
        req = req.header("Cookie", c.expose().as_str());
    }
    let op = format!("download {url}");
    let resp = req.send().await.map_err(|e| VsphereError::Http {
        op: op.clone(),
        url: url.to_string(),
        message: e.to_string(),
        transient: e.is_connect() || e.is_timeout(),
    })?;
    let status = resp.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(VsphereError::Status {
            op,
            url: url.to_string(),
            status,
            body: String::new(),
        });
    }
    let mut f = tokio::fs::File::create(path)
        .await
        .map_err(|e| VsphereError::local(path, e))?;
    let mut s = resp.bytes_stream();
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| VsphereError::Http {
            op: op.clone(),
            url: url.to_string(),
            message: e.to_string(),
            transient: true,
        })?;
        done.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
        f.write_all(&chunk)
            .await
            .map_err(|e| VsphereError::local(path, e))?;
    }
    f.flush().await.map_err(|e| VsphereError::local(path, e))?;
    Ok(())
}

/// `ExportVm`: the lease, ready, and its device URLs.
pub async fn export_lease(
    vim: &Vim,
    vm: &MoRef,
    what: &str,
    cancel: &CancellationToken,
) -> Result<(MoRef, Vec<DeviceUrl>), VsphereError> {
    let lease = vim.call_moref("ExportVm", &this(vm), what).await?;
    let info = match lease_ready(vim, &lease, "export lease", LEASE_READY, cancel).await {
        Ok(i) => i,
        Err(e) => {
            lease_abort(vim, &lease, &e.to_string()).await;
            return Err(e);
        }
    };
    Ok((lease, device_urls(&info, vim.base())))
}

/// The capacity in bytes of a streamOptimized/sparse VMDK (its header).
pub fn vmdk_capacity(path: &Path) -> Result<u64, VsphereError> {
    use std::io::Read as _;
    let mut h = [0u8; 20];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut h))
        .map_err(|e| VsphereError::local(path, e))?;
    if &h[0..4] != b"KDMV" {
        return Err(VsphereError::local(
            path,
            "not a sparse VMDK (no KDMV magic)",
        ));
    }
    let mut c = [0u8; 8];
    c.copy_from_slice(&h[12..20]);
    Ok(u64::from_le_bytes(c) * 512)
}

/// What goes into the OVA's descriptor.
#[derive(Debug, Clone)]
pub struct OvaSpec {
    /// VM name (member names too).
    pub name: String,
    /// vCPUs.
    pub cpus: u32,
    /// Memory MiB.
    pub memory_mib: u64,
    /// Network name.
    pub network: String,
    /// Debian (96) or Ubuntu (94).
    pub os_id: u32,
    /// Member mtime.
    pub mtime: u64,
}

/// Write an OVA from a downloaded streamOptimized disk with the stemcell
/// crate's OVF and OVA writers; returns its size and `.mf` lines.
pub fn write_ova(
    disk: &Path,
    out: &Path,
    spec: &OvaSpec,
) -> Result<(u64, Vec<String>), VsphereError> {
    use opsbake_stemcell::ova::{member_names, package};
    use opsbake_stemcell::ovf::{ApplianceSpec, DigestAlgo, DiskBus};
    let dir = disk
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let [_, _, disk_name] = member_names(&spec.name).map_err(|e| VsphereError::local(out, e))?;
    let disk_in_dir = dir.join(&disk_name);
    if disk != disk_in_dir {
        std::fs::rename(disk, &disk_in_dir).map_err(|e| VsphereError::local(disk, e))?;
    }
    let file_size = std::fs::metadata(&disk_in_dir)
        .map_err(|e| VsphereError::local(&disk_in_dir, e))?
        .len();
    let capacity = vmdk_capacity(&disk_in_dir)?;
    let ovf = opsbake_stemcell::Ovf::new_appliance(&ApplianceSpec {
        name: spec.name.clone(),
        cpus: spec.cpus,
        memory_mib: spec.memory_mib,
        disk_href: disk_name.clone(),
        disk_file_size: file_size,
        disk_capacity: capacity,
        os_id: spec.os_id,
        os_description: if spec.os_id == 96 {
            "Debian_64"
        } else {
            "Ubuntu_64"
        }
        .into(),
        network: spec.network.clone(),
        bus: DiskBus::Scsi,
    });
    let digests = package(&dir, out, &spec.name, &ovf, DigestAlgo::Sha256, spec.mtime)
        .map_err(|e| VsphereError::local(out, e))?;
    let size = std::fs::metadata(out)
        .map_err(|e| VsphereError::local(out, e))?
        .len();
    Ok((
        size,
        digests
            .iter()
            .map(|d| format!("{}:{}", d.file, d.digest))
            .collect(),
    ))
}
