//! The real user path of issue 6, end to end under QEMU (TCG here):
//!
//! 1. `opsbake build images/appliance.yml --iaas vbox --offline` (the repo's
//!    example appliance, as a subprocess of the built binary, with `--json`)
//!    inside `unshare -n` with only loopback up, so that anything reaching
//!    past 127.0.0.1 fails. Asserted from its events and outputs: vcap logged
//!    in with the build's ephemeral key (the fingerprint of the key that
//!    `--debug-keep-key` wrote), provisioning output, the hand-off, the
//!    manifest; the OVA's members, OVF (disk capacity = the VMDK's, the
//!    VirtualBox section, the `public_ssh_key` property), `.mf` digests,
//!    `qemu-img check`, and `qemu-img compare` of the VMDK against the
//!    normalised raw disk the builder wrote it from (kept by
//!    `OPSBAKE_VBOX_KEEP_RAW=1`).
//!    govc imports the OVA into vcsim (a third-party reader).
//! 2. A second build of a copy of the template and provisioning tree, from
//!    another directory, with a new build id, under `faketime '+3 days'`:
//!    the same OVA sha256.
//! 3. Deploy: the VMDK taken out of the OVA boots with an `ovf-env.xml`
//!    CD-ROM giving `public_ssh_key`; `ubuntu` logs in with that key, the
//!    status page answers through a forwarded port, the build's key is gone
//!    (and refused), root's and vcap's passwords are locked.
//!
//! Needs root (the build's disk normalisation loop-mounts; `unshare -n`),
//! the test stemcell (`OPSBAKE_TEST_STEMCELL_DIR`), QEMU, faketime and the
//! OpenSSH client: without them it fails, unless `OPSBAKE_SKIP_PEERS=1`.
//! `OPSBAKE_VBOX_E2E_KEEP=1` keeps its directory (printed) for debugging.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use opsbake_iaas_vbox::qemu::{self, Accel, QemuConfig, QemuVm};
use serde_json::Value;

/// The CLI under test (see `opsbake_test_support::cli::opsbake_bin`).
fn bin() -> &'static Path {
    opsbake_test_support::cli::opsbake_bin()
}
const VSPHERE_TGZ: &str = "bosh-stemcell-1.0-vsphere-esxi-debian-bookworm-go_agent.tgz";
const EPOCH: &str = "1704067200";
/// The example appliance's status page port (images/appliance.yml `status_port`).
const STATUS_PORT: u16 = 8080;

use opsbake_test_support::skip_peers;

fn repo_root() -> PathBuf {
    opsbake_test_support::cli::workspace_root()
}

/// The test stemcell dir, or None when peers are skipped; panics with the
/// reason when something this test needs is missing.
fn prerequisites() -> Option<PathBuf> {
    let mut missing = Vec::new();
    let dir = std::env::var_os("OPSBAKE_TEST_STEMCELL_DIR").map(PathBuf::from);
    match &dir {
        Some(d) if d.join(VSPHERE_TGZ).is_file() => {}
        Some(d) => missing.push(format!(
            "{} (rerun .ci/setup.d/20-test-stemcell.sh)",
            d.join(VSPHERE_TGZ).display()
        )),
        None => missing.push(
            "OPSBAKE_TEST_STEMCELL_DIR (run scripts/setup.sh and export target/ci-env)".into(),
        ),
    }
    if !nix::unistd::geteuid().is_root() {
        missing.push(
            "root (the build loop-mounts the disk to normalise it; the test runs it in `unshare -n`)"
                .into(),
        );
    }
    for (bin, pkg) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("qemu-img", "qemu-utils"),
        ("faketime", "faketime"),
        ("unshare", "util-linux"),
        ("ip", "iproute2"),
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
        ("tar", "tar"),
    ] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
            .unwrap_or(false);
        if !found {
            missing.push(format!("{bin} (Debian {pkg}; .ci/setup.d/40-vbox.sh)"));
        }
    }
    if missing.is_empty() {
        return dir;
    }
    if skip_peers() {
        eprintln!(
            "OPSBAKE_SKIP_PEERS=1: skipping, missing {}",
            missing.join(", ")
        );
        return None;
    }
    panic!(
        "the vbox end-to-end test needs: {} (or set OPSBAKE_SKIP_PEERS=1)",
        missing.join("; ")
    );
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One CLI build and what it printed.
struct Build {
    id: String,
    events: Vec<Value>,
    ova: PathBuf,
    state: PathBuf,
    manifest: Value,
    seconds: f64,
}

impl Build {
    fn messages(&self) -> Vec<&str> {
        self.events
            .iter()
            .filter(|e| e["event"] == "message")
            .filter_map(|e| e["text"].as_str())
            .collect()
    }

    /// Output lines of the steps whose name contains `step`.
    fn output(&self, step: &str) -> Vec<&str> {
        self.events
            .iter()
            .filter(|e| e["event"] == "output")
            .filter(|e| e["step"].as_str().is_some_and(|s| s.contains(step)))
            .filter_map(|e| e["line"].as_str())
            .collect()
    }

    fn step_finished(&self, step: &str) -> bool {
        self.events
            .iter()
            .any(|e| e["event"] == "step_finished" && e["step"] == step)
    }

    fn dump(&self) -> String {
        self.events
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Unwinds a failed build's journal (`opsbake cleanup --all`: QEMU by PID
/// and start time) if the test panics while a build is running or after it
/// failed; disarmed once the build succeeded.
struct CleanupOnPanic {
    state: PathBuf,
    armed: bool,
}

impl Drop for CleanupOnPanic {
    fn drop(&mut self) {
        if self.armed {
            let _ = Command::new(bin())
                .arg("--state-dir")
                .arg(&self.state)
                .args(["cleanup", "--all"])
                .status();
        }
    }
}

/// `opsbake --json build <template> --iaas vbox --offline` from `cwd`,
/// in a network namespace with only `lo`, optionally under faketime.
fn cli_build(
    cwd: &Path,
    state: &Path,
    template: &Path,
    stemcells: &Path,
    faketime: Option<&str>,
    keep_raw: bool,
) -> Build {
    std::fs::create_dir_all(cwd).unwrap();
    let mut guard = CleanupOnPanic {
        state: state.to_path_buf(),
        armed: true,
    };
    let mut cmd = Command::new("unshare");
    cmd.args(["-n", "sh", "-c", "ip link set lo up && exec \"$@\"", "sh"]);
    if let Some(f) = faketime {
        cmd.args(["faketime", f]);
    }
    cmd.arg(bin())
        .args(["--json", "--no-progress", "--state-dir"])
        .arg(state)
        .arg("build")
        .arg(template)
        .args(["--iaas", "vbox", "--offline", "--debug-keep-key"])
        .current_dir(cwd)
        .env("OPSBAKE_TEST_STEMCELL_DIR", stemcells)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        // libfaketime shifts the wall clock only: timeouts keep real time
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .stdin(Stdio::null());
    if keep_raw {
        cmd.env(opsbake_iaas_vbox::KEEP_RAW_ENV, "1");
    } else {
        cmd.env_remove(opsbake_iaas_vbox::KEEP_RAW_ENV);
    }
    let started = Instant::now();
    let out: Output = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let seconds = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    std::fs::write(cwd.join("events.jsonl"), &stdout).unwrap();
    std::fs::write(cwd.join("stderr.txt"), &stderr).unwrap();
    let events: Vec<Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    // the serial console, while the build's work dir still exists (a failed
    // build unwinds it unless it was killed)
    let serial = events
        .iter()
        .find_map(|e| e["build_id"].as_str())
        .and_then(|id| {
            std::fs::read_to_string(state.join("builds").join(id).join("vbox/serial.log")).ok()
        })
        .unwrap_or_default();
    assert!(
        out.status.success(),
        "opsbake build ({:?}) ended with {} after {seconds:.0}s\nstderr:\n{stderr}\nevents:\n{stdout}\nserial tail:\n{}",
        cmd,
        out.status,
        serial
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    let finished = events
        .iter()
        .find(|e| e["event"] == "build_finished")
        .unwrap_or_else(|| panic!("no build_finished event:\n{stdout}"));
    assert_eq!(finished["outcome"], "succeeded", "{finished}");
    let id = finished["build_id"].as_str().unwrap().to_string();
    let ova = PathBuf::from(finished["artifact_id"].as_str().unwrap());
    assert!(ova.is_file(), "{}", ova.display());
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(ova.parent().unwrap().join("manifest.json")).unwrap(),
    )
    .unwrap();
    let manifest = manifest["builds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["packer_run_uuid"] == id.as_str())
        .unwrap_or_else(|| panic!("build {id} not in the manifest: {manifest}"))
        .clone();
    guard.armed = false;
    Build {
        id,
        events,
        ova,
        state: state.join("builds"),
        manifest,
        seconds,
    }
}

fn copy_tree(from: &Path, to: &Path) {
    run(Command::new("cp").arg("-a").arg(from).arg(to));
}

fn sha256(p: &Path) -> String {
    opsbake_iaas_vbox::export::sha256_file(p).unwrap()
}

/// The build id's date (`ob-YYYYMMDD-...`) as days since 1970.
fn id_day(id: &str) -> i64 {
    let d = id.split('-').nth(1).unwrap();
    let (y, m, day): (i64, i64, i64) = (
        d[0..4].parse().unwrap(),
        d[4..6].parse().unwrap(),
        d[6..8].parse().unwrap(),
    );
    // days_from_civil (Howard Hinnant)
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Checks of the first build: login, provisioning, hand-off, manifest.
fn check_build_log(b: &Build) {
    let msgs = b.messages();
    let all = b.dump();
    // the ephemeral key: the one --debug-keep-key wrote, and vcap logged in with it
    let key = b.state.join(&b.id).join("id_build");
    let fp_line = run(Command::new("ssh-keygen").arg("-l").arg("-f").arg(&key));
    let fp = fp_line.split_whitespace().nth(1).unwrap().to_string();
    assert!(fp.starts_with("SHA256:"), "{fp_line}");
    let comment = format!("opsbake-{}", b.id);
    assert!(
        msgs.iter()
            .any(|m| m.contains("agent settings ISO") && m.contains(&fp) && m.contains(&comment)),
        "the settings ISO carries the build key {fp} ({comment}):\n{all}"
    );
    assert!(b.step_finished("connect"), "{all}");
    assert!(
        msgs.iter()
            .any(|m| *m == format!("logged in as vcap with the build's ephemeral key {fp}")),
        "vcap logged in with the ephemeral key {fp}:\n{all}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.contains("vcap has passwordless sudo for the build")),
        "{all}"
    );
    // provisioning output: the status page answered on the build VM
    let setup = b.output("setup.sh");
    assert!(
        setup
            .iter()
            .any(|l| l.starts_with("check-status: ok: ") && l.contains("\"name\": \"appliance\"")),
        "provisioning output (setup.sh, check-status.sh) in the log:\n{all}"
    );
    assert!(
        b.output("check-status")
            .iter()
            .any(|l| l.starts_with("check-status: ok: ")),
        "{all}"
    );
    assert!(
        b.output("iaas.sh")
            .iter()
            .any(|l| l.contains("network: DHCP on eth0")),
        "{all}"
    );
    // the hand-off ran to its end
    assert!(b.step_finished("handoff"), "{all}");
    let handoff = b.output("handoff");
    for want in [
        "handoff: removing the build's SSH key",
        "handoff: locking the password of root",
        "handoff: locking the password of vcap",
        "handoff: revoking the passwordless sudo of vcap",
        "handoff: done",
    ] {
        assert!(handoff.contains(&want), "hand-off output {want:?}:\n{all}");
    }
    // offline: the guest's netdev had restrict=on; powered off cleanly
    let m = &b.manifest;
    let c = &m["custom_data"];
    assert_eq!(c["engine"], "qemu", "{m}");
    assert_ne!(c["shutdown"], "killed", "{m}");
    assert_eq!(c["source_date_epoch"], EPOCH, "{m}");
    assert_eq!(c["stemcell_sha1"].as_str().map(str::len), Some(40), "{m}");
    for k in ["template", "stemcell", "variables"] {
        assert_eq!(m["inputs"][k].as_str().map(str::len), Some(64), "{k}: {m}");
    }
    assert!(
        m["inputs"]["provisioning"]
            .as_object()
            .is_some_and(|p| p.keys().any(|k| k.ends_with("setup.sh"))),
        "{m}"
    );
    // the .sha256 next to the OVA matches
    let sum = std::fs::read_to_string(b.ova.with_extension("ova.sha256")).unwrap();
    assert!(sum.starts_with(&sha256(&b.ova)), "{sum}");
}

/// Checks of the OVA; returns the extracted VMDK.
fn check_ova(b: &Build, x: &Path) -> PathBuf {
    std::fs::create_dir_all(x).unwrap();
    let list = run(Command::new("tar").arg("-tvf").arg(&b.ova));
    let names: Vec<&str> = list
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(
        names,
        ["appliance.ovf", "appliance.mf", "appliance-disk1.vmdk"],
        "{list}"
    );
    assert!(
        list.lines()
            .all(|l| l.starts_with("-rw-r--r-- root/root") && l.contains("2024-01-01")),
        "{list}"
    );
    run(Command::new("tar").arg("-xf").arg(&b.ova).arg("-C").arg(x));
    let ovf_path = x.join("appliance.ovf");
    let vmdk = x.join("appliance-disk1.vmdk");
    let ovf = opsbake_stemcell::Ovf::read(&ovf_path).unwrap();
    // the disk: its real capacity and file size
    let info = opsbake_stemcell::QemuImg::default()
        .info(&vmdk, Some("vmdk"))
        .unwrap();
    let disks = ovf.disks();
    assert_eq!(disks.len(), 1);
    assert_eq!(disks[0].capacity_bytes, Some(info.virtual_size));
    assert_eq!(
        ovf.files()[0].size,
        Some(std::fs::metadata(&vmdk).unwrap().len())
    );
    assert_eq!(ovf.cpus(), Some(1));
    assert_eq!(ovf.memory_mib(), Some(1024));
    let env = ovf.envelope();
    assert!(
        env.attrs
            .iter()
            .any(|(k, v)| k == "xmlns:vbox" && v == opsbake_iaas_vbox::export::NS_VBOX),
        "xmlns:vbox on the Envelope: {:?}",
        env.attrs
    );
    let vs = env.find("VirtualSystem").expect("VirtualSystem");
    // the VirtualBox section: hardware and the disk attached by its UUID
    let machine = vs.find("Machine").expect("the vbox:Machine section");
    assert_eq!(machine.name, "vbox:Machine");
    let hw = machine.find("Hardware").expect("vbox Hardware");
    assert_eq!(hw.find("CPU").and_then(|c| c.get_attr("count")), Some("1"));
    assert_eq!(
        hw.find("Memory").and_then(|c| c.get_attr("RAMSize")),
        Some("1024")
    );
    let disk_uuid = env
        .find("DiskSection")
        .and_then(|d| d.find("Disk"))
        .and_then(|d| d.get_attr("uuid"))
        .expect("vbox:uuid of the disk");
    let image = machine
        .find("StorageControllers")
        .and_then(|s| s.find("StorageController"))
        .and_then(|s| s.find("AttachedDevice"))
        .and_then(|a| a.find("Image"))
        .and_then(|i| i.get_attr("uuid"))
        .expect("the disk attached in vbox:Machine");
    assert_eq!(image, format!("{{{disk_uuid}}}"));
    // the deploy-time property
    let prop = vs.find("ProductSection").and_then(|p| {
        p.elements()
            .find(|e| e.get_attr("key") == Some("public_ssh_key"))
    });
    assert!(prop.is_some(), "ProductSection declares public_ssh_key");
    // the .mf digests
    let mf = opsbake_stemcell::ovf::verify_mf(x, "appliance.mf").unwrap();
    assert_eq!(mf.len(), 2, "{mf:?}");
    run(Command::new("qemu-img")
        .args(["check", "-f", "vmdk"])
        .arg(&vmdk));
    vmdk
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_vbox_build_reproducible_ova_deploys_qemu() {
    let Some(stemcells) = prerequisites() else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let (_keep, root) = if std::env::var("OPSBAKE_VBOX_E2E_KEEP").is_ok_and(|v| v == "1") {
        let p = t.keep();
        eprintln!("keeping {}", p.display());
        (None, p)
    } else {
        let p = t.path().to_path_buf();
        (Some(t), p)
    };
    let repo = repo_root();
    bin(); // found (or built) before the clock starts
    let whole = Instant::now();

    // 1. the repo's template, as a user runs it (outputs next to the
    // template, in images/out/appliance, as for scripts/demo.sh; the same
    // variables in both builds, so the same input digests)
    // one state dir, as a user's (~/.local/state/opsbake)
    let state = root.join("state");
    let one = cli_build(
        &root.join("one"),
        &state,
        &repo.join("images/appliance.yml"),
        &stemcells,
        None,
        true,
    );
    eprintln!("first build ({}): {:.1}s", one.id, one.seconds);
    check_build_log(&one);
    let x = root.join("x");
    let vmdk = check_ova(&one, &x);
    // the VMDK holds exactly the normalised disk the builder wrote it from
    let raw = one.ova.parent().unwrap().join("appliance-disk1.raw");
    assert_eq!(
        one.manifest["custom_data"]["raw_disk"].as_str(),
        Some(raw.to_str().unwrap()),
        "{}",
        one.manifest
    );
    assert_eq!(
        std::fs::metadata(&raw).unwrap().len().to_string(),
        one.manifest["custom_data"]["disk_capacity"]
            .as_str()
            .unwrap()
    );
    let (off, _) = opsbake_iaas_vbox::export::first_partition(&raw).unwrap();
    let g = opsbake_iaas_vbox::export::ext4_geometry(&raw, off).unwrap();
    assert!(g.blocks > 0, "{g:?}");
    let cmp = run(Command::new("qemu-img")
        .args(["compare", "-f", "vmdk", "-F", "raw"])
        .arg(&vmdk)
        .arg(&raw));
    assert!(cmp.contains("Images are identical"), "{cmp}");
    // (and compare does see a difference: one flipped byte in the root fs)
    let flipped = root.join("flipped.raw");
    run(Command::new("cp")
        .args(["--sparse=always"])
        .arg(&raw)
        .arg(&flipped));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&flipped)
            .unwrap();
        use std::io::Seek as _;
        f.seek(std::io::SeekFrom::Start(off + 1024 + 0x78)).unwrap();
        f.write_all(b"X").unwrap();
    }
    let differ = Command::new("qemu-img")
        .args(["compare", "-q", "-f", "vmdk", "-F", "raw"])
        .arg(&vmdk)
        .arg(&flipped)
        .status()
        .unwrap();
    assert_eq!(differ.code(), Some(1), "qemu-img compare must see the flip");
    std::fs::remove_file(&flipped).unwrap();
    let sha_one = sha256(&one.ova);

    // a third-party reader: govc import.ova into vcsim (checks the VM it made
    // against the descriptor: vCPUs, memory, disk capacity, NICs)
    govc_import(&one.ova);

    // 2. a copy of the tree, another directory, a new build id, 3 days later
    let src = root.join("two/src");
    std::fs::create_dir_all(&src).unwrap();
    copy_tree(&repo.join("images"), &src);
    copy_tree(&repo.join("provisioning"), &src);
    let _ = std::fs::remove_dir_all(src.join("images/out"));
    let two = cli_build(
        &root.join("two/run"),
        &state,
        &src.join("images/appliance.yml"),
        &stemcells,
        Some("+3 days"),
        false,
    );
    eprintln!(
        "second build ({}, faketime +3 days): {:.1}s",
        two.id, two.seconds
    );
    assert_ne!(one.id, two.id);
    let shift = id_day(&two.id) - id_day(&one.id);
    assert!(
        (3..=4).contains(&shift),
        "faketime: build ids {} and {} are {shift} days apart",
        one.id,
        two.id
    );
    assert_eq!(
        one.manifest["inputs"], two.manifest["inputs"],
        "same inputs"
    );
    assert!(
        !two.ova.with_file_name("appliance-disk1.raw").exists(),
        "no raw disk without {}",
        opsbake_iaas_vbox::KEEP_RAW_ENV
    );
    assert_eq!(
        sha_one,
        sha256(&two.ova),
        "the second build (another dir, new build id, faketime +3 days) differs"
    );

    // 3. deploy
    let build_key = one.state.join(&one.id).join("id_build");
    // KVM where a real guest boots under it: the builds' verdict for this host
    if qemu::kvm_known_broken(&state) {
        eprintln!("deploy: guests hang under KVM here (the builds found it): TCG");
    }
    let deployed = Instant::now();
    deploy(&root.join("deploy"), &vmdk, &build_key).await;
    eprintln!(
        "deploy: {:.1}s; whole test {:.1}s",
        deployed.elapsed().as_secs_f64(),
        whole.elapsed().as_secs_f64()
    );
}

/// `govc import.ova` of the built OVA into vcsim, with a value for the
/// ProductSection property.
fn govc_import(ova: &Path) {
    use opsbake_test_support::vcsim::{ImportOptions, Vcsim, VcsimError};
    let sim = match Vcsim::start() {
        Ok(s) => s,
        Err(e @ VcsimError::Missing { .. }) if skip_peers() => {
            eprintln!("OPSBAKE_SKIP_PEERS=1: no govc import ({e})");
            return;
        }
        Err(e) => panic!("vcsim: {e} (.ci/setup.d/50-vcsim.sh builds it)"),
    };
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOpsbakeE2eImportCheckNotARealKey0000000000 e2e";
    let vm = sim
        .import_ova_with(
            ova,
            "appliance",
            &ImportOptions {
                properties: vec![("public_ssh_key".into(), key.into())],
            },
        )
        .unwrap_or_else(|e| panic!("govc import.ova {}: {e}", ova.display()));
    assert_eq!(vm.cpus, 1, "{vm:#?}");
    assert_eq!(vm.memory_mib, 1024, "{vm:#?}");
    assert!(vm.hardware_version.starts_with("vmx-"), "{vm:#?}");
    assert_eq!(vm.disks.len(), 1, "{vm:#?}");
    assert_eq!(vm.nics.len(), 1, "{vm:#?}");
    assert_eq!(vm.cdroms, 1, "{vm:#?}");
    assert_eq!(
        vm.extra_config.get("public_ssh_key").map(String::as_str),
        Some(key),
        "{vm:#?}"
    );
    assert!(
        vm.import_output.contains("appliance-disk1.vmdk"),
        "{}",
        vm.import_output
    );
}

/// A QEMU guest of the test, killed when dropped (a panic included).
struct Guest(QemuVm);

impl Drop for Guest {
    fn drop(&mut self) {
        // SIGKILL by the child's PID unless it has exited, and reap it
        self.0.kill();
    }
}

fn ssh(key: &Path, port: u16, user: &str, script: &str) -> Output {
    opsbake_test_support::qemu::guest_ssh(key, port, user, script, 10).unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// One HTTP/1.0 GET on 127.0.0.1:port; the whole response.
fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: appliance\r\n\r\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

async fn start_guest(dir: &Path, disk: &Path, iso: &Path, accel: Accel) -> Guest {
    let _ = std::fs::remove_file(dir.join("qmp.sock"));
    let cfg = QemuConfig {
        name: "deploy".into(),
        disk: disk.to_path_buf(),
        disk_bus: qemu::DiskBus::Virtio,
        cdrom: Some(iso.to_path_buf()),
        memory_mib: 1024,
        cpus: 1,
        accel,
        ssh_port: qemu::free_port().unwrap(),
        forwards: vec![(qemu::free_port().unwrap(), STATUS_PORT)],
        restrict: true,
        qmp: dir.join("qmp.sock"),
        serial_log: dir.join("serial.log"),
        rtc_base: None,
    };
    let vm = Guest(qemu::spawn(cfg, &dir.join("qemu.log")).unwrap());
    vm.0.wait_ready(Duration::from_secs(30)).await.unwrap();
    vm
}

/// Boot the exported VMDK as a deployment would (OVF environment ISO with
/// `public_ssh_key`) and check the appliance.
async fn deploy(dir: &Path, vmdk: &Path, build_key: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let key = dir.join("deploy_key");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "deployer", "-f"])
        .arg(&key));
    let public = std::fs::read_to_string(dir.join("deploy_key.pub")).unwrap();
    let env = opsbake_stemcell::ovf::environment_xml(
        "appliance",
        &[("public_ssh_key".to_string(), public.trim().to_string())]
            .into_iter()
            .collect(),
    );
    let iso = dir.join("ovf-env.iso");
    opsbake_stemcell::write_ovf_env_iso(&env, 1_704_067_200, &iso).unwrap();
    let overlay = dir.join("deploy.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "vmdk", "-b"])
        .arg(vmdk)
        .arg(&overlay));
    // KVM where a real guest boots under it, else TCG (as the builder does)
    let vm = match qemu::choose_accel(None).await.unwrap() {
        Accel::Kvm => {
            let vm = start_guest(dir, &overlay, &iso, Accel::Kvm).await;
            if vm.0.kernel_booted(qemu::KVM_BOOT_CHECK).await.unwrap() {
                vm
            } else {
                eprintln!("deploy: the guest did not boot under KVM: TCG");
                // SIGKILL and reap: its overlay is free again
                vm.0.kill();
                run(Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2", "-F", "vmdk", "-b"])
                    .arg(vmdk)
                    .arg(&overlay));
                start_guest(dir, &overlay, &iso, Accel::Tcg).await
            }
        }
        Accel::Tcg => start_guest(dir, &overlay, &iso, Accel::Tcg).await,
    };
    let port = vm.0.config.ssh_port;
    let http_port = vm.0.config.forwards[0].0;
    let serial = vm.0.config.serial_log.clone();
    let serial_tail = || {
        let s = std::fs::read_to_string(&serial).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    };
    // ubuntu logs in with the key the OVF environment gave
    let booted = Instant::now();
    let deadline = booted + Duration::from_secs(600);
    let mut last;
    loop {
        let out = ssh(&key, port, "ubuntu", "id -un; sudo -n true && echo SUDO_OK");
        last = text(&out);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline && vm.0.running(),
            "no login as ubuntu with the OVF key: {last}\nserial:\n{}",
            serial_tail()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    eprintln!(
        "deploy: ubuntu logged in {:.1}s after boot",
        booted.elapsed().as_secs_f64()
    );
    assert!(
        last.starts_with("ubuntu\n") && last.contains("SUDO_OK"),
        "{last}"
    );
    // the status page through the forwarded port (readiness: poll)
    let deadline = Instant::now() + Duration::from_secs(120);
    let (index, status) = loop {
        let index = http_get(http_port, "/");
        let status = http_get(http_port, "/cgi-bin/status");
        match (index, status) {
            (Ok(i), Ok(s)) if i.contains("200 OK") && s.contains("200 OK") => break (i, s),
            other => {
                let inside = text(&ssh(
                    &key,
                    port,
                    "ubuntu",
                    "systemctl status --no-pager appliance-status.service; busybox wget -q -O - http://127.0.0.1:8080/cgi-bin/status",
                ));
                assert!(
                    Instant::now() < deadline,
                    "status page through 127.0.0.1:{http_port}: {other:?}\ninside the guest:\n{inside}\nserial:\n{}",
                    serial_tail()
                );
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    assert!(index.contains("<h1>Appliance status</h1>"), "{index}");
    assert!(
        status.contains("\"name\": \"appliance\"")
            && status.contains("\"version\": \"1.0.0\"")
            && status.contains("\"iaas\": \"vbox\""),
        "{status}"
    );
    // the build's key is gone: nowhere on the disk, and refused
    let build_pub = run(Command::new("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(build_key));
    let blob = build_pub.split_whitespace().nth(1).unwrap().to_string();
    let out = ssh(
        &key,
        port,
        "ubuntu",
        &format!(
            "sudo grep -rlF '{blob}' /home /root /etc /var/vcap 2>/dev/null | wc -l; for u in root vcap; do sudo passwd -S $u; done"
        ),
    );
    let s = text(&out);
    let mut lines = s.lines();
    assert_eq!(
        lines.next().map(str::trim),
        Some("0"),
        "the build key is still on the disk: {s}"
    );
    let mut locked = 0;
    for l in lines {
        let f: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(f.get(1).copied(), Some("L"), "password not locked: {l}");
        locked += 1;
    }
    assert_eq!(locked, 2, "{s}");
    for user in ["vcap", "ubuntu"] {
        let o = ssh(build_key, port, user, "true");
        assert!(
            !o.status.success(),
            "{user} logged in with the build key: {}",
            text(&o)
        );
    }
    let how = vm.0.shutdown(Duration::from_secs(60)).await.unwrap();
    eprintln!("deploy: guest stopped ({how})");
}
