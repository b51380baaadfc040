//! The CLI and runner end to end with the `localtest` builder (resources are
//! files): exit codes, template errors, SIGKILL + `opsbake cleanup`,
//! Ctrl-C unwinding, `cleanup --all` and a running build, `--on-error`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_opsbake");

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn state(&self) -> PathBuf {
        self.path().join("state")
    }
    fn root(&self) -> PathBuf {
        self.path().join("root")
    }
    fn template(&self, extra_options: &str) -> PathBuf {
        let t = self.path().join("t.yml");
        std::fs::write(
            &t,
            format!(
                "name: demo\nbuilds:\n  localtest:\n    options: {{root: root, resources: 3{extra_options}}}\noutputs: {{directory: out}}\n"
            ),
        )
        .unwrap();
        t
    }
    fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.current_dir(self.path())
            .arg("--state-dir")
            .arg(self.state())
            .arg("--no-progress");
        c
    }
    fn root_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root())
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// A child whose `--json` events are read line by line.
struct Running {
    child: Child,
    rx: mpsc::Receiver<serde_json::Value>,
}

impl Running {
    fn start(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let rx = opsbake_test_support::cli::event_stream(out);
        Running { child, rx }
    }

    /// Wait for an event that satisfies `pred` (readiness: the event, not a sleep).
    fn wait_for(&self, what: &str, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) if pred(&v) => return v,
                Ok(_) => continue,
                Err(_) => panic!("no `{what}` event within 30 s"),
            }
        }
    }

    fn wait_exit(&mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(30);
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

fn is_event(v: &serde_json::Value, name: &str) -> bool {
    v["event"] == name
}

#[test]
fn broken_template_exits_2_names_the_place_and_creates_nothing() {
    let e = Env::new();
    let t = e.path().join("bad.yml");
    std::fs::write(
        &t,
        "name: demo\nbuilds:\n  localtest:\n    options: {root: root}\nprovision:\n  - type: shell\n    inline: [\"true\"]\n    evironment_vars: {A: b}\n",
    )
    .unwrap();
    for sub in ["validate", "build"] {
        let out = e.cmd().arg(sub).arg(&t).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{sub}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(
                "bad.yml:8:5: provision[0].evironment_vars: unknown field `evironment_vars`"
            ),
            "{sub}: {err}"
        );
    }
    assert!(
        !e.state().exists(),
        "nothing may be created for a bad template"
    );
    assert!(!e.root().exists());
}

#[test]
fn undefined_variable_is_caught_at_validate() {
    let e = Env::new();
    let t = e.path().join("t.yml");
    std::fs::write(
        &t,
        "name: demo\nvariables:\n  a: {default: \"${var.b}\"}\n  b: {default: \"${var.a}\"}\nbuilds:\n  localtest: {}\n",
    )
    .unwrap();
    let out = e.cmd().arg("validate").arg(&t).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("t.yml:3:3: variables.a: circular reference: a -> b -> a"),
        "{err}"
    );
    let out = e
        .cmd()
        .args(["validate", "t.yml", "--var", "nope=1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn successful_build_keeps_only_the_image_and_writes_the_manifest() {
    let e = Env::new();
    let t = e.template("");
    let out = e.cmd().arg("build").arg(&t).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files = e.root_files();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].ends_with("-image.txt"));
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(e.path().join("out/manifest.json")).unwrap())
            .unwrap();
    let b = &m["builds"][0];
    assert_eq!(b["builder_type"], "opsbake-localtest");
    assert_eq!(b["inputs"]["template"].as_str().unwrap().len(), 64);
    let sum = std::fs::read_to_string(e.path().join("out/demo-localtest.txt.sha256")).unwrap();
    assert!(sum.ends_with("  demo-localtest.txt\n"), "{sum}");
}

#[test]
fn sigkill_mid_build_then_cleanup_removes_what_it_created() {
    let e = Env::new();
    let t = e.template(", wait_for_file: go");
    let mut c = e.cmd();
    c.arg("--json").arg("build").arg(&t);
    let mut r = Running::start(c);
    let ev = r.wait_for("resource_created localtest_vm", |v| {
        is_event(v, "resource_created") && v["kind"] == "localtest_vm"
    });
    let build_id = ev["build_id"].as_str().unwrap().to_string();
    r.wait_for("capture", |v| {
        is_event(v, "step_started") && v["step"] == "capture"
    });
    r.child.kill().unwrap(); // SIGKILL
    r.wait_exit();
    assert_eq!(
        e.root_files().len(),
        4,
        "3 resources and the VM dir are left"
    );

    let out = e.cmd().args(["cleanup", &build_id]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(e.root_files().is_empty(), "{:?}", e.root_files());
    // A second cleanup finds nothing to do.
    let out = e.cmd().args(["cleanup", &build_id]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn a_kill_between_create_and_record_is_found_by_the_sweep() {
    let e = Env::new();
    let t = e.template(", wait_for_file: go");
    let mut c = e.cmd();
    c.arg("--json").arg("build").arg(&t);
    let mut r = Running::start(c);
    let ev = r.wait_for("capture", |v| {
        is_event(v, "step_started") && v["step"] == "capture"
    });
    let build_id = ev["build_id"].as_str().unwrap().to_string();
    r.child.kill().unwrap();
    r.wait_exit();
    // A resource the build created but never recorded (the "tag" of a
    // localtest resource is its build-id prefix).
    std::fs::write(e.root().join(format!("{build_id}-res-orphan")), "x").unwrap();
    let out = e.cmd().args(["cleanup", &build_id]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(e.root_files().is_empty(), "{:?}", e.root_files());
}

#[test]
fn sigint_cancels_unwinds_and_exits_130() {
    let e = Env::new();
    let t = e.template(", wait_for_file: go");
    let mut c = e.cmd();
    c.arg("--json").arg("build").arg(&t);
    let mut r = Running::start(c);
    r.wait_for("capture", |v| {
        is_event(v, "step_started") && v["step"] == "capture"
    });
    assert_eq!(e.root_files().len(), 4);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(r.child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let fin = r.wait_for("build_finished", |v| is_event(v, "build_finished"));
    assert_eq!(fin["outcome"], "cancelled");
    assert_eq!(r.wait_exit(), 130);
    assert!(e.root_files().is_empty(), "{:?}", e.root_files());
    // The journal says so, and cleanup has nothing left to do.
    let out = e
        .cmd()
        .args(["cleanup", "--all", "--dry-run"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("would delete"));
}

#[test]
fn cleanup_all_never_touches_a_running_build() {
    let e = Env::new();
    let t = e.template(", wait_for_file: go");
    let mut c = e.cmd();
    c.arg("--json").arg("build").arg(&t);
    let mut r = Running::start(c);
    r.wait_for("capture", |v| {
        is_event(v, "step_started") && v["step"] == "capture"
    });
    let out = e.cmd().args(["cleanup", "--all"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("still running"));
    assert_eq!(
        e.root_files().len(),
        4,
        "the running build's resources stay"
    );
    // Let it finish.
    std::fs::write(e.path().join("go"), "").unwrap();
    let fin = r.wait_for("build_finished", |v| is_event(v, "build_finished"));
    assert_eq!(fin["outcome"], "succeeded");
    assert_eq!(r.wait_exit(), 0);
    assert_eq!(e.root_files().len(), 1);
}

#[test]
fn on_error_abort_keeps_resources_for_a_later_cleanup() {
    let e = Env::new();
    let t = e.template(", fail_at: capture");
    let out = e
        .cmd()
        .args(["build", "--on-error", "abort"])
        .arg(&t)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("opsbake cleanup ob-"), "{err}");
    assert_eq!(e.root_files().len(), 4);
    let out = e.cmd().args(["cleanup", "--all"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(e.root_files().is_empty());
}

#[test]
fn a_failed_build_unwinds_its_journal() {
    let e = Env::new();
    let t = e.template(", fail_at: launch");
    let out = e.cmd().arg("--json").arg("build").arg(&t).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let deleted = stdout
        .lines()
        .filter(|l| l.contains("\"event\":\"resource_deleted\""))
        .count();
    assert_eq!(deleted, 4, "{stdout}");
    assert!(e.root_files().is_empty());
}

/// Every IaaS has a builder now: a gcp build whose project comes from nowhere
/// (no option, GOOGLE_PROJECT_ID and GOOGLE_CLOUD_PROJECT unset or empty:
/// the seed's `validate!` example) is refused by the builder's offline
/// checks, at the template's place, before anything is created.
#[test]
fn a_gcp_build_without_a_project_fails_validate_and_creates_nothing() {
    let e = Env::new();
    std::fs::write(e.path().join("sc.tgz"), "x").unwrap();
    let t = e.path().join("t.yml");
    std::fs::write(
        &t,
        "name: demo\nstemcells:\n  gcp: {path: sc.tgz}\nbuilds:\n  gcp:\n    options: {zone: us-central1-a}\n",
    )
    .unwrap();
    for cmd in ["validate", "build"] {
        let out = e
            .cmd()
            .arg(cmd)
            .arg(&t)
            .env("GOOGLE_PROJECT_ID", "")
            .env_remove("GOOGLE_CLOUD_PROJECT")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("t.yml:"), "{cmd}: {err}");
        assert!(
            err.contains("builds.gcp.options.project_id"),
            "{cmd}: {err}"
        );
        assert!(
            err.contains("GOOGLE_PROJECT_ID") && err.contains("GOOGLE_CLOUD_PROJECT"),
            "{cmd}: {err}"
        );
        assert!(!e.state().exists(), "{cmd} created state");
    }
}

#[test]
fn the_published_json_schema_is_current() {
    let out = Command::new(BIN).arg("schema").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let published = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/template.schema.json"),
    )
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        published,
        "docs/template.schema.json is stale: run `opsbake schema > docs/template.schema.json`"
    );
}

#[test]
fn completions_are_generated() {
    let out = Command::new(BIN)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("opsbake"));
}

#[test]
fn a_named_build_without_a_journal_is_swept_by_tag() {
    let e = Env::new();
    let t = e.template("");
    std::fs::create_dir_all(e.root()).unwrap();
    let id = "ob-20260101-000000-localtest-abcdef";
    std::fs::write(e.root().join(format!("{id}-res-0")), "x").unwrap();
    std::fs::create_dir_all(e.root().join(format!("{id}-vm"))).unwrap();
    std::fs::write(e.root().join("ob-other-res-0"), "x").unwrap();
    // Without the template there is nothing to go on.
    let out = e.cmd().args(["cleanup", id]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = e
        .cmd()
        .args(["cleanup", id, "--iaas", "localtest", "--sweep-template"])
        .arg(&t)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(e.root_files(), vec!["ob-other-res-0".to_string()]);
}

#[test]
fn a_closed_stdout_pipe_ends_quietly() {
    // `opsbake schema | head -1`: the reader is gone before opsbake writes
    let mut c = Command::new(BIN)
        .arg("schema")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(c.stdout.take());
    let out = c.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
}
