//! Shared helpers of the GCP builder's tests: the Compute Engine test
//! server, fake-gcs-server and a hardened sshd that plays the instance
//! (its keys come from the instance's `bosh_settings` metadata at the test
//! server).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use opsbake_core::runner::BuildResult;
use opsbake_core::template::Iaas;
use opsbake_test_support::build;
use opsbake_test_support::gce::{GceOptions, GceServer, SeedImage};
use opsbake_test_support::gcs::FakeGcs;
use opsbake_test_support::sshd::Sshd;
use opsbake_test_support::stemcell::{appliance, loopback_ssh};
use tokio_util::sync::CancellationToken;

pub const PROJECT: &str = "opsbake-test";
pub const ZONE: &str = "us-central1-a";
pub const BUCKET: &str = "opsbake-imports";
pub const HEAVY: &str = "bosh-stemcell-1.0-google-kvm-debian-bookworm-go_agent.tgz";
pub const LIGHT_IMAGE: &str = "bosh-google-kvm-debian-bookworm-go-agent-1-0";
pub const LIGHT_PROJECT: &str = "bosh-cpi";

/// The test stemcell directory, or None when peers are skipped.
pub fn stemcell_dir() -> Option<PathBuf> {
    opsbake_test_support::stemcell::dir()
}

/// The heavy google test stemcell.
pub fn heavy_stemcell() -> Option<PathBuf> {
    opsbake_test_support::stemcell::path(HEAVY)
}

/// A light google stemcell (derived here: the test stemcell set has none)
/// whose MF points at `projects/bosh-cpi/global/images/LIGHT_IMAGE`.
pub fn light_stemcell(dir: &Path) -> PathBuf {
    let mf = format!(
        "name: bosh-google-kvm-debian-bookworm-go_agent\nversion: '1.0'\nbosh_protocol: '1'\napi_version: 3\nsha1: da39a3ee5e6b4b0d3255bfef95601890afd80709\noperating_system: debian-bookworm\nstemcell_formats:\n- google-light\ncloud_properties:\n  name: bosh-google-kvm-debian-bookworm-go_agent\n  version: '1.0'\n  infrastructure: google\n  image_url: https://www.googleapis.com/compute/v1/projects/{LIGHT_PROJECT}/global/images/{LIGHT_IMAGE}\n"
    );
    let out = dir.join("light-bosh-stemcell-1.0-google-kvm-debian-bookworm-go_agent.tgz");
    opsbake_test_support::stemcell::write_tgz(
        &out,
        &[
            ("stemcell.MF", mf.as_bytes()),
            ("packages.txt", b""),
            ("dev_tools_file_list.txt", b""),
            ("image", b""),
        ],
    )
    .unwrap();
    out
}

/// The peers of one test.
pub struct Peers {
    pub gce: GceServer,
    pub gcs: FakeGcs,
    pub sshd: Sshd,
}

/// Start fake-gcs-server (with the bucket), the GCE test server and the
/// sshd; None when peers are skipped and missing.
pub fn peers() -> Option<Peers> {
    if opsbake_test_support::sshd::skip_peers() && opsbake_test_support::gcs::binary().is_err() {
        eprintln!("OPSBAKE_SKIP_PEERS=1 and no fake-gcs-server: skipped");
        return None;
    }
    let gcs = FakeGcs::start().unwrap_or_else(|e| panic!("{e}"));
    gcs.create_bucket(BUCKET).unwrap();
    let gce = GceServer::start(GceOptions {
        gcs_endpoint: Some(gcs.endpoint()),
        seed_images: vec![SeedImage {
            project: LIGHT_PROJECT.into(),
            name: LIGHT_IMAGE.into(),
        }],
        ..GceOptions::default()
    })
    .unwrap();
    let sshd = opsbake_test_support::gce::instance_sshd(&gce, PROJECT, ZONE)
        .unwrap_or_else(|e| panic!("{e}"));
    Some(Peers { gce, gcs, sshd })
}

/// The appliance template for the gcp build at these peers.
pub fn write_template(
    dir: &Path,
    stemcell: &Path,
    p: &Peers,
    gce_endpoint: &str,
    options: &str,
) -> PathBuf {
    let build = format!(
        r#"    disk: 12288
{ssh}
    options:
      project_id: {PROJECT}
      zone: {ZONE}
      machine_type: e2-small
      bucket: {BUCKET}
      endpoint: "{gce_endpoint}"
      storage_endpoint: "{gcs}"
      anonymous_credentials: true
      wait_timeout: 2m
      poll_interval: 20ms{options}"#,
        ssh = loopback_ssh(p.sshd.port()),
        gcs = p.gcs.endpoint(),
    );
    appliance(dir, "gcp", stemcell, &build)
}

/// A plan of the template.
pub fn plan(template: &Path, id: &str) -> opsbake_core::plan::BuildPlan {
    build::plan(template, Iaas::Gcp, id)
}

/// Run one gcp build through core's runner with the real SSH transport and
/// provisioners.
pub async fn run(
    dir: &Path,
    template: &Path,
    id: &str,
    cancel: CancellationToken,
) -> (BuildResult, Vec<String>) {
    let job = build::job(template, Iaas::Gcp, id, opsbake_iaas_gcp::builder);
    build::run(dir, job, cancel).await
}

/// SHA-256 (hex) and length of the `image` member of a stemcell.
pub fn image_member_sha256(stemcell: &Path) -> (String, u64) {
    use sha2::Digest as _;
    use std::io::Read as _;
    let f = std::fs::File::open(stemcell).unwrap();
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_string_lossy() == "image" {
            let mut h = sha2::Sha256::new();
            let mut n = 0u64;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let k = e.read(&mut buf).unwrap();
                if k == 0 {
                    break;
                }
                h.update(&buf[..k]);
                n += k as u64;
            }
            return (hex::encode(h.finalize()), n);
        }
    }
    panic!("no image member in {}", stemcell.display());
}
