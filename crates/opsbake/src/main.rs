//! The opsbake command line. Exit codes (docs/cli.md):
//! 0 ok, 1 a build failed, 2 bad input (template, variables, usage),
//! 3 cleanup could not delete something, 130 interrupted.

mod cmd {
    pub mod import_packer;
    pub mod stemcell;
}
mod dispatch;
mod localtest;
mod malloc;
mod manifest_cmd;
mod matrix;
mod output;
mod summary;
mod validate;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use opsbake_core::builder::RunOptions;
use opsbake_core::events::{Emitter, EventSink};
use opsbake_core::journal::{self, Journal, JournalError, Outcome};
use opsbake_core::plan::plan_build;
use opsbake_core::runner::{unwind, Asker, BuildJob, CleanupTracker, OnError, Runner};
use opsbake_core::template::{self, Iaas, TemplateError};
use opsbake_core::vars::{resolve, VarSources};
use tokio_util::sync::CancellationToken;

/// Exit code: success.
pub const EXIT_OK: i32 = 0;
/// Exit code: a build failed.
pub const EXIT_BUILD_FAILED: i32 = 1;
/// Exit code: bad input (template, variables, stemcell, usage).
pub const EXIT_BAD_INPUT: i32 = 2;
/// Exit code: cleanup could not delete something.
pub const EXIT_CLEANUP_INCOMPLETE: i32 = 3;
/// Exit code: interrupted (Ctrl-C, SIGTERM).
pub const EXIT_INTERRUPTED: i32 = 130;

#[derive(Parser, Debug)]
#[command(
    name = "opsbake",
    version,
    about = "Bake one appliance image on BOSH stemcells for AWS, GCP, Azure, vSphere and VirtualBox",
    after_help = "Exit codes: 0 ok, 1 build failed, 2 bad input, 3 cleanup incomplete, 130 interrupted.\nCtrl-C once: every build deletes what it made (a create call under way is let finish first, up to 30 s); twice: stop at once, then run `opsbake cleanup --all`."
)]
struct Cli {
    /// One JSON event per line on stdout instead of human output.
    #[arg(long, global = true)]
    json: bool,
    /// Prefix human output with timestamps.
    #[arg(long, global = true)]
    timestamps: bool,
    /// No progress bars (they only show on a terminal anyway).
    #[arg(long, global = true)]
    no_progress: bool,
    /// Where build journals live [default: $XDG_STATE_HOME/opsbake or ~/.local/state/opsbake].
    #[arg(long, global = true, env = "OPSBAKE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Build the image for one or more IaaSes (in parallel).
    Build(BuildArgs),
    /// Check a template: syntax, variables, references, files. Creates nothing.
    Validate(TemplateArgs),
    /// Show what would run, per IaaS.
    Inspect(InspectArgs),
    /// Delete what a failed or killed build left behind, from its journal.
    Cleanup(CleanupArgs),
    /// Inspect, verify or extract a BOSH stemcell.
    Stemcell(cmd::stemcell::StemcellArgs),
    /// Convert a Packer template (JSON or HCL2) into an opsbake template, with a report.
    ImportPacker(cmd::import_packer::ImportPackerArgs),
    /// Work with build manifests (join the per-worker ones of a CI matrix).
    Manifest(manifest_cmd::ManifestArgs),
    /// Print the JSON Schema of the template format.
    Schema,
    /// Print the version.
    Version,
    /// Print shell completions.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Args, Debug, Clone)]
struct TemplateArgs {
    /// The template (YAML).
    template: PathBuf,
    /// Set a variable (repeatable).
    #[arg(long = "var", value_name = "NAME=VALUE")]
    vars: Vec<String>,
    /// Read variables from a YAML file (repeatable).
    #[arg(long = "var-file", value_name = "FILE")]
    var_files: Vec<PathBuf>,
}

#[derive(Args, Debug)]
struct InspectArgs {
    #[command(flatten)]
    t: TemplateArgs,
    /// Only these IaaSes (comma separated).
    #[arg(long, value_delimiter = ',')]
    iaas: Vec<String>,
    /// Print the build matrix as JSON (one entry per IaaS: credentials env
    /// vars, peers, command, expected duration) for a CI `strategy.matrix`
    /// or a Concourse `across` step.
    #[arg(long)]
    matrix: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OnErrorArg {
    Cleanup,
    Abort,
    Ask,
}

#[derive(Args, Debug)]
struct BuildArgs {
    #[command(flatten)]
    t: TemplateArgs,
    /// IaaSes to build (comma separated) [default: every entry of `builds`].
    #[arg(long, value_delimiter = ',')]
    iaas: Vec<String>,
    /// What to do with a failed build's resources.
    #[arg(long, value_enum, default_value = "cleanup")]
    on_error: OnErrorArg,
    /// Cancel the other builds when one fails.
    #[arg(long)]
    fail_fast: bool,
    /// Pause after every step; verbose chef-solo.
    #[arg(long)]
    debug: bool,
    /// Refuse anything that would reach the network (vbox: restricted guest network; aws: loopback endpoint only).
    #[arg(long)]
    offline: bool,
    /// Keep the staging directory on the VM.
    #[arg(long)]
    keep_staging: bool,
    /// Write the ephemeral private key into the build's state dir.
    #[arg(long)]
    debug_keep_key: bool,
    /// vbox engine: vbox or qemu [default: vbox if VBoxManage is installed, else qemu; qemu with --offline].
    #[arg(long)]
    engine: Option<String>,
    /// Import the stemcell again even if a base image exists.
    #[arg(long)]
    reimport: bool,
    /// Run no provisioning steps in the builds of these IaaSes (comma
    /// separated): the image is the base image as launched and captured.
    /// For trying an IaaS path against an emulator whose stand-in host must
    /// not be changed (the AWS tests against moto).
    #[arg(long, value_delimiter = ',', value_name = "IAAS")]
    skip_provision: Vec<String>,
}

#[derive(Args, Debug)]
struct CleanupArgs {
    /// The build to clean up.
    build_id: Option<String>,
    /// Every journal on this machine that still lists resources (running builds are skipped).
    #[arg(long, conflicts_with = "build_id")]
    all: bool,
    /// Only list what would be deleted.
    #[arg(long)]
    dry_run: bool,
    /// No journal on this machine (another host ran the build): find the
    /// named build's resources by their `opsbake:build-id` tag, with the
    /// IaaS settings of this template.
    #[arg(
        long,
        requires = "build_id",
        requires = "iaas",
        value_name = "TEMPLATE"
    )]
    sweep_template: Option<PathBuf>,
    /// The IaaS to sweep (with --sweep-template).
    #[arg(long, requires = "sweep_template")]
    iaas: Option<String>,
    /// Variables for --sweep-template.
    #[arg(long = "var", value_name = "NAME=VALUE", requires = "sweep_template")]
    vars: Vec<String>,
}

fn state_dir(cli: &Cli) -> PathBuf {
    if let Some(d) = &cli.state_dir {
        return d.clone();
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("opsbake");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/tmp".into());
    home.join(".local/state/opsbake")
}

fn sink(cli: &Cli) -> Arc<dyn EventSink> {
    if cli.json {
        Arc::new(output::JsonSink::new())
    } else {
        Arc::new(output::HumanSink::new(cli.timestamps, !cli.no_progress))
    }
}

/// An error with an exit code, printed once.
struct Fail {
    code: i32,
    message: String,
}

impl From<TemplateError> for Fail {
    fn from(e: TemplateError) -> Fail {
        Fail {
            code: EXIT_BAD_INPUT,
            message: e.to_string(),
        }
    }
}

fn bad(message: impl Into<String>) -> Fail {
    Fail {
        code: EXIT_BAD_INPUT,
        message: message.into(),
    }
}

fn var_sources(t: &TemplateArgs) -> Result<VarSources, Fail> {
    let mut s = VarSources::from_process_env();
    for v in &t.vars {
        let (k, val) = v
            .split_once('=')
            .ok_or_else(|| bad(format!("--var `{v}`: expected NAME=VALUE")))?;
        s.cli.push((k.to_string(), val.to_string()));
    }
    s.files = t.var_files.clone();
    Ok(s)
}

fn parse_iaas_list(list: &[String], loaded: &template::Loaded) -> Result<Vec<Iaas>, Fail> {
    if list.is_empty() {
        let all = loaded.template.builds.iaases();
        if all.is_empty() {
            return Err(bad(format!(
                "{}: the template has no builds",
                loaded.path.display()
            )));
        }
        return Ok(all);
    }
    let mut out = Vec::new();
    for s in list {
        let i: Iaas = s.parse().map_err(|e: String| bad(format!("--iaas: {e}")))?;
        if !out.contains(&i) {
            out.push(i);
        }
    }
    Ok(out)
}

fn new_build_id(iaas: Iaas) -> String {
    let now = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!("[year][month][day]-[hour][minute][second]");
    let stamp = now
        .format(&fmt)
        .unwrap_or_else(|_| now.unix_timestamp().to_string());
    let r: u32 = rand::random::<u32>() & 0xff_ffff;
    format!("ob-{stamp}-{iaas}-{r:06x}")
}

/// `println!` that ends the process quietly when stdout is a closed pipe
/// (`opsbake inspect ... | head`) instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut o = std::io::stdout().lock();
        if let Err(e) = writeln!(o, $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

fn print_json(v: &serde_json::Value) {
    outln!("{}", opsbake_core::redactor().scrub(&v.to_string()));
}

/// Read a template, reporting every YAML/type-level error of it.
fn load_checked(cli: &Cli, path: &std::path::Path) -> Result<template::Loaded, Fail> {
    validate::load(path)
        .map_err(|errors| bad(validate::report_all(&errors, &[], cli.json).unwrap_or_default()))
}

fn cmd_validate(cli: &Cli, t: &TemplateArgs) -> Result<i32, Fail> {
    let loaded = load_checked(cli, &t.template)?;
    let checked = validate::check(&loaded, &var_sources(t)?, &[], &state_dir(cli));
    if let Some(m) = validate::report(&checked, cli.json) {
        return Err(bad(m));
    }
    let plans = checked.plans;
    let iaases: Vec<String> = plans.iter().map(|p| p.iaas.to_string()).collect();
    if cli.json {
        print_json(
            &serde_json::json!({"event": "validated", "template": t.template.display().to_string(), "builds": iaases}),
        );
    } else {
        eprintln!("{}: valid ({})", t.template.display(), iaases.join(", "));
    }
    Ok(EXIT_OK)
}

fn cmd_inspect(cli: &Cli, a: &InspectArgs) -> Result<i32, Fail> {
    let loaded = load_checked(cli, &a.t.template)?;
    let iaases = parse_iaas_list(&a.iaas, &loaded)?;
    // The matrix is planned where the stemcells and the credentials are not
    // (a CI planning job): the files and the builders' checks are each
    // worker's build's business, so only the template's shape and its
    // variables are checked here.
    if a.matrix {
        let vars = resolve(&loaded, &var_sources(&a.t)?)?;
        let plans: Vec<_> = iaases
            .iter()
            .map(|i| (*i, plan_build(&loaded, &vars, *i, "inspect").ok()))
            .collect();
        print_json(&matrix::matrix(&a.t.template, &a.t.var_files, &plans));
        return Ok(EXIT_OK);
    }
    // The template's errors stop it; the builders' offline findings are
    // shown with each build (and make the exit code 2).
    let checked = validate::check(&loaded, &var_sources(&a.t)?, &iaases, &state_dir(cli));
    let finding_errors = checked.findings.iter().map(|f| f.1.len()).sum::<usize>();
    if checked.errors.len() > finding_errors {
        return Err(bad(validate::report(&checked, cli.json).unwrap_or_default()));
    }
    let vars = checked.vars;
    let mut builds = Vec::new();
    for i in iaases {
        let p = plan_build(&loaded, &vars, i, "inspect")?;
        let (errors, warnings) = checked
            .findings
            .iter()
            .find(|f| f.0 == i)
            .map(|f| (f.1.as_slice(), f.2.as_slice()))
            .unwrap_or_default();
        let checks: Vec<serde_json::Value> = errors
            .iter()
            .map(|e| validate::event(e, false))
            .chain(warnings.iter().map(|w| validate::event(w, true)))
            .collect();
        let steps: Vec<serde_json::Value> = p
            .provision
            .iter()
            .map(|s| serde_json::json!({"type": s.type_name(), "label": s.label()}))
            .collect();
        builds.push(serde_json::json!({
            "iaas": i.to_string(),
            // Every IaaS has a builder (dispatch's table is exhaustive);
            // the field stays for readers of the JSON.
            "implemented": true,
            "cpus": p.cpus, "memory_mib": p.memory_mib, "disk_mib": p.disk_mib,
            "ssh_user": p.ssh.user,
            "stemcell": p.stemcell.as_ref().map(|s| s.path.clone().or(s.url.clone())),
            "steps": steps,
            "output_dir": p.output_dir.display().to_string(),
            "manifest": p.manifest_path.display().to_string(),
            "checks": checks,
        }));
    }
    if cli.json {
        print_json(
            &serde_json::json!({"template": a.t.template.display().to_string(), "variables": vars.redacted(), "builds": builds}),
        );
    } else {
        outln!(
            "template {} ({})",
            a.t.template.display(),
            loaded.template.name
        );
        for (k, v) in vars.redacted() {
            outln!("  var {k} = {v}");
        }
        for b in &builds {
            outln!(
                "[{}] cpus={} memory={}MiB ssh user={} stemcell={}",
                b["iaas"].as_str().unwrap_or(""),
                b["cpus"],
                b["memory_mib"],
                b["ssh_user"].as_str().unwrap_or(""),
                b["stemcell"].as_str().unwrap_or("-"),
            );
            outln!(
                "    validate -> base image -> launch -> connect -> provision -> capture -> export"
            );
            for (n, s) in b["steps"].as_array().into_iter().flatten().enumerate() {
                outln!("    {}. {}", n + 1, s["label"].as_str().unwrap_or(""));
            }
            outln!(
                "    artifacts in {}, manifest {}",
                b["output_dir"].as_str().unwrap_or(""),
                b["manifest"].as_str().unwrap_or("")
            );
            for c in b["checks"].as_array().into_iter().flatten() {
                let warn = c["event"] == "template_warning";
                outln!(
                    "    {}: {}:{}:{}: {}: {}",
                    if warn { "warning" } else { "error" },
                    c["file"].as_str().unwrap_or(""),
                    c["line"],
                    c["column"],
                    c["key"].as_str().unwrap_or(""),
                    c["message"].as_str().unwrap_or("")
                );
            }
        }
    }
    if finding_errors > 0 {
        let n = finding_errors;
        return Err(bad(format!(
            "{n} error{} in the builders' offline checks (shown above)",
            if n == 1 { "" } else { "s" }
        )));
    }
    Ok(EXIT_OK)
}

struct TtyAsker;

impl Asker for TtyAsker {
    fn ask_cleanup(&self, build: &str, error: &str) -> bool {
        if !std::io::stdin().is_terminal() {
            eprintln!("[{build}] --on-error=ask without a terminal: cleaning up");
            return true;
        }
        eprintln!("[{build}] build failed: {error}");
        eprint!("[{build}] delete its resources now? [Y/n] ");
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        !matches!(line.trim(), "n" | "N" | "no")
    }
}

/// Ctrl-C / SIGTERM: the first cancels every build (they unwind: the
/// summary says what each deleted); the second says what is still being
/// cleaned and exits at once (the journals stay for `opsbake cleanup`).
fn spawn_signal_handler(cancel: CancellationToken, tracker: Arc<CleanupTracker>) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        let mut count = 0;
        loop {
            tokio::select! {
                _ = int.recv() => {},
                _ = term.recv() => {},
            }
            count += 1;
            if count == 1 {
                eprintln!("\ninterrupted: cancelling every build and deleting what it created (Ctrl-C again to stop at once)");
                cancel.cancel();
                continue;
            }
            let pending = tracker.pending();
            if !pending.is_empty() {
                eprintln!("\nstopped while cleaning up; not deleted yet:");
                for (b, r) in pending {
                    eprintln!("  [{b}] {r}");
                }
            }
            eprintln!(
                "stopped at once: run `opsbake cleanup --all` to delete what the builds left"
            );
            std::process::exit(EXIT_INTERRUPTED);
        }
    });
}

async fn cmd_build(cli: &Cli, a: &BuildArgs) -> Result<i32, Fail> {
    let loaded = load_checked(cli, &a.t.template)?;
    let iaases = parse_iaas_list(&a.iaas, &loaded)?;
    let sd = state_dir(cli);
    // The validate step: every error of the template and of the selected
    // builders' offline checks, before anything is created.
    let checked = validate::check(&loaded, &var_sources(&a.t)?, &iaases, &sd);
    if let Some(m) = validate::report(&checked, cli.json) {
        return Err(bad(m));
    }
    let vars = checked.vars;
    let skip: Vec<Iaas> = if a.skip_provision.is_empty() {
        Vec::new()
    } else {
        parse_iaas_list(&a.skip_provision, &loaded)
            .map_err(|f| bad(format!("--skip-provision: {}", f.message)))?
    };
    let mut jobs = Vec::new();
    for i in iaases {
        let mut plan = plan_build(&loaded, &vars, i, &new_build_id(i))?;
        if skip.contains(&i) && !plan.provision.is_empty() {
            eprintln!(
                "[{i}] --skip-provision: not running the {} provisioning step(s)",
                plan.provision.len()
            );
            plan.provision.clear();
        }
        let builder = dispatch::builder(&plan, &sd)
            .map_err(|e| Fail::from(validate::construction_error(&loaded, i, e)))?;
        // Read while the build runs (a stemcell takes seconds); the
        // manifest waits for them.
        let inputs = opsbake_core::manifest::Inputs::start(&plan, &vars);
        jobs.push(BuildJob {
            plan,
            builder,
            inputs,
        });
    }
    let manifests: Vec<(String, PathBuf)> = jobs
        .iter()
        .map(|j| (j.plan.iaas.to_string(), j.plan.manifest_path.clone()))
        .collect();
    let tally = Arc::new(summary::Tally::new(sink(cli)));
    let mut runner = Runner::new(sd, tally.clone());
    runner.options = RunOptions {
        debug: a.debug,
        offline: a.offline,
        keep_staging: a.keep_staging,
        debug_keep_key: a.debug_keep_key,
        engine: a.engine.clone(),
        reimport: a.reimport,
    };
    runner.on_error = match a.on_error {
        OnErrorArg::Cleanup => OnError::Cleanup,
        OnErrorArg::Abort => OnError::Abort,
        OnErrorArg::Ask => OnError::Ask,
    };
    runner.asker = Some(Arc::new(TtyAsker));
    runner.fail_fast = a.fail_fast;
    runner.provisioning = Some(Arc::new(opsbake_provision::Provision::default()));
    runner.connector = Some(Arc::new(opsbake_comms_ssh::SshConnector));
    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone(), runner.tracker.clone());
    let results = runner.run_all(jobs, cancel.clone()).await;

    let mut code = EXIT_OK;
    for r in &results {
        if !r.leftovers.is_empty() {
            let what: Vec<String> = r
                .leftovers
                .iter()
                .map(|x| format!("{} {}", x.kind, x.id.as_deref().unwrap_or(&x.name)))
                .collect();
            eprintln!(
                "[{}] {} resource(s) left: {}; delete them with `opsbake cleanup {}`",
                r.iaas,
                what.len(),
                what.join(", "),
                r.build_id
            );
        }
        let c = match r.outcome {
            Outcome::Succeeded => EXIT_OK,
            // cancelled by --fail-fast (an interrupt sets 130 below)
            Outcome::Failed | Outcome::Cancelled => EXIT_BUILD_FAILED,
        };
        code = code.max(c);
        if !r.leftovers.is_empty() && !r.kept_on_error && code < EXIT_CLEANUP_INCOMPLETE {
            code = EXIT_CLEANUP_INCOMPLETE;
        }
    }
    summary::record_run(&manifests, &results);
    if !cli.json {
        eprintln!("\n{}", summary::render(&results, &tally));
    }
    if cancel.is_cancelled() {
        eprintln!("{}", summary::deleted_report(&results, &tally));
        code = EXIT_INTERRUPTED;
    }
    Ok(code)
}

async fn cleanup_one(
    sd: &Path,
    build_id: &str,
    sink: Arc<dyn EventSink>,
    dry_run: bool,
) -> Result<usize, Fail> {
    let j = match Journal::open(sd, build_id) {
        Ok(j) => j,
        Err(e @ JournalError::Busy { .. }) => {
            return Err(Fail {
                code: EXIT_CLEANUP_INCOMPLETE,
                message: e.to_string(),
            })
        }
        Err(e @ JournalError::NotFound { .. }) => return Err(bad(e.to_string())),
        Err(e) => {
            return Err(Fail {
                code: EXIT_CLEANUP_INCOMPLETE,
                message: e.to_string(),
            })
        }
    };
    let st = j.state();
    let Some(h) = st.header.clone() else {
        return Err(Fail {
            code: EXIT_CLEANUP_INCOMPLETE,
            message: format!("{}: no header", j.path().display()),
        });
    };
    let events = Emitter::for_build(sink, &h.iaas, build_id);
    let deleter = dispatch::deleter(&h.iaas, &h.cleanup_config).map_err(|e| Fail {
        code: EXIT_CLEANUP_INCOMPLETE,
        message: format!("[{}] {build_id}: {e}", h.iaas),
    })?;
    // Resources tagged with this build id but missing from the journal (a
    // kill between the create call and its record): the build id comes from
    // a journal on this machine, or the user named it.
    match deleter.sweep(build_id).await {
        Ok(found) => {
            let known: Vec<String> = st
                .live
                .iter()
                .chain(st.kept.iter())
                .filter_map(|r| r.id.clone())
                .chain(st.live.iter().map(|r| r.name.clone()))
                .collect();
            for r in found {
                let id = r.id.clone().unwrap_or_else(|| r.name.clone());
                if known.contains(&id) {
                    continue;
                }
                if let Err(e) = j
                    .intent(&r.kind, &r.name, serde_json::json!({"found_by": "sweep"}))
                    .and_then(|seq| j.created(seq, &id, serde_json::Value::Null))
                {
                    events.warn(format!("journal: {e}"));
                }
            }
        }
        Err(e) => events.warn(format!("tag sweep failed: {e}")),
    }
    let live = j.state().live;
    if dry_run {
        for r in &live {
            eprintln!(
                "[{}] {build_id}: would delete {} {}",
                h.iaas,
                r.kind,
                r.id.as_deref().unwrap_or(&r.name)
            );
        }
        return Ok(0);
    }
    if live.is_empty() {
        return Ok(0);
    }
    events.info(format!(
        "cleaning up {} resource(s) of {build_id}",
        live.len()
    ));
    let failed = unwind(&j, deleter.as_ref(), &events, &CleanupTracker::default()).await;
    if st.outcome.is_none() {
        let _ = j.finished(Outcome::Cancelled);
    }
    Ok(failed.len())
}

/// Delete what carries a named build id, found by the builder's tag sweep
/// (the journal is not on this machine).
async fn sweep_named(cli: &Cli, a: &CleanupArgs, t: &Path, build_id: &str) -> Result<i32, Fail> {
    let iaas: Iaas = a
        .iaas
        .as_deref()
        .unwrap_or_default()
        .parse()
        .map_err(|e: String| bad(format!("--iaas: {e}")))?;
    let targs = TemplateArgs {
        template: t.to_path_buf(),
        vars: a.vars.clone(),
        var_files: Vec::new(),
    };
    let loaded = template::load(t)?;
    let vars = resolve(&loaded, &var_sources(&targs)?)?;
    let plan = plan_build(&loaded, &vars, iaas, build_id)?;
    let builder = dispatch::builder(&plan, &state_dir(cli)).map_err(|e| bad(e.to_string()))?;
    let found = builder.sweep(build_id).await.map_err(|e| Fail {
        code: EXIT_CLEANUP_INCOMPLETE,
        message: e.to_string(),
    })?;
    if a.dry_run {
        for r in found.iter().rev() {
            let id = r.id.clone().unwrap_or_else(|| r.name.clone());
            eprintln!("[{iaas}] {build_id}: would delete {} {id}", r.kind);
        }
        return Ok(EXIT_OK);
    }
    if found.is_empty() {
        return Ok(EXIT_OK);
    }
    // What the sweep found goes into a journal on this machine (a new one,
    // or this build's), and core's unwinding deletes it like any other
    // build's: the same order, two passes, events and records, and a failed
    // delete stays for `opsbake cleanup BUILD_ID`.
    let sd = state_dir(cli);
    let incomplete = |e: JournalError| Fail {
        code: EXIT_CLEANUP_INCOMPLETE,
        message: e.to_string(),
    };
    let j = match Journal::open(&sd, build_id) {
        Ok(j) => j,
        Err(JournalError::NotFound { .. }) => Journal::create(
            &sd,
            journal::Header {
                build_id: build_id.to_string(),
                iaas: iaas.to_string(),
                template: t.display().to_string(),
                started_at: opsbake_core::events::now_rfc3339(),
                process: None,
                cleanup_config: builder.cleanup_config(),
            },
        )
        .map_err(incomplete)?,
        Err(e) => return Err(incomplete(e)),
    };
    let known: Vec<String> = j.state().live.iter().filter_map(|r| r.id.clone()).collect();
    for r in &found {
        let id = r.id.clone().unwrap_or_else(|| r.name.clone());
        if known.contains(&id) {
            continue;
        }
        j.intent(&r.kind, &r.name, r.data.clone())
            .and_then(|seq| j.created(seq, &id, serde_json::Value::Null))
            .map_err(incomplete)?;
    }
    let events = Emitter::for_build(sink(cli), &iaas.to_string(), build_id);
    let failed = unwind(&j, builder.as_ref(), &events, &CleanupTracker::default()).await;
    if j.state().outcome.is_none() {
        let _ = j.finished(Outcome::Cancelled);
    }
    Ok(if failed.is_empty() {
        EXIT_OK
    } else {
        EXIT_CLEANUP_INCOMPLETE
    })
}

async fn cmd_cleanup(cli: &Cli, a: &CleanupArgs) -> Result<i32, Fail> {
    let sd = state_dir(cli);
    if let (Some(t), Some(id)) = (&a.sweep_template, &a.build_id) {
        return sweep_named(cli, a, t, id).await;
    }
    let ids: Vec<String> = if a.all {
        let list = journal::list(&sd).map_err(|e| Fail {
            code: EXIT_CLEANUP_INCOMPLETE,
            message: e.to_string(),
        })?;
        let mut ids = Vec::new();
        for info in list {
            if info.running {
                eprintln!("skipping {}: its build is still running", info.build_id);
                continue;
            }
            ids.push(info.build_id);
        }
        ids
    } else {
        match &a.build_id {
            Some(id) => vec![id.clone()],
            None => return Err(bad("give a BUILD_ID or --all")),
        }
    };
    let mut failed = 0;
    for id in &ids {
        match cleanup_one(&sd, id, sink(cli), a.dry_run).await {
            Ok(n) => failed += n,
            Err(f) if a.all => {
                eprintln!("{id}: {}", f.message);
                failed += 1;
            }
            Err(f) => return Err(f),
        }
    }
    if failed > 0 {
        eprintln!("{failed} resource(s) could not be deleted; see the messages above");
        return Ok(EXIT_CLEANUP_INCOMPLETE);
    }
    Ok(EXIT_OK)
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("OPSBAKE_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(output::color_allowed(std::io::stderr().is_terminal()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

fn main() {
    malloc::tune();
    let cli = Cli::parse();
    init_tracing();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(EXIT_BUILD_FAILED);
        }
    };
    let r = rt.block_on(async {
        match &cli.cmd {
            Cmd::Build(a) => cmd_build(&cli, a).await,
            Cmd::Validate(t) => cmd_validate(&cli, t),
            Cmd::Inspect(a) => cmd_inspect(&cli, a),
            Cmd::Cleanup(a) => cmd_cleanup(&cli, a).await,
            Cmd::Stemcell(a) => cmd::stemcell::run(a.clone()).await.map_err(|e| Fail {
                code: EXIT_BUILD_FAILED,
                message: format!("{e:#}"),
            }),
            Cmd::ImportPacker(a) => cmd::import_packer::run(a, cli.json)
                .map_err(|(code, message)| Fail { code, message }),
            Cmd::Manifest(a) => manifest_cmd::run(a).map_err(bad).map(|m| {
                if let Some(m) = m {
                    eprintln!("{m}");
                }
                EXIT_OK
            }),
            Cmd::Schema => {
                let s = template::json_schema();
                outln!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
                Ok(EXIT_OK)
            }
            Cmd::Version => {
                outln!("opsbake {}", env!("CARGO_PKG_VERSION"));
                Ok(EXIT_OK)
            }
            Cmd::Completions { shell } => {
                clap_complete::generate(
                    *shell,
                    &mut Cli::command(),
                    "opsbake",
                    &mut std::io::stdout(),
                );
                Ok(EXIT_OK)
            }
        }
    });
    let code = match r {
        Ok(c) => c,
        Err(f) => {
            let msg = opsbake_core::redactor().scrub(&f.message);
            if cli.json {
                print_json(&serde_json::json!({"event": "error", "code": f.code, "error": msg}));
            } else {
                eprintln!("error: {msg}");
            }
            f.code
        }
    };
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
