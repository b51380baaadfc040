//! Shared by the CLI's gcp tests (`gcp_*.rs`): the Compute Engine test
//! server, fake-gcs-server with the import bucket, the sshd that plays the
//! instance (keys from `bosh_settings`), a service account key of the
//! test's own, the light google stemcell derived from the test stemcell's
//! MF, and the CLI run with images/gce.vars.yml.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use opsbake_test_support::gce::{GceOptions, GceServer, SeedImage};
use opsbake_test_support::gcs::FakeGcs;
use opsbake_test_support::sshd::Sshd;
use serde_json::Value;

/// The CLI under test (see `opsbake_test_support::cli::opsbake_bin`).
pub fn bin() -> &'static std::path::Path {
    opsbake_test_support::cli::opsbake_bin()
}
pub const PROJECT: &str = "opsbake-test";
pub const ZONE: &str = "us-central1-a";
pub const BUCKET: &str = "opsbake-imports";
pub const HEAVY: &str = "bosh-stemcell-1.0-google-kvm-debian-bookworm-go_agent.tgz";
pub const LIGHT: &str = "light-bosh-stemcell-1.0-google-kvm-debian-bookworm-go_agent.tgz";
pub const LIGHT_PROJECT: &str = "bosh-cpi";
pub const LIGHT_IMAGE: &str = "bosh-google-kvm-debian-bookworm-go-agent-1-0";

pub fn skip_peers() -> bool {
    opsbake_test_support::sshd::skip_peers()
}

pub fn repo_root() -> PathBuf {
    opsbake_test_support::cli::workspace_root()
}

/// The test stemcell dir, or None when peers are skipped.
pub fn stemcell_dir() -> Option<PathBuf> {
    opsbake_test_support::stemcell::path(HEAVY)?;
    opsbake_test_support::stemcell::dir()
}

/// A stemcell dir for the template: the heavy test stemcell (linked) and a
/// light one derived from its MF (google-light, image_url at bosh-cpi).
pub fn stemcells_with_light(dir: &Path) -> PathBuf {
    let d = dir.join("stemcells");
    let work = dir.join("light-work");
    std::fs::create_dir_all(&work).unwrap();
    let src = stemcell_dir().unwrap();
    let heavy = src.join(HEAVY);
    // Every stemcell of the test set (the template names one per IaaS).
    opsbake_test_support::stemcell::link_all(&src, &d).unwrap();
    let st = Command::new("tar")
        .arg("-xzf")
        .arg(&heavy)
        .arg("-C")
        .arg(&work)
        .arg("stemcell.MF")
        .status()
        .unwrap();
    assert!(st.success());
    let mf = std::fs::read_to_string(work.join("stemcell.MF")).unwrap();
    let mut out = String::new();
    for l in mf.lines() {
        if l.starts_with("sha1:") {
            out.push_str("sha1: da39a3ee5e6b4b0d3255bfef95601890afd80709\n");
        } else if l.starts_with("stemcell_formats:") {
            out.push_str("stemcell_formats:\n- google-light\n");
        } else if l.starts_with("- google-rawdisk") {
        } else {
            out.push_str(l);
            out.push('\n');
            if l.starts_with("cloud_properties:") {
                out.push_str(&format!(
                    "  image_url: https://www.googleapis.com/compute/v1/projects/{LIGHT_PROJECT}/global/images/{LIGHT_IMAGE}\n"
                ));
            }
        }
    }
    std::fs::write(work.join("stemcell.MF"), out).unwrap();
    for f in ["packages.txt", "dev_tools_file_list.txt", "image"] {
        std::fs::write(work.join(f), b"").unwrap();
    }
    let st = Command::new("tar")
        .arg("-C")
        .arg(&work)
        .arg("-czf")
        .arg(d.join(LIGHT))
        .args([
            "stemcell.MF",
            "packages.txt",
            "dev_tools_file_list.txt",
            "image",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    d
}

/// The peers of one CLI test.
pub struct Peers {
    pub gce: GceServer,
    pub gcs: FakeGcs,
    pub sshd: Sshd,
}

/// fake-gcs-server with the bucket, the GCE test server (Bearer required,
/// the light image seeded) and the sshd; None when peers are skipped.
pub fn peers() -> Option<Peers> {
    if skip_peers() && opsbake_test_support::gcs::binary().is_err() {
        eprintln!("OPSBAKE_SKIP_PEERS=1 and no fake-gcs-server: skipped");
        return None;
    }
    stemcell_dir()?;
    let gcs = FakeGcs::start().unwrap_or_else(|e| panic!("{e}"));
    gcs.create_bucket(BUCKET).unwrap();
    let gce = GceServer::start(GceOptions {
        gcs_endpoint: Some(gcs.endpoint()),
        seed_images: vec![SeedImage {
            project: LIGHT_PROJECT.into(),
            name: LIGHT_IMAGE.into(),
        }],
        require_bearer: true,
        ..GceOptions::default()
    })
    .unwrap();
    let sshd = opsbake_test_support::gce::instance_sshd(&gce, PROJECT, ZONE)
        .unwrap_or_else(|e| panic!("{e}"));
    Some(Peers { gce, gcs, sshd })
}

/// A service account key file with a fresh RSA key (openssl): the client
/// signs its own JWTs with it; no token endpoint is ever called.
pub fn service_account(dir: &Path) -> PathBuf {
    let pem = dir.join("sa-key.pem");
    let st = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&pem)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "openssl genpkey failed");
    let key = std::fs::read_to_string(&pem).unwrap();
    let sa = serde_json::json!({
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": "0123456789abcdef0123456789abcdef01234567",
        "private_key": key,
        "client_email": format!("opsbake-builder@{PROJECT}.iam.gserviceaccount.com"),
        "client_id": "100000000000000000001",
        "auth_uri": "http://127.0.0.1:9/auth",
        "token_uri": "http://127.0.0.1:9/token",
    });
    let f = dir.join("sa.json");
    std::fs::write(&f, serde_json::to_vec_pretty(&sa).unwrap()).unwrap();
    f
}

/// `opsbake build images/appliance.yml --var-file images/gce.vars.yml` at
/// these peers (compute endpoint `gce_endpoint`: the server or a proxy).
pub fn gcp_command(dir: &Path, p: &Peers, gce_endpoint: &str, args: &[&str]) -> Command {
    let root = repo_root();
    let sa = service_account(dir);
    let mut c = Command::new(bin());
    c.current_dir(dir)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--no-progress", "--json", "build"])
        .arg(root.join("images/appliance.yml"))
        .arg("--var-file")
        .arg(root.join("images/gce.vars.yml"))
        .arg("--var")
        .arg(format!("gcp_endpoint={gce_endpoint}"))
        .arg("--var")
        .arg(format!("gcp_storage_endpoint={}", p.gcs.endpoint()))
        .arg("--var")
        .arg(format!("gcp_ssh_port={}", p.sshd.port()))
        .arg("--var")
        .arg(format!("gcp_credentials_file={}", sa.display()))
        .args(args)
        // outputs.directory is relative to the template: keep this run's in its dir
        .env("OPSBAKE_VAR_output_dir", dir.join("out/appliance"))
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        .env_remove("GOOGLE_PROJECT_ID")
        .env_remove("GOOGLE_CLOUD_PROJECT");
    c
}

/// The `--json` events of a run.
pub fn events(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The `build_finished` event of one IaaS.
pub fn finished<'a>(events: &'a [Value], iaas: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["event"] == "build_finished" && e["build"] == iaas)
        .unwrap_or_else(|| panic!("no build_finished for {iaas}: {events:?}"))
}

/// What of build `id` is left at the servers (base images, a cache kept on
/// purpose, excluded), after every pending operation finished.
pub fn left(p: &Peers, id: &str) -> Vec<String> {
    p.gce.settle();
    let bases: Vec<String> = p
        .gce
        .images()
        .iter()
        .filter(|i| i["labels"]["opsbake-role"] == "base")
        .filter_map(|i| i["name"].as_str().map(|n| format!("image {n}")))
        .collect();
    let mut v: Vec<String> = p
        .gce
        .left_of_build(id)
        .into_iter()
        .filter(|l| !bases.contains(l))
        .collect();
    for i in p.gce.instances() {
        v.push(format!("instance {}", i["name"]));
    }
    for d in p.gce.disks() {
        v.push(format!("disk {}", d["name"]));
    }
    for f in p.gce.firewalls() {
        v.push(format!("firewall {}", f["name"]));
    }
    for o in p.gcs.objects(BUCKET).unwrap() {
        v.push(format!("object {o}"));
    }
    v.sort();
    v.dedup();
    v
}

/// The journal lists nothing live.
pub fn check_journal(state: &Path, build_id: &str, outcome: opsbake_core::journal::Outcome) {
    let j = opsbake_core::journal::Journal::open(state, build_id).unwrap();
    let st = j.state();
    assert_eq!(st.outcome, Some(outcome), "{build_id}");
    assert!(
        st.live.is_empty(),
        "{build_id}: journal lists {:?}",
        st.live
    );
}
