//! Packer template functions (`{{user `x`}}`, `{{env `X`}}`, ...) to
//! opsbake references (`${var.x}`, ...).

/// Where a string is used: the functions available differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ctx {
    /// A variable's default: `${env.X}` and `${var.x}` only.
    Default,
    /// Anywhere else.
    Value,
    /// A shell `execute_command`: `{{.Path}}` and `{{.Vars}}` stay.
    ExecuteCommand,
}

/// The result of translating one string.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Translated {
    /// The opsbake text.
    pub text: String,
    /// Remarks for the report: (what was done, what to check).
    pub notes: Vec<(String, String)>,
    /// Environment variables read outside a default (each becomes a
    /// variable `env_NAME` whose default is `${env.NAME}`).
    pub env_outside_default: Vec<String>,
    /// Variables referenced.
    pub vars: Vec<String>,
}

/// Escape text that opsbake would read as a reference.
fn escape_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        let after = &rest[i + 2..];
        out.push_str(&rest[..i]);
        if ["var.", "env.", "build.", "template."]
            .iter()
            .any(|p| after.starts_with(p))
        {
            out.push_str("$${");
        } else {
            out.push_str("${");
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// The end (exclusive, after `}}`) of the action starting at `start` (at
/// `{{`), skipping quoted and raw strings.
fn action_end(s: &str, start: usize) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = start + 2;
    let mut quote: Option<u8> = None;
    while i < b.len() {
        let c = b[i];
        match quote {
            Some(q) => {
                if c == b'\\' && q == b'"' {
                    i += 1;
                } else if c == q {
                    quote = None;
                }
            }
            None => {
                if c == b'"' || c == b'`' {
                    quote = Some(c);
                } else if c == b'}' && b.get(i + 1) == Some(&b'}') {
                    return Some(i + 2);
                }
            }
        }
        i += 1;
    }
    None
}

/// Split an action's inside into words, keeping quoted arguments together
/// (quotes removed).
fn words(inner: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut had = false;
    for c in inner.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => cur.push(c),
            None if c == '"' || c == '`' => {
                quote = Some(c);
                had = true;
            }
            None if c.is_whitespace() => {
                if !cur.is_empty() || had {
                    out.push(std::mem::take(&mut cur));
                    had = false;
                }
            }
            None => cur.push(c),
        }
    }
    if !cur.is_empty() || had {
        out.push(cur);
    }
    out
}

/// Translate one Packer string. `template_dir` is the Packer template's
/// directory as seen from the new template: `${template.dir}` joined with
/// it outside defaults, the relative path itself in defaults.
pub fn translate(s: &str, cx: Ctx, template_dir_rel: &str) -> Translated {
    let mut t = Translated::default();
    let mut rest = s;
    let tdir = if template_dir_rel == "." {
        "${template.dir}".to_string()
    } else {
        format!("${{template.dir}}/{template_dir_rel}")
    };
    while let Some(start) = rest.find("{{") {
        t.text.push_str(&escape_text(&rest[..start]));
        let Some(end) = action_end(rest, start) else {
            t.notes.push((
                format!("`{{{{` without a closing `}}}}` in `{s}`: kept as text"),
                "fix the string".to_string(),
            ));
            t.text.push_str(&escape_text(&rest[start..]));
            return t;
        };
        let action = &rest[start..end];
        let inner = action[2..action.len() - 2].trim().trim_matches('-').trim();
        let w = words(inner);
        let name = w.first().map(String::as_str).unwrap_or("");
        let arg = w.get(1).cloned();
        match (name, w.len(), cx) {
            ("user", 2, _) => {
                let v = arg.unwrap_or_default();
                t.text.push_str(&format!("${{var.{v}}}"));
                t.vars.push(v);
            }
            ("env", 2, Ctx::Default) => {
                t.text
                    .push_str(&format!("${{env.{}}}", arg.unwrap_or_default()));
            }
            ("env", 2, _) => {
                let v = arg.unwrap_or_default();
                t.text.push_str(&format!("${{var.env_{v}}}"));
                t.notes.push((
                    format!("`{action}` became `${{var.env_{v}}}` (a variable whose default is `${{env.{v}}}`)"),
                    "opsbake reads the environment only in variable defaults".to_string(),
                ));
                t.env_outside_default.push(v);
            }
            ("template_dir", 1, Ctx::Default) => {
                t.text.push_str(template_dir_rel);
                t.notes.push((
                    format!("`{action}` became `{template_dir_rel}` (a path relative to the new template)"),
                    "`${template.dir}` is not available in variable defaults; relative paths of scripts and sources resolve from the template's directory".to_string(),
                ));
            }
            ("template_dir", 1, _) => t.text.push_str(&tdir),
            ("pwd", 1, Ctx::Default) => {
                t.text.push_str(template_dir_rel);
                t.notes.push((
                    format!("`{action}` became `{template_dir_rel}`, assuming Packer ran in the Packer template's directory"),
                    "opsbake resolves relative paths from the template's directory, not the working directory".to_string(),
                ));
            }
            ("pwd", 1, _) => {
                t.text.push_str(&tdir);
                t.notes.push((
                    format!("`{action}` became `{tdir}`, assuming Packer ran in the Packer template's directory"),
                    "opsbake resolves relative paths from the template's directory, not the working directory".to_string(),
                ));
            }
            ("timestamp", 1, Ctx::Value) | ("uuid", 1, Ctx::Value) => {
                t.text.push_str("${build.id}");
                t.notes.push((
                    format!("`{action}` became `${{build.id}}` (unique per build: `ob-YYYYMMDD-HHMMSS-IAAS-RANDOM`, not a Unix time)"),
                    "names that must match a pattern or a length limit".to_string(),
                ));
            }
            ("build_name", 1, Ctx::Value) | ("build_type", 1, Ctx::Value) => {
                t.text.push_str("${build.iaas}");
                t.notes.push((
                    format!("`{action}` became `${{build.iaas}}` (aws, gcp, azure, vsphere, vbox, ssh; not the Packer builder's name or type)"),
                    "scripts or names that compare it with a Packer builder name".to_string(),
                ));
            }
            (".Path", 1, Ctx::ExecuteCommand) => t.text.push_str("{{.Path}}"),
            (".Vars", 1, Ctx::ExecuteCommand) => t.text.push_str("{{.Vars}}"),
            _ => {
                t.text.push_str(action);
                t.notes.push((
                    format!("`{action}` has no opsbake equivalent here: kept as text"),
                    "replace it with a value or a `${var.NAME}` reference".to_string(),
                ));
            }
        }
        rest = &rest[end..];
    }
    t.text.push_str(&escape_text(rest));
    t
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn functions_become_references() {
        let t = translate(
            "{{user `name`}}-{{ user \"v\" }} {{timestamp}} {{build_name}} ${HOME} ${var.x}",
            Ctx::Value,
            ".",
        );
        assert_eq!(
            t.text,
            "${var.name}-${var.v} ${build.id} ${build.iaas} ${HOME} $${var.x}"
        );
        assert_eq!(t.vars, vec!["name", "v"]);
        assert_eq!(t.notes.len(), 2);
        let t = translate("{{env `HOME`}}/x", Ctx::Default, ".");
        assert_eq!(t.text, "${env.HOME}/x");
        assert!(t.notes.is_empty());
        let t = translate("{{env `TOKEN`}}", Ctx::Value, ".");
        assert_eq!(t.text, "${var.env_TOKEN}");
        assert_eq!(t.env_outside_default, vec!["TOKEN"]);
        let t = translate("{{template_dir}}/scripts/a.sh", Ctx::Value, "../packer");
        assert_eq!(t.text, "${template.dir}/../packer/scripts/a.sh");
        let t = translate("{{ template_dir }}/a", Ctx::Default, "../p");
        assert_eq!(t.text, "../p/a");
        let t = translate(
            "sudo -S sh -c '{{ .Vars }} {{ .Path }}'",
            Ctx::ExecuteCommand,
            ".",
        );
        assert_eq!(t.text, "sudo -S sh -c '{{.Vars}} {{.Path}}'");
        assert!(t.notes.is_empty());
        let t = translate("img-{{isotime \"2006\"}}", Ctx::Value, ".");
        assert_eq!(t.text, "img-{{isotime \"2006\"}}");
        assert_eq!(t.notes.len(), 1);
        let t = translate("{{timestamp}}", Ctx::Default, ".");
        assert_eq!(t.text, "{{timestamp}}");
        assert_eq!(t.notes.len(), 1);
    }
}
