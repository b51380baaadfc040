//! Template variables and `${...}` interpolation.
//!
//! Precedence, lowest first: the declared `default`, `--var-file` files (in
//! order), `OPSBAKE_VAR_<NAME>` environment variables, `--var NAME=VALUE`.
//! Defaults may reference other variables (`${var.other}`) and the
//! environment (`${env.NAME}`); undefined and circular references are
//! errors at validate time. `$${` writes a literal `${`. References other
//! than `var.`, `env.`, `build.` and `template.` are left alone, so shell
//! code like `${HOME}` passes through.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::located::Positions;
use crate::secret::redactor;
use crate::template::{Loaded, TemplateError};

/// Where variable values come from, besides the template.
#[derive(Debug, Clone, Default)]
pub struct VarSources {
    /// `--var NAME=VALUE`, in order.
    pub cli: Vec<(String, String)>,
    /// `--var-file` paths, in order.
    pub files: Vec<PathBuf>,
    /// The process environment (for `OPSBAKE_VAR_*` and `${env.NAME}`).
    pub env: BTreeMap<String, String>,
}

impl VarSources {
    /// Sources with the current process environment.
    pub fn from_process_env() -> VarSources {
        VarSources {
            env: std::env::vars().collect(),
            ..Default::default()
        }
    }
}

/// Resolved variable values.
#[derive(Debug, Clone, Default)]
pub struct Vars {
    values: BTreeMap<String, String>,
    sensitive: BTreeSet<String>,
    /// Variables that could not be resolved (their error is reported once;
    /// references to them are not reported again).
    failed: BTreeSet<String>,
}

impl Vars {
    /// A variable's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// Names and values, with sensitive values shown as `[REDACTED]`.
    pub fn redacted(&self) -> BTreeMap<String, String> {
        self.values
            .iter()
            .map(|(k, v)| {
                let v = if self.sensitive.contains(k) {
                    crate::secret::REDACTED.to_string()
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect()
    }

    /// Whether `name` is sensitive (findings show its name, not its value).
    pub fn is_sensitive(&self, name: &str) -> bool {
        self.sensitive.contains(name)
    }

    /// Whether `name` failed to resolve (its error was already reported).
    pub fn failed(&self, name: &str) -> bool {
        self.failed.contains(name)
    }

    /// Every value, for digests (the manifest records the SHA-256 of the
    /// variables, not the values).
    pub fn all(&self) -> &BTreeMap<String, String> {
        &self.values
    }
}

/// Built-in references available at plan time.
#[derive(Debug, Clone, Default)]
pub struct Builtins {
    /// `${build.iaas}`.
    pub iaas: String,
    /// `${build.id}`.
    pub build_id: String,
    /// `${template.dir}`.
    pub template_dir: String,
}

/// Why a reference could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefError {
    /// `${var.x}` with no such variable.
    Undefined(String),
    /// `${...` without `}`.
    Unterminated,
    /// `${env.X}` outside a variable default.
    EnvNotAllowed(String),
    /// `${build.x}` or `${template.x}` that does not exist.
    UnknownBuiltin(String),
    /// `${var.x}` whose own definition is in error (reported there).
    Failed(String),
}

impl std::fmt::Display for RefError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RefError::Undefined(n) => write!(f, "undefined variable `{n}` in `${{var.{n}}}`"),
            RefError::Unterminated => write!(f, "`${{` without a closing `}}`"),
            RefError::EnvNotAllowed(n) => write!(
                f,
                "`${{env.{n}}}` is only allowed in a variable's default (declare a variable)"
            ),
            RefError::Failed(n) => {
                write!(f, "variable `{n}` could not be resolved (see its error)")
            }
            RefError::UnknownBuiltin(n) => write!(
                f,
                "unknown reference `${{{n}}}` (known: build.iaas, build.id, template.dir)"
            ),
        }
    }
}

/// One reference found in a string.
enum Piece<'a> {
    Text(&'a str),
    Ref(&'a str),
}

const PREFIXES: [&str; 4] = ["var.", "env.", "build.", "template."];

fn split(s: &str) -> Result<Vec<Piece<'_>>, RefError> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        if i > 0 && rest.as_bytes()[i - 1] == b'$' {
            // `$${` is a literal `${`.
            out.push(Piece::Text(&rest[..i - 1]));
            out.push(Piece::Text("${"));
            rest = &rest[i + 2..];
            continue;
        }
        let after = &rest[i + 2..];
        if !PREFIXES.iter().any(|p| after.starts_with(p)) {
            out.push(Piece::Text(&rest[..i + 2]));
            rest = after;
            continue;
        }
        let end = after.find('}').ok_or(RefError::Unterminated)?;
        out.push(Piece::Text(&rest[..i]));
        out.push(Piece::Ref(after[..end].trim()));
        rest = &after[end + 1..];
    }
    out.push(Piece::Text(rest));
    Ok(out)
}

/// The variable names a string references.
pub fn var_refs(s: &str) -> Vec<String> {
    split(s)
        .map(|p| {
            p.into_iter()
                .filter_map(|p| match p {
                    Piece::Ref(r) => r.strip_prefix("var.").map(str::to_string),
                    Piece::Text(_) => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Replace references in `s`.
pub fn interpolate(s: &str, vars: &Vars, builtins: &Builtins) -> Result<String, RefError> {
    let mut out = String::with_capacity(s.len());
    for p in split(s)? {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Ref(r) => {
                if let Some(n) = r.strip_prefix("var.") {
                    if vars.failed(n) {
                        return Err(RefError::Failed(n.to_string()));
                    }
                    out.push_str(
                        vars.get(n)
                            .ok_or_else(|| RefError::Undefined(n.to_string()))?,
                    );
                } else if let Some(n) = r.strip_prefix("env.") {
                    return Err(RefError::EnvNotAllowed(n.to_string()));
                } else {
                    let v = match r {
                        "build.iaas" => &builtins.iaas,
                        "build.id" => &builtins.build_id,
                        "template.dir" => &builtins.template_dir,
                        other => return Err(RefError::UnknownBuiltin(other.to_string())),
                    };
                    out.push_str(v);
                }
            }
        }
    }
    Ok(out)
}

fn err_at(loaded: &Loaded, needle: &str, key: &str, msg: String) -> TemplateError {
    loaded.error_at(needle, key, msg)
}

fn read_var_file(path: &Path) -> Result<BTreeMap<String, String>, TemplateError> {
    let text = std::fs::read_to_string(path).map_err(|source| TemplateError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let map: BTreeMap<String, serde_yaml_ng::Value> =
        serde_yaml_ng::from_str(&text).map_err(|e| {
            let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
            TemplateError::At {
                path: path.to_path_buf(),
                line,
                column,
                key: "(var-file)".to_string(),
                message: e.to_string(),
            }
        })?;
    let mut out = BTreeMap::new();
    for (k, v) in map {
        let s = match v {
            serde_yaml_ng::Value::String(s) => s,
            serde_yaml_ng::Value::Number(n) => n.to_string(),
            serde_yaml_ng::Value::Bool(b) => b.to_string(),
            other => {
                let (line, column) = Positions::from_source(&text)
                    .key(&k)
                    .map_or((1, 1), |p| (p.line, p.column));
                return Err(TemplateError::At {
                    path: path.to_path_buf(),
                    line,
                    column,
                    key: k,
                    message: format!("a variable must be a string, number or bool, not {other:?}"),
                });
            }
        };
        out.insert(k, s);
    }
    Ok(out)
}

/// Resolve every declared variable; the first error if any.
pub fn resolve(loaded: &Loaded, sources: &VarSources) -> Result<Vars, TemplateError> {
    let (vars, mut errors) = resolve_all(loaded, sources);
    if errors.is_empty() {
        Ok(vars)
    } else {
        Err(errors.remove(0))
    }
}

/// Resolve every declared variable, collecting every error (each cycle,
/// each undefined reference, each unset variable) instead of stopping at the
/// first. Variables in error are marked failed in the result.
pub fn resolve_all(loaded: &Loaded, sources: &VarSources) -> (Vars, Vec<TemplateError>) {
    let mut errors = Vec::new();
    let decls = &loaded.template.variables;
    let mut given: BTreeMap<String, String> = BTreeMap::new();
    let undeclared = |name: &str, from: &str| TemplateError::Invalid {
        path: loaded.path.clone(),
        key: format!("variables.{name}"),
        message: format!("variable `{name}` set by {from} is not declared in the template"),
    };
    for f in &sources.files {
        match read_var_file(f) {
            Ok(m) => {
                for (k, v) in m {
                    if !decls.contains_key(&k) {
                        errors.push(undeclared(&k, &format!("--var-file {}", f.display())));
                        continue;
                    }
                    given.insert(k, v);
                }
            }
            Err(e) => errors.push(e),
        }
    }
    for (k, v) in &sources.env {
        if let Some(name) = k.strip_prefix("OPSBAKE_VAR_") {
            // Accept the exact name or its lowercase form.
            let name = if decls.contains_key(name) {
                name.to_string()
            } else if decls.contains_key(&name.to_lowercase()) {
                name.to_lowercase()
            } else {
                continue;
            };
            given.insert(name, v.clone());
        }
    }
    for (k, v) in &sources.cli {
        if !decls.contains_key(k) {
            errors.push(undeclared(k, "--var"));
            continue;
        }
        given.insert(k.clone(), v.clone());
    }

    // Resolve defaults in dependency order, detecting cycles.
    let mut vars = Vars::default();
    let mut state: BTreeMap<String, u8> = BTreeMap::new(); // 1 visiting, 2 done
    fn visit(
        name: &str,
        loaded: &Loaded,
        given: &BTreeMap<String, String>,
        sources: &VarSources,
        vars: &mut Vars,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Result<(), Option<TemplateError>> {
        match state.get(name) {
            Some(2) => return Ok(()),
            Some(1) => {
                stack.push(name.to_string());
                let start = stack.iter().position(|s| s == name).unwrap_or(0);
                let cycle = stack[start..].join(" -> ");
                return Err(Some(err_at(
                    loaded,
                    &format!("{name}:"),
                    &format!("variables.{name}"),
                    format!("circular reference: {cycle}"),
                )));
            }
            _ => {}
        }
        let decl = loaded
            .template
            .variables
            .get(name)
            .cloned()
            .unwrap_or_default();
        state.insert(name.to_string(), 1);
        stack.push(name.to_string());
        let value = if let Some(v) = given.get(name) {
            v.clone()
        } else if let Some(def) = &decl.default {
            let mut out = String::new();
            let pieces = split(def).map_err(|e| {
                Some(err_at(
                    loaded,
                    def,
                    &format!("variables.{name}.default"),
                    e.to_string(),
                ))
            })?;
            for p in pieces {
                match p {
                    Piece::Text(t) => out.push_str(t),
                    Piece::Ref(r) => {
                        if let Some(dep) = r.strip_prefix("var.") {
                            if !loaded.template.variables.contains_key(dep) {
                                return Err(Some(err_at(
                                    loaded,
                                    &format!("${{var.{dep}}}"),
                                    &format!("variables.{name}.default"),
                                    RefError::Undefined(dep.to_string()).to_string(),
                                )));
                            }
                            visit(dep, loaded, given, sources, vars, state, stack)?;
                            if vars.failed.contains(dep) {
                                // Reported at `dep`: this one fails quietly.
                                return Err(None);
                            }
                            out.push_str(vars.get(dep).unwrap_or_default());
                        } else if let Some(env) = r.strip_prefix("env.") {
                            out.push_str(sources.env.get(env).map(String::as_str).unwrap_or(""));
                        } else {
                            return Err(Some(err_at(
                                loaded,
                                &format!("${{{r}}}"),
                                &format!("variables.{name}.default"),
                                format!("`${{{r}}}` is not available in variable defaults"),
                            )));
                        }
                    }
                }
            }
            out
        } else {
            return Err(Some(err_at(
                loaded,
                "",
                &format!("variables.{name}"),
                format!(
                    "variable `{name}` has no default and is not set (use --var {name}=..., \
                     --var-file, or OPSBAKE_VAR_{name})"
                ),
            )));
        };
        if decl.sensitive {
            redactor().register(&value);
            vars.sensitive.insert(name.to_string());
        }
        vars.values.insert(name.to_string(), value);
        stack.pop();
        state.insert(name.to_string(), 2);
        Ok(())
    }
    let names: Vec<String> = decls.keys().cloned().collect();
    for name in names {
        let mut stack = Vec::new();
        if let Err(e) = visit(
            &name, loaded, &given, sources, &mut vars, &mut state, &mut stack,
        ) {
            errors.extend(e);
            // Every variable on the failed path is settled as failed, so a
            // second cycle or another unset variable is reported too, and
            // references to these are not reported again.
            for n in stack {
                state.insert(n.clone(), 2);
                vars.failed.insert(n);
            }
        }
    }
    (vars, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::parse;

    fn load(src: &str) -> Loaded {
        parse(Path::new("t.yml"), src.to_string()).unwrap()
    }

    #[test]
    fn precedence_default_file_env_cli() {
        let l = load("name: x\nbuilds: {}\nvariables:\n  a: {default: d}\n  b: {default: d}\n  c: {default: d}\n  d: {default: d}\n");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("v.yml");
        std::fs::write(&f, "b: file\nc: file\nd: file\n").unwrap();
        let mut s = VarSources::default();
        s.files.push(f);
        s.env.insert("OPSBAKE_VAR_c".into(), "env".into());
        s.env.insert("OPSBAKE_VAR_d".into(), "env".into());
        s.cli.push(("d".into(), "cli".into()));
        let v = resolve(&l, &s).unwrap();
        assert_eq!(v.get("a"), Some("d"));
        assert_eq!(v.get("b"), Some("file"));
        assert_eq!(v.get("c"), Some("env"));
        assert_eq!(v.get("d"), Some("cli"));
    }

    #[test]
    fn defaults_reference_vars_and_env() {
        let l = load("name: x\nbuilds: {}\nvariables:\n  full: {default: \"${var.base}-${env.OB_TEST_X}\"}\n  base: {default: appliance}\n");
        let mut s = VarSources::default();
        s.env.insert("OB_TEST_X".into(), "7".into());
        let v = resolve(&l, &s).unwrap();
        assert_eq!(v.get("full"), Some("appliance-7"));
    }

    #[test]
    fn circular_references_are_named_with_a_place() {
        let l = load("name: x\nbuilds: {}\nvariables:\n  a: {default: \"${var.b}\"}\n  b: {default: \"${var.c}\"}\n  c: {default: \"${var.a}\"}\n");
        let e = resolve(&l, &VarSources::default()).unwrap_err().to_string();
        assert!(e.contains("circular reference: a -> b -> c -> a"), "{e}");
        assert!(e.starts_with("t.yml:4:3:"), "{e}");
    }

    #[test]
    fn undefined_and_missing_values() {
        let l = load("name: x\nbuilds: {}\nvariables:\n  a: {default: \"${var.nope}\"}\n");
        let e = resolve(&l, &VarSources::default()).unwrap_err().to_string();
        assert!(e.contains("undefined variable `nope`"), "{e}");
        assert!(e.starts_with("t.yml:4:17:"), "{e}");
        let l = load("name: x\nbuilds: {}\nvariables:\n  pw: {sensitive: true}\n");
        let e = resolve(&l, &VarSources::default()).unwrap_err().to_string();
        assert!(e.contains("no default and is not set"), "{e}");
        let mut s = VarSources::default();
        s.cli.push(("other".into(), "1".into()));
        assert!(resolve(&l, &s)
            .unwrap_err()
            .to_string()
            .contains("not declared"));
    }

    #[test]
    fn interpolation_leaves_shell_refs_and_escapes() {
        let l = load("name: x\nbuilds: {}\nvariables:\n  v: {default: \"1.2\"}\n");
        let v = resolve(&l, &VarSources::default()).unwrap();
        let b = Builtins {
            iaas: "aws".into(),
            build_id: "b1".into(),
            template_dir: "/t".into(),
        };
        assert_eq!(
            interpolate(
                "v${var.v} ${HOME} $${var.v} ${build.iaas}/${build.id}",
                &v,
                &b
            )
            .unwrap(),
            "v1.2 ${HOME} ${var.v} aws/b1"
        );
        assert_eq!(
            interpolate("${var.x}", &v, &b),
            Err(RefError::Undefined("x".into()))
        );
        assert_eq!(
            interpolate("${env.HOME}", &v, &b),
            Err(RefError::EnvNotAllowed("HOME".into()))
        );
        assert_eq!(interpolate("${var.v", &v, &b), Err(RefError::Unterminated));
    }

    #[test]
    fn sensitive_values_are_registered_for_redaction() {
        let l = load("name: x\nbuilds: {}\nvariables:\n  pw: {sensitive: true}\n");
        let mut s = VarSources::default();
        s.cli.push(("pw".into(), "s3cr3t-value-xyz".into()));
        let v = resolve(&l, &s).unwrap();
        assert_eq!(v.redacted()["pw"], crate::secret::REDACTED);
        assert!(!redactor().scrub("x s3cr3t-value-xyz").contains("s3cr3t"));
    }
}
