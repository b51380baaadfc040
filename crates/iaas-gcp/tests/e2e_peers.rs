//! `gcp` builds end to end through core's runner with the real SSH
//! transport and provisioners: the Compute Engine test server plays GCE,
//! fake-gcs-server plays Cloud Storage, a hardened OpenSSH sshd on
//! 127.0.0.1 plays the instance (through the `ssh.host`/`ssh.port`
//! override; the server's invented TEST-NET addresses are never contacted).
//! The sshd has no authorized_keys: its `AuthorizedKeysCommand` reads the
//! instance's `bosh_settings` metadata at the test server, so a login
//! proves the key travelled through the agent settings.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use opsbake_test_support::fault_proxy::{Fault, FaultProxy};
use opsbake_test_support::gce::Injected;
use tokio_util::sync::CancellationToken;

fn nothing_left(p: &Peers, id: &str) {
    p.gce.settle();
    let left = p.gce.left_of_build(id);
    assert!(left.is_empty(), "left of {id}: {left:?}");
    assert!(p.gce.instances().is_empty(), "{:?}", p.gce.instances());
    assert!(p.gce.disks().is_empty(), "{:?}", p.gce.disks());
    assert!(p.gce.firewalls().is_empty(), "{:?}", p.gce.firewalls());
    let objs = p.gcs.objects(BUCKET).unwrap();
    assert!(objs.is_empty(), "objects left: {objs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn light_stemcell_build_logs_in_with_the_key_from_bosh_settings() {
    let Some(_) = stemcell_dir() else { return };
    let Some(p) = peers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let sc = light_stemcell(dir.path());
    let t = write_template(
        dir.path(),
        &sc,
        &p,
        &p.gce.endpoint(),
        "\n      image_family: appliance\n      image_users: [\"user:release@example.com\"]\n      image_labels: {team: release}",
    );
    let id = "ob-e2e-gcp-light-1";
    let (r, events) = run(dir.path(), &t, id, CancellationToken::new()).await;
    opsbake_test_support::build::assert_provisioned_over(&p.sshd, &r, &events);
    // The host key came from the serial console and was pinned.
    assert!(
        events.iter().any(|e| e.contains("pinning")),
        "{}",
        events.join("\n")
    );
    // The image: from the stopped instance's disk, family, labels, shared.
    let art = r.artifact.unwrap();
    let img = p
        .gce
        .images()
        .into_iter()
        .find(|i| i["name"] == art.id.as_str())
        .unwrap_or_else(|| panic!("no image {} in {:?}", art.id, p.gce.images()));
    assert_eq!(img["status"], "READY");
    assert_eq!(img["family"], "appliance");
    assert_eq!(img["labels"]["team"], "release");
    assert_eq!(img["labels"]["opsbake-build-id"], id);
    assert!(img["sourceDisk"]
        .as_str()
        .unwrap()
        .ends_with(&format!("disks/opsbake-{id}")));
    let pol = p.gce.image_policy(PROJECT, art.id.as_str()).unwrap();
    assert_eq!(pol["bindings"][0]["role"], "roles/compute.imageUser");
    assert_eq!(pol["bindings"][0]["members"][0], "user:release@example.com");
    // Operations were polled several times each; inserts carried a requestId.
    assert!(
        p.gce.count("zoneOperations.get") >= 6,
        "{:?}",
        p.gce.calls()
    );
    assert!(p
        .gce
        .calls()
        .iter()
        .any(|c| c.method == "instances.getSerialPortOutput"));
    // The build's instance, disk and firewall rule are gone; the image stays.
    p.gce.settle();
    assert!(
        p.gce
            .left_of_build(id)
            .iter()
            .all(|l| l.starts_with("image ")),
        "{:?}",
        p.gce.left_of_build(id)
    );
    assert!(
        p.gce.instances().is_empty() && p.gce.disks().is_empty() && p.gce.firewalls().is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_stemcell_is_uploaded_byte_for_byte_imported_and_reused() {
    let Some(sc) = heavy_stemcell() else { return };
    let Some(p) = peers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let t = write_template(dir.path(), &sc, &p, &p.gce.endpoint(), "");
    let id = "ob-e2e-gcp-heavy-1";
    let (r, events) = run(dir.path(), &t, id, CancellationToken::new()).await;
    assert!(r.error.is_none(), "{:?}\n{}", r.error, events.join("\n"));
    // The object the image was imported from is the stemcell's image member.
    let (sha, len) = image_member_sha256(&sc);
    let base = p
        .gce
        .images()
        .into_iter()
        .find(|i| i["labels"]["opsbake-role"] == "base")
        .unwrap_or_else(|| panic!("no base image: {:?}", p.gce.images()));
    let name = base["name"].as_str().unwrap().to_string();
    assert_eq!(p.gce.image_raw_source(PROJECT, &name), Some((sha, len)));
    assert_eq!(base["status"], "READY");
    // Deleted once the image existed.
    assert!(p.gcs.objects(BUCKET).unwrap().is_empty());
    // The next build reuses the base image: no upload, no import.
    let inserts = p.gce.count("images.insert");
    let id2 = "ob-e2e-gcp-heavy-2";
    let t = write_template(
        dir.path(),
        &sc,
        &p,
        &p.gce.endpoint(),
        "\n      image_name: appliance-second",
    );
    let (r2, events2) = run(dir.path(), &t, id2, CancellationToken::new()).await;
    assert!(r2.error.is_none(), "{:?}\n{}", r2.error, events2.join("\n"));
    assert!(
        events2.iter().any(|e| e.contains("reusing image")),
        "{}",
        events2.join("\n")
    );
    assert_eq!(
        p.gce.count("images.insert"),
        inserts + 1,
        "only the captured image"
    );
    assert_eq!(r2.artifact.unwrap().id, "appliance-second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_that_does_not_exist_fails_validate_naming_it() {
    let Some(_) = stemcell_dir() else { return };
    let Some(p) = peers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let sc = light_stemcell(dir.path());
    let t = write_template(dir.path(), &sc, &p, &p.gce.endpoint(), "");
    let text = std::fs::read_to_string(&t)
        .unwrap()
        .replace("project_id: opsbake-test", "project_id: no-such-project");
    std::fs::write(&t, text).unwrap();
    let id = "ob-e2e-gcp-404";
    let (r, _) = run(dir.path(), &t, id, CancellationToken::new()).await;
    let e = r.error.expect("must fail");
    assert!(
        e.contains("no-such-project") && e.contains(ZONE) && e.contains("machineTypes.get"),
        "{e}"
    );
    assert!(e.contains("HTTP 404"), "{e}");
    nothing_left(&p, id);
    assert_eq!(p.gce.count("instances.insert"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_error_on_insert_names_the_instance_and_unwinds() {
    let Some(_) = stemcell_dir() else { return };
    let Some(p) = peers() else { return };
    p.gce.inject(
        "instances.insert",
        Injected::Operation {
            code: "QUOTA_EXCEEDED".into(),
            message: "Quota 'CPUS' exceeded. Limit: 0.0 in region us-central1.".into(),
        },
        Some(1),
    );
    let dir = tempfile::tempdir().unwrap();
    let sc = light_stemcell(dir.path());
    let t = write_template(dir.path(), &sc, &p, &p.gce.endpoint(), "");
    let id = "ob-e2e-gcp-quota";
    let (r, events) = run(dir.path(), &t, id, CancellationToken::new()).await;
    let e = r.error.expect("must fail");
    assert!(
        e.contains("QUOTA_EXCEEDED")
            && e.contains(&format!("opsbake-{id}"))
            && e.contains(PROJECT)
            && e.contains(ZONE),
        "{e}"
    );
    assert!(
        r.leftovers.is_empty(),
        "{:?}\n{}",
        r.leftovers,
        events.join("\n")
    );
    nothing_left(&p, id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_burst_through_the_fault_proxy_is_retried() {
    let Some(_) = stemcell_dir() else { return };
    let Some(p) = peers() else { return };
    let proxy = FaultProxy::start(p.gce.addr()).unwrap();
    proxy.rule("*", Fault::Throttle, Some(4));
    let dir = tempfile::tempdir().unwrap();
    let sc = light_stemcell(dir.path());
    let t = write_template(dir.path(), &sc, &p, &proxy.endpoint(), "");
    let id = "ob-e2e-gcp-429";
    let (r, events) = run(dir.path(), &t, id, CancellationToken::new()).await;
    assert!(r.error.is_none(), "{:?}\n{}", r.error, events.join("\n"));
    let throttled = proxy
        .calls()
        .iter()
        .filter(|c| c.fault == Some(Fault::Throttle))
        .count();
    assert_eq!(throttled, 4, "{:?}", proxy.calls());
    p.gce.settle();
    assert!(p.gce.instances().is_empty() && p.gce.firewalls().is_empty());
}
