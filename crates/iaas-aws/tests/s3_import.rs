//! `import: s3` (S3 multipart upload + ImportSnapshot) against moto. moto
//! stores S3 objects (path-style) but does not implement ImportSnapshot (it
//! answers HTTP 500 with an HTML page), so what is tested here is: the
//! multipart upload round-trips byte for byte; the object and any unfinished
//! upload are deleted; and a build with `import: s3` fails at ImportSnapshot
//! with a typed error naming the operation and the region, after having
//! journaled the S3 object, and unwinds so that the bucket is empty and
//! nothing of the build is left.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use common::*;
use opsbake_core::builder::BuildContext;
use opsbake_core::events::{EventKind, MemorySink};
use opsbake_core::journal::Outcome;
use opsbake_core::manifest::InputDigests;
use opsbake_core::runner::{BuildJob, Runner};
use opsbake_iaas_aws::s3import;
use sha2::Digest as _;

async fn s3(endpoint: &str) -> aws_sdk_s3::Client {
    opsbake_iaas_aws::clients::Clients::new("us-east-1", Some(endpoint.to_string()))
        .s3("us-east-1")
        .await
        .unwrap()
}

/// A disk that is not all zeros and not a multiple of the part size.
fn disk_bytes(len: usize) -> Vec<u8> {
    let mut d = vec![0u8; len];
    let mut x: u32 = 0x1234_5678;
    for (i, b) in d.iter_mut().enumerate() {
        if (i >> 20) % 3 != 1 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
    }
    d
}

async fn bucket_keys(c: &aws_sdk_s3::Client, bucket: &str) -> Vec<String> {
    let mut keys: Vec<String> = c
        .list_objects_v2()
        .bucket(bucket)
        .send()
        .await
        .unwrap()
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect();
    for u in c
        .list_multipart_uploads()
        .bucket(bucket)
        .send()
        .await
        .unwrap()
        .uploads()
    {
        keys.push(format!("(upload) {}", u.key().unwrap_or("")));
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_upload_round_trips_and_delete_leaves_nothing() {
    let Some(moto) = moto() else { return };
    let c = s3(&moto.endpoint()).await;
    c.create_bucket()
        .bucket("opsbake-import")
        .send()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("root.img");
    let bytes = disk_bytes((13 << 20) + 4321);
    std::fs::write(&disk, &bytes).unwrap();
    let up = s3import::S3Upload {
        s3: &c,
        region: "us-east-1",
        bucket: "opsbake-import",
        key: "opsbake/ob-s3-1/root.raw",
        disk: &disk,
        part_size: s3import::part_size(bytes.len() as u64, s3import::MIN_PART),
        concurrency: 2,
    };
    let rep = up.run().await.unwrap();
    assert_eq!(rep.parts, 3, "13 MiB in 5 MiB parts");
    assert_eq!(rep.bytes, bytes.len() as u64);
    eprintln!(
        "{} MiB in {} parts to moto in {:.2} s",
        rep.bytes >> 20,
        rep.parts,
        rep.seconds
    );
    let got = c
        .get_object()
        .bucket("opsbake-import")
        .key("opsbake/ob-s3-1/root.raw")
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    assert_eq!(got.len(), bytes.len());
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&got)),
        hex::encode(sha2::Sha256::digest(&bytes)),
        "the object differs from the disk"
    );
    // An unfinished upload under the same key goes too.
    c.create_multipart_upload()
        .bucket("opsbake-import")
        .key("opsbake/ob-s3-1/root.raw")
        .send()
        .await
        .unwrap();
    assert_eq!(bucket_keys(&c, "opsbake-import").await.len(), 2);
    let found = s3import::delete_object(
        &c,
        "us-east-1",
        "opsbake-import",
        "opsbake/ob-s3-1/root.raw",
    )
    .await
    .unwrap();
    assert!(found);
    assert!(bucket_keys(&c, "opsbake-import").await.is_empty());
    // Idempotent.
    assert!(!s3import::delete_object(
        &c,
        "us-east-1",
        "opsbake-import",
        "opsbake/ob-s3-1/root.raw"
    )
    .await
    .unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_wants_an_existing_bucket() {
    let Some(moto) = moto() else { return };
    let dir = tempfile::tempdir().unwrap();
    let sc = heavy_stemcell(dir.path(), &disk_bytes(1 << 20), "1.1");
    for (opts, want) in [
        (", import: s3", "import: s3 needs options.import_bucket"),
        (
            ", import: s3, import_bucket: no-such-bucket",
            "HeadBucket in us-east-1 (no-such-bucket)",
        ),
    ] {
        let p = plan(dir.path(), &sc, &moto.endpoint(), opts, "ob-s3-val");
        let b = opsbake_iaas_aws::builder(&p).unwrap();
        let state = dir.path().join(format!("state-{}", want.len()));
        let (ctx, _sink): (BuildContext, _) = context(p, &state, serde_json::Value::Null);
        let e = b.validate(&ctx).await.unwrap_err().to_string();
        assert!(e.contains(want), "{opts}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_s3_uploads_then_fails_at_import_snapshot_and_unwinds() {
    let Some(moto) = moto() else { return };
    let c = s3(&moto.endpoint()).await;
    c.create_bucket()
        .bucket("opsbake-import")
        .send()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sc = heavy_stemcell(dir.path(), &disk_bytes((6 << 20) + 17), "1.2");
    let id = "ob-s3-import";
    let p = plan(
        dir.path(),
        &sc,
        &moto.endpoint(),
        ", import: s3, import_bucket: opsbake-import",
        id,
    );
    let b = opsbake_iaas_aws::builder(&p).unwrap();
    let sink = Arc::new(MemorySink::default());
    let r = Runner::new(dir.path().join("state"), sink.clone());
    let res = r
        .run_all(
            vec![BuildJob {
                plan: p,
                builder: b,
                inputs: InputDigests::default().into(),
            }],
            tokio_util::sync::CancellationToken::new(),
        )
        .await;
    let res = &res[0];
    assert_eq!(res.outcome, Outcome::Failed);
    let err = res.error.clone().unwrap();
    assert!(
        err.contains("ImportSnapshot in us-east-1 (opsbake-import/opsbake/ob-s3-import/"),
        "{err}"
    );
    let events = sink.events();
    let kinds = |f: fn(&EventKind) -> Option<&str>| -> Vec<String> {
        events
            .iter()
            .filter_map(|e| f(&e.kind).map(str::to_string))
            .collect()
    };
    let created = kinds(|k| match k {
        EventKind::ResourceCreated { kind, .. } => Some(kind.as_str()),
        _ => None,
    });
    let deleted = kinds(|k| match k {
        EventKind::ResourceDeleted { kind, .. } => Some(kind.as_str()),
        _ => None,
    });
    assert!(created.iter().any(|k| k == "aws_s3_object"), "{created:?}");
    assert!(deleted.iter().any(|k| k == "aws_s3_object"), "{deleted:?}");
    assert!(
        events.iter().any(|e| matches!(&e.kind, EventKind::Message { text, .. } if text.contains("parts) to s3://opsbake-import/opsbake/ob-s3-import/"))),
        "no upload message"
    );
    assert!(res.leftovers.is_empty(), "{:?}", res.leftovers);
    assert!(bucket_keys(&c, "opsbake-import").await.is_empty());
    let left = leftovers(&moto.endpoint(), &["us-east-1"], id).await;
    assert!(left.is_empty(), "{left:?}");
}

/// Killed while ImportSnapshot is held (the S3 object is uploaded and
/// journaled): `opsbake cleanup`'s path (reopen the journal, sweep, unwind)
/// deletes the object, and the sweep alone finds it by its key prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_before_import_snapshot_then_cleanup_empties_the_bucket() {
    use opsbake_core::events::{Event, EventSink};
    use opsbake_core::journal::Journal;
    use opsbake_core::runner::{unwind, CleanupTracker};
    use opsbake_test_support::fault_proxy::{Fault, FaultProxy};

    struct Chan(tokio::sync::mpsc::UnboundedSender<Event>);
    impl EventSink for Chan {
        fn emit(&self, e: Event) {
            let _ = self.0.send(e);
        }
    }

    let Some(moto) = moto() else { return };
    let proxy = FaultProxy::start(moto.addr()).unwrap();
    let c = s3(&moto.endpoint()).await;
    c.create_bucket()
        .bucket("opsbake-import")
        .send()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sc = heavy_stemcell(dir.path(), &disk_bytes((6 << 20) + 17), "1.3");
    let id = "ob-s3-kill";
    let p = plan(
        dir.path(),
        &sc,
        &proxy.endpoint(),
        ", import: s3, import_bucket: opsbake-import",
        id,
    );
    let b = opsbake_iaas_aws::builder(&p).unwrap();
    proxy.rule("ImportSnapshot", Fault::HoldRequest, Some(1));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let r = Runner::new(dir.path().join("state"), Arc::new(Chan(tx)));
    let task = tokio::spawn(async move {
        r.run_all(
            vec![BuildJob {
                plan: p,
                builder: b,
                inputs: InputDigests::default().into(),
            }],
            tokio_util::sync::CancellationToken::new(),
        )
        .await
    });
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let e = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("no S3 object event")
            .expect("build ended first");
        if matches!(&e.kind, EventKind::ResourceCreated { kind, .. } if kind == "aws_s3_object") {
            break;
        }
    }
    let held = tokio::task::block_in_place(|| proxy.wait_held(std::time::Duration::from_secs(60)));
    assert_eq!(held.as_deref(), Some("ImportSnapshot"));
    task.abort();
    let _ = task.await;
    proxy.clear_rules();
    assert_eq!(bucket_keys(&c, "opsbake-import").await.len(), 1);
    // The sweep finds the object by key prefix (as for a journal lost).
    let jn = Journal::open(&dir.path().join("state"), id).unwrap();
    let st = jn.state();
    let d = opsbake_iaas_aws::deleter(&st.header.clone().unwrap().cleanup_config).unwrap();
    let swept = d.sweep(id).await.unwrap();
    assert!(
        swept
            .iter()
            .any(|r| r.kind == "aws_s3_object" && r.id.as_deref().is_some_and(|i| i.contains(id))),
        "{swept:?}"
    );
    let sink: Arc<dyn EventSink> = Arc::new(MemorySink::default());
    let em = opsbake_core::events::Emitter::for_build(sink, "aws", id);
    let failed = unwind(&jn, d.as_ref(), &em, &CleanupTracker::default()).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert!(bucket_keys(&c, "opsbake-import").await.is_empty());
    let left = leftovers(&moto.endpoint(), &["us-east-1"], id).await;
    assert!(left.is_empty(), "{left:?}");
    proxy.release();
}
