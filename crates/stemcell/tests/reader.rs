//! The streaming reader against tarballs crafted with Python's tarfile and GNU tar.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{require_tool, run};
use opsbake_stemcell::reader::{self, Limits};
use opsbake_stemcell::{extract, read_manifest, verify, ExtractOptions, ReadError, UnsafeReason};
use serde_json::json;

const CRAFT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/craft.py");

fn mf(iaas: &str, hypervisor: &str, disk_mib: u64, disk_format: &str, formats: &str) -> String {
    format!(
        "---\nname: bosh-{iaas}-{hypervisor}-ubuntu-jammy-go_agent\nversion: '1.406'\nbosh_protocol: 1\napi_version: 3\nsha1: {{SHA1}}\noperating_system: ubuntu-jammy\nstemcell_formats: [{formats}]\ncloud_properties: {{name: bosh-{iaas}-{hypervisor}-ubuntu-jammy-go_agent, version: '1.406', infrastructure: {iaas}, hypervisor: {hypervisor}, disk: {disk_mib}, disk_format: {disk_format}, container_format: bare, os_type: linux, os_distro: ubuntu, architecture: x86_64}}\n"
    )
}

fn aws_mf(disk_mib: u64) -> String {
    mf("aws", "xen", disk_mib, "raw", "aws-raw")
}

/// Write a stemcell from a spec with craft.py; returns the image sha1.
fn craft(out: &Path, mut spec: serde_json::Value) -> String {
    spec["out"] = json!(out);
    let spec_path = out.with_extension("json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let stdout = run(Command::new("python3").arg(CRAFT).arg(&spec_path));
    String::from_utf8(stdout).unwrap().trim().to_string()
}

/// The usual outer members around an image member.
fn outer(mf_text: &str, image: serde_json::Value) -> serde_json::Value {
    json!([
        {"name": "stemcell.MF", "text": mf_text},
        {"name": "packages.txt", "text": "ii  openssh-server 1:9.2\n"},
        {"name": "dev_tools_file_list.txt", "text": "/usr/bin/gcc\n"},
        image,
        {"name": "sbom.spdx.json", "text": "{}"},
        {"name": "sbom.cdx.json", "text": "{}"},
    ])
}

/// A sparse raw disk of `mib` MiB with data in a few places.
fn sample_disk(path: &Path, mib: u64) -> Vec<u8> {
    let mut data = vec![0u8; (mib << 20) as usize];
    for (i, off) in [0usize, 510, 1 << 20, (mib as usize - 1) << 20]
        .iter()
        .enumerate()
    {
        let s = format!("opsbake block {i} at {off}");
        data[*off..*off + s.len()].copy_from_slice(s.as_bytes());
    }
    for b in data[(2 << 20)..(2 << 20) + 300_000].iter_mut().enumerate() {
        *b.1 = (b.0 * 7 % 251) as u8;
    }
    std::fs::write(path, &data).unwrap();
    data
}

/// `tar -C dir -czSf image files...` with GNU tar (sparse-aware, as the
/// stemcell builder's google stage does).
fn gnu_tar_image(dir: &Path, files: &[&str]) -> PathBuf {
    let out = dir.join("image.tgz");
    run(Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("--owner=0")
        .arg("--group=0")
        .arg("--mtime=@0")
        .arg("-czSf")
        .arg(&out)
        .args(files));
    out
}

fn tools() -> bool {
    require_tool("python3") && require_tool("tar")
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".opsbake-extract-"))
        .collect()
}

/// Extract must fail, leave no destination and no temp dir.
fn refused(stemcell: &Path, opts: &ExtractOptions) -> ReadError {
    let parent = stemcell.parent().unwrap().join("extract-parent");
    std::fs::create_dir_all(&parent).unwrap();
    let dest = parent.join("out");
    let err = extract(stemcell, &dest, opts).expect_err("extraction should be refused");
    assert!(
        !dest.exists(),
        "{} was left behind after: {err}",
        dest.display()
    );
    assert!(
        leftovers(&parent).is_empty(),
        "temp dirs left: {:?}",
        leftovers(&parent)
    );
    err
}

#[test]
fn heavy_aws_stemcell_reads_verifies_and_extracts_sparse() {
    if !tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let disk = sample_disk(&t.path().join("root.img"), 8);
    let image = gnu_tar_image(t.path(), &["root.img"]);
    let sc = t
        .path()
        .join("bosh-stemcell-1.406-aws-xen-hvm-ubuntu-jammy-go_agent.tgz");
    let sha1 = craft(
        &sc,
        json!({"members": outer(&aws_mf(8), json!({"name": "image", "image_file": image}))}),
    );

    let m = read_manifest(&sc).unwrap();
    assert_eq!(m.sha1, sha1);
    assert_eq!(m.iaas(), "aws");
    assert_eq!(m.disk_mib(), 8);

    let report = verify(&sc).unwrap();
    assert!(report.sha1_ok);
    assert_eq!(report.image_sha1, sha1);
    let names: Vec<&str> = report.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "stemcell.MF",
            "packages.txt",
            "dev_tools_file_list.txt",
            "image",
            "sbom.spdx.json",
            "sbom.cdx.json"
        ]
    );
    assert_eq!(report.image_size, std::fs::metadata(&image).unwrap().len());

    let dest = t.path().join("out");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let opts = ExtractOptions {
        progress: Some(std::sync::Arc::new(move |done, total| {
            s2.lock().unwrap().push((done, total))
        })),
        ..ExtractOptions::default()
    };
    let ex = extract(&sc, &dest, &opts).unwrap();
    let file_size = std::fs::metadata(&sc).unwrap().len();
    assert_eq!(
        seen.lock().unwrap().last(),
        Some(&(file_size, file_size)),
        "progress must end at the file size"
    );
    assert_eq!(ex.image_sha1, sha1);
    assert_eq!(ex.logical_bytes, 8 << 20);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert!(
        ex.written_bytes < 1 << 20,
        "wrote {} bytes",
        ex.written_bytes
    );
    let got = dest.join("root.img");
    assert_eq!(std::fs::read(&got).unwrap(), disk);
    let allocated = std::fs::metadata(&got).unwrap().blocks() * 512;
    assert!(
        allocated < 2 << 20,
        "root.img allocates {allocated} bytes: not sparse"
    );
    assert!(leftovers(t.path()).is_empty());
}

#[test]
fn every_heavy_format_extracts_its_files() {
    if !tools() || !require_tool("qemu-img") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let raw = t.path().join("disk.img");
    sample_disk(&raw, 4);
    let conv = |args: &[&str], out: &str| {
        run(Command::new("qemu-img")
            .arg("convert")
            .args(args)
            .arg(&raw)
            .arg(t.path().join(out)));
    };
    std::fs::copy(&raw, t.path().join("disk.raw")).unwrap();
    std::fs::copy(&raw, t.path().join("root.img")).unwrap();
    conv(
        &["-O", "vpc", "-o", "subformat=fixed,force_size=on"],
        "root.vhd",
    );
    conv(
        &["-O", "vmdk", "-o", "subformat=streamOptimized"],
        "image-disk1.vmdk",
    );
    conv(&["-O", "qcow2"], "root.qcow2");
    std::fs::write(t.path().join("image.ovf"), "<Envelope/>").unwrap();
    std::fs::write(t.path().join("image.mf"), "SHA1(image.ovf)= 00\n").unwrap();

    let cases: &[(&str, &str, &str, &str, &[&str])] = &[
        ("aws", "xen", "raw", "aws-raw", &["root.img"]),
        ("google", "kvm", "rawdisk", "google-rawdisk", &["disk.raw"]),
        ("azure", "hyperv", "vhd", "azure-vhd", &["root.vhd"]),
        (
            "vsphere",
            "esxi",
            "ovf",
            "vsphere-ova, vsphere-ovf",
            &["image.ovf", "image.mf", "image-disk1.vmdk"],
        ),
        (
            "openstack",
            "kvm",
            "qcow2",
            "openstack-qcow2",
            &["root.qcow2"],
        ),
    ];
    for (iaas, hyp, dfmt, formats, files) in cases {
        let dir = t.path().join(iaas);
        std::fs::create_dir_all(&dir).unwrap();
        for f in *files {
            std::fs::copy(t.path().join(f), dir.join(f)).unwrap();
        }
        let image = gnu_tar_image(&dir, files);
        let sc = dir.join("stemcell.tgz");
        let sha1 = craft(
            &sc,
            json!({"members": outer(&mf(iaas, hyp, 4, dfmt, formats), json!({"name": "image", "image_file": image}))}),
        );
        let dest = dir.join("out");
        let ex = extract(&sc, &dest, &ExtractOptions::default())
            .unwrap_or_else(|e| panic!("{iaas}: {e}"));
        assert_eq!(ex.image_sha1, sha1);
        assert_eq!(ex.manifest.iaas(), *iaas);
        for f in *files {
            assert_eq!(
                std::fs::read(dest.join(f)).unwrap(),
                std::fs::read(t.path().join(f)).unwrap(),
                "{iaas}: {f}"
            );
        }
        assert_eq!(ex.files.len(), files.len(), "{iaas}");
    }
}

#[test]
fn light_stemcell_verifies_but_has_nothing_to_extract() {
    if !tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let sc = t
        .path()
        .join("light-bosh-stemcell-1.406-aws-xen-hvm-ubuntu-jammy-go_agent.tgz");
    let text = "---\nname: bosh-aws-xen-hvm-ubuntu-jammy-go_agent\nversion: '1.406'\nbosh_protocol: '1'\napi_version: 3\nsha1: {SHA1}\noperating_system: ubuntu-jammy\nstemcell_formats: [aws-light]\ncloud_properties: {infrastructure: aws, ami: {us-east-1: ami-0123, eu-west-1: ami-0456}}\n";
    let sha1 = craft(
        &sc,
        json!({"members": [{"name": "stemcell.MF", "text": text}, {"name": "image", "text": ""}]}),
    );
    assert_eq!(sha1, "da39a3ee5e6b4b0d3255bfef95601890afd80709");
    let r = verify(&sc).unwrap();
    assert!(r.manifest.is_light());
    assert_eq!(r.image_size, 0);
    let e = refused(&sc, &ExtractOptions::default());
    assert!(matches!(e, ReadError::LightStemcell { .. }), "{e}");
}

fn image_stemcell(t: &Path, name: &str, inner: serde_json::Value, disk_mib: u64) -> PathBuf {
    let sc = t.join(format!("{name}.tgz"));
    craft(
        &sc,
        json!({"members": outer(&aws_mf(disk_mib), json!({"name": "image", "inner": inner}))}),
    );
    sc
}

#[test]
fn hostile_image_members_are_refused() {
    if !tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let opts = ExtractOptions::default();
    let cases: Vec<(&str, serde_json::Value, UnsafeReason)> = vec![
        (
            "traversal",
            json!([{"name": "../evil", "text": "x"}]),
            UnsafeReason::ParentDir,
        ),
        (
            "traversal-deep",
            json!([{"name": "a/../../evil", "text": "x"}]),
            UnsafeReason::ParentDir,
        ),
        (
            "absolute",
            json!([{"name": "/tmp/opsbake-evil", "text": "x"}]),
            UnsafeReason::Absolute,
        ),
        (
            "dotslash",
            json!([{"name": "./root.img", "text": "x"}]),
            UnsafeReason::DotSlash,
        ),
        (
            "symlink-escape",
            json!([{"name": "link", "type": "symlink", "link": "../../etc"}]),
            UnsafeReason::SymlinkEscape("../../etc".into()),
        ),
        (
            "symlink-absolute",
            json!([{"name": "link", "type": "symlink", "link": "/etc/passwd"}]),
            UnsafeReason::SymlinkEscape("/etc/passwd".into()),
        ),
        (
            "through-symlink",
            json!([{"name": "d", "type": "dir"}, {"name": "link", "type": "symlink", "link": "d"}, {"name": "link/x", "text": "x"}]),
            UnsafeReason::ThroughSymlink("link".into()),
        ),
        (
            "symlink-through-symlink",
            json!([{"name": "sub", "type": "symlink", "link": "."}, {"name": "esc", "type": "symlink", "link": "sub/../etc"}]),
            UnsafeReason::SymlinkEscape("sub/../etc".into()),
        ),
        (
            "hardlink-escape",
            json!([{"name": "h", "type": "hardlink", "link": "../../etc/passwd"}]),
            UnsafeReason::HardlinkEscape("../../etc/passwd".into()),
        ),
        (
            "hardlink-absolute",
            json!([{"name": "h", "type": "hardlink", "link": "/etc/passwd"}]),
            UnsafeReason::HardlinkEscape("/etc/passwd".into()),
        ),
        (
            "hardlink-unknown",
            json!([{"name": "h", "type": "hardlink", "link": "not-there"}]),
            UnsafeReason::HardlinkEscape("not-there".into()),
        ),
        (
            "device",
            json!([{"name": "null", "type": "chr"}]),
            UnsafeReason::Special('3'),
        ),
        (
            "fifo",
            json!([{"name": "p", "type": "fifo"}]),
            UnsafeReason::Special('6'),
        ),
        (
            "duplicate",
            json!([{"name": "root.img", "text": "a"}, {"name": "root.img", "text": "b"}]),
            UnsafeReason::Duplicate,
        ),
    ];
    for (name, inner, want) in cases {
        let sc = image_stemcell(t.path(), name, inner, 8);
        let e = refused(&sc, &opts);
        match &e {
            ReadError::UnsafeMember { reason, .. } => assert_eq!(reason, &want, "{name}: {e}"),
            other => panic!("{name}: wanted UnsafeMember({want:?}), got {other}"),
        }
    }
    assert!(!Path::new("/tmp/opsbake-evil").exists());
    // A symlink and a hard link that stay inside are fine.
    let sc = image_stemcell(
        t.path(),
        "links-inside",
        json!([{"name": "d/root.img", "text": "disk"}, {"name": "d/alias", "type": "symlink", "link": "root.img"}, {"name": "hard", "type": "hardlink", "link": "d/root.img"}]),
        8,
    );
    let dest = t.path().join("links-out");
    extract(&sc, &dest, &opts).unwrap();
    assert_eq!(std::fs::read(dest.join("d/alias")).unwrap(), b"disk");
    assert_eq!(std::fs::read(dest.join("hard")).unwrap(), b"disk");
}

#[test]
fn hostile_outer_members_are_refused() {
    if !tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let img = json!({"name": "image", "inner": [{"name": "root.img", "text": "x"}]});
    let sc = t.path().join("dotslash.tgz");
    craft(
        &sc,
        json!({"members": [{"name": "./stemcell.MF", "text": aws_mf(8)}, img.clone()]}),
    );
    for e in [
        read_manifest(&sc).unwrap_err(),
        verify(&sc).unwrap_err(),
        refused(&sc, &ExtractOptions::default()),
    ] {
        assert!(
            matches!(&e, ReadError::UnsafeMember { reason: UnsafeReason::DotSlash, member, .. } if member == "./stemcell.MF"),
            "{e}"
        );
        assert!(e.to_string().contains("bosh CLI"), "{e}");
    }
    // Two stemcell.MF members (the second claims another version): a reader
    // that stops at the first and one that reads to the end would disagree.
    let sc = t.path().join("two-mf.tgz");
    let second = aws_mf(8).replace("'1.406'", "'9.999'");
    craft(
        &sc,
        json!({"members": [{"name": "stemcell.MF", "text": aws_mf(8)}, {"name": "packages.txt", "text": "x\n"}, {"name": "stemcell.MF", "text": second}, img.clone()]}),
    );
    for e in [
        read_manifest(&sc).unwrap_err(),
        verify(&sc).unwrap_err(),
        reader::scan(&sc, &Limits::default()).unwrap_err(),
        refused(&sc, &ExtractOptions::default()),
    ] {
        assert!(
            matches!(&e, ReadError::UnsafeMember { reason: UnsafeReason::Duplicate, member, .. } if member == "stemcell.MF"),
            "{e}"
        );
        assert!(e.to_string().contains("stemcell.MF"), "{e}");
    }
    // A second MF after the image is caught by the readers that go to the end.
    let sc = t.path().join("mf-after-image.tgz");
    craft(
        &sc,
        json!({"members": [{"name": "stemcell.MF", "text": aws_mf(8)}, img.clone(), {"name": "stemcell.MF", "text": aws_mf(8)}]}),
    );
    for e in [
        verify(&sc).unwrap_err(),
        refused(&sc, &ExtractOptions::default()),
    ] {
        assert!(
            matches!(&e, ReadError::UnsafeMember { reason: UnsafeReason::Duplicate, member, .. } if member == "stemcell.MF"),
            "{e}"
        );
    }
    let sc = t.path().join("outer-symlink.tgz");
    craft(
        &sc,
        json!({"members": [{"name": "stemcell.MF", "text": aws_mf(8)}, {"name": "image", "type": "symlink", "link": "/etc/passwd"}]}),
    );
    let e = verify(&sc).unwrap_err();
    assert!(
        matches!(
            e,
            ReadError::UnsafeMember {
                reason: UnsafeReason::NotAFile,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn sha1_mismatch_is_its_own_error_and_leaves_nothing() {
    if !tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let sc = t.path().join("bad-sha.tgz");
    let text = aws_mf(8).replace("{SHA1}", "0123456789abcdef0123456789abcdef01234567");
    let real = craft(
        &sc,
        json!({"members": outer(&text, json!({"name": "image", "inner": [{"name": "root.img", "zeros": 65536}]}))}),
    );
    match verify(&sc).unwrap_err() {
        ReadError::Sha1Mismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, "0123456789abcdef0123456789abcdef01234567");
            assert_eq!(actual, real);
        }
        e => panic!("wanted Sha1Mismatch, got {e}"),
    }
    let r = reader::scan(&sc, &Limits::default()).unwrap();
    assert!(!r.sha1_ok);
    let e = refused(&sc, &ExtractOptions::default());
    assert!(matches!(e, ReadError::Sha1Mismatch { .. }), "{e}");
}

#[test]
fn truncated_non_gzip_missing_manifest_and_bad_manifest_are_distinct() {
    if !tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let disk: Vec<u8> = (0..(2u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let disk_path = t.path().join("root.img");
    std::fs::write(&disk_path, &disk).unwrap();
    let members = outer(
        &aws_mf(8),
        json!({"name": "image", "inner": [{"name": "root.img", "file": disk_path}]}),
    );
    let good = t.path().join("good.tgz");
    craft(&good, json!({"members": members}));
    let len = std::fs::metadata(&good).unwrap().len();
    assert!(verify(&good).is_ok());
    // Cut in the image, near the end (gzip trailer), and inside the MF header.
    for cut in [len / 2, len - 4, 300] {
        let sc = t.path().join(format!("trunc-{cut}.tgz"));
        craft(&sc, json!({"members": members, "truncate": cut}));
        let e = verify(&sc).unwrap_err();
        assert!(
            matches!(e, ReadError::Truncated { .. }),
            "cut at {cut}: {e}"
        );
        let e = refused(&sc, &ExtractOptions::default());
        assert!(
            matches!(e, ReadError::Truncated { .. }),
            "cut at {cut}: {e}"
        );
    }
    // A plain tar.
    let sc = t.path().join("plain.tar");
    craft(&sc, json!({"members": members, "gzip": false}));
    assert!(matches!(
        verify(&sc).unwrap_err(),
        ReadError::NotGzip { .. }
    ));
    assert!(matches!(
        read_manifest(&sc).unwrap_err(),
        ReadError::NotGzip { .. }
    ));
    let empty = t.path().join("empty.tgz");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(
        verify(&empty).unwrap_err(),
        ReadError::NotGzip { .. }
    ));
    // Corrupt (not truncated): flip bytes in the middle of the deflate data.
    let mut bytes = std::fs::read(&good).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0x5a;
    }
    let corrupt = t.path().join("corrupt.tgz");
    std::fs::write(&corrupt, &bytes).unwrap();
    let e = verify(&corrupt).unwrap_err();
    assert!(matches!(e, ReadError::Corrupt { .. }), "{e}");
    // No MF.
    let sc = t.path().join("no-mf.tgz");
    craft(
        &sc,
        json!({"members": [{"name": "image", "inner": [{"name": "root.img", "text": "x"}]}]}),
    );
    assert!(matches!(
        read_manifest(&sc).unwrap_err(),
        ReadError::MissingManifest { .. }
    ));
    assert!(matches!(
        verify(&sc).unwrap_err(),
        ReadError::MissingManifest { .. }
    ));
    // MF without a required key.
    let sc = t.path().join("no-key.tgz");
    let text = aws_mf(8).replace("sha1: {SHA1}\n", "");
    craft(
        &sc,
        json!({"members": outer(&text, json!({"name": "image", "inner": []}))}),
    );
    let e = read_manifest(&sc).unwrap_err();
    assert!(
        matches!(
            &e,
            ReadError::Manifest {
                source: opsbake_stemcell::ManifestError::MissingKey("sha1"),
                ..
            }
        ),
        "{e}"
    );
    // No image.
    let sc = t.path().join("no-image.tgz");
    craft(
        &sc,
        json!({"members": [{"name": "stemcell.MF", "text": aws_mf(8)}]}),
    );
    assert!(matches!(
        verify(&sc).unwrap_err(),
        ReadError::MissingImage { .. }
    ));
    // Image before MF.
    let sc = t.path().join("image-first.tgz");
    craft(
        &sc,
        json!({"members": [{"name": "image", "inner": [{"name": "root.img", "text": "x"}]}, {"name": "stemcell.MF", "text": aws_mf(8)}]}),
    );
    assert!(matches!(
        refused(&sc, &ExtractOptions::default()),
        ReadError::ManifestAfterImage { .. }
    ));
    assert!(verify(&sc).is_ok(), "verify accepts any order");
    // Image not a gzip tar.
    let sc = t.path().join("image-plain.tgz");
    craft(
        &sc,
        json!({"members": outer(&aws_mf(8), json!({"name": "image", "text": "not gzip"}))}),
    );
    assert!(matches!(
        refused(&sc, &ExtractOptions::default()),
        ReadError::ImageNotGzip { .. }
    ));
}

#[test]
fn read_manifest_stops_before_the_image() {
    if !tools() {
        return;
    }
    // The image member is garbage after a valid start: reading the MF must not notice.
    let t = tempfile::tempdir().unwrap();
    let sc = t.path().join("sc.tgz");
    let members = outer(
        &aws_mf(8),
        json!({"name": "image", "inner": [{"name": "root.img", "zeros": 1 << 20}]}),
    );
    craft(&sc, json!({"members": members, "truncate": 600}));
    let m = read_manifest(&sc).unwrap();
    assert_eq!(m.version, "1.406");
    assert!(matches!(
        verify(&sc).unwrap_err(),
        ReadError::Truncated { .. }
    ));
}

#[test]
fn bombs_are_refused_early_without_writing() {
    if !tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let opts = ExtractOptions::default();

    // 1. GNU tar sparse file claiming 100 GiB: the .tgz is tiny.
    let d = t.path().join("sparse");
    std::fs::create_dir_all(&d).unwrap();
    let f = std::fs::File::create(d.join("root.img")).unwrap();
    f.set_len(100 << 30).unwrap();
    drop(f);
    let image = gnu_tar_image(&d, &["root.img"]);
    assert!(std::fs::metadata(&image).unwrap().len() < 1 << 20);
    let sc = t.path().join("sparse-bomb.tgz");
    craft(
        &sc,
        json!({"members": outer(&aws_mf(8), json!({"name": "image", "image_file": image}))}),
    );
    let start = Instant::now();
    let e = refused(&sc, &opts);
    assert!(
        matches!(&e, ReadError::ExtractTooLarge { size, disk_mib: 8, .. } if *size == 100 << 30),
        "{e}"
    );
    assert!(start.elapsed() < Duration::from_secs(10));

    // 2. A header that claims 50 GiB.
    let sc = image_stemcell(
        t.path(),
        "declared-bomb",
        json!([{"name": "root.img", "zeros": 4096, "declared_size": 50u64 << 30}]),
        8,
    );
    let e = refused(&sc, &opts);
    assert!(matches!(e, ReadError::ExtractTooLarge { .. }), "{e}");

    // 3. Many members that each fit but together exceed disk + slack.
    let small = ExtractOptions {
        limits: Limits {
            disk_slack_bytes: 512 << 10,
            ..Limits::default()
        },
        ..ExtractOptions::default()
    };
    let sc = image_stemcell(
        t.path(),
        "many",
        json!([{"name": "a", "zeros": 1 << 20}, {"name": "b", "zeros": 1 << 20}, {"name": "c", "zeros": 1 << 20}]),
        2,
    );
    let e = refused(&sc, &small);
    assert!(
        matches!(&e, ReadError::ExtractTooLarge { member, .. } if member == "c"),
        "{e}"
    );

    // 4. Outer members that claim too much, and an oversized MF.
    let sc = t.path().join("outer-bomb.tgz");
    craft(
        &sc,
        json!({"members": [{"name": "stemcell.MF", "text": aws_mf(8)}, {"name": "packages.txt", "text": "x", "declared_size": 20u64 << 30}]}),
    );
    let e = verify(&sc).unwrap_err();
    assert!(
        matches!(&e, ReadError::MemberTooLarge { member, .. } if member == "packages.txt"),
        "{e}"
    );
    let sc = t.path().join("image-bomb.tgz");
    craft(
        &sc,
        json!({"members": [{"name": "stemcell.MF", "text": aws_mf(8)}, {"name": "image", "text": "x", "declared_size": 20u64 << 30}]}),
    );
    let e = refused(&sc, &opts);
    assert!(
        matches!(&e, ReadError::MemberTooLarge { member, .. } if member == "image"),
        "{e}"
    );
    let sc = t.path().join("mf-bomb.tgz");
    let big_mf = format!("{}padding: '{}'\n", aws_mf(8), "x".repeat(2 << 20));
    craft(
        &sc,
        json!({"members": [{"name": "stemcell.MF", "text": big_mf}]}),
    );
    let e = read_manifest(&sc).unwrap_err();
    assert!(
        matches!(&e, ReadError::MemberTooLarge { member, .. } if member == "stemcell.MF"),
        "{e}"
    );
}

#[test]
fn extract_refuses_a_non_empty_destination_and_accepts_an_empty_one() {
    if !tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let sc = image_stemcell(
        t.path(),
        "ok",
        json!([{"name": "root.img", "text": "disk"}]),
        8,
    );
    let dest = t.path().join("busy");
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::File::create(dest.join("keep"))
        .unwrap()
        .write_all(b"mine")
        .unwrap();
    let e = extract(&sc, &dest, &ExtractOptions::default()).unwrap_err();
    assert!(matches!(e, ReadError::DestinationExists(_)), "{e}");
    assert_eq!(std::fs::read(dest.join("keep")).unwrap(), b"mine");
    let empty = t.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    extract(&sc, &empty, &ExtractOptions::default()).unwrap();
    assert_eq!(std::fs::read(empty.join("root.img")).unwrap(), b"disk");
}

#[test]
fn corrupted_stemcells_fail_cleanly_never_panic_or_leave_files() {
    if !tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let disk = t.path().join("root.img");
    sample_disk(&disk, 4);
    let image = gnu_tar_image(t.path(), &["root.img"]);
    let good = t.path().join("good.tgz");
    craft(
        &good,
        json!({"members": outer(&aws_mf(4), json!({"name": "image", "image_file": image}))}),
    );
    let bytes = std::fs::read(&good).unwrap();
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut failures = 0;
    for i in 0..40 {
        let mut b = bytes.clone();
        // Flip a few bytes, or cut the file, at random places.
        if i % 4 == 3 {
            b.truncate((next() % b.len() as u64) as usize);
        } else {
            for _ in 0..(1 + next() % 4) {
                let p = (next() % b.len() as u64) as usize;
                b[p] ^= (1 + next() % 255) as u8;
            }
        }
        let sc = t.path().join(format!("c{i}.tgz"));
        std::fs::write(&sc, &b).unwrap();
        let parent = t.path().join(format!("p{i}"));
        std::fs::create_dir_all(&parent).unwrap();
        let dest = parent.join("out");
        let v = verify(&sc);
        match extract(&sc, &dest, &ExtractOptions::default()) {
            Ok(r) => {
                // A flip that changed nothing that matters (e.g. gzip header mtime)
                // must still give the right disk.
                assert!(v.is_ok(), "extract ok but verify failed: {:?}", v.err());
                assert_eq!(
                    std::fs::read(dest.join("root.img")).unwrap(),
                    std::fs::read(&disk).unwrap()
                );
                assert_eq!(r.logical_bytes, 4 << 20);
            }
            Err(e) => {
                failures += 1;
                assert!(!dest.exists(), "{e}: destination left behind");
                assert!(leftovers(&parent).is_empty(), "{e}: temp dir left behind");
                assert!(
                    !matches!(e, ReadError::Io { .. }),
                    "corruption reported as an I/O error: {e}"
                );
            }
        }
    }
    assert!(
        failures > 30,
        "only {failures} of 40 corruptions were noticed"
    );
}
