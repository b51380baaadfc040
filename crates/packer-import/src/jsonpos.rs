//! Line and column of every value of a JSON document, by key path
//! (`builders[0].source_ami`), for errors and report lines. Run only on text
//! serde_json has accepted.

use std::collections::HashMap;

enum Frame {
    Obj { path: String, key: Option<String> },
    Arr { path: String, index: usize },
}

fn child(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// Map of key path to (line, column), 1-based. For a key, the place of
/// its value's key (`"source_ami"`).
pub fn positions(text: &str) -> HashMap<String, (usize, usize)> {
    let mut out = HashMap::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut line = 1usize;
    let mut col = 1usize;
    let mut chars = text.chars().peekable();
    // The path of the value that starts next (set after a key's `:` or an
    // array's `[`/`,`).
    let value_path = |stack: &Vec<Frame>| -> Option<String> {
        match stack.last() {
            None => Some(String::new()),
            Some(Frame::Obj { path, key }) => key.as_ref().map(|k| child(path, k)),
            Some(Frame::Arr { path, index }) => Some(format!("{path}[{index}]")),
        }
    };
    let mut expect_key = false;
    while let Some(c) = chars.next() {
        let (l, cl) = (line, col);
        if c == '\n' {
            line += 1;
            col = 1;
            continue;
        }
        col += 1;
        match c {
            '"' => {
                let mut s = String::new();
                while let Some(d) = chars.next() {
                    col += 1;
                    if d == '\\' {
                        if let Some(e) = chars.next() {
                            col += 1;
                            s.push(e);
                        }
                        continue;
                    }
                    if d == '"' {
                        break;
                    }
                    if d == '\n' {
                        line += 1;
                        col = 1;
                    }
                    s.push(d);
                }
                if expect_key {
                    if let Some(Frame::Obj { path, key }) = stack.last_mut() {
                        out.insert(child(path, &s), (l, cl));
                        *key = Some(s);
                    }
                    expect_key = false;
                } else if let Some(p) = value_path(&stack) {
                    out.entry(p).or_insert((l, cl));
                }
            }
            '{' => {
                let p = value_path(&stack).unwrap_or_default();
                out.entry(p.clone()).or_insert((l, cl));
                stack.push(Frame::Obj { path: p, key: None });
                expect_key = true;
            }
            '[' => {
                let p = value_path(&stack).unwrap_or_default();
                out.entry(p.clone()).or_insert((l, cl));
                stack.push(Frame::Arr { path: p, index: 0 });
                // The first element's place is recorded when it starts.
            }
            '}' | ']' => {
                stack.pop();
                expect_key = false;
            }
            ',' => match stack.last_mut() {
                Some(Frame::Obj { key, .. }) => {
                    *key = None;
                    expect_key = true;
                }
                Some(Frame::Arr { index, .. }) => *index += 1,
                None => {}
            },
            ':' => {}
            c if c.is_whitespace() => {}
            _ => {
                // A number, true, false or null: record its start.
                if let Some(p) = value_path(&stack) {
                    out.entry(p).or_insert((l, cl));
                }
                while let Some(&d) = chars.peek() {
                    if d == ',' || d == '}' || d == ']' || d.is_whitespace() {
                        break;
                    }
                    chars.next();
                    col += 1;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn paths_have_places() {
        let text = "{\n  \"builders\": [\n    {\"type\": \"null\",\n     \"n\": 3},\n    {\"type\": \"qemu\"}\n  ],\n  \"variables\": {\"a\": \"x\\\"y\"}\n}\n";
        let p = positions(text);
        assert_eq!(p["builders"], (2, 3));
        assert_eq!(p["builders[0]"], (3, 5));
        assert_eq!(p["builders[0].type"], (3, 6));
        assert_eq!(p["builders[0].n"], (4, 6));
        assert_eq!(p["builders[1].type"], (5, 6));
        assert_eq!(p["variables.a"], (7, 17));
    }
}
