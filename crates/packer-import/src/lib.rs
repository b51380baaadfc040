//! `opsbake import-packer`: turn a Packer template (1.x JSON or HCL2) into
//! an opsbake template.
//!
//! Nothing is dropped silently: every Packer key is either mapped into the
//! new template or left there as a YAML comment at its place and listed in
//! the report ([`Conversion::notes`]). See docs/migrating-from-packer.md.

mod convert;
mod expr;
mod hcl;
mod jsonpos;
mod yaml;

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

pub use convert::{iaas_of, Conversion, Note};

/// Why a file could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid JSON or HCL.
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// The HCL parser's error, which names line and column in its text.
    #[error("{path}: {message}")]
    Hcl {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// Valid JSON or HCL, but not a Packer template.
    #[error("{path}: not a Packer template: {reason}")]
    NotPacker {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A Packer template opsbake cannot convert.
    #[error("{path}:{place}{key}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// `line:column: ` where known, else empty.
        place: String,
        /// The key path (`builders[0]`).
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Packer templates larger than this are refused.
pub const MAX_BYTES: u64 = 4 * 1024 * 1024;

/// `to` relative to `from` (both absolute, normalised).
fn relative(from: &Path, to: &Path) -> String {
    let f: Vec<Component> = from.components().collect();
    let t: Vec<Component> = to.components().collect();
    let common = f.iter().zip(t.iter()).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = Vec::new();
    for _ in common..f.len() {
        parts.push("..".into());
    }
    for c in &t[common..] {
        parts.push(c.as_os_str().to_string_lossy().into_owned());
    }
    if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    }
}

fn absolute(p: &Path) -> PathBuf {
    if let Ok(c) = std::fs::canonicalize(p) {
        return c;
    }
    let base = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    base.join(p)
}

fn is_hcl_name(p: &Path) -> bool {
    let n = p.to_string_lossy();
    n.ends_with(".hcl")
}

/// Convert the Packer template at `path`; `out_dir` is the directory the
/// new template will be written to (its relative paths are made relative
/// to it). A directory `path` reads every `*.pkr.hcl` in it.
pub fn convert_file(path: &Path, out_dir: &Path) -> Result<Conversion, ImportError> {
    let io = |source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let (text, packer_dir) = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with(".pkr.hcl"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(ImportError::NotPacker {
                path: path.to_path_buf(),
                reason: "a directory without *.pkr.hcl files".into(),
            });
        }
        let mut all = String::new();
        for f in files {
            let t = std::fs::read_to_string(&f).map_err(|source| ImportError::Io {
                path: f.clone(),
                source,
            })?;
            all.push_str(&t);
            all.push('\n');
        }
        (all, absolute(path))
    } else {
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.len() > MAX_BYTES {
            return Err(ImportError::Invalid {
                path: path.to_path_buf(),
                place: String::new(),
                key: "(file)".into(),
                message: format!("{} bytes, more than the limit of {MAX_BYTES}", meta.len()),
            });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        let text = String::from_utf8(bytes).map_err(|_| ImportError::NotPacker {
            path: path.to_path_buf(),
            reason: "not UTF-8 text".into(),
        })?;
        let dir = absolute(path)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        (text, dir)
    };
    convert_text(path, &text, &packer_dir, out_dir)
}

/// Convert template text read from `path` (used for messages and the
/// template's name), whose relative paths resolve from `packer_dir`.
pub fn convert_text(
    path: &Path,
    text: &str,
    packer_dir: &Path,
    out_dir: &Path,
) -> Result<Conversion, ImportError> {
    let out_abs = absolute(out_dir);
    let rel = relative(&out_abs, packer_dir);
    let file = path.display().to_string();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let name = name
        .trim_end_matches(".json")
        .trim_end_matches(".hcl")
        .trim_end_matches(".pkr")
        .to_string();
    let looks_json = text.trim_start().starts_with('{') || text.trim_start().starts_with('[');
    if looks_json || path.extension().is_some_and(|e| e == "json") {
        return convert_json(path, text, packer_dir, &rel, &file, &name);
    }
    // Not JSON: HCL2, or not Packer at all.
    match hcl::read(text) {
        Ok(Some(h)) => {
            let places: HashMap<String, String> = h
                .lines
                .iter()
                .map(|(k, l)| (k.clone(), format!("{file}:{l}")))
                .collect();
            let mut cx = convert::Cx::new(file.clone(), packer_dir.to_path_buf(), rel, places);
            for (k, l, m) in &h.notes {
                cx.notes.push(Note {
                    key: k.clone(),
                    place: Some(format!("{file}:{l}")),
                    action: m.clone(),
                    check: "the HCL source".into(),
                });
            }
            convert::convert_value(&mut cx, &h.doc, &name).map_err(|(key, message)| {
                let place = h
                    .lines
                    .get(&key)
                    .map(|l| format!("{l}: "))
                    .unwrap_or_default();
                ImportError::Invalid {
                    path: path.to_path_buf(),
                    place,
                    key,
                    message,
                }
            })
        }
        Ok(None) => Err(ImportError::NotPacker {
            path: path.to_path_buf(),
            reason: "HCL without `source` and `build` blocks".into(),
        }),
        Err(message) if is_hcl_name(path) || path.is_dir() => Err(hcl_error(path, &message)),
        Err(_) => Err(ImportError::NotPacker {
            path: path.to_path_buf(),
            reason: "neither JSON nor HCL (a Packer template is a .json file with `builders`, or .pkr.hcl with `source` and `build` blocks)".into(),
        }),
    }
}

/// The HCL parser's message (`--> HCL parse error in line 2, column 14`,
/// the source line, `= expected ...`) as `file:line:column: expected ...`.
fn hcl_error(path: &Path, message: &str) -> ImportError {
    let num_after = |key: &str| -> Option<usize> {
        let i = message.find(key)? + key.len();
        let digits: String = message[i..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    let detail: Vec<&str> = message
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("= "))
        .collect();
    match (num_after("line "), num_after("column ")) {
        (Some(line), Some(column)) => ImportError::Syntax {
            path: path.to_path_buf(),
            line,
            column,
            message: if detail.is_empty() {
                message.trim().to_string()
            } else {
                format!("HCL: {}", detail.join("; "))
            },
        },
        _ => ImportError::Hcl {
            path: path.to_path_buf(),
            message: message.trim().to_string(),
        },
    }
}

fn convert_json(
    path: &Path,
    text: &str,
    packer_dir: &Path,
    rel: &str,
    file: &str,
    name: &str,
) -> Result<Conversion, ImportError> {
    let doc: serde_json::Value = serde_json::from_str(text).map_err(|e| ImportError::Syntax {
        path: path.to_path_buf(),
        line: e.line(),
        column: e.column(),
        message: e
            .to_string()
            .split(" at line ")
            .next()
            .unwrap_or("")
            .to_string(),
    })?;
    let Some(obj) = doc.as_object() else {
        return Err(ImportError::NotPacker {
            path: path.to_path_buf(),
            reason: "the JSON document is not an object".into(),
        });
    };
    if !obj.contains_key("builders") {
        let keys: Vec<&str> = obj.keys().map(String::as_str).take(5).collect();
        return Err(ImportError::NotPacker {
            path: path.to_path_buf(),
            reason: format!(
                "no `builders` (top-level keys: {})",
                if keys.is_empty() {
                    "none".to_string()
                } else {
                    keys.join(", ")
                }
            ),
        });
    }
    let pos = jsonpos::positions(text);
    let places: HashMap<String, String> = pos
        .iter()
        .map(|(k, (l, c))| (k.clone(), format!("{file}:{l}:{c}")))
        .collect();
    let mut cx = convert::Cx::new(
        file.to_string(),
        packer_dir.to_path_buf(),
        rel.to_string(),
        places,
    );
    convert::convert_value(&mut cx, &doc, name).map_err(|(key, message)| {
        let place = pos
            .get(&key)
            .map(|(l, c)| format!("{l}:{c}: "))
            .unwrap_or_default();
        ImportError::Invalid {
            path: path.to_path_buf(),
            place,
            key,
            message,
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(relative(Path::new("/a/b"), Path::new("/a/b")), ".");
        assert_eq!(relative(Path::new("/a/b"), Path::new("/a/c/d")), "../c/d");
        assert_eq!(relative(Path::new("/a"), Path::new("/a/p")), "p");
    }
}
