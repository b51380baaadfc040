//! The VirtualBox engine: the build VM is a VirtualBox VM driven through
//! `VBoxManage` ([`crate::vboxmanage`]).
//!
//! The stemcell's OVF is imported the way the BOSH VirtualBox CPI imports it:
//! the root disk moves from the vSphere SCSI controller to the IDE one, and
//! the `.mf` line of the edited OVF is rewritten (VirtualBox checks the
//! manifest on import). The settings ISO goes on the IDE controller's
//! secondary master, NAT with one port forward from 127.0.0.1 to the guest's
//! 22, the guest clock starts at `SOURCE_DATE_EPOCH`
//! (`--biossystemtimeoffset`), headless start, ACPI power-off with a timeout,
//! then `clonemedium ... --format RAW` for the export and
//! `unregistervm --delete`.
//!
//! The VM is journaled (kind [`VBOX_VM`], by name) before `import` runs, so
//! a crash at any point leaves a record that `opsbake cleanup` deletes.

use std::path::{Path, PathBuf};

use sha1::Digest as _;

use crate::error::{io_err, VboxError};
use crate::vboxmanage::{self, VBoxManage};

/// Journal kind of a VirtualBox VM (id: the VM's name).
pub const VBOX_VM: &str = "vbox_vm";

/// One `<Item>` of the OVF's VirtualHardwareSection.
#[derive(Debug, Clone)]
struct Item {
    /// Byte range of the whole element in the descriptor.
    start: usize,
    end: usize,
    instance_id: String,
    resource_type: String,
    parent: Option<String>,
}

fn element_text<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let a = xml.find(&open)? + open.len();
    let b = a + xml[a..].find(&close)?;
    Some(xml[a..b].trim())
}

fn items(ovf: &str) -> Vec<Item> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(i) = ovf[pos..].find("<Item") {
        let start = pos + i;
        // `<Item>` or `<Item attr=...>`, not `<ItemX`
        let after = ovf[start + 5..].chars().next();
        if !matches!(after, Some('>' | ' ' | '\t' | '\n' | '\r')) {
            pos = start + 5;
            continue;
        }
        let Some(j) = ovf[start..].find("</Item>") else {
            break;
        };
        let end = start + j + "</Item>".len();
        let body = &ovf[start..end];
        out.push(Item {
            start,
            end,
            instance_id: element_text(body, "rasd:InstanceID")
                .unwrap_or_default()
                .to_string(),
            resource_type: element_text(body, "rasd:ResourceType")
                .unwrap_or_default()
                .to_string(),
            parent: element_text(body, "rasd:Parent").map(str::to_string),
        });
        pos = end;
    }
    out
}

/// The CPI's controller fix: a root disk (ResourceType 17) whose parent is
/// not an IDE controller (ResourceType 5: vSphere stemcells put it on an LSI
/// Logic SCSI controller, type 6) moves to the first IDE controller of the
/// descriptor. `Ok(None)` when the disk is on IDE already.
pub fn switch_root_disk_to_ide(ovf: &str, path: &Path) -> Result<Option<String>, VboxError> {
    let items = items(ovf);
    let err = |message: String| VboxError::Stemcell {
        path: path.to_path_buf(),
        message,
    };
    let disk = items
        .iter()
        .find(|i| i.resource_type == "17")
        .ok_or_else(|| err("the OVF declares no disk drive (ResourceType 17)".into()))?;
    let parent = disk
        .parent
        .as_deref()
        .ok_or_else(|| err("the OVF's disk drive has no rasd:Parent".into()))?;
    let parent_type = items
        .iter()
        .find(|i| i.instance_id == parent)
        .map(|i| i.resource_type.as_str())
        .ok_or_else(|| {
            err(format!(
                "the disk's controller (InstanceID {parent}) is missing"
            ))
        })?;
    if parent_type == "5" {
        return Ok(None);
    }
    let ide = items.iter().find(|i| i.resource_type == "5").ok_or_else(|| {
        err(format!(
            "the disk is on a controller of ResourceType {parent_type} and the OVF has no IDE controller (ResourceType 5) to move it to"
        ))
    })?;
    let body = &ovf[disk.start..disk.end];
    let from = format!("<rasd:Parent>{parent}</rasd:Parent>");
    let to = format!("<rasd:Parent>{}</rasd:Parent>", ide.instance_id);
    let new_body = body.replacen(&from, &to, 1);
    Ok(Some(format!(
        "{}{}{}",
        &ovf[..disk.start],
        new_body,
        &ovf[disk.end..]
    )))
}

/// Rewrite the digest line of `file` in an OVF manifest (`SHA1(f)= ...` or
/// `SHA256(f)= ...`) for its new `content`.
pub fn rewrite_manifest(mf: &str, file: &str, content: &[u8]) -> String {
    let mut out = String::with_capacity(mf.len());
    for line in mf.lines() {
        let sha1_prefix = format!("SHA1({file})=");
        let sha256_prefix = format!("SHA256({file})=");
        if line.starts_with(&sha1_prefix) {
            out.push_str(&format!(
                "{sha1_prefix} {}",
                hex::encode(sha1::Sha1::digest(content))
            ));
        } else if line.starts_with(&sha256_prefix) {
            out.push_str(&format!(
                "{sha256_prefix} {}",
                hex::encode(sha2::Sha256::digest(content))
            ));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// Apply the controller fix to the extracted stemcell image in `dir`
/// (`*.ovf` and its `.mf`) and return the OVF's path.
pub fn prepare_ovf(dir: &Path) -> Result<PathBuf, VboxError> {
    let mut ovf = None;
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let p = entry.map_err(io_err(dir))?.path();
        if p.extension().is_some_and(|x| x == "ovf") {
            ovf = Some(p);
        }
    }
    let ovf = ovf.ok_or_else(|| VboxError::Stemcell {
        path: dir.to_path_buf(),
        message: "no .ovf in the image: the VirtualBox engine imports the vSphere stemcell's OVF"
            .into(),
    })?;
    let text = std::fs::read_to_string(&ovf).map_err(io_err(&ovf))?;
    let Some(fixed) = switch_root_disk_to_ide(&text, &ovf)? else {
        return Ok(ovf);
    };
    std::fs::write(&ovf, fixed.as_bytes()).map_err(io_err(&ovf))?;
    let mf = ovf.with_extension("mf");
    if mf.is_file() {
        let name = ovf
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let m = std::fs::read_to_string(&mf).map_err(io_err(&mf))?;
        std::fs::write(&mf, rewrite_manifest(&m, &name, fixed.as_bytes())).map_err(io_err(&mf))?;
    }
    tracing::debug!(ovf = %ovf.display(), "root disk moved to the IDE controller");
    Ok(ovf)
}

/// The VM's root disk and the IDE controller it is on, from `showvminfo`.
pub fn root_disk(info: &str, vm: &str) -> Result<(String, PathBuf), VboxError> {
    let ctl = vboxmanage::controllers(info)
        .into_iter()
        .find(|c| c.is_ide())
        .ok_or_else(|| {
            VboxError::Config(format!(
                "VirtualBox VM {vm}: no IDE controller after the import"
            ))
        })?;
    match vboxmanage::attachment(info, &ctl.name, 0, 0) {
        Some(p) if p != "none" && p != "emptydrive" => Ok((ctl.name, PathBuf::from(p))),
        other => Err(VboxError::Config(format!(
            "VirtualBox VM {vm}: no disk at {}-0-0 ({})",
            ctl.name,
            other.unwrap_or_else(|| "nothing".into())
        ))),
    }
}

/// What `launch` needs to create and start the VM.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// VM name (unique per build).
    pub name: String,
    /// The prepared OVF.
    pub ovf: PathBuf,
    /// Where VirtualBox puts the VM's files.
    pub basefolder: PathBuf,
    /// CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Host port on 127.0.0.1 forwarded to the guest's 22.
    pub ssh_port: u16,
    /// The settings ISO.
    pub iso: PathBuf,
    /// Serial console log.
    pub serial_log: PathBuf,
    /// Guest clock start (seconds since the epoch).
    pub epoch: i64,
}

/// Import the OVF as VM `spec.name` (registered from here on: the caller
/// journals it before), attach the settings ISO, set CPUs, memory, NAT and
/// the forward, the clock, and start it headless.
pub async fn create_and_start(vbm: &VBoxManage, spec: &VmSpec) -> Result<(), VboxError> {
    vbm.run(&vboxmanage::import(&spec.ovf, &spec.name, &spec.basefolder))
        .await?;
    let info = vbm.run(&vboxmanage::showvminfo(&spec.name)).await?;
    let (ctl, _disk) = root_disk(&info, &spec.name)?;
    vbm.run(&vboxmanage::storageattach(
        &spec.name, &ctl, 1, 0, "dvddrive", &spec.iso,
    ))
    .await?;
    vbm.run(&vboxmanage::modifyvm(
        &spec.name,
        spec.cpus.max(1),
        spec.memory_mib,
        spec.ssh_port,
        &spec.serial_log,
    ))
    .await?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let offset = spec.epoch.saturating_mul(1000).saturating_sub(now_ms);
    vbm.run(&vboxmanage::bios_time_offset(&spec.name, offset))
        .await?;
    vbm.run(&vboxmanage::start_headless(&spec.name)).await?;
    Ok(())
}

/// Copy the powered-off VM's root disk to a raw image at `raw` (and forget
/// the clone in VirtualBox's media registry).
pub async fn disk_to_raw(vbm: &VBoxManage, vm: &str, raw: &Path) -> Result<(), VboxError> {
    let info = vbm.run(&vboxmanage::showvminfo(vm)).await?;
    let (_ctl, disk) = root_disk(&info, vm)?;
    vbm.run(&vboxmanage::clone_to_raw(&disk, raw)).await?;
    vbm.run(&vboxmanage::close_medium(raw)).await?;
    Ok(())
}

/// Whether VBoxManage's error says the VM does not exist.
pub fn is_not_found(err: &VboxError) -> bool {
    match err {
        VboxError::Command { output, .. } => {
            output.contains("Could not find a registered machine")
                || output.contains("VBOX_E_OBJECT_NOT_FOUND")
        }
        _ => false,
    }
}

/// Power off (when running) and unregister and delete VM `vm` with its
/// files. `Ok(false)` when VirtualBox does not know it (never imported, or
/// deleted already).
pub async fn destroy(vbm: &VBoxManage, vm: &str) -> Result<bool, VboxError> {
    let info = match vbm.run(&vboxmanage::showvminfo(vm)).await {
        Ok(i) => i,
        Err(e) if is_not_found(&e) => return Ok(false),
        Err(e) => return Err(e),
    };
    match vboxmanage::vm_state(&info).as_deref() {
        Some("poweroff" | "aborted" | "saved") | None => {}
        Some(_) => {
            vbm.run(&vboxmanage::poweroff(vm)).await?;
        }
    }
    vbm.run(&vboxmanage::unregister_delete(vm)).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VSPHERE_LIKE: &str = r#"<Envelope><VirtualSystem><VirtualHardwareSection>
      <Item>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:ResourceSubType>PIIX4</rasd:ResourceSubType>
        <rasd:ResourceType>5</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>8</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item ovf:required="false">
        <rasd:InstanceID>9</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>15</rasd:ResourceType>
      </Item>
    </VirtualHardwareSection></VirtualSystem></Envelope>"#;

    #[test]
    fn moves_the_root_disk_from_scsi_to_ide() {
        let fixed = switch_root_disk_to_ide(VSPHERE_LIKE, Path::new("image.ovf"))
            .unwrap()
            .unwrap();
        let disk = &fixed[fixed.find("<rasd:InstanceID>8").unwrap()..];
        let disk = &disk[..disk.find("</Item>").unwrap()];
        assert!(disk.contains("<rasd:Parent>4</rasd:Parent>"), "{disk}");
        // only the disk moved: the CD-ROM item keeps its parent
        let cd = &fixed[fixed.find("<rasd:InstanceID>9").unwrap()..];
        assert!(cd.contains("<rasd:Parent>3</rasd:Parent>"));
        // idempotent: a second pass finds the disk on IDE
        assert!(switch_root_disk_to_ide(&fixed, Path::new("image.ovf"))
            .unwrap()
            .is_none());
    }

    #[test]
    fn refuses_an_ovf_without_ide_or_disk() {
        let no_ide = VSPHERE_LIKE.replace("<rasd:ResourceType>5</rasd:ResourceType>", "");
        let e = switch_root_disk_to_ide(&no_ide, Path::new("/s/image.ovf"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/s/image.ovf") && e.contains("no IDE controller"),
            "{e}"
        );
        let no_disk = VSPHERE_LIKE.replace("<rasd:ResourceType>17</rasd:ResourceType>", "");
        let e = switch_root_disk_to_ide(&no_disk, Path::new("x.ovf"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no disk drive"), "{e}");
    }

    #[test]
    fn rewrites_only_the_ovf_line_of_the_manifest() {
        let mf = "SHA1(image.ovf)= 00\nSHA1(image-disk1.vmdk)= 11\n";
        let out = rewrite_manifest(mf, "image.ovf", b"abc");
        assert_eq!(
            out,
            "SHA1(image.ovf)= a9993e364706816aba3e25717850c26c9cd0d89d\nSHA1(image-disk1.vmdk)= 11\n"
        );
        let out = rewrite_manifest("SHA256(image.ovf)= 00\n", "image.ovf", b"abc");
        assert!(out.contains("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
    }

    #[test]
    fn prepare_ovf_fixes_the_test_stemcell_shape_in_place() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("image.ovf"), VSPHERE_LIKE).unwrap();
        let before = hex::encode(sha1::Sha1::digest(VSPHERE_LIKE.as_bytes()));
        std::fs::write(
            d.path().join("image.mf"),
            format!("SHA1(image.ovf)= {before}\nSHA1(image-disk1.vmdk)= 11\n"),
        )
        .unwrap();
        let ovf = prepare_ovf(d.path()).unwrap();
        let text = std::fs::read(&ovf).unwrap();
        let mf = std::fs::read_to_string(d.path().join("image.mf")).unwrap();
        let after = hex::encode(sha1::Sha1::digest(&text));
        assert_ne!(before, after);
        assert!(mf.contains(&after), "{mf}");
        assert!(mf.contains("SHA1(image-disk1.vmdk)= 11"));
    }

    #[test]
    fn finds_the_root_disk() {
        let info = "storagecontrollername0=\"IDE\"\nstoragecontrollertype0=\"PIIX4\"\n\"IDE-0-0\"=\"/v/vm/disk1.vmdk\"\n";
        let (ctl, disk) = root_disk(info, "vm").unwrap();
        assert_eq!(ctl, "IDE");
        assert_eq!(disk, PathBuf::from("/v/vm/disk1.vmdk"));
        let e = root_disk("storagecontrollername0=\"IDE\"\nstoragecontrollertype0=\"PIIX4\"\n\"IDE-0-0\"=\"none\"\n", "vm")
            .unwrap_err()
            .to_string();
        assert!(e.contains("vm") && e.contains("IDE-0-0"), "{e}");
    }

    #[test]
    fn not_found_is_recognised() {
        let e = VboxError::Command {
            command: "VBoxManage showvminfo x".into(),
            status: "exit status: 1".into(),
            output: "VBoxManage: error: Could not find a registered machine named 'x'".into(),
        };
        assert!(is_not_found(&e));
        assert!(!is_not_found(&VboxError::Config("x".into())));
    }
}
