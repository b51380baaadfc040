//! Provisioning over the local transport (a directory standing in for the
//! VM) and over a recording fake transport.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::{local_vm, Call, Harness, Recorder};
use opsbake_core::builder::{BuildContext, Provisioning, RunOptions};
use opsbake_core::local::LocalTransport;
use opsbake_core::template::Iaas;
use opsbake_core::transport::{Stream, Transport};
use opsbake_provision::breakpoint::Pauser;
use opsbake_provision::{Provision, ProvisionError, ProvisionOptions};

const HEAD: &str = "name: t\nbuilds:\n  localtest: {}\n";

fn local(h: &Harness) -> Arc<dyn Transport> {
    Arc::new(LocalTransport::new(local_vm(h.path())))
}

/// The local transport, every command recorded.
struct Counted {
    inner: LocalTransport,
    execs: std::sync::Mutex<Vec<String>>,
}

#[async_trait]
impl Transport for Counted {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn exec(
        &self,
        req: opsbake_core::transport::ExecRequest,
        sink: Arc<dyn opsbake_core::transport::OutputSink>,
    ) -> Result<opsbake_core::transport::ExitStatus, opsbake_core::transport::TransportError> {
        self.execs.lock().unwrap().push(req.command.clone());
        self.inner.exec(req, sink).await
    }
    async fn upload(
        &self,
        items: Vec<opsbake_core::transport::Upload>,
    ) -> Result<opsbake_core::transport::TransferReport, opsbake_core::transport::TransportError>
    {
        self.inner.upload(items).await
    }
    async fn download(
        &self,
        items: Vec<opsbake_core::transport::Download>,
    ) -> Result<opsbake_core::transport::TransferReport, opsbake_core::transport::TransportError>
    {
        self.inner.download(items).await
    }
    async fn reconnect(
        &self,
        timeout: Duration,
    ) -> Result<(), opsbake_core::transport::TransportError> {
        self.inner.reconnect(timeout).await
    }
    async fn close(&self) -> Result<(), opsbake_core::transport::TransportError> {
        self.inner.close().await
    }
    fn command_path(&self, remote: &str) -> String {
        self.inner.command_path(remote)
    }
}

fn staging_dir(h: &Harness) -> std::path::PathBuf {
    h.path().join("vm/var/tmp/opsbake").join(h.ctx.build_id())
}

#[tokio::test]
async fn scripts_call_each_other_by_name_with_env_intact() {
    let yaml = format!(
        "{HEAD}provision:\n  - type: shell\n    scripts: [scripts/main.sh]\n    environment_vars:\n      GREETING: \"it's a \\\"quoted\\\" value  with  spaces $HOME `x`\"\n      EMPTY: \"\"\n  - type: shell\n    inline: [\"echo inline in $(basename $(pwd)) && helper.sh from-inline\", \"echo oops >&2\"]\n  - type: shell\n    script: lib/helper.sh\n"
    );
    let h = Harness::new(
        &yaml,
        Iaas::Localtest,
        &[
            (
                "scripts/main.sh",
                "#!/bin/sh\nset -e\nprintf 'greeting=[%s] empty=[%s]\\n' \"$GREETING\" \"$EMPTY\"\nhelper.sh by-path\n./helper.sh by-dot\n\"$OPSBAKE_STAGING/scripts/helper.sh\" by-staging\necho to-stderr >&2\n",
                0o755,
            ),
            ("lib/helper.sh", "#!/bin/sh\necho \"helper called $1\"\n", 0o644),
        ],
        RunOptions::default(),
    );
    let t = local(&h);
    Provision::default().run(&h.ctx, t).await.unwrap();
    let out = h.output("shell main.sh");
    let stdout: Vec<&str> = out
        .iter()
        .filter(|(s, _)| *s == Stream::Stdout)
        .map(|(_, l)| l.as_str())
        .collect();
    assert_eq!(
        stdout,
        [
            "greeting=[it's a \"quoted\" value  with  spaces $HOME `x`] empty=[]",
            "helper called by-path",
            "helper called by-dot",
            "helper called by-staging",
        ]
    );
    assert!(
        out.contains(&(Stream::Stderr, "to-stderr".to_string())),
        "{out:?}"
    );
    let inline = h.output("shell");
    assert!(
        inline.contains(&(Stream::Stdout, "inline in scripts".to_string())),
        "{inline:?}"
    );
    assert!(inline.contains(&(Stream::Stdout, "helper called from-inline".to_string())));
    assert!(inline.contains(&(Stream::Stderr, "oops".to_string())));
    assert_eq!(
        h.output("shell helper.sh"),
        [(Stream::Stdout, "helper called ".to_string())]
    );
    // The staging dir is gone after the build.
    assert!(!staging_dir(&h).exists());
}

/// The last step removes the staging dir in its own exec (after its
/// scripts succeeded): a build of two shell steps is three commands
/// (staging, step 1, step 2 + removal), with nothing left behind; when the
/// last step fails, the removal is a command of its own and still runs.
#[tokio::test]
async fn the_last_step_removes_the_staging_dir_in_its_own_exec() {
    for (last, ok) in [("echo last", true), ("exit 4", false)] {
        let yaml = format!(
            "{HEAD}provision:\n  - type: shell\n    inline: [\"echo first\"]\n  - type: shell\n    inline: [\"{last}\"]\n"
        );
        let h = Harness::new(&yaml, Iaas::Localtest, &[], RunOptions::default());
        let t = Arc::new(Counted {
            inner: LocalTransport::new(local_vm(h.path())),
            execs: Default::default(),
        });
        let r = Provision::default().run(&h.ctx, t.clone()).await;
        assert_eq!(r.is_ok(), ok, "{r:?}");
        let execs = t.execs.lock().unwrap().clone();
        let rm = format!("rm -rf {}", staging_dir(&h).display());
        let removals: Vec<usize> = (0..execs.len())
            .filter(|&i| execs[i].contains("rm -rf"))
            .collect();
        if ok {
            assert_eq!(execs.len(), 3, "{execs:#?}");
            assert_eq!(removals, [2], "{execs:#?}");
            assert!(execs[2].contains("inline-02.sh"), "{}", execs[2]);
            assert!(h
                .output("shell")
                .contains(&(Stream::Stdout, "last".to_string())));
        } else {
            // The failed step's exec carried the removal, which did not run.
            assert_eq!(execs.len(), 4, "{execs:#?}");
            assert_eq!(removals, [2, 3], "{execs:#?}");
            assert!(execs[3].contains(&rm), "{}", execs[3]);
        }
        assert!(!staging_dir(&h).exists());
    }
}

#[tokio::test]
async fn keep_staging_keeps_the_scripts_under_their_names() {
    let yaml = format!("{HEAD}provision:\n  - type: shell\n    scripts: [a.sh, b.sh]\n");
    let h = Harness::new(
        &yaml,
        Iaas::Localtest,
        &[
            ("a.sh", "#!/bin/sh\necho a\n", 0o755),
            ("b.sh", "#!/bin/sh\nexec a.sh\n", 0o755),
        ],
        RunOptions {
            keep_staging: true,
            ..Default::default()
        },
    );
    Provision::default().run(&h.ctx, local(&h)).await.unwrap();
    let d = staging_dir(&h);
    assert!(d.join("scripts/a.sh").is_file());
    assert!(d.join("scripts/b.sh").is_file());
    assert!(d.join("run").is_file());
    assert_eq!(h.output("shell b.sh"), [(Stream::Stdout, "a".to_string())]);
}

#[tokio::test]
async fn exit_codes_outside_valid_exit_codes_fail_with_the_output_tail() {
    let yaml = format!(
        "{HEAD}provision:\n  - type: shell\n    name: accepts-3\n    inline: [\"exit 3\"]\n    valid_exit_codes: [0, 3]\n  - type: shell\n    name: noisy\n    inline: [\"i=1; while [ $i -le 30 ]; do echo line-$i; i=$((i+1)); done; echo bad-thing >&2; exit 7\"]\n  - type: shell\n    name: never\n    inline: [\"touch /never\"]\n"
    );
    let h = Harness::new(&yaml, Iaas::Localtest, &[], RunOptions::default());
    let e = Provision::default()
        .run(&h.ctx, local(&h))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("step `noisy` failed"), "{e}");
    assert!(e.contains("exit code 7"), "{e}");
    assert!(e.contains("valid exit codes: [0]"), "{e}");
    assert!(e.contains("last 20 line(s)"), "{e}");
    assert!(e.contains("stdout| line-30"), "{e}");
    assert!(e.contains("stdout| line-12"), "{e}");
    assert!(!e.contains("line-11\n"), "{e}");
    assert!(e.contains("stderr| bad-thing"), "{e}");
    assert!(h.output("never").is_empty());
    assert!(
        !staging_dir(&h).exists(),
        "staging removed after a failure too"
    );
}

#[tokio::test]
async fn timeout_and_retries() {
    let yaml = format!(
        "{HEAD}provision:\n  - type: shell\n    name: flaky\n    max_retries: 2\n    inline: [\"n=$(cat \\\"$COUNTER\\\" 2>/dev/null || echo 0); n=$((n+1)); echo $n > \\\"$COUNTER\\\"; echo attempt $n; [ $n -ge 3 ]\"]\n    environment_vars: {{COUNTER: \"COUNTER_PATH\"}}\n  - type: shell\n    name: slow\n    timeout: 1s\n    inline: [\"echo started\", \"sleep 30\"]\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let counter = dir.path().join("counter");
    let yaml = yaml.replace("COUNTER_PATH", &counter.display().to_string());
    let h = Harness::in_dir(dir, &yaml, Iaas::Localtest, &[], RunOptions::default());
    let p = Provision::new(ProvisionOptions {
        retry_backoff: Duration::from_millis(10),
        ..Default::default()
    });
    let started = std::time::Instant::now();
    let e = p.run(&h.ctx, local(&h)).await.unwrap_err().to_string();
    assert_eq!(std::fs::read_to_string(&counter).unwrap().trim(), "3");
    assert!(
        e.starts_with("step `slow` failed: timed out after 1s"),
        "{e}"
    );
    assert!(e.contains("stdout| started"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(20));
    let warns = h
        .messages()
        .into_iter()
        .filter(|m| m.contains("flaky: attempt"))
        .count();
    assert_eq!(warns, 2);
}

#[tokio::test]
async fn file_trees_keep_modes_and_follow_one_destination_rule() {
    use std::os::unix::fs::PermissionsExt as _;
    let yaml = format!(
        "{HEAD}provision:\n  - type: file\n    source: tree\n    destination: /srv/app\n  - type: file\n    source: single.txt\n    destination: /etc/app/\n  - type: file\n    source: single.txt\n    destination: /etc/renamed.conf\n    mode: \"0600\"\n  - type: file\n    content: \"hello\\n\"\n    destination: /etc/motd\n  - type: file\n    direction: download\n    source: /srv/app/bin/run\n    destination: fetched/\n"
    );
    let h = Harness::new(
        &yaml,
        Iaas::Localtest,
        &[
            ("tree/bin/run", "#!/bin/sh\n", 0o750),
            ("tree/etc/conf", "x=1\n", 0o640),
            ("single.txt", "s\n", 0o644),
        ],
        RunOptions::default(),
    );
    Provision::default().run(&h.ctx, local(&h)).await.unwrap();
    let vm = h.path().join("vm");
    let mode = |p: &str| std::fs::metadata(vm.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("srv/app/bin/run"), 0o750);
    assert_eq!(mode("srv/app/etc/conf"), 0o640);
    assert!(vm.join("etc/app/single.txt").is_file());
    assert_eq!(mode("etc/renamed.conf"), 0o600);
    assert_eq!(
        std::fs::read_to_string(vm.join("etc/motd")).unwrap(),
        "hello\n"
    );
    assert!(h.path().join("fetched/run").is_file());
}

#[tokio::test]
async fn shell_local_runs_on_the_build_host_in_the_template_dir() {
    let yaml = format!(
        "{HEAD}provision:\n  - type: shell-local\n    inline: [\"echo local $(basename $PWD) \\\"$X\\\"\"]\n    environment_vars: {{X: \"a  b\"}}\n  - type: shell-local\n    script: build.sh\n"
    );
    let h = Harness::new(
        &yaml,
        Iaas::Localtest,
        &[("build.sh", "echo no-exec-bit-ok\n", 0o644)],
        RunOptions::default(),
    );
    // No transport calls at all: a recorder sees nothing.
    let rec = Recorder::new(1000);
    Provision::default().run(&h.ctx, rec.clone()).await.unwrap();
    assert!(rec.calls().is_empty(), "{:?}", rec.calls());
    let name = h.path().file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(
        h.output("shell-local"),
        [(Stream::Stdout, format!("local {name} a  b"))]
    );
    assert_eq!(
        h.output("shell-local build.sh"),
        [(Stream::Stdout, "no-exec-bit-ok".to_string())]
    );
}

#[tokio::test]
async fn one_upload_batch_then_one_exec_per_step() {
    let yaml = "name: t\nbuilds:\n  ssh:\n    ssh: {host: build-vm.invalid, password: x}\nprovision:\n  - type: shell\n    scripts: [a.sh, b.sh]\n  - type: shell\n    inline: [\"echo hi\"]\n    environment_vars: {K: \"v w\"}\n  - type: shell\n    script: a.sh\n    sudo: false\n";
    let h = Harness::new(
        yaml,
        Iaas::Ssh,
        &[("a.sh", "echo a\n", 0o644), ("b.sh", "echo b\n", 0o644)],
        RunOptions::default(),
    );
    let rec = Recorder::new(1000);
    Provision::default().run(&h.ctx, rec.clone()).await.unwrap();
    let id = h.ctx.build_id().to_string();
    let st = format!("/var/tmp/opsbake/{id}");
    let calls = rec.calls();
    // The scripts and the wrapper (a few text files) are written by the
    // command that makes the staging dir: no upload, one round trip less.
    let Call::Exec(mkdir, _) = &calls[0] else {
        panic!("{calls:?}")
    };
    assert!(mkdir.contains(&format!("mkdir {st}")), "{mkdir}");
    for f in [
        "run",
        "scripts/a.sh",
        "scripts/b.sh",
        "scripts/inline-02.sh",
    ] {
        assert!(mkdir.contains(&format!("> {st}/{f};")), "{f}: {mkdir}");
    }
    assert!(
        mkdir.contains("'echo a\n'") && mkdir.contains("'echo b\n'"),
        "{mkdir}"
    );
    let execs: Vec<String> = rec.execs().into_iter().skip(1).collect();
    assert_eq!(execs.len(), 4, "{execs:#?}");
    // The two scripts of the first step: one exec running both in turn,
    // under one sudo, the wrapper's PATH and directory set once, each
    // script started directly with the variables exported.
    assert!(
        execs[0].starts_with("sudo -n /bin/sh -c 'PATH="),
        "{}",
        execs[0]
    );
    assert!(
        execs[0].contains(&format!("cd {st}/scripts || exit 125")),
        "{}",
        execs[0]
    );
    assert_eq!(execs[0].matches("sudo").count(), 1, "{}", execs[0]);
    let a = format!("export OPSBAKE_STAGING={st}; exec {st}/scripts/a.sh");
    let b = format!("export OPSBAKE_STAGING={st}; exec {st}/scripts/b.sh");
    let (pa, pb) = (execs[0].find(&a).unwrap(), execs[0].find(&b).unwrap());
    assert!(pa < pb, "{}", execs[0]);
    assert!(execs[0].contains(" start 0") && execs[0].contains(" start 1"));
    assert_eq!(
        execs[1],
        format!("sudo -n env OPSBAKE_STAGING={st} K='v w' {st}/run {st}/scripts/inline-02.sh")
    );
    // The last step (one script, no sudo): folded as a batch that also
    // removes the staging dir once its script succeeded, as the login user.
    assert!(execs[2].starts_with("PATH="), "{}", execs[2]);
    assert!(
        execs[2].contains(&format!("exec {st}/scripts/a.sh")),
        "{}",
        execs[2]
    );
    assert!(
        execs[2].contains(&format!("rm -rf {st} 2>/dev/null || sudo -n rm -rf {st}")),
        "{}",
        execs[2]
    );
    // The recorder prints no report, so nothing says the removal ran: it
    // runs again as a command of its own.
    assert!(
        execs[3].starts_with(&format!("rm -rf {st} 2>/dev/null || sudo -n rm -rf {st}")),
        "{}",
        execs[3]
    );
    // No upload in the whole build.
    assert_eq!(
        calls
            .iter()
            .filter(|c| matches!(c, Call::Upload(_)))
            .count(),
        0
    );
}

#[tokio::test]
async fn expect_disconnect_reconnects_and_the_next_step_runs() {
    let yaml = "name: t\nbuilds:\n  ssh:\n    ssh: {host: build-vm.invalid, password: x}\nprovision:\n  - type: shell\n    name: reboot\n    inline: [\"reboot\"]\n    expect_disconnect: true\n    start_retry_timeout: 2m\n  - type: shell\n    name: after\n    inline: [\"echo after\"]\n  - type: shell\n    name: reboot-late\n    inline: [\"shutdown -r now\"]\n    expect_disconnect: true\n  - type: shell\n    name: last\n    inline: [\"echo last\"]\n";
    let h = Harness::new(yaml, Iaas::Ssh, &[], RunOptions::default());
    let rec = Recorder::new(1000);
    // The first reboot drops the connection during the command; the second
    // exits 0 and the connection drops a moment later, on the watch.
    rec.answer("inline-01.sh", &[], Err("connection reset"), 1);
    rec.answer(
        "cat /proc/sys/kernel/random/boot_id",
        &["guest-boot-1"],
        Ok(0),
        2,
    );
    rec.answer("cat /proc/sys/kernel/random/boot_id", &[], Err("eof"), 1);
    Provision::default().run(&h.ctx, rec.clone()).await.unwrap();
    let calls = rec.calls();
    let pos = |pred: &dyn Fn(&Call) -> bool| calls.iter().position(pred).unwrap();
    // A step's exec (the staging mkdir names every script too).
    let runs = |s: &str, name: &str| s.contains(name) && !s.contains("mkdir ");
    let first_reboot = pos(&|c| matches!(c, Call::Exec(s, _) if runs(s, "inline-01.sh")));
    let reconnects: Vec<usize> = calls
        .iter()
        .enumerate()
        .filter(|(_, c)| matches!(c, Call::Reconnect))
        .map(|(i, _)| i)
        .collect();
    let after = pos(&|c| matches!(c, Call::Exec(s, _) if runs(s, "inline-02.sh")));
    let second = pos(&|c| matches!(c, Call::Exec(s, _) if runs(s, "inline-03.sh")));
    let last = pos(&|c| matches!(c, Call::Exec(s, _) if runs(s, "inline-04.sh")));
    assert_eq!(reconnects.len(), 2, "{calls:#?}");
    assert!(first_reboot < reconnects[0] && reconnects[0] < after);
    assert!(second < reconnects[1] && reconnects[1] < last);
}

#[tokio::test]
async fn chef_solo_is_staged_and_invoked_at_the_right_level() {
    let yaml = "name: t\nbuilds:\n  ssh:\n    ssh: {host: build-vm.invalid, password: x}\nprovision:\n  - type: chef-solo\n    cookbook_paths: [recipes]\n    roles_path: roles\n    run_list: [\"recipe[app]\"]\n    json: {app: {port: 81}}\n    log_level: warn\n";
    let files = [
        ("recipes/app/recipes/default.rb", "log 'x'\n", 0o644),
        ("roles/r.json", "{}\n", 0o644),
    ];
    for (debug, level) in [(false, "warn"), (true, "debug")] {
        let h = Harness::new(
            yaml,
            Iaas::Ssh,
            &files,
            RunOptions {
                debug,
                ..Default::default()
            },
        );
        let rec = Recorder::new(1000);
        let p = Provision::default().with_pauser(Arc::new(CountingPauser::default()));
        p.run(&h.ctx, rec.clone()).await.unwrap();
        let st = format!("/var/tmp/opsbake/{}", h.ctx.build_id());
        let ups = rec
            .calls()
            .into_iter()
            .find_map(|c| match c {
                Call::Upload(u) => Some(u),
                _ => None,
            })
            .unwrap();
        for want in [
            "chef-01/cookbooks-0",
            "chef-01/roles",
            "chef-01/solo.rb",
            "chef-01/node.json",
        ] {
            assert!(ups.contains(&format!("{st}/{want}")), "{want} in {ups:?}");
        }
        let execs = rec.execs();
        assert!(
            execs.iter().any(|e| e.starts_with("command -v chef-solo")),
            "{execs:?}"
        );
        assert!(
            execs.contains(&format!(
                "sudo -n chef-solo --no-color -c {st}/chef-01/solo.rb -j {st}/chef-01/node.json -l {level}"
            )),
            "{execs:#?}"
        );
    }
}

#[tokio::test]
async fn chef_install_omnitruck_is_refused_offline() {
    let yaml = "name: t\nbuilds:\n  ssh:\n    ssh: {host: build-vm.invalid, password: x}\nprovision:\n  - type: chef-solo\n    run_list: [\"recipe[app]\"]\n    install: omnitruck\n";
    let h = Harness::new(
        yaml,
        Iaas::Ssh,
        &[],
        RunOptions {
            offline: true,
            ..Default::default()
        },
    );
    let e = Provision::default()
        .run(&h.ctx, Recorder::new(0))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("--offline"), "{e}");
}

#[derive(Default)]
struct CountingPauser {
    n: AtomicUsize,
    labels: std::sync::Mutex<Vec<String>>,
}

#[async_trait]
impl Pauser for CountingPauser {
    async fn pause(
        &self,
        _ctx: &BuildContext,
        label: &str,
        _note: &str,
    ) -> Result<(), ProvisionError> {
        self.n.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut l) = self.labels.lock() {
            l.push(label.to_string());
        }
        Ok(())
    }
}

#[tokio::test]
async fn debug_adds_a_breakpoint_after_every_step() {
    let yaml = format!("{HEAD}provision:\n  - type: shell-local\n    name: one\n    inline: [\"true\"]\n  - type: breakpoint\n    note: look\n  - type: shell-local\n    name: two\n    inline: [\"true\"]\n");
    let h = Harness::new(
        &yaml,
        Iaas::Localtest,
        &[],
        RunOptions {
            debug: true,
            ..Default::default()
        },
    );
    let pauser = Arc::new(CountingPauser::default());
    Provision::default()
        .with_pauser(pauser.clone())
        .run(&h.ctx, Recorder::new(0))
        .await
        .unwrap();
    assert_eq!(
        *pauser.labels.lock().unwrap(),
        ["after one", "breakpoint", "after two"]
    );
}

#[tokio::test]
async fn a_breakpoint_without_a_terminal_is_skipped_with_a_warning() {
    let yaml = format!("{HEAD}provision:\n  - type: breakpoint\n    note: look here\n");
    let h = Harness::new(&yaml, Iaas::Localtest, &[], RunOptions::default());
    // cargo test / nextest run without a terminal on stdin.
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return;
    }
    Provision::default()
        .run(&h.ctx, Recorder::new(0))
        .await
        .unwrap();
    assert!(
        h.messages()
            .iter()
            .any(|m| m.starts_with("warn: breakpoint `breakpoint` skipped")),
        "{:?}",
        h.messages()
    );
}

#[tokio::test]
async fn the_handoff_refuses_the_build_host() {
    let yaml =
        format!("{HEAD}provision:\n  - type: shell\n    inline: [\"true\"]\n  - type: handoff\n");
    let h = Harness::new(&yaml, Iaas::Localtest, &[], RunOptions::default());
    let e = Provision::default()
        .run(&h.ctx, local(&h))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("hand-off refused"), "{e}");
    assert!(e.contains("build host"), "{e}");
    assert!(h.output("shell").is_empty(), "nothing ran");
    assert!(!staging_dir(&h).exists());

    // A loopback target of the ssh builder is refused too, even with another kernel.
    let yaml = "name: t\nbuilds:\n  ssh:\n    ssh: {host: 127.0.0.1, password: x}\n    options: {allow_loopback: true}\nprovision:\n  - type: handoff\n";
    let h = Harness::new(yaml, Iaas::Ssh, &[], RunOptions::default());
    let rec = Recorder::new(1000);
    let e = Provision::default()
        .run(&h.ctx, rec.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("loopback"), "{e}");
    assert!(
        !rec.execs()
            .iter()
            .any(|c| c.contains("sudo -n true") || c.contains("sudo -S") || c.contains("handoff")),
        "{:?}",
        rec.execs()
    );
    assert!(
        !rec.calls().iter().any(|c| matches!(c, Call::Upload(_))),
        "nothing uploaded"
    );
}

#[tokio::test]
async fn handoff_grants_with_the_password_once_and_runs_the_uploaded_script() {
    let yaml = "name: t\nbuilds:\n  ssh:\n    ssh: {host: build-vm.invalid, private_key_file: key}\nprovision:\n  - type: shell\n    inline: [\"echo hi\"]\n  - type: handoff\n    sudo_password: s3cret\n";
    let h = Harness::new(
        yaml,
        Iaas::Ssh,
        &[("key", "k", 0o600)],
        RunOptions::default(),
    );
    let rec = Recorder::new(1000);
    // sudo needs the password at first; after the grant it does not; after
    // the hand-off it must not work any more.
    rec.answer("sudo -n true", &[], Ok(1), 1);
    rec.answer("sudo -n true", &[], Ok(0), 1);
    rec.answer("sudo -n true", &[], Ok(1), 1);
    Provision::default().run(&h.ctx, rec.clone()).await.unwrap();
    let calls = rec.calls();
    let st = format!("/var/tmp/opsbake/{}", h.ctx.build_id());
    let ups = calls
        .iter()
        .find_map(|c| match c {
            Call::Upload(u) => Some(u.clone()),
            _ => None,
        })
        .unwrap();
    assert!(ups.contains(&format!("{st}/handoff/handoff.sh")));
    assert!(
        !ups.iter().any(|u| u.contains("ovf")),
        "no OVF unit for ssh builds: {ups:?}"
    );
    let with_stdin: Vec<(String, Vec<u8>)> = calls
        .iter()
        .filter_map(|c| match c {
            Call::Exec(s, Some(i)) => Some((s.clone(), i.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(with_stdin.len(), 1, "the password is sent exactly once");
    assert!(with_stdin[0].0.starts_with("sudo -S -k -p ''"));
    assert_eq!(with_stdin[0].1, b"s3cret\n");
    assert!(
        !rec.execs().iter().any(|c| c.contains("s3cret")),
        "never on a command line"
    );
    let execs = rec.execs();
    let grant = execs.iter().position(|c| c.starts_with("sudo -S")).unwrap();
    let step = execs
        .iter()
        .position(|c| c.contains("inline-01.sh"))
        .unwrap();
    let ho = execs
        .iter()
        .position(|c| c == &format!("sudo -n sh {st}/handoff/handoff.sh"))
        .unwrap();
    assert!(grant < step && step < ho);
    assert!(
        !execs.iter().skip(ho + 1).any(|c| c.contains("rm -rf")),
        "the hand-off removed the staging itself"
    );
}

#[tokio::test]
async fn a_refused_sudo_password_is_not_retried() {
    let yaml = "name: t\nbuilds:\n  ssh:\n    ssh: {host: build-vm.invalid, password: wrong}\nprovision:\n  - type: handoff\n    max_retries: 5\n";
    let h = Harness::new(yaml, Iaas::Ssh, &[], RunOptions::default());
    let rec = Recorder::new(1000);
    rec.answer("sudo -n true", &[], Ok(1), 0);
    rec.answer("sudo -S", &["Sorry, try again."], Ok(1), 0);
    let e = Provision::default()
        .run(&h.ctx, rec.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not retrying"), "{e}");
    assert_eq!(
        rec.execs().iter().filter(|c| c.contains("sudo -S")).count(),
        1
    );
}

#[tokio::test]
async fn steps_after_the_handoff_that_use_the_vm_are_refused() {
    let yaml = "name: t\nbuilds:\n  ssh:\n    ssh: {host: build-vm.invalid, password: x}\nprovision:\n  - type: handoff\n  - type: shell\n    inline: [\"true\"]\n";
    let h = Harness::new(yaml, Iaas::Ssh, &[], RunOptions::default());
    let rec = Recorder::new(1000);
    let e = Provision::default()
        .run(&h.ctx, rec.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("after the hand-off"), "{e}");
    assert!(rec.calls().is_empty());
}

#[tokio::test]
async fn two_different_scripts_with_one_name_are_an_error() {
    let yaml = format!("{HEAD}provision:\n  - type: shell\n    script: a/x.sh\n  - type: shell\n    script: b/x.sh\n");
    let h = Harness::new(
        &yaml,
        Iaas::Localtest,
        &[("a/x.sh", "echo a\n", 0o755), ("b/x.sh", "echo b\n", 0o755)],
        RunOptions::default(),
    );
    let e = Provision::default()
        .run(&h.ctx, local(&h))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("both named `x.sh`"), "{e}");
}

/// The scripts of one step run in one exec: each is named as it starts, its
/// output carries its own name, and the first failure stops the step
/// naming the script (the next one never runs).
#[tokio::test]
async fn scripts_of_one_step_run_in_turn_named_and_stop_at_the_first_failure() {
    let yaml = format!("{HEAD}provision:\n  - type: shell\n    scripts: [a.sh, b.sh, c.sh]\n");
    let h = Harness::new(
        &yaml,
        Iaas::Localtest,
        &[
            (
                "a.sh",
                "#!/bin/sh\necho from-a\nprintf 'a-no-newline'\n",
                0o755,
            ),
            ("b.sh", "#!/bin/sh\necho from-b >&2\nexit 5\n", 0o755),
            (
                "c.sh",
                "#!/bin/sh\ntouch \"$OPSBAKE_STAGING/c-ran\"\n",
                0o755,
            ),
        ],
        RunOptions::default(),
    );
    let e = Provision::default()
        .run(&h.ctx, local(&h))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("shell b.sh"), "{e}");
    assert!(e.contains("exit code 5"), "{e}");
    assert!(e.contains("stderr| from-b"), "{e}");
    assert!(
        !e.contains("from-a"),
        "only b.sh's output in its error: {e}"
    );
    assert_eq!(
        h.output("shell a.sh"),
        [
            (Stream::Stdout, "from-a".to_string()),
            (Stream::Stdout, "a-no-newline".to_string())
        ]
    );
    assert_eq!(
        h.output("shell b.sh"),
        [(Stream::Stderr, "from-b".to_string())]
    );
    assert!(h.output("shell c.sh").is_empty());
    let m = h.messages();
    assert!(
        m.iter().any(|t| t.contains("running a.sh (1 of 3)")),
        "{m:?}"
    );
    assert!(
        m.iter().any(|t| t.contains("running b.sh (2 of 3)")),
        "{m:?}"
    );
    assert!(!m.iter().any(|t| t.contains("running c.sh")), "{m:?}");
    assert!(!staging_dir(&h).exists(), "staging removed");
    assert!(
        !h.path().join("vm/var/tmp/opsbake").exists(),
        "no empty staging parent left behind"
    );
}

/// A build of `file` steps only makes no staging dir: no exec at all.
#[tokio::test]
async fn a_file_only_build_neither_creates_nor_removes_the_staging_dir() {
    let yaml = "name: t\nbuilds:\n  ssh:\n    ssh: {host: build-vm.invalid, password: x}\nprovision:\n  - type: file\n    content: \"hello\\n\"\n    destination: /etc/motd\n";
    let h = Harness::new(yaml, Iaas::Ssh, &[], RunOptions::default());
    let rec = Recorder::new(1000);
    Provision::default().run(&h.ctx, rec.clone()).await.unwrap();
    let calls = rec.calls();
    assert!(rec.execs().is_empty(), "{calls:?}");
    assert_eq!(calls.len(), 1, "one upload: {calls:?}");
    // The same over the local transport: nothing under /var/tmp.
    let yaml = format!(
        "{HEAD}provision:\n  - type: file\n    content: \"hello\\n\"\n    destination: /etc/motd\n"
    );
    let h = Harness::new(&yaml, Iaas::Localtest, &[], RunOptions::default());
    Provision::default().run(&h.ctx, local(&h)).await.unwrap();
    assert!(h.path().join("vm/etc/motd").is_file());
    assert!(!h.path().join("vm/var/tmp/opsbake").exists());
}
