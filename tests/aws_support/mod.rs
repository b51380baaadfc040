//! Shared by the CLI's aws tests (`aws_*.rs`, `qemu_aws_vbox.rs`): moto with
//! the test stemcell's AMIs, the sshd that plays the instance, the CLI run
//! with moto's credentials, and what is left in moto
//! (crates/iaas-aws/tests/common/leftovers.rs, included by path).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use opsbake_test_support::moto::{Moto, MotoOptions, SeedAmi};
use serde_json::Value;

#[path = "../../crates/iaas-aws/tests/common/leftovers.rs"]
mod leftovers;
pub use leftovers::*;

/// The CLI under test (see `opsbake_test_support::cli::opsbake_bin`).
pub fn bin() -> &'static Path {
    opsbake_test_support::cli::opsbake_bin()
}
/// The AMIs the light test stemcell maps us-east-1 and eu-west-1 to.
pub const LIGHT_AMIS: [&str; 2] = ["ami-0bd5e7e57c0ffee01", "ami-0bd5e7e57c0ffee02"];
/// images/moto.vars.yml's launch permission.
pub const AMI_USER: &str = "111122223333";

pub use opsbake_test_support::skip_peers;

pub fn repo_root() -> PathBuf {
    opsbake_test_support::cli::workspace_root()
}

/// The test stemcell dir holding the aws stemcells, or None when peers are
/// skipped.
pub fn stemcell_dir() -> Option<PathBuf> {
    for n in [
        "bosh-stemcell-1.0-aws-xen-hvm-debian-bookworm-go_agent.tgz",
        "light-bosh-stemcell-1.0-aws-xen-hvm-debian-bookworm-go_agent.tgz",
    ] {
        opsbake_test_support::stemcell::path(n)?;
    }
    opsbake_test_support::stemcell::dir()
}

/// moto with the light test stemcell's AMIs seeded, or None when peers are
/// skipped and moto is missing.
pub fn moto() -> Option<Moto> {
    if skip_peers() && opsbake_test_support::moto::binary().is_err() {
        eprintln!("OPSBAKE_SKIP_PEERS=1 and no moto_server: skipped");
        return None;
    }
    Some(
        Moto::start(MotoOptions {
            seed_amis: LIGHT_AMIS
                .iter()
                .map(|a| SeedAmi {
                    ami_id: (*a).into(),
                    name: "bosh-aws-xen-hvm-debian-bookworm-go_agent-1.0".into(),
                    root_device_name: "/dev/sda1".into(),
                })
                .collect(),
            env: vec![],
        })
        .unwrap_or_else(|e| panic!("{e}")),
    )
}

/// moto's credentials for this process's SDK clients (the test's own
/// checks); the CLI gets them through [`aws_command`].
pub fn aws_env() {
    for (k, v) in AWS_ENV {
        std::env::set_var(k, v);
    }
    std::env::remove_var("AWS_SESSION_TOKEN");
    std::env::remove_var("AWS_PROFILE");
}

const AWS_ENV: [(&str, &str); 5] = [
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
    ("AWS_CONFIG_FILE", "/nonexistent/opsbake-test"),
    ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/opsbake-test"),
];

/// `opsbake --state-dir DIR/state --no-progress --json build
/// images/appliance.yml --var-file images/moto.vars.yml --var
/// aws_endpoint=... --var aws_ssh_port=... ARGS`, from `dir`.
pub fn aws_command(dir: &Path, endpoint: &str, ssh_port: u16, args: &[&str]) -> Command {
    let root = repo_root();
    let mut c = Command::new(bin());
    c.current_dir(dir)
        // outputs go under the test's directory, not the repo's images/
        .env("OPSBAKE_VAR_output_dir", dir.join("out/appliance"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--no-progress", "--json", "build"])
        .arg(root.join("images/appliance.yml"))
        .arg("--var-file")
        .arg(root.join("images/moto.vars.yml"))
        .arg("--var")
        .arg(format!("aws_endpoint={endpoint}"))
        .arg("--var")
        .arg(format!("aws_ssh_port={ssh_port}"))
        .args(args)
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION");
    for (k, v) in AWS_ENV {
        c.env(k, v);
    }
    c
}

/// The `--json` events of a run.
pub fn events(out: &Output) -> Vec<Value> {
    opsbake_test_support::cli::events(out)
}

/// The `build_finished` event of one IaaS.
pub fn finished<'a>(events: &'a [Value], iaas: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["event"] == "build_finished" && e["build"] == iaas)
        .unwrap_or_else(|| panic!("no build_finished for {iaas}: {events:?}"))
}

/// What an aws build must have produced in moto: the AMI of the build
/// region and its copy, each available, named, tagged as asked, launchable
/// by [`AMI_USER`], with tagged snapshots; nothing else of the build left.
pub async fn check_aws_artifact(endpoint: &str, build_id: &str, artifact_id: &str) {
    let pairs: Vec<(&str, &str)> = artifact_id
        .split(',')
        .map(|p| p.split_once(':').unwrap())
        .collect();
    let regions: Vec<&str> = pairs.iter().map(|(r, _)| *r).collect();
    assert_eq!(regions, ["us-east-1", "eu-west-1"], "{artifact_id}");
    for (region, ami) in &pairs {
        let c = ec2(endpoint, region).await;
        let imgs = c.describe_images().image_ids(*ami).send().await.unwrap();
        let img = imgs
            .images()
            .first()
            .unwrap_or_else(|| panic!("{ami} not in {region}"));
        assert_eq!(
            img.state(),
            Some(&aws_sdk_ec2::types::ImageState::Available)
        );
        assert_eq!(
            img.name(),
            Some(format!("appliance-1.0.0-{build_id}").as_str())
        );
        let tags = tag_map(img.tags());
        assert_eq!(
            tags.get("appliance").map(String::as_str),
            Some("1.0.0"),
            "{tags:?}"
        );
        assert_eq!(
            tags.get("built-by").map(String::as_str),
            Some("opsbake"),
            "{tags:?}"
        );
        assert_eq!(
            tags.get("opsbake:build-id").map(String::as_str),
            Some(build_id)
        );
        let perm = c
            .describe_image_attribute()
            .image_id(*ami)
            .attribute(aws_sdk_ec2::types::ImageAttributeName::LaunchPermission)
            .send()
            .await
            .unwrap();
        let users: Vec<&str> = perm
            .launch_permissions()
            .iter()
            .filter_map(|p| p.user_id())
            .collect();
        assert_eq!(users, [AMI_USER], "{region} {ami} launch permissions");
        let snaps: Vec<String> = img
            .block_device_mappings()
            .iter()
            .filter_map(|b| b.ebs().and_then(|e| e.snapshot_id()).map(str::to_string))
            .collect();
        assert!(!snaps.is_empty(), "{ami} has no snapshot");
        let s = c
            .describe_snapshots()
            .set_snapshot_ids(Some(snaps))
            .send()
            .await
            .unwrap();
        for s in s.snapshots() {
            let t = tag_map(s.tags());
            assert_eq!(
                t.get("appliance").map(String::as_str),
                Some("1.0.0"),
                "{t:?}"
            );
            assert_eq!(
                t.get("opsbake:build-id").map(String::as_str),
                Some(build_id)
            );
        }
    }
    let left = leftovers(endpoint, &regions, build_id).await;
    assert!(
        left.iter()
            .all(|l| l.contains(" image ") || l.contains(" snapshot ")),
        "temporary resources left: {left:?}"
    );
    assert_eq!(
        left.iter().filter(|l| l.contains(" image ")).count(),
        2,
        "{left:?}"
    );
}

/// The journal of a finished build: outcome recorded, nothing live.
pub fn check_journal(state: &Path, build_id: &str, outcome: opsbake_core::journal::Outcome) {
    let j = opsbake_core::journal::Journal::open(state, build_id).unwrap();
    let st = j.state();
    assert_eq!(st.outcome, Some(outcome), "{build_id}");
    assert!(
        st.live.is_empty(),
        "{build_id}: journal lists {:?}",
        st.live
    );
}

/// Every 512 KiB block of the kept base snapshot (tag
/// `opsbake:role=base-image`) read back with GetSnapshotBlock equals the
/// heavy stemcell's raw disk (zero blocks absent); returns (blocks, sent).
pub async fn read_back_base_snapshot(
    endpoint: &str,
    stemcell: &Path,
    work: &Path,
) -> (usize, usize) {
    let x = work.join("readback");
    opsbake_stemcell::extract(stemcell, &x, &Default::default()).unwrap();
    let disk = std::fs::read(x.join("root.img")).unwrap();
    let c = ec2(endpoint, "us-east-1").await;
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
    assert_eq!(snaps.snapshots().len(), 1, "one base snapshot");
    let snap = snaps.snapshots()[0].snapshot_id().unwrap().to_string();
    // One attempt: moto answers a missing (zero) block with a 500.
    let ebs =
        opsbake_iaas_aws::clients::Clients::with_attempts("us-east-1", Some(endpoint.into()), 1)
            .ebs("us-east-1")
            .await
            .unwrap();
    let bs = 512 * 1024;
    let blocks = disk.len().div_ceil(bs);
    let mut sent = 0;
    for idx in 0..blocks {
        let mut want = disk[idx * bs..((idx + 1) * bs).min(disk.len())].to_vec();
        let zero = want.iter().all(|b| *b == 0);
        want.resize(bs, 0);
        match ebs
            .get_snapshot_block()
            .snapshot_id(&snap)
            .block_index(i32::try_from(idx).unwrap())
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
    std::fs::remove_dir_all(&x).unwrap();
    (blocks, sent)
}
