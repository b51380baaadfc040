//! `opsbake build images/appliance.yml --iaas aws,gcp`: both builds at
//! once through the CLI, aws against moto, gcp against the Compute Engine
//! test server and fake-gcs-server, each with its own local sshd.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod aws_support;
mod gcp_support;

use gcp_support::*;

#[test]
fn aws_and_gcp_build_at_once() {
    let Some(p) = peers() else { return };
    let Some(_) = aws_support::stemcell_dir() else {
        return;
    };
    let Some(moto) = aws_support::moto() else {
        return;
    };
    let aws_sshd = opsbake_test_support::moto::instance_sshd(&moto, "us-east-1")
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let sc = stemcells_with_light(dir.path());
    let sc_arg = format!("stemcell_dir={}", sc.display());
    let mut c = gcp_command(
        dir.path(),
        &p,
        &p.gce.endpoint(),
        &[
            "--iaas",
            "aws,gcp",
            "--skip-provision",
            "aws,gcp",
            "--var",
            &sc_arg,
            "--var",
            "gcp_stemcell_prefix=light-",
            "--var",
            "aws_stemcell_prefix=light-",
        ],
    );
    c.arg("--var-file")
        .arg(aws_support::repo_root().join("images/moto.vars.yml"))
        .arg("--var")
        .arg(format!("aws_endpoint={}", moto.endpoint()))
        .arg("--var")
        .arg(format!("aws_ssh_port={}", aws_sshd.port()));
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/nonexistent/opsbake-test"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/opsbake-test"),
    ] {
        c.env(k, v);
    }
    c.env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION");
    let out = c.output().unwrap();
    let ev = events(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr:\n{}\n{ev:#?}",
        String::from_utf8_lossy(&out.stderr)
    );
    for iaas in ["aws", "gcp"] {
        assert_eq!(finished(&ev, iaas)["outcome"], "succeeded", "{iaas}");
    }
    let gid = finished(&ev, "gcp")["build_id"]
        .as_str()
        .unwrap()
        .to_string();
    let art = finished(&ev, "gcp")["artifact_id"]
        .as_str()
        .unwrap()
        .to_string();
    let l: Vec<String> = left(&p, &gid)
        .into_iter()
        .filter(|l| *l != format!("image {art}"))
        .collect();
    assert!(l.is_empty(), "{l:?}");
    assert!(p.sshd.log_text().contains("Accepted publickey for vcap"));
    assert!(aws_sshd.log_text().contains("Accepted publickey for vcap"));
}
