//! Reading a template: file limits, UTF-8, YAML, and errors placed at
//! file:line:col with their key path.

use std::path::{Path, PathBuf};

use super::Template;
use crate::located::Positions;

/// A template error, with the place it points at.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A parse or validation error at a place in the file.
    #[error("{path}:{line}:{column}: {key}: {message}")]
    At {
        /// The file.
        path: PathBuf,
        /// Line (1-based).
        line: usize,
        /// Column (1-based).
        column: usize,
        /// Key path (`builds.aws.options.region`, `provision[2]`).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// An error without a known place.
    #[error("{path}: {key}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Key path.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Templates larger than this are refused before parsing.
pub const MAX_TEMPLATE_BYTES: u64 = 4 * 1024 * 1024;

/// A template with the source it was read from (for error locations).
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The parsed template.
    pub template: Template,
    /// Its path.
    pub path: PathBuf,
    /// Its text.
    pub source: String,
    /// Where each node is (from the YAML parser), for error locations.
    pub positions: Positions,
}

impl Loaded {
    /// The template's directory (relative paths in it resolve from here).
    pub fn dir(&self) -> PathBuf {
        let dir = self
            .path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        std::fs::canonicalize(&dir).unwrap_or(dir)
    }

    /// An error about the node at key path `key` (`provision[0].scripts[1]`,
    /// `builds.aws.options.region`), placed where the YAML parser saw that
    /// node (or its nearest written ancestor). `needle` only refines the
    /// column inside that node's own line (the `${var.x}` inside a string);
    /// it is never searched for elsewhere in the file.
    pub fn error_at(&self, needle: &str, key: &str, message: impl Into<String>) -> TemplateError {
        match self.place(key, needle) {
            Some((line, column)) => TemplateError::At {
                path: self.path.clone(),
                line,
                column,
                key: key.to_string(),
                message: message.into(),
            },
            None => TemplateError::Invalid {
                path: self.path.clone(),
                key: key.to_string(),
                message: message.into(),
            },
        }
    }

    /// Line and column of the node at `key`, refined to `needle` when it
    /// occurs in the node's value on the value's first line.
    pub fn place(&self, key: &str, needle: &str) -> Option<(usize, usize)> {
        if let Some(v) = self.positions.value(key) {
            if !needle.is_empty() {
                if let Some(line) = self.source.lines().nth(v.line.saturating_sub(1)) {
                    let start: usize = line.chars().take(v.column - 1).map(char::len_utf8).sum();
                    if let Some(off) = line.get(start..).and_then(|rest| rest.find(needle)) {
                        let col = line[..start + off].chars().count() + 1;
                        return Some((v.line, col));
                    }
                }
            }
        }
        self.positions.locate(key).map(|p| (p.line, p.column))
    }
}

/// Read and parse a template file (the first error; see [`load_all`]).
pub fn load(path: &Path) -> Result<Loaded, TemplateError> {
    load_all(path).map_err(first)
}

/// The first of a non-empty list of errors.
fn first(mut errors: Vec<TemplateError>) -> TemplateError {
    if errors.is_empty() {
        TemplateError::Invalid {
            path: PathBuf::new(),
            key: "(file)".to_string(),
            message: "invalid template".to_string(),
        }
    } else {
        errors.swap_remove(0)
    }
}

/// Read and parse a template file, with every error the YAML and type
/// level finds (an unknown key or a wrong type in one build does not hide
/// one in another build), each at file:line:col with its key path.
pub fn load_all(path: &Path) -> Result<Loaded, Vec<TemplateError>> {
    load_source(path)
        .map_err(|e| vec![e])
        .and_then(|s| parse_all(path, s))
}

fn load_source(path: &Path) -> Result<String, TemplateError> {
    let io = |source| TemplateError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.len() > MAX_TEMPLATE_BYTES {
        return Err(TemplateError::Invalid {
            path: path.to_path_buf(),
            key: "(file)".to_string(),
            message: format!(
                "template is {} bytes, more than the limit of {MAX_TEMPLATE_BYTES}",
                meta.len()
            ),
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    let source = match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => {
            let bytes = e.as_bytes();
            let off = e.utf8_error().valid_up_to();
            let before = &bytes[..off];
            let line = before.iter().filter(|b| **b == b'\n').count() + 1;
            let line_start = before
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |i| i + 1);
            let column = String::from_utf8_lossy(&before[line_start..])
                .chars()
                .count()
                + 1;
            return Err(TemplateError::At {
                path: path.to_path_buf(),
                line,
                column,
                key: "(file)".to_string(),
                message: format!(
                    "invalid UTF-8 at byte offset {off} (0x{:02x}): a template is UTF-8 text",
                    bytes.get(off).copied().unwrap_or(0)
                ),
            });
        }
    };
    Ok(source)
}

/// Parse template text (`path` is used for errors and relative paths); the
/// first error (see [`parse_all`]).
pub fn parse(path: &Path, source: String) -> Result<Loaded, TemplateError> {
    parse_all(path, source).map_err(first)
}

/// Parse template text with every error of the YAML and type level, in the
/// order of the file's lines.
pub fn parse_all(path: &Path, source: String) -> Result<Loaded, Vec<TemplateError>> {
    let positions = Positions::from_source(&source);
    if let Some(p) = positions.too_deep() {
        return Err(vec![TemplateError::At {
            path: path.to_path_buf(),
            line: p.line,
            column: p.column,
            key: "(file)".to_string(),
            message: format!(
                "nesting deeper than {} levels: not a template",
                Positions::MAX_DEPTH
            ),
        }]);
    }
    if !positions.has_content() && serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&source).is_ok()
    {
        return Err(vec![TemplateError::Invalid {
            path: path.to_path_buf(),
            key: "(file)".to_string(),
            message: "empty template: the file holds only comments or blank lines \
                      (a template needs at least `name` and `builds`)"
                .to_string(),
        }]);
    }
    match serde_yaml_ng::from_str::<Template>(&source) {
        Ok(template) => Ok(Loaded {
            template,
            path: path.to_path_buf(),
            source,
            positions,
        }),
        Err(e) => {
            // The first error from the text (its place is the parser's);
            // the rest from the document with each bad node taken out.
            let mut errors = vec![yaml_error(path, &positions, &e)];
            if let Ok(doc) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&source) {
                let mut rest = super::recover::all_errors(path, &positions, doc).into_iter();
                // The same first error: its key path from the document is
                // the more precise where the text's stops at an enclosing
                // node (a value of the wrong kind for `Tv`).
                if let (Some(TemplateError::At { key: k0, .. }), Some(v0)) =
                    (errors.first(), rest.next())
                {
                    if let TemplateError::At { key, .. } = &v0 {
                        if key.len() > k0.len() && key.starts_with(k0.as_str()) {
                            errors[0] = v0;
                        }
                    }
                }
                errors.extend(rest);
            }
            let mut seen = std::collections::HashSet::new();
            errors.retain(|e| seen.insert(e.to_string()));
            crate::plan::sort_errors(&mut errors);
            Err(errors)
        }
    }
}

/// serde's words for a value of the wrong kind where a literal or a
/// `${...}` string is allowed, in the template's terms.
pub(super) fn plain(message: &str) -> String {
    if message.starts_with("data did not match any variant of untagged enum Tv") {
        "expected a number, duration or boolean, or a string with `${...}` references".to_string()
    } else {
        message.to_string()
    }
}

/// Turn a YAML error into a [`TemplateError`] with file, line, column and
/// key path. For errors inside one provisioner (an internally tagged entry,
/// which the YAML library reports at the entry's start), the entry's index
/// and the offending key's place come from the parser's positions.
pub(super) fn yaml_error(
    path: &Path,
    positions: &Positions,
    e: &serde_yaml_ng::Error,
) -> TemplateError {
    let full = e.to_string();
    // serde_yaml_ng formats "<path>: <message> at line L column C".
    let without_loc = match full.rfind(" at line ") {
        Some(i) => full[..i].to_string(),
        None => full.clone(),
    };
    let (key, message) = match without_loc.split_once(": ") {
        Some((k, m)) if !k.contains(' ') || k.starts_with('.') => (k.to_string(), m.to_string()),
        _ => ("(top)".to_string(), without_loc.clone()),
    };
    let (mut line, mut column) = match e.location() {
        Some(l) => (l.line(), l.column()),
        None => (0, 0),
    };
    let at = crate::located::Pos { line, column };
    let field = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("missing field `"))
        .and_then(|r| r.split('`').next());
    let mut key = match (key.as_str(), field) {
        // serde reports an unknown key of an internally tagged entry at
        // the start of an earlier entry: the first entry from there on that
        // has the key (by the parser's index) is the one.
        ("provision", Some(f)) if message.starts_with("unknown") => {
            let from = positions.item_at("provision", at).unwrap_or(0);
            (from..)
                .take_while(|i| positions.value(&format!("provision[{i}]")).is_some())
                .find(|i| positions.key(&format!("provision[{i}].{f}")).is_some())
                .map_or_else(
                    || provision_key(&key, positions, at),
                    |i| format!("provision[{i}]"),
                )
        }
        _ => provision_key(&key, positions, at),
    };
    if let Some(field) = field {
        key = if key == "(top)" {
            field.to_string()
        } else {
            format!("{key}.{field}")
        };
        if let Some(p) = positions.key(&key) {
            line = p.line;
            column = p.column;
        }
    }
    let message = plain(&message);
    if line == 0 {
        return TemplateError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        };
    }
    TemplateError::At {
        path: path.to_path_buf(),
        line,
        column,
        key,
        message,
    }
}

/// Entries of `provision` are internally tagged: the YAML library reports
/// errors inside one at the entry's start, without its index. Add it.
fn provision_key(key: &str, positions: &Positions, at: crate::located::Pos) -> String {
    if key == "provision" && at.line > 0 {
        if let Some(idx) = positions.item_at("provision", at) {
            return format!("provision[{idx}]");
        }
    }
    key.to_string()
}
