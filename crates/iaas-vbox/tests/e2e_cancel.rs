//! Cancellation and crash cleanup of a vbox build under QEMU: a cancel
//! (what Ctrl-C does in the CLI) mid-provisioning kills QEMU and leaves no
//! files; after SIGKILL of the building process QEMU keeps running (it is in
//! its own process group) and the journal's unwinding (`opsbake cleanup`)
//! ends it by PID and start time. The build connects through the production
//! connector (`opsbake_comms_ssh::SshConnector`, what the CLI uses).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opsbake_core::events::Emitter;
use opsbake_core::journal::{Journal, Outcome, ProcessIdentity};
use opsbake_core::runner::{BuildJob, CleanupTracker, Runner};
use opsbake_core::template::Iaas;
use opsbake_test_support::build::{self, EventLog};
use tokio_util::sync::CancellationToken;

const VSPHERE_TGZ: &str = "bosh-stemcell-1.0-vsphere-esxi-debian-bookworm-go_agent.tgz";
const TEST: &str = "cancel_and_crash_cleanup_end_qemu";

fn stemcell() -> Option<PathBuf> {
    Some(opsbake_test_support::stemcell::dir()?.join(VSPHERE_TGZ))
}

fn job(dir: &Path, build_id: &str, stemcell: &Path) -> BuildJob {
    std::fs::create_dir_all(dir).unwrap();
    let tpl = dir.join("t.yml");
    std::fs::write(
        &tpl,
        format!(
            r#"name: appliance
stemcells:
  vbox: {{path: "{}"}}
builds:
  vbox:
    memory: 1024
    ssh: {{user: vcap, login_timeout: 10m}}
provision:
  - type: shell
    inline: ["echo long-step-started", "sleep 900"]
outputs:
  directory: "{}"
"#,
            stemcell.display(),
            dir.join("out").display()
        ),
    )
    .unwrap();
    build::job(&tpl, Iaas::Vbox, build_id, opsbake_iaas_vbox::builder)
}

/// The production runner, offline; its events go to `log` (an echoing log:
/// the crash child's parent reads them on its stdout).
fn runner(dir: &Path, log: Arc<EventLog>) -> Runner {
    let mut r = build::runner(dir, log);
    r.options.offline = true;
    r
}

/// The QEMU PID and start time from a `resource_created` event line.
fn qemu_of(line: &str) -> Option<i32> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    (v["event"] == "resource_created" && v["kind"] == "local_process")
        .then(|| v["id"].as_str()?.parse().ok())
        .flatten()
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_crash_cleanup_end_qemu() {
    let Some(stemcell) = stemcell() else { return };
    // child mode: build until killed
    if let Ok(dir) = std::env::var("OPSBAKE_VBOX_E2E_HANG") {
        let log = Arc::new(EventLog::echoing());
        let r = runner(Path::new(&dir), log);
        r.run_all(
            vec![job(Path::new(&dir), "vbox-crash", &stemcell)],
            CancellationToken::new(),
        )
        .await;
        return;
    }
    let t = tempfile::tempdir().unwrap();

    // 1. cancel mid-provisioning
    let dir = t.path().join("cancel");
    let log = Arc::new(EventLog::echoing());
    let cancel = CancellationToken::new();
    let r = runner(&dir, log.clone());
    let j = job(&dir, "vbox-cancel", &stemcell);
    let c2 = cancel.clone();
    let watcher = {
        let log = log.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(900);
            while Instant::now() < deadline {
                if log.lines().iter().any(|l| l.contains("long-step-started")) {
                    c2.cancel();
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            c2.cancel();
            false
        })
    };
    let res = r.run_all(vec![j], cancel.clone()).await;
    let started = log.lines().iter().any(|l| l.contains("long-step-started"));
    watcher.abort();
    assert!(started, "the long step never started: {:?}", res[0].error);
    let events = log.lines();
    let pid = events
        .iter()
        .find_map(|l| qemu_of(l))
        .expect("a QEMU process was recorded");
    assert_eq!(res[0].outcome, Outcome::Cancelled, "{:?}", res[0].error);
    assert!(res[0].leftovers.is_empty(), "{:?}", res[0].leftovers);
    assert!(!alive(pid), "QEMU {pid} survived the cancel");
    assert!(
        !dir.join("state/builds/vbox-cancel/vbox").exists(),
        "work dir left"
    );
    assert!(!dir.join("out/appliance.ova").exists());

    // 2. SIGKILL of the building process, then the journal's unwinding
    let dir = t.path().join("crash");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--nocapture"])
        .env("OPSBAKE_VBOX_E2E_HANG", &dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut qemu = None;
    loop {
        let l = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the crash child did not reach the long step");
        if let Some(p) = qemu_of(&l) {
            qemu = Some(p);
        }
        if l.contains("long-step-started") {
            break;
        }
    }
    let qemu = qemu.expect("QEMU pid");
    nix_kill(child.id());
    let _ = child.wait();
    assert!(
        alive(qemu),
        "QEMU died with its parent: nothing left to test"
    );
    let ident = ProcessIdentity::of(qemu).unwrap();
    let journal = Journal::open(&dir.join("state"), "vbox-crash").unwrap();
    let sink = Arc::new(EventLog::echoing());
    let left = opsbake_core::runner::unwind(
        &journal,
        &opsbake_iaas_vbox::VboxDeleter,
        &Emitter::for_build(sink, "vbox", "vbox-crash"),
        &CleanupTracker::default(),
    )
    .await;
    assert!(left.is_empty(), "{left:?}");
    assert!(!ident.is_alive(), "QEMU {qemu} survived the cleanup");
    assert!(!dir.join("state/builds/vbox-crash/vbox").exists());
}

fn nix_kill(pid: u32) {
    let st = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}
