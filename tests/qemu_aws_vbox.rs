//! `opsbake build images/appliance.yml --iaas aws,vbox --offline` runs both
//! builds at once in one process: the aws build against moto (a loopback
//! endpoint, which `--offline` allows, with credentials from the
//! environment) and a local sshd playing the instance, the vbox build under
//! QEMU (TCG here, `restrict=on` under `--offline`) running the appliance's
//! provisioning and hand-off for real.
//!
//! Asserted: both builds succeed, their lifetimes overlap (from the `--json`
//! events' timestamps), the manifest holds both artifacts (the AMIs and the
//! OVA), the AMI is in two regions with the tags and launch permission of
//! images/moto.vars.yml, and both journals are clean.
//!
//! Needs root, QEMU and the test stemcells (`OPSBAKE_TEST_STEMCELL_DIR`),
//! moto and sshd: fails without them unless `OPSBAKE_SKIP_PEERS=1`. The file
//! name holds `qemu`, so nextest runs it in the one-at-a-time QEMU group.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod aws_support;

use std::time::Instant;

use aws_support::*;
use opsbake_core::journal::Outcome;
use serde_json::Value;

fn ts(e: &Value) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(
        e["ts"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
}

fn started<'a>(events: &'a [Value], iaas: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["event"] == "build_started" && e["build"] == iaas)
        .unwrap_or_else(|| panic!("no build_started for {iaas}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_aws_and_vbox_build_at_once_in_one_process() {
    let Some(stemcells) = stemcell_dir() else {
        return;
    };
    let vsphere = stemcells.join("bosh-stemcell-1.0-vsphere-esxi-debian-bookworm-go_agent.tgz");
    assert!(vsphere.is_file(), "{} missing", vsphere.display());
    for b in ["qemu-system-x86_64", "qemu-img"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(b).is_file()))
            .unwrap_or(false);
        if !found && skip_peers() {
            eprintln!("OPSBAKE_SKIP_PEERS=1 and no {b}: skipped");
            return;
        }
        assert!(
            found,
            "{b} missing: apt-get install qemu-system-x86 qemu-utils"
        );
    }
    aws_env();
    let Some(moto) = moto() else { return };
    let sshd = opsbake_test_support::moto::instance_sshd(&moto, "us-east-1")
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    bin(); // found (or built) before the clock starts
    let t0 = Instant::now();
    let out = aws_command(
        dir.path(),
        &moto.endpoint(),
        sshd.port(),
        &[
            "--iaas",
            "aws,vbox",
            "--offline",
            "--skip-provision",
            "aws",
            "--var",
            "aws_stemcell_prefix=light-",
        ],
    )
    .output()
    .unwrap();
    let took = t0.elapsed().as_secs_f64();
    let ev = events(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&Value> = ev.iter().rev().take(40).collect();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr:\n{stderr}\nlast events:\n{tail:#?}"
    );
    let (aws, vbox) = (finished(&ev, "aws"), finished(&ev, "vbox"));
    assert_eq!(aws["outcome"], "succeeded", "{aws}");
    assert_eq!(vbox["outcome"], "succeeded", "{vbox}");
    // At once: each started before the other finished.
    let (a0, a1) = (ts(started(&ev, "aws")), ts(aws));
    let (v0, v1) = (ts(started(&ev, "vbox")), ts(vbox));
    assert!(
        a0 < v1 && v0 < a1,
        "not overlapping: aws {a0}..{a1}, vbox {v0}..{v1}"
    );
    eprintln!(
        "aws,vbox in one process: {took:.1} s wall; aws {:.1} s, vbox {:.1} s, overlap {:.1} s",
        (a1 - a0).as_seconds_f64(),
        (v1 - v0).as_seconds_f64(),
        (a1.min(v1) - a0.max(v0)).as_seconds_f64()
    );
    // The vbox build ran the appliance's steps, the aws one none of them.
    assert!(
        ev.iter().any(|e| e["build"] == "vbox"
            && e["event"] == "step_finished"
            && e["step"] == "provision"),
        "the vbox build did not provision"
    );
    assert!(
        !ev.iter().any(|e| e["build"] == "aws"
            && e["event"] == "step_started"
            && e["step"] == "provision"),
        "the aws build provisioned"
    );
    let aws_id = aws["build_id"].as_str().unwrap();
    let vbox_id = vbox["build_id"].as_str().unwrap();
    let ami = aws["artifact_id"].as_str().unwrap();
    check_aws_artifact(&moto.endpoint(), aws_id, ami).await;
    // One manifest, both artifacts.
    let m: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("out/appliance/manifest.json")).unwrap(),
    )
    .unwrap();
    let text = m.to_string();
    assert!(text.contains(ami), "{m:#}");
    assert!(text.contains(vbox_id) && text.contains(".ova"), "{m:#}");
    let ova = std::fs::read_dir(dir.path().join("out/appliance"))
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().ends_with(".ova"))
        .unwrap_or_else(|| panic!("no OVA in out/appliance"));
    assert!(ova.metadata().unwrap().len() > 1 << 20);
    let state = dir.path().join("state");
    check_journal(&state, aws_id, Outcome::Succeeded);
    check_journal(&state, vbox_id, Outcome::Succeeded);
}
