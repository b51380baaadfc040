//! Where each node of a YAML document is, from the parser's own markers.
//!
//! serde_yaml_ng reports the place of a syntax or type error, but its values
//! carry no positions. Errors found later (a missing script, an undefined
//! variable, a builder's finding) name a key path such as
//! `provision[2].scripts[0]` or `builds.aws.options.region`; this index maps
//! such a path to the line and column where the parser saw that node, so a
//! message never points at the same text inside a comment or another entry.

use std::collections::BTreeMap;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::Marker;

/// Nesting deeper than this stops the index (the template parser refuses
/// such documents anyway; a hostile `[[[[...` must not exhaust the stack).
const MAX_DEPTH: usize = 128;

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    /// Line (1-based).
    pub line: usize,
    /// Column (1-based, in characters).
    pub column: usize,
}

/// The positions of a document's nodes by key path.
#[derive(Debug, Clone, Default)]
pub struct Positions {
    /// Where each node's value starts.
    values: BTreeMap<String, Pos>,
    /// Where each mapping key starts.
    keys: BTreeMap<String, Pos>,
    /// Whether the document has any node at all (not only comments).
    has_content: bool,
    /// Where the nesting went deeper than [`MAX_DEPTH`].
    too_deep: Option<Pos>,
}

fn pos(m: &Marker) -> Pos {
    // yaml-rust2's lines are 1-based and its columns 0-based.
    Pos {
        line: m.line(),
        column: m.col() + 1,
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl Positions {
    /// Index `source`. A document the parser rejects is indexed up to the
    /// error (serde_yaml_ng reports the error itself).
    pub fn from_source(source: &str) -> Positions {
        let mut p = Positions::default();
        let mut parser = Parser::new_from_str(source);
        // Only the first document is a template.
        loop {
            match parser.next_token() {
                Ok((Event::StreamEnd, _)) => break,
                Err(e) => {
                    p.scan_error(&e);
                    break;
                }
                Ok((Event::StreamStart, _))
                | Ok((Event::DocumentStart, _))
                | Ok((Event::Nothing, _)) => {}
                Ok((Event::DocumentEnd, _)) => break,
                Ok((ev, m)) => {
                    p.has_content = !matches!(&ev, Event::Scalar(s, yaml_rust2::scanner::TScalarStyle::Plain, _, _) if s.is_empty() || s == "~");
                    if let Err(Some(e)) = p.node(&mut parser, ev, m, Some(String::new()), 0) {
                        p.scan_error(&e);
                    }
                    break;
                }
            }
        }
        p
    }

    /// The scanner's own nesting limit counts as too deep; other scan
    /// errors are left to serde_yaml_ng, which reports them.
    fn scan_error(&mut self, e: &yaml_rust2::ScanError) {
        if e.info().contains("recursion limit") && self.too_deep.is_none() {
            self.too_deep = Some(pos(e.marker()));
        }
    }

    /// Record one node and its children (`path` None: consume without
    /// recording, under a complex key); `Err` stops at a parse error or at
    /// [`MAX_DEPTH`].
    fn node(
        &mut self,
        parser: &mut Parser<std::str::Chars<'_>>,
        ev: Event,
        m: Marker,
        path: Option<String>,
        depth: usize,
    ) -> Result<(), Option<yaml_rust2::ScanError>> {
        if depth > MAX_DEPTH {
            self.too_deep = Some(pos(&m));
            return Err(None);
        }
        if let Some(p) = path.as_ref().filter(|p| !p.is_empty()) {
            self.values.entry(p.clone()).or_insert(pos(&m));
        }
        match ev {
            Event::SequenceStart(..) => {
                let mut i = 0usize;
                loop {
                    let (ev, m) = parser.next_token().map_err(Some)?;
                    match ev {
                        Event::SequenceEnd => return Ok(()),
                        Event::StreamEnd => return Err(None),
                        ev => {
                            let item = path.as_ref().map(|p| format!("{p}[{i}]"));
                            self.node(parser, ev, m, item, depth + 1)?;
                            i += 1;
                        }
                    }
                }
            }
            Event::MappingStart(..) => loop {
                let (kev, km) = parser.next_token().map_err(Some)?;
                let key = match (kev, &path) {
                    (Event::MappingEnd, _) => return Ok(()),
                    (Event::StreamEnd, _) => return Err(None),
                    (Event::Scalar(k, ..), Some(p)) => {
                        let kp = join(p, &k);
                        self.keys.entry(kp.clone()).or_insert(pos(&km));
                        Some(kp)
                    }
                    (Event::Scalar(..), None) => None,
                    (other, _) => {
                        // A complex key: index nothing under it.
                        self.node(parser, other, km, None, depth + 1)?;
                        None
                    }
                };
                let (vev, vm) = parser.next_token().map_err(Some)?;
                self.node(parser, vev, vm, key, depth + 1)?;
            },
            _ => Ok(()),
        }
    }

    /// Whether the document holds anything besides comments and blank lines.
    pub fn has_content(&self) -> bool {
        self.has_content
    }

    /// Where the nesting first goes deeper than [`MAX_DEPTH`] levels, if it
    /// does (such a document is refused before the YAML library, whose
    /// time grows with the square of the depth, sees it).
    pub fn too_deep(&self) -> Option<Pos> {
        self.too_deep
    }

    /// The nesting limit.
    pub const MAX_DEPTH: usize = MAX_DEPTH;

    /// Where the value at `key` starts.
    pub fn value(&self, key: &str) -> Option<Pos> {
        self.values.get(key).copied()
    }

    /// Where the mapping key `key` (its last component) is written.
    pub fn key(&self, key: &str) -> Option<Pos> {
        self.keys.get(key).copied()
    }

    /// The best place for an error about `key`: its key, else its value
    /// (a sequence item), else the nearest ancestor that is in the document
    /// (a missing `builds.aws.options.region` points at `builds.aws`).
    pub fn locate(&self, key: &str) -> Option<Pos> {
        let mut k = key;
        loop {
            if let Some(p) = self.key(k).or_else(|| self.value(k)) {
                return Some(p);
            }
            let cut = k.rfind(['.', '['])?;
            k = &k[..cut];
            if k.is_empty() {
                return None;
            }
        }
    }

    /// The index of the item of the sequence at `seq` that holds `at`
    /// (the last item starting at or before it).
    pub fn item_at(&self, seq: &str, at: Pos) -> Option<usize> {
        let mut found = None;
        for i in 0.. {
            match self.value(&format!("{seq}[{i}]")) {
                Some(p) if p <= at => found = Some(i),
                Some(_) => break,
                None => break,
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_parser_positions_not_to_text() {
        let src = "# provision:\n#   scripts: [a.sh]\nname: x\nbuilds:\n  aws:\n    options: {region: \"${var.r}\"}\nprovision:\n  - type: shell\n    scripts: [a.sh, b.sh]\n  - {type: file, source: a.sh}\n";
        let p = Positions::from_source(src);
        assert!(p.has_content());
        assert_eq!(p.key("name"), Some(Pos { line: 3, column: 1 }));
        assert_eq!(
            p.key("builds.aws.options.region"),
            Some(Pos {
                line: 6,
                column: 15
            })
        );
        assert_eq!(
            p.value("builds.aws.options.region"),
            Some(Pos {
                line: 6,
                column: 23
            })
        );
        assert_eq!(
            p.value("provision[0].scripts[1]"),
            Some(Pos {
                line: 9,
                column: 21
            })
        );
        assert_eq!(
            p.key("provision[1].source"),
            Some(Pos {
                line: 10,
                column: 18
            })
        );
        // A key that is not written falls back to its nearest ancestor.
        assert_eq!(
            p.locate("builds.aws.ssh.host_key"),
            Some(Pos { line: 5, column: 3 })
        );
        assert_eq!(p.item_at("provision", Pos { line: 9, column: 5 }), Some(0));
        assert_eq!(
            p.item_at(
                "provision",
                Pos {
                    line: 10,
                    column: 20
                }
            ),
            Some(1)
        );
    }

    #[test]
    fn deep_nesting_stops_the_index_without_exhausting_the_stack() {
        let src = format!("name: x\nbuilds: {}\n", "[".repeat(200_000));
        let started = std::time::Instant::now();
        let p = Positions::from_source(&src);
        assert_eq!(p.key("name"), Some(Pos { line: 1, column: 1 }));
        assert_eq!(
            p.too_deep(),
            Some(Pos {
                line: 2,
                column: 264
            })
        );
        let e = crate::template::parse(std::path::Path::new("t.yml"), src)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("t.yml:2:264: (file): nesting deeper than 128"),
            "{e}"
        );
        // Block nesting (`- - - x`) has no flow level: the index's own limit.
        let src = format!("name: x\nbuilds:\n{}x\n", "- ".repeat(5_000));
        let e = crate::template::parse(std::path::Path::new("t.yml"), src)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nesting deeper than 128"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn comments_only_has_no_content() {
        assert!(!Positions::from_source("# nothing\n\n  # here\n").has_content());
        assert!(!Positions::from_source("").has_content());
        assert!(!Positions::from_source("---\n# x\n").has_content());
        assert!(Positions::from_source("name: x\n").has_content());
    }
}
