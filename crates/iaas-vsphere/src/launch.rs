//! Launch: clone the base (CPUs, memory, disk size, network, the build id
//! in ExtraConfig), upload the agent settings ISO (file `env`) to the VM's
//! datastore folder and attach it as a CD-ROM, put the same settings in
//! `guestinfo.userdata` (base64) as the vSphere CPI does, and power on. Then
//! the address: VMware Tools' `guest.ipAddress`, through `WaitForUpdatesEx`
//! under `ip_wait_timeout`, stable for `ip_settle`.

use std::time::Duration;

use base64::Engine as _;
use opsbake_core::builder::{BuildContext, BuildError, Made};
use tokio_util::sync::CancellationToken;

use crate::cleanup::{FILE, VM};
use crate::config::{Config, TASK_TIMEOUT};
use crate::error::VsphereError;
use crate::inventory::{self, ds_path, Place, KEY_BUILD_ID, KEY_ROLE};
use crate::vim::xml::{el, moref_el, Node};
use crate::vim::{this, MoRef, Vim};

/// The settings ISO's file name in the VM's folder.
pub const ISO_NAME: &str = "opsbake-env.iso";

/// How the CD-ROM was set up (undone at capture).
#[derive(Debug, Clone)]
pub enum Cdrom {
    /// An existing drive got the ISO (its device node before the change).
    Edited(Node),
    /// A drive was added with this key.
    Added(i64),
}

/// Clone `source` into the build VM; journaled as [`VM`] before the call.
pub async fn clone_vm(
    ctx: &BuildContext,
    vim: &Vim,
    cfg: &Config,
    place: &Place,
    source: &MoRef,
) -> Result<(u64, MoRef), BuildError> {
    let name = cfg.vm_name.clone();
    let intent = serde_json::json!({
        "datacenter": place.dc_name, "folder": place.folder_path, "source": source.value,
    });
    let cancel = ctx.cancel.clone();
    let build_id = ctx.build_id().to_string();
    let name2 = name.clone();
    let (seq, vm) = ctx
        .create_resource(VM, &name2, intent, |token| async move {
            let mut loc = String::new();
            loc.push_str(&moref_el("datastore", &place.datastore));
            if cfg.linked_clone {
                loc.push_str(&el("diskMoveType", "createNewChildDiskBacking"));
            }
            loc.push_str(&moref_el("pool", &place.pool));
            if let Some(h) = &place.host {
                loc.push_str(&moref_el("host", h));
            }
            let config = inventory::extra_config_xml(&[
                (KEY_BUILD_ID, build_id.as_str()),
                (KEY_ROLE, "build"),
                ("opsbake.token", token.as_str()),
            ]);
            let mut spec = format!(
                "<location>{loc}</location><template>false</template><config>{config}</config><powerOn>false</powerOn>"
            );
            if cfg.linked_clone {
                let snap = vim.props(source, &["snapshot.currentSnapshot"]).await?;
                match snap.get("snapshot.currentSnapshot").and_then(MoRef::from_node) {
                    Some(s) => spec.push_str(&moref_el("snapshot", &s)),
                    None => {
                        return Err(VsphereError::Config(format!(
                            "linked_clone: {source} has no snapshot to clone from"
                        )))
                    }
                }
            }
            let body = format!(
                "{}{}{}<spec>{spec}</spec>",
                this(source),
                moref_el("folder", &place.folder),
                el("name", &name)
            );
            let r = vim
                .run_task("CloneVM_Task", &body, &format!("{}/{name}", place.folder_path), TASK_TIMEOUT, &cancel)
                .await?;
            let vm = r
                .as_ref()
                .and_then(MoRef::from_node)
                .ok_or_else(|| VsphereError::Protocol {
                    op: "CloneVM_Task".into(),
                    message: "the task returned no VM".into(),
                })?;
            Ok::<_, VsphereError>(Made::new(vm.value.clone(), vm).with_data(serde_json::json!({"datacenter": place.dc_name})))
        })
        .await?;
    Ok((seq, vm))
}

fn is_nic(d: &Node) -> bool {
    d.xsi_type().is_some_and(|t| {
        matches!(
            t,
            "VirtualE1000"
                | "VirtualE1000e"
                | "VirtualVmxnet3"
                | "VirtualVmxnet2"
                | "VirtualPCNet32"
                | "VirtualVmxnet"
                | "VirtualSriovEthernetCard"
                | "VirtualVmxnet3Vrdma"
        )
    })
}

/// Replace (or insert after `after`) a device's child with an XML fragment.
pub fn set_child(d: &mut Node, xml: &str, after: &str) -> Result<(), VsphereError> {
    let wrapped = crate::vim::xml::parse(&format!(
        "<r xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">{xml}</r>"
    ))
    .map_err(|m| VsphereError::Protocol {
        op: "device edit".into(),
        message: m,
    })?;
    let Some(new) = wrapped.children.into_iter().next() else {
        return Err(VsphereError::Protocol {
            op: "device edit".into(),
            message: "empty fragment".into(),
        });
    };
    match d.children.iter().position(|c| c.name == new.name) {
        Some(i) => d.children[i] = new,
        None => {
            let at = d
                .children
                .iter()
                .position(|c| c.name == after)
                .map_or(d.children.len().min(1), |i| i + 1);
            d.children.insert(at, new);
        }
    }
    Ok(())
}

fn key_of(d: &Node) -> Option<i64> {
    d.text_of("key").and_then(|k| k.parse().ok())
}

/// The hardware edit: CPUs, memory, disk growth, network, the settings ISO
/// on a CD-ROM, guestinfo.userdata.
pub fn hardware_spec(
    cfg_cpus: u32,
    memory_mib: u64,
    disk_mib: Option<u64>,
    devices: &[Node],
    network: Option<&crate::inventory::Net>,
    iso: &str,
    settings_json: &[u8],
) -> Result<(String, Cdrom), VsphereError> {
    let mut changes = String::new();
    if let Some(mib) = disk_mib {
        let kb = mib * 1024;
        if let Some(disk) = devices.iter().find(|d| d.xsi_type() == Some("VirtualDisk")) {
            let cur: u64 = disk
                .text_of("capacityInKB")
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            if kb > cur {
                let mut d = disk.clone();
                d.set_text("capacityInKB", kb.to_string());
                if d.child("capacityInBytes").is_some() {
                    d.set_text("capacityInBytes", (kb * 1024).to_string());
                }
                changes.push_str("<deviceChange><operation>edit</operation>");
                d.write_as("device", &mut changes);
                changes.push_str("</deviceChange>");
            }
        }
    }
    if let Some(net) = network {
        if let Some(nic) = devices.iter().find(|d| is_nic(d)) {
            let mut d = nic.clone();
            set_child(&mut d, &net.backing(), "deviceInfo")?;
            changes.push_str("<deviceChange><operation>edit</operation>");
            d.write_as("device", &mut changes);
            changes.push_str("</deviceChange>");
        } else {
            return Err(VsphereError::Config(
                "the base VM has no network adapter to attach to `network`".into(),
            ));
        }
    }
    let iso_backing = format!(
        "<backing xsi:type=\"VirtualCdromIsoBackingInfo\">{}</backing>",
        el("fileName", iso)
    );
    let connectable = "<connectable><startConnected>true</startConnected><allowGuestControl>true</allowGuestControl><connected>true</connected></connectable>";
    let cdrom = if let Some(cd) = devices
        .iter()
        .find(|d| d.xsi_type() == Some("VirtualCdrom"))
    {
        let mut d = cd.clone();
        set_child(&mut d, &iso_backing, "deviceInfo")?;
        set_child(&mut d, connectable, "backing")?;
        changes.push_str("<deviceChange><operation>edit</operation>");
        d.write_as("device", &mut changes);
        changes.push_str("</deviceChange>");
        Cdrom::Edited(cd.clone())
    } else {
        // a free slot on an IDE controller (two units each)
        let mut slot = None;
        for c in devices
            .iter()
            .filter(|d| d.xsi_type() == Some("VirtualIDEController"))
        {
            let Some(ck) = key_of(c) else { continue };
            let used: Vec<i64> = devices
                .iter()
                .filter(|d| d.text_of("controllerKey").and_then(|k| k.parse().ok()) == Some(ck))
                .filter_map(|d| d.text_of("unitNumber").and_then(|u| u.parse().ok()))
                .collect();
            if let Some(u) = (0..2).find(|u| !used.contains(u)) {
                slot = Some((ck, u));
                break;
            }
        }
        let Some((ck, unit)) = slot else {
            return Err(VsphereError::Config(
                "the base VM has no CD-ROM drive and no free IDE slot for the settings ISO".into(),
            ));
        };
        changes.push_str(&format!(
            "<deviceChange><operation>add</operation><device xsi:type=\"VirtualCdrom\"><key>-100</key>{iso_backing}{connectable}{}{}</device></deviceChange>",
            el("controllerKey", &ck.to_string()),
            el("unitNumber", &unit.to_string())
        ));
        Cdrom::Added(-100)
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(settings_json);
    let spec = format!(
        "{}{}{changes}{}",
        el("numCPUs", &cfg_cpus.to_string()),
        el("memoryMB", &memory_mib.to_string()),
        inventory::extra_config_xml(&[
            ("guestinfo.userdata", &b64),
            ("guestinfo.userdata.encoding", "base64"),
        ])
    );
    Ok((spec, cdrom))
}

/// Upload the ISO next to the VM's files; journaled as [`FILE`].
pub async fn upload_iso(
    ctx: &BuildContext,
    vim: &Vim,
    place: &Place,
    vm_dir: &str,
    iso: Vec<u8>,
) -> Result<(u64, String), BuildError> {
    let path = format!("{vm_dir}/{ISO_NAME}");
    let full = ds_path(&place.ds_name, &path);
    let intent = serde_json::json!({"datacenter": place.dc_name});
    let (seq, ()) = ctx
        .create_resource(FILE, &full, intent, |_t| async {
            vim.upload_file(&place.dc_name, &place.ds_name, &path, iso)
                .await?;
            Ok::<_, VsphereError>(Made::new(full.clone(), ()))
        })
        .await?;
    Ok((seq, full))
}

/// The VM's directory on its datastore (`vm-name` of `[ds] vm-name/x.vmx`).
pub async fn vm_dir(vim: &Vim, vm: &MoRef) -> Result<String, VsphereError> {
    let p = vim.prop_text(vm, "config.files.vmPathName").await?;
    let rel = p.split_once("] ").map_or(p.as_str(), |(_, r)| r);
    Ok(rel
        .rsplit_once('/')
        .map(|(d, _)| d.to_string())
        .unwrap_or_default())
}

/// Power on.
pub async fn power_on(
    vim: &Vim,
    vm: &MoRef,
    what: &str,
    cancel: &CancellationToken,
) -> Result<(), VsphereError> {
    vim.run_task(
        "PowerOnVM_Task",
        &this(vm),
        what,
        Duration::from_secs(600),
        cancel,
    )
    .await
    .map(|_| ())
}

fn usable_ip(s: &str) -> bool {
    match s.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => !a.is_link_local() && !a.is_unspecified(),
        Ok(std::net::IpAddr::V6(a)) => !a.is_unspecified() && (a.segments()[0] & 0xffc0) != 0xfe80,
        Err(_) => false,
    }
}

/// Wait for VMware Tools' address, then for it to stay the same for
/// `settle`; both limits as given (the settle time counts inside `wait`).
pub async fn wait_ip(
    vim: &Vim,
    vm: &MoRef,
    wait: Duration,
    settle: Duration,
    cancel: &CancellationToken,
) -> Result<String, VsphereError> {
    let deadline = tokio::time::Instant::now() + wait;
    let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
    let mut ip = vim
        .wait_for(
            vm,
            &["guest.ipAddress"],
            "guest.ipAddress (VMware Tools)",
            wait,
            cancel,
            |p| {
                p.get("guest.ipAddress")
                    .map(|n| n.text.trim().to_string())
                    .filter(|s| usable_ip(s))
                    .map(Ok)
            },
        )
        .await?;
    loop {
        if settle.is_zero() {
            return Ok(ip);
        }
        if left() < settle {
            return Err(VsphereError::Timeout {
                what: format!("guest.ipAddress to stay {ip} for {settle:?} (ip_settle)"),
                object: vm.to_string(),
                after: wait,
                last: ip,
            });
        }
        let current = ip.clone();
        let changed = vim
            .wait_for(
                vm,
                &["guest.ipAddress"],
                "a stable guest.ipAddress",
                settle,
                cancel,
                |p| {
                    let now = p
                        .get("guest.ipAddress")
                        .map(|n| n.text.trim().to_string())
                        .unwrap_or_default();
                    (now != current).then_some(Ok(now))
                },
            )
            .await;
        match changed {
            Err(VsphereError::Timeout { .. }) => return Ok(ip),
            Err(e) => return Err(e),
            Ok(new) => {
                tracing::info!(vm = %vm, from = %ip, to = %new, "guest address changed; settling again");
                if usable_ip(&new) {
                    ip = new;
                } else {
                    ip = vim
                        .wait_for(
                            vm,
                            &["guest.ipAddress"],
                            "guest.ipAddress (VMware Tools)",
                            left(),
                            cancel,
                            |p| {
                                p.get("guest.ipAddress")
                                    .map(|n| n.text.trim().to_string())
                                    .filter(|s| usable_ip(s))
                                    .map(Ok)
                            },
                        )
                        .await?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn addresses_from_tools() {
        assert!(usable_ip("192.0.2.10"));
        assert!(usable_ip("127.0.0.1"));
        assert!(!usable_ip("169.254.3.4"));
        assert!(!usable_ip("fe80::1"));
        assert!(!usable_ip(""));
    }

    #[test]
    fn hardware_spec_edits_disk_nic_and_adds_a_cdrom() {
        let devs = crate::vim::xml::parse(r#"<d xmlns:xsi="x"><VirtualDevice xsi:type="VirtualIDEController"><key>200</key><busNumber>0</busNumber></VirtualDevice><VirtualDevice xsi:type="VirtualDisk"><key>2000</key><backing xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>[ds] a/a.vmdk</fileName></backing><controllerKey>200</controllerKey><unitNumber>0</unitNumber><capacityInKB>393216</capacityInKB></VirtualDevice><VirtualDevice xsi:type="VirtualVmxnet3"><key>4000</key><deviceInfo><label>n</label></deviceInfo><backing xsi:type="VirtualEthernetCardNetworkBackingInfo"><deviceName>old</deviceName></backing></VirtualDevice></d>"#).unwrap();
        let net = crate::inventory::Net {
            moref: MoRef::new("Network", "network-7"),
            name: "VM Network".into(),
            dvs: None,
        };
        let (spec, cd) = hardware_spec(
            2,
            4096,
            Some(10240),
            &devs.children,
            Some(&net),
            "[ds] a/opsbake-env.iso",
            b"{}",
        )
        .unwrap();
        assert!(
            spec.contains("<capacityInKB>10485760</capacityInKB>"),
            "{spec}"
        );
        assert!(
            spec.contains(
                "<deviceName>VM Network</deviceName><network type=\"Network\">network-7</network>"
            ),
            "{spec}"
        );
        assert!(
            spec.contains("<operation>add</operation><device xsi:type=\"VirtualCdrom\">"),
            "{spec}"
        );
        assert!(
            spec.contains("<controllerKey>200</controllerKey><unitNumber>1</unitNumber>"),
            "{spec}"
        );
        assert!(
            spec.contains(
                "<key>guestinfo.userdata</key><value xsi:type=\"xsd:string\">e30=</value>"
            ),
            "{spec}"
        );
        assert!(matches!(cd, Cdrom::Added(-100)));
    }
}
