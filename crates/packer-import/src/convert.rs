//! Packer 1.x JSON (as a `serde_json::Value`) to an opsbake template.
//! HCL2 templates are first turned into the same JSON shape (see `hcl.rs`).
//!
//! Every key is either mapped (recorded in [`Conversion::mapped`]) or left
//! as a YAML comment at its place plus a [`Note`]: keys are taken out of
//! each Packer object as they are mapped, and whatever is left at the end is
//! reported.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use opsbake_core::template::Iaas;
use serde_json::{Map, Value};

use crate::expr::{translate, Ctx};
use crate::yaml::{Item, Y};

/// One line of the report: something that was not mapped one to one.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    /// The key path in the Packer file (`builders[0].source_ami`).
    pub key: String,
    /// `file:line:column` (or `file:line`) where the parser gives it.
    pub place: Option<String>,
    /// What the importer did.
    pub action: String,
    /// What the user should check.
    pub check: String,
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(p) = &self.place {
            write!(f, "{p}: ")?;
        }
        write!(f, "{}: {}; check: {}", self.key, self.action, self.check)
    }
}

/// A converted template.
#[derive(Debug, Clone)]
pub struct Conversion {
    /// The opsbake template (YAML, with comments).
    pub yaml: String,
    /// Everything that was not mapped one to one.
    pub notes: Vec<Note>,
    /// Packer key paths mapped into the template.
    pub mapped: Vec<String>,
    /// Packer builder name to opsbake IaaS, for the builders converted.
    pub builds: Vec<(String, Iaas)>,
}

/// Conversion state.
pub(crate) struct Cx {
    /// Display name of the Packer file.
    pub file: String,
    /// The Packer template's directory.
    pub packer_dir: PathBuf,
    /// That directory relative to the new template's (`.` if the same).
    pub rel: String,
    /// Key path to `file:line:col`.
    pub places: HashMap<String, String>,
    pub notes: Vec<Note>,
    pub mapped: Vec<String>,
    env_vars: BTreeSet<String>,
    used_vars: BTreeSet<String>,
    /// Variables used whole as a local path (their defaults are rebased).
    path_vars: BTreeSet<String>,
    /// Literal variable defaults (for map keys, which opsbake does not
    /// interpolate).
    var_defaults: HashMap<String, String>,
}

fn lossy(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn is_secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "access_key",
        "private_key",
        "account_file",
        "credential",
    ]
    .iter()
    .any(|s| k.contains(s))
}

fn shown(key: &str, v: &Value) -> String {
    let last = key.rsplit('.').next().unwrap_or(key);
    if is_secret_key(last) {
        return "not shown".to_string();
    }
    let s = v.to_string();
    if s.chars().count() > 100 {
        let cut: String = s.chars().take(100).collect();
        format!("{cut}...")
    } else {
        s
    }
}

impl Cx {
    pub fn new(
        file: String,
        packer_dir: PathBuf,
        rel: String,
        places: HashMap<String, String>,
    ) -> Cx {
        Cx {
            file,
            packer_dir,
            rel,
            places,
            notes: Vec::new(),
            mapped: Vec::new(),
            env_vars: BTreeSet::new(),
            used_vars: BTreeSet::new(),
            path_vars: BTreeSet::new(),
            var_defaults: HashMap::new(),
        }
    }

    fn place(&self, key: &str) -> Option<String> {
        // The place of the key, else of its closest parent.
        let mut k = key;
        loop {
            if let Some(p) = self.places.get(k) {
                return Some(p.clone());
            }
            let cut = k.rfind(['.', '[']);
            match cut {
                Some(i) => k = &k[..i],
                None => return None,
            }
        }
    }

    /// Record a report line; returns the comment text for the YAML.
    pub fn note(
        &mut self,
        key: &str,
        action: impl Into<String>,
        check: impl Into<String>,
    ) -> String {
        let n = Note {
            key: key.to_string(),
            place: self.place(key),
            action: action.into(),
            check: check.into(),
        };
        let c = format!("packer {}: {}. Check: {}", n.key, n.action, n.check);
        self.notes.push(n);
        c
    }

    fn mapped(&mut self, key: &str) {
        self.mapped.push(key.to_string());
    }

    /// Report `key = value` as not converted, with a comment in `y`.
    fn drop_into(&mut self, y: &mut Y, key: &str, v: &Value, action: &str, check: &str) {
        let shown = shown(key, v);
        let action = if shown == "not shown" {
            format!("{action} (value not shown)")
        } else {
            format!("{action} (value {shown})")
        };
        let c = self.note(key, action, check);
        y.comment(&[c]);
    }

    fn tr(&mut self, key: &str, s: &str, cx: Ctx) -> String {
        let t = translate(s, cx, &self.rel);
        for (a, c) in t.notes {
            self.note(key, a, c);
        }
        for e in t.env_outside_default {
            self.env_vars.insert(e);
        }
        for v in t.vars {
            self.used_vars.insert(v);
        }
        t.text
    }

    /// A scalar as a translated string.
    fn val_str(&mut self, key: &str, v: &Value, cx: Ctx) -> Option<String> {
        match v {
            Value::String(s) => Some(self.tr(key, s, cx)),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// A local path, relative to the new template's directory.
    fn path(&mut self, key: &str, v: &Value) -> Option<String> {
        let s = self.val_str(key, v, Ctx::Value)?;
        if let Some(name) = s.strip_prefix("${var.").and_then(|r| r.strip_suffix('}')) {
            if !name.contains('}') {
                self.path_vars.insert(name.to_string());
            }
        }
        Some(self.rebase(&s))
    }

    pub fn rebase(&self, s: &str) -> String {
        if s.is_empty()
            || s.starts_with('/')
            || s.starts_with("${")
            || s.starts_with('~')
            || self.rel == "."
        {
            return s.to_string();
        }
        let mut parts: Vec<&str> = self.rel.split('/').filter(|p| !p.is_empty()).collect();
        for p in s.split('/') {
            match p {
                "." | "" => {}
                ".." if parts.last().is_some_and(|l| *l != "..") => {
                    parts.pop();
                }
                other => parts.push(other),
            }
        }
        let mut out = parts.join("/");
        if out.is_empty() {
            out = ".".to_string();
        }
        if s.ends_with('/') {
            out.push('/');
        }
        out
    }

    /// The local file a Packer path names, when it is a literal.
    fn local(&self, s: &str) -> Option<PathBuf> {
        if s.contains("{{") || s.contains("${") {
            return None;
        }
        let p = Path::new(s);
        Some(if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.packer_dir.join(p)
        })
    }
}

/// A Packer object whose keys are taken out as they are mapped.
struct Obj {
    path: String,
    map: Map<String, Value>,
}

impl Obj {
    fn new(path: String, map: Map<String, Value>) -> Obj {
        Obj { path, map }
    }

    fn key(&self, k: &str) -> String {
        if self.path.is_empty() {
            k.to_string()
        } else {
            format!("{}.{k}", self.path)
        }
    }

    fn take(&mut self, k: &str) -> Option<(String, Value)> {
        let v = self.map.remove(k)?;
        Some((self.key(k), v))
    }

    /// Comments (`_comment`, `_x`): Packer ignores keys starting with `_`.
    fn take_comments(&mut self, cx: &mut Cx, y: &mut Y) {
        let keys: Vec<String> = self
            .map
            .keys()
            .filter(|k| k.starts_with('_'))
            .cloned()
            .collect();
        for k in keys {
            if let Some((p, v)) = self.take(&k) {
                cx.mapped(&p);
                y.comment(&[format!("{k}: {}", lossy(&v))]);
            }
        }
    }

    /// Report every key left.
    fn rest(self, cx: &mut Cx, y: &mut Y, hint: &dyn Fn(&str) -> Option<(&'static str, String)>) {
        let path = self.path.clone();
        for (k, v) in self.map {
            let key = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            let (action, check) = hint(&k).unwrap_or((
                "not converted: opsbake has no equivalent",
                "whether the image needs it; docs/migrating-from-packer.md".to_string(),
            ));
            cx.drop_into(y, &key, &v, action, &check);
        }
    }
}

fn str_into(cx: &mut Cx, o: &mut Obj, k: &str, y: &mut Y, tk: &str) {
    if let Some((p, v)) = o.take(k) {
        match cx.val_str(&p, &v, Ctx::Value) {
            Some(s) => {
                y.set(tk, Y::s(s));
                cx.mapped(&p);
            }
            None => cx.drop_into(y, &p, &v, "not a string: not converted", "the value"),
        }
    }
}

fn path_into(cx: &mut Cx, o: &mut Obj, k: &str, y: &mut Y, tk: &str) {
    if let Some((p, v)) = o.take(k) {
        match cx.path(&p, &v) {
            Some(s) => {
                y.set(tk, Y::s(s));
                cx.mapped(&p);
            }
            None => cx.drop_into(y, &p, &v, "not a string: not converted", "the path"),
        }
    }
}

fn bool_into(cx: &mut Cx, o: &mut Obj, k: &str, y: &mut Y, tk: &str, invert: bool) {
    if let Some((p, v)) = o.take(k) {
        let b = match &v {
            Value::Bool(b) => Some(*b),
            Value::String(s) if s == "true" || s == "false" => Some(s == "true"),
            _ => None,
        };
        match b {
            Some(b) => {
                y.set(tk, Y::Bool(b != invert));
                cx.mapped(&p);
            }
            None => cx.drop_into(
                y,
                &p,
                &v,
                "not a literal true/false (opsbake takes only literal booleans here): not converted",
                "set it in the template",
            ),
        }
    }
}

/// A number, or a string with references (opsbake reads both).
fn num_into(cx: &mut Cx, o: &mut Obj, k: &str, y: &mut Y, tk: &str, factor: i64) {
    if let Some((p, v)) = o.take(k) {
        let n = match &v {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => {
                let s = s.trim();
                if let Ok(n) = s.parse::<i64>() {
                    Some(n)
                } else if let Some(g) = s.strip_suffix('G').or(s.strip_suffix("GB")) {
                    g.parse::<i64>().ok().map(|g| g * 1024 / factor.max(1))
                } else if let Some(m) = s.strip_suffix('M').or(s.strip_suffix("MB")) {
                    m.parse::<i64>().ok().map(|m| m / factor.max(1))
                } else {
                    None
                }
            }
            _ => None,
        };
        match (n, &v) {
            (Some(n), _) => {
                y.set(tk, Y::Int(n * factor));
                cx.mapped(&p);
            }
            (None, Value::String(s)) if factor == 1 => {
                let t = cx.tr(&p, s, Ctx::Value);
                y.set(tk, Y::s(t));
                cx.mapped(&p);
            }
            _ => cx.drop_into(
                y,
                &p,
                &v,
                "not a number opsbake can convert (GiB to MiB needs a literal): not converted",
                &format!("set `{tk}` (MiB) in the template"),
            ),
        }
    }
}

fn str_list(cx: &mut Cx, p: &str, v: &Value) -> Option<Vec<String>> {
    match v {
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, x)| cx.val_str(&format!("{p}[{i}]"), x, Ctx::Value))
            .collect(),
        Value::String(_) | Value::Number(_) => cx.val_str(p, v, Ctx::Value).map(|s| vec![s]),
        _ => None,
    }
}

fn list_into(cx: &mut Cx, o: &mut Obj, k: &str, y: &mut Y, tk: &str) {
    if let Some((p, v)) = o.take(k) {
        match str_list(cx, &p, &v) {
            Some(l) => {
                let mut items: Vec<Y> = match y.get(tk) {
                    Some(Y::Seq(existing)) => {
                        existing.iter().filter_map(|i| i.value.clone()).collect()
                    }
                    _ => Vec::new(),
                };
                items.extend(l.into_iter().map(Y::Str));
                y.set(tk, seq(items));
                cx.mapped(&p);
            }
            None => cx.drop_into(
                y,
                &p,
                &v,
                "not a list of strings: not converted",
                "the value",
            ),
        }
    }
}

fn map_into(cx: &mut Cx, o: &mut Obj, k: &str, y: &mut Y, tk: &str) {
    if let Some((p, v)) = o.take(k) {
        match &v {
            Value::Object(m) => {
                let t = y.child(tk);
                for (mk, mv) in m {
                    let kp = format!("{p}.{mk}");
                    match cx.val_str(&kp, mv, Ctx::Value) {
                        Some(s) => t.set(mk, Y::s(s)),
                        None => {
                            cx.drop_into(t, &kp, mv, "not a string: not converted", "the value")
                        }
                    }
                }
                cx.mapped(&p);
            }
            _ => cx.drop_into(y, &p, &v, "not a map: not converted", "the value"),
        }
    }
}

pub(crate) fn seq(items: Vec<Y>) -> Y {
    Y::Seq(
        items
            .into_iter()
            .map(|v| Item {
                comments: Vec::new(),
                value: Some(v),
            })
            .collect(),
    )
}

fn json_to_y(cx: &mut Cx, p: &str, v: &Value) -> Y {
    match v {
        Value::Null => Y::Null,
        Value::Bool(b) => Y::Bool(*b),
        Value::Number(n) => Y::Num(n.to_string()),
        Value::String(s) => Y::Str(cx.tr(p, s, Ctx::Value)),
        Value::Array(a) => seq(a
            .iter()
            .enumerate()
            .map(|(i, x)| json_to_y(cx, &format!("{p}[{i}]"), x))
            .collect()),
        Value::Object(m) => {
            let mut y = Y::map();
            for (k, x) in m {
                let c = json_to_y(cx, &format!("{p}.{k}"), x);
                y.set(k, c);
            }
            y
        }
    }
}

mod builders;
#[allow(unused_imports)]
pub use builders::*;
mod provisioners;
#[allow(unused_imports)]
pub use provisioners::*;

/// Convert a parsed Packer document (1.x JSON shape).
pub(crate) fn convert_value(
    cx: &mut Cx,
    doc: &Value,
    name: &str,
) -> Result<Conversion, (String, String)> {
    let Some(top) = doc.as_object() else {
        return Err((String::new(), "the document is not an object".into()));
    };
    let mut o = Obj::new(String::new(), top.clone());
    let mut head = Y::map();
    o.take_comments(cx, &mut head);
    let mut vars = Y::map();
    let mut top_comments: Vec<String> = Vec::new();
    let mut builds = Y::map();
    let mut stemcells = Y::map();
    let mut outputs = Y::map();
    let mut description: Option<String> = None;
    if let Some((p, v)) = o.take("description") {
        description = cx.val_str(&p, &v, Ctx::Value);
        cx.mapped(&p);
    }
    if let Some((p, v)) = o.take("min_packer_version") {
        top_comments.push(cx.note(
            &p,
            format!("not converted (value {})", shown(&p, &v)),
            "nothing",
        ));
    }

    // Variables.
    let sensitive: BTreeSet<String> = match o.take("sensitive-variables") {
        Some((p, Value::Array(a))) => {
            cx.mapped(&p);
            a.iter().map(lossy).collect()
        }
        Some((p, v)) => {
            top_comments.push(cx.note(
                &p,
                format!("not a list: not converted (value {})", shown(&p, &v)),
                "mark the variables `sensitive: true`",
            ));
            BTreeSet::new()
        }
        None => BTreeSet::new(),
    };
    let mut declared = BTreeSet::new();
    if let Some((p, v)) = o.take("variables") {
        cx.mapped(&p);
        if let Value::Object(m) = &v {
            for (k, d) in m {
                let kp = format!("{p}.{k}");
                declared.insert(k.clone());
                let mut decl = Y::map();
                let mut comments = Vec::new();
                // HCL variables come as {default, description, sensitive, type}.
                let (def, desc, sens) = match d {
                    Value::Object(dm) if dm.contains_key("__hcl_variable") => (
                        dm.get("default").cloned().unwrap_or(Value::Null),
                        dm.get("description").map(lossy),
                        dm.get("sensitive") == Some(&Value::Bool(true)),
                    ),
                    other => (other.clone(), None, false),
                };
                match &def {
                    Value::Null => {}
                    Value::String(_) | Value::Number(_) | Value::Bool(_) => {
                        let s = cx.val_str(&kp, &def, Ctx::Default).unwrap_or_default();
                        if !s.contains("${") {
                            cx.var_defaults.insert(k.clone(), s.clone());
                        }
                        decl.set("default", Y::s(s));
                    }
                    other => {
                        decl.set("default", Y::s(other.to_string()));
                        comments.push(cx.note(&kp, "a list or map default became its JSON text (opsbake variables are strings)", "where the variable is used"));
                    }
                }
                if let Some(d) = desc {
                    decl.set("description", Y::s(d));
                }
                if sensitive.contains(k) || sens {
                    decl.set("sensitive", Y::Bool(true));
                }
                if !comments.is_empty() {
                    decl.comment(&comments);
                }
                cx.mapped(&kp);
                vars.set(k, decl);
            }
        } else {
            top_comments.push(cx.note(&p, "not an object: not converted", "the variables"));
        }
    }
    for s in &sensitive {
        if !declared.contains(s) {
            top_comments.push(cx.note(
                "sensitive-variables",
                format!("`{s}` is not a declared variable: ignored"),
                "the list",
            ));
        }
    }

    // Builders.
    let mut names: HashMap<String, Iaas> = HashMap::new();
    let mut converted: Vec<(String, Iaas)> = Vec::new();
    let mut seen_types: Vec<String> = Vec::new();
    match o.take("builders") {
        Some((p, Value::Array(list))) => {
            cx.mapped(&p);
            for (i, bv) in list.iter().enumerate() {
                let bp = format!("{p}[{i}]");
                let Some(bm) = bv.as_object() else {
                    top_comments.push(cx.note(&bp, "not an object: not converted", "the builder"));
                    continue;
                };
                let mut bo = Obj::new(bp.clone(), bm.clone());
                let Some((tp, tv)) = bo.take("type") else {
                    return Err((bp, "a builder without `type`".into()));
                };
                let ty = lossy(&tv);
                seen_types.push(ty.clone());
                let bname = match bo.take("name") {
                    Some((np, nv)) => {
                        cx.mapped(&np);
                        lossy(&nv)
                    }
                    None => ty.clone(),
                };
                let Some(iaas) = iaas_of(&ty) else {
                    cx.mapped(&tp);
                    top_comments.push(cx.note(&bp, format!("builder type `{ty}` has no opsbake equivalent: not converted"), "opsbake builds amazon-ebs, googlecompute, azure-arm, vsphere, virtualbox/qemu and null (ssh) images"));
                    for k in bo.map.keys() {
                        cx.mapped.push(format!("{bp}.{k}"));
                    }
                    continue;
                };
                if builds.get(iaas.as_str()).is_some() {
                    cx.mapped(&tp);
                    top_comments.push(cx.note(&bp, format!("a second builder for {iaas} (`{bname}`): not converted (opsbake has one build per IaaS)"), "make a second template for it, or use variables"));
                    for k in bo.map.keys() {
                        cx.mapped.push(format!("{bp}.{k}"));
                    }
                    continue;
                }
                cx.mapped(&tp);
                names.insert(bname.clone(), iaas);
                names.insert(ty.clone(), iaas);
                let mut b = Y::map();
                bo.take_comments(cx, &mut b);
                let from = convert_builder(cx, &ty, &mut bo, &mut b, &mut outputs);
                bo.rest(cx, &mut b, &hint);
                if !matches!(iaas, Iaas::Ssh) {
                    add_stemcell(&mut vars, &mut stemcells, iaas, &from);
                }
                builds.set(iaas.as_str(), b);
                converted.push((bname, iaas));
            }
        }
        Some((p, _)) => return Err((p, "`builders` must be a list".into())),
        None => {}
    }
    if converted.is_empty() {
        return Err((
            "builders".to_string(),
            if seen_types.is_empty() {
                "no builders: a Packer template needs at least one".to_string()
            } else {
                format!(
                "no builder opsbake can build (types: {}); opsbake builds amazon-ebs, googlecompute, azure-arm, vsphere-iso/-clone, virtualbox-ovf/-iso, qemu and null",
                seen_types.join(", ")
            )
            },
        ));
    }

    // Provisioners.
    let mut steps: Vec<Item> = Vec::new();
    if let Some((p, v)) = o.take("provisioners") {
        cx.mapped(&p);
        match &v {
            Value::Array(a) => {
                for (i, pv) in a.iter().enumerate() {
                    let pp = format!("{p}[{i}]");
                    for (variant, comment) in split_overrides(cx, &pp, pv, &names) {
                        let mut item = convert_provisioner(cx, &pp, &variant, &names);
                        if let Some(c) = comment {
                            item.comments.insert(0, c);
                        }
                        steps.push(item);
                    }
                }
            }
            _ => return Err((p, "`provisioners` must be a list".into())),
        }
    }
    let mut pp_comments = Vec::new();
    if let Some((p, v)) = o.take("post-processors") {
        cx.mapped(&p);
        post_processor(cx, &p, &v, &mut outputs, &mut pp_comments);
    }
    let mut rest = Y::map();
    o.rest(cx, &mut rest, &|_| None);
    if let Y::Map(e) = rest {
        top_comments.extend(e.into_iter().flat_map(|e| e.comments));
    }

    // Variables referenced that are not declared, and environment reads.
    let env_vars = std::mem::take(&mut cx.env_vars);
    for e in env_vars {
        let mut d = Y::map();
        d.set("default", Y::s(format!("${{env.{e}}}")));
        d.set("description", Y::s(format!("The environment variable {e} (read by the Packer template outside a variable default)")));
        vars.set(&format!("env_{e}"), d);
    }
    let used: Vec<String> = cx.used_vars.iter().cloned().collect();
    for u in used {
        if vars.get(&u).is_none() {
            let c = cx.note(
                "variables",
                format!("`{u}` is used but not declared: declared without a default"),
                format!("set it with --var {u}=..."),
            );
            let mut d = Y::map();
            d.comment(&[c]);
            vars.set(&u, d);
        }
    }

    let path_vars: Vec<String> = cx.path_vars.iter().cloned().collect();
    for n in path_vars {
        let rebased = match vars.get(&n).and_then(|d| d.get("default")) {
            Some(Y::Str(d)) => {
                let r = cx.rebase(d);
                (r != *d).then_some(r)
            }
            _ => None,
        };
        if let Some(r) = rebased {
            cx.note(
                &format!("variables.{n}"),
                format!("the default is a path: became `{r}` (relative to the new template)"),
                "values given with --var are relative to the template's directory too",
            );
            vars.child(&n).set("default", Y::s(r));
        }
    }

    // The document.
    let mut doc = Y::map();
    let mut header = vec![
        format!("Converted from {} by `opsbake import-packer`.", cx.file),
        "Every Packer setting without an opsbake equivalent is a comment at its place".to_string(),
        "(\"packer <key path>: ...\"), listed in the report the command printed too.".to_string(),
    ];
    if let Y::Map(e) = head {
        header.extend(e.into_iter().flat_map(|e| e.comments));
    }
    header.extend(top_comments);
    doc.comment(&header);
    doc.set("name", Y::s(sanitize_name(name)));
    if let Some(d) = description {
        doc.set("description", Y::s(d));
    }
    if vars != Y::map() {
        doc.set("variables", vars);
    }
    if stemcells != Y::map() {
        doc.set("stemcells", stemcells);
    }
    doc.set("builds", builds);
    if !steps.is_empty() {
        doc.set("provision", Y::Seq(steps));
    }
    if !pp_comments.is_empty() {
        outputs.comment(&pp_comments);
    }
    if outputs != Y::map() {
        doc.set("outputs", outputs);
    }
    Ok(Conversion {
        yaml: crate::yaml::to_string(&doc),
        notes: std::mem::take(&mut cx.notes),
        mapped: std::mem::take(&mut cx.mapped),
        builds: converted,
    })
}
