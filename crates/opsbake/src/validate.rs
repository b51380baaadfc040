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
    for plan in &plans {
        match dispatch::builder(plan, state_dir) {
            Ok(b) => {
                for f in b.offline_checks() {
                    errors.push(finding(loaded, &vars, &f));
                }
                for f in b.offline_warnings() {
                    warnings.push(finding(loaded, &vars, &f));
                }
            }
            // Not built yet: nothing of it to check offline (`build` says so).
            Err(BuildError::NotImplemented { .. }) => {}
            Err(e) => errors.push(construction_error(loaded, plan.iaas, e)),
        }
    }
    sort_errors(&mut errors);
    sort_errors(&mut warnings);
    Checked {
        vars,
        plans,
        errors,
        warnings,
    }
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

/// Print warnings to stderr and turn errors into one message (one error a
/// line), or `None` when there are none.
pub fn report(c: &Checked) -> Option<String> {
    for w in &c.warnings {
        eprintln!("warning: {w}");
    }
    if c.errors.is_empty() {
        return None;
    }
    let lines: Vec<String> = c.errors.iter().map(|e| e.to_string()).collect();
    let n = lines.len();
    let mut msg = lines.join("\nerror: ");
    if n > 1 {
        msg.push_str(&format!("\n{n} errors"));
    }
    Some(msg)
}
