//! `opsbake build images/appliance.yml --iaas gcp --var-file
//! images/gce.vars.yml` through the CLI binary, against the Compute Engine
//! test server (Bearer tokens required: the CLI signs them with the test's
//! own service account key) and fake-gcs-server, with a hardened local sshd
//! playing the instance (its keys come from the instance's `bosh_settings`
//! metadata at the test server).
//!
//! Light stemcell (its image_url) and heavy stemcell (its image member
//! uploaded to fake-gcs-server and imported; the object the server read
//! equals the member byte for byte). Asserted through the servers: the
//! image, its family, labels and IAM binding; nothing else of the build
//! left; the manifest; the journal. Also `--iaas aws,gcp` at once.
//!
//! `--skip-provision gcp`: the appliance's steps change the machine they
//! run on, and the sshd runs on the build host (images/gce.vars.yml).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod gcp_support;

use std::time::Instant;

use gcp_support::*;
use opsbake_core::journal::Outcome;

fn check_image(p: &Peers, id: &str, art: &str) {
    assert_eq!(art, format!("appliance-1-0-0-{id}"));
    let img = p
        .gce
        .images()
        .into_iter()
        .find(|i| i["name"] == art)
        .unwrap_or_else(|| panic!("no image {art}: {:?}", p.gce.images()));
    assert_eq!(img["status"], "READY");
    assert_eq!(img["family"], "appliance");
    assert_eq!(img["description"], "Example appliance (opsbake)");
    assert_eq!(img["labels"]["appliance"], "1-0-0");
    assert_eq!(img["labels"]["opsbake-build-id"], id);
    let pol = p.gce.image_policy(PROJECT, art).unwrap();
    assert_eq!(
        pol["bindings"][0]["role"], "roles/compute.imageUser",
        "{pol}"
    );
    assert_eq!(
        pol["bindings"][0]["members"][0],
        "group:release-engineers@example.com"
    );
    let left: Vec<String> = left(p, id)
        .into_iter()
        .filter(|l| *l != format!("image {art}"))
        .collect();
    assert!(left.is_empty(), "left: {left:?}");
    // Every call carried a token the CLI signed (a JWT: three parts).
    let tokens = p.gce.tokens();
    let jwts: Vec<&String> = tokens
        .iter()
        .filter(|t| *t != "opsbake-test-sshd")
        .collect();
    assert!(
        !jwts.is_empty() && jwts.iter().all(|t| t.split('.').count() == 3),
        "{tokens:?}"
    );
}

fn appliance(light: bool) {
    let Some(p) = peers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let sc = stemcells_with_light(dir.path());
    let sc_arg = format!("stemcell_dir={}", sc.display());
    let mut args = vec!["--iaas", "gcp", "--skip-provision", "gcp", "--var", &sc_arg];
    if light {
        // Also `--offline`: both endpoints on loopback, a key file.
        args.extend(["--var", "gcp_stemcell_prefix=light-", "--offline"]);
    }
    let t0 = Instant::now();
    let out = gcp_command(dir.path(), &p, &p.gce.endpoint(), &args)
        .output()
        .unwrap();
    let took = t0.elapsed().as_secs_f64();
    let ev = events(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr:\n{}\nevents:\n{ev:#?}\nsshd:\n{}",
        String::from_utf8_lossy(&out.stderr),
        p.sshd.log_text()
    );
    let fin = finished(&ev, "gcp");
    assert_eq!(fin["outcome"], "succeeded", "{fin}");
    let id = fin["build_id"].as_str().unwrap().to_string();
    let art = fin["artifact_id"].as_str().unwrap().to_string();
    eprintln!(
        "{} gcp appliance build through the CLI: {took:.2} s, artifact {art}",
        if light { "light" } else { "heavy" }
    );
    assert!(
        p.sshd.log_text().contains("Accepted publickey for vcap"),
        "{}",
        p.sshd.log_text()
    );
    check_image(&p, &id, &art);
    let uploaded = ev.iter().any(|e| {
        e["event"] == "message"
            && e["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("uploaded the image of"))
    });
    assert_eq!(uploaded, !light, "GCS upload iff heavy");
    if !light {
        // The object GCE imported is the stemcell's image member, byte for byte.
        let base = p
            .gce
            .images()
            .into_iter()
            .find(|i| i["labels"]["opsbake-role"] == "base")
            .unwrap_or_else(|| panic!("no base image: {:?}", p.gce.images()));
        let (sha, len) = p
            .gce
            .image_raw_source(PROJECT, base["name"].as_str().unwrap())
            .unwrap();
        let member = image_member(&stemcell_dir().unwrap().join(HEAVY));
        assert_eq!(len, member.len() as u64);
        assert_eq!(sha, sha256_hex(&member));
        // the label is the stemcell's sha1 (its MF's: the image member's own), computed
        // here rather than pinned, since the test stemcell is built per machine
        let sha1 = {
            use std::io::Write as _;
            let mut child = std::process::Command::new("sha1sum")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(&member).unwrap();
            let out = child.wait_with_output().unwrap();
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(sha1.len(), 40);
        assert_eq!(base["labels"]["opsbake-stemcell-sha1"], sha1.as_str());
    }
    let manifest = std::fs::read_to_string(dir.path().join("out/appliance/manifest.json")).unwrap();
    assert!(manifest.contains(&art), "{manifest}");
    check_journal(&dir.path().join("state"), &id, Outcome::Succeeded);
}

/// The `image` member of a stemcell (tar(1), no extraction to disk).
fn image_member(stemcell: &std::path::Path) -> Vec<u8> {
    let out = std::process::Command::new("tar")
        .arg("-xzOf")
        .arg(stemcell)
        .arg("image")
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
}

fn sha256_hex(b: &[u8]) -> String {
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            c.stdin.take().unwrap().write_all(b)?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn gcp_light_stemcell_appliance_through_the_cli() {
    appliance(true);
}

#[test]
fn gcp_heavy_stemcell_appliance_through_the_cli() {
    appliance(false);
}

/// `--offline` refuses a gcp build whose endpoints are not on loopback,
/// before anything is created.
#[test]
fn gcp_offline_refuses_a_remote_endpoint() {
    let Some(p) = peers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let sc = stemcells_with_light(dir.path());
    let sc_arg = format!("stemcell_dir={}", sc.display());
    let out = gcp_command(
        dir.path(),
        &p,
        "https://compute.googleapis.com",
        &[
            "--iaas",
            "gcp",
            "--offline",
            "--var",
            &sc_arg,
            "--var",
            "gcp_stemcell_prefix=light-",
        ],
    )
    .output()
    .unwrap();
    let ev = events(&out);
    assert_eq!(out.status.code(), Some(1), "{ev:?}");
    let err = finished(&ev, "gcp")["error"].as_str().unwrap().to_string();
    assert!(
        err.contains("--offline") && err.contains("compute.googleapis.com"),
        "{err}"
    );
    assert!(
        !ev.iter().any(|e| e["event"] == "resource_intent"),
        "{ev:?}"
    );
}

/// A bad credential file: a clear error naming the file, exit 1, nothing
/// created.
#[test]
fn gcp_bad_credentials_file_is_a_clear_error() {
    let Some(p) = peers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let sc = stemcells_with_light(dir.path());
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        b"{\"type\": \"service_account\", \"private_key\": \"not a key\"}",
    )
    .unwrap();
    let sc_arg = format!("stemcell_dir={}", sc.display());
    let cred_arg = format!("gcp_credentials_file={}", bad.display());
    let out = gcp_command(
        dir.path(),
        &p,
        &p.gce.endpoint(),
        &[
            "--iaas",
            "gcp",
            "--var",
            &sc_arg,
            "--var",
            "gcp_stemcell_prefix=light-",
            "--var",
            &cred_arg,
        ],
    )
    .output()
    .unwrap();
    let ev = events(&out);
    assert_eq!(out.status.code(), Some(1), "{ev:?}");
    let err = finished(&ev, "gcp")["error"].as_str().unwrap().to_string();
    assert!(
        err.contains("credentials") && err.contains("bad.json"),
        "{err}"
    );
    assert!(
        !err.contains("not a key"),
        "the key must not be echoed: {err}"
    );
    assert!(
        !ev.iter().any(|e| e["event"] == "resource_intent"),
        "{ev:?}"
    );
    assert!(left(&p, "none").is_empty());
}
