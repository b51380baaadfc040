//! The azure kill matrix through the CLI binary (`opsbake --json build`),
//! against the ARM test server and azurite, with a hardened local sshd
//! playing the VM: for each point of a build (after the blob upload
//! started, after the base image, after the resource group, mid-
//! provisioning, after the image, mid-replication; the NSG and VM points
//! are in azure_appliance.rs) the build is stopped by SIGKILL then
//! `opsbake cleanup`, or by SIGINT alone, and the test asserts through the
//! ARM server and azurite that nothing of the build is left (OS disk
//! included). One build per test, the kill on the event itself (no sleeps),
//! through test-support's generic kill harness (kill.rs). Last, a build
//! whose journal is gone is swept by its tag: `opsbake cleanup
//! --sweep-template`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use opsbake_test_support::arm::{vm_sshd, ArmOptions, ArmServer, SUBSCRIPTION, TOKEN};
use opsbake_test_support::azurite::Azurite;
use opsbake_test_support::kill::{self, CleanupCmd, Signal};
use serde_json::Value;

const HEAVY: &str = "bosh-stemcell-1.0-azure-hyperv-debian-bookworm-go_agent.tgz";
const CONTAINER: &str = "opsbake-vhds";

fn bin() -> PathBuf {
    opsbake_test_support::cli::opsbake_bin().to_path_buf()
}

fn skip() -> bool {
    opsbake_test_support::skip_peers()
}

/// A directory with an `az` printing the ARM test server's token (the
/// chain's Azure CLI credential).
fn fake_az(dir: &Path) -> PathBuf {
    opsbake_test_support::arm::fake_az(dir, None).unwrap()
}

/// A light azure stemcell (a marketplace reference the ARM server knows).
fn light_stemcell(dir: &Path) -> PathBuf {
    opsbake_test_support::stemcell::azure_light(dir, opsbake_test_support::stemcell::AZURE_LIGHT_MF)
        .unwrap()
}

struct Peers {
    arm: ArmServer,
    az: Azurite,
    sshd: opsbake_test_support::sshd::Sshd,
    dir: tempfile::TempDir,
    path: String,
    template: PathBuf,
}

/// The peers and a template: a gallery version replicated to two regions
/// (six polls, so that a kill lands mid-replication), a shell provisioner,
/// a managed image; `build_group`: resources one by one in that group
/// instead of a temporary group.
async fn peers(heavy: bool, build_group: Option<&str>) -> Peers {
    let arm = ArmServer::start(ArmOptions {
        replication_polls: Some(6),
        ..ArmOptions::default()
    })
    .unwrap();
    arm.seed_resource_group("opsbake-images", "westeurope");
    if let Some(g) = build_group {
        arm.seed_resource_group(g, "westeurope");
    }
    let az = Azurite::start().unwrap();
    let sas = opsbake_iaas_azure::sas::AccountSas::sign(
        opsbake_iaas_azure::sas::DEV_ACCOUNT,
        opsbake_iaas_azure::sas::DEV_KEY,
        time::OffsetDateTime::now_utc() + time::Duration::hours(1),
    )
    .unwrap();
    // Public read: the ARM server reads VHD blobs anonymously; the test
    // lists the container anonymously.
    opsbake_iaas_azure::blob::create_public_container(&az.account_url(), CONTAINER, &sas)
        .await
        .unwrap();
    let sshd = vm_sshd(&arm).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = format!(
        "{}:{}",
        fake_az(dir.path()).display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let sc = if heavy {
        PathBuf::from(std::env::var_os("OPSBAKE_TEST_STEMCELL_DIR").expect(
            "OPSBAKE_TEST_STEMCELL_DIR is unset: run scripts/setup.sh and export target/ci-env",
        ))
        .join(HEAVY)
    } else {
        light_stemcell(dir.path())
    };
    let group = build_group
        .map(|g| format!("      build_resource_group: {g}\n"))
        .unwrap_or_default();
    let template = dir.path().join("killed.yml");
    std::fs::write(
        &template,
        format!(
            r#"name: killed
version: "1.0"
stemcells:
  azure: {{path: "{sc}"}}
builds:
  azure:
    disk: 10240
    network: {{ssh_cidrs: [203.0.113.0/24]}}
    ssh: {{user: vcap, host: 127.0.0.1, port: {port}, login_timeout: 60s}}
    options:
      subscription_id: "{SUBSCRIPTION}"
      resource_group: opsbake-images
      location: westeurope
      vm_size: Standard_B1s
      endpoint: "{arm}"
      storage_endpoint: "{storage}"
      image_name: "killed-${{build.id}}"
      poll_interval: 200ms
{group}      gallery: {{name: opsbake_images, image: killed, version: 1.0.0, regions: [{{name: westeurope}}, {{name: northeurope}}]}}
provision:
  - type: shell
    sudo: false
    inline:
      - echo "provisioned by opsbake" > "$HOME/opsbake-kill-marker"
outputs:
  directory: out
"#,
            sc = sc.display(),
            port = sshd.port(),
            arm = arm.endpoint(),
            storage = az.account_url(),
        ),
    )
    .unwrap();
    Peers {
        arm,
        az,
        sshd,
        dir,
        path,
        template,
    }
}

fn build_cmd(p: &Peers) -> Command {
    let mut c = Command::new(bin());
    c.current_dir(p.dir.path())
        .arg("--state-dir")
        .arg(p.dir.path().join("state"))
        .args(["--no-progress", "--json", "build"])
        .arg(&p.template)
        .args(["--iaas", "azure"])
        .env("PATH", &p.path)
        .env_remove("AZURE_CLIENT_SECRET")
        .env_remove("AZURE_FEDERATED_TOKEN_FILE")
        .env_remove("AZURE_STORAGE_KEY")
        .env_remove("AZURE_SUBSCRIPTION_ID");
    c
}

fn cleanup_cmd(p: &Peers, extra: &[&str]) -> CleanupCmd {
    CleanupCmd {
        bin: bin(),
        state_dir: p.dir.path().join("state"),
        cwd: p.dir.path().to_path_buf(),
        envs: vec![("PATH".into(), p.path.clone())],
        extra: extra.iter().map(|s| s.to_string()).collect(),
    }
}

/// Everything of the build the peers still hold: ARM resources tagged with
/// its id or named after it (its temporary group and all in it, the OS
/// disk included; images and gallery versions too), and blobs named after
/// it. The gallery and its image definition are shared containers, kept by
/// design (docs/azure.md), and are not counted.
fn leftovers(p: &Peers, id: &str) -> Vec<String> {
    let mut out: Vec<String> = p
        .arm
        .resources()
        .iter()
        .filter(|r| r.body["tags"]["opsbake-build-id"] == id || r.id.contains(id))
        .filter(|r| {
            r.kind != "Microsoft.Compute/galleries"
                && r.kind != "Microsoft.Compute/galleries/images"
        })
        .map(|r| format!("{} {}", r.kind, r.id))
        .collect();
    out.extend(
        p.az.list_public(CONTAINER)
            .into_iter()
            .map(|b| format!("blob {b}")),
    );
    out
}

/// One row of the matrix: build, stop on `pred` with `signal`, clean up
/// after a SIGKILL, assert nothing of the build is left.
async fn row(heavy: bool, signal: Signal, pred: fn(&Value) -> bool, label: &str) {
    if skip() {
        return;
    }
    let p = peers(heavy, None).await;
    let limit = Duration::from_secs(if heavy { 240 } else { 90 });
    let k = kill::run_until(build_cmd(&p), pred, signal, limit)
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    assert!(!k.build_id.is_empty(), "{label}: no build id");
    assert!(!k.status.success(), "{label}: the build did not stop");
    let id = k.build_id.clone();
    match signal {
        Signal::Kill => {
            let before = leftovers(&p, &id);
            assert!(
                !before.is_empty(),
                "{label}: the kill left nothing to clean"
            );
            let out = kill::cleanup(&cleanup_cmd(&p, &[]), &id).unwrap();
            assert!(
                out.status.success(),
                "{label}: cleanup: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Signal::Int => {}
    }
    let after = leftovers(&p, &id);
    assert!(
        after.is_empty(),
        "{label} ({}): left: {after:#?}\nevents: {:#?}",
        signal.label(),
        k.events
    );
    // Nothing else was touched: the images' group is still there.
    assert!(p
        .arm
        .resources()
        .iter()
        .any(|r| r.id.ends_with("resourceGroups/opsbake-images")));
    if label.contains("provisioning") {
        // The kill came after the login: the build was provisioning.
        assert!(
            p.sshd.log_text().contains("Accepted publickey for vcap"),
            "{label}: {}",
            p.sshd.log_text()
        );
    }
    // No build VM still runs (the sshd plays running VMs only).
    assert!(p.arm.custom_data().is_empty(), "{label}");
}

fn blob_upload_started(v: &Value) -> bool {
    kill::intent(v, "blob")
}
fn base_image_made(v: &Value) -> bool {
    // Heavy: the first image is the imported base image.
    kill::created(v, "image")
}
fn resource_group_made(v: &Value) -> bool {
    kill::created(v, "resource_group")
}
fn provisioning(v: &Value) -> bool {
    kill::step_started(v, "provision")
}
fn image_made(v: &Value) -> bool {
    // Light: the first image is the captured one.
    kill::created(v, "image")
}
fn replicating(v: &Value) -> bool {
    kill::message(v, "replication of 1.0.0")
}

macro_rules! kill_row {
    ($name:ident, $heavy:expr, $signal:expr, $pred:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            row($heavy, $signal, $pred, stringify!($name)).await;
        }
    };
}

kill_row!(
    sigint_after_the_blob_upload_started,
    true,
    Signal::Int,
    blob_upload_started
);
kill_row!(
    sigkill_after_the_base_image,
    true,
    Signal::Kill,
    base_image_made
);
kill_row!(
    sigint_after_the_base_image,
    true,
    Signal::Int,
    base_image_made
);
kill_row!(
    sigkill_after_the_resource_group,
    false,
    Signal::Kill,
    resource_group_made
);
kill_row!(
    sigint_after_the_resource_group,
    false,
    Signal::Int,
    resource_group_made
);
kill_row!(sigkill_mid_provisioning, false, Signal::Kill, provisioning);
kill_row!(sigint_mid_provisioning, false, Signal::Int, provisioning);
kill_row!(sigkill_after_the_image, false, Signal::Kill, image_made);
kill_row!(sigint_after_the_image, false, Signal::Int, image_made);
kill_row!(sigkill_mid_replication, false, Signal::Kill, replicating);
kill_row!(sigint_mid_replication, false, Signal::Int, replicating);

/// The journal is gone (another machine ran the build): `opsbake cleanup
/// --sweep-template` finds the build's resources by their tag, in a given
/// build group (one by one: VM before its NIC, then IP, NSG, network), and
/// deletes them all; what other builds made stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_template_finds_a_killed_build_whose_journal_is_gone() {
    if skip() {
        return;
    }
    let p = peers(false, Some("builds")).await;
    let k = kill::run_until(
        build_cmd(&p),
        |v| kill::created(v, "virtual_machine"),
        Signal::Kill,
        Duration::from_secs(90),
    )
    .unwrap();
    let id = k.build_id.clone();
    let before = leftovers(&p, &id);
    assert!(
        before.iter().any(|l| l.contains("virtualMachines"))
            && before.iter().any(|l| l.contains("networkSecurityGroups")),
        "{before:#?}"
    );
    // Someone else's resource in the same group, tagged with another build.
    let other = format!(
        "/subscriptions/{SUBSCRIPTION}/resourceGroups/builds/providers/Microsoft.Network/networkSecurityGroups/other"
    );
    let client = put_tagged_nsg(&p, &other);
    assert!(client, "seeding another build's NSG");
    std::fs::remove_dir_all(p.dir.path().join("state")).unwrap();
    let t = p.template.display().to_string();
    let out = kill::cleanup(
        &cleanup_cmd(&p, &["--sweep-template", &t, "--iaas", "azure"]),
        &id,
    )
    .unwrap();
    assert!(
        out.status.success(),
        "sweep: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let after = leftovers(&p, &id);
    assert!(after.is_empty(), "left after the sweep: {after:#?}");
    assert!(p.arm.resources().iter().any(|r| r.id == other));
    // One by one, in dependency order.
    let deletes: Vec<String> = p
        .arm
        .log()
        .into_iter()
        .filter(|l| l.starts_with("DELETE"))
        .collect();
    let pos = |k: &str| {
        deletes
            .iter()
            .position(|l| l.contains(k))
            .unwrap_or_else(|| panic!("no DELETE of {k}: {deletes:#?}"))
    };
    assert!(
        pos("virtualMachines") < pos("networkInterfaces"),
        "{deletes:#?}"
    );
    assert!(
        pos("networkInterfaces") < pos("networkSecurityGroups"),
        "{deletes:#?}"
    );
}

/// PUT an NSG tagged with another build id through the ARM server's API.
fn put_tagged_nsg(p: &Peers, id: &str) -> bool {
    let body =
        serde_json::json!({"location": "westeurope", "tags": {"opsbake-build-id": "someone-else"}})
            .to_string();
    let addr = p.arm.endpoint().trim_start_matches("http://").to_string();
    let req = format!(
        "PUT {id}?api-version=2023-09-01 HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 201") || out.starts_with("HTTP/1.1 200")
}
