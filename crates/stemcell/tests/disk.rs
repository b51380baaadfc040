//! Disk conversions checked with qemu-img (compare, check, info).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use common::require_tool;
use opsbake_stemcell::vmdk::{self, VmdkOptions};
use opsbake_stemcell::{convert, vhd, ConvertOptions, DiskFormat, Engine, QemuImg};

/// A sparse test disk: random bytes, text, holes, data across grain
/// boundaries and in the last, partial grain.
fn test_disk(path: &Path, len: u64) {
    let mut f = std::fs::File::create(path).unwrap();
    f.set_len(len).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let random: Vec<u8> = (0..(1 << 20))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(&random[..4096]).unwrap();
    f.seek(SeekFrom::Start(1 << 20)).unwrap();
    f.write_all(&random).unwrap();
    let text = "opsbake writes stemcell disks deterministically. ".repeat(20_000);
    f.seek(SeekFrom::Start(3 << 20)).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f.seek(SeekFrom::Start((6 << 20) - 100)).unwrap();
    f.write_all(b"straddles a grain boundary").unwrap();
    f.seek(SeekFrom::Start(len - 700)).unwrap();
    f.write_all(b"the last partial grain").unwrap();
    f.sync_all().unwrap();
}

fn qemu() -> Option<QemuImg> {
    require_tool("qemu-img").then(QemuImg::default)
}

fn paths(dir: &Path, names: &[&str]) -> Vec<PathBuf> {
    names.iter().map(|n| dir.join(n)).collect()
}

#[test]
fn raw_round_trips_through_every_format_with_identical_bytes() {
    let Some(q) = qemu() else { return };
    let t = tempfile::tempdir().unwrap();
    let len = (12 << 20) + 3 * 4096; // not a whole grain, not a whole MiB
    let raw = t.path().join("disk.raw");
    test_disk(&raw, len);
    for engine in [Engine::Auto, Engine::QemuImg] {
        let opts = ConvertOptions {
            engine: engine.clone(),
            ..ConvertOptions::default()
        };
        for (fmt, ext) in [
            (DiskFormat::Vmdk, "vmdk"),
            (DiskFormat::Vhd, "vhd"),
            (DiskFormat::Qcow2, "qcow2"),
        ] {
            let [img, back] = <[PathBuf; 2]>::try_from(paths(
                t.path(),
                &[&format!("d.{ext}"), &format!("back-{ext}.raw")],
            ))
            .unwrap();
            convert(&raw, DiskFormat::Raw, &img, fmt, &opts)
                .unwrap_or_else(|e| panic!("{engine:?} raw→{ext}: {e}"));
            assert!(
                q.compare(&raw, "raw", &img, fmt.qemu_name()).unwrap(),
                "{engine:?}: qemu-img compare raw vs {ext} differs"
            );
            convert(&img, fmt, &back, DiskFormat::Raw, &opts)
                .unwrap_or_else(|e| panic!("{engine:?} {ext}→raw: {e}"));
            let orig = std::fs::read(&raw).unwrap();
            let mut got = std::fs::read(&back).unwrap();
            if fmt == DiskFormat::Vhd {
                // A fixed VHD holds whole MiB: the tail is zero padding.
                assert_eq!(got.len() as u64, len.div_ceil(1 << 20) << 20);
                assert!(got[orig.len()..].iter().all(|b| *b == 0));
                got.truncate(orig.len());
            } else {
                assert_eq!(got.len(), orig.len(), "{engine:?} {ext}");
            }
            assert!(
                got == orig,
                "{engine:?}: raw → {ext} → raw changed the bytes"
            );
            assert!(q.compare(&img, fmt.qemu_name(), &back, "raw").unwrap());
        }
    }
}

#[test]
fn our_vmdk_passes_qemu_img_check_and_is_deterministic() {
    let Some(q) = qemu() else { return };
    let t = tempfile::tempdir().unwrap();
    let raw = t.path().join("disk.raw");
    test_disk(&raw, 40 << 20); // more than one grain table (32 MiB each)
    let a = t.path().join("a/disk.vmdk");
    let b = t.path().join("b/disk.vmdk");
    std::fs::create_dir_all(a.parent().unwrap()).unwrap();
    std::fs::create_dir_all(b.parent().unwrap()).unwrap();
    let ra = vmdk::write_stream_optimized(
        &raw,
        &a,
        &VmdkOptions {
            threads: 1,
            ..VmdkOptions::default()
        },
    )
    .unwrap();
    let rb = vmdk::write_stream_optimized(
        &raw,
        &b,
        &VmdkOptions {
            threads: 4,
            batch_grains: 7,
            ..VmdkOptions::default()
        },
    )
    .unwrap();
    assert_eq!(ra, rb);
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "thread count changed the bytes"
    );
    assert_eq!(ra.capacity, 40 << 20);
    assert!(ra.zero_grains > 500, "{ra:?}");
    let check = q.check(&a, "vmdk").unwrap();
    assert!(check.contains("No errors"), "{check}");
    let info = q.info(&a, None).unwrap();
    assert_eq!(
        (info.format.as_str(), info.virtual_size),
        ("vmdk", 40 << 20)
    );
    let desc = vmdk::read_descriptor(&a).unwrap();
    assert!(desc.contains("createType=\"streamOptimized\""), "{desc}");
    assert!(
        desc.contains(&format!("RW {} SPARSE \"disk.vmdk\"", (40u64 << 20) / 512)),
        "{desc}"
    );
    assert!(desc.contains(&format!("CID={:08x}", ra.cid)), "{desc}");
    assert!(q.compare(&raw, "raw", &a, "vmdk").unwrap());
    // A different disk gives a different CID.
    let raw2 = t.path().join("disk2.raw");
    test_disk(&raw2, 40 << 20);
    let mut f = std::fs::OpenOptions::new().write(true).open(&raw2).unwrap();
    f.seek(SeekFrom::Start(20 << 20)).unwrap();
    f.write_all(b"one more grain").unwrap();
    drop(f);
    let c = t.path().join("c.vmdk");
    let rc = vmdk::write_stream_optimized(&raw2, &c, &VmdkOptions::default()).unwrap();
    assert_ne!(rc.cid, ra.cid);
    // qemu-img's own streamOptimized output reads back with our reader.
    let qv = t.path().join("q.vmdk");
    q.convert(&raw, "raw", &qv, "vmdk", Some("subformat=streamOptimized"))
        .unwrap();
    let back = t.path().join("q.raw");
    vmdk::stream_optimized_to_raw(&qv, &back).unwrap();
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&raw).unwrap());
}

#[test]
fn fixed_vhd_is_whole_mib_with_a_footer_qemu_reads() {
    let Some(q) = qemu() else { return };
    let t = tempfile::tempdir().unwrap();
    let raw = t.path().join("disk.raw");
    test_disk(&raw, (5 << 20) + 1536);
    let v = t.path().join("disk.vhd");
    let info = vhd::write_fixed_vhd(&raw, &v, 1_700_000_000).unwrap();
    assert_eq!(info.size, 6 << 20);
    assert_eq!(std::fs::metadata(&v).unwrap().len(), (6 << 20) + 512);
    assert_eq!(vhd::read_footer(&v).unwrap(), info);
    let qi = q.info(&v, Some("vpc")).unwrap();
    // Without -f, qemu-img calls a fixed VHD raw (no header at the start).
    assert_eq!(q.info(&v, None).unwrap().format, "raw");
    assert_eq!((qi.format.as_str(), qi.virtual_size), ("vpc", 6 << 20));
    let again = t.path().join("again.vhd");
    vhd::write_fixed_vhd(&raw, &again, 1_700_000_000).unwrap();
    assert_eq!(std::fs::read(&v).unwrap(), std::fs::read(&again).unwrap());
    // qemu-img's fixed VHD reads back with our footer reader.
    let qv = t.path().join("q.vhd");
    let whole = t.path().join("whole.raw");
    std::fs::copy(&raw, &whole).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&whole)
        .unwrap()
        .set_len(6 << 20)
        .unwrap();
    q.convert(
        &whole,
        "raw",
        &qv,
        "vpc",
        Some("subformat=fixed,force_size=on"),
    )
    .unwrap();
    assert_eq!(vhd::read_footer(&qv).unwrap().size, 6 << 20);
    // A corrupted footer is refused.
    let mut bytes = std::fs::read(&v).unwrap();
    let n = bytes.len();
    bytes[n - 512 + 30] ^= 1;
    std::fs::write(&v, &bytes).unwrap();
    assert!(vhd::read_footer(&v)
        .unwrap_err()
        .to_string()
        .contains("checksum"));
}

#[test]
fn qemu_img_failures_carry_its_output() {
    let Some(q) = qemu() else { return };
    let t = tempfile::tempdir().unwrap();
    let e = q.info(&t.path().join("missing.img"), None).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("qemu-img info") && msg.contains("missing.img"),
        "{msg}"
    );
    let bogus = QemuImg::new("/nonexistent/qemu-img");
    assert!(matches!(
        bogus.info(Path::new("x"), None),
        Err(opsbake_stemcell::ExecError::NotFound { .. })
    ));
}

#[test]
fn ova_from_raw_is_ordered_deterministic_and_holds_a_matching_disk() {
    let Some(q) = qemu() else { return };
    if !require_tool("python3") {
        return;
    }
    use opsbake_stemcell::ova::{write_ova_from_raw, OvaBuild};
    use opsbake_stemcell::ovf::{self, Ovf};
    let t = tempfile::tempdir().unwrap();
    let raw = t.path().join("disk.raw");
    test_disk(&raw, 9 << 20);
    let spec = OvaBuild {
        name: "opsbake-test".into(),
        mtime: 1_700_000_000,
        ..OvaBuild::default()
    };
    let a = t.path().join("a.ova");
    let b = t.path().join("b.ova");
    let report = write_ova_from_raw(&raw, &a, &spec).unwrap();
    write_ova_from_raw(
        &raw,
        &b,
        &OvaBuild {
            vmdk: VmdkOptions {
                threads: 1,
                ..VmdkOptions::default()
            },
            ..spec.clone()
        },
    )
    .unwrap();
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "OVA bytes differ between runs"
    );
    assert_eq!(report.size, std::fs::metadata(&a).unwrap().len());
    // Read it with Python's tarfile: order, format, attributes; extract.
    let x = t.path().join("x");
    std::fs::create_dir_all(&x).unwrap();
    let listing = common::run(std::process::Command::new("python3").arg("-c").arg(
        "import sys,tarfile\nt=tarfile.open(sys.argv[1])\nfor m in t.getmembers():\n  print(m.name, m.size, m.mtime, m.uid, oct(m.mode), m.type == tarfile.REGTYPE)\nt.extractall(sys.argv[2])",
    ).arg(&a).arg(&x));
    let listing = String::from_utf8(listing).unwrap();
    let names: Vec<&str> = listing
        .lines()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "opsbake-test.ovf",
            "opsbake-test.mf",
            "opsbake-test-disk1.vmdk"
        ],
        "{listing}"
    );
    assert!(
        listing
            .lines()
            .all(|l| l.ends_with(" 1700000000 0 0o644 True")),
        "{listing}"
    );
    ovf::verify_mf(&x, "opsbake-test.mf").unwrap();
    let o = Ovf::read(&x.join("opsbake-test.ovf")).unwrap();
    assert_eq!(o.files()[0].size, Some(report.vmdk.file_size));
    assert_eq!(o.disks()[0].capacity_bytes, Some(9 << 20));
    assert!(q
        .compare(&raw, "raw", &x.join("opsbake-test-disk1.vmdk"), "vmdk")
        .unwrap());
    assert!(q
        .check(&x.join("opsbake-test-disk1.vmdk"), "vmdk")
        .unwrap()
        .contains("No errors"));
}
