//! The `ssh` builder through core's runner, end to end against the test sshd:
//! validate, launch (the SSH target from the template), connect, the staged
//! provisioning, capture (the host as artifact), manifest. The connector is
//! the production one, comms-ssh's `SshConnector` (what `opsbake build` uses).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use opsbake_comms_ssh::{KeyKind, KeyPair as SshKey, SshConnector};
use opsbake_core::events::{EventKind, MemorySink};
use opsbake_core::journal::Outcome;
use opsbake_core::plan::plan_build;
use opsbake_core::runner::{BuildJob, Runner};
use opsbake_core::template::{parse, Iaas};
use opsbake_core::transport::Stream;
use opsbake_core::vars::{resolve, VarSources};
use opsbake_provision::{ssh_builder, Provision};
use opsbake_test_support::sshd::{skip_peers, Sshd, SshdError, SshdOptions};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn the_ssh_builder_provisions_an_existing_host_through_the_runner() {
    let key = SshKey::generate(KeyKind::Ed25519, "opsbake-test").unwrap();
    let mut o = SshdOptions::default();
    o.authorized_keys.push(key.public_openssh().to_string());
    let sshd = match Sshd::start(o) {
        Ok(s) => s,
        Err(e @ SshdError::Missing { .. }) if skip_peers() => {
            eprintln!("skipped: {e}");
            return;
        }
        Err(e) => panic!("test sshd: {e}"),
    };
    let d = tempfile::tempdir().unwrap();
    let keyfile = d.path().join("id");
    key.write_private_key(&keyfile).unwrap();
    std::fs::write(
        d.path().join("hello.sh"),
        "#!/bin/sh\necho \"hello from $(id -un) in $(basename \"$OPSBAKE_STAGING\")\"\n",
    )
    .unwrap();
    let yaml = format!(
        "name: t\nbuilds:\n  ssh:\n    ssh:\n      host: 127.0.0.1\n      port: {port}\n      private_key_file: id\n      host_key: {{pin: [\"{hk}\"]}}\n      login_timeout: 20s\n    options: {{allow_loopback: true}}\nprovision:\n  - type: shell\n    script: hello.sh\n    sudo: false\n  - type: shell-local\n    inline: [\"echo local\"]\noutputs: {{directory: {out}}}\n",
        port = sshd.port(),
        hk = sshd.host_ed25519_key().unwrap(),
        out = d.path().join("out").display()
    );
    let path = d.path().join("t.yml");
    std::fs::write(&path, &yaml).unwrap();
    let l = parse(&path, yaml.clone()).unwrap();
    let vars = resolve(&l, &VarSources::default()).unwrap();
    let plan = plan_build(&l, &vars, Iaas::Ssh, "ssh-e2e-1").unwrap();
    let inputs = opsbake_core::manifest::input_digests(&plan, &vars).unwrap();
    let builder = ssh_builder::builder(&plan).unwrap();
    let sink = Arc::new(MemorySink::default());
    let mut runner = Runner::new(d.path().join("state"), sink.clone());
    runner.connector = Some(Arc::new(SshConnector));
    runner.provisioning = Some(Arc::new(Provision::default()));
    let results = tokio::time::timeout(
        Duration::from_secs(60),
        runner.run_all(
            vec![BuildJob {
                plan,
                builder,
                inputs: inputs.into(),
            }],
            CancellationToken::new(),
        ),
    )
    .await
    .unwrap();
    let r = &results[0];
    assert_eq!(r.outcome, Outcome::Succeeded, "{:?}", r.error);
    assert_eq!(
        r.artifact.as_ref().unwrap().id,
        format!("vcap@127.0.0.1:{}", sshd.port())
    );
    let lines: Vec<(String, Stream, String)> = sink
        .events()
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::Output { step, stream, line } => Some((step, stream, line)),
            _ => None,
        })
        .collect();
    assert_eq!(
        lines,
        [
            (
                "shell hello.sh".to_string(),
                Stream::Stdout,
                "hello from vcap in ssh-e2e-1".to_string()
            ),
            (
                "shell-local".to_string(),
                Stream::Stdout,
                "local".to_string()
            ),
        ]
    );
    assert!(d.path().join("out/manifest.json").is_file());
    assert!(!std::path::Path::new("/var/tmp/opsbake/ssh-e2e-1").exists());
}
