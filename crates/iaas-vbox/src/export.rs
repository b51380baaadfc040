//! The reproducible export: normalise the powered-off disk, rebuild its root
//! file system deterministically, and write the OVA.
//!
//! Normalisation (as root, in a private mount namespace so that nothing stays
//! mounted if opsbake dies): the root partition of the raw disk is
//! loop-mounted, scrubbed (machine-id, SSH host keys with
//! `/root/firstboot_done`, logs, caches, temporary files, the agent's
//! settings and network file, random seeds, DHCP leases, shadow "last change"
//! days), every file time set to `SOURCE_DATE_EPOCH`, and the file system is
//! made again from those files with `mkfs.ext4 -d`, keeping the UUID, label,
//! hash seed and geometry of the original, with `E2FSPROGS_FAKE_TIME`. Inode
//! change and access times (which `mkfs -d` copies from the source) are then
//! set with `debugfs`. The partition is zeroed before the new file system is
//! written into it, so free space is zero. The MBR and the boot loader in
//! front of the partition are kept as they are.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

use opsbake_stemcell::ova::{self, OvaBuild};
use opsbake_stemcell::ovf::{DigestAlgo, DiskBus, MfEntry};
use opsbake_stemcell::vmdk::{VmdkOptions, VmdkReport};
use opsbake_stemcell::xml::{Element, Node};
use opsbake_stemcell::Ovf;
use sha2::{Digest as _, Sha256};

use crate::error::{io_err, VboxError};
use crate::exec::Cmd;

/// The first partition of an MBR disk: (byte offset, byte length).
pub fn first_partition(raw: &Path) -> Result<(u64, u64), VboxError> {
    let mut f = std::fs::File::open(raw).map_err(io_err(raw))?;
    let mut mbr = [0u8; 512];
    f.read_exact(&mut mbr).map_err(io_err(raw))?;
    let bad = |m: &str| VboxError::Disk {
        path: raw.to_path_buf(),
        message: m.to_string(),
    };
    if mbr[510..512] != [0x55, 0xaa] {
        return Err(bad("no MBR boot signature"));
    }
    let e = &mbr[446..462];
    if e[4] == 0xee {
        return Err(bad("GPT disks are not supported by the normaliser yet"));
    }
    let le32 = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64;
    let start = le32(&e[8..12]);
    let sectors = le32(&e[12..16]);
    if e[4] != 0x83 || start == 0 || sectors == 0 {
        return Err(bad("the first MBR partition is not a Linux partition"));
    }
    Ok((start * 512, sectors * 512))
}

/// What `mkfs.ext4` needs to make the same file system again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext4Geometry {
    /// File system UUID.
    pub uuid: String,
    /// Label.
    pub label: String,
    /// Directory hash seed (as a UUID).
    pub hash_seed: String,
    /// Block size in bytes.
    pub block_size: u64,
    /// Inode size.
    pub inode_size: u32,
    /// Inodes.
    pub inodes: u64,
    /// Blocks.
    pub blocks: u64,
    /// Reserved blocks percentage (rounded).
    pub reserved_percent: u64,
}

fn uuid_string(b: &[u8]) -> String {
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Read the ext4 superblock of the partition at `offset`.
pub fn ext4_geometry(raw: &Path, offset: u64) -> Result<Ext4Geometry, VboxError> {
    let mut f = std::fs::File::open(raw).map_err(io_err(raw))?;
    f.seek(SeekFrom::Start(offset + 1024))
        .map_err(io_err(raw))?;
    let mut sb = [0u8; 1024];
    f.read_exact(&mut sb).map_err(io_err(raw))?;
    let u16le = |o: usize| u16::from_le_bytes([sb[o], sb[o + 1]]);
    let u32le = |o: usize| u32::from_le_bytes([sb[o], sb[o + 1], sb[o + 2], sb[o + 3]]);
    if u16le(0x38) != 0xef53 {
        return Err(VboxError::Disk {
            path: raw.to_path_buf(),
            message: format!("no ext2/3/4 file system at byte {offset}"),
        });
    }
    let incompat = u32le(0x60);
    let hi = if incompat & 0x80 != 0 {
        u64::from(u32le(0x150))
    } else {
        0
    };
    let blocks = (hi << 32) | u64::from(u32le(0x04));
    let reserved = u64::from(u32le(0x08));
    let label_raw = &sb[0x78..0x88];
    let label_len = label_raw.iter().position(|&b| b == 0).unwrap_or(16);
    Ok(Ext4Geometry {
        uuid: uuid_string(&sb[0x68..0x78]),
        label: String::from_utf8_lossy(&label_raw[..label_len]).into_owned(),
        hash_seed: uuid_string(&sb[0xec..0xfc]),
        block_size: 1024u64 << u32le(0x18),
        inode_size: u32::from(u16le(0x58)),
        inodes: u64::from(u32le(0x00)),
        blocks,
        reserved_percent: (reserved * 100 + blocks / 2)
            .checked_div(blocks)
            .unwrap_or(0),
    })
}

/// The scrub and rebuild, run by `sh` inside `unshare -m`. Positional
/// arguments: raw, offset, length, mount point, new file system image,
/// epoch, uuid, label, block size, inode size, inodes, reserved percent,
/// blocks, debugfs command file, hash seed.
pub const NORMALISE_SCRIPT: &str = r#"set -eu
raw=$1 off=$2 len=$3 mnt=$4 new=$5 epoch=$6 uuid=$7 label=$8 bs=$9
shift 9
isz=$1 inodes=$2 rpct=$3 blocks=$4 cmds=$5 seed=$6
mount -o loop,noatime,offset="$off",sizelimit="$len" "$raw" "$mnt"
trap 'umount "$mnt" 2>/dev/null || true' EXIT
R=$mnt
# identity and secrets of this boot
rm -f "$R"/etc/ssh/ssh_host_* "$R/root/firstboot_done" "$R/var/lib/systemd/random-seed" \
      "$R/var/vcap/bosh/settings.json" "$R/etc/systemd/network/10-bosh-agent.network" \
      "$R/var/lib/systemd/timesync/clock" "$R/var/cache/ldconfig/aux-cache" \
      "$R/root/.bash_history" "$R/home/vcap/.bash_history" "$R/home/vcap/.viminfo"
if [ -f "$R/etc/machine-id" ]; then : >"$R/etc/machine-id"; fi
if [ -f "$R/var/lib/dbus/machine-id" ] && [ ! -L "$R/var/lib/dbus/machine-id" ]; then rm -f "$R/var/lib/dbus/machine-id"; fi
# logs, caches, temporary files, leases, agent data
if [ -d "$R/var/log" ]; then
    find "$R/var/log" -xdev -mindepth 1 \( -name '*.gz' -o -name '*.[0-9]' -o -name '*.old' -o -name '*.journal' -o -name '*.journal~' \) -delete
    find "$R/var/log" -xdev -type f -exec truncate -s 0 {} +
fi
for d in tmp var/tmp var/cache/apt/archives/partial var/lib/dhcp var/lib/systemd/timers var/cache/man var/vcap/data var/lib/apt/lists/partial var/lib/sudo/ts run; do
    if [ -d "$R/$d" ] && [ ! -L "$R/$d" ]; then find "$R/$d" -xdev -mindepth 1 -delete; fi
done
rm -f "$R"/var/cache/apt/*.bin
find "$R" -xdev -type d -name __pycache__ -prune -exec rm -rf {} +
# the journal's per-machine directory (named after the machine-id)
if [ -d "$R/var/log/journal" ]; then find "$R/var/log/journal" -xdev -mindepth 1 -delete; fi
# the day of the last password change: the day of SOURCE_DATE_EPOCH
day=$((epoch / 86400))
for s in etc/shadow etc/shadow-; do
    if [ -f "$R/$s" ]; then
        awk -F: -v OFS=: -v d="$day" '$3 != "" { $3 = d } { print }' "$R/$s" >"$R/$s.opsbake"
        cat "$R/$s.opsbake" >"$R/$s"
        rm -f "$R/$s.opsbake"
    fi
done
# the backups that shadow-utils leave (shadow- held the build's password hash)
for f in passwd group shadow gshadow; do
    if [ -f "$R/etc/$f" ] && [ -f "$R/etc/$f-" ]; then cat "$R/etc/$f" >"$R/etc/$f-"; fi
done
# file times
find "$R" -xdev -exec touch -h -d "@$epoch" {} +
if find "$R" -xdev \( -name '*"*' -o -name '*
*' \) | grep -q .; then
    echo "file names with a double quote or a newline cannot be normalised:" >&2
    find "$R" -xdev \( -name '*"*' -o -name '*
*' \) >&2
    exit 3
fi
(cd "$R" && find . -xdev -printf '%P\n') | LC_ALL=C sort | awk -v e="$epoch" '{
    p = ($0 == "" ? "/" : "/" $0)
    printf "sif \"%s\" ctime @%s\nsif \"%s\" atime @%s\n", p, e, p, e
}' >"$cmds"
rm -f "$new"
truncate -s "$len" "$new"
E2FSPROGS_FAKE_TIME=$epoch SOURCE_DATE_EPOCH=$epoch mkfs.ext4 -q -F -L "$label" -U "$uuid" -m "$rpct" \
    -b "$bs" -I "$isz" -N "$inodes" -O ^metadata_csum_seed,^orphan_file \
    -E "hash_seed=$seed,nodiscard,lazy_itable_init=0" -d "$R" "$new" "$blocks"
"#;

/// Normalise `raw` in place (see the module docs). `work` is a scratch dir.
pub async fn normalise(raw: &Path, work: &Path, epoch: i64) -> Result<Ext4Geometry, VboxError> {
    let (offset, len) = first_partition(raw)?;
    let g = ext4_geometry(raw, offset)?;
    let mnt = work.join("root");
    std::fs::create_dir_all(&mnt).map_err(io_err(&mnt))?;
    let new = work.join("root.ext4");
    let cmds = work.join("debugfs.cmds");
    let epoch_s = epoch.to_string();
    Cmd::new("unshare")
        .args([
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            NORMALISE_SCRIPT,
            "sh",
        ])
        .arg(raw)
        .args([offset.to_string(), len.to_string()])
        .arg(&mnt)
        .arg(&new)
        .args([
            epoch_s.clone(),
            g.uuid.clone(),
            g.label.clone(),
            g.block_size.to_string(),
            g.inode_size.to_string(),
            g.inodes.to_string(),
            g.reserved_percent.to_string(),
            g.blocks.to_string(),
        ])
        .arg(&cmds)
        .arg(g.hash_seed.clone())
        .run()
        .await?;
    Cmd::new("debugfs")
        .args(["-w", "-f"])
        .arg(&cmds)
        .arg(&new)
        .env("E2FSPROGS_FAKE_TIME", epoch_s.clone())
        .run()
        .await?;
    Cmd::new("e2fsck")
        .args(["-f", "-n"])
        .arg(&new)
        .env("E2FSPROGS_FAKE_TIME", epoch_s.clone())
        .run()
        .await?;
    // zero the partition, then write the new file system into it (holes stay holes)
    Cmd::new("fallocate")
        .args([
            "--punch-hole".to_string(),
            "--keep-size".to_string(),
            "--offset".to_string(),
            offset.to_string(),
            "--length".to_string(),
            len.to_string(),
        ])
        .arg(raw)
        .run()
        .await?;
    let mut of = std::ffi::OsString::from("of=");
    of.push(raw.as_os_str());
    let mut inf = std::ffi::OsString::from("if=");
    inf.push(new.as_os_str());
    Cmd::new("dd")
        .arg(inf)
        .arg(of)
        .args([
            "bs=1M".to_string(),
            format!("seek={offset}"),
            "oflag=seek_bytes".to_string(),
            "conv=notrunc,sparse".to_string(),
            "status=none".to_string(),
        ])
        .run()
        .await?;
    let _ = std::fs::remove_file(&new);
    let _ = std::fs::remove_file(&cmds);
    Ok(g)
}

/// A UUID (version 4 layout) made from a digest, `{...}` for VirtualBox.
pub fn uuid_from(seed: &[u8]) -> String {
    let d = Sha256::digest(seed);
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    uuid_string(&b)
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, VboxError> {
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// What goes into the OVA.
#[derive(Debug, Clone)]
pub struct OvaSpec {
    /// VM name; member names are `<name>.ovf`, `<name>.mf`, `<name>-disk1.vmdk`.
    pub name: String,
    /// vCPUs.
    pub cpus: u32,
    /// Memory MiB.
    pub memory_mib: u64,
    /// CIM OS id (94 Ubuntu 64-bit, 96 Debian 64-bit).
    pub os_id: u32,
    /// VirtualBox OS type (`Ubuntu_64`, `Debian_64`).
    pub vbox_os: String,
    /// Product name in the ProductSection.
    pub product: String,
    /// Product version.
    pub version: String,
    /// mtime of the tar members and the VirtualBox `lastStateChange`.
    pub epoch: i64,
}

/// What [`write_ova`] produced.
#[derive(Debug, Clone)]
pub struct OvaReport {
    /// The OVA.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// The VMDK writer's report.
    pub vmdk: VmdkReport,
    /// The `.mf` entries.
    pub digests: Vec<MfEntry>,
    /// The disk UUID in the descriptor.
    pub disk_uuid: String,
}

/// VirtualBox's namespace for `vbox:Machine`.
pub const NS_VBOX: &str = "http://www.virtualbox.org/ovf/machine";

/// The OVF 1.0 descriptor: the stemcell crate's appliance descriptor (IDE
/// disk, CD-ROM, NIC on `NAT`) with VirtualBox's sections added.
pub fn descriptor(
    spec: &OvaSpec,
    disk_href: &str,
    vmdk: &VmdkReport,
    disk_uuid: &str,
    machine_uuid: &str,
    mac: &str,
) -> Result<String, VboxError> {
    let (product, machine) = vbox_elements(spec, disk_uuid, machine_uuid, mac);
    let mut ovf = Ovf::new_appliance(&ova_build(spec).appliance(disk_href, vmdk));
    add_vbox_sections(&mut ovf, spec, disk_uuid, product, machine)?;
    Ok(ovf.to_xml())
}

/// VirtualBox's own parts of the descriptor: the ProductSection (with the
/// `public_ssh_key` property) and the `vbox:Machine` section.
fn vbox_elements(
    spec: &OvaSpec,
    disk_uuid: &str,
    machine_uuid: &str,
    mac: &str,
) -> (Element, Element) {
    let info = |t: &str| Element::new("Info").text(t);
    let cpus = spec.cpus.to_string();
    let mem = spec.memory_mib.to_string();
    let date = crate::qemu::rtc_datetime(spec.epoch) + "Z";
    let product = Element::new("ProductSection")
        .attr("ovf:required", "false")
        .child(info(
            "Appliance properties (the OVF environment gives them at deploy time)",
        ))
        .child(Element::new("Product").text(&spec.product))
        .child(Element::new("Version").text(&spec.version))
        .child(
            Element::new("Property")
                .attr("ovf:key", "public_ssh_key")
                .attr("ovf:type", "string")
                .attr("ovf:userConfigurable", "true")
                .attr("ovf:value", "")
                .child(Element::new("Label").text("Public SSH key"))
                .child(
                    Element::new("Description")
                        .text("An OpenSSH public key: the login of the appliance user `ubuntu`"),
                ),
        );
    let machine = Element::new("vbox:Machine")
        .attr("ovf:required", "false")
        .attr("version", "1.16-linux")
        .attr("uuid", format!("{{{machine_uuid}}}"))
        .attr("name", &spec.name)
        .attr("OSType", &spec.vbox_os)
        .attr("snapshotFolder", "Snapshots")
        .attr("lastStateChange", &date)
        .child(
            Element::new("ovf:Info")
                .text("Complete VirtualBox machine configuration in VirtualBox format"),
        )
        .child(
            Element::new("Hardware")
                .child(
                    Element::new("CPU")
                        .attr("count", &cpus)
                        .child(Element::new("PAE").attr("enabled", "true"))
                        .child(Element::new("LongMode").attr("enabled", "true"))
                        .child(Element::new("HardwareVirtExLargePages").attr("enabled", "false")),
                )
                .child(Element::new("Memory").attr("RAMSize", &mem))
                .child(
                    Element::new("Boot")
                        .child(
                            Element::new("Order")
                                .attr("position", "1")
                                .attr("device", "HardDisk"),
                        )
                        .child(
                            Element::new("Order")
                                .attr("position", "2")
                                .attr("device", "DVD"),
                        )
                        .child(
                            Element::new("Order")
                                .attr("position", "3")
                                .attr("device", "None"),
                        )
                        .child(
                            Element::new("Order")
                                .attr("position", "4")
                                .attr("device", "None"),
                        ),
                )
                .child(Element::new("BIOS").child(Element::new("IOAPIC").attr("enabled", "true")))
                .child(
                    Element::new("Network").child(
                        Element::new("Adapter")
                            .attr("slot", "0")
                            .attr("enabled", "true")
                            .attr("MACAddress", mac)
                            .attr("type", "82540EM")
                            .child(Element::new("NAT")),
                    ),
                )
                .child(
                    Element::new("UART").child(
                        Element::new("Port")
                            .attr("slot", "0")
                            .attr("enabled", "true")
                            .attr("IOBase", "0x3f8")
                            .attr("IRQ", "4")
                            .attr("hostMode", "Disconnected"),
                    ),
                )
                .child(Element::new("RTC").attr("localOrUTC", "UTC")),
        )
        .child(
            Element::new("StorageControllers").child(
                Element::new("StorageController")
                    .attr("name", "IDE")
                    .attr("type", "PIIX4")
                    .attr("PortCount", "2")
                    .attr("useHostIOCache", "true")
                    .attr("Bootable", "true")
                    .child(
                        Element::new("AttachedDevice")
                            .attr("type", "HardDisk")
                            .attr("hotpluggable", "false")
                            .attr("port", "0")
                            .attr("device", "0")
                            .child(Element::new("Image").attr("uuid", format!("{{{disk_uuid}}}"))),
                    )
                    .child(
                        Element::new("AttachedDevice")
                            .attr("passthrough", "false")
                            .attr("type", "DVD")
                            .attr("hotpluggable", "false")
                            .attr("port", "1")
                            .attr("device", "0"),
                    ),
            ),
        );
    (product, machine)
}

/// The stemcell crate's OVA settings for a VirtualBox OVA: IDE disk (and
/// VMDK adapter type), CD-ROM, NIC on `NAT`, SHA-256 `.mf`.
fn ova_build(spec: &OvaSpec) -> OvaBuild {
    OvaBuild {
        name: spec.name.clone(),
        cpus: spec.cpus,
        memory_mib: spec.memory_mib,
        os_id: spec.os_id,
        os_description: spec.vbox_os.clone(),
        network: "NAT".into(),
        digest: DigestAlgo::Sha256,
        mtime: u64::try_from(spec.epoch).unwrap_or(0),
        vmdk: VmdkOptions {
            adapter_type: "ide".into(),
            ..VmdkOptions::default()
        },
        extra_sections: Vec::new(),
        bus: DiskBus::IdeWithCdrom,
    }
}

/// What VirtualBox adds to the stemcell crate's appliance descriptor: its
/// namespace, the disk's `vbox:uuid`, the ProductSection (before the OS
/// section), `vbox:OSType`, and the `vbox:Machine` section.
fn add_vbox_sections(
    ovf: &mut Ovf,
    spec: &OvaSpec,
    disk_uuid: &str,
    product: Element,
    machine: Element,
) -> Result<(), VboxError> {
    let missing = |what: &str| VboxError::Config(format!("OVF descriptor: no {what}"));
    let env = ovf.envelope_mut();
    env.attrs.push(("xmlns:vbox".into(), NS_VBOX.into()));
    env.find_mut("DiskSection")
        .and_then(|d| d.find_mut("Disk"))
        .ok_or_else(|| missing("DiskSection/Disk"))?
        .attrs
        .push(("vbox:uuid".into(), disk_uuid.to_string()));
    env.find_mut("VirtualSystem")
        .and_then(|v| v.find_mut("OperatingSystemSection"))
        .ok_or_else(|| missing("OperatingSystemSection"))?
        .children
        .push(Node::Element(
            Element::new("vbox:OSType")
                .attr("ovf:required", "false")
                .text(&spec.vbox_os),
        ));
    ovf.insert_virtual_system_section("OperatingSystemSection", product)?;
    ovf.add_virtual_system_section(machine)?;
    Ok(())
}

/// Write the OVA for the normalised raw disk at `out`: VMDK (our parallel
/// deterministic streamOptimized writer), the descriptor, the `.mf` with
/// SHA-256 digests, and the tar (OVF, MF, VMDK in that order; owner root,
/// mode 0644, mtime `spec.epoch`). UUIDs and the MAC derive from the VMDK's
/// SHA-256, so equal disks give equal OVAs.
pub fn write_ova(
    raw: &Path,
    out: &Path,
    work: &Path,
    spec: &OvaSpec,
) -> Result<OvaReport, VboxError> {
    let build = ova_build(spec);
    let mut disk_uuid = String::new();
    let rep = ova::write_ova_in(raw, out, work, &build, |ovf, disk, _vmdk| {
        let disk_sha = sha256_file(disk)?;
        disk_uuid = uuid_from(format!("disk:{disk_sha}").as_bytes());
        let machine_uuid = uuid_from(format!("machine:{}:{disk_sha}", spec.name).as_bytes());
        let m = Sha256::digest(format!("mac:{disk_sha}").as_bytes());
        let mac = format!("080027{:02X}{:02X}{:02X}", m[0], m[1], m[2]);
        let (product, machine) = vbox_elements(spec, &disk_uuid, &machine_uuid, &mac);
        add_vbox_sections(ovf, spec, &disk_uuid, product, machine)
    })?;
    Ok(OvaReport {
        path: out.to_path_buf(),
        size: rep.size,
        vmdk: rep.vmdk,
        digests: rep.digests,
        disk_uuid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The OVA of a fixed small disk, written twice: both runs give the same
    /// bytes, and those bytes are the ones the vbox writer gave before it
    /// moved onto the stemcell crate's OVF/OVA writer (pinned SHA-256 of the
    /// descriptor and of the whole OVA).
    #[test]
    fn ova_bytes_are_reproducible_and_pinned() {
        let t = tempfile::tempdir().unwrap();
        let raw = t.path().join("disk.raw");
        let mut data = vec![0u8; 4 << 20];
        for (i, b) in data.iter_mut().enumerate().take(1 << 20) {
            *b = (i % 251) as u8;
        }
        data[(3 << 20) + 17] = 0x5a;
        std::fs::write(&raw, &data).unwrap();
        let spec = OvaSpec {
            name: "appliance".into(),
            cpus: 2,
            memory_mib: 2048,
            os_id: 96,
            vbox_os: "Debian_64".into(),
            product: "appliance".into(),
            version: "1.0".into(),
            epoch: 1_704_067_200,
        };
        let a = t.path().join("a.ova");
        let b = t.path().join("b.ova");
        let ra = write_ova(&raw, &a, &t.path().join("wa"), &spec).unwrap();
        write_ova(&raw, &b, &t.path().join("wb"), &spec).unwrap();
        let bytes = std::fs::read(&a).unwrap();
        assert_eq!(
            bytes,
            std::fs::read(&b).unwrap(),
            "OVA bytes differ between runs"
        );
        assert_eq!(ra.size, bytes.len() as u64);
        let mut ar = tar::Archive::new(bytes.as_slice());
        let mut first = ar.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(first.path().unwrap().to_str(), Some("appliance.ovf"));
        let mut ovf_text = String::new();
        first.read_to_string(&mut ovf_text).unwrap();
        let hex = |b: &[u8]| format!("{:x}", Sha256::digest(b));
        assert_eq!(
            hex(ovf_text.as_bytes()),
            "9c561092c91f338f4181a8f53804cbad43779024711c9c1d87d65f7a27a074fc",
            "{ovf_text}"
        );
        assert_eq!(
            hex(&bytes),
            "9b7465d764105598b041d25aef1c8a3e62e3600f30657c5889a5cd85a21c59ca"
        );
    }

    #[test]
    fn uuids_are_v4_shaped_and_stable() {
        let a = uuid_from(b"x");
        assert_eq!(a, uuid_from(b"x"));
        assert_ne!(a, uuid_from(b"y"));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
    }

    #[test]
    fn descriptor_parses_with_disk_product_and_vbox_sections() {
        let spec = OvaSpec {
            name: "appliance".into(),
            cpus: 2,
            memory_mib: 2048,
            os_id: 96,
            vbox_os: "Debian_64".into(),
            product: "appliance".into(),
            version: "1.0".into(),
            epoch: 1_704_067_200,
        };
        let vmdk = VmdkReport {
            capacity: 402_653_184,
            grains: 10,
            zero_grains: 5,
            file_size: 12345,
            cid: 1,
        };
        let xml = descriptor(
            &spec,
            "appliance-disk1.vmdk",
            &vmdk,
            "u-d",
            "u-m",
            "080027000001",
        )
        .unwrap();
        let o = opsbake_stemcell::Ovf::parse(&xml).unwrap();
        let disks = o.disks();
        assert_eq!(disks.len(), 1);
        assert_eq!(disks[0].capacity_bytes, Some(402_653_184));
        assert_eq!(o.cpus(), Some(2));
        assert_eq!(o.memory_mib(), Some(2048));
        assert_eq!(o.files()[0].size, Some(12345));
        assert!(xml.contains("ovf:key=\"public_ssh_key\""));
        assert!(xml.contains("<vbox:Machine"));
        assert!(xml.contains("<Image uuid=\"{u-d}\"/>"));
        assert!(xml.contains("vbox:uuid=\"u-d\""));
        assert!(xml.contains("lastStateChange=\"2024-01-01T00:00:00Z\""));
    }
}
