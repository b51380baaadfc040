//! Every YAML/type-level error of a template in one run.
//!
//! serde stops at the first error. To find the next one, the node the error
//! is about is taken out of the parsed document (an unknown key, a value of
//! the wrong type) and the document is deserialized again, up to
//! [`MAX_ERRORS`] times. The key path of each error comes from
//! `serde_path_to_error`, mapped back to the original document (items taken
//! out of a sequence shift the later ones) and placed with the parser's
//! positions. A "missing field" that only exists because a bad value was
//! taken out is not reported: a placeholder is tried in its place instead.

use std::collections::BTreeMap;
use std::path::Path;

use serde_path_to_error::Segment;
use serde_yaml_ng::{Mapping, Value};

use super::{Template, TemplateError};
use crate::located::Positions;

/// At most this many errors are reported for one template.
pub const MAX_ERRORS: usize = 50;

/// One step of a key path.
#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    Idx(usize),
}

fn render(segs: &[Seg]) -> String {
    let mut s = String::new();
    for seg in segs {
        match seg {
            Seg::Key(k) if s.is_empty() => s.push_str(k),
            Seg::Key(k) => {
                s.push('.');
                s.push_str(k);
            }
            Seg::Idx(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// What was taken out of the document so far.
#[derive(Default)]
struct Removed {
    /// Original key paths taken out.
    paths: Vec<String>,
    /// Original indexes taken out of each sequence (by original path).
    items: BTreeMap<String, Vec<usize>>,
    /// Placeholders tried per original key path.
    placeholders: BTreeMap<String, usize>,
}

impl Removed {
    /// The original path of a path in the current document.
    fn original(&self, segs: &[Seg]) -> Vec<Seg> {
        let mut out: Vec<Seg> = Vec::new();
        for seg in segs {
            match seg {
                Seg::Idx(i) => {
                    let gone = self.items.get(&render(&out));
                    let mut orig = 0;
                    let mut left = *i;
                    loop {
                        if gone.is_some_and(|g| g.contains(&orig)) {
                            orig += 1;
                            continue;
                        }
                        if left == 0 {
                            break;
                        }
                        left -= 1;
                        orig += 1;
                    }
                    out.push(Seg::Idx(orig));
                }
                k => out.push(k.clone()),
            }
        }
        out
    }
}

fn key_matches(k: &Value, name: &str) -> bool {
    match k {
        Value::String(s) => s == name,
        Value::Number(n) => n.to_string() == name,
        Value::Bool(b) => b.to_string() == name,
        _ => false,
    }
}

/// The node at `segs`.
fn node_mut<'a>(mut v: &'a mut Value, segs: &[Seg]) -> Option<&'a mut Value> {
    for seg in segs {
        v = match (seg, v) {
            (Seg::Key(k), Value::Mapping(m)) => m
                .iter_mut()
                .find(|(key, _)| key_matches(key, k))
                .map(|(_, v)| v)?,
            (Seg::Idx(i), Value::Sequence(s)) => s.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(v)
}

/// Take the node at `segs` out; false when there is none.
fn remove(doc: &mut Value, segs: &[Seg]) -> bool {
    let Some((last, parent)) = segs.split_last() else {
        return false;
    };
    match (last, node_mut(doc, parent)) {
        (Seg::Key(k), Some(Value::Mapping(m))) => {
            let key = m.keys().find(|key| key_matches(key, k)).cloned();
            key.and_then(|key| m.shift_remove(&key)).is_some()
        }
        (Seg::Idx(i), Some(Value::Sequence(s))) if *i < s.len() => {
            s.remove(*i);
            true
        }
        _ => false,
    }
}

/// The field a serde message is about (`unknown field `x``).
fn field_of<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    message
        .strip_prefix(prefix)
        .and_then(|r| r.split('`').next())
}

/// Placeholders for a required field whose bad value was taken out.
fn placeholder(n: usize) -> Option<Value> {
    match n {
        0 => Some(Value::String(String::new())),
        1 => Some(Value::Mapping(Mapping::new())),
        2 => Some(Value::Sequence(Vec::new())),
        _ => None,
    }
}

/// Every error of the document, each at the parser's place of its original
/// key path (the first is the one the YAML library found in the text).
pub(super) fn all_errors(path: &Path, positions: &Positions, mut doc: Value) -> Vec<TemplateError> {
    let mut removed = Removed::default();
    let mut out = Vec::new();
    while out.len() < MAX_ERRORS {
        let e = match serde_path_to_error::deserialize::<_, Template>(doc.clone()) {
            Ok(_) => break,
            Err(e) => e,
        };
        let mut segs = Vec::new();
        for s in e.path().iter() {
            match s {
                Segment::Map { key } => segs.push(Seg::Key(key.clone())),
                Segment::Seq { index } => segs.push(Seg::Idx(*index)),
                Segment::Enum { .. } => {}
                Segment::Unknown => break,
            }
        }
        let message = e.inner().to_string();
        let orig = removed.original(&segs);
        let orig_key = render(&orig);
        let child = |f: &str| {
            if orig_key.is_empty() {
                f.to_string()
            } else {
                format!("{orig_key}.{f}")
            }
        };
        if let Some(f) = field_of(&message, "unknown field `") {
            // Report the key, take it out of its map.
            // The path names the key itself (or, in some serde versions,
            // the map holding it).
            let mut target = segs.clone();
            let key = if segs.last() == Some(&Seg::Key(f.to_string())) {
                orig_key.clone()
            } else {
                target.push(Seg::Key(f.to_string()));
                child(f)
            };
            out.push(at(path, positions, &key, &message));
            removed.paths.push(key);
            if !remove(&mut doc, &target) {
                break;
            }
            continue;
        }
        if let Some(f) = field_of(&message, "missing field `") {
            let key = child(f);
            if removed.paths.contains(&key) {
                // Its bad value was taken out: put a placeholder there.
                let n = removed.placeholders.entry(key.clone()).or_insert(0);
                let value = placeholder(*n);
                *n += 1;
                if let (Some(v), Some(Value::Mapping(m))) = (value, node_mut(&mut doc, &segs)) {
                    m.insert(Value::String(f.to_string()), v);
                    continue;
                }
            } else {
                out.push(at(path, positions, &key, &message));
            }
        } else if !removed.placeholders.contains_key(&orig_key) {
            out.push(at(path, positions, &orig_key, &message));
        } else {
            // A placeholder of the wrong kind: try the next one.
            let n = removed.placeholders.entry(orig_key.clone()).or_insert(0);
            let value = placeholder(*n);
            *n += 1;
            if let (Some(v), Some(node)) = (value, node_mut(&mut doc, &segs)) {
                *node = v;
                continue;
            }
        }
        // Take the node out (a missing field: the node that lacks it).
        if segs.is_empty() {
            break;
        }
        if let (Some(Seg::Idx(_)), Some(Seg::Idx(oi))) = (segs.last(), orig.last()) {
            let parent = render(&orig[..orig.len() - 1]);
            removed.items.entry(parent).or_default().push(*oi);
        }
        removed.paths.push(orig_key);
        if !remove(&mut doc, &segs) {
            break;
        }
    }
    out
}

/// An error at the parser's place of `key` (its key, else its value, else
/// the nearest ancestor in the file).
fn at(path: &Path, positions: &Positions, key: &str, message: &str) -> TemplateError {
    let key = if key.is_empty() { "(top)" } else { key };
    let message = &super::load::plain(message);
    match positions.locate(key) {
        Some(p) => TemplateError::At {
            path: path.to_path_buf(),
            line: p.line,
            column: p.column,
            key: key.to_string(),
            message: message.to_string(),
        },
        None => TemplateError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            message: message.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::super::parse_all;
    use std::path::Path;

    fn errors(src: &str) -> Vec<String> {
        parse_all(Path::new("t.yml"), src.to_string())
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn two_errors_in_one_build_are_both_reported() {
        let e = errors("name: x\nbuilds:\n  vbox:\n    cpu: 2\n    memory: [1]\n");
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(
            e[0].starts_with("t.yml:4:5: builds.vbox.cpu: unknown field `cpu`"),
            "{e:#?}"
        );
        assert!(
            e[1].starts_with("t.yml:5:5: builds.vbox.memory: "),
            "{e:#?}"
        );
    }

    #[test]
    fn three_errors_across_builds_and_steps_are_reported_in_line_order() {
        let src = "name: x\nbuilds:\n  aws:\n    options: {regoin: us-east-1}\n  vbox:\n    disk: {a: 1}\nprovision:\n  - type: shell\n    inline: [\"true\"]\n  - type: file\n    destination: /x\n    sorce: a\n  - type: shell\n    scirpts: [a.sh]\n";
        let e = errors(src);
        assert_eq!(e.len(), 4, "{e:#?}");
        assert!(
            e[0].starts_with("t.yml:4:15: builds.aws.options.regoin: unknown field"),
            "{e:#?}"
        );
        assert!(e[1].starts_with("t.yml:6:5: builds.vbox.disk: "), "{e:#?}");
        assert!(
            e[2].contains(":12:5: provision[1].sorce: unknown field"),
            "{e:#?}"
        );
        // the later step keeps its own index although [1] was taken out
        assert!(
            e[3].contains(":14:5: provision[2].scirpts: unknown field"),
            "{e:#?}"
        );
    }

    #[test]
    fn a_wrong_type_of_a_required_field_is_not_also_missing() {
        let e = errors("name: [a]\nbuilds:\n  vbox: {cpus: [2]}\n");
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(e[0].starts_with("t.yml:1:"), "{e:#?}");
        assert!(e[1].starts_with("t.yml:3:10: builds.vbox.cpus: "), "{e:#?}");
        assert!(!e.iter().any(|e| e.contains("missing field")), "{e:#?}");
    }

    #[test]
    fn a_missing_field_is_reported_once_and_the_rest_still_checked() {
        let e = errors("name: x\nbuilds: {}\nprovision:\n  - type: file\n    source: a\n  - type: shell\n    scirpts: [a]\n");
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(e[0].contains("missing field `destination`"), "{e:#?}");
        assert!(e[1].contains(":7:5: provision[1].scirpts"), "{e:#?}");
    }

    #[test]
    fn a_wrong_kind_of_number_names_its_own_key_in_terms_of_the_template() {
        let e = errors("name: x\nbuilds:\n  aws:\n    memory: [2]\n");
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(
            e[0].starts_with("t.yml:4:5: builds.aws.memory: expected a number"),
            "{e:#?}"
        );
        assert!(!e[0].contains("untagged"), "{e:#?}");
    }

    #[test]
    fn errors_are_bounded() {
        let mut src = String::from("name: x\nbuilds:\n  vbox:\n");
        for i in 0..80 {
            src.push_str(&format!("    bad{i}: 1\n"));
        }
        let e = errors(&src);
        assert_eq!(e.len(), super::MAX_ERRORS, "{e:#?}");
        assert!(
            e[0].starts_with("t.yml:4:5: builds.vbox.bad0: "),
            "{}",
            e[0]
        );
        assert!(
            e[49].starts_with("t.yml:53:5: builds.vbox.bad49: "),
            "{}",
            e[49]
        );
    }
}
