//! `opsbake build images/appliance.yml --iaas vsphere --var-file
//! images/vsphere.vars.yml` through the CLI binary against vcsim (started
//! per test on 127.0.0.1 with a checked login, its certificate pinned by the
//! thumbprint govc prints), and a hardened local sshd playing the build VM.
//!
//! The test plays VMware Tools and the BOSH agent: once the build has
//! uploaded its settings ISO to vcsim's datastore, the test reads the ISO's
//! `env` file back (an independent ISO9660 reader), gives the sshd the
//! authorized keys found there, and sets the clone's `guest.ipAddress` to
//! 127.0.0.1 through vcsim's `SET.guest.ipAddress` ExtraConfig. The login
//! therefore proves the settings reached the VM. Asserted through govc:
//! the template exists, is a template, has no CD-ROM ISO and no
//! guestinfo.userdata left; the base template is kept with the stemcell's
//! sha1; no build VM and no ISO file remain; the next build reuses the base.
//! The kill matrix (`kill_matrix!`: during and after the import, after the
//! clone, after the ISO upload, mid-provisioning, after the shutdown, while
//! making the template; each with SIGKILL + `opsbake cleanup` and with
//! SIGINT alone) and bad input (wrong password, unknown datacenter or
//! datastore, a name already taken) leave no VM, template or datastore
//! file of the build. vcsim has no ExportVm: the export's failure is
//! tested (the template is unwound), the lease download runs against
//! test-support's NFC export server in crates/iaas-vsphere/tests.
//!
//! `--skip-provision vsphere`: the appliance's steps change the machine they
//! run on, which is the build host here (as for aws against moto).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use opsbake_test_support::sshd::{Sshd, SshdOptions};
use opsbake_test_support::vcsim::{iso_root_file, skip_peers, Vcsim};

/// The CLI under test (see `opsbake_test_support::cli::opsbake_bin`).
fn bin() -> &'static Path {
    opsbake_test_support::cli::opsbake_bin()
}
const STEMCELL: &str = "bosh-stemcell-1.0-vsphere-esxi-debian-bookworm-go_agent.tgz";
const PASSWORD: &str = "vc-Secret-4711";

fn repo_root() -> PathBuf {
    opsbake_test_support::cli::workspace_root()
}

fn peers() -> Option<Vcsim> {
    peers_with(&[])
}

/// vcsim with extra flags (e.g. `-method-delay`).
fn peers_with(extra: &[&str]) -> Option<Vcsim> {
    match std::env::var_os("OPSBAKE_TEST_STEMCELL_DIR").map(PathBuf::from) {
        Some(d) => assert!(d.join(STEMCELL).is_file(), "{STEMCELL} missing"),
        None if skip_peers() => return None,
        None => panic!(
            "OPSBAKE_TEST_STEMCELL_DIR is unset: export target/ci-env or OPSBAKE_SKIP_PEERS=1"
        ),
    }
    let mut args = vec!["-username", "builder", "-password", PASSWORD];
    args.extend_from_slice(extra);
    match Vcsim::start_with(&args) {
        Ok(v) => Some(v),
        Err(e) if skip_peers() => {
            eprintln!("skipped: {e}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

fn command(dir: &Path, v: &Vcsim, ssh_port: u16, password: &str, extra: &[&str]) -> Command {
    let t = repo_root().join("images/appliance.yml");
    command_with(dir, &t, true, v, ssh_port, password, extra)
}

/// `opsbake build <template> --iaas vsphere` against `v`, the appliance's
/// steps skipped when `skip_provision`.
fn command_with(
    dir: &Path,
    template: &Path,
    skip_provision: bool,
    v: &Vcsim,
    ssh_port: u16,
    password: &str,
    extra: &[&str],
) -> Command {
    let root = repo_root();
    let mut c = Command::new(bin());
    c.current_dir(dir)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--no-progress", "--json", "build"])
        .arg(template)
        .args(["--iaas", "vsphere"]);
    if skip_provision {
        c.args(["--skip-provision", "vsphere"]);
    }
    c.arg("--var-file")
        .arg(root.join("images/vsphere.vars.yml"))
        .arg("--var")
        .arg(format!("vsphere_thumbprint={}", v.thumbprint().unwrap()))
        .arg("--var")
        .arg(format!("vsphere_ssh_port={ssh_port}"))
        .args(extra)
        .env("GOVC_URL", v.sdk_url())
        .env("GOVC_USERNAME", "builder")
        .env("GOVC_PASSWORD", password);
    c
}

fn cleanup_command(dir: &Path, v: &Vcsim, id: &str) -> Command {
    let mut c = Command::new(bin());
    c.current_dir(dir)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--no-progress", "cleanup", id])
        .env("GOVC_URL", v.sdk_url())
        .env("GOVC_USERNAME", "builder")
        .env("GOVC_PASSWORD", PASSWORD);
    c
}

struct Build {
    child: Child,
    rx: mpsc::Receiver<serde_json::Value>,
    seen: Vec<serde_json::Value>,
    stderr: PathBuf,
}

impl Build {
    fn start(mut c: Command, dir: &Path) -> Build {
        let stderr = dir.join("opsbake.stderr");
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let rx = opsbake_test_support::cli::event_stream(out);
        Build {
            child,
            rx,
            seen: Vec::new(),
            stderr,
        }
    }

    fn wait_for(
        &mut self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(_) => panic!(
                    "no `{what}` event; seen: {:#?}\nstderr:\n{}",
                    self.seen,
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                ),
            }
        }
    }

    fn build_id(&self) -> String {
        self.seen
            .iter()
            .find_map(|v| v["build_id"].as_str())
            .unwrap()
            .to_string()
    }

    /// Exit code (128 + signal), and the remaining events.
    fn finish(&mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                while let Ok(v) = self.rx.recv_timeout(Duration::from_secs(5)) {
                    self.seen.push(v);
                }
                use std::os::unix::process::ExitStatusExt;
                return s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0));
            }
            assert!(Instant::now() < deadline, "opsbake did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

fn created(kind: &'static str) -> impl Fn(&serde_json::Value) -> bool {
    move |v| v["event"] == "resource_created" && v["kind"] == kind
}

/// What VMware Tools and the agent would do: read the settings ISO the
/// build uploaded, authorize its keys, report 127.0.0.1 once powered on.
fn play_the_vm(b: &mut Build, v: &Vcsim, sshd: &Sshd) -> (String, serde_json::Value) {
    let vm = b.wait_for("the build VM's intent", |e| {
        e["event"] == "resource_intent" && e["kind"] == "vsphere_vm"
    })["name"]
        .as_str()
        .unwrap()
        .to_string();
    b.wait_for("the settings ISO upload", created("vsphere_file"));
    let isos = v.datastore_files_named("opsbake-env.iso");
    assert_eq!(isos.len(), 1, "{isos:?}");
    let iso = std::fs::read(&isos[0]).unwrap();
    let env = ["ENV.;1", "ENV_1.;1"]
        .iter()
        .find_map(|n| iso_root_file(&iso, n))
        .expect("no env file in the settings ISO");
    let settings: serde_json::Value = serde_json::from_slice(&env).unwrap();
    let keys: Vec<String> = settings["env"]["bosh"]["authorized_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys.len(), 1, "{settings}");
    assert!(
        settings["env"]["bosh"]["password"]
            .as_str()
            .unwrap()
            .starts_with("$6$"),
        "the password travels as a crypt hash"
    );
    sshd.set_authorized_keys(&keys).unwrap();
    let path = format!("/DC0/vm/{vm}");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let o = v
            .govc_raw(["object.collect", "-s", &path, "runtime.powerState"])
            .unwrap();
        if !o.success() {
            let log = v.log();
            let panic_at = log.find("panic").unwrap_or(0);
            panic!(
                "{vm}: {}\nopsbake stderr:\n{}\nvcsim log:\n{}",
                o.stderr,
                b.stderr(),
                &log[panic_at..(panic_at + 3000).min(log.len())]
            );
        }
        if o.stdout.trim() == "poweredOn" {
            break;
        }
        assert!(Instant::now() < deadline, "{vm} never powered on");
        std::thread::sleep(Duration::from_millis(100));
    }
    v.set_guest_ip(&path, "127.0.0.1").unwrap();
    (vm, settings)
}

/// Everything of build `id` left in vcsim: VMs carrying its id in their
/// name (the build VM), non-template VMs of the build (by ExtraConfig),
/// and settings ISOs.
fn leftovers(v: &Vcsim, id: &str) -> Vec<String> {
    let mut out: Vec<String> = v
        .vm_paths()
        .unwrap()
        .into_iter()
        .filter(|p| p.contains(&format!("opsbake-{id}")))
        .collect();
    for p in v.vm_paths().unwrap() {
        if p.contains("stemcell-") || p.contains("appliance-1.0.0-") {
            continue;
        }
        let info = v.vm_info(&p).unwrap();
        if info
            .extra_config
            .get("opsbake.build-id")
            .map(String::as_str)
            == Some(id)
            && !out.contains(&p)
        {
            out.push(p);
        }
    }
    out.extend(
        v.datastore_files_named("opsbake-env.iso")
            .into_iter()
            .map(|p| p.display().to_string()),
    );
    out
}

fn is_template(v: &Vcsim, path: &str) -> bool {
    v.govc(["object.collect", "-s", path, "config.template"])
        .unwrap()
        .stdout
        .trim()
        == "true"
}

fn check_journal(state: &Path, build_id: &str, outcome: opsbake_core::journal::Outcome) {
    let j = opsbake_core::journal::Journal::open(state, build_id).unwrap();
    let st = j.state();
    assert_eq!(st.outcome, Some(outcome), "{build_id}");
    assert!(
        st.live.is_empty(),
        "{build_id}: journal lists {:?}",
        st.live
    );
}

#[test]
fn appliance_template_through_the_cli_then_the_base_is_reused() {
    let Some(v) = peers() else { return };
    let sshd = Sshd::start(SshdOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let before = v.vm_paths().unwrap();
    let mut ids = Vec::new();
    for round in 0..2 {
        sshd.set_authorized_keys(&[]).unwrap();
        let t0 = Instant::now();
        let mut b = Build::start(
            command(dir.path(), &v, sshd.port(), PASSWORD, &[]),
            dir.path(),
        );
        let (_vm, _settings) = play_the_vm(&mut b, &v, &sshd);
        let code = b.finish();
        let stderr = b.stderr();
        assert_eq!(
            code,
            0,
            "round {round}: stderr:\n{stderr}\nevents:\n{:#?}\nsshd:\n{}",
            b.seen,
            sshd.log_text()
        );
        assert!(
            !stderr.contains(PASSWORD),
            "the vCenter password was printed"
        );
        let id = b.build_id();
        eprintln!(
            "round {round}: vsphere build {id} through the CLI in {:.2} s",
            t0.elapsed().as_secs_f64()
        );
        let fin = b
            .seen
            .iter()
            .find(|e| e["event"] == "build_finished")
            .unwrap()
            .clone();
        assert_eq!(fin["outcome"], "succeeded", "{fin}");
        let template = format!("/DC0/vm/appliance-1.0.0-{id}");
        assert_eq!(
            fin["artifact_id"],
            template.trim_start_matches('/'),
            "{fin}"
        );
        // the login used the key from the settings ISO
        assert!(
            sshd.log_text()
                .matches("Accepted publickey for vcap")
                .count()
                > round,
            "{}",
            sshd.log_text()
        );
        // the template: a template, no settings left in it
        assert!(is_template(&v, &template), "{template} is not a template");
        let info = v.vm_info(&template).unwrap();
        assert_eq!(info.cpus, 2);
        assert_eq!(info.memory_mib, 4096);
        assert!(
            info.disks.iter().all(|d| d.capacity_kb >= 10240 * 1024),
            "{:?}",
            info.disks
        );
        // cleared (vCenter drops a key set to ""; vcsim keeps it, empty)
        assert!(
            info.extra_config
                .get("guestinfo.userdata")
                .is_none_or(|v| v.is_empty()),
            "{:?}",
            info.extra_config
        );
        assert_eq!(
            info.extra_config.get("opsbake.role").map(String::as_str),
            Some("artifact")
        );
        let dev = v
            .govc(["device.info", "-vm", &template, "-json"])
            .unwrap()
            .stdout;
        assert!(!dev.contains("opsbake-env.iso"), "{dev}");
        assert!(leftovers(&v, &id).is_empty(), "{:?}", leftovers(&v, &id));
        // one base template, kept, with the stemcell's sha1
        let bases: Vec<String> = v
            .vm_paths()
            .unwrap()
            .into_iter()
            .filter(|p| p.contains("/opsbake-stemcell-"))
            .collect();
        assert_eq!(bases.len(), 1, "{bases:?}");
        assert!(is_template(&v, &bases[0]));
        let base = v.vm_info(&bases[0]).unwrap();
        assert!(bases[0].ends_with(
            base.extra_config
                .get("opsbake.stemcell-sha1")
                .unwrap()
                .as_str()
        ));
        let reused = b.seen.iter().any(|e| {
            e["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("reusing base template"))
        });
        assert_eq!(
            reused,
            round == 1,
            "round {round}: the second build reuses the base"
        );
        check_journal(
            &dir.path().join("state"),
            &id,
            opsbake_core::journal::Outcome::Succeeded,
        );
        ids.push(id);
    }
    let after = v.vm_paths().unwrap();
    assert_eq!(after.len(), before.len() + 3, "{after:?}");
}

/// How the build is stopped.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Stop {
    /// SIGKILL, then `opsbake cleanup`.
    Kill,
    /// SIGINT: the build unwinds itself.
    Int,
}

/// Where the build is stopped (the event that says it got there).
#[derive(Clone, Copy, PartialEq, Debug)]
enum Point {
    /// The base import's intent recorded (lease and upload under way).
    DuringImport,
    /// The same, with vcsim answering ImportVApp 1.5 s late (it makes the
    /// VM at the end of the delay), so that the signal lands while the call
    /// is under way, before the VM exists.
    ImportUnderWay,
    /// The base template imported and kept.
    AfterImport,
    /// The build VM cloned.
    AfterClone,
    /// The settings ISO uploaded to the datastore.
    AfterIso,
    /// A provisioning step printed its marker and is still running.
    MidProvision,
    /// The guest shut down (capture), CD-ROM and ISO not yet removed.
    AfterShutdown,
    /// Making the template (MarkAsTemplate), the ISO gone: the last call
    /// before the export (vcsim has no ExportVm, so the export itself
    /// cannot be stopped midway through the CLI; see
    /// `export_refused_by_vcsim_fails_and_unwinds_the_template`).
    MakingTemplate,
}

const MARKER: &str = "opsbake-mid-provisioning";

impl Point {
    fn reached(self, e: &serde_json::Value) -> bool {
        let text = |k: &str| e[k].as_str().unwrap_or_default().to_string();
        match self {
            Point::DuringImport | Point::ImportUnderWay => {
                e["event"] == "resource_intent" && e["kind"] == "vsphere_base"
            }
            Point::AfterImport => e["event"] == "resource_kept" && e["kind"] == "vsphere_base",
            Point::AfterClone => created("vsphere_vm")(e),
            Point::AfterIso => created("vsphere_file")(e),
            Point::MidProvision => e["event"] == "output" && text("line").contains(MARKER),
            Point::AfterShutdown => e["event"] == "message" && text("text").contains(" stopped ("),
            Point::MakingTemplate => {
                e["event"] == "resource_deleted" && e["kind"] == "vsphere_file"
            }
        }
    }

    /// vcsim answers the call the build makes right after the point this
    /// late (`-method-delay`), so that the signal lands inside it: after the
    /// shutdown the CD-ROM's removal (ReconfigVM), after the ISO's deletion
    /// MarkAsTemplate. Without it the build races past the point in a few
    /// milliseconds.
    fn vcsim_flags(self) -> &'static [&'static str] {
        match self {
            Point::ImportUnderWay => &["-method-delay", "ImportVApp:1500"],
            Point::AfterShutdown => &["-method-delay", "ReconfigVM_Task:1500"],
            Point::MakingTemplate => &["-method-delay", "MarkAsTemplate:1500"],
            _ => &[],
        }
    }

    /// The build gets past the clone only if the test plays the VM.
    fn plays_the_vm(self) -> bool {
        matches!(
            self,
            Point::MidProvision | Point::AfterShutdown | Point::MakingTemplate
        )
    }
}

/// images/appliance.yml with one shell step of its own instead of the
/// appliance's (they would change the build host, which plays the VM), a
/// long one when the kill comes mid-provisioning, and the OVA export on.
fn kill_template(dir: &Path, point: Point) -> PathBuf {
    let text = std::fs::read_to_string(repo_root().join("images/appliance.yml")).unwrap();
    let (head, rest) = text.split_once("\nprovision:\n").unwrap();
    let outputs = &rest[rest.find("\noutputs:\n").unwrap()..];
    let wait = if point == Point::MidProvision {
        ", \"sleep 60\""
    } else {
        ""
    };
    let step = format!(
        "provision:\n  - type: shell\n    sudo: false\n    inline: [\"echo {MARKER}\"{wait}]\n"
    );
    let text = format!("{head}\n{step}{outputs}").replace(
        "      shutdown_timeout: 5m\n",
        "      shutdown_timeout: 5m\n      export_ova: true\n",
    );
    assert!(text.contains("export_ova: true"), "{text}");
    let t = dir.join("kill.yml");
    std::fs::write(&t, text).unwrap();
    t
}

/// Everything of build `id` left anywhere in vcsim: [`leftovers`], any VM
/// or template whose path names the build, and any datastore file or
/// folder whose name does.
fn everything_of(v: &Vcsim, id: &str) -> Vec<String> {
    let mut out = leftovers(v, id);
    for p in v.vm_paths().unwrap() {
        if p.contains(id) && !out.contains(&p) {
            out.push(p);
        }
    }
    out.extend(
        v.datastore_paths_containing(id)
            .into_iter()
            .map(|p| p.display().to_string()),
    );
    out
}

/// Stop a build at `point` with `stop`; assert through vcsim that nothing
/// of it is left (after `opsbake cleanup` for SIGKILL), the base is gone
/// or a complete template, the journal lists nothing live, and the
/// password was never printed.
fn stop_at(point: Point, stop: Stop) {
    let Some(v) = peers_with(point.vcsim_flags()) else {
        return;
    };
    let sshd = Sshd::start(SshdOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let t = kill_template(dir.path(), point);
    let mut b = Build::start(
        command_with(dir.path(), &t, false, &v, sshd.port(), PASSWORD, &[]),
        dir.path(),
    );
    if point.plays_the_vm() {
        play_the_vm(&mut b, &v, &sshd);
    }
    let label = format!("{point:?}/{stop:?}");
    b.wait_for(&label, |e| point.reached(e));
    let id = b.build_id();
    if !matches!(
        point,
        Point::DuringImport | Point::ImportUnderWay | Point::AfterImport
    ) {
        assert!(
            !everything_of(&v, &id).is_empty(),
            "{label}: the build has made nothing yet"
        );
    }
    let stopped_at = std::time::Instant::now();
    match stop {
        Stop::Kill => {
            b.child.kill().unwrap();
            assert_eq!(b.finish(), 128 + 9, "{label}");
            let out = cleanup_command(dir.path(), &v, &id).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            assert_eq!(out.status.code(), Some(0), "{label}: cleanup: {err}");
            assert!(!err.contains(PASSWORD), "{label}: password printed");
        }
        Stop::Int => {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(b.child.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            )
            .unwrap();
            let code = b.finish();
            let fin = b
                .seen
                .iter()
                .find(|e| e["event"] == "build_finished")
                .cloned()
                .unwrap_or_else(|| panic!("{label}: no build_finished\n{}", b.stderr()));
            assert_eq!(code, 130, "{label}: {fin}\n{}", b.stderr());
            assert_eq!(fin["outcome"], "cancelled", "{label}: {fin}");
        }
    }
    assert!(!b.stderr().contains(PASSWORD), "{label}: password printed");
    if point == Point::ImportUnderWay {
        // vcsim makes the VM when its 1.5 s delay, begun before the signal,
        // ends, whether or not the build still waits for the answer: look
        // for leftovers only after that (a fixed time of the scenario, not
        // a readiness wait)
        let after = std::time::Duration::from_millis(2000);
        if let Some(rest) = after.checked_sub(stopped_at.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    let left = everything_of(&v, &id);
    assert!(
        left.is_empty(),
        "{label}: left {left:?}\nevents: {:#?}\n{}",
        b.seen
            .iter()
            .filter(|e| e["event"] != "output")
            .collect::<Vec<_>>(),
        b.stderr()
    );
    for p in v
        .vm_paths()
        .unwrap()
        .into_iter()
        .filter(|p| p.contains("/opsbake-stemcell-"))
    {
        let info = v.vm_info(&p).unwrap();
        assert!(
            is_template(&v, &p) && info.extra_config.contains_key("opsbake.stemcell-sha1"),
            "{label}: a half-made base is left: {p} {:?}",
            info.extra_config
        );
    }
    if point == Point::ImportUnderWay {
        // the VM the server made after the stop was learnt, journaled and
        // removed by id (not left for a lookup by name that came too early)
        let base = |ev: &str| {
            b.seen
                .iter()
                .any(|e| e["event"] == ev && e["kind"] == "vsphere_base")
        };
        assert!(
            base("resource_created") && base("resource_deleted"),
            "{label}: the import's VM was not journaled and removed: {:#?}",
            b.seen
                .iter()
                .filter(|e| e["event"] != "output")
                .collect::<Vec<_>>()
        );
    }
    let j = opsbake_core::journal::Journal::open(&dir.path().join("state"), &id).unwrap();
    assert!(
        j.state().live.is_empty(),
        "{label}: journal lists {:?}",
        j.state().live
    );
}

macro_rules! kill_matrix {
    ($($name:ident: $point:ident, $stop:ident;)*) => {
        $(
            #[test]
            fn $name() {
                stop_at(Point::$point, Stop::$stop);
            }
        )*
    };
}

kill_matrix! {
    sigkill_during_import_then_cleanup: DuringImport, Kill;
    sigint_during_import: DuringImport, Int;
    sigint_while_import_vapp_is_under_way: ImportUnderWay, Int;
    sigkill_after_import_then_cleanup: AfterImport, Kill;
    sigint_after_import: AfterImport, Int;
    sigkill_after_clone_then_cleanup: AfterClone, Kill;
    sigint_after_clone: AfterClone, Int;
    sigkill_after_iso_upload_then_cleanup: AfterIso, Kill;
    sigint_after_iso_upload: AfterIso, Int;
    sigkill_mid_provisioning_then_cleanup: MidProvision, Kill;
    sigint_mid_provisioning: MidProvision, Int;
    sigkill_after_shutdown_then_cleanup: AfterShutdown, Kill;
    sigint_after_shutdown: AfterShutdown, Int;
    sigkill_making_the_template_then_cleanup: MakingTemplate, Kill;
    sigint_making_the_template: MakingTemplate, Int;
}

/// `export_ova: true` against vcsim, which has no ExportVm: the build gets
/// to the export with its template made, fails there naming the call and
/// the template (exit 1), and unwinds the template it had not kept yet.
#[test]
fn export_refused_by_vcsim_fails_and_unwinds_the_template() {
    let Some(v) = peers() else { return };
    let sshd = Sshd::start(SshdOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let t = kill_template(dir.path(), Point::MakingTemplate);
    let mut b = Build::start(
        command_with(dir.path(), &t, false, &v, sshd.port(), PASSWORD, &[]),
        dir.path(),
    );
    play_the_vm(&mut b, &v, &sshd);
    let code = b.finish();
    let id = b.build_id();
    let fin = b
        .seen
        .iter()
        .find(|e| e["event"] == "build_finished")
        .cloned()
        .unwrap();
    assert_eq!(code, 1, "{fin}");
    let err = fin["error"].as_str().unwrap();
    assert!(
        err.contains("ExportVm") && err.contains(&format!("DC0/vm/appliance-1.0.0-{id}")),
        "{err}"
    );
    assert!(
        b.seen
            .iter()
            .any(|e| e["event"] == "resource_deleted" && e["kind"] == "vsphere_vm"),
        "the template was not unwound"
    );
    assert!(!b.stderr().contains(PASSWORD));
    let left = everything_of(&v, &id);
    assert!(left.is_empty(), "left {left:?}");
    check_journal(
        &dir.path().join("state"),
        &id,
        opsbake_core::journal::Outcome::Failed,
    );
}

#[test]
fn wrong_password_unknown_datastore_and_a_taken_name_fail_cleanly() {
    let Some(v) = peers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let before = v.vm_paths().unwrap();
    let run = |password: &str, extra: &[&str]| {
        let out = command(dir.path(), &v, 22, password, extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            !stderr.contains(password) && !stdout.contains(password),
            "password printed:\n{stderr}\n{stdout}"
        );
        // --json: the error is in the build_finished event on stdout
        format!("{stderr}\n{stdout}")
    };
    let e = run("not-the-password", &[]);
    assert!(e.contains("InvalidLogin") && e.contains("builder"), "{e}");
    let e = run(PASSWORD, &["--var", "vsphere_datastore=NoSuchDS"]);
    assert!(
        e.contains("datastore DC0/datastore/NoSuchDS not found"),
        "{e}"
    );
    let e = run(PASSWORD, &["--var", "vsphere_datacenter=DC9"]);
    assert!(e.contains("datacenter DC9 not found"), "{e}");
    // a full datastore: a 1 PiB disk does not fit vcsim's LocalDS_0 (the
    // free space of the file system under its directory)
    let full = dir.path().join("full.yml");
    let text = std::fs::read_to_string(repo_root().join("images/appliance.yml")).unwrap();
    let vsphere_disk = "  vsphere:\n    cpus: 2\n    memory: 4096\n    disk: 10240\n";
    assert!(text.contains(vsphere_disk));
    std::fs::write(
        &full,
        text.replace(
            vsphere_disk,
            "  vsphere:\n    cpus: 2\n    memory: 4096\n    disk: 1073741824\n",
        )
        .replace(
            "../provisioning/",
            &format!("{}/provisioning/", repo_root().display()),
        ),
    )
    .unwrap();
    let out = command_with(dir.path(), &full, true, &v, 22, PASSWORD, &[])
        .output()
        .unwrap();
    let e = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(!e.contains(PASSWORD), "password printed: {e}");
    assert!(
        e.contains("datastore LocalDS_0 has") && e.contains("the build needs 1073745920 MiB"),
        "{e}"
    );
    // a VM of that name exists: refused before anything is created
    let root = repo_root();
    let t = dir.path().join("taken.yml");
    let text = std::fs::read_to_string(root.join("images/appliance.yml"))
        .unwrap()
        .replace(
            "      template_name: \"appliance-1.0.0-${build.id}\"",
            "      template_name: DC0_C0_RP0_VM0",
        )
        .replace(
            "../provisioning/",
            &format!("{}/provisioning/", root.display()),
        );
    std::fs::write(&t, text).unwrap();
    let out = Command::new(bin())
        .current_dir(dir.path())
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--no-progress", "build"])
        .arg(&t)
        .args([
            "--iaas",
            "vsphere",
            "--skip-provision",
            "vsphere",
            "--var-file",
        ])
        .arg(root.join("images/vsphere.vars.yml"))
        .arg("--var")
        .arg(format!("vsphere_thumbprint={}", v.thumbprint().unwrap()))
        .env("GOVC_URL", v.sdk_url())
        .env("GOVC_USERNAME", "builder")
        .env("GOVC_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(
        e.contains("DuplicateName") && e.contains("DC0/vm/DC0_C0_RP0_VM0"),
        "{e}"
    );
    assert_eq!(v.vm_paths().unwrap(), before, "nothing created");
    assert!(v.datastore_files_named("opsbake-env.iso").is_empty());
}
