//! The whole build through core's runner (validate → capture → manifest),
//! with a test connector that hands back a local transport (provisioning is
//! empty), and "kills" at the key pair, after CreateImage and mid-copy: the
//! build's task is aborted while the fault proxy holds the next call, so
//! nothing after that point runs, as with SIGKILL; then the journal is
//! reopened and unwound like `opsbake cleanup` (tag sweep, then reverse
//! deletes) and moto must hold nothing of the build.
//!
//! (The CLI-level SIGKILL and SIGINT tests, at every step, are in
//! `kill_cli.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use opsbake_core::builder::{Connector, KeyAlgorithm, KeyPair, SshTarget};
use opsbake_core::events::{Event, EventKind, EventSink};
use opsbake_core::journal::{Journal, Outcome};
use opsbake_core::manifest::InputDigests;
use opsbake_core::runner::{unwind, BuildJob, CleanupTracker, Runner};
use opsbake_core::transport::{Transport, TransportError};
use opsbake_test_support::fault_proxy::{Fault, FaultProxy};

/// Keys from ssh-keygen; "connects" to a local directory. Not the CLI's
/// `SshConnector`: these kills are about AWS calls, and a local transport
/// keeps SSH (and an sshd) out of them; the CLI kill tests (kill_cli.rs)
/// go through the real connector and sshd.
struct LocalConnector {
    dir: std::path::PathBuf,
    targets: Mutex<Vec<SshTarget>>,
}

#[async_trait]
impl Connector for LocalConnector {
    fn generate_key(&self, _a: KeyAlgorithm, _c: &str) -> Result<KeyPair, TransportError> {
        Ok(key(&self.dir))
    }

    async fn connect(
        &self,
        target: &SshTarget,
        _cancel: tokio_util::sync::CancellationToken,
    ) -> Result<Arc<dyn Transport>, TransportError> {
        if let Ok(mut t) = self.targets.lock() {
            t.push(target.clone());
        }
        Ok(Arc::new(opsbake_core::local::LocalTransport::new(
            self.dir.clone(),
        )))
    }
}

struct ChanSink(tokio::sync::mpsc::UnboundedSender<Event>);

impl EventSink for ChanSink {
    fn emit(&self, e: Event) {
        let _ = self.0.send(e);
    }
}

struct Setup {
    moto: opsbake_test_support::moto::Moto,
    proxy: FaultProxy,
    dir: tempfile::TempDir,
}

fn setup() -> Option<Setup> {
    let moto = moto()?;
    let proxy = FaultProxy::start(moto.addr()).unwrap();
    Some(Setup {
        moto,
        proxy,
        dir: tempfile::tempdir().unwrap(),
    })
}

fn runner(
    s: &Setup,
    tx: tokio::sync::mpsc::UnboundedSender<Event>,
) -> (Runner, Arc<LocalConnector>) {
    let conn = Arc::new(LocalConnector {
        dir: s.dir.path().to_path_buf(),
        targets: Mutex::new(Vec::new()),
    });
    let mut r = Runner::new(s.dir.path().join("state"), Arc::new(ChanSink(tx)));
    r.connector = Some(conn.clone());
    (r, conn)
}

fn job(s: &Setup, id: &str, options: &str) -> BuildJob {
    let sc = light_stemcell(
        s.dir.path(),
        &[("us-east-1", SEED_AMI), ("eu-west-1", SEED_AMI)],
    );
    let p = plan(s.dir.path(), &sc, &s.proxy.endpoint(), options, id);
    let b = opsbake_iaas_aws::builder(&p).unwrap();
    BuildJob {
        plan: p,
        builder: b,
        inputs: InputDigests::default().into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_build_through_the_runner_keeps_only_the_amis() {
    let Some(s) = setup() else { return };
    let id = "ob-test-run-1";
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let (r, conn) = runner(&s, tx);
    let j = job(&s, id, ", copy_regions: [eu-west-1]");
    let manifest = j.plan.manifest_path.clone();
    let res = r
        .run_all(vec![j], tokio_util::sync::CancellationToken::new())
        .await;
    assert_eq!(res[0].outcome, Outcome::Succeeded, "{:?}", res[0].error);
    let art = res[0].artifact.clone().unwrap();
    assert_eq!(art.id.split(',').count(), 2, "{}", art.id);
    // The login went to the override with the build's key.
    let t = conn.targets.lock().unwrap()[0].clone();
    assert_eq!(
        (t.host.as_str(), t.port, t.user.as_str()),
        ("127.0.0.1", 2222, "vcap")
    );
    // The manifest records the artifact.
    let m = std::fs::read_to_string(&manifest).unwrap();
    assert!(m.contains(&art.id), "{m}");
    let left = leftovers(&s.moto.endpoint(), &["us-east-1", "eu-west-1"], id).await;
    assert!(
        left.iter()
            .all(|l| l.contains(" image ") || l.contains(" snapshot ")),
        "temporary resources left: {left:?}"
    );
    assert_eq!(left.iter().filter(|l| l.contains(" image ")).count(), 2);
}

/// Abort the build when `pred` matches an event and `hold` holds a call;
/// then clean up from the journal as `opsbake cleanup` does.
async fn abort_at(
    s: &Setup,
    id: &str,
    hold: &str,
    fault: Fault,
    pred: impl Fn(&EventKind) -> bool,
    expect: &[&str],
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (r, _) = runner(s, tx);
    let j = job(s, id, ", copy_regions: [eu-west-1]");
    s.proxy.rule(hold, fault, Some(1));
    let task = tokio::spawn(async move {
        r.run_all(vec![j], tokio_util::sync::CancellationToken::new())
            .await
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let e = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{id}: event not seen"))
            .unwrap_or_else(|| panic!("{id}: build ended before the event"));
        if pred(&e.kind) {
            break;
        }
    }
    let proxy = &s.proxy;
    let held = tokio::task::block_in_place(|| proxy.wait_held(Duration::from_secs(60)));
    assert_eq!(held.as_deref(), Some(hold), "{id}");
    task.abort();
    let _ = task.await;
    s.proxy.clear_rules();
    let ep = s.moto.endpoint();
    let regions = ["us-east-1", "eu-west-1"];
    let before = leftovers(&ep, &regions, id).await;
    for w in expect {
        assert!(
            before.iter().any(|l| l.contains(w)),
            "{id}: no {w} before cleanup: {before:?}"
        );
    }
    // `opsbake cleanup`: reopen the journal, sweep by tag, unwind.
    let state = s.dir.path().join("state");
    let jn = Journal::open(&state, id).unwrap();
    let st = jn.state();
    assert!(st.outcome.is_none(), "an aborted build records no outcome");
    let d = opsbake_iaas_aws::deleter(&st.header.clone().unwrap().cleanup_config).unwrap();
    let known: Vec<String> = st.live.iter().filter_map(|r| r.id.clone()).collect();
    for r in d.sweep(id).await.unwrap() {
        let rid = r.id.clone().unwrap();
        if !known.contains(&rid) {
            let seq = jn
                .intent(&r.kind, &r.name, serde_json::json!({"found_by": "sweep"}))
                .unwrap();
            jn.created(seq, &rid, serde_json::Value::Null).unwrap();
        }
    }
    let sink: Arc<dyn EventSink> = Arc::new(opsbake_core::events::MemorySink::default());
    let em = opsbake_core::events::Emitter::for_build(sink, "aws", id);
    let failed = unwind(&jn, d.as_ref(), &em, &CleanupTracker::default()).await;
    assert!(failed.is_empty(), "{id}: {failed:?}");
    let after = leftovers(&ep, &regions, id).await;
    assert!(after.is_empty(), "{id}: left after cleanup: {after:?}");
}

fn created(kind: &'static str) -> impl Fn(&EventKind) -> bool {
    move |k| matches!(k, EventKind::ResourceCreated { kind: k2, .. } if k2 == kind)
}

fn intent(kind: &'static str) -> impl Fn(&EventKind) -> bool {
    move |k| matches!(k, EventKind::ResourceIntent { kind: k2, .. } if k2 == kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_key_pair_leaves_nothing_after_cleanup() {
    let Some(s) = setup() else { return };
    abort_at(
        &s,
        "ob-kill-kp",
        "DescribeVpcs",
        Fault::HoldRequest,
        created("aws_key_pair"),
        &["key pair"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_inside_import_key_pair_leaves_nothing_after_cleanup() {
    let Some(s) = setup() else { return };
    abort_at(
        &s,
        "ob-kill-kp2",
        "ImportKeyPair",
        Fault::HoldResponse,
        intent("aws_key_pair"),
        &["key pair"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_create_image_leaves_nothing_after_cleanup() {
    let Some(s) = setup() else { return };
    abort_at(
        &s,
        "ob-kill-img",
        "CopyImage",
        Fault::HoldRequest,
        created("aws_image"),
        &["instance", "image"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_inside_create_image_leaves_nothing_after_cleanup() {
    let Some(s) = setup() else { return };
    abort_at(
        &s,
        "ob-kill-img2",
        "CreateImage",
        Fault::HoldResponse,
        intent("aws_image"),
        &["instance"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_copy_leaves_nothing_after_cleanup() {
    let Some(s) = setup() else { return };
    abort_at(
        &s,
        "ob-kill-copy",
        "CopyImage",
        Fault::HoldResponse,
        created("aws_image"),
        &["instance", "us-east-1 image", "eu-west-1 image"],
    )
    .await;
}

/// An AMI whose create call was cut off (only its intent is journaled) but
/// that lands a moment later (a request AWS got just before the Ctrl-C, or
/// a Describe that lags behind the create): the unwind looks again and
/// deletes it instead of taking it as never created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intent_only_image_that_lands_late_is_still_deleted() {
    let Some(s) = setup() else { return };
    let ep = s.moto.endpoint();
    let d = opsbake_iaas_aws::deleter(&serde_json::json!({
        "region": "us-east-1", "regions": ["us-east-1"], "endpoint": ep,
    }))
    .unwrap();
    let res = opsbake_core::journal::Resource {
        seq: 7,
        kind: "aws_image".into(),
        name: "ob-late-image".into(),
        token: "ob-late-7".into(),
        id: None,
        data: serde_json::json!({ "region": "us-east-1" }),
        created_data: serde_json::Value::Null,
        last_error: None,
    };
    let c = ec2(&ep, "us-east-1").await;
    let late = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        c.copy_image()
            .source_region("us-east-1")
            .source_image_id(SEED_AMI)
            .name("ob-late-image")
            .send()
            .await
            .unwrap()
            .image_id()
            .unwrap()
            .to_string()
    });
    let how = d.delete(&res).await.unwrap();
    let ami = late.await.unwrap();
    assert_eq!(
        how,
        opsbake_core::builder::Deleted::Now,
        "{ami} not found again"
    );
    let left = ec2(&ep, "us-east-1")
        .await
        .describe_images()
        .image_ids(&ami)
        .send()
        .await
        .map(|o| o.images().len())
        .unwrap_or(0);
    assert_eq!(left, 0, "{ami} still registered");
}
