//! A third-party reader of the OVA opsbake writes: govc (govmomi 0.24, built
//! from Debian's source package by .ci/setup.d/50-vcsim.sh) imports it into
//! vcsim, the vSphere API simulator, on 127.0.0.1.
//!
//! The OVA comes from the builder's own export code
//! ([`opsbake_iaas_vbox::export::write_ova`]) on a small synthetic raw disk
//! (no guest boot). What vcsim checks and what it does not is listed in
//! `opsbake_test_support::vcsim`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read as _;
use std::path::{Path, PathBuf};

use opsbake_iaas_vbox::export::{self, OvaReport, OvaSpec};
use opsbake_test_support::vcsim::{self, ImportOptions, Vcsim, VcsimError};

const DISK_MIB: u64 = 8;

fn start() -> Option<Vcsim> {
    match Vcsim::start() {
        Ok(v) => Some(v),
        Err(e @ VcsimError::Missing { .. }) => {
            if vcsim::skip_peers() {
                eprintln!("skipped (OPSBAKE_SKIP_PEERS=1): {e}");
                None
            } else {
                panic!("{e}");
            }
        }
        Err(e) => panic!("{e}"),
    }
}

fn spec() -> OvaSpec {
    OvaSpec {
        name: "vcsim-check".into(),
        cpus: 2,
        memory_mib: 1536,
        os_id: 96,
        vbox_os: "Debian_64".into(),
        product: "opsbake-vcsim-test".into(),
        version: "1.2.3".into(),
        epoch: 1_704_067_200,
    }
}

/// An 8 MiB sparse raw disk: text in the first MiB, a pseudo-random MiB at
/// 3 MiB, zeros elsewhere (so the VMDK has data and skipped zero grains).
fn synthetic_raw(dir: &Path) -> PathBuf {
    use std::io::{Seek as _, SeekFrom, Write as _};
    let raw = dir.join("disk.raw");
    let mut f = std::fs::File::create(&raw).unwrap();
    f.set_len(DISK_MIB << 20).unwrap();
    let text: Vec<u8> = b"opsbake vcsim import check\n"
        .iter()
        .copied()
        .cycle()
        .take(1 << 20)
        .collect();
    f.write_all(&text).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    f.seek(SeekFrom::Start(3 << 20)).unwrap();
    f.write_all(&noise).unwrap();
    f.sync_all().unwrap();
    raw
}

fn write_ova(dir: &Path) -> (PathBuf, OvaReport) {
    let raw = synthetic_raw(dir);
    let ova = dir.join("vcsim-check.ova");
    let rep = export::write_ova(&raw, &ova, &dir.join("ova-work"), &spec()).unwrap();
    (ova, rep)
}

/// The members of an OVA, in order.
fn members(ova: &Path) -> Vec<(String, Vec<u8>)> {
    let mut a = tar::Archive::new(std::fs::File::open(ova).unwrap());
    a.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut b = Vec::new();
            e.read_to_end(&mut b).unwrap();
            (name, b)
        })
        .collect()
}

fn pack(out: &Path, members: &[(String, Vec<u8>)]) {
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    for (name, data) in members {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_704_067_200);
        h.set_cksum();
        b.append(&h, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap().sync_all().unwrap();
}

/// A copy of the OVA changed by `edit` (on the members unpacked in `dir`),
/// repacked in the same member order.
fn rewrite(ova: &Path, dir: &Path, out: &Path, edit: impl FnOnce(&Path)) {
    std::fs::create_dir_all(dir).unwrap();
    let names: Vec<String> = members(ova)
        .into_iter()
        .map(|(n, b)| {
            std::fs::write(dir.join(&n), b).unwrap();
            n
        })
        .collect();
    edit(dir);
    let m: Vec<(String, Vec<u8>)> = names
        .into_iter()
        .map(|n| {
            let b = std::fs::read(dir.join(&n)).unwrap();
            (n, b)
        })
        .collect();
    pack(out, &m);
}

/// Checks of the VM vcsim made from one of our OVAs.
fn assert_vm_matches(vm: &vcsim::ImportedVm, rep: &OvaReport) {
    let s = spec();
    assert_eq!(vm.cpus, s.cpus, "{vm:#?}");
    assert_eq!(vm.memory_mib, s.memory_mib, "{vm:#?}");
    assert_eq!(vm.hardware_version, "vmx-13");
    // the descriptor (read by test-support's own parser) declares the
    // VMDK's real capacity, and vcsim read that number for the one disk
    assert_eq!(vm.declared.disks.len(), 1, "{vm:#?}");
    assert_eq!(vm.declared.disks[0].capacity_bytes, Some(rep.vmdk.capacity));
    assert_eq!(rep.vmdk.capacity, DISK_MIB << 20);
    assert_eq!(vm.disks.len(), 1, "{vm:#?}");
    assert_eq!(
        Some(u64::try_from(vm.disks[0].capacity_kb).unwrap()),
        vcsim::vcsim_capacity_kb(
            vm.declared.disks[0].capacity,
            vm.declared.disks[0].units.as_deref()
        )
    );
    assert_eq!(vm.disks[0].label, "disk1");
    assert!(vm.disks[0].file.contains(&vm.name), "{vm:#?}");
    // the E1000 on the OVF network "NAT", mapped to vcsim's default network
    assert_eq!(vm.nics.len(), 1, "{vm:#?}");
    assert_eq!(vm.nics[0].kind, "VirtualE1000");
    assert_eq!(vm.declared.nics[0].connection.as_deref(), Some("NAT"));
    // the CD-ROM the OVF environment goes into
    assert_eq!(vm.cdroms, 1, "{vm:#?}");
    assert!(vm.import_output.contains("vcsim-check-disk1.vmdk"));
}

#[test]
fn govc_import_spec_reads_the_product_property_and_network() {
    let Some(sim) = start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (ova, _) = write_ova(dir.path());
    let spec = sim.import_spec(&ova).unwrap();
    let props: Vec<&str> = spec["PropertyMapping"]
        .as_array()
        .unwrap_or_else(|| panic!("no PropertyMapping in {spec}"))
        .iter()
        .map(|p| p["Key"].as_str().unwrap())
        .collect();
    assert_eq!(props, ["public_ssh_key"], "{spec}");
    let nets: Vec<&str> = spec["NetworkMapping"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["Name"].as_str().unwrap())
        .collect();
    assert_eq!(nets, ["NAT"], "{spec}");
}

/// The criterion: govc imports the OVA as opsbake writes it, and
/// the VM has the vCPUs, memory, disk capacity, E1000 NIC and CD-ROM the
/// descriptor declares; a value for the ProductSection property given at
/// import reaches the VM. (An earlier export wrote VirtualBox's
/// `virtualbox-2.2` hardware family, which vcsim refuses with NotSupported,
/// "unsupported hardware version"; it writes `vmx-13` now.)
#[test]
fn govc_imports_the_ova_opsbake_writes() {
    let Some(sim) = start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (ova, rep) = write_ova(dir.path());
    let key =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOpsbakeVcsimCheckKeyNotARealKey00000000000 test";
    let vm = sim
        .import_ova_with(
            &ova,
            "vcsim-check",
            &ImportOptions {
                properties: vec![("public_ssh_key".into(), key.into())],
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_vm_matches(&vm, &rep);
    assert_eq!(vm.declared.properties, ["public_ssh_key"]);
    assert_eq!(
        vm.extra_config.get("public_ssh_key").map(String::as_str),
        Some(key),
        "{vm:#?}"
    );
    // the same name again is refused: the first import created the VM's
    // files on the datastore
    match sim.import_ova(&ova, "vcsim-check") {
        Err(VcsimError::Govc { stderr, .. }) => {
            assert!(stderr.contains("FileAlreadyExists"), "{stderr}")
        }
        other => panic!("a second import under the same name: {other:?}"),
    }
}

/// A wrong digest in the .mf: opsbake's own manifest check (the stemcell
/// crate's `verify_mf`) refuses the package; govc 0.24 does not read the
/// .mf at all and imports it.
#[test]
fn tampered_manifest_is_caught_by_verify_mf_not_by_govc() {
    let Some(sim) = start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (ova, _) = write_ova(dir.path());
    let tampered = dir.path().join("vcsim-check-tampered.ova");
    let unpacked = dir.path().join("tampered");
    rewrite(&ova, &unpacked, &tampered, |d| {
        let mf = d.join("vcsim-check.mf");
        let text = std::fs::read_to_string(&mf).unwrap();
        let line = text
            .lines()
            .find(|l| l.contains("-disk1.vmdk)= "))
            .unwrap()
            .to_string();
        let (head, digest) = line.split_once(")= ").unwrap();
        let flipped = if digest.starts_with('0') { "1" } else { "0" };
        let bad = format!("{head})= {flipped}{}", &digest[1..]);
        std::fs::write(&mf, text.replace(&line, &bad)).unwrap();
    });
    let err = opsbake_stemcell::ovf::verify_mf(&unpacked, "vcsim-check.mf").unwrap_err();
    assert!(err.to_string().contains("vcsim-check-disk1.vmdk"), "{err}");
    let vm = sim.import_ova(&tampered, "vcsim-tampered");
    assert!(
        vm.is_ok(),
        "govc now refuses an OVA with a wrong .mf digest (update the docs): {vm:?}"
    );
}
