//! `opsbake build --iaas aws --json` killed with SIGKILL at each step (the
//! fault proxy holds the next call, so the kill lands exactly there), then
//! `opsbake cleanup <build-id>`: nothing of the build may be left in moto.
//! And SIGINT at the same steps: the build unwinds itself, no cleanup
//! needed.
//!
//! Steps: after the key pair, after the security group, inside
//! RunInstances, after launch, mid-provisioning (a shell step that prints a
//! marker and keeps running), after CreateImage, mid-copy (CopyImage done in
//! moto, its answer held). The builds that get past `launch` log in to a
//! hardened local sshd playing the instance (its AuthorizedKeysCommand reads
//! the instance's user data from moto), through the CLI's own SSH connector.
//!
//! The CLI binary is `target/debug/opsbake` next to this test's directory
//! (`cargo nextest run --workspace` builds it; after changing the CLI, run
//! `cargo build -p opsbake` before `-p opsbake-iaas-aws`; `OPSBAKE_BIN`
//! overrides).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use opsbake_test_support::fault_proxy::{Fault, FaultProxy};
use opsbake_test_support::moto::instance_sshd;

fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("OPSBAKE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("opsbake"))
        .unwrap();
    assert!(
        p.is_file(),
        "{} missing: build the CLI first (cargo build -p opsbake) or set OPSBAKE_BIN",
        p.display()
    );
    p
}

struct Build {
    child: Child,
    rx: mpsc::Receiver<serde_json::Value>,
    build_id: Option<String>,
    seen: Vec<serde_json::Value>,
}

impl Build {
    fn start(dir: &std::path::Path, template: &std::path::Path) -> Build {
        let mut child = Command::new(bin())
            .current_dir(dir)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--no-progress", "--json", "build"])
            .arg(template)
            .args(["--iaas", "aws"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let rx = opsbake_test_support::cli::event_stream(out);
        Build {
            child,
            rx,
            build_id: None,
            seen: Vec::new(),
        }
    }

    fn wait_for(&mut self, what: &str, pred: impl Fn(&serde_json::Value) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) => {
                    if let Some(id) = v["build_id"].as_str() {
                        self.build_id.get_or_insert_with(|| id.to_string());
                    }
                    let hit = pred(&v);
                    self.seen.push(v);
                    if hit {
                        return;
                    }
                }
                Err(_) => panic!("no `{what}` event within 60 s; seen: {:?}", self.seen),
            }
        }
    }

    fn wait_exit(&mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                use std::os::unix::process::ExitStatusExt;
                return s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0));
            }
            assert!(Instant::now() < deadline, "opsbake did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn created(kind: &'static str) -> impl Fn(&serde_json::Value) -> bool {
    move |v| v["event"] == "resource_created" && v["kind"] == kind
}

fn intent(kind: &'static str) -> impl Fn(&serde_json::Value) -> bool {
    move |v| v["event"] == "resource_intent" && v["kind"] == kind
}

/// Kill the build once `event` is seen and `hold` holds a call; clean up;
/// assert nothing is left.
fn kill_at(
    label: &str,
    hold: &str,
    fault: Fault,
    event: impl Fn(&serde_json::Value) -> bool,
    expect_before_cleanup: &[&str],
) {
    let Some(moto) = moto() else { return };
    let proxy = FaultProxy::start(moto.addr()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sc = light_stemcell(
        dir.path(),
        &[("us-east-1", SEED_AMI), ("eu-west-1", SEED_AMI)],
    );
    let t = template_file(
        dir.path(),
        &sc,
        &proxy.endpoint(),
        ", copy_regions: [eu-west-1]",
        "kill",
    );
    proxy.rule(hold, fault, Some(1));
    let mut b = Build::start(dir.path(), &t);
    b.wait_for(label, event);
    assert_eq!(
        proxy.wait_held(Duration::from_secs(60)).as_deref(),
        Some(hold),
        "{label}: nothing held; calls {:?}",
        proxy
            .calls()
            .iter()
            .map(|c| c.action.clone())
            .collect::<Vec<_>>()
    );
    b.child.kill().unwrap(); // SIGKILL
    assert_eq!(b.wait_exit(), 128 + 9, "{label}");
    let id = b.build_id.clone().unwrap();
    proxy.clear_rules();
    proxy.release();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ep = moto.endpoint();
    let before = rt.block_on(leftovers(&ep, &["us-east-1", "eu-west-1"], &id));
    for what in expect_before_cleanup {
        assert!(
            before.iter().any(|l| l.contains(what)),
            "{label}: expected a {what} left by the kill: {before:?}"
        );
    }
    let out = Command::new(bin())
        .current_dir(dir.path())
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--no-progress", "cleanup", &id])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{label}: cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = rt.block_on(leftovers(&ep, &["us-east-1", "eu-west-1"], &id));
    assert!(after.is_empty(), "{label}: left after cleanup: {after:?}");
}

#[test]
fn sigkill_after_the_security_group_then_cleanup_leaves_nothing() {
    kill_at(
        "security group created",
        "RunInstances",
        Fault::HoldRequest,
        created("aws_security_group"),
        &["security group"],
    );
}

#[test]
fn sigkill_inside_run_instances_then_cleanup_finds_the_instance_by_token() {
    kill_at(
        "instance intent",
        "RunInstances",
        Fault::HoldResponse,
        intent("aws_instance"),
        &["security group", "instance"],
    );
}

#[test]
fn sigkill_after_launch_then_cleanup_leaves_nothing() {
    kill_at(
        "instance created",
        "DescribeInstances",
        Fault::HoldRequest,
        created("aws_instance"),
        &["security group", "instance"],
    );
}

#[test]
fn sigint_after_launch_unwinds_without_cleanup() {
    let Some(moto) = moto() else { return };
    let proxy = FaultProxy::start(moto.addr()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sc = light_stemcell(dir.path(), &[("us-east-1", SEED_AMI)]);
    let t = template_file(dir.path(), &sc, &proxy.endpoint(), "", "int");
    proxy.rule("DescribeInstances", Fault::HoldRequest, Some(1));
    let mut b = Build::start(dir.path(), &t);
    b.wait_for("instance created", created("aws_instance"));
    assert!(proxy.wait_held(Duration::from_secs(60)).is_some());
    let st = Command::new("kill")
        .args(["-INT", &b.child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(b.wait_exit(), 130);
    proxy.release();
    let id = b.build_id.clone().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let after = rt.block_on(leftovers(&moto.endpoint(), &["us-east-1"], &id));
    assert!(after.is_empty(), "left after Ctrl-C: {after:?}");
    assert!(
        b.seen
            .iter()
            .any(|v| v["event"] == "resource_deleted" && v["kind"] == "aws_instance")
            || b.rx
                .try_iter()
                .any(|v| v["event"] == "resource_deleted" && v["kind"] == "aws_instance"),
        "no resource_deleted event for the instance"
    );
}

/// How the build is stopped.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Stop {
    /// SIGKILL, then `opsbake cleanup`.
    Kill,
    /// SIGINT: the build unwinds itself.
    Int,
}

/// The build for the later steps: SSH to a local sshd playing the instance,
/// a copy region, and `provision` as the template's steps.
fn stop_at(
    stop: Stop,
    label: &str,
    hold: Option<(&str, Fault)>,
    event: impl Fn(&serde_json::Value) -> bool,
    expect_before: &[&str],
    provision: &str,
) {
    let Some(moto) = moto() else { return };
    let sshd = instance_sshd(&moto, "us-east-1").unwrap_or_else(|e| panic!("{e}"));
    let proxy = FaultProxy::start(moto.addr()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sc = light_stemcell(
        dir.path(),
        &[("us-east-1", SEED_AMI), ("eu-west-1", SEED_AMI)],
    );
    let t = dir.path().join("stop.yml");
    std::fs::write(
        &t,
        format!(
            "name: appliance\nstemcells:\n  aws: {{path: {}}}\nbuilds:\n  aws:\n    network: {{ssh_cidrs: [203.0.113.0/24]}}\n    ssh: {{user: vcap, host: 127.0.0.1, port: {}, login_timeout: 60s}}\n    options: {{region: us-east-1, endpoint: \"{}\", instance_type: t3.micro, copy_regions: [eu-west-1]}}\n{provision}outputs: {{directory: \"{}\"}}\n",
            sc.display(),
            sshd.port(),
            proxy.endpoint(),
            dir.path().join("out").display()
        ),
    )
    .unwrap();
    if let Some((action, fault)) = &hold {
        proxy.rule(action, fault.clone(), Some(1));
    }
    let mut b = Build::start(dir.path(), &t);
    b.wait_for(label, event);
    if let Some((action, _)) = &hold {
        assert_eq!(
            proxy.wait_held(Duration::from_secs(60)).as_deref(),
            Some(*action),
            "{label}: nothing held; calls {:?}",
            proxy
                .calls()
                .iter()
                .map(|c| c.action.clone())
                .collect::<Vec<_>>()
        );
    }
    let id = b.build_id.clone().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ep = moto.endpoint();
    let regions = ["us-east-1", "eu-west-1"];
    match stop {
        Stop::Kill => {
            b.child.kill().unwrap(); // SIGKILL
            assert_eq!(b.wait_exit(), 128 + 9, "{label}");
            proxy.clear_rules();
            proxy.release();
            let before = rt.block_on(leftovers(&ep, &regions, &id));
            for what in expect_before {
                assert!(
                    before.iter().any(|l| l.contains(what)),
                    "{label}: expected a {what} left by the kill: {before:?}"
                );
            }
            let out = Command::new(bin())
                .current_dir(dir.path())
                .arg("--state-dir")
                .arg(dir.path().join("state"))
                .args(["--no-progress", "cleanup", &id])
                .output()
                .unwrap();
            assert_eq!(
                out.status.code(),
                Some(0),
                "{label}: cleanup: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Stop::Int => {
            proxy.clear_rules();
            let st = Command::new("kill")
                .args(["-INT", &b.child.id().to_string()])
                .status()
                .unwrap();
            assert!(st.success());
            // The cancelled build drops its held call (its connection
            // closes, and the proxy never forwards a held request of a
            // vanished client). Releasing before the exit would race that
            // and forward it: a call that AWS never received.
            assert_eq!(b.wait_exit(), 130, "{label}");
            proxy.release();
            let rest: Vec<serde_json::Value> = b.rx.try_iter().collect();
            b.seen.extend(rest);
            let fin = b
                .seen
                .iter()
                .find(|v| v["event"] == "build_finished")
                .unwrap_or_else(|| panic!("{label}: no build_finished: {:?}", b.seen));
            assert_eq!(fin["outcome"], "cancelled", "{label}: {fin}");
            // The build deleted its own resources (the instance may go
            // with its root volume, deleted first in reverse order).
            assert!(
                b.seen.iter().any(|v| v["event"] == "resource_deleted"),
                "{label}: no resource_deleted event: {:?}",
                b.seen
            );
        }
    }
    let after = rt.block_on(leftovers(&ep, &regions, &id));
    assert!(after.is_empty(), "{label} ({stop:?}): left: {after:?}");
    // The journal agrees: nothing live.
    let j = opsbake_core::journal::Journal::open(&dir.path().join("state"), &id).unwrap();
    assert!(
        j.state().live.is_empty(),
        "{label}: journal still lists {:?}",
        j.state().live
    );
}

fn output(marker: &'static str) -> impl Fn(&serde_json::Value) -> bool {
    move |v| v["event"] == "output" && v["line"].as_str().is_some_and(|l| l.contains(marker))
}

const SLOW_STEP: &str = "provision:\n  - type: shell\n    sudo: false\n    inline: [\"echo opsbake-mid-provisioning\", \"sleep 30\"]\n";

#[test]
fn sigkill_after_the_key_pair_then_cleanup_leaves_nothing() {
    stop_at(
        Stop::Kill,
        "key pair created",
        Some(("DescribeVpcs", Fault::HoldRequest)),
        created("aws_key_pair"),
        &["key pair"],
        "",
    );
}

#[test]
fn sigint_after_the_key_pair_unwinds() {
    stop_at(
        Stop::Int,
        "key pair created",
        Some(("DescribeVpcs", Fault::HoldRequest)),
        created("aws_key_pair"),
        &["key pair"],
        "",
    );
}

#[test]
fn sigkill_mid_provisioning_then_cleanup_leaves_nothing() {
    stop_at(
        Stop::Kill,
        "provisioning output",
        None,
        output("opsbake-mid-provisioning"),
        &["key pair", "security group", "instance"],
        SLOW_STEP,
    );
}

#[test]
fn sigint_mid_provisioning_unwinds() {
    stop_at(
        Stop::Int,
        "provisioning output",
        None,
        output("opsbake-mid-provisioning"),
        &["key pair", "security group", "instance"],
        SLOW_STEP,
    );
}

#[test]
fn sigkill_after_create_image_then_cleanup_leaves_nothing() {
    stop_at(
        Stop::Kill,
        "image created",
        Some(("CopyImage", Fault::HoldRequest)),
        created("aws_image"),
        &["instance", "us-east-1 image"],
        "",
    );
}

#[test]
fn sigint_after_create_image_unwinds() {
    stop_at(
        Stop::Int,
        "image created",
        Some(("CopyImage", Fault::HoldRequest)),
        created("aws_image"),
        &["instance", "image"],
        "",
    );
}

#[test]
fn sigkill_mid_copy_then_cleanup_leaves_nothing() {
    stop_at(
        Stop::Kill,
        "image created",
        Some(("CopyImage", Fault::HoldResponse)),
        created("aws_image"),
        &["instance", "us-east-1 image", "eu-west-1 image"],
        "",
    );
}

#[test]
fn sigint_mid_copy_unwinds() {
    stop_at(
        Stop::Int,
        "image created",
        Some(("CopyImage", Fault::HoldResponse)),
        created("aws_image"),
        &["instance", "image"],
        "",
    );
}
