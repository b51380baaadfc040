//! `shell` and `shell-local`: how a staged script is invoked.

use std::collections::BTreeMap;

use opsbake_core::transport::shell_quote;

use crate::staging::Staging;

/// The default `execute_command` of `shell`: through sudo where the login
/// user needs it, with the variables passed by `env` (sudo resets the
/// environment), through the staging wrapper.
pub const DEFAULT_EXECUTE_COMMAND: &str = "{{sudo}}env {{vars}} {{run}} {{path}}";

/// `{{vars}}`: `OPSBAKE_STAGING='...' K='v' ...`, each value quoted so that
/// quotes and spaces arrive intact, usable both as `env` arguments and as
/// shell assignments before a command.
pub fn render_vars(staging: Option<&Staging>, vars: &BTreeMap<String, String>) -> String {
    let mut parts = Vec::new();
    if let Some(s) = staging {
        parts.push(format!("OPSBAKE_STAGING={}", shell_quote(&s.cdir)));
    }
    for (k, v) in vars {
        if k == "OPSBAKE_STAGING" && staging.is_some() {
            continue;
        }
        parts.push(format!("{k}={}", shell_quote(v)));
    }
    parts.join(" ")
}

/// The values an `execute_command` may reference.
pub struct CommandParts<'a> {
    /// The script, as commands on the target see it.
    pub path: &'a str,
    /// Rendered `{{vars}}`.
    pub vars: &'a str,
    /// The wrapper (empty for shell-local).
    pub run: &'a str,
    /// The staging dir (empty for shell-local).
    pub staging: &'a str,
    /// `sudo -n ` or empty.
    pub sudo: &'a str,
}

/// Fill in an `execute_command`: `{{path}}`, `{{vars}}`, `{{run}}`,
/// `{{staging}}`, `{{sudo}}`, and Packer's `{{.Path}}` and `{{.Vars}}`.
/// Unknown placeholders are an error.
pub fn render_command(template: &str, p: &CommandParts<'_>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(format!("unclosed `{{{{` in execute_command `{template}`"));
        };
        let key = after[..end].trim();
        let value = match key {
            "path" | ".Path" => shell_quote(p.path),
            "vars" | ".Vars" => p.vars.to_string(),
            "run" => {
                if p.run.is_empty() {
                    return Err("`{{run}}` is not available here (no staging)".to_string());
                }
                shell_quote(p.run)
            }
            "staging" => {
                if p.staging.is_empty() {
                    return Err("`{{staging}}` is not available here (no staging)".to_string());
                }
                shell_quote(p.staging)
            }
            "sudo" => p.sudo.to_string(),
            other => {
                return Err(format!(
                    "unknown placeholder `{{{{{other}}}}}` in execute_command (known: path, vars, run, staging, sudo)"
                ))
            }
        };
        out.push_str(&value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_command_renders_with_and_without_sudo() {
        let st = Staging::new("/var/tmp/opsbake", "b1", |p| p.to_string());
        let mut vars = BTreeMap::new();
        vars.insert("GREETING".to_string(), "it's a \"test\"".to_string());
        let v = render_vars(Some(&st), &vars);
        assert_eq!(
            v,
            "OPSBAKE_STAGING=/var/tmp/opsbake/b1 GREETING='it'\\''s a \"test\"'"
        );
        let parts = CommandParts {
            path: "/var/tmp/opsbake/b1/scripts/a b.sh",
            vars: &v,
            run: &st.run_path(),
            staging: &st.cdir,
            sudo: "sudo -n ",
        };
        let c = render_command(DEFAULT_EXECUTE_COMMAND, &parts).unwrap();
        assert_eq!(
            c,
            "sudo -n env OPSBAKE_STAGING=/var/tmp/opsbake/b1 GREETING='it'\\''s a \"test\"' /var/tmp/opsbake/b1/run '/var/tmp/opsbake/b1/scripts/a b.sh'"
        );
        let c = render_command("chmod +x {{.Path}}; {{.Vars}} {{.Path}}", &parts).unwrap();
        assert!(c.starts_with("chmod +x '/var/tmp/opsbake/b1/scripts/a b.sh'; OPSBAKE_STAGING="));
        assert!(render_command("{{nope}}", &parts).is_err());
        assert!(render_command("{{path", &parts).is_err());
    }
}
