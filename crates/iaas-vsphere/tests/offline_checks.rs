//! `Builder::offline_checks` of the vsphere builder: every missing or
//! malformed setting is a finding at its template key, with no network.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use opsbake_core::template::Iaas;
use opsbake_core::vars::VarSources;

fn findings(yaml: &str, cli: &[(&str, &str)]) -> Vec<(String, String)> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.yml");
    std::fs::write(&p, yaml).unwrap();
    std::fs::write(dir.path().join("s.tgz"), b"").unwrap();
    let loaded = opsbake_core::template::load(&p).unwrap();
    let sources = VarSources {
        cli: cli
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..VarSources::default()
    };
    let vars = opsbake_core::vars::resolve(&loaded, &sources).unwrap();
    let plan = opsbake_core::plan::plan_build(&loaded, &vars, Iaas::Vsphere, "b1").unwrap();
    let b = opsbake_iaas_vsphere::builder(&plan).unwrap();
    b.offline_checks()
        .into_iter()
        .map(|f| (f.key, f.message))
        .collect()
}

fn clear_govc_env() {
    for k in ["GOVC_URL", "GOVC_USERNAME", "GOVC_PASSWORD"] {
        std::env::remove_var(k);
    }
}

#[test]
fn every_problem_is_a_finding_at_its_key() {
    clear_govc_env();
    let f = findings(
        r#"
name: t
version: "1"
variables:
  url: {default: ""}
stemcells:
  vsphere: {path: s.tgz}
builds:
  vsphere:
    options:
      url: "${var.url}"
      insecure: true
      thumbprint: "AB:CD"
      vm_name: "a/b"
      ip_wait_timeout: 5s
      ip_settle: 10s
      template: false
"#,
        &[],
    );
    let keys: Vec<&str> = f.iter().map(|(k, _)| k.as_str()).collect();
    for k in [
        "builds.vsphere.options.url",
        "builds.vsphere.options.username",
        "builds.vsphere.options.password",
        "builds.vsphere.options.insecure",
        "builds.vsphere.options.datacenter",
        "builds.vsphere.options.cluster",
        "builds.vsphere.options.datastore",
        "builds.vsphere.options.vm_name",
        "builds.vsphere.options.ip_settle",
        "builds.vsphere.options.template",
    ] {
        assert!(keys.contains(&k), "no finding at {k}: {f:#?}");
    }
    let msg = |k: &str| f.iter().find(|(x, _)| x == k).unwrap().1.clone();
    assert!(msg("builds.vsphere.options.vm_name").contains("'/'"));
    assert!(msg("builds.vsphere.options.insecure").contains("at most one"));
}

#[test]
fn a_complete_template_has_no_findings_and_never_shows_the_url_password() {
    clear_govc_env();
    let yaml = r#"
name: t
version: "1"
variables:
  url: {default: "", sensitive: true}
  thumb: {default: ""}
stemcells:
  vsphere: {path: s.tgz}
builds:
  vsphere:
    options:
      url: "${var.url}"
      thumbprint: "${var.thumb}"
      datacenter: DC0
      cluster: DC0_C0
      datastore: LocalDS_0
      source_template: golden
"#;
    let f = findings(
        yaml,
        &[
            ("url", "https://builder:s3cr3t-pw@127.0.0.1:8989/sdk"),
            ("thumb", &"ab".repeat(32)),
        ],
    );
    assert!(f.is_empty(), "{f:#?}");
    // a malformed thumbprint and URL: findings that do not echo the URL's password
    let f = findings(
        yaml,
        &[("url", "https://builder:s3cr3t-pw@[::1"), ("thumb", "xyz")],
    );
    let text = format!("{f:?}");
    assert!(text.contains("builds.vsphere.options.url"), "{text}");
    assert!(text.contains("builds.vsphere.options.thumbprint"), "{text}");
    assert!(!text.contains("s3cr3t"), "{text}");
}
