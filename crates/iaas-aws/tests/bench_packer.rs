//! Side-by-side figures (docs/benchmarks.md `## iaas-aws`): the same light
//! stemcell build, one trivial shell step, with opsbake and with Debian's
//! Packer 1.6.6 `amazon-ebs`, against the same moto (through the fault proxy,
//! which counts the API calls) and the same local sshd.
//!
//! Ignored by default: `cargo nextest run -p opsbake-iaas-aws --run-ignored
//! only -E 'test(bench)' --no-capture` (needs `packer`, `apt-get install
//! packer`, and the test stemcells).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use common::*;
use opsbake_core::builder::{Connector, KeyAlgorithm, KeyPair, SshTarget};
use opsbake_core::events::MemorySink;
use opsbake_core::runner::{BuildJob, Runner};
use opsbake_core::template::Iaas;
use opsbake_core::transport::{Transport, TransportError};
use opsbake_test_support::fault_proxy::FaultProxy;
use opsbake_test_support::moto::{Moto, MotoOptions, SeedAmi};
use opsbake_test_support::sshd::{Sshd, SshdOptions};
use tokio_util::sync::CancellationToken;

const AMI: &str = "ami-0bd5e7e57c0ffee01";

/// The CLI's connector with a fixed key (the one sshd authorizes) instead
/// of a fresh one, so that both tools log in the same way (no
/// AuthorizedKeysCommand in either's path).
struct FixedKey(KeyPair);

#[async_trait]
impl Connector for FixedKey {
    fn generate_key(&self, _a: KeyAlgorithm, _c: &str) -> Result<KeyPair, TransportError> {
        Ok(self.0.clone())
    }

    async fn connect(
        &self,
        t: &SshTarget,
        cancel: CancellationToken,
    ) -> Result<Arc<dyn Transport>, TransportError> {
        opsbake_comms_ssh::SshConnector.connect(t, cancel).await
    }
}

fn counts(p: &FaultProxy, from: usize) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for c in &p.calls()[from..] {
        *m.entry(c.action.clone()).or_insert(0) += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --run-ignored only"]
async fn bench_opsbake_vs_packer_amazon_ebs() {
    aws_env();
    let sc = std::path::PathBuf::from(std::env::var("OPSBAKE_TEST_STEMCELL_DIR").unwrap())
        .join("light-bosh-stemcell-1.0-aws-xen-hvm-debian-bookworm-go_agent.tgz");
    let moto = Moto::start(MotoOptions {
        seed_amis: vec![SeedAmi {
            ami_id: AMI.into(),
            name: "bosh-aws-xen-hvm-debian-bookworm-go_agent-1.0".into(),
            root_device_name: "/dev/sda1".into(),
        }],
        env: vec![],
    })
    .unwrap();
    let proxy = FaultProxy::start(moto.addr()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let k = key(dir.path());
    let keyfile = dir.path().join("bench_key");
    std::fs::write(&keyfile, k.private_openssh.expose()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&keyfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    let sshd = Sshd::start(SshdOptions {
        authorized_keys: vec![k.public_openssh.clone()],
        ..SshdOptions::default()
    })
    .unwrap();
    // Warm moto's region (its first call sets the region up).
    ec2(&moto.endpoint(), "us-east-1")
        .await
        .describe_images()
        .image_ids(AMI)
        .send()
        .await
        .unwrap();

    let mut rows = Vec::new();
    for run in 0..3 {
        // opsbake
        let id = format!("ob-bench-{run}");
        let t = dir.path().join(format!("{id}.yml"));
        std::fs::write(
            &t,
            format!(
                "name: bench\nstemcells:\n  aws: {{path: \"{}\"}}\nbuilds:\n  aws:\n    network: {{ssh_cidrs: [203.0.113.0/24]}}\n    ssh: {{user: vcap, host: 127.0.0.1, port: {}}}\n    options: {{region: us-east-1, endpoint: \"{}\", instance_type: t3.micro, ami_name: opsbake-bench-{run}}}\nprovision:\n  - type: shell\n    sudo: false\n    inline: [\"true\"]\noutputs: {{directory: \"{}\"}}\n",
                sc.display(),
                sshd.port(),
                proxy.endpoint(),
                dir.path().join(format!("out-{run}")).display()
            ),
        )
        .unwrap();
        let plan = opsbake_test_support::build::plan(&t, Iaas::Aws, &id);
        let from = proxy.calls().len();
        let started = Instant::now();
        let builder = opsbake_iaas_aws::builder(&plan).unwrap();
        let mut runner = Runner::new(dir.path().join("state"), Arc::new(MemorySink::default()));
        runner.connector = Some(Arc::new(FixedKey(k.clone())));
        runner.provisioning = Some(Arc::new(opsbake_provision::Provision::default()));
        let r = runner
            .run_all(
                vec![BuildJob {
                    plan,
                    builder,
                    inputs: opsbake_core::manifest::InputDigests::default().into(),
                }],
                CancellationToken::new(),
            )
            .await;
        assert!(r[0].error.is_none(), "{:?}", r[0].error);
        let ob_secs = started.elapsed().as_secs_f64();
        let ob_calls = counts(&proxy, from);

        // Packer 1.6.6 amazon-ebs, same key (pre-imported), same sshd.
        let kp_name = format!("packer-bench-{run}");
        ec2(&moto.endpoint(), "us-east-1")
            .await
            .import_key_pair()
            .key_name(&kp_name)
            .public_key_material(aws_sdk_ec2::primitives::Blob::new(
                k.public_openssh.as_bytes(),
            ))
            .send()
            .await
            .unwrap();
        let pj = dir.path().join(format!("packer-{run}.json"));
        std::fs::write(
            &pj,
            serde_json::json!({
                "builders": [{
                    "type": "amazon-ebs",
                    "region": "us-east-1",
                    "custom_endpoint_ec2": proxy.endpoint(),
                    "skip_region_validation": true,
                    "skip_metadata_api_check": true,
                    "access_key": "testing",
                    "secret_key": "testing",
                    "source_ami": AMI,
                    "instance_type": "t3.micro",
                    "ssh_username": "vcap",
                    "ssh_host": "127.0.0.1",
                    "ssh_port": sshd.port(),
                    "ssh_keypair_name": kp_name,
                    "ssh_private_key_file": keyfile.display().to_string(),
                    "temporary_security_group_source_cidrs": ["203.0.113.0/24"],
                    "ami_name": format!("packer-bench-{run}")
                }],
                "provisioners": [{"type": "shell", "inline": ["true"]}]
            })
            .to_string(),
        )
        .unwrap();
        let from = proxy.calls().len();
        let started = Instant::now();
        let out = Command::new("packer")
            .args(["build", "-color=false"])
            .arg(&pj)
            .env("CHECKPOINT_DISABLE", "1")
            .env("PACKER_CACHE_DIR", dir.path().join("packer_cache"))
            .env("HOME", dir.path())
            .current_dir(dir.path())
            .output()
            .expect("packer (Debian's 1.6.6) is needed: apt-get install packer");
        let pk_secs = started.elapsed().as_secs_f64();
        assert!(
            out.status.success(),
            "packer: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let pk_calls = counts(&proxy, from);
        rows.push((ob_secs, ob_calls, pk_secs, pk_calls));
    }
    for (i, (o, oc, p, pc)) in rows.iter().enumerate() {
        eprintln!(
            "run {i}: opsbake {o:.2} s, {} calls; packer {p:.2} s, {} calls",
            oc.values().sum::<usize>(),
            pc.values().sum::<usize>()
        );
    }
    let (_, oc, _, pc) = &rows[rows.len() - 1];
    let mut all: Vec<&String> = oc.keys().chain(pc.keys()).collect();
    all.sort();
    all.dedup();
    eprintln!("| call | opsbake | packer 1.6.6 |");
    for a in all {
        eprintln!(
            "| {a} | {} | {} |",
            oc.get(a).copied().unwrap_or(0),
            pc.get(a).copied().unwrap_or(0)
        );
    }
}
