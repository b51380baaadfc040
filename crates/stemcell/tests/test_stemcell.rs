//! The project's test stemcells (built by stemcells/build-test-stemcell.sh with
//! GNU tar, gzip and qemu-img, not with this crate) read, verified and
//! extracted. `OPSBAKE_TEST_STEMCELL_DIR` (exported by
//! .ci/setup.d/20-test-stemcell.sh) names the directory holding them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};

use common::require_tool;
use opsbake_stemcell::ovf::{self, Ovf};
use opsbake_stemcell::{
    extract, read_manifest, verify, vhd, vmdk, ExtractOptions, QemuImg, StemcellName,
};

fn stemcell_dir() -> Option<PathBuf> {
    match std::env::var_os("OPSBAKE_TEST_STEMCELL_DIR") {
        Some(d) => Some(PathBuf::from(d)),
        None if std::env::var("OPSBAKE_SKIP_PEERS").as_deref() == Ok("1") => {
            eprintln!("skipping: OPSBAKE_TEST_STEMCELL_DIR is not set and OPSBAKE_SKIP_PEERS=1");
            None
        }
        None => panic!(
            "OPSBAKE_TEST_STEMCELL_DIR is not set: run .ci/setup.d/20-test-stemcell.sh (or set OPSBAKE_SKIP_PEERS=1)"
        ),
    }
}

fn find(dir: &Path, iaas: &str, light: bool) -> PathBuf {
    let prefix = if light {
        "light-bosh-stemcell-"
    } else {
        "bosh-stemcell-"
    };
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with(prefix) && n.ends_with(".tgz") && n.contains(&format!("-{iaas}-"))
        })
        .unwrap_or_else(|| panic!("no {prefix}*-{iaas}-*.tgz in {}", dir.display()))
}

fn check_name_and_manifest(sc: &Path, iaas: &str) -> opsbake_stemcell::Manifest {
    let name = StemcellName::parse(&sc.file_name().unwrap().to_string_lossy()).unwrap();
    let m = read_manifest(sc).unwrap();
    assert_eq!(m.iaas(), iaas);
    assert_eq!(
        name.stemcell_name(),
        m.name,
        "file name and stemcell.MF disagree"
    );
    assert_eq!(Some(name.operating_system()), m.operating_system);
    m
}

#[test]
fn vsphere_test_stemcell_extracts_to_a_valid_ovf_package() {
    let Some(dir) = stemcell_dir() else { return };
    if !require_tool("qemu-img") {
        return;
    }
    let sc = find(&dir, "vsphere", false);
    let m = check_name_and_manifest(&sc, "vsphere");
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("x");
    let r = extract(&sc, &out, &ExtractOptions::default()).unwrap();
    assert_eq!(r.image_sha1, m.sha1);
    let entries = ovf::verify_mf(&out, "image.mf").unwrap();
    assert!(entries.iter().any(|e| e.file == "image.ovf"));
    let o = Ovf::read(&out.join("image.ovf")).unwrap();
    let disk = &o.disks()[0];
    assert_eq!(disk.capacity_bytes, Some(m.disk_mib() << 20));
    let href = &o.files()[0].href;
    // The qemu-img-written VMDK reads back with our reader, and equals the raw disk.
    let raw = t.path().join("disk.raw");
    let cap = vmdk::stream_optimized_to_raw(&out.join(href), &raw).unwrap();
    assert_eq!(cap, m.disk_mib() << 20);
    let q = QemuImg::default();
    assert!(q.compare(&raw, "raw", &out.join(href), "vmdk").unwrap());
}

#[test]
fn aws_test_stemcell_extracts_a_sparse_raw_disk() {
    let Some(dir) = stemcell_dir() else { return };
    let sc = find(&dir, "aws", false);
    let m = check_name_and_manifest(&sc, "aws");
    assert_eq!(m.stemcell_formats, ["aws-raw"]);
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("x");
    let r = extract(&sc, &out, &ExtractOptions::default()).unwrap();
    assert_eq!(r.files.len(), 1);
    assert_eq!(r.files[0].path, Path::new("root.img"));
    assert_eq!(r.logical_bytes, m.disk_mib() << 20);
    assert!(r.written_bytes < r.logical_bytes, "{r:?}");
    // The MBR boot signature of a bootable disk.
    let mut mbr = [0u8; 512];
    std::io::Read::read_exact(
        &mut std::fs::File::open(out.join("root.img")).unwrap(),
        &mut mbr,
    )
    .unwrap();
    assert_eq!(&mbr[510..512], &[0x55, 0xaa]);
}

#[test]
fn google_manifest_reads_and_azure_is_a_whole_mib_fixed_vhd() {
    let Some(dir) = stemcell_dir() else { return };
    let g = find(&dir, "google", false);
    // Reading the MF only: the full verify of the raw-disk path is the aws
    // test's (debug builds inflate slowly).
    let gm = check_name_and_manifest(&g, "google");
    assert_eq!(gm.stemcell_formats, ["google-rawdisk"]);
    let a = find(&dir, "azure", false);
    let am = check_name_and_manifest(&a, "azure");
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("x");
    extract(&a, &out, &ExtractOptions::default()).unwrap();
    let info = vhd::read_footer(&out.join("root.vhd")).unwrap();
    assert_eq!(info.size % (1 << 20), 0);
    assert_eq!(info.size, am.disk_mib() << 20);
}

#[test]
fn light_test_stemcell_resolves_amis() {
    let Some(dir) = stemcell_dir() else { return };
    let l = find(&dir, "aws", true);
    let m = read_manifest(&l).unwrap();
    assert!(m.is_light());
    let r = verify(&l).unwrap();
    assert_eq!(r.image_size, 0);
    let amis = m.cloud_properties.ami.clone().unwrap();
    let (region, ami) = amis.iter().next().unwrap();
    assert_eq!(
        m.light_image(Some(region)).unwrap(),
        opsbake_stemcell::CloudImageRef::AwsAmi {
            region: region.clone(),
            ami: ami.clone()
        }
    );
    assert!(m.light_image(Some("xx-nowhere-1")).is_err());
}
