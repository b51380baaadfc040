//! Packer HCL2 (`.pkr.hcl`) into the Packer 1.x JSON shape, so that one
//! converter handles both: `source` blocks become builders (named
//! `TYPE.NAME`, as HCL2 `only`/`except` name them), the `build` blocks'
//! provisioners and post-processors follow, `variable` blocks become
//! variables, `locals` become variables `local_NAME`. Expressions become
//! Packer template text (`var.x` is `{{user `x`}}`, `timestamp()` is
//! `{{timestamp}}`, ...); what has no equivalent stays as text and is
//! reported with file:line.

use std::collections::HashMap;

use hcl::expr::{Expression, ObjectKey, TemplateExpr, TraversalOperator};
use hcl::template::{Element, Template};
use hcl::{Block, BlockLabel, Body, Structure};
use serde_json::{Map, Value};

/// What the HCL reading found that has no equivalent: (key path, line,
/// message).
pub type HclNotes = Vec<(String, usize, String)>;

/// The JSON shape, key places (`key path` to line) and notes.
pub struct HclDoc {
    /// Packer 1.x JSON shape.
    pub doc: Value,
    /// Key path to 1-based line.
    pub lines: HashMap<String, usize>,
    /// Things not converted.
    pub notes: HclNotes,
}

/// Nested blocks that are lists in Packer's JSON.
const LIST_BLOCKS: [&str; 6] = [
    "launch_block_device_mappings",
    "ami_block_device_mappings",
    "storage",
    "network_adapters",
    "disk_additional_size",
    "tag",
];

struct Reader<'a> {
    src: &'a str,
    notes: HclNotes,
    lines: HashMap<String, usize>,
}

fn label(l: &BlockLabel) -> String {
    match l {
        BlockLabel::Identifier(i) => i.as_str().to_string(),
        BlockLabel::String(s) => s.clone(),
    }
}

impl Reader<'_> {
    /// 1-based line of the first line at or after `from` containing every
    /// one of `needles`.
    fn find(&self, from: usize, needles: &[&str]) -> usize {
        for (i, l) in self.src.lines().enumerate() {
            if i + 1 >= from && needles.iter().all(|n| l.contains(n)) {
                return i + 1;
            }
        }
        from.max(1)
    }

    fn attr_line(&self, from: usize, key: &str) -> usize {
        for (i, l) in self.src.lines().enumerate() {
            if i + 1 >= from {
                let t = l.trim_start();
                if let Some(r) = t.strip_prefix(key) {
                    let r = r.trim_start();
                    if r.starts_with('=') || r.starts_with('{') {
                        return i + 1;
                    }
                }
            }
        }
        from.max(1)
    }

    fn note(&mut self, key: &str, line: usize, msg: impl Into<String>) {
        self.notes.push((key.to_string(), line, msg.into()));
    }

    /// An expression as Packer template text (inside `{{ }}` functions).
    fn expr_text(&mut self, e: &Expression, key: &str, line: usize) -> String {
        match e {
            Expression::Traversal(t) => {
                let root = match &t.expr {
                    Expression::Variable(v) => v.as_str().to_string(),
                    _ => String::new(),
                };
                let first = t.operators.first().and_then(|o| match o {
                    TraversalOperator::GetAttr(i) => Some(i.as_str().to_string()),
                    _ => None,
                });
                match (root.as_str(), first.as_deref(), t.operators.len()) {
                    ("var", Some(n), 1) => return format!("{{{{user `{n}`}}}}"),
                    ("local", Some(n), 1) => return format!("{{{{user `local_{n}`}}}}"),
                    ("path", Some("root"), 1) => return "{{template_dir}}".to_string(),
                    ("path", Some("cwd"), 1) => return "{{pwd}}".to_string(),
                    ("build", Some("name"), 1) => return "{{build_name}}".to_string(),
                    ("build", Some("type"), 1) | ("source", Some("type"), 1) => {
                        return "{{build_type}}".to_string()
                    }
                    ("source", Some("name"), 1) => return "{{build_name}}".to_string(),
                    _ => {}
                }
            }
            Expression::FuncCall(f) => {
                let name = f.name.to_string();
                match (name.as_str(), f.args.as_slice()) {
                    ("timestamp", []) => return "{{timestamp}}".to_string(),
                    ("uuidv4", []) => return "{{uuid}}".to_string(),
                    ("env", [a]) => {
                        if let Some(s) = self.plain_string(a) {
                            return format!("{{{{env `{s}`}}}}");
                        }
                    }
                    _ => {}
                }
            }
            Expression::String(s) => return s.clone(),
            Expression::Number(n) => return n.to_string(),
            Expression::Bool(b) => return b.to_string(),
            Expression::Parenthesis(p) => return self.expr_text(p, key, line),
            _ => {}
        }
        let text = e.to_string();
        self.note(
            key,
            line,
            format!(
                "the HCL expression `{text}` has no opsbake equivalent: kept as text `${{{text}}}`"
            ),
        );
        format!("${{{text}}}")
    }

    fn plain_string(&self, e: &Expression) -> Option<String> {
        match e {
            Expression::String(s) => Some(s.clone()),
            Expression::TemplateExpr(t) => {
                let tpl = Template::from_expr(t).ok()?;
                match tpl.elements() {
                    [Element::Literal(s)] => Some(s.clone()),
                    [] => Some(String::new()),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    fn template(&mut self, t: &TemplateExpr, key: &str, line: usize) -> String {
        let tpl = match Template::from_expr(t) {
            Ok(t) => t,
            Err(e) => {
                self.note(
                    key,
                    line,
                    format!("the string template cannot be read ({e}): kept as text"),
                );
                return t.to_string();
            }
        };
        let mut out = String::new();
        for el in tpl.elements() {
            match el {
                Element::Literal(s) => out.push_str(s),
                Element::Interpolation(i) => {
                    let s = self.expr_text(&i.expr, key, line);
                    out.push_str(&s);
                }
                Element::Directive(d) => {
                    let text = format!("{d:?}");
                    self.note(key, line, "a template directive (%{ if } / %{ for }) has no opsbake equivalent: left out");
                    let _ = text;
                }
            }
        }
        out
    }

    fn value(&mut self, e: &Expression, key: &str, line: usize) -> Value {
        match e {
            Expression::Null => Value::Null,
            Expression::Bool(b) => Value::Bool(*b),
            Expression::Number(n) => serde_json::to_value(n).unwrap_or(Value::Null),
            Expression::String(s) => Value::String(s.clone()),
            Expression::Array(a) => Value::Array(
                a.iter()
                    .enumerate()
                    .map(|(i, x)| self.value(x, &format!("{key}[{i}]"), line))
                    .collect(),
            ),
            Expression::Object(o) => {
                let mut m = Map::new();
                for (k, v) in o {
                    let ks = match k {
                        ObjectKey::Identifier(i) => i.as_str().to_string(),
                        ObjectKey::Expression(e) => {
                            self.plain_string(e).unwrap_or_else(|| e.to_string())
                        }
                        other => other.to_string(),
                    };
                    let val = self.value(v, &format!("{key}.{ks}"), line);
                    m.insert(ks, val);
                }
                Value::Object(m)
            }
            Expression::TemplateExpr(t) => Value::String(self.template(t, key, line)),
            Expression::Parenthesis(p) => self.value(p, key, line),
            other => Value::String(self.expr_text(other, key, line)),
        }
    }

    /// A block's body as a JSON object (nested blocks become objects, or
    /// lists for the keys Packer's JSON has as lists or that repeat).
    fn body(&mut self, body: &Body, key: &str, from: usize) -> Map<String, Value> {
        let mut m = Map::new();
        for s in body.iter() {
            match s {
                Structure::Attribute(a) => {
                    let k = a.key.as_str();
                    let kp = format!("{key}.{k}");
                    let line = self.attr_line(from, k);
                    self.lines.insert(kp.clone(), line);
                    let v = self.value(&a.expr, &kp, line);
                    m.insert(k.to_string(), v);
                }
                Structure::Block(b) => {
                    let k = b.identifier.as_str();
                    let kp = format!("{key}.{k}");
                    let line = self.attr_line(from, k);
                    self.lines.entry(kp.clone()).or_insert(line);
                    let inner = Value::Object(self.body(&b.body, &kp, line));
                    let list = LIST_BLOCKS.contains(&k) || m.contains_key(k);
                    if list {
                        let e = m.entry(k.to_string()).or_insert(Value::Array(Vec::new()));
                        match e {
                            Value::Array(a) => a.push(inner),
                            other => {
                                let first = other.take();
                                *other = Value::Array(vec![first, inner]);
                            }
                        }
                    } else {
                        m.insert(k.to_string(), inner);
                    }
                }
            }
        }
        m
    }

    fn provisioner(&mut self, b: &Block, key: &str, line: usize, ty: &str) -> Value {
        self.lines.insert(key.to_string(), line);
        let mut m = self.body(&b.body, key, line);
        m.insert("type".to_string(), Value::String(ty.to_string()));
        Value::Object(m)
    }
}

/// Read an HCL2 template. `Err` is a parse error (with line:column where
/// the parser gives it).
pub fn read(src: &str) -> Result<Option<HclDoc>, String> {
    let body = hcl::parse(src).map_err(|e| e.to_string())?;
    let mut r = Reader {
        src,
        notes: Vec::new(),
        lines: HashMap::new(),
    };
    let mut variables = Map::new();
    let mut sources: Vec<(String, Map<String, Value>, usize)> = Vec::new();
    let mut builds: Vec<(&Block, usize)> = Vec::new();
    let mut top_attrs = false;
    let mut ln = 1;
    for s in body.iter() {
        match s {
            Structure::Attribute(a) => {
                top_attrs = true;
                let line = r.attr_line(1, a.key.as_str());
                r.note(a.key.as_str(), line, "a top-level attribute: not converted");
            }
            Structure::Block(b) => {
                let id = b.identifier.as_str();
                let labels: Vec<String> = b.labels.iter().map(label).collect();
                let mut needles: Vec<&str> = vec![id];
                for l in &labels {
                    needles.push(l);
                }
                let line = r.find(ln, &needles);
                ln = line + 1;
                match (id, labels.as_slice()) {
                    ("variable", [name]) => {
                        let kp = format!("variables.{name}");
                        r.lines.insert(kp.clone(), line);
                        let mut m = r.body(&b.body, &kp, line);
                        let mut d = Map::new();
                        d.insert("__hcl_variable".into(), Value::Bool(true));
                        for k in ["default", "description", "sensitive"] {
                            if let Some(v) = m.remove(k) {
                                d.insert(k.into(), v);
                            }
                        }
                        // A type (`string`, `list(string)`) is not a value.
                        let tkey = format!("{kp}.type");
                        r.notes.retain(|n| n.0 != tkey);
                        if m.remove("type").is_some() {
                            let l = r.attr_line(line, "type");
                            r.note(&format!("{kp}.type"), l, "the variable's `type`: not converted (opsbake variables are strings)");
                        }
                        for (k, _) in m {
                            let l = r.attr_line(line, &k);
                            r.note(&format!("{kp}.{k}"), l, format!("`{k}` of a variable: not converted (opsbake variables are strings without validation)"));
                        }
                        variables.insert(name.clone(), Value::Object(d));
                    }
                    ("variables", []) | ("locals", []) | ("local", [_]) => {
                        let local = id != "variables";
                        let m = r.body(&b.body, if local { "locals" } else { "variables" }, line);
                        for (k, v) in m {
                            let name = if local {
                                format!("local_{k}")
                            } else {
                                k.clone()
                            };
                            if local {
                                let l = r.attr_line(line, &k);
                                r.lines.insert(format!("variables.{name}"), l);
                                r.note(&format!("locals.{k}"), l, format!("local `{k}` became the variable `{name}` (its expression is its default)"));
                            }
                            variables.insert(name, v);
                        }
                    }
                    ("source", [ty, name]) => {
                        let kp = format!("source.{ty}.{name}");
                        let m = r.body(&b.body, &kp, line);
                        sources.push((format!("{ty}.{name}"), m, line));
                    }
                    ("build", _) => builds.push((b, line)),
                    ("packer", []) => r.note(
                        "packer",
                        line,
                        "the `packer` block (required_version, required_plugins): not converted",
                    ),
                    (other, _) => r.note(
                        other,
                        line,
                        format!("a `{other}` block has no opsbake equivalent: not converted"),
                    ),
                }
            }
        }
    }
    if sources.is_empty() && builds.is_empty() {
        if variables.is_empty() && !top_attrs {
            return Ok(None);
        }
        if !variables.is_empty() {
            // A variables-only file (variables.pkr.hcl) still counts.
            return Ok(None);
        }
    }
    let mut doc = Map::new();
    let mut builders: Vec<Value> = Vec::new();
    let mut provisioners: Vec<Value> = Vec::new();
    let mut post: Vec<Value> = Vec::new();
    let mut used: Vec<String> = Vec::new();
    let several = builds.len() > 1;
    for (bi, (b, bline)) in builds.iter().enumerate() {
        let mut names: Vec<String> = Vec::new();
        for s in b.body.iter() {
            match s {
                Structure::Attribute(a) if a.key.as_str() == "sources" => {
                    if let Expression::Array(list) = &a.expr {
                        for x in list {
                            let t = match x {
                                Expression::Traversal(_) => x.to_string(),
                                other => r.plain_string(other).unwrap_or_else(|| other.to_string()),
                            };
                            names.push(t.trim_start_matches("source.").to_string());
                        }
                    }
                }
                Structure::Attribute(a) if a.key.as_str() == "name" => {
                    let l = r.attr_line(*bline, "name");
                    r.note(
                        "build.name",
                        l,
                        "the build's name: not used (opsbake names builds by IaaS)",
                    );
                }
                Structure::Attribute(a) => {
                    let l = r.attr_line(*bline, a.key.as_str());
                    r.note(&format!("build.{}", a.key.as_str()), l, "not converted");
                }
                Structure::Block(blk) => {
                    let id = blk.identifier.as_str();
                    let labels: Vec<String> = blk.labels.iter().map(label).collect();
                    let mut needles = vec![id];
                    for l in &labels {
                        needles.push(l);
                    }
                    let line = r.find(*bline, &needles);
                    match (id, labels.as_slice()) {
                        ("provisioner", [ty]) => {
                            let key = format!("provisioners[{}]", provisioners.len());
                            let mut v = r.provisioner(blk, &key, line, ty);
                            if several {
                                if let Value::Object(m) = &mut v {
                                    m.entry("only").or_insert_with(|| {
                                        Value::Array(
                                            names.iter().cloned().map(Value::String).collect(),
                                        )
                                    });
                                }
                            }
                            provisioners.push(v);
                        }
                        ("post-processor", [ty]) => {
                            let key = format!("post-processors[{}]", post.len());
                            post.push(r.provisioner(blk, &key, line, ty));
                        }
                        ("post-processors", []) => {
                            let key = format!("post-processors[{}]", post.len());
                            let mut chain = Vec::new();
                            for (ci, inner) in blk.body.blocks().enumerate() {
                                let ty = inner.labels.first().map(label).unwrap_or_default();
                                let l = r.find(line, &["post-processor", &ty]);
                                chain.push(r.provisioner(inner, &format!("{key}[{ci}]"), l, &ty));
                            }
                            post.push(Value::Array(chain));
                        }
                        ("source", [n]) => {
                            r.note(&format!("build.source.{n}"), line, "per-build source settings: not converted (opsbake uses the source block's settings)");
                            names.push(n.trim_start_matches("source.").to_string());
                        }
                        (other, _) => r.note(
                            &format!("build.{other}"),
                            line,
                            format!("a `{other}` block in a build: not converted"),
                        ),
                    }
                }
            }
        }
        let _ = bi;
        for n in names {
            if !used.contains(&n) {
                used.push(n);
            }
        }
    }
    for (name, mut m, line) in sources {
        if !used.contains(&name) {
            r.note(
                &format!("source.{name}"),
                line,
                "a source no build uses: not converted",
            );
            continue;
        }
        let key = format!("builders[{}]", builders.len());
        r.lines.insert(key.clone(), line);
        // Re-key the lines recorded under source.TYPE.NAME.
        let old = format!("source.{name}");
        let moved: Vec<(String, usize)> = r
            .lines
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{old}.")))
            .map(|(k, l)| (format!("{key}{}", &k[old.len()..]), *l))
            .collect();
        r.lines.extend(moved);
        for n in r.notes.iter_mut() {
            if n.0.starts_with(&format!("{old}.")) {
                n.0 = format!("{key}{}", &n.0[old.len()..]);
            }
        }
        let ty = name.split('.').next().unwrap_or_default().to_string();
        m.insert("type".into(), Value::String(ty));
        m.insert("name".into(), Value::String(name));
        builders.push(Value::Object(m));
    }
    doc.insert("variables".into(), Value::Object(variables));
    doc.insert("builders".into(), Value::Array(builders));
    if !provisioners.is_empty() {
        doc.insert("provisioners".into(), Value::Array(provisioners));
    }
    if !post.is_empty() {
        doc.insert("post-processors".into(), Value::Array(post));
    }
    Ok(Some(HclDoc {
        doc: Value::Object(doc),
        lines: r.lines,
        notes: r.notes,
    }))
}
