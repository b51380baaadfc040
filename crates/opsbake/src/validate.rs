//! What `opsbake validate` checks, and the validate step of `build` before
//! anything is created: the template (syntax, variables, references, files,
//! values, host key pins), then each selected builder's construction and
//! offline checks, every error of the template in one run, each at its
//! file:line:col and key path.

use opsbake_core::builder::{BuildError, Finding};
use opsbake_core::plan::{sort_errors, validate_all_errors, BuildPlan};
use opsbake_core::template::{Iaas, Loaded, TemplateError};
use opsbake_core::vars::{resolve_all, var_refs, VarSources, Vars};
use std::path::Path;

use crate::dispatch;

/// The result of checking a template.
pub struct Checked {
    /// The variables (those in error are marked failed).
    pub vars: Vars,
    /// The plans that are valid.
    pub plans: Vec<BuildPlan>,
    /// Every error, in the order of the template's lines.
    pub errors: Vec<TemplateError>,
    /// Warnings (what a builder de-duplicated or ignores).
    pub warnings: Vec<TemplateError>,
    /// The builders' offline findings of each IaaS: (errors, warnings).
    pub findings: Vec<(Iaas, Vec<TemplateError>, Vec<TemplateError>)>,
}

/// Read a template with every YAML/type-level error of it.
pub fn load(path: &Path) -> Result<Loaded, Vec<TemplateError>> {
    opsbake_core::template::load_all(path)
}

/// Check `loaded` for `iaases` (every entry of `builds` when empty).
pub fn check(loaded: &Loaded, sources: &VarSources, iaases: &[Iaas], state_dir: &Path) -> Checked {
    let (vars, mut errors) = resolve_all(loaded, sources);
    let (plans, plan_errors) = validate_all_errors(loaded, &vars);
    errors.extend(plan_errors);
    let plans: Vec<BuildPlan> = plans
        .into_iter()
        .filter(|p| iaases.is_empty() || iaases.contains(&p.iaas))
        .collect();
    let mut warnings = Vec::new();
    let mut findings = Vec::new();
    for plan in &plans {
        match dispatch::builder(plan, state_dir) {
            Ok(b) => {
                let errs: Vec<TemplateError> = b
                    .offline_checks()
                    .iter()
                    .map(|f| finding(loaded, &vars, f))
                    .collect();
                let warns: Vec<TemplateError> = b
                    .offline_warnings()
                    .iter()
                    .map(|f| finding(loaded, &vars, f))
                    .collect();
                errors.extend(errs.iter().map(copy));
                warnings.extend(warns.iter().map(copy));
                findings.push((plan.iaas, errs, warns));
            }
            // Not built yet: nothing of it to check offline (`build` says so).
            Err(BuildError::NotImplemented { .. }) => {}
            Err(e) => {
                let e = construction_error(loaded, plan.iaas, e);
                errors.push(copy(&e));
                findings.push((plan.iaas, vec![e], Vec::new()));
            }
        }
    }
    sort_errors(&mut errors);
    sort_errors(&mut warnings);
    Checked {
        vars,
        plans,
        errors,
        warnings,
        findings,
    }
}

/// A copy of an error (`TemplateError` holds an `io::Error`, so it is not
/// `Clone`; findings are never I/O errors).
fn copy(e: &TemplateError) -> TemplateError {
    match e {
        TemplateError::At {
            path,
            line,
            column,
            key,
            message,
        } => TemplateError::At {
            path: path.clone(),
            line: *line,
            column: *column,
            key: key.clone(),
            message: message.clone(),
        },
        TemplateError::Invalid { path, key, message } => TemplateError::Invalid {
            path: path.clone(),
            key: key.clone(),
            message: message.clone(),
        },
        TemplateError::Io { path, source } => TemplateError::Invalid {
            path: path.clone(),
            key: "(file)".to_string(),
            message: source.to_string(),
        },
    }
}

/// One error or warning as a `--json` event: `{"event": "template_error"
/// | "template_warning", "file", "line", "column", "key", "message"}`
/// (`line` and `column` are null where the error has no place).
pub fn event(e: &TemplateError, warning: bool) -> serde_json::Value {
    let kind = if warning {
        "template_warning"
    } else {
        "template_error"
    };
    let (file, line, column, key, message) = match e {
        TemplateError::At {
            path,
            line,
            column,
            key,
            message,
        } => (
            path,
            Some(*line),
            Some(*column),
            key.clone(),
            message.clone(),
        ),
        TemplateError::Invalid { path, key, message } => {
            (path, None, None, key.clone(), message.clone())
        }
        TemplateError::Io { path, source } => {
            (path, None, None, "(file)".to_string(), source.to_string())
        }
    };
    serde_json::json!({
        "event": kind,
        "file": file.display().to_string(),
        "line": line,
        "column": column,
        "key": key,
        "message": message,
    })
}

/// Print one JSON event a line on stdout (redacted; a closed pipe ends it).
pub fn print_event(v: &serde_json::Value) {
    use std::io::Write as _;
    let line = opsbake_core::redactor().scrub(&v.to_string());
    let mut o = std::io::stdout().lock();
    if let Err(e) = writeln!(o, "{line}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}

/// Report errors and warnings: with `json`, one event per error and
/// warning on stdout and a short summary as the message; else warnings on
/// stderr and the errors as one message (one error a line). `None` when
/// there is no error.
pub fn report_all(
    errors: &[TemplateError],
    warnings: &[TemplateError],
    json: bool,
) -> Option<String> {
    if json {
        for w in warnings {
            print_event(&event(w, true));
        }
        for e in errors {
            print_event(&event(e, false));
        }
        return match errors.len() {
            0 => None,
            1 => Some("1 error in the template".to_string()),
            n => Some(format!("{n} errors in the template")),
        };
    }
    for w in warnings {
        eprintln!("warning: {w}");
    }
    if errors.is_empty() {
        return None;
    }
    let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    let n = lines.len();
    let mut msg = lines.join("\nerror: ");
    if n > 1 {
        msg.push_str(&format!("\n{n} errors"));
    }
    Some(msg)
}

/// A builder that could not be made, placed at its key (a template error
/// names it; any other error is placed at `builds.<iaas>`).
pub fn construction_error(loaded: &Loaded, iaas: Iaas, e: BuildError) -> TemplateError {
    match e {
        BuildError::Template(TemplateError::Invalid { key, message, .. }) => {
            loaded.error_at("", &key, message)
        }
        BuildError::Template(t) => t,
        other => loaded.error_at("", &format!("builds.{iaas}"), other.to_string()),
    }
}

/// A finding at its place. Where the value came from a sensitive variable,
/// the message shows the variable's name instead of its value.
fn finding(loaded: &Loaded, vars: &Vars, f: &Finding) -> TemplateError {
    let mut message = f.message.clone();
    for name in raw_string(loaded, &f.key)
        .map(|s| var_refs(&s))
        .unwrap_or_default()
    {
        if vars.is_sensitive(&name) {
            if let Some(v) = vars.get(&name).filter(|v| !v.is_empty()) {
                message = message.replace(v, &format!("${{var.{name}}}"));
            }
        }
    }
    loaded.error_at("", &f.key, opsbake_core::redactor().scrub(&message))
}

/// The string at a key path of the template as written (before
/// interpolation), if there is one.
fn raw_string(loaded: &Loaded, key: &str) -> Option<String> {
    let v = opsbake_core::secret::with_exposed(|| serde_json::to_value(&loaded.template)).ok()?;
    let mut cur = &v;
    for part in key.split('.') {
        let (name, idx) = match part.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        cur = cur.get(name)?;
        if let Some(i) = idx {
            cur = cur.get(i)?;
        }
    }
    cur.as_str().map(str::to_string)
}

/// Report a check's errors and warnings (see [`report_all`]).
pub fn report(c: &Checked, json: bool) -> Option<String> {
    report_all(&c.errors, &c.warnings, json)
}
