//! The runner with in-process test builders: concurrent builds, one failing
//! without stopping the others, --fail-fast, and secrets kept out of every
//! output (events, journal, manifest).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use opsbake_core::builder::{
    Access, Artifact, BaseImage, BuildContext, BuildError, Builder, ConnectTarget, Deleted, Deleter,
};
use opsbake_core::events::{EventKind, MemorySink};
use opsbake_core::journal::{Outcome, Resource};
use opsbake_core::manifest::InputDigests;
use opsbake_core::plan::plan_build;
use opsbake_core::runner::{BuildJob, Runner};
use opsbake_core::template::{parse, Iaas};
use opsbake_core::vars::{resolve, VarSources};
use opsbake_core::Secret;
use tokio::sync::Barrier;
use tokio_util::sync::CancellationToken;

struct TestBuilder {
    iaas: Iaas,
    barrier: Option<Arc<Barrier>>,
    fail: bool,
    hang: bool,
    dir: std::path::PathBuf,
    leak: Option<String>,
}

#[async_trait]
impl Deleter for TestBuilder {
    async fn delete(&self, res: &Resource) -> Result<Deleted, BuildError> {
        match std::fs::remove_file(&res.name) {
            Ok(()) => Ok(Deleted::Now),
            Err(_) => Ok(Deleted::AlreadyGone),
        }
    }
}

#[async_trait]
impl Builder for TestBuilder {
    fn iaas(&self) -> Iaas {
        self.iaas
    }
    async fn validate(&self, _ctx: &BuildContext) -> Result<(), BuildError> {
        Ok(())
    }
    async fn base_image(&self, _ctx: &BuildContext) -> Result<BaseImage, BuildError> {
        Ok(BaseImage::default())
    }
    async fn launch(
        &self,
        ctx: &BuildContext,
        _b: &BaseImage,
        _a: &Access,
    ) -> Result<ConnectTarget, BuildError> {
        let p = self.dir.join(format!("{}-vm", self.iaas));
        let name = p.display().to_string();
        let seq = ctx.intent("test_vm", &name, serde_json::Value::Null)?;
        std::fs::write(&p, "vm").map_err(BuildError::io(&p))?;
        ctx.created(seq, "test_vm", &name, serde_json::Value::Null)?;
        if let Some(secret) = &self.leak {
            // A careless builder: the secret ends up in an event, a journal
            // record and the artifact's custom data.
            ctx.events.info(format!("debug: password is {secret}"));
            let s = ctx.intent(
                "test_note",
                &format!("note-{secret}"),
                serde_json::Value::Null,
            )?;
            ctx.deleted(s, "test_note", "x")?;
        }
        // Both builds must be in launch at once, or this never returns.
        if let Some(b) = &self.barrier {
            tokio::time::timeout(Duration::from_secs(10), b.wait())
                .await
                .map_err(|_| BuildError::Other("builds did not run concurrently".into()))?;
        }
        if self.fail {
            return Err(BuildError::Other(format!(
                "{} failed on purpose",
                self.iaas
            )));
        }
        if self.hang {
            std::future::pending::<()>().await;
        }
        Ok(ConnectTarget::Local {
            dir: self.dir.clone(),
        })
    }
    async fn capture(&self, _ctx: &BuildContext) -> Result<Artifact, BuildError> {
        let mut a = Artifact {
            id: format!("{}-image", self.iaas),
            ..Default::default()
        };
        if let Some(s) = &self.leak {
            a.custom_data.insert("oops".into(), s.clone());
        }
        Ok(a)
    }
}

fn jobs(dir: &Path, builders: Vec<TestBuilder>) -> Vec<BuildJob> {
    let src =
        "name: t\nbuilds:\n  aws: {}\n  gcp: {}\n  localtest: {}\noutputs: {directory: out}\n";
    let tpath = dir.join("t.yml");
    std::fs::write(&tpath, src).unwrap();
    let loaded = parse(&tpath, src.to_string()).unwrap();
    let vars = resolve(&loaded, &VarSources::default()).unwrap();
    builders
        .into_iter()
        .map(|b| {
            // Plans without stemcell checks: use localtest's plan, re-labelled.
            let mut plan =
                plan_build(&loaded, &vars, Iaas::Localtest, &format!("b-{}", b.iaas)).unwrap();
            plan.iaas = b.iaas;
            plan.output_dir = dir.join("out");
            plan.manifest_path = dir.join("out/manifest.json");
            BuildJob {
                plan,
                builder: Arc::new(b),
                inputs: InputDigests::default().into(),
            }
        })
        .collect()
}

fn tb(dir: &Path, iaas: Iaas) -> TestBuilder {
    TestBuilder {
        iaas,
        barrier: None,
        fail: false,
        hang: false,
        dir: dir.to_path_buf(),
        leak: None,
    }
}

#[tokio::test]
async fn builds_run_concurrently_and_one_failure_does_not_stop_the_other() {
    let d = tempfile::tempdir().unwrap();
    let barrier = Arc::new(Barrier::new(2));
    let mut a = tb(d.path(), Iaas::Aws);
    a.barrier = Some(barrier.clone());
    let mut g = tb(d.path(), Iaas::Gcp);
    g.barrier = Some(barrier);
    g.fail = true;
    let sink = Arc::new(MemorySink::default());
    let runner = Runner::new(d.path().join("state"), sink.clone());
    let results = runner
        .run_all(jobs(d.path(), vec![a, g]), CancellationToken::new())
        .await;
    assert_eq!(
        results[0].outcome,
        Outcome::Succeeded,
        "{:?}",
        results[0].error
    );
    assert_eq!(results[1].outcome, Outcome::Failed);
    assert!(results[1]
        .error
        .as_deref()
        .unwrap_or("")
        .contains("failed on purpose"));
    // Both VMs were deleted (temporary resources go on success too).
    assert!(!d.path().join("aws-vm").exists());
    assert!(!d.path().join("gcp-vm").exists());
    // Every event carries its build's prefix.
    let evs = sink.events();
    assert!(evs.iter().any(|e| e.build.as_deref() == Some("aws")));
    assert!(evs.iter().any(|e| e.build.as_deref() == Some("gcp")));
}

#[tokio::test]
async fn fail_fast_cancels_the_other_builds_which_unwind() {
    let d = tempfile::tempdir().unwrap();
    let barrier = Arc::new(Barrier::new(2));
    let mut a = tb(d.path(), Iaas::Aws);
    a.barrier = Some(barrier.clone());
    a.hang = true;
    let mut g = tb(d.path(), Iaas::Gcp);
    g.barrier = Some(barrier);
    g.fail = true;
    let sink = Arc::new(MemorySink::default());
    let mut runner = Runner::new(d.path().join("state"), sink.clone());
    runner.fail_fast = true;
    let results = tokio::time::timeout(
        Duration::from_secs(20),
        runner.run_all(jobs(d.path(), vec![a, g]), CancellationToken::new()),
    )
    .await
    .expect("fail-fast must stop the hanging build");
    assert_eq!(results[0].outcome, Outcome::Cancelled);
    assert_eq!(results[1].outcome, Outcome::Failed);
    assert!(
        !d.path().join("aws-vm").exists(),
        "the cancelled build unwound"
    );
}

#[tokio::test]
async fn secrets_never_reach_events_journal_or_manifest() {
    let d = tempfile::tempdir().unwrap();
    let secret = "pa55-w0rd-that-leaks";
    let _s = Secret::registered(secret);
    let mut a = tb(d.path(), Iaas::Aws);
    a.leak = Some(secret.to_string());
    let sink = Arc::new(MemorySink::default());
    let runner = Runner::new(d.path().join("state"), sink.clone());
    let results = runner
        .run_all(jobs(d.path(), vec![a]), CancellationToken::new())
        .await;
    assert_eq!(
        results[0].outcome,
        Outcome::Succeeded,
        "{:?}",
        results[0].error
    );
    let events: Vec<String> = sink.events().iter().map(|e| e.to_json_line()).collect();
    assert!(events
        .iter()
        .any(|e| e.contains("debug: password is [REDACTED]")));
    for e in &events {
        assert!(!e.contains(secret), "{e}");
    }
    let mut checked = 0;
    for entry in walk(d.path()) {
        let text = std::fs::read_to_string(&entry).unwrap_or_default();
        assert!(
            !text.contains(secret),
            "{} holds the secret",
            entry.display()
        );
        checked += 1;
    }
    assert!(checked >= 2, "journal and manifest were read");
    assert!(std::fs::read_to_string(d.path().join("out/manifest.json"))
        .unwrap()
        .contains("[REDACTED]"));
    // Nothing sneaks into the event kinds either.
    assert!(sink
        .events()
        .iter()
        .any(|e| matches!(&e.kind, EventKind::ResourceCreated { kind, .. } if kind == "test_vm")));
}

fn walk(p: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

struct FailsValidation;

#[async_trait]
impl Deleter for FailsValidation {
    async fn delete(&self, _res: &Resource) -> Result<Deleted, BuildError> {
        Ok(Deleted::AlreadyGone)
    }
}

#[async_trait]
impl Builder for FailsValidation {
    fn iaas(&self) -> Iaas {
        Iaas::Gcp
    }
    async fn validate(&self, _ctx: &BuildContext) -> Result<(), BuildError> {
        Err(BuildError::Other("GOOGLE_PROJECT_ID is not set".into()))
    }
    async fn base_image(&self, _ctx: &BuildContext) -> Result<BaseImage, BuildError> {
        Ok(BaseImage::default())
    }
    async fn launch(
        &self,
        _ctx: &BuildContext,
        _b: &BaseImage,
        _a: &Access,
    ) -> Result<ConnectTarget, BuildError> {
        Err(BuildError::Other("must not launch".into()))
    }
    async fn capture(&self, _ctx: &BuildContext) -> Result<Artifact, BuildError> {
        Err(BuildError::Other("must not capture".into()))
    }
}

#[tokio::test]
async fn a_failed_validation_stops_every_build_before_anything_is_created() {
    let d = tempfile::tempdir().unwrap();
    let a = tb(d.path(), Iaas::Aws);
    let mut js = jobs(d.path(), vec![a, tb(d.path(), Iaas::Gcp)]);
    js[1].builder = Arc::new(FailsValidation);
    let sink = Arc::new(MemorySink::default());
    let runner = Runner::new(d.path().join("state"), sink.clone());
    let results = runner.run_all(js, CancellationToken::new()).await;
    assert_eq!(results[0].outcome, Outcome::Failed);
    assert!(
        results[0]
            .error
            .as_deref()
            .unwrap_or("")
            .contains("validation of the gcp build failed"),
        "{:?}",
        results[0].error
    );
    assert!(results[1]
        .error
        .as_deref()
        .unwrap_or("")
        .contains("GOOGLE_PROJECT_ID"));
    assert!(!sink
        .events()
        .iter()
        .any(|e| matches!(&e.kind, EventKind::ResourceIntent { .. })));
}

/// A builder whose offline checks find something (as the gcp builder's
/// would for an empty GOOGLE_PROJECT_ID) and whose online validate passes.
struct OfflineFinding;

#[async_trait]
impl Deleter for OfflineFinding {
    async fn delete(&self, _res: &Resource) -> Result<Deleted, BuildError> {
        Ok(Deleted::AlreadyGone)
    }
}

#[async_trait]
impl Builder for OfflineFinding {
    fn iaas(&self) -> Iaas {
        Iaas::Gcp
    }
    fn offline_checks(&self) -> Vec<opsbake_core::builder::Finding> {
        vec![opsbake_core::builder::Finding::new(
            "builds.gcp.options.project_id",
            "GOOGLE_PROJECT_ID is empty (an empty variable counts as unset)",
        )]
    }
    async fn validate(&self, _ctx: &BuildContext) -> Result<(), BuildError> {
        Ok(())
    }
    async fn base_image(&self, _ctx: &BuildContext) -> Result<BaseImage, BuildError> {
        Err(BuildError::Other("must not look for a base image".into()))
    }
    async fn launch(
        &self,
        _ctx: &BuildContext,
        _b: &BaseImage,
        _a: &Access,
    ) -> Result<ConnectTarget, BuildError> {
        Err(BuildError::Other("must not launch".into()))
    }
    async fn capture(&self, _ctx: &BuildContext) -> Result<Artifact, BuildError> {
        Err(BuildError::Other("must not capture".into()))
    }
}

#[tokio::test]
async fn offline_findings_fail_the_validate_step_of_every_build() {
    let d = tempfile::tempdir().unwrap();
    let mut js = jobs(
        d.path(),
        vec![tb(d.path(), Iaas::Aws), tb(d.path(), Iaas::Gcp)],
    );
    js[1].builder = Arc::new(OfflineFinding);
    let sink = Arc::new(MemorySink::default());
    let runner = Runner::new(d.path().join("state"), sink.clone());
    let results = runner.run_all(js, CancellationToken::new()).await;
    assert_eq!(results[0].outcome, Outcome::Failed);
    assert_eq!(results[1].outcome, Outcome::Failed);
    let e = results[1].error.as_deref().unwrap_or("");
    assert!(
        e.contains("builds.gcp.options.project_id: GOOGLE_PROJECT_ID is empty"),
        "{e}"
    );
    assert!(!sink
        .events()
        .iter()
        .any(|e| matches!(&e.kind, EventKind::ResourceIntent { .. })));
}
