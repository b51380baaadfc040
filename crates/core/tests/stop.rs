//! A stopped build and the create calls it has under way
//! (`runner::step`, `BuildContext::create_resource`): a create call that
//! has begun is let finish and its resource recorded, so the unwind finds it
//! by id; a step with none under way is dropped at once; a create call that
//! hangs is given up after the grace.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use opsbake_core::builder::{BuildContext, BuildError, Made, RunOptions};
use opsbake_core::events::{Emitter, EventKind, MemorySink};
use opsbake_core::journal::{Header, Journal, ProcessIdentity};
use opsbake_core::plan::plan_build;
use opsbake_core::runner::{step, CREATE_STOP_GRACE};
use opsbake_core::template::{parse, Iaas};
use opsbake_core::vars::{resolve, VarSources};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

fn context(dir: &std::path::Path) -> (BuildContext, Arc<MemorySink>) {
    let src = "name: t\nbuilds:\n  localtest: {}\noutputs: {directory: out}\n";
    let path = dir.join("t.yml");
    std::fs::write(&path, src).unwrap();
    let loaded = parse(&path, src.to_string()).unwrap();
    let vars = resolve(&loaded, &VarSources::default()).unwrap();
    let plan = plan_build(&loaded, &vars, Iaas::Localtest, "b-stop").unwrap();
    let journal = Journal::create(
        &dir.join("state"),
        Header {
            build_id: "b-stop".into(),
            iaas: "localtest".into(),
            template: path.display().to_string(),
            started_at: "2026-01-01T00:00:00Z".into(),
            process: ProcessIdentity::current(),
            cleanup_config: serde_json::Value::Null,
        },
    )
    .unwrap();
    let sink = Arc::new(MemorySink::default());
    let ctx = BuildContext {
        plan: Arc::new(plan),
        journal: Arc::new(journal),
        events: Emitter::for_build(sink.clone(), "localtest", "b-stop"),
        cancel: CancellationToken::new(),
        options: RunOptions::default(),
        creating: Default::default(),
    };
    (ctx, sink)
}

/// The step makes one resource whose create call answers when `answer`
/// fires (the IaaS has made it by then), then waits forever; `started`
/// fires when the call has begun.
async fn one_create(
    ctx: &BuildContext,
    started: oneshot::Sender<()>,
    answer: oneshot::Receiver<()>,
) -> Result<(), BuildError> {
    ctx.create_resource("test_vm", "vm-1", serde_json::Value::Null, |_t| async {
        let _ = started.send(());
        let _ = answer.await;
        Ok::<_, BuildError>(Made::new("i-1", ()))
    })
    .await?;
    std::future::pending::<()>().await;
    Ok(())
}

/// A "launch" step running [`one_create`], stopped once its create call
/// has begun; the sender answers the call.
async fn stopped_in_create(
    ctx: &BuildContext,
) -> (
    tokio::task::JoinHandle<Result<(), BuildError>>,
    oneshot::Sender<()>,
) {
    let (started_tx, started) = oneshot::channel();
    let (answer, answer_rx) = oneshot::channel();
    let run = {
        let ctx = ctx.clone();
        tokio::spawn(
            async move { step(&ctx, "launch", one_create(&ctx, started_tx, answer_rx)).await },
        )
    };
    started.await.unwrap();
    ctx.cancel.cancel();
    (run, answer)
}

#[tokio::test]
async fn a_stop_lets_a_create_call_under_way_finish_and_record_its_resource() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, sink) = context(dir.path());
    let (run, answer) = stopped_in_create(&ctx).await;
    // the step is still running: its create call is under way
    tokio::task::yield_now().await;
    assert!(
        !run.is_finished(),
        "the step was dropped inside its create call"
    );
    assert_eq!(ctx.creating.count(), 1);
    answer.send(()).unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the step did not stop once its create call had returned")
        .unwrap();
    assert!(matches!(r, Err(BuildError::Cancelled)), "{r:?}");
    assert_eq!(ctx.creating.count(), 0);
    let live = ctx.journal.state().live;
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0].id.as_deref(), Some("i-1"), "recorded with its id");
    let said = sink
        .events()
        .into_iter()
        .any(|e| matches!(&e.kind, EventKind::Message { text, .. } if text.contains("create call(s) under way")));
    assert!(said, "the wait was not reported");
}

#[tokio::test]
async fn a_stop_drops_a_step_with_no_create_call_under_way_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, _sink) = context(dir.path());
    let (entered, waiting) = oneshot::channel::<()>();
    let run = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            step(&ctx, "provision", async {
                let _ = entered.send(());
                std::future::pending::<()>().await;
                Ok::<(), BuildError>(())
            })
            .await
        })
    };
    waiting.await.unwrap();
    ctx.cancel.cancel();
    let r = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("a step without a create call was not dropped")
        .unwrap();
    assert!(matches!(r, Err(BuildError::Cancelled)), "{r:?}");
    assert!(ctx.journal.state().live.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_create_call_that_hangs_is_given_up_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, sink) = context(dir.path());
    let t0 = tokio::time::Instant::now();
    let (run, _answer) = stopped_in_create(&ctx).await;
    let r = run.await.unwrap();
    assert!(matches!(r, Err(BuildError::Cancelled)), "{r:?}");
    let waited = t0.elapsed();
    assert!(
        waited >= CREATE_STOP_GRACE && waited < CREATE_STOP_GRACE + Duration::from_secs(1),
        "{waited:?}"
    );
    // the intent stays, without an id: the unwind looks for it by name/tag
    let live = ctx.journal.state().live;
    assert_eq!(live.len(), 1, "{live:?}");
    assert!(live[0].id.is_none());
    let warned = sink.events().into_iter().any(
        |e| matches!(&e.kind, EventKind::Message { text, .. } if text.contains("did not finish")),
    );
    assert!(warned);
}

#[tokio::test]
async fn a_create_call_that_fails_after_the_stop_ends_the_step_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let (ctx, sink) = context(dir.path());
    let (started_tx, started) = oneshot::channel::<()>();
    let (answer, answer_rx) = oneshot::channel::<()>();
    let run = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            step(&ctx, "base_image", async {
                ctx.create_resource("test_image", "img-1", serde_json::Value::Null, |_t| async {
                    let _ = started_tx.send(());
                    let _ = answer_rx.await;
                    // the IaaS's wait saw the stop and says so in its own words
                    Err::<Made<()>, _>(BuildError::Other("create img-1: cancelled".into()))
                })
                .await
                .map(|_| ())
            })
            .await
        })
    };
    started.await.unwrap();
    ctx.cancel.cancel();
    answer.send(()).unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(r, Err(BuildError::Cancelled)), "{r:?}");
    let told = sink.events().into_iter().any(|e| {
        matches!(&e.kind, EventKind::Message { text, .. } if text.contains("ended with: create img-1: cancelled"))
    });
    assert!(told);
    // no create call begins once stopped
    let r = ctx
        .create_resource("test_vm", "vm-2", serde_json::Value::Null, |_t| async {
            Ok::<_, BuildError>(Made::new("i-2", ()))
        })
        .await;
    assert!(matches!(r, Err(BuildError::Cancelled)), "{r:?}");
    assert!(ctx.journal.state().live.iter().all(|l| l.name != "vm-2"));
}
