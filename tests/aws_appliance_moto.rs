//! `opsbake build images/appliance.yml --iaas aws --var-file
//! images/moto.vars.yml` through the CLI binary, against moto (EC2 + EBS
//! direct APIs on 127.0.0.1) and a hardened local sshd playing the instance
//! (its AuthorizedKeysCommand reads the instance's user data from moto, so
//! the login proves the key travelled through the BOSH agent settings).
//!
//! With the light stemcell (the region's seeded AMI) and the heavy one
//! (imported through the EBS direct APIs). Asserted through moto: the AMI
//! in us-east-1 and its copy in eu-west-1, available, named, tagged as the
//! template asks, launchable by the account of the var file, snapshots
//! tagged, nothing else of the build left (heavy: every block of the
//! imported snapshot read back with GetSnapshotBlock equals the raw disk);
//! the manifest holds the artifact;
//! the journal is clean.
//!
//! `--skip-provision aws`: the appliance's steps change the machine they run
//! on (systemd unit, /tmp and /var/log cleanup, the hand-off), and the sshd
//! runs on the build host (images/moto.vars.yml, docs/aws.md).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod aws_support;

use std::time::Instant;

use aws_support::*;
use opsbake_core::journal::Outcome;

async fn appliance(light: bool) {
    let Some(stemcells) = stemcell_dir() else {
        return;
    };
    aws_env();
    let Some(moto) = moto() else { return };
    let sshd = opsbake_test_support::moto::instance_sshd(&moto, "us-east-1")
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["--iaas", "aws", "--skip-provision", "aws"];
    if light {
        // Also `--offline`: moto is on loopback, credentials from the env.
        args.extend(["--var", "aws_stemcell_prefix=light-", "--offline"]);
    }
    bin(); // found (or built) before the clock starts
    let t0 = Instant::now();
    let out = aws_command(dir.path(), &moto.endpoint(), sshd.port(), &args)
        .output()
        .unwrap();
    let took = t0.elapsed().as_secs_f64();
    let ev = events(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr:\n{}\nevents:\n{ev:#?}\nsshd:\n{}",
        String::from_utf8_lossy(&out.stderr),
        sshd.log_text()
    );
    let fin = finished(&ev, "aws");
    assert_eq!(fin["outcome"], "succeeded", "{fin}");
    let id = fin["build_id"].as_str().unwrap().to_string();
    let art = fin["artifact_id"].as_str().unwrap().to_string();
    eprintln!(
        "{} appliance build through the CLI: {took:.2} s, artifact {art}",
        if light { "light" } else { "heavy" }
    );
    // The login used the key from the agent settings (vcap has no
    // authorized_keys; only the command knows it).
    assert!(
        sshd.log_text().contains("Accepted publickey for vcap"),
        "{}",
        sshd.log_text()
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--skip-provision: not running the 5"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_aws_artifact(&moto.endpoint(), &id, &art).await;
    // The base image: the seeded AMI, or an imported one kept as a cache.
    let base_imported = ev.iter().any(|e| {
        e["event"] == "message"
            && e["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("uploaded ") && t.contains(" blocks ("))
    });
    assert_eq!(base_imported, !light, "EBS direct import iff heavy");
    if !light {
        let c = ec2(&moto.endpoint(), "us-east-1").await;
        let imgs = c
            .describe_images()
            .owners("self")
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("tag:opsbake:role")
                    .values("base-image")
                    .build(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(imgs.images().len(), 1, "one kept base image");
        let t = Instant::now();
        let (blocks, sent) = read_back_base_snapshot(
            &moto.endpoint(),
            &stemcells.join("bosh-stemcell-1.0-aws-xen-hvm-debian-bookworm-go_agent.tgz"),
            dir.path(),
        )
        .await;
        assert!(sent > 0);
        eprintln!(
            "read back {blocks} blocks ({sent} non-zero) of the imported snapshot in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    let manifest = std::fs::read_to_string(dir.path().join("out/appliance/manifest.json")).unwrap();
    assert!(manifest.contains(&art), "{manifest}");
    check_journal(&dir.path().join("state"), &id, Outcome::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn light_stemcell_appliance_through_the_cli() {
    appliance(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_stemcell_appliance_through_the_cli() {
    appliance(false).await;
}

/// `--offline` means nothing leaves the machine: an aws build without a
/// loopback endpoint is refused at validate, before anything is created.
#[test]
fn offline_refuses_an_aws_build_without_a_loopback_endpoint() {
    let Some(_stemcells) = stemcell_dir() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for endpoint in ["", "https://ec2.us-east-1.amazonaws.com"] {
        let out = aws_command(dir.path(), endpoint, 22, &["--iaas", "aws", "--offline"])
            .output()
            .unwrap();
        let ev = events(&out);
        assert_eq!(out.status.code(), Some(1), "{endpoint}: {ev:?}");
        let fin = finished(&ev, "aws");
        assert_eq!(fin["outcome"], "failed");
        let err = fin["error"].as_str().unwrap();
        assert!(err.contains("--offline"), "{err}");
        assert!(
            !ev.iter().any(|e| e["event"] == "resource_intent"),
            "created something: {ev:?}"
        );
    }
}
