//! The reproducible disk normalisation on the test stemcell's raw disk: two
//! copies normalised at different times give identical bytes, the file
//! system keeps its UUID and passes e2fsck, and the scrub happened.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

use opsbake_iaas_vbox::export;

fn stemcell_dir() -> Option<PathBuf> {
    match std::env::var_os("OPSBAKE_TEST_STEMCELL_DIR") {
        Some(d) => Some(PathBuf::from(d)),
        None if std::env::var("OPSBAKE_SKIP_PEERS").is_ok_and(|v| v == "1") => None,
        None => panic!(
            "OPSBAKE_TEST_STEMCELL_DIR is unset: run scripts/setup.sh and export target/ci-env, or set OPSBAKE_SKIP_PEERS=1"
        ),
    }
}

fn debugfs_cat(raw: &std::path::Path, offset: u64, path: &str) -> String {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(format!("{}?offset={offset}", raw.display()))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn normalising_twice_gives_identical_disks() {
    let Some(dir) = stemcell_dir() else { return };
    let src = dir.join("disk.raw");
    assert!(src.is_file(), "{} missing", src.display());
    let t = tempfile::tempdir().unwrap();
    let (off, _) = export::first_partition(&src).unwrap();
    let before = export::ext4_geometry(&src, off).unwrap();
    let mut sums = Vec::new();
    for i in 0..2 {
        let raw = t.path().join(format!("d{i}.raw"));
        let st = Command::new("cp")
            .arg("--sparse=always")
            .arg(&src)
            .arg(&raw)
            .status()
            .unwrap();
        assert!(st.success());
        // something the scrub must remove, written differently each time
        let junk = t.path().join("junk");
        std::fs::write(&junk, format!("run {i}")).unwrap();
        let w = Command::new("debugfs")
            .arg("-w")
            .arg("-R")
            .arg(format!(
                "write {} /etc/ssh/ssh_host_test_key",
                junk.display()
            ))
            .arg(format!("{}?offset={off}", raw.display()))
            .output()
            .unwrap();
        assert!(w.status.success());
        let g = export::normalise(&raw, &t.path().join(format!("w{i}")), 1_704_067_200)
            .await
            .unwrap();
        assert_eq!(g, before, "geometry kept");
        assert_eq!(export::ext4_geometry(&raw, off).unwrap(), before);
        assert!(debugfs_cat(&raw, off, "/etc/ssh/ssh_host_test_key").is_empty());
        assert_eq!(debugfs_cat(&raw, off, "/etc/machine-id"), "");
        assert!(debugfs_cat(&raw, off, "/etc/passwd").contains("vcap:"));
        sums.push(export::sha256_file(&raw).unwrap());
    }
    assert_eq!(sums[0], sums[1], "two normalisations differ");
    assert_ne!(sums[0], export::sha256_file(&src).unwrap());
}
