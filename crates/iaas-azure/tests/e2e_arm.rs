//! `azure` builds end to end through core's runner with the real SSH
//! transport and provisioners: the ARM test server plays Resource Manager,
//! azurite plays blob storage, and a hardened sshd on 127.0.0.1 plays the VM
//! (through the `ssh.host`/`ssh.port` override; the server's TEST-NET
//! addresses are never contacted). The sshd has no authorized_keys: its
//! `AuthorizedKeysCommand` reads the running VMs' customData from the ARM
//! server and prints `env.bosh.authorized_keys`, so a login proves the key
//! travelled through customData.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use opsbake_core::runner::{BuildJob, BuildResult};
use opsbake_core::template::Iaas;
use opsbake_iaas_azure::credential::StaticToken;
use opsbake_test_support::arm::{ArmOptions, ArmServer, SUBSCRIPTION, TOKEN};
use opsbake_test_support::azurite::Azurite;
use opsbake_test_support::build::{self, EventLog};
use opsbake_test_support::stemcell::{appliance, loopback_ssh};
use tokio_util::sync::CancellationToken;

pub const HEAVY: &str = "bosh-stemcell-1.0-azure-hyperv-debian-bookworm-go_agent.tgz";

fn skip() -> bool {
    opsbake_test_support::skip_peers()
}

fn stemcell(name: &str) -> PathBuf {
    opsbake_test_support::stemcell::path(name)
        .expect("OPSBAKE_TEST_STEMCELL_DIR is unset: run scripts/setup.sh and export target/ci-env")
}

/// A light azure stemcell pointing at the ARM server's marketplace image.
fn light_stemcell(dir: &Path) -> PathBuf {
    let mf = r#"---
name: bosh-azure-hyperv-debian-bookworm-go_agent
version: '1.0'
bosh_protocol: 1
api_version: 3
sha1: da39a3ee5e6b4b0d3255bfef95601890afd80709
operating_system: debian-bookworm
stemcell_formats: [azure-light]
cloud_properties:
  name: bosh-azure-hyperv-debian-bookworm-go_agent
  version: '1.0'
  infrastructure: azure
  hypervisor: hyperv
  disk: 384
  disk_format: vhd
  container_format: bare
  os_type: linux
  os_distro: debian
  architecture: x86_64
  image: {publisher: pivotal, offer: bosh-debian-bookworm, sku: debian-bookworm, version: '1.0.0'}
"#;
    opsbake_test_support::stemcell::azure_light(dir, mf).unwrap()
}

pub fn template(
    dir: &Path,
    stemcell: &Path,
    arm: &str,
    storage: &str,
    ssh_port: u16,
    extra: &str,
) -> PathBuf {
    let build = format!(
        r#"    disk: 10240
{ssh}
    options:
      subscription_id: "{SUBSCRIPTION}"
      resource_group: images
      location: westeurope
      vm_size: Standard_B1s
      endpoint: "{arm}"
      storage_endpoint: "{storage}"
      storage_container: vhds
      image_name: "appliance-1.0-${{build.id}}"
      poll_interval: 1s
{extra}"#,
        ssh = loopback_ssh(ssh_port),
    );
    appliance(dir, "azure", stemcell, &build)
}

async fn run(dir: &Path, template: &Path, id: &str) -> (BuildResult, Vec<String>) {
    run_with(dir, template, id, false).await
}

async fn run_with(
    dir: &Path,
    template: &Path,
    id: &str,
    reimport: bool,
) -> (BuildResult, Vec<String>) {
    let (plan, inputs) = build::plan_and_inputs(template, Iaas::Azure, id);
    let mut b =
        opsbake_iaas_azure::AzureBuilder::new(&plan, Arc::new(StaticToken(TOKEN.into()))).unwrap();
    let mut w = b.waiter;
    w.initial = std::time::Duration::from_millis(20);
    w.max = std::time::Duration::from_millis(100);
    b.set_waiter(w);
    let log = Arc::new(EventLog::default());
    let mut runner = build::runner(dir, log.clone());
    runner.options.reimport = reimport;
    let job = BuildJob {
        plan,
        builder: Arc::new(b),
        inputs: inputs.into(),
    };
    let r = build::run_one(runner, job, CancellationToken::new()).await;
    (r, log.lines())
}

/// Public-read container so that the ARM server reads blobs anonymously.
pub async fn public_container(az: &Azurite, name: &str) {
    let sas = opsbake_iaas_azure::sas::AccountSas::sign(
        opsbake_iaas_azure::sas::DEV_ACCOUNT,
        opsbake_iaas_azure::sas::DEV_KEY,
        time::OffsetDateTime::now_utc() + time::Duration::hours(1),
    )
    .unwrap();
    let u = url::Url::parse(&format!("{}/{name}", az.account_url())).unwrap();
    azure_storage_blob::BlobContainerClient::new(sas.apply(&u), None, None)
        .unwrap()
        .create(Some(
            azure_storage_blob::models::BlobContainerClientCreateOptions {
                access: Some(azure_storage_blob::models::PublicAccessType::Container),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
}

/// SHA-256 of the stemcell's VHD, streamed.
pub fn vhd_sha256(stemcell: &Path) -> (u64, String) {
    use sha2::Digest as _;
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

fn kinds(arm: &ArmServer) -> Vec<String> {
    arm.resources()
        .iter()
        .map(|r| format!("{} {}", r.kind, r.id))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_stemcell_build_imports_the_vhd_and_logs_in_through_custom_data() {
    if skip() {
        return;
    }
    let sc = stemcell(HEAVY);
    let arm = ArmServer::start(ArmOptions::default()).unwrap();
    arm.seed_resource_group("images", "westeurope");
    let az = Azurite::start().unwrap();
    public_container(&az, "vhds").await;
    let sshd = opsbake_test_support::arm::vm_sshd(&arm).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let t = template(
        dir.path(),
        &sc,
        arm.endpoint(),
        &az.account_url(),
        sshd.port(),
        "      gallery: {name: opsbake_images, image: appliance, version: 1.0.0, regions: [{name: westeurope}, {name: northeurope, replicas: 2}]}",
    );
    // One throttled call on the way: 429 + Retry-After is honoured.
    arm.throttle(1);
    let (r, events) = run(dir.path(), &t, "ob-az-heavy-1").await;
    // The login used the key from customData (vcap has no authorized_keys).
    build::assert_provisioned_over(&sshd, &r, &events);
    // The page blob the image was made from equals the stemcell's VHD.
    let (len, sha) = vhd_sha256(&sc);
    let reads = arm.blobs_read();
    assert_eq!(reads.len(), 1, "{reads:?}");
    assert_eq!(
        (reads[0].len, reads[0].sha256.as_str()),
        (len, sha.as_str())
    );
    // Kept: the managed image, the base image (by stemcell sha1), the
    // gallery, its definition and version; the build's group is gone, and
    // so is the blob.
    let left = kinds(&arm);
    let images = arm.of_kind("Microsoft.Compute/images");
    assert_eq!(images.len(), 2, "{left:#?}");
    assert!(images
        .iter()
        .any(|i| i.body["tags"]["opsbake-stemcell-sha1"].is_string()));
    let versions = arm.of_kind("Microsoft.Compute/galleries/images/versions");
    assert_eq!(versions.len(), 1, "{left:#?}");
    assert!(
        arm.of_kind("Microsoft.Compute/virtualMachines").is_empty(),
        "{left:#?}"
    );
    assert!(
        arm.of_kind("Microsoft.Compute/disks").is_empty(),
        "{left:#?}"
    );
    assert!(
        arm.of_kind("Microsoft.Network/networkInterfaces")
            .is_empty(),
        "{left:#?}"
    );
    assert!(
        !left
            .iter()
            .any(|l| l.contains("resourceGroups/opsbake-ob-az-heavy-1")),
        "{left:#?}"
    );
    assert!(
        az.list_public("vhds").is_empty(),
        "{:?}",
        az.list_public("vhds")
    );
    // Replication progress was reported per region.
    assert!(
        events
            .iter()
            .any(|e| e.contains("replication of 1.0.0") && e.contains("northeurope")),
        "{}",
        events.join("\n")
    );
    let art = r.artifact.unwrap();
    assert!(
        art.id.contains("/images/appliance-1.0-ob-az-heavy-1"),
        "{}",
        art.id
    );
    assert!(art.id.contains("/versions/1.0.0"), "{}", art.id);
    // Long-running operations took several polls each; the temporary
    // group went in one DELETE.
    let log = arm.log();
    assert!(
        log.iter().filter(|l| l.contains("/operations/")).count() >= 3 * 8,
        "{log:#?}"
    );
    let deletes: Vec<&String> = log.iter().filter(|l| l.starts_with("DELETE")).collect();
    assert!(
        deletes
            .iter()
            .any(|l| l.contains("resourceGroups/opsbake-ob-az-heavy-1?")),
        "{deletes:#?}"
    );
    assert!(
        !deletes.iter().any(|l| l.contains("virtualMachines")),
        "{deletes:#?}"
    );

    // A second build reuses the base image: no blob upload, no image read.
    let t = template(
        dir.path(),
        &sc,
        arm.endpoint(),
        &az.account_url(),
        sshd.port(),
        "",
    );
    let (r, events) = run(dir.path(), &t, "ob-az-heavy-2").await;
    assert!(r.error.is_none(), "{:?}\n{}", r.error, events.join("\n"));
    assert_eq!(arm.blobs_read().len(), 1);

    // --reimport: the blob is uploaded and the base image made again.
    let (r, events) = run_with(dir.path(), &t, "ob-az-heavy-3", true).await;
    assert!(r.error.is_none(), "{:?}\n{}", r.error, events.join("\n"));
    assert_eq!(arm.blobs_read().len(), 2);
    let base: Vec<_> = arm
        .of_kind("Microsoft.Compute/images")
        .into_iter()
        .filter(|i| i.body["tags"]["opsbake-stemcell-sha1"].is_string())
        .collect();
    assert_eq!(base.len(), 1, "one base image, replaced");
    assert_eq!(base[0].body["tags"]["opsbake-build-id"], "ob-az-heavy-3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn light_stemcell_build_in_a_given_group_deletes_vm_then_disk_and_nic() {
    if skip() {
        return;
    }
    let arm = ArmServer::start(ArmOptions::default()).unwrap();
    arm.seed_resource_group("images", "westeurope");
    arm.seed_resource_group("builds", "westeurope");
    let sshd = opsbake_test_support::arm::vm_sshd(&arm).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sc = light_stemcell(dir.path());
    let t = template(
        dir.path(),
        &sc,
        arm.endpoint(),
        "http://127.0.0.1:9/devstoreaccount1",
        sshd.port(),
        "      build_resource_group: builds",
    );
    let (r, events) = run(dir.path(), &t, "ob-az-light-1").await;
    assert!(
        r.error.is_none(),
        "{:?}\n{}\nsshd:\n{}",
        r.error,
        events.join("\n"),
        sshd.log_text()
    );
    assert!(sshd.log_text().contains("Accepted publickey for vcap"));
    // The VM ran from the marketplace reference.
    let log = arm.log();
    let order: Vec<&str> = log
        .iter()
        .filter(|l| l.starts_with("DELETE"))
        .map(|l| l.as_str())
        .collect();
    let pos = |k: &str| {
        order
            .iter()
            .position(|l| l.contains(k))
            .unwrap_or_else(|| panic!("no DELETE of {k}: {order:#?}"))
    };
    assert!(
        pos("virtualMachines") < pos("networkInterfaces"),
        "{order:#?}"
    );
    assert!(
        pos("networkInterfaces") < pos("publicIPAddresses"),
        "{order:#?}"
    );
    assert!(
        pos("networkInterfaces") < pos("networkSecurityGroups"),
        "{order:#?}"
    );
    assert!(pos("virtualMachines") < pos("disks"), "{order:#?}");
    // Only the image and the two groups remain.
    let left = kinds(&arm);
    assert_eq!(left.len(), 3, "{left:#?}");
    assert_eq!(
        arm.of_kind("Microsoft.Compute/images").len(),
        1,
        "{left:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_vm_create_surfaces_the_operation_error_and_leaves_nothing() {
    if skip() {
        return;
    }
    let arm = ArmServer::start(ArmOptions::default()).unwrap();
    arm.seed_resource_group("images", "westeurope");
    let dir = tempfile::tempdir().unwrap();
    let sc = light_stemcell(dir.path());
    let t = template(
        dir.path(),
        &sc,
        arm.endpoint(),
        "http://127.0.0.1:9/devstoreaccount1",
        9,
        "",
    );
    arm.fail_next(
        "virtualmachines",
        "AllocationFailed",
        "Allocation failed. We do not have sufficient capacity.",
    );
    let (r, events) = run(dir.path(), &t, "ob-az-fail-1").await;
    let e = r.error.clone().unwrap_or_default();
    assert!(
        e.contains("AllocationFailed") && e.contains("sufficient capacity"),
        "{e}\n{}",
        events.join("\n")
    );
    let left = kinds(&arm);
    assert_eq!(left.len(), 1, "{left:#?}");
    assert!(r.leftovers.is_empty(), "{:?}", r.leftovers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_refuses_a_missing_group_and_a_size_not_offered_before_creating_anything() {
    if skip() {
        return;
    }
    let arm = ArmServer::start(ArmOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sc = light_stemcell(dir.path());
    let t = template(
        dir.path(),
        &sc,
        arm.endpoint(),
        "http://127.0.0.1:9/devstoreaccount1",
        9,
        "",
    );
    let (r, _) = run(dir.path(), &t, "ob-az-val-1").await;
    let e = r.error.unwrap_or_default();
    assert!(
        e.contains("ResourceGroupNotFound") && e.contains("images"),
        "{e}"
    );
    arm.seed_resource_group("images", "westeurope");
    let t2 = t.with_file_name("t2.yml");
    std::fs::write(
        &t2,
        std::fs::read_to_string(&t)
            .unwrap()
            .replace("Standard_B1s", "Standard_X99"),
    )
    .unwrap();
    let (r, _) = run(dir.path(), &t2, "ob-az-val-2").await;
    let e = r.error.unwrap_or_default();
    assert!(
        e.contains("Standard_X99") && e.contains("westeurope"),
        "{e}"
    );
    assert_eq!(arm.resources().len(), 1);
    assert!(
        !arm.log().iter().any(|l| l.starts_with("PUT")),
        "{:#?}",
        arm.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_finds_only_what_carries_the_build_tag() {
    let arm = ArmServer::start(ArmOptions {
        polls: 2,
        ..ArmOptions::default()
    })
    .unwrap();
    arm.seed_resource_group("images", "westeurope");
    let cfg = opsbake_iaas_azure::cleanup::CleanupConfig {
        subscription: SUBSCRIPTION.into(),
        endpoint: arm.endpoint().into(),
        location: "westeurope".into(),
        ..Default::default()
    };
    let cred: Arc<dyn azure_core::credentials::TokenCredential> =
        Arc::new(StaticToken(TOKEN.into()));
    let client = opsbake_iaas_azure::arm::Arm::new(
        arm.endpoint(),
        SUBSCRIPTION,
        cred.clone(),
        opsbake_core::wait::Waiter {
            initial: std::time::Duration::from_millis(10),
            max: std::time::Duration::from_millis(50),
            timeout: std::time::Duration::from_secs(30),
        },
    )
    .unwrap();
    for (rg, build) in [("g-mine", "b-1"), ("g-other", "b-2")] {
        let id = client.rg_id(rg);
        client
            .put(
                &id,
                &serde_json::json!({"location": "westeurope", "tags": {"opsbake-build-id": build}}),
                "westeurope",
            )
            .await
            .unwrap();
    }
    let nsg = client.res_id(
        "images",
        "Microsoft.Network/networkSecurityGroups",
        "n-mine",
    );
    client
        .put(
            &nsg,
            &serde_json::json!({"location": "westeurope", "tags": {"opsbake-build-id": "b-1"}}),
            "westeurope",
        )
        .await
        .unwrap();
    let d = opsbake_iaas_azure::deleter_with(&cfg, cred).unwrap();
    let found = d.sweep("b-1").await.unwrap();
    let ids: Vec<String> = found.iter().filter_map(|r| r.id.clone()).collect();
    assert_eq!(ids.len(), 2, "{ids:#?}");
    assert!(ids.iter().any(|i| i.ends_with("/g-mine")));
    assert!(ids.iter().any(|i| i.ends_with("/n-mine")));
    // In creation order (groups first); the unwind deletes in reverse.
    assert_eq!(found[0].kind, "resource_group");
    for r in found.iter().rev() {
        d.delete(r).await.unwrap();
    }
    let left: Vec<String> = arm.resources().iter().map(|r| r.id.clone()).collect();
    assert_eq!(left.len(), 2, "{left:#?}");
    assert!(
        left.iter().any(|i| i.ends_with("/g-other")) && left.iter().any(|i| i.ends_with("/images"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_keys_from_the_serial_log_are_pinned() {
    if skip() {
        return;
    }
    let arm = ArmServer::start(ArmOptions::default()).unwrap();
    arm.seed_resource_group("images", "westeurope");
    let sshd = opsbake_test_support::arm::vm_sshd(&arm).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sc = light_stemcell(dir.path());
    let log_with = |key: &str| {
        format!("[    7.2] cloud-init[901]: -----BEGIN SSH HOST KEY KEYS-----\n[    7.2] cloud-init[901]: {key} root@vm\n[    7.2] cloud-init[901]: -----END SSH HOST KEY KEYS-----\n")
    };
    // The sshd's own key in the log: pinned, and the login succeeds.
    arm.set_serial_log(Some(log_with(sshd.host_ed25519_key().unwrap())));
    let t = template(
        dir.path(),
        &sc,
        arm.endpoint(),
        "http://127.0.0.1:9/devstoreaccount1",
        sshd.port(),
        "",
    );
    let (r, events) = run(dir.path(), &t, "ob-az-hk-1").await;
    assert!(r.error.is_none(), "{:?}\n{}", r.error, events.join("\n"));
    assert!(
        events.iter().any(|e| e.contains("pinning 1 host key(s)")),
        "{}",
        events.join("\n")
    );
    // Another key in the log: the login is refused (no trust on first use).
    arm.set_serial_log(Some(log_with(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJ4b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3",
    )));
    let t2 = t.with_file_name("t2.yml");
    std::fs::write(
        &t2,
        std::fs::read_to_string(&t)
            .unwrap()
            .replace("login_timeout: 60s", "login_timeout: 5s"),
    )
    .unwrap();
    let (r, _) = run(dir.path(), &t2, "ob-az-hk-2").await;
    let e = r.error.unwrap_or_default();
    assert!(
        e.contains("host key") && e.contains("refused"),
        "a wrong pinned key must fail the login: {e}"
    );
    assert_eq!(
        sshd.log_text().matches("Accepted publickey").count(),
        1,
        "{}",
        sshd.log_text()
    );
    // Nothing of the failed build is left.
    assert!(!arm.resources().iter().any(|x| x.id.contains("ob-az-hk-2")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_outliving_the_wait_is_kept_not_deleted() {
    if skip() {
        return;
    }
    // Replication takes 10,000 polls; the build waits 3 s at most.
    let arm = ArmServer::start(ArmOptions {
        replication_polls: Some(10_000),
        ..ArmOptions::default()
    })
    .unwrap();
    arm.seed_resource_group("images", "westeurope");
    let sshd = opsbake_test_support::arm::vm_sshd(&arm).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sc = light_stemcell(dir.path());
    let t = template(
        dir.path(),
        &sc,
        arm.endpoint(),
        "http://127.0.0.1:9/devstoreaccount1",
        sshd.port(),
        "      wait_timeout: 3s\n      gallery: {name: g1, image: appliance, version: 2.0.0, regions: [{name: westeurope}, {name: eastus}]}",
    );
    let (r, events) = run(dir.path(), &t, "ob-az-repl-1").await;
    let e = r.error.unwrap_or_default();
    assert!(
        e.contains("still replicating") && e.contains("2.0.0"),
        "{e}\n{}",
        events.join("\n")
    );
    // The version was not deleted (Packer #7865), and progress was reported.
    let v = arm.of_kind("Microsoft.Compute/galleries/images/versions");
    assert_eq!(v.len(), 1, "{:#?}", arm.resources());
    assert!(
        events.iter().any(|e| e.contains("eastus Replicating")),
        "{}",
        events.join("\n")
    );
    // The build's VM and group are gone.
    assert!(arm.of_kind("Microsoft.Compute/virtualMachines").is_empty());
    assert!(!arm
        .resources()
        .iter()
        .any(|x| x.id.contains("resourceGroups/opsbake-ob-az-repl-1")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_on_operation_polls_and_429s() {
    let arm = ArmServer::start(ArmOptions {
        polls: 2,
        poll_retry_after: 1,
        ..ArmOptions::default()
    })
    .unwrap();
    arm.seed_resource_group("images", "westeurope");
    let client = opsbake_iaas_azure::arm::Arm::new(
        arm.endpoint(),
        SUBSCRIPTION,
        Arc::new(StaticToken(TOKEN.into())),
        opsbake_core::wait::Waiter {
            initial: std::time::Duration::from_millis(10),
            max: std::time::Duration::from_millis(20),
            timeout: std::time::Duration::from_secs(30),
        },
    )
    .unwrap();
    let nsg = client.res_id("images", "Microsoft.Network/networkSecurityGroups", "n1");
    let t0 = std::time::Instant::now();
    client
        .put(
            &nsg,
            &serde_json::json!({"location": "westeurope"}),
            "westeurope",
        )
        .await
        .unwrap();
    // Two polls, each no earlier than the previous answer's Retry-After: 1.
    let polls = arm
        .log()
        .iter()
        .filter(|l| l.contains("/operations/"))
        .count();
    assert_eq!(polls, 2, "{:#?}", arm.log());
    assert!(
        t0.elapsed() >= std::time::Duration::from_secs(2),
        "{:?}",
        t0.elapsed()
    );
    // Two 429s with Retry-After: 1, then the answer.
    arm.throttle(2);
    let t0 = std::time::Instant::now();
    let v = client.get(&nsg, None).await.unwrap().unwrap();
    assert_eq!(v["properties"]["provisioningState"], "Succeeded");
    assert!(
        t0.elapsed() >= std::time::Duration::from_secs(2),
        "{:?}",
        t0.elapsed()
    );
    // An error surfaces ARM's code and message.
    let e = client
        .put(
            &client.res_id("nope", "Microsoft.Network/networkSecurityGroups", "n2"),
            &serde_json::json!({"location": "westeurope"}),
            "westeurope",
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ResourceGroupNotFound") && e.contains("nope"),
        "{e}"
    );
}

/// Packer's VHD output: the captured OS disk's VHD is copied out into a
/// page blob through a read SAS of the disk (beginGetAccess, several polls),
/// only its non-zero pages sent, the SAS revoked after (endGetAccess), the
/// blob kept and named in the artifact. The disk of a heavy build holds the
/// stemcell's VHD, so the blob read back must equal it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhd_output_copies_the_os_disk_out_and_reads_back_equal() {
    if skip() {
        return;
    }
    let sc = stemcell(HEAVY);
    let arm = ArmServer::start(ArmOptions::default()).unwrap();
    arm.seed_resource_group("images", "westeurope");
    let az = Azurite::start().unwrap();
    public_container(&az, "vhds").await;
    let sshd = opsbake_test_support::arm::vm_sshd(&arm).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let t = template(
        dir.path(),
        &sc,
        arm.endpoint(),
        &az.account_url(),
        sshd.port(),
        "      vhd_output: appliance-1.0.vhd",
    );
    let (r, events) = run(dir.path(), &t, "ob-az-vhd-1").await;
    assert!(r.error.is_none(), "{:?}\n{}", r.error, events.join("\n"));
    // The blob holds exactly the disk's VHD (= the stemcell's).
    let (len, sha) = vhd_sha256(&sc);
    let got = az
        .get_public("vhds", "appliance-1.0.vhd")
        .expect("the VHD output blob");
    assert_eq!(got.len() as u64, len);
    use sha2::Digest as _;
    assert_eq!(hex::encode(sha2::Sha256::digest(&got)), sha);
    assert_eq!(&got[got.len() - 512..][..8], b"conectix");
    // Only the output blob is left in the container (the import blob went).
    assert_eq!(
        az.list_public("vhds"),
        vec!["appliance-1.0.vhd".to_string()]
    );
    // The disk was read through its SAS once, the SAS revoked, the disk gone.
    assert_eq!(arm.disk_bytes_served(), len);
    assert!(arm.disk_sas_active().is_empty());
    assert!(
        arm.of_kind("Microsoft.Compute/disks").is_empty(),
        "{:#?}",
        kinds(&arm)
    );
    let log = arm.log();
    let begin = log
        .iter()
        .position(|l| l.starts_with("POST") && l.contains("/beginGetAccess"))
        .expect("beginGetAccess");
    let end = log
        .iter()
        .position(|l| l.starts_with("POST") && l.contains("/endGetAccess"))
        .expect("endGetAccess");
    let dealloc = log
        .iter()
        .position(|l| l.contains("/deallocate"))
        .expect("deallocate");
    assert!(dealloc < begin && begin < end, "{log:#?}");
    // The artifact names the blob, never its SAS.
    let art = r.artifact.unwrap();
    let url = art.custom_data.get("vhd_url").expect("vhd_url");
    assert!(url.ends_with("/vhds/appliance-1.0.vhd"), "{url}");
    assert!(!url.contains("sig="), "{url}");
    assert!(art.id.contains(url.as_str()), "{}", art.id);
    assert_eq!(art.custom_data["vhd_bytes"], len.to_string());
    // Zero pages were not sent.
    let sent: u64 = art.custom_data["vhd_bytes_sent"].parse().unwrap();
    assert!(sent < len, "{sent} of {len}");
    assert!(
        events.iter().all(|e| !e.contains("sig=")),
        "{}",
        events.join("\n")
    );
}

/// A copy that cannot read the disk fails the build with an error naming
/// the disk's SAS URL without its signature; the SAS is revoked (the disk
/// of a build in a given group is deleted one by one, and a disk with an
/// active SAS cannot be), and nothing of the build is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_vhd_copy_revokes_the_sas_and_leaves_nothing() {
    if skip() {
        return;
    }
    let arm = ArmServer::start(ArmOptions::default()).unwrap();
    arm.seed_resource_group("images", "westeurope");
    arm.seed_resource_group("builds", "westeurope");
    let az = Azurite::start().unwrap();
    public_container(&az, "vhds").await;
    let sshd = opsbake_test_support::arm::vm_sshd(&arm).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sc = light_stemcell(dir.path());
    let t = template(
        dir.path(),
        &sc,
        arm.endpoint(),
        &az.account_url(),
        sshd.port(),
        "      build_resource_group: builds\n      vhd_output: appliance.vhd",
    );
    // Every pass of the copy (3) fails to read the disk.
    arm.fail_disk_reads(3);
    let (r, events) = run(dir.path(), &t, "ob-az-vhd-2").await;
    let e = r.error.expect("the build fails");
    assert!(e.contains("GET (disk SAS)") && e.contains("500"), "{e}");
    assert!(!e.contains("sig="), "{e}");
    assert!(arm.disk_sas_active().is_empty());
    let left = kinds(&arm);
    assert_eq!(
        left.len(),
        2,
        "only the two groups: {left:#?}\n{}",
        events.join("\n")
    );
    assert!(
        az.list_public("vhds").is_empty(),
        "{:?}",
        az.list_public("vhds")
    );

    // Then a light build's VHD output (its disk holds the server's own small
    // fixed VHD): read back whole, footer checked.
    let t = template(
        dir.path(),
        &sc,
        arm.endpoint(),
        &az.account_url(),
        sshd.port(),
        "      build_resource_group: builds\n      vhd_output: appliance.vhd",
    );
    let (r, events) = run(dir.path(), &t, "ob-az-vhd-3").await;
    assert!(r.error.is_none(), "{:?}\n{}", r.error, events.join("\n"));
    let got = az
        .get_public("vhds", "appliance.vhd")
        .expect("the VHD blob");
    assert_eq!(got.len(), (4 << 20) + 512);
    assert!(
        got.starts_with(b"opsbake-arm-test-disk "),
        "{:?}",
        &got[..40]
    );
    assert_eq!(&got[got.len() - 512..][..8], b"conectix");
    assert!(arm.disk_sas_active().is_empty());
}

/// Replication is followed per region over the server's multi-poll states:
/// each region's reported progress climbs (several distinct values, never
/// down), the lagging region is seen behind the first, and the build waits
/// until every region is complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_progress_is_reported_per_region_until_complete() {
    if skip() {
        return;
    }
    let arm = ArmServer::start(ArmOptions {
        replication_polls: Some(8),
        ..ArmOptions::default()
    })
    .unwrap();
    arm.seed_resource_group("images", "westeurope");
    let sshd = opsbake_test_support::arm::vm_sshd(&arm).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sc = light_stemcell(dir.path());
    let t = template(
        dir.path(),
        &sc,
        arm.endpoint(),
        "http://127.0.0.1:9/devstoreaccount1",
        sshd.port(),
        "      gallery: {name: g1, image: appliance, version: 3.0.0, shallow_replication: true, storage_account_type: Standard_ZRS, regions: [{name: westeurope}, {name: eastus, replicas: 2}]}",
    );
    let (r, events) = run(dir.path(), &t, "ob-az-repl-2").await;
    assert!(r.error.is_none(), "{:?}\n{}", r.error, events.join("\n"));
    let mut seen: std::collections::BTreeMap<String, Vec<(String, u64)>> = Default::default();
    for e in &events {
        let Some(line) = e.split("replication of 3.0.0: ").nth(1) else {
            continue;
        };
        let line = line.split('"').next().unwrap_or("");
        for part in line.split(", ") {
            let f: Vec<&str> = part.split_whitespace().collect();
            if f.len() == 3 {
                let pct: u64 = f[2].trim_end_matches('%').parse().unwrap();
                seen.entry(f[0].to_string())
                    .or_default()
                    .push((f[1].to_string(), pct));
            }
        }
    }
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        vec!["eastus".to_string(), "westeurope".to_string()],
        "{}",
        events.join("\n")
    );
    for (region, states) in &seen {
        let pcts: Vec<u64> = states.iter().map(|s| s.1).collect();
        assert!(pcts.windows(2).all(|w| w[0] <= w[1]), "{region}: {pcts:?}");
        let mut distinct = pcts.clone();
        distinct.dedup();
        assert!(distinct.len() >= 3, "{region}: {pcts:?}");
        assert!(
            states.iter().any(|s| s.0 == "Replicating"),
            "{region}: {states:?}"
        );
    }
    // The second region lags behind the first at some poll.
    let (w, e) = (&seen["westeurope"], &seen["eastus"]);
    assert!(
        w.iter().zip(e.iter()).any(|(a, b)| a.1 > b.1),
        "{w:?} {e:?}"
    );
    // Complete when the build ended: the version is there, every region done.
    let v = arm.of_kind("Microsoft.Compute/galleries/images/versions");
    assert_eq!(v.len(), 1);
    let summary = v[0].body["properties"]["replicationStatus"]["summary"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        summary.iter().all(|s| s["state"] == "Completed"),
        "{summary:?}"
    );
    // The publishing profile carried the replicas, the storage type and
    // shallow replication.
    let pp = &v[0].body["properties"]["publishingProfile"];
    assert_eq!(pp["replicationMode"], "Shallow", "{pp}");
    let targets = pp["targetRegions"].as_array().unwrap();
    assert_eq!(targets[1]["name"], "eastus");
    assert_eq!(targets[1]["regionalReplicaCount"], 2);
    assert!(
        targets
            .iter()
            .all(|t| t["storageAccountType"] == "Standard_ZRS"),
        "{pp}"
    );
    let art = r.artifact.unwrap();
    assert_eq!(art.custom_data["gallery_regions"], "westeurope,eastus");
}
