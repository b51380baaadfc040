//! The plan: a template with every variable resolved, checked, per IaaS.
//! Making a plan does no I/O beyond reading local files the template names
//! (to check they exist); nothing is created.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::secret::with_exposed;
use crate::template::{
    Dur, HostKeySpec, Iaas, Loaded, NetworkSpec, Provisioner, StemcellRef, Template, TemplateError,
    Tv,
};
use crate::vars::{interpolate, Builtins, Vars};
use crate::Secret;

/// SSH settings with every value resolved.
#[derive(Debug, Clone)]
pub struct SshPlan {
    /// Login user.
    pub user: String,
    /// Address override.
    pub host: Option<String>,
    /// Port override.
    pub port: Option<u16>,
    /// Password (tried at most once).
    pub password: Option<Secret<String>>,
    /// Key file instead of an ephemeral key.
    pub private_key_file: Option<PathBuf>,
    /// Host key policy.
    pub host_key: HostKeySpec,
    /// How long to wait for a login.
    pub login_timeout: Duration,
    /// Jump host: (host, port, user, key file, policy).
    pub bastion: Option<BastionPlan>,
    /// `public` or `private`.
    pub interface: Option<String>,
}

/// A resolved jump host.
#[derive(Debug, Clone)]
pub struct BastionPlan {
    /// Address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// User.
    pub user: String,
    /// Key file.
    pub private_key_file: Option<PathBuf>,
    /// Host key policy.
    pub host_key: HostKeySpec,
}

/// One IaaS's build, resolved.
#[derive(Debug, Clone)]
pub struct BuildPlan {
    /// Which IaaS.
    pub iaas: Iaas,
    /// The build id.
    pub build_id: String,
    /// The template with every reference resolved for this build (the
    /// IaaS-specific options are in `template.builds.<iaas>.options`).
    pub template: Template,
    /// CPUs (default 2).
    pub cpus: u32,
    /// Memory MiB (default 2048).
    pub memory_mib: u64,
    /// Disk MiB, if set.
    pub disk_mib: Option<u64>,
    /// Network.
    pub network: NetworkSpec,
    /// Login.
    pub ssh: SshPlan,
    /// The steps that apply to this IaaS, in order.
    pub provision: Vec<Provisioner>,
    /// The stemcell, with `path` made absolute.
    pub stemcell: Option<StemcellRef>,
    /// The template's directory.
    pub template_dir: PathBuf,
    /// The template file.
    pub template_path: PathBuf,
    /// Where artifacts go.
    pub output_dir: PathBuf,
    /// The manifest file.
    pub manifest_path: PathBuf,
}

/// Default login timeout.
pub const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(300);

struct Ctx<'a> {
    loaded: &'a Loaded,
}

impl Ctx<'_> {
    fn err(&self, needle: &str, key: &str, msg: impl Into<String>) -> TemplateError {
        self.loaded.error_at(needle, key, msg)
    }

    fn tv<T: std::str::FromStr + Clone>(
        &self,
        v: &Option<Tv<T>>,
        raw: &Option<Tv<T>>,
        key: &str,
    ) -> Result<Option<T>, TemplateError>
    where
        T::Err: std::fmt::Display,
    {
        match v {
            None => Ok(None),
            Some(t) => t.get().map(Some).map_err(|m| {
                let needle = match raw {
                    Some(Tv::Expr(s)) => s.clone(),
                    _ => key.rsplit('.').next().unwrap_or(key).to_string() + ":",
                };
                self.err(&needle, key, m)
            }),
        }
    }

    fn path_exists(&self, dir: &Path, p: &str, key: &str) -> Result<PathBuf, TemplateError> {
        let full = dir.join(p);
        if full.exists() {
            Ok(full)
        } else {
            Err(self.err(p, key, format!("{} does not exist", full.display())))
        }
    }
}

/// Interpolate every string of the template for one build.
fn interpolate_template(
    loaded: &Loaded,
    vars: &Vars,
    builtins: &Builtins,
) -> Result<Template, TemplateError> {
    let value = with_exposed(|| serde_json::to_value(&loaded.template)).map_err(|e| {
        TemplateError::Invalid {
            path: loaded.path.clone(),
            key: "(template)".to_string(),
            message: e.to_string(),
        }
    })?;
    fn walk(
        v: serde_json::Value,
        key: &str,
        loaded: &Loaded,
        vars: &Vars,
        b: &Builtins,
    ) -> Result<serde_json::Value, TemplateError> {
        use serde_json::Value;
        Ok(match v {
            Value::String(s) => Value::String(interpolate(&s, vars, b).map_err(|e| {
                let needle = match &e {
                    crate::vars::RefError::Undefined(n) => format!("${{var.{n}}}"),
                    _ => s.clone(),
                };
                loaded.error_at(&needle, key, e.to_string())
            })?),
            Value::Array(a) => Value::Array(
                a.into_iter()
                    .enumerate()
                    .map(|(i, x)| walk(x, &format!("{key}[{i}]"), loaded, vars, b))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(o) => Value::Object(
                o.into_iter()
                    .map(|(k, x)| {
                        let kp = if key.is_empty() {
                            k.clone()
                        } else {
                            format!("{key}.{k}")
                        };
                        // Variable declarations are resolved separately.
                        if kp == "variables" {
                            return Ok((k, x));
                        }
                        walk(x, &kp, loaded, vars, b).map(|x| (k, x))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            other => other,
        })
    }
    let value = walk(value, "", loaded, vars, builtins)?;
    serde_json::from_value(value).map_err(|e| TemplateError::Invalid {
        path: loaded.path.clone(),
        key: "(after interpolation)".to_string(),
        message: e.to_string(),
    })
}

/// Make the plan of one IaaS's build.
pub fn plan_build(
    loaded: &Loaded,
    vars: &Vars,
    iaas: Iaas,
    build_id: &str,
) -> Result<BuildPlan, TemplateError> {
    let cx = Ctx { loaded };
    let raw = &loaded.template;
    let Some(raw_common) = raw.builds.common(iaas) else {
        let have: Vec<String> = raw.builds.iaases().iter().map(|i| i.to_string()).collect();
        return Err(cx.err(
            "builds:",
            &format!("builds.{iaas}"),
            format!(
                "the template has no `builds.{iaas}` entry (it has: {})",
                if have.is_empty() {
                    "none".to_string()
                } else {
                    have.join(", ")
                }
            ),
        ));
    };
    let dir = loaded.dir();
    let builtins = Builtins {
        iaas: iaas.to_string(),
        build_id: build_id.to_string(),
        template_dir: dir.display().to_string(),
    };
    let t = interpolate_template(loaded, vars, &builtins)?;
    let Some(c) = t.builds.common(iaas) else {
        return Err(cx.err("builds:", &format!("builds.{iaas}"), "entry vanished"));
    };
    let k = |f: &str| format!("builds.{iaas}.{f}");
    let cpus = cx.tv(&c.cpus, &raw_common.cpus, &k("cpus"))?.unwrap_or(2);
    let memory_mib = cx
        .tv(&c.memory, &raw_common.memory, &k("memory"))?
        .unwrap_or(2048);
    let disk_mib = cx.tv(&c.disk, &raw_common.disk, &k("disk"))?;
    if cpus == 0 {
        return Err(cx.err("cpus:", &k("cpus"), "must be at least 1"));
    }
    if memory_mib < 128 {
        return Err(cx.err("memory:", &k("memory"), "must be at least 128 (MiB)"));
    }
    let port = cx.tv(&c.ssh.port, &raw_common.ssh.port, &k("ssh.port"))?;
    let login_timeout = cx
        .tv::<Dur>(
            &c.ssh.login_timeout,
            &raw_common.ssh.login_timeout,
            &k("ssh.login_timeout"),
        )?
        .map_or(DEFAULT_LOGIN_TIMEOUT, |d| d.0);
    let private_key_file = match &c.ssh.private_key_file {
        Some(p) => Some(cx.path_exists(&dir, p, &k("ssh.private_key_file"))?),
        None => None,
    };
    let bastion = match &c.ssh.bastion {
        Some(b) => {
            let raw_b = raw_common.ssh.bastion.as_ref().and_then(|b| b.port.clone());
            Some(BastionPlan {
                host: b.host.clone(),
                port: cx
                    .tv(&b.port, &raw_b, &k("ssh.bastion.port"))?
                    .unwrap_or(22),
                user: b.user.clone(),
                private_key_file: match &b.private_key_file {
                    Some(p) => Some(cx.path_exists(&dir, p, &k("ssh.bastion.private_key_file"))?),
                    None => None,
                },
                host_key: b.host_key.clone(),
            })
        }
        None => None,
    };
    if let Some(i) = &c.ssh.interface {
        if i != "public" && i != "private" {
            return Err(cx.err(i, &k("ssh.interface"), "must be `public` or `private`"));
        }
    }
    let ssh = SshPlan {
        user: c.ssh.user.clone(),
        host: c.ssh.host.clone(),
        port,
        password: c.ssh.password.clone(),
        private_key_file,
        host_key: c.ssh.host_key.clone(),
        login_timeout,
        bastion,
        interface: c.ssh.interface.clone(),
    };

    // Stemcell.
    let needs_stemcell = !matches!(iaas, Iaas::Ssh | Iaas::Localtest);
    let stemcell = match t.stemcells.get(&iaas) {
        Some(s) => {
            let key = format!("stemcells.{iaas}");
            match (&s.path, &s.url) {
                (Some(_), Some(_)) => {
                    return Err(cx.err(&format!("{iaas}:"), &key, "give `path` or `url`, not both"))
                }
                (None, None) => {
                    return Err(cx.err(&format!("{iaas}:"), &key, "give `path` or `url`"))
                }
                (None, Some(u)) if s.sha1.is_none() => {
                    return Err(cx.err(u, &key, "a stemcell `url` needs its `sha1`"))
                }
                _ => {}
            }
            if let Some(sha1) = &s.sha1 {
                if sha1.len() != 40 || !sha1.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(cx.err(sha1, &format!("{key}.sha1"), "not a 40-digit hex SHA-1"));
                }
            }
            let path = match &s.path {
                Some(p) => Some(
                    cx.path_exists(&dir, p, &format!("{key}.path"))?
                        .display()
                        .to_string(),
                ),
                None => None,
            };
            Some(StemcellRef {
                path,
                url: s.url.clone(),
                sha1: s.sha1.clone(),
            })
        }
        None if needs_stemcell => {
            return Err(cx.err(
                "builds:",
                &format!("stemcells.{iaas}"),
                format!("the `{iaas}` build needs a stemcell: add `stemcells.{iaas}`"),
            ))
        }
        None => None,
    };

    // Provisioners.
    let mut provision = Vec::new();
    for (i, (p, rawp)) in t.provision.iter().zip(raw.provision.iter()).enumerate() {
        let key = format!("provision[{i}]");
        check_provisioner(&cx, &dir, p, rawp, &key)?;
        if p.applies_to(iaas) {
            provision.push(p.clone());
        }
    }

    let output_dir = PathBuf::from(t.outputs.directory.clone().unwrap_or_else(|| "out".into()));
    let manifest_path = t
        .outputs
        .manifest
        .clone()
        .map(PathBuf::from)
        .unwrap_or_else(|| output_dir.join("manifest.json"));
    Ok(BuildPlan {
        iaas,
        build_id: build_id.to_string(),
        cpus,
        memory_mib,
        disk_mib,
        network: c.network.clone(),
        ssh,
        provision,
        stemcell,
        template_dir: dir,
        template_path: loaded.path.clone(),
        output_dir,
        manifest_path,
        template: t,
    })
}

fn check_provisioner(
    cx: &Ctx<'_>,
    dir: &Path,
    p: &Provisioner,
    raw: &Provisioner,
    key: &str,
) -> Result<(), TemplateError> {
    let c = p.common();
    let rc = raw.common();
    cx.tv::<Dur>(
        &c.pause_before,
        &rc.pause_before,
        &format!("{key}.pause_before"),
    )?;
    cx.tv::<Dur>(&c.timeout, &rc.timeout, &format!("{key}.timeout"))?;
    cx.tv::<u32>(
        &c.max_retries,
        &rc.max_retries,
        &format!("{key}.max_retries"),
    )?;
    let t = p.type_name();
    match p {
        Provisioner::File(f) => {
            let dir_down = f.direction.as_deref().unwrap_or("upload");
            if dir_down != "upload" && dir_down != "download" {
                return Err(cx.err(
                    dir_down,
                    &format!("{key}.direction"),
                    "must be `upload` or `download`",
                ));
            }
            let n = f.source.iter().count() + f.sources.len() + f.content.iter().count();
            if n == 0 {
                return Err(cx.err(
                    &format!("type: {t}"),
                    key,
                    "needs `source`, `sources` or `content`",
                ));
            }
            if f.content.is_some() && n > 1 {
                return Err(cx.err(
                    &format!("type: {t}"),
                    key,
                    "`content` excludes `source`/`sources`",
                ));
            }
            if let Some(m) = &f.mode {
                if u32::from_str_radix(m.trim_start_matches("0o"), 8).is_err() {
                    return Err(cx.err(
                        m,
                        &format!("{key}.mode"),
                        "must be an octal mode such as 0644",
                    ));
                }
            }
            if dir_down == "upload" {
                for s in f.source.iter().chain(f.sources.iter()) {
                    cx.path_exists(dir, s, &format!("{key}.source"))?;
                }
            }
        }
        Provisioner::Shell(s) | Provisioner::ShellLocal(s) => {
            let n = usize::from(!s.inline.is_empty())
                + s.script.iter().count()
                + usize::from(!s.scripts.is_empty());
            if n != 1 {
                return Err(cx.err(
                    &format!("type: {t}"),
                    key,
                    "needs exactly one of `inline`, `script` or `scripts`",
                ));
            }
            for sc in s.script.iter().chain(s.scripts.iter()) {
                cx.path_exists(dir, sc, &format!("{key}.scripts"))?;
            }
            let raw_s = match raw {
                Provisioner::Shell(r) | Provisioner::ShellLocal(r) => Some(r),
                _ => None,
            };
            cx.tv::<Dur>(
                &s.start_retry_timeout,
                &raw_s.and_then(|r| r.start_retry_timeout.clone()),
                &format!("{key}.start_retry_timeout"),
            )?;
            for name in s.environment_vars.keys() {
                let ok = !name.is_empty()
                    && name.bytes().enumerate().all(|(i, b)| {
                        b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit())
                    });
                if !ok {
                    return Err(cx.err(
                        name,
                        &format!("{key}.environment_vars"),
                        "not a valid variable name",
                    ));
                }
            }
        }
        Provisioner::ChefSolo(ch) => {
            for cp in &ch.cookbook_paths {
                cx.path_exists(dir, cp, &format!("{key}.cookbook_paths"))?;
            }
            for (name, p) in [
                ("roles_path", &ch.roles_path),
                ("data_bags_path", &ch.data_bags_path),
                ("environments_path", &ch.environments_path),
            ] {
                if let Some(p) = p {
                    cx.path_exists(dir, p, &format!("{key}.{name}"))?;
                }
            }
            if let Some(i) = &ch.install {
                if !["skip", "omnitruck", "package"].contains(&i.as_str()) {
                    return Err(cx.err(
                        i,
                        &format!("{key}.install"),
                        "must be `skip`, `omnitruck` or `package`",
                    ));
                }
            }
            if let Some(l) = &ch.log_level {
                if !["auto", "trace", "debug", "info", "warn", "error", "fatal"]
                    .contains(&l.as_str())
                {
                    return Err(cx.err(l, &format!("{key}.log_level"), "not a chef log level"));
                }
            }
        }
        Provisioner::Breakpoint(_) | Provisioner::Handoff(_) => {}
    }
    Ok(())
}

/// Check a whole template for every IaaS it builds (what `opsbake validate`
/// does): variables, references, files, values.
pub fn validate_all(loaded: &Loaded, vars: &Vars) -> Result<Vec<BuildPlan>, TemplateError> {
    let iaases = loaded.template.builds.iaases();
    if iaases.is_empty() {
        return Err(loaded.error_at(
            "builds:",
            "builds",
            "no builds: add at least one IaaS entry",
        ));
    }
    iaases
        .into_iter()
        .map(|i| plan_build(loaded, vars, i, "validate"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::parse;
    use crate::vars::{resolve, VarSources};

    fn setup(src: &str) -> (tempfile::TempDir, Loaded) {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("s.sh"), "true\n").unwrap();
        std::fs::write(d.path().join("sc.tgz"), "x").unwrap();
        let path = d.path().join("t.yml");
        std::fs::write(&path, src).unwrap();
        let l = parse(&path, src.to_string()).unwrap();
        (d, l)
    }

    #[test]
    fn variables_reach_numbers_and_strings_per_iaas() {
        let (_d, l) = setup(
            "name: x\nvariables:\n  mem: {default: \"4096\"}\nstemcells:\n  vbox: {path: sc.tgz}\nbuilds:\n  vbox:\n    memory: \"${var.mem}\"\n    options: {vm_name: \"vm-${build.iaas}-${build.id}\"}\nprovision:\n  - type: shell\n    script: s.sh\n    only: [aws]\n  - type: shell\n    inline: [\"echo ${var.mem} $HOME\"]\n",
        );
        let v = resolve(&l, &VarSources::default()).unwrap();
        let p = plan_build(&l, &v, Iaas::Vbox, "b42").unwrap();
        assert_eq!(p.memory_mib, 4096);
        assert_eq!(p.cpus, 2);
        assert_eq!(
            p.template.builds.vbox.unwrap().options.vm_name.as_deref(),
            Some("vm-vbox-b42")
        );
        assert_eq!(p.provision.len(), 1, "the aws-only step is filtered out");
        match &p.provision[0] {
            Provisioner::Shell(s) => assert_eq!(s.inline[0], "echo 4096 $HOME"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_bad_number_names_the_place() {
        let (_d, l) = setup(
            "name: x\nvariables:\n  mem: {default: lots}\nbuilds:\n  localtest:\n    memory: \"${var.mem}\"\n",
        );
        let v = resolve(&l, &VarSources::default()).unwrap();
        let e = plan_build(&l, &v, Iaas::Localtest, "b")
            .unwrap_err()
            .to_string();
        assert!(e.contains("t.yml:6:14: builds.localtest.memory"), "{e}");
        assert!(e.contains("`lots` is not a valid value"), "{e}");
    }

    #[test]
    fn undefined_reference_in_a_step_names_the_place() {
        let (_d, l) = setup(
            "name: x\nbuilds:\n  localtest: {}\nprovision:\n  - type: shell\n    inline: [\"echo ${var.missing}\"]\n",
        );
        let v = resolve(&l, &VarSources::default()).unwrap();
        let e = validate_all(&l, &v).unwrap_err().to_string();
        assert!(e.contains("t.yml:6:20: provision[0].inline[0]"), "{e}");
        assert!(e.contains("undefined variable `missing`"), "{e}");
    }

    #[test]
    fn missing_files_and_stemcells_are_errors() {
        let (_d, l) = setup("name: x\nbuilds:\n  localtest: {}\nprovision:\n  - type: shell\n    scripts: [nope.sh]\n");
        let v = resolve(&l, &VarSources::default()).unwrap();
        let e = validate_all(&l, &v).unwrap_err().to_string();
        assert!(e.contains(":6:15: provision[0].scripts"), "{e}");
        let (_d, l) = setup("name: x\nbuilds:\n  aws: {}\n");
        let e = validate_all(&l, &v).unwrap_err().to_string();
        assert!(e.contains("needs a stemcell"), "{e}");
        let (_d, l) = setup("name: x\nbuilds:\n  localtest: {}\nprovision:\n  - type: shell\n    inline: [a]\n    script: s.sh\n");
        let e = validate_all(&l, &v).unwrap_err().to_string();
        assert!(e.contains("exactly one of"), "{e}");
    }
}
