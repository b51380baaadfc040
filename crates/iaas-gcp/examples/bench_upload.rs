//! Benchmark: the heavy google test stemcell's `image` member uploaded to
//! fake-gcs-server, by opsbake's upload (streamed out of the `.tgz`,
//! resumable, 8 MiB chunks) and by the Python `google-cloud-storage` client
//! on the same server and the same work (the member streamed out of the
//! `.tgz` with `tarfile`, `upload_from_file` with 8 MiB chunks), in one run.
//! Prints medians (MiB/s) and peak RSS; `--write` appends the section to
//! docs/benchmarks.md.
//!
//! ```sh
//! set -a; . target/ci-env; set +a   # OPSBAKE_TEST_STEMCELL_DIR, OPSBAKE_FAKE_GCS_SERVER, OPSBAKE_GCS_PYTHON
//! cargo run --release -p opsbake-iaas-gcp --example bench_upload -- [--runs N] [--write]
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Instant;

use opsbake_core::wait::Waiter;
use opsbake_iaas_gcp::api::{Api, CredSource};
use opsbake_test_support::gcs::FakeGcs;

const HEAVY: &str = "bosh-stemcell-1.0-google-kvm-debian-bookworm-go_agent.tgz";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn peak_rss_kib(pid_self: bool) -> u64 {
    // VmHWM of this process (the Rust side).
    let _ = pid_self;
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(3);
    let write = args.iter().any(|a| a == "--write");
    let stemcell = PathBuf::from(
        std::env::var("OPSBAKE_TEST_STEMCELL_DIR").expect("OPSBAKE_TEST_STEMCELL_DIR"),
    )
    .join(HEAVY);
    let python =
        std::env::var("OPSBAKE_GCS_PYTHON").expect("OPSBAKE_GCS_PYTHON (.ci/setup.d/35-gcs.sh)");
    let m = opsbake_stemcell::read_manifest(&stemcell).unwrap();
    let gcs = FakeGcs::start().unwrap();
    gcs.create_bucket("bench").unwrap();
    let api = Api::new(
        "bench".into(),
        "us-central1-a".into(),
        None,
        Some(gcs.endpoint()),
        CredSource::Anonymous,
        Waiter::default(),
    );
    let mut ours = Vec::new();
    let mut bytes = 0u64;
    for i in 0..runs {
        let t = Instant::now();
        let r = opsbake_iaas_gcp::upload::upload_image_member(
            &api,
            &stemcell,
            "bench",
            &format!("ours-{i}"),
            &m.sha1,
        )
        .await
        .unwrap();
        ours.push(t.elapsed().as_secs_f64());
        bytes = r.bytes;
    }
    let our_rss = peak_rss_kib(true);
    let script = r#"
import os, resource, sys, tarfile, time
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
os.environ["STORAGE_EMULATOR_HOST"] = sys.argv[2]
c = storage.Client(project="bench", credentials=AnonymousCredentials())
b = c.bucket("bench")
t = time.monotonic()
with tarfile.open(sys.argv[1], "r:gz") as tf:
    m = tf.getmember("image")
    f = tf.extractfile(m)
    blob = b.blob("python-" + sys.argv[3], chunk_size=8 << 20)
    blob.upload_from_file(f, size=m.size, content_type="application/gzip")
print(time.monotonic() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"#;
    let mut theirs = Vec::new();
    let mut their_rss = 0u64;
    for i in 0..runs {
        let out = std::process::Command::new(&python)
            .args(["-c", script])
            .arg(&stemcell)
            .arg(gcs.endpoint())
            .arg(i.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s = String::from_utf8_lossy(&out.stdout).to_string();
        let mut it = s.split_whitespace();
        theirs.push(it.next().unwrap().parse::<f64>().unwrap());
        their_rss = their_rss.max(it.next().unwrap().parse().unwrap());
    }
    // Both stored the same bytes.
    let a = gcs.object("bench", "ours-0").unwrap();
    let b = gcs.object("bench", "python-0").unwrap();
    assert_eq!(a.len() as u64, bytes);
    assert!(a == b, "the two uploads differ");
    let mib = bytes as f64 / (1 << 20) as f64;
    let (mo, mt) = (median(ours), median(theirs));
    let text = format!(
        "\n## iaas-gcp: heavy stemcell upload to fake-gcs-server\n\n\
The heavy google test stemcell's `image` member ({mib:.1} MiB), streamed out of the `.tgz` and uploaded\n\
to fake-gcs-server (one server, 127.x.y.z:80) with a resumable upload in 8 MiB chunks: opsbake\n\
(`google-cloud-storage` crate, `upload::upload_image_member`) against the Python `google-cloud-storage`\n\
client (`tarfile` + `upload_from_file`), the same work, one run, median of {runs}\n\
(`cargo run --release -p opsbake-iaas-gcp --example bench_upload -- --runs {runs} --write`).\n\
Both objects were read back equal.\n\n\
| client | median s | MiB/s | peak RSS MiB |\n|---|---|---|---|\n\
| opsbake (Rust) | {mo:.2} | {:.1} | {:.0} (whole process) |\n\
| Python google-cloud-storage 3.17.1 | {mt:.2} | {:.1} | {:.0} |\n\n\
Ratio (Python / opsbake time): {:.2}. `gsutil` / `gcloud storage cp` are not installed on this machine.\n",
        mib / mo,
        our_rss as f64 / 1024.0,
        mib / mt,
        their_rss as f64 / 1024.0,
        mt / mo,
    );
    println!("{text}");
    if write {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/benchmarks.md");
        let mut s = std::fs::read_to_string(&p).unwrap();
        s.push_str(&text);
        std::fs::write(&p, s).unwrap();
    }
}
