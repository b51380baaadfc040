//! A small YAML writer that keeps comments at their place (serde's YAML
//! writers cannot write comments). Every string is written double-quoted with
//! JSON escapes, which YAML reads back unchanged.

/// A YAML value.
#[derive(Debug, Clone, PartialEq)]
pub enum Y {
    /// A string (always quoted).
    Str(String),
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A number, as written.
    Num(String),
    /// `null`.
    Null,
    /// A sequence.
    Seq(Vec<Item>),
    /// A mapping, in order.
    Map(Vec<Entry>),
}

/// One entry of a mapping: comment lines before it, and the key and value
/// (none for a comment-only entry).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Comment lines written before the entry (without `#`).
    pub comments: Vec<String>,
    /// Key and value; `None` for comments alone.
    pub kv: Option<(String, Y)>,
}

/// One item of a sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Comment lines written before the item.
    pub comments: Vec<String>,
    /// The value; `None` for comments alone.
    pub value: Option<Y>,
}

impl Y {
    /// A string value.
    pub fn s(v: impl Into<String>) -> Y {
        Y::Str(v.into())
    }

    /// An empty mapping.
    pub fn map() -> Y {
        Y::Map(Vec::new())
    }

    /// Set `key` in a mapping (replacing an existing entry's value in place).
    pub fn set(&mut self, key: &str, value: Y) {
        if let Y::Map(entries) = self {
            for e in entries.iter_mut() {
                if let Some((k, v)) = &mut e.kv {
                    if k == key {
                        *v = value;
                        return;
                    }
                }
            }
            entries.push(Entry {
                comments: Vec::new(),
                kv: Some((key.to_string(), value)),
            });
        }
    }

    /// The value of `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Y> {
        match self {
            Y::Map(entries) => entries.iter().find_map(|e| match &e.kv {
                Some((k, v)) if k == key => Some(v),
                _ => None,
            }),
            _ => None,
        }
    }

    /// The mapping under `key`, created if missing (a non-mapping becomes
    /// an empty mapping first).
    pub fn child(&mut self, key: &str) -> &mut Y {
        if !matches!(self, Y::Map(_)) {
            *self = Y::map();
        }
        let Y::Map(entries) = self else {
            unreachable!("made a mapping above")
        };
        let idx = match entries
            .iter()
            .position(|e| matches!(&e.kv, Some((k, _)) if k == key))
        {
            Some(i) => i,
            None => {
                entries.push(Entry {
                    comments: Vec::new(),
                    kv: Some((key.to_string(), Y::map())),
                });
                entries.len() - 1
            }
        };
        match &mut entries[idx].kv {
            Some((_, v)) => v,
            None => unreachable!("position matched an entry with a key"),
        }
    }

    /// Add comment lines at the current end of a mapping or sequence.
    pub fn comment(&mut self, lines: &[String]) {
        match self {
            Y::Map(entries) => entries.push(Entry {
                comments: lines.to_vec(),
                kv: None,
            }),
            Y::Seq(items) => items.push(Item {
                comments: lines.to_vec(),
                value: None,
            }),
            _ => {}
        }
    }

    /// Whether this is an empty mapping or sequence.
    fn is_empty_collection(&self) -> bool {
        match self {
            Y::Map(e) => e.iter().all(|e| e.kv.is_none() && e.comments.is_empty()),
            Y::Seq(i) => i.iter().all(|i| i.value.is_none() && i.comments.is_empty()),
            _ => false,
        }
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

fn key_text(k: &str) -> String {
    let plain = !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !k.starts_with('-')
        && !matches!(
            k,
            "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null" | "Y" | "N"
        );
    if plain {
        k.to_string()
    } else {
        quote(k)
    }
}

fn comment_lines(out: &mut Vec<String>, indent: usize, lines: &[String]) {
    for c in lines {
        for l in c.lines() {
            out.push(
                format!("{}# {l}", " ".repeat(indent))
                    .trim_end()
                    .to_string(),
            );
        }
    }
}

fn scalar(v: &Y) -> Option<String> {
    match v {
        Y::Str(s) => Some(quote(s)),
        Y::Bool(b) => Some(b.to_string()),
        Y::Int(i) => Some(i.to_string()),
        Y::Num(n) => Some(n.clone()),
        Y::Null => Some("null".to_string()),
        Y::Map(_) if v.is_empty_collection() => Some("{}".to_string()),
        Y::Seq(_) if v.is_empty_collection() => Some("[]".to_string()),
        _ => None,
    }
}

fn render(v: &Y, indent: usize, out: &mut Vec<String>) {
    let pad = " ".repeat(indent);
    match v {
        Y::Map(entries) => {
            for e in entries {
                comment_lines(out, indent, &e.comments);
                if let Some((k, v)) = &e.kv {
                    match scalar(v) {
                        Some(s) => out.push(format!("{pad}{}: {s}", key_text(k))),
                        None => {
                            out.push(format!("{pad}{}:", key_text(k)));
                            let inner = match v {
                                Y::Seq(_) => indent,
                                _ => indent + 2,
                            };
                            render(v, inner, out);
                        }
                    }
                }
            }
        }
        Y::Seq(items) => {
            for it in items {
                comment_lines(out, indent, &it.comments);
                let Some(v) = &it.value else { continue };
                match scalar(v) {
                    Some(s) => out.push(format!("{pad}- {s}")),
                    None => {
                        let mut inner = Vec::new();
                        render(v, indent + 2, &mut inner);
                        let first = inner
                            .iter()
                            .position(|l| !l.trim_start().starts_with('#'))
                            .unwrap_or(0);
                        for (i, l) in inner.into_iter().enumerate() {
                            if i < first {
                                out.push(format!("{pad}{}", l.trim_start()));
                            } else if i == first {
                                out.push(format!("{pad}- {}", l.trim_start()));
                            } else {
                                out.push(l);
                            }
                        }
                    }
                }
            }
        }
        other => {
            if let Some(s) = scalar(other) {
                out.push(format!("{pad}{s}"));
            }
        }
    }
}

/// The document text.
pub fn to_string(v: &Y) -> String {
    let mut out = Vec::new();
    render(v, 0, &mut out);
    let mut s = out.join("\n");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn comments_stay_in_place_and_the_text_reads_back() {
        let mut doc = Y::map();
        doc.set("name", Y::s("a \"quoted\"\nname"));
        let b = doc.child("builds").child("aws");
        b.set("cpus", Y::Int(2));
        b.comment(&["packer: source_ami not converted".to_string()]);
        let mut step = Y::map();
        step.comment(&["first comment".to_string()]);
        step.set("type", Y::s("shell"));
        step.set(
            "inline",
            Y::Seq(vec![Item {
                comments: vec![],
                value: Some(Y::s("echo ${HOME}")),
            }]),
        );
        step.set("environment_vars", Y::map());
        doc.set(
            "provision",
            Y::Seq(vec![Item {
                comments: vec!["a step".into()],
                value: Some(step),
            }]),
        );
        let text = to_string(&doc);
        assert!(
            text.contains("# a step\n# first comment\n- type: \"shell\""),
            "{text}"
        );
        assert!(
            text.contains("    # packer: source_ami not converted"),
            "{text}"
        );
        let back: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(back["name"].as_str(), Some("a \"quoted\"\nname"));
        assert_eq!(back["builds"]["aws"]["cpus"].as_i64(), Some(2));
        assert_eq!(
            back["provision"][0]["inline"][0].as_str(),
            Some("echo ${HOME}")
        );
        assert!(back["provision"][0]["environment_vars"].is_mapping());
    }
}
