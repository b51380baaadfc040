//! One build through core's runner, as the builders' end-to-end tests run
//! it: the template planned for one IaaS, the production SSH connector and
//! provisioners, the events collected as JSON lines.
//!
//! These are fixtures: a template that does not plan fails the test with a
//! message naming it (hence the panics).
#![allow(clippy::panic)]

use std::path::Path;
use std::sync::{Arc, Mutex};

use opsbake_core::builder::BuildError;
use opsbake_core::builder::Builder;
use opsbake_core::events::{Event, EventSink};
use opsbake_core::manifest::InputDigests;
use opsbake_core::plan::BuildPlan;
use opsbake_core::runner::{BuildJob, BuildResult, Runner};
use opsbake_core::template::Iaas;
use opsbake_core::vars::Vars;
use tokio_util::sync::CancellationToken;

/// The events of a run as JSON lines (optionally echoed on stdout, for a
/// parent process that reads a child's events).
#[derive(Default)]
pub struct EventLog {
    lines: Mutex<Vec<String>>,
    echo: bool,
}

impl EventLog {
    /// A log that also prints each line on stdout.
    pub fn echoing() -> Self {
        EventLog {
            lines: Mutex::default(),
            echo: true,
        }
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl EventSink for EventLog {
    fn emit(&self, e: Event) {
        let line =
            serde_json::to_string(&e).unwrap_or_else(|err| panic!("event not serialisable: {err}"));
        if self.echo {
            println!("{line}");
        }
        if let Ok(mut l) = self.lines.lock() {
            l.push(line);
        }
    }
}

/// The plan of `iaas`'s build of the template (no var files), with the
/// resolved vars.
pub fn plan_with_vars(template: &Path, iaas: Iaas, id: &str) -> (BuildPlan, Vars) {
    let t = template.display();
    let loaded = opsbake_core::template::load(template).unwrap_or_else(|e| panic!("load {t}: {e}"));
    let vars = opsbake_core::vars::resolve(&loaded, &Default::default())
        .unwrap_or_else(|e| panic!("vars of {t}: {e}"));
    let plan = opsbake_core::plan::plan_build(&loaded, &vars, iaas, id)
        .unwrap_or_else(|e| panic!("plan {iaas:?} of {t}: {e}"));
    (plan, vars)
}

/// The plan of `iaas`'s build of the template (no var files).
pub fn plan(template: &Path, iaas: Iaas, id: &str) -> BuildPlan {
    plan_with_vars(template, iaas, id).0
}

/// The plan of `iaas`'s build of the template with the digests of its
/// inputs (the manifest's).
pub fn plan_and_inputs(template: &Path, iaas: Iaas, id: &str) -> (BuildPlan, InputDigests) {
    let (plan, vars) = plan_with_vars(template, iaas, id);
    let inputs = opsbake_core::manifest::input_digests(&plan, &vars)
        .unwrap_or_else(|e| panic!("input digests of {}: {e}", template.display()));
    (plan, inputs)
}

/// The job of `iaas`'s build of the template, with the builder `builder`
/// makes of its plan (an IaaS crate's `builder`).
pub fn job(
    template: &Path,
    iaas: Iaas,
    id: &str,
    builder: impl FnOnce(&BuildPlan) -> Result<Arc<dyn Builder>, BuildError>,
) -> BuildJob {
    let (plan, inputs) = plan_and_inputs(template, iaas, id);
    let builder = builder(&plan).unwrap_or_else(|e| panic!("{iaas:?} builder: {e}"));
    BuildJob {
        plan,
        builder,
        inputs: inputs.into(),
    }
}

/// A runner with its state in `dir/state`, the CLI's SSH connector (the
/// build's template pins SSH to a loopback override) and the provisioners.
pub fn runner(dir: &Path, sink: Arc<dyn EventSink>) -> Runner {
    let mut runner = Runner::new(dir.join("state"), sink);
    runner.connector = Some(Arc::new(opsbake_comms_ssh::SshConnector));
    runner.provisioning = Some(Arc::new(opsbake_provision::Provision::default()));
    runner
}

/// Run one job on `runner`: its result.
pub async fn run_one(runner: Runner, job: BuildJob, cancel: CancellationToken) -> BuildResult {
    let mut r = runner.run_all(vec![job], cancel).await;
    if r.is_empty() {
        panic!("the runner returned no result for one job");
    }
    r.remove(0)
}

/// Run one job with a fresh [`runner`] in `dir`: its result and events.
pub async fn run(
    dir: &Path,
    job: BuildJob,
    cancel: CancellationToken,
) -> (BuildResult, Vec<String>) {
    let log = Arc::new(EventLog::default());
    let r = run_one(runner(dir, log.clone()), job, cancel).await;
    (r, log.lines())
}

/// The build succeeded (else its error, events and the sshd's log), logged
/// in to `sshd` as vcap with a key (vcap has no authorized_keys: the key
/// came through the IaaS's agent settings) and ran the appliance's
/// provisioner there (`$HOME/opsbake-marker`).
pub fn assert_provisioned_over(sshd: &crate::sshd::Sshd, r: &BuildResult, events: &[String]) {
    assert!(
        r.error.is_none(),
        "{:?}\n{}\nsshd log:\n{}",
        r.error,
        events.join("\n"),
        sshd.log_text()
    );
    let marker_path = sshd.home().join("opsbake-marker");
    let marker = std::fs::read_to_string(&marker_path)
        .unwrap_or_else(|e| panic!("{}: {e}", marker_path.display()));
    assert_eq!(marker.trim(), "provisioned by opsbake as vcap");
    assert!(
        sshd.log_text().contains("Accepted publickey for vcap"),
        "{}",
        sshd.log_text()
    );
}
