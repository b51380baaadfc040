//! The VirtualBox engine (`engine: vbox`) end to end, through the builder
//! and the runner, against `tests/fake-vbox/VBoxManage`: a stand-in for
//! VBoxManage (VirtualBox cannot be installed here) that keeps VirtualBox's
//! registry, manifest check, media registry and error messages, and runs
//! the VM under QEMU. What is asserted is what opsbake asks VirtualBox to
//! do, in which order, and that nothing stays registered afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use opsbake_core::journal::Outcome;
use opsbake_core::runner::BuildResult;
use opsbake_core::template::Iaas;
use opsbake_test_support::build;
use tokio_util::sync::CancellationToken;

const VSPHERE_TGZ: &str = "bosh-stemcell-1.0-vsphere-esxi-debian-bookworm-go_agent.tgz";
const EPOCH: i64 = 1_704_067_200;

fn stemcell() -> Option<PathBuf> {
    Some(opsbake_test_support::stemcell::dir()?.join(VSPHERE_TGZ))
}

/// Put the fake VBoxManage first on PATH, with its state in `home`.
fn use_fake(home: &Path) {
    let fake = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake-vbox");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![fake];
    dirs.extend(std::env::split_paths(&path));
    std::env::set_var("PATH", std::env::join_paths(dirs).unwrap());
    std::env::set_var("FAKE_VBOX_HOME", home);
    std::env::set_var("SOURCE_DATE_EPOCH", EPOCH.to_string());
}

/// Kills the QEMU processes the fake started, if a test panics midway.
struct FakeGuard(PathBuf);

impl Drop for FakeGuard {
    fn drop(&mut self) {
        let Ok(rd) = std::fs::read_dir(self.0.join("vms")) else {
            return;
        };
        for e in rd.flatten() {
            let Ok(text) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if let Some(pid) = v["pid"].as_i64() {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
            }
        }
    }
}

async fn build(dir: &Path, stemcell: &Path, steps: &str) -> (BuildResult, Vec<String>) {
    std::fs::create_dir_all(dir).unwrap();
    let tpl = dir.join("appliance.yml");
    std::fs::write(
        &tpl,
        format!(
            r#"name: appliance
version: "1.0"
stemcells:
  vbox: {{path: "{}"}}
builds:
  vbox:
    cpus: 1
    memory: 1024
    ssh: {{user: vcap, login_timeout: 10m}}
    options: {{engine: vbox, vm_name: appliance, shutdown_timeout: 2m}}
provision:
{steps}
outputs:
  directory: "{}"
"#,
            stemcell.display(),
            dir.join("out").display()
        ),
    )
    .unwrap();
    let job = build::job(&tpl, Iaas::Vbox, "vb1", opsbake_iaas_vbox::builder);
    build::run(dir, job, CancellationToken::new()).await
}

/// The VBoxManage calls the fake saw, as argument lists.
fn calls(home: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(home.join("calls.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Nothing registered: no VM, no medium, no VM folder left.
fn assert_nothing_registered(home: &Path, dir: &Path) {
    let vms: Vec<_> = std::fs::read_dir(home.join("vms"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(vms.is_empty(), "VMs still registered: {vms:?}");
    let media = std::fs::read_to_string(home.join("media.json")).unwrap_or_else(|_| "[]".into());
    assert_eq!(media.trim(), "[]", "media still registered");
    let left: Vec<_> = walk(dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("/vms/"))
        .collect();
    assert!(left.is_empty(), "VM files left: {left:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_vbox_engine_builds_an_ova_through_vboxmanage() {
    let Some(stemcell) = stemcell() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("vbox-home");
    use_fake(&home);
    let _guard = FakeGuard(home.clone());
    let dir = tmp.path().join("b");
    let (r, events) = build(
        &dir,
        &stemcell,
        r#"  - type: shell
    inline:
      - echo "engine-check disk=$(ls /dev/vda >/dev/null 2>&1 && echo virtio) clock=$(date +%s)"
      - echo built-under-vbox | sudo tee /etc/opsbake-engine"#,
    )
    .await;
    let all = events.join("\n");
    assert_eq!(r.outcome, Outcome::Succeeded, "{:?}\n{all}", r.error);
    assert!(r.leftovers.is_empty(), "{:?}", r.leftovers);
    let art = r.artifact.clone().unwrap();
    assert_eq!(art.custom_data["engine"], "vbox");
    assert_eq!(art.custom_data["shutdown"], "acpi", "{all}");

    // the guest's clock started at SOURCE_DATE_EPOCH (--biossystemtimeoffset)
    let clock: i64 = all
        .split("clock=")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no clock line in the output:\n{all}"));
    // systemd moves a clock that is earlier than its own build time up to
    // that time (Debian's bookworm systemd: 2026-04), so the guest reads a
    // time between SOURCE_DATE_EPOCH and that, never the host's clock.
    let host_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        clock >= EPOCH && clock < host_now - 86_400,
        "guest clock {clock}: not between SOURCE_DATE_EPOCH {EPOCH} and a day before the host's {host_now}"
    );

    // what opsbake asked VirtualBox to do, in order
    let calls = calls(&home);
    let subs: Vec<String> = calls
        .iter()
        .map(|c| {
            if c[0] == "controlvm" || c[0] == "modifyvm" && c[2] == "--biossystemtimeoffset" {
                format!("{} {}", c[0], c[2])
            } else {
                c[0].clone()
            }
        })
        .filter(|s| s != "showvminfo")
        .collect();
    assert_eq!(
        subs,
        [
            "import",
            "storageattach",
            "modifyvm",
            "modifyvm --biossystemtimeoffset",
            "startvm",
            "controlvm acpipowerbutton",
            "clonemedium",
            "closemedium",
            "unregistervm"
        ],
        "{calls:?}"
    );
    let import = &calls[0];
    assert!(import[1].ends_with(".ovf") && import.contains(&"keepallmacs".to_string()));
    let attach = calls.iter().find(|c| c[0] == "storageattach").unwrap();
    assert_eq!(
        attach[2..10],
        [
            "--storagectl",
            "IDE",
            "--port",
            "1",
            "--device",
            "0",
            "--type",
            "dvddrive"
        ]
    );
    let modify = calls.iter().find(|c| c[0] == "modifyvm").unwrap();
    let pf = modify
        .iter()
        .find(|a| a.starts_with("ssh,tcp,127.0.0.1,"))
        .unwrap();
    assert!(pf.ends_with(",,22"), "{pf}");
    let off = calls
        .iter()
        .find(|c| c.get(2).is_some_and(|a| a == "--biossystemtimeoffset"))
        .unwrap()[3]
        .parse::<i64>()
        .unwrap();
    assert!(off < 0, "the offset goes back to 2024: {off}");

    // the OVA holds the provisioned disk
    let ova = dir.join("out/appliance.ova");
    let list = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&ova)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert_eq!(
        list.lines().collect::<Vec<_>>(),
        ["appliance.ovf", "appliance.mf", "appliance-disk1.vmdk"]
    );
    assert!(all.contains("engine-check disk=virtio"), "{all}");
    assert_nothing_registered(&home, &dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vbox_engine_unregisters_the_vm_when_start_fails() {
    let Some(stemcell) = stemcell() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("vbox-home");
    use_fake(&home);
    std::env::set_var("FAKE_VBOX_FAIL", "startvm");
    let _guard = FakeGuard(home.clone());
    let dir = tmp.path().join("b");
    let (r, events) = build(&dir, &stemcell, "  - type: shell\n    inline: [\"true\"]").await;
    std::env::remove_var("FAKE_VBOX_FAIL");
    let all = events.join("\n");
    assert_eq!(r.outcome, Outcome::Failed, "{all}");
    let err = r.error.clone().unwrap_or_default();
    assert!(
        err.contains("VBoxManage") && err.contains("startvm") && err.contains("FAKE_VBOX_FAIL"),
        "the error names the call and carries VirtualBox's output: {err}"
    );
    assert!(r.leftovers.is_empty(), "{:?}", r.leftovers);
    // the imported VM was journaled before the import and deleted in the unwinding
    assert!(all.contains("\"vbox_vm\""), "{all}");
    let subs: Vec<String> = calls(&home).into_iter().map(|c| c[0].clone()).collect();
    assert!(subs.contains(&"unregistervm".to_string()), "{subs:?}");
    assert_nothing_registered(&home, &dir);
}
