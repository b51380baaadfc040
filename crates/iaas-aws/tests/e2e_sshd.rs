//! `aws` builds end to end through core's runner with the real SSH
//! transport (comms-ssh) and provisioners: moto plays EC2, a hardened
//! OpenSSH sshd on 127.0.0.1 plays the instance (through the `ssh.host` /
//! `ssh.port` override; moto's invented addresses are never contacted).
//!
//! The sshd has no authorized_keys: its `AuthorizedKeysCommand` asks moto
//! for the user data of the running instances (DescribeInstanceAttribute
//! userData) and prints `env.bosh.authorized_keys`, so a login proves the
//! key travelled through the BOSH agent settings, as on AWS.
//!
//! The stemcells are the project's test stemcells
//! (`OPSBAKE_TEST_STEMCELL_DIR`, .ci/setup.d/20-test-stemcell.sh).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::*;
use opsbake_core::template::Iaas;
use opsbake_test_support::build;
use opsbake_test_support::moto::{Moto, MotoOptions, SeedAmi};
use opsbake_test_support::sshd::Sshd;
use opsbake_test_support::stemcell::{appliance, loopback_ssh};
use tokio_util::sync::CancellationToken;

const LIGHT: &str = "light-bosh-stemcell-1.0-aws-xen-hvm-debian-bookworm-go_agent.tgz";
const HEAVY: &str = "bosh-stemcell-1.0-aws-xen-hvm-debian-bookworm-go_agent.tgz";

fn stemcell(name: &str) -> Option<PathBuf> {
    opsbake_test_support::stemcell::path(name)
}

/// A hardened sshd whose keys come from the instances' user data at moto.
fn sshd_reading_user_data(moto: &Moto) -> Sshd {
    opsbake_test_support::moto::instance_sshd(moto, "us-east-1").unwrap_or_else(|e| panic!("{e}"))
}

fn write_template(
    dir: &Path,
    stemcell: &Path,
    endpoint: &str,
    port: u16,
    options: &str,
) -> PathBuf {
    let build = format!(
        "{}\n    options: {{region: us-east-1, endpoint: \"{endpoint}\", instance_type: t3.micro{options}}}",
        loopback_ssh(port)
    );
    appliance(dir, "aws", stemcell, &build)
}

async fn run(
    dir: &Path,
    template: &Path,
    id: &str,
) -> (opsbake_core::runner::BuildResult, Vec<String>) {
    // The CLI's connector: the build's template pins SSH to the loopback
    // override (moto's invented addresses are never contacted).
    let job = build::job(template, Iaas::Aws, id, opsbake_iaas_aws::builder);
    build::run(dir, job, CancellationToken::new()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn light_stemcell_build_logs_in_with_the_key_from_the_agent_settings() {
    aws_env();
    let Some(sc) = stemcell(LIGHT) else { return };
    let moto = Moto::start(MotoOptions {
        seed_amis: vec![
            SeedAmi {
                ami_id: "ami-0bd5e7e57c0ffee01".into(),
                name: "bosh-aws-xen-hvm-debian-bookworm-go_agent-1.0".into(),
                root_device_name: "/dev/sda1".into(),
            },
            SeedAmi {
                ami_id: "ami-0bd5e7e57c0ffee02".into(),
                name: "bosh-aws-xen-hvm-debian-bookworm-go_agent-1.0".into(),
                root_device_name: "/dev/sda1".into(),
            },
        ],
        env: vec![],
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let sshd = sshd_reading_user_data(&moto);
    let dir = tempfile::tempdir().unwrap();
    let t = write_template(
        dir.path(),
        &sc,
        &moto.endpoint(),
        sshd.port(),
        ", copy_regions: [eu-west-1], tags: {appliance: 'true'}",
    );
    let id = "ob-e2e-light-1";
    let started = Instant::now();
    let (r, events) = run(dir.path(), &t, id).await;
    // The key came through the command (vcap's authorized_keys is empty).
    build::assert_provisioned_over(&sshd, &r, &events);
    eprintln!(
        "light build against moto + sshd: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let art = r.artifact.unwrap();
    assert_eq!(art.id.split(',').count(), 2, "{}", art.id);
    let left = leftovers(&moto.endpoint(), &["us-east-1", "eu-west-1"], id).await;
    assert!(
        left.iter()
            .all(|l| l.contains(" image ") || l.contains(" snapshot ")),
        "{left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_stemcell_build_imports_the_disk_block_for_block() {
    aws_env();
    let Some(sc) = stemcell(HEAVY) else { return };
    let moto = Moto::start(MotoOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let sshd = sshd_reading_user_data(&moto);
    let dir = tempfile::tempdir().unwrap();
    let t = write_template(dir.path(), &sc, &moto.endpoint(), sshd.port(), "");
    let id = "ob-e2e-heavy-1";
    let started = Instant::now();
    let (r, events) = run(dir.path(), &t, id).await;
    assert!(r.error.is_none(), "{:?}\n{}", r.error, events.join("\n"));
    let took = started.elapsed().as_secs_f64();
    let upload = events
        .iter()
        .find(|e| e.contains("blocks (") && e.contains("uploaded"))
        .cloned()
        .unwrap_or_default();
    eprintln!("heavy build against moto + sshd: {took:.2} s; {upload}");
    for e in events.iter().filter(|e| e.contains("step_finished")) {
        eprintln!("{e}");
    }
    // The imported snapshot, block for block, against the stemcell's disk.
    let x = dir.path().join("x");
    opsbake_stemcell::extract(&sc, &x, &Default::default()).unwrap();
    let disk = std::fs::read(x.join("root.img")).unwrap();
    let c = ec2(&moto.endpoint(), "us-east-1").await;
    let snaps = c
        .describe_snapshots()
        .owner_ids("self")
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:opsbake:role")
                .values("base-image")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let snap = snaps.snapshots()[0].snapshot_id().unwrap().to_string();
    // No retries: moto answers a missing (zero) block with a 500.
    let ebs =
        opsbake_iaas_aws::clients::Clients::with_attempts("us-east-1", Some(moto.endpoint()), 1)
            .ebs("us-east-1")
            .await
            .unwrap();
    let bs = 512 * 1024;
    let mut sent = 0;
    let t0 = Instant::now();
    for idx in 0..disk.len().div_ceil(bs) {
        let mut want = disk[idx * bs..((idx + 1) * bs).min(disk.len())].to_vec();
        let zero = want.iter().all(|b| *b == 0);
        want.resize(bs, 0);
        match ebs
            .get_snapshot_block()
            .snapshot_id(&snap)
            .block_index(idx as i32)
            .block_token("any")
            .send()
            .await
        {
            Ok(got) => {
                assert!(!zero, "zero block {idx} uploaded");
                let data = got.block_data.collect().await.unwrap().into_bytes();
                assert!(data.as_ref() == want.as_slice(), "block {idx} differs");
                sent += 1;
            }
            Err(e) => assert!(zero, "block {idx} missing: {e:?}"),
        }
    }
    eprintln!(
        "read back {} blocks ({} non-zero) in {:.2} s",
        disk.len().div_ceil(bs),
        sent,
        t0.elapsed().as_secs_f64()
    );
    assert!(sent > 0);
    let marker = std::fs::read_to_string(sshd.home().join("opsbake-marker")).unwrap();
    assert!(marker.contains("vcap"));
}
