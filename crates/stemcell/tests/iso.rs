//! The ISO writer checked with genisoimage's isoinfo.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::{require_tool, run};
use opsbake_core::Secret;
use opsbake_stemcell::{write_agent_settings_iso, write_ovf_env_iso, AgentSettings, IsoWriter};

fn isoinfo(args: &[&str], iso: &std::path::Path) -> String {
    let out = run(Command::new("isoinfo").args(args).arg("-i").arg(iso));
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn rock_ridge_names_and_contents_read_back_with_isoinfo() {
    if !require_tool("isoinfo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("t.iso");
    let big: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    IsoWriter::new("test vol")
        .timestamp(1_700_000_000)
        .file("env", "lower")
        .file("ENV", "UPPER")
        .file("ovf-env.xml", "<Environment/>")
        .file("big.bin", big.clone())
        .file("empty", Vec::new())
        .write_to(&iso)
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&iso).unwrap().permissions().mode() & 0o777,
        0o644
    );
    let listing = isoinfo(&["-R", "-l"], &iso);
    for name in ["env", "ENV", "ovf-env.xml", "big.bin", "empty"] {
        assert!(
            listing
                .lines()
                .any(|l| l.trim_end().ends_with(&format!(" {name}"))),
            "{name} missing from:\n{listing}"
        );
    }
    assert_eq!(isoinfo(&["-R", "-x", "/env"], &iso), "lower");
    assert_eq!(isoinfo(&["-R", "-x", "/ENV"], &iso), "UPPER");
    assert_eq!(
        isoinfo(&["-R", "-x", "/ovf-env.xml"], &iso),
        "<Environment/>"
    );
    let got = run(Command::new("isoinfo")
        .args(["-R", "-x", "/big.bin", "-i"])
        .arg(&iso));
    assert_eq!(got, big);
    let header = isoinfo(&["-d"], &iso);
    assert!(header.contains("Volume id: TEST_VOL"), "{header}");
    assert!(
        header.contains("Rock Ridge signatures version 1 found"),
        "{header}"
    );
    // The plain ISO9660 names are valid 8.3 names.
    let plain = isoinfo(&["-l"], &iso);
    assert!(
        plain.contains("ENV.;1") && plain.contains("OVF_ENV.XML;1"),
        "{plain}"
    );
}

#[test]
fn agent_settings_iso_holds_env_and_upper_env_with_the_settings_json() {
    if !require_tool("isoinfo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("settings.iso");
    let s = AgentSettings::minimal(
        "builder-1",
        vec!["ssh-ed25519 AAAAC3Nza opsbake".into()],
        Some(Secret::new("$6$salt$abc".into())),
    );
    write_agent_settings_iso(&s, 0, &iso).unwrap();
    for f in ["/env", "/ENV"] {
        let got = isoinfo(&["-R", "-x", f], &iso);
        let v: serde_json::Value = serde_json::from_str(&got).unwrap();
        assert_eq!(v["agent_id"], "builder-1");
        assert_eq!(v["env"]["bosh"]["password"], "$6$salt$abc");
    }
    let again = dir.path().join("again.iso");
    write_agent_settings_iso(&s, 0, &again).unwrap();
    assert_eq!(std::fs::read(&iso).unwrap(), std::fs::read(&again).unwrap());

    let ovf = dir.path().join("ovf.iso");
    write_ovf_env_iso("<?xml version=\"1.0\"?><Environment/>", 0, &ovf).unwrap();
    assert_eq!(
        isoinfo(&["-R", "-x", "/ovf-env.xml"], &ovf),
        "<?xml version=\"1.0\"?><Environment/>"
    );
}
