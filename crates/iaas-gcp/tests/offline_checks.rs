//! `Builder::offline_checks` of the gcp builder: each finding at its
//! template key, no network.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use opsbake_core::builder::Builder as _;
use opsbake_core::template::Iaas;

fn findings(options: &str, network: &str) -> Vec<(String, String)> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sc.tgz"), b"x").unwrap();
    let t = dir.path().join("t.yml");
    std::fs::write(
        &t,
        format!(
            "name: appliance\nstemcells:\n  gcp: {{path: sc.tgz}}\nbuilds:\n  gcp:\n    network: {network}\n    options: {options}\n"
        ),
    )
    .unwrap();
    let plan = opsbake_test_support::build::plan(&t, Iaas::Gcp, "ob-20261205-223315-gcp-abc123");
    let b = opsbake_iaas_gcp::GcpBuilder::new(&plan).unwrap();
    b.offline_checks()
        .into_iter()
        .map(|f| (f.key, f.message))
        .collect()
}

#[test]
fn a_good_template_has_no_findings() {
    let f = findings(
        "{project_id: p-1, zone: us-central1-a, image_name: appliance-1, image_family: appliance, labels: {team: release}, image_users: [\"group:g@example.com\"], poll_interval: 20ms}",
        "{ssh_cidrs: [198.51.100.7/32]}",
    );
    assert!(f.is_empty(), "{f:?}");
}

#[test]
fn every_problem_is_reported_at_its_key() {
    std::env::remove_var("GOOGLE_PROJECT_ID");
    std::env::remove_var("GOOGLE_CLOUD_PROJECT");
    let f = findings(
        "{project_id: \"\", zone: uscentral, image_name: Appliance_1, image_family: \"-x\", labels: {Team: x}, image_users: [bob], poll_interval: soon, credentials_file: /nonexistent/sa.json}",
        "{ssh_cidrs: [\"\"]}",
    );
    let keys: Vec<&str> = f.iter().map(|(k, _)| k.as_str()).collect();
    for k in [
        "builds.gcp.options.project_id",
        "builds.gcp.options.zone",
        "builds.gcp.options.image_name",
        "builds.gcp.options.image_family",
        "builds.gcp.options.labels",
        "builds.gcp.options.image_users",
        "builds.gcp.options.poll_interval",
        "builds.gcp.options.credentials_file",
        "builds.gcp.network.ssh_cidrs",
    ] {
        assert!(keys.contains(&k), "{k} missing in {f:?}");
    }
    let project = &f.iter().find(|(k, _)| k.ends_with("project_id")).unwrap().1;
    for name in ["project_id", "GOOGLE_PROJECT_ID", "GOOGLE_CLOUD_PROJECT"] {
        assert!(project.contains(name), "{project}");
    }
    let image = &f.iter().find(|(k, _)| k.ends_with("image_name")).unwrap().1;
    assert!(
        image.contains("Appliance_1") && image.contains("[a-z]"),
        "{image}"
    );
}

#[test]
fn the_default_image_name_follows_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sc.tgz"), b"x").unwrap();
    let t = dir.path().join("t.yml");
    std::fs::write(
        &t,
        "name: My_Appliance\nstemcells:\n  gcp: {path: sc.tgz}\nbuilds:\n  gcp:\n    options: {project_id: p, zone: us-central1-a}\n",
    )
    .unwrap();
    let plan = opsbake_test_support::build::plan(&t, Iaas::Gcp, "ob-20261205-223315-gcp-abc123");
    let b = opsbake_iaas_gcp::GcpBuilder::new(&plan).unwrap();
    assert_eq!(b.image_name(), "my-appliance-ob-20261205-223315-gcp-abc123");
    assert!(opsbake_iaas_gcp::valid_name(b.image_name()));
}
