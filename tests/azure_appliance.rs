//! `opsbake build images/appliance.yml --iaas azure --var-file
//! images/azure.vars.yml` through the CLI binary, against the ARM test
//! server (crates/test-support/src/arm.rs) and azurite, with a hardened
//! local sshd playing the VM (its AuthorizedKeysCommand reads the VM's
//! customData from the ARM server). The credential is the chain's Azure CLI
//! one: an `az` put first on PATH prints the test server's token.
//!
//! Heavy stemcell (the page blob the image was made from equals the
//! stemcell's VHD), light stemcell (marketplace reference), `--iaas
//! aws,azure` at once (with moto), and kills: SIGKILL after the VM's
//! create then `opsbake cleanup`, SIGINT after it; both leave nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod aws_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_support::{events, finished, repo_root};
use opsbake_test_support::arm::{vm_sshd, ArmOptions, ArmServer};
use opsbake_test_support::azurite::Azurite;

fn bin() -> &'static std::path::Path {
    opsbake_test_support::cli::opsbake_bin()
}

fn skip() -> bool {
    opsbake_test_support::skip_peers()
}

fn stemcells() -> PathBuf {
    opsbake_test_support::stemcell::dir()
        .expect("OPSBAKE_TEST_STEMCELL_DIR is unset: run scripts/setup.sh and export target/ci-env")
}

/// A directory with an `az` that prints the ARM test server's token, as
/// `az account get-access-token -o json` does.
fn fake_az(dir: &Path) -> PathBuf {
    opsbake_test_support::arm::fake_az(dir, Some(&dir.join("az.log"))).unwrap()
}

struct Peers {
    arm: ArmServer,
    az: Azurite,
    sshd: opsbake_test_support::sshd::Sshd,
    dir: tempfile::TempDir,
    path: String,
}

async fn peers() -> Peers {
    let arm = ArmServer::start(ArmOptions::default()).unwrap();
    arm.seed_resource_group("opsbake-images", "westeurope");
    let az = Azurite::start().unwrap();
    let sas = opsbake_iaas_azure::sas::AccountSas::sign(
        opsbake_iaas_azure::sas::DEV_ACCOUNT,
        opsbake_iaas_azure::sas::DEV_KEY,
        time::OffsetDateTime::now_utc() + time::Duration::hours(1),
    )
    .unwrap();
    // Public read, so that the ARM server reads the VHD blob anonymously.
    opsbake_iaas_azure::blob::create_public_container(&az.account_url(), "opsbake-vhds", &sas)
        .await
        .unwrap();
    let sshd = vm_sshd(&arm).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bin = fake_az(dir.path());
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Peers {
        arm,
        az,
        sshd,
        dir,
        path,
    }
}

fn command(p: &Peers, args: &[&str]) -> Command {
    let root = repo_root();
    let mut c = Command::new(bin());
    c.current_dir(p.dir.path())
        .arg("--state-dir")
        .arg(p.dir.path().join("state"))
        .args(["--no-progress", "--json", "build"])
        .arg(root.join("images/appliance.yml"))
        .arg("--var-file")
        .arg(root.join("images/azure.vars.yml"))
        .arg("--var")
        .arg(format!("azure_endpoint={}", p.arm.endpoint()))
        .arg("--var")
        .arg(format!("azure_storage_endpoint={}", p.az.account_url()))
        .arg("--var")
        .arg(format!("azure_ssh_port={}", p.sshd.port()))
        .args(args)
        .env("PATH", &p.path)
        .env_remove("AZURE_CLIENT_SECRET")
        .env_remove("AZURE_FEDERATED_TOKEN_FILE")
        .env_remove("AZURE_STORAGE_KEY")
        .env_remove("AZURE_SUBSCRIPTION_ID");
    c
}

fn cleanup(p: &Peers, id: &str) -> std::process::Output {
    Command::new(bin())
        .current_dir(p.dir.path())
        .arg("--state-dir")
        .arg(p.dir.path().join("state"))
        .args(["--no-progress", "cleanup", id])
        .env("PATH", &p.path)
        .output()
        .unwrap()
}

/// What the ARM server holds besides the seeded group and kept images.
fn build_leftovers(arm: &ArmServer, id: &str) -> Vec<String> {
    arm.resources()
        .iter()
        .filter(|r| r.body["tags"]["opsbake-build-id"] == id || r.id.contains(id))
        .filter(|r| r.kind != "Microsoft.Compute/images")
        .map(|r| format!("{} {}", r.kind, r.id))
        .collect()
}

fn light_stemcell_dir(dir: &Path) -> PathBuf {
    let d = dir.join("stemcells");
    // The template names every IaaS's stemcell: link the test ones in.
    opsbake_test_support::stemcell::link_all(&stemcells(), &d).unwrap();
    opsbake_test_support::stemcell::azure_light(&d, opsbake_test_support::stemcell::AZURE_LIGHT_MF)
        .unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_appliance_build_through_the_cli() {
    if skip() {
        return;
    }
    let p = peers().await;
    let t0 = Instant::now();
    let out = command(&p, &["--iaas", "azure", "--skip-provision", "azure"])
        .output()
        .unwrap();
    let ev = events(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr:\n{}\nevents:\n{ev:#?}\nsshd:\n{}",
        String::from_utf8_lossy(&out.stderr),
        p.sshd.log_text()
    );
    eprintln!(
        "heavy azure appliance through the CLI: {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    let fin = finished(&ev, "azure");
    let id = fin["build_id"].as_str().unwrap();
    let art = fin["artifact_id"].as_str().unwrap();
    assert!(
        art.contains(&format!("/images/appliance-1.0.0-{id}")),
        "{art}"
    );
    assert!(p.sshd.log_text().contains("Accepted publickey for vcap"));
    // The page blob read back (by the ARM server, to make the image) equals
    // the stemcell's VHD.
    let reads = p.arm.blobs_read();
    assert_eq!(reads.len(), 1, "{reads:?}");
    let (len, sha) = vhd_sha256(
        &stemcells().join("bosh-stemcell-1.0-azure-hyperv-debian-bookworm-go_agent.tgz"),
    );
    assert_eq!((reads[0].len, reads[0].sha256.clone()), (len, sha));
    // The template's tags are on the image.
    let img = p
        .arm
        .of_kind("Microsoft.Compute/images")
        .into_iter()
        .find(|i| i.id.contains("appliance-1.0.0"))
        .unwrap();
    assert_eq!(img.body["tags"]["built-by"], "opsbake");
    assert!(
        build_leftovers(&p.arm, id).is_empty(),
        "{:?}",
        build_leftovers(&p.arm, id)
    );
    assert!(p.az.list_public("opsbake-vhds").is_empty());
    // The chain's Azure CLI credential ran `az`, cached: a few times only.
    let az_calls = std::fs::read_to_string(p.dir.path().join("az.log")).unwrap();
    assert!(az_calls.contains("get-access-token"), "{az_calls}");
    assert!(az_calls.lines().count() <= 2, "{az_calls}");
}

fn vhd_sha256(stemcell: &Path) -> (u64, String) {
    use sha2::Digest as _;
    use std::io::Read as _;
    let f = std::fs::File::open(stemcell).unwrap();
    let mut outer = tar::Archive::new(flate2::read::GzDecoder::new(f));
    for e in outer.entries().unwrap() {
        let e = e.unwrap();
        if e.path().unwrap().to_string_lossy() != "image" {
            continue;
        }
        let mut inner = tar::Archive::new(flate2::read::GzDecoder::new(e));
        let mut d = inner.entries().unwrap().next().unwrap().unwrap();
        let len = d.size();
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = d.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        return (len, hex::encode(h.finalize()));
    }
    panic!("no image member");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn light_appliance_build_through_the_cli() {
    if skip() {
        return;
    }
    let p = peers().await;
    let sd = light_stemcell_dir(p.dir.path());
    let out = command(
        &p,
        &[
            "--iaas",
            "azure",
            "--skip-provision",
            "azure",
            "--var",
            "azure_stemcell_prefix=light-",
            "--var",
            &format!("stemcell_dir={}", sd.display()),
        ],
    )
    .output()
    .unwrap();
    let ev = events(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr:\n{}\n{ev:#?}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = finished(&ev, "azure")["build_id"]
        .as_str()
        .unwrap()
        .to_string();
    // No blob, no base image: the VM came from the marketplace reference.
    assert!(p.arm.blobs_read().is_empty());
    assert_eq!(p.arm.of_kind("Microsoft.Compute/images").len(), 1);
    assert!(p
        .arm
        .log()
        .iter()
        .any(|l| l.starts_with("PUT") && l.contains("virtualMachines")));
    assert!(
        build_leftovers(&p.arm, &id).is_empty(),
        "{:?}",
        build_leftovers(&p.arm, &id)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_and_azure_at_once() {
    if skip() {
        return;
    }
    aws_support::aws_env();
    let Some(moto) = aws_support::moto() else {
        return;
    };
    let aws_sshd = opsbake_test_support::moto::instance_sshd(&moto, "us-east-1").unwrap();
    let p = peers().await;
    let root = repo_root();
    let mut c = command(
        &p,
        &["--iaas", "aws,azure", "--skip-provision", "aws,azure"],
    );
    c.arg("--var-file")
        .arg(root.join("images/moto.vars.yml"))
        .arg("--var")
        .arg(format!("aws_endpoint={}", moto.endpoint()))
        .arg("--var")
        .arg(format!("aws_ssh_port={}", aws_sshd.port()))
        .arg("--var")
        .arg("aws_stemcell_prefix=light-");
    // aws_env() set moto's credentials in this process: the CLI inherits them.
    let out = c.output().unwrap();
    let ev = events(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr:\n{}\n{ev:#?}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(finished(&ev, "aws")["outcome"], "succeeded");
    assert_eq!(finished(&ev, "azure")["outcome"], "succeeded");
    assert!(aws_sshd.log_text().contains("Accepted publickey for vcap"));
    assert!(p.sshd.log_text().contains("Accepted publickey for vcap"));
}

/// Start a build, read its `--json` events, and stop it when `pred` holds.
fn start_and_wait(
    p: &Peers,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> (std::process::Child, String, Vec<serde_json::Value>) {
    start_and_wait_with(p, true, pred)
}

fn start_and_wait_with(
    p: &Peers,
    light: bool,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> (std::process::Child, String, Vec<serde_json::Value>) {
    let sd = light_stemcell_dir(p.dir.path());
    let prefix = if light { "light-" } else { "" };
    let mut child = command(
        p,
        &[
            "--iaas",
            "azure",
            "--skip-provision",
            "azure",
            "--var",
            &format!("azure_stemcell_prefix={prefix}"),
            "--var",
            &format!("stemcell_dir={}", sd.display()),
            "--var",
            "azure_poll_interval=200ms",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let out = child.stdout.take().unwrap();
    let rx = opsbake_test_support::cli::event_stream(out);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let mut id = String::new();
    loop {
        let v = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(v) => v,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("event not seen; seen: {seen:#?}");
            }
        };
        if let Some(b) = v["build_id"].as_str() {
            id = b.to_string();
        }
        let hit = pred(&v);
        seen.push(v);
        if hit {
            return (child, id, seen);
        }
    }
}

fn vm_created(v: &serde_json::Value) -> bool {
    v["event"] == "resource_created" && v["kind"] == "virtual_machine"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_the_vm_create_then_cleanup_leaves_nothing() {
    if skip() {
        return;
    }
    let p = peers().await;
    let (mut child, id, _) = start_and_wait(&p, vm_created);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = build_leftovers(&p.arm, &id);
    assert!(
        before.iter().any(|l| l.contains("virtualMachines")),
        "{before:#?}"
    );
    let out = cleanup(&p, &id);
    assert!(
        out.status.success(),
        "cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = build_leftovers(&p.arm, &id);
    assert!(after.is_empty(), "left after cleanup: {after:#?}");
    // The sweep by tag touched nothing else: the images' group is still there.
    assert!(p
        .arm
        .resources()
        .iter()
        .any(|r| r.id.ends_with("resourceGroups/opsbake-images")));
    // The temporary group went in one call, not resource by resource.
    let log = p.arm.log();
    assert!(
        log.iter().any(
            |l| l.starts_with("DELETE") && l.contains(&format!("resourceGroups/opsbake-{id}?"))
        ),
        "{log:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_after_the_vm_create_unwinds_without_cleanup() {
    if skip() {
        return;
    }
    let p = peers().await;
    let (mut child, id, _) = start_and_wait(&p, vm_created);
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let code = child.wait().unwrap();
    assert!(!code.success());
    let after = build_leftovers(&p.arm, &id);
    assert!(after.is_empty(), "left after SIGINT: {after:#?}");
    assert!(p.arm.of_kind("Microsoft.Compute/images").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_the_blob_upload_then_cleanup_deletes_the_blob() {
    if skip() {
        return;
    }
    let p = peers().await;
    // The intent is journaled before the first Put Page: wait for it.
    let (mut child, id, _) = start_and_wait_with(&p, false, |v| {
        v["event"] == "resource_intent" && v["kind"] == "blob"
    });
    // Let some pages land, so there is a blob to find.
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.az.list_public("opsbake-vhds").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let blobs = p.az.list_public("opsbake-vhds");
    assert_eq!(blobs.len(), 1, "{blobs:?}");
    assert!(blobs[0].contains(&id), "{blobs:?}");
    // No create was recorded: cleanup finds the blob by the id in its intent.
    let out = cleanup(&p, &id);
    assert!(
        out.status.success(),
        "cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        p.az.list_public("opsbake-vhds").is_empty(),
        "{:?}",
        p.az.list_public("opsbake-vhds")
    );
    assert!(build_leftovers(&p.arm, &id).is_empty());
    assert!(p.arm.of_kind("Microsoft.Compute/images").is_empty());
}

async fn sigkill_then_cleanup(pred: fn(&serde_json::Value) -> bool, label: &str) {
    if skip() {
        return;
    }
    let p = peers().await;
    let (mut child, id, _) = start_and_wait(&p, pred);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = build_leftovers(&p.arm, &id);
    assert!(
        !before.is_empty(),
        "{label}: the kill left nothing to clean"
    );
    let out = cleanup(&p, &id);
    assert!(
        out.status.success(),
        "{label}: cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = build_leftovers(&p.arm, &id);
    assert!(after.is_empty(), "{label}: left after cleanup: {after:#?}");
    assert!(p
        .arm
        .resources()
        .iter()
        .any(|r| r.id.ends_with("resourceGroups/opsbake-images")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_the_nsg_then_cleanup_leaves_nothing() {
    sigkill_then_cleanup(
        |v| v["event"] == "resource_created" && v["kind"] == "network_security_group",
        "after the NSG",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_inside_the_vm_create_then_cleanup_finds_it_by_its_intended_id() {
    // The intent is journaled, the PUT is in flight or its operation is
    // being polled: no id recorded, the id in the intent finds it.
    sigkill_then_cleanup(
        |v| v["event"] == "resource_intent" && v["kind"] == "virtual_machine",
        "inside the VM create",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_after_the_nsg_unwinds_without_cleanup() {
    if skip() {
        return;
    }
    let p = peers().await;
    let (mut child, id, _) = start_and_wait(&p, |v| {
        v["event"] == "resource_created" && v["kind"] == "network_security_group"
    });
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    assert!(!child.wait().unwrap().success());
    let after = build_leftovers(&p.arm, &id);
    assert!(after.is_empty(), "left after SIGINT: {after:#?}");
}
