//! `opsbake build --iaas aws --json` killed with SIGKILL at each step (the
//! fault proxy holds the next call, so the kill lands exactly there), then
//! `opsbake cleanup <build-id>`: nothing of the build may be left in moto.
//! And SIGINT: the build unwinds itself, no cleanup needed.
//!
//! The CLI has no SSH connector wired yet, so it makes no ephemeral key and
//! imports no key pair, and cannot get past `connect`: the kills at the key
//! pair, CreateImage and CopyImage are in `kill_inproc.rs`.
//!
//! The CLI binary is `target/debug/opsbake` next to this test's directory
//! (`cargo nextest run --workspace` builds it; `OPSBAKE_BIN` overrides).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use opsbake_test_support::fault_proxy::{Fault, FaultProxy};

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
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
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
