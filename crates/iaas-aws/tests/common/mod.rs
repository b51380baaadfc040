//! Shared helpers of the AWS builder's tests against moto_server.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use opsbake_core::builder::{BuildContext, KeyPair, RunOptions};
use opsbake_core::events::{Emitter, MemorySink};
use opsbake_core::journal::{Header, Journal, ProcessIdentity};
use opsbake_core::template::Iaas;
use opsbake_core::Secret;
use opsbake_test_support::moto::{Moto, MotoOptions, SeedAmi};
use sha1::Digest as _;

/// Fake credentials for moto; no metadata service.
pub fn aws_env() {
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    std::env::remove_var("AWS_SESSION_TOKEN");
    std::env::remove_var("AWS_PROFILE");
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    std::env::set_var("AWS_CONFIG_FILE", "/nonexistent/opsbake-test");
    std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/opsbake-test");
}

/// moto with the seeded base AMI, or None when peers are skipped.
pub fn moto() -> Option<Moto> {
    aws_env();
    if opsbake_test_support::moto::skip_peers() && opsbake_test_support::moto::binary().is_err() {
        eprintln!("OPSBAKE_SKIP_PEERS=1 and no moto_server: skipped");
        return None;
    }
    Some(
        Moto::start(MotoOptions {
            seed_amis: vec![SeedAmi {
                ami_id: SEED_AMI.into(),
                name: "bosh-aws-xen-hvm-ubuntu-jammy-go_agent-1.0".into(),
                root_device_name: "/dev/sda1".into(),
            }],
            env: vec![],
        })
        .unwrap_or_else(|e| panic!("{e}")),
    )
}

fn tar(dir: &Path, out: &Path, members: &[&str]) {
    let st = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-czf")
        .arg(out)
        .args(members)
        .status()
        .unwrap();
    assert!(st.success(), "tar failed");
}

/// A light AWS stemcell whose MF maps regions to AMIs.
pub fn light_stemcell(dir: &Path, amis: &[(&str, &str)]) -> PathBuf {
    let d = dir.join("light-src");
    std::fs::create_dir_all(&d).unwrap();
    let map: Vec<String> = amis.iter().map(|(r, a)| format!("{r}: {a}")).collect();
    std::fs::write(
        d.join("stemcell.MF"),
        format!(
            "---\nname: bosh-aws-xen-hvm-ubuntu-jammy-go_agent\nversion: '1.0'\nbosh_protocol: '1'\napi_version: 3\nsha1: da39a3ee5e6b4b0d3255bfef95601890afd80709\noperating_system: ubuntu-jammy\nstemcell_formats: [aws-light]\ncloud_properties:\n  infrastructure: aws\n  ami: {{{}}}\n",
            map.join(", ")
        ),
    )
    .unwrap();
    std::fs::write(d.join("image"), b"").unwrap();
    let out = dir.join("light-bosh-stemcell-1.0-aws-xen-hvm-ubuntu-jammy-go_agent.tgz");
    tar(&d, &out, &["stemcell.MF", "image"]);
    out
}

/// A heavy aws-raw stemcell holding `disk` as root.img.
pub fn heavy_stemcell(dir: &Path, disk: &[u8], version: &str) -> PathBuf {
    let d = dir.join(format!("heavy-src-{version}"));
    let inner = d.join("inner");
    std::fs::create_dir_all(&inner).unwrap();
    std::fs::write(inner.join("root.img"), disk).unwrap();
    tar(&inner, &d.join("image"), &["root.img"]);
    let image = std::fs::read(d.join("image")).unwrap();
    let sha1 = hex::encode(sha1::Sha1::digest(&image));
    std::fs::write(
        d.join("stemcell.MF"),
        format!(
            "---\nname: bosh-aws-xen-hvm-ubuntu-jammy-go_agent\nversion: '{version}'\nbosh_protocol: 1\napi_version: 3\nsha1: {sha1}\noperating_system: ubuntu-jammy\nstemcell_formats: [aws-raw]\ncloud_properties: {{name: bosh-aws-xen-hvm-ubuntu-jammy-go_agent, version: '{version}', infrastructure: aws, hypervisor: xen, disk: 1024, disk_format: raw, container_format: bare, os_type: linux, os_distro: ubuntu, architecture: x86_64, root_device_name: /dev/sda1}}\n"
        ),
    )
    .unwrap();
    let out = dir.join(format!(
        "bosh-stemcell-{version}-aws-xen-hvm-ubuntu-jammy-go_agent.tgz"
    ));
    tar(&d, &out, &["stemcell.MF", "image"]);
    out
}

/// Write an aws template (SSH goes to the override 127.0.0.1:2222, never to
/// moto's addresses).
pub fn template_file(
    dir: &Path,
    stemcell: &Path,
    endpoint: &str,
    options: &str,
    name: &str,
) -> PathBuf {
    let t = dir.join(format!("{name}.yml"));
    std::fs::write(
        &t,
        format!(
            "name: appliance\nstemcells:\n  aws: {{path: {}}}\nbuilds:\n  aws:\n    network: {{ssh_cidrs: [203.0.113.0/24]}}\n    ssh: {{user: vcap, host: 127.0.0.1, port: 2222}}\n    options: {{region: us-east-1, endpoint: \"{endpoint}\", instance_type: t3.micro{options}}}\noutputs: {{directory: \"{}\"}}\n",
            stemcell.display(),
            dir.join(format!("out-{name}")).display()
        ),
    )
    .unwrap();
    t
}

/// Write a template and make the aws plan of it.
pub fn plan(
    dir: &Path,
    stemcell: &Path,
    endpoint: &str,
    options: &str,
    build_id: &str,
) -> opsbake_core::plan::BuildPlan {
    let t = template_file(dir, stemcell, endpoint, options, build_id);
    let loaded = opsbake_core::template::load(&t).unwrap();
    let vars =
        opsbake_core::vars::resolve(&loaded, &opsbake_core::vars::VarSources::from_process_env())
            .unwrap();
    opsbake_core::plan::plan_build(&loaded, &vars, Iaas::Aws, build_id).unwrap()
}

/// A build context with its journal under `state`.
pub fn context(
    plan: opsbake_core::plan::BuildPlan,
    state: &Path,
    cleanup_config: serde_json::Value,
) -> (BuildContext, Arc<MemorySink>) {
    let sink = Arc::new(MemorySink::default());
    let journal = Journal::create(
        state,
        Header {
            build_id: plan.build_id.clone(),
            iaas: "aws".into(),
            template: plan.template_path.display().to_string(),
            started_at: "2026-01-01T00:00:00Z".into(),
            process: ProcessIdentity::current(),
            cleanup_config,
        },
    )
    .unwrap();
    let events = Emitter::for_build(sink.clone(), "aws", &plan.build_id);
    (
        BuildContext {
            plan: Arc::new(plan),
            journal: Arc::new(journal),
            events,
            cancel: tokio_util::sync::CancellationToken::new(),
            options: RunOptions::default(),
            creating: Default::default(),
        },
        sink,
    )
}

/// An ephemeral ed25519 key made by ssh-keygen.
pub fn key(dir: &Path) -> KeyPair {
    let p = dir.join(format!("key-{}", rand::random::<u32>()));
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "opsbake-test", "-f"])
        .arg(&p)
        .status()
        .expect("ssh-keygen (Debian openssh-client) is needed");
    assert!(st.success());
    KeyPair {
        public_openssh: std::fs::read_to_string(p.with_extension("pub"))
            .unwrap()
            .trim()
            .to_string(),
        private_openssh: Secret::new(std::fs::read_to_string(&p).unwrap()),
        algorithm: "ssh-ed25519".into(),
    }
}

#[path = "leftovers.rs"]
mod leftovers;
pub use leftovers::*;
