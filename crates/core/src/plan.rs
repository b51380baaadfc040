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

mod access;

/// Default login timeout.
pub const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(300);

struct Ctx<'a> {
    loaded: &'a Loaded,
    /// Every error found so far (a plan reports all of them, not the first).
    errors: std::cell::RefCell<Vec<TemplateError>>,
}

impl Ctx<'_> {
    fn err(&self, needle: &str, key: &str, msg: impl Into<String>) -> TemplateError {
        self.loaded.error_at(needle, key, msg)
    }

    /// Record an error and go on checking.
    fn report(&self, needle: &str, key: &str, msg: impl Into<String>) {
        let e = self.err(needle, key, msg);
        self.errors.borrow_mut().push(e);
    }

    fn tv<T: std::str::FromStr + Clone>(
        &self,
        v: &Option<Tv<T>>,
        raw: &Option<Tv<T>>,
        key: &str,
    ) -> Option<T>
    where
        T::Err: std::fmt::Display,
    {
        match v {
            None => None,
            Some(t) => match t.get() {
                Ok(v) => Some(v),
                Err(m) => {
                    let needle = match raw {
                        Some(Tv::Expr(s)) => s.clone(),
                        _ => String::new(),
                    };
                    self.report(&needle, key, m);
                    None
                }
            },
        }
    }

    fn path_exists(&self, dir: &Path, p: &str, key: &str) -> Option<PathBuf> {
        let full = dir.join(p);
        if full.exists() {
            Some(full)
        } else {
            self.report(p, key, format!("{} does not exist", full.display()));
            None
        }
    }
}

/// Interpolate every string of the template for one build. A reference
/// that cannot be resolved is reported and its string left as written.
fn interpolate_template(
    cx: &Ctx<'_>,
    vars: &Vars,
    builtins: &Builtins,
) -> Result<Template, TemplateError> {
    let loaded = cx.loaded;
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
        cx: &Ctx<'_>,
        vars: &Vars,
        b: &Builtins,
    ) -> serde_json::Value {
        use serde_json::Value;
        match v {
            Value::String(s) => match interpolate(&s, vars, b) {
                Ok(v) => Value::String(v),
                Err(crate::vars::RefError::Failed(_)) => Value::String(s),
                Err(e) => {
                    let needle = match &e {
                        crate::vars::RefError::Undefined(n) => format!("${{var.{n}}}"),
                        _ => "${".to_string(),
                    };
                    cx.report(&needle, key, e.to_string());
                    Value::String(s)
                }
            },
            Value::Array(a) => Value::Array(
                a.into_iter()
                    .enumerate()
                    .map(|(i, x)| walk(x, &format!("{key}[{i}]"), cx, vars, b))
                    .collect(),
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
                            return (k, x);
                        }
                        let x = walk(x, &kp, cx, vars, b);
                        (k, x)
                    })
                    .collect(),
            ),
            other => other,
        }
    }
    let value = walk(value, "", cx, vars, builtins);
    serde_json::from_value(value).map_err(|e| TemplateError::Invalid {
        path: loaded.path.clone(),
        key: "(after interpolation)".to_string(),
        message: e.to_string(),
    })
}

/// Make the plan of one IaaS's build (the first error if there are any;
/// [`plan_build_all`] returns every one).
pub fn plan_build(
    loaded: &Loaded,
    vars: &Vars,
    iaas: Iaas,
    build_id: &str,
) -> Result<BuildPlan, TemplateError> {
    match plan_build_all(loaded, vars, iaas, build_id) {
        Ok(p) => Ok(p),
        Err(mut errors) => Err(if errors.is_empty() {
            TemplateError::Invalid {
                path: loaded.path.clone(),
                key: format!("builds.{iaas}"),
                message: "invalid".to_string(),
            }
        } else {
            errors.remove(0)
        }),
    }
}

/// Make the plan of one IaaS's build, or every error found in it (each
/// wrong value, each missing file, each undefined reference), in the
/// template's order.
pub fn plan_build_all(
    loaded: &Loaded,
    vars: &Vars,
    iaas: Iaas,
    build_id: &str,
) -> Result<BuildPlan, Vec<TemplateError>> {
    let cx = Ctx {
        loaded,
        errors: std::cell::RefCell::new(Vec::new()),
    };
    let plan = plan_inner(&cx, vars, iaas, build_id);
    let mut errors = cx.errors.into_inner();
    match plan {
        Err(e) => {
            errors.push(e);
            Err(errors)
        }
        Ok(p) if errors.is_empty() => Ok(p),
        Ok(_) => Err(errors),
    }
}

fn plan_inner(
    cx: &Ctx<'_>,
    vars: &Vars,
    iaas: Iaas,
    build_id: &str,
) -> Result<BuildPlan, TemplateError> {
    let loaded = cx.loaded;
    let raw = &loaded.template;
    let Some(raw_common) = raw.builds.common(iaas) else {
        let have: Vec<String> = raw.builds.iaases().iter().map(|i| i.to_string()).collect();
        return Err(cx.err(
            "",
            "builds",
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
    let t = interpolate_template(cx, vars, &builtins)?;
    let Some(c) = t.builds.common(iaas) else {
        return Err(cx.err("", &format!("builds.{iaas}"), "entry vanished"));
    };
    let k = |f: &str| format!("builds.{iaas}.{f}");
    let cpus = cx.tv(&c.cpus, &raw_common.cpus, &k("cpus")).unwrap_or(2);
    let memory_mib = cx
        .tv(&c.memory, &raw_common.memory, &k("memory"))
        .unwrap_or(2048);
    let disk_mib = cx.tv(&c.disk, &raw_common.disk, &k("disk"));
    if cpus == 0 {
        cx.report("", &k("cpus"), "must be at least 1");
    }
    if memory_mib < 128 {
        cx.report("", &k("memory"), "must be at least 128 (MiB)");
    }
    let port = cx.tv(&c.ssh.port, &raw_common.ssh.port, &k("ssh.port"));
    let login_timeout = cx
        .tv::<Dur>(
            &c.ssh.login_timeout,
            &raw_common.ssh.login_timeout,
            &k("ssh.login_timeout"),
        )
        .map_or(DEFAULT_LOGIN_TIMEOUT, |d| d.0);
    let private_key_file = match &c.ssh.private_key_file {
        Some(p) => cx.path_exists(&dir, p, &k("ssh.private_key_file")),
        None => None,
    };
    let host_key = check_host_key(
        cx,
        &dir,
        &c.ssh.host_key,
        &k("ssh.host_key"),
        (c.ssh.host.as_deref(), port.unwrap_or(22)),
    );
    let bastion = match &c.ssh.bastion {
        Some(b) => {
            let raw_b = raw_common.ssh.bastion.as_ref().and_then(|b| b.port.clone());
            let bport = cx.tv(&b.port, &raw_b, &k("ssh.bastion.port")).unwrap_or(22);
            Some(BastionPlan {
                host: b.host.clone(),
                port: bport,
                user: b.user.clone(),
                private_key_file: match &b.private_key_file {
                    Some(p) => cx.path_exists(&dir, p, &k("ssh.bastion.private_key_file")),
                    None => None,
                },
                host_key: check_host_key(
                    cx,
                    &dir,
                    &b.host_key,
                    &k("ssh.bastion.host_key"),
                    (Some(b.host.as_str()), bport),
                ),
            })
        }
        None => None,
    };
    if let Some(i) = &c.ssh.interface {
        if i != "public" && i != "private" {
            cx.report(i, &k("ssh.interface"), "must be `public` or `private`");
        }
    }
    let ssh = SshPlan {
        user: c.ssh.user.clone(),
        host: c.ssh.host.clone(),
        port,
        password: c.ssh.password.clone(),
        private_key_file,
        host_key,
        login_timeout,
        bastion,
        interface: c.ssh.interface.clone(),
    };

    // Stemcell.
    let needs_stemcell = iaas.facts().needs_stemcell;
    let stemcell = match t.stemcells.get(&iaas) {
        Some(s) => {
            let key = format!("stemcells.{iaas}");
            match (&s.path, &s.url) {
                (Some(_), Some(_)) => cx.report("", &key, "give `path` or `url`, not both"),
                (None, None) => cx.report("", &key, "give `path` or `url`"),
                (None, Some(u)) if s.sha1.is_none() => cx.report(
                    u,
                    &format!("{key}.url"),
                    "a stemcell `url` needs its `sha1`",
                ),
                _ => {}
            }
            if let Some(sha1) = &s.sha1 {
                if sha1.len() != 40 || !sha1.bytes().all(|b| b.is_ascii_hexdigit()) {
                    cx.report(sha1, &format!("{key}.sha1"), "not a 40-digit hex SHA-1");
                }
            }
            let path = match &s.path {
                Some(p) => cx
                    .path_exists(&dir, p, &format!("{key}.path"))
                    .map(|p| p.display().to_string()),
                None => None,
            };
            Some(StemcellRef {
                path,
                url: s.url.clone(),
                sha1: s.sha1.clone(),
            })
        }
        None if needs_stemcell => {
            cx.report(
                "",
                &format!("builds.{iaas}"),
                format!("the `{iaas}` build needs a stemcell: add `stemcells.{iaas}`"),
            );
            None
        }
        None => None,
    };

    // Provisioners.
    let mut provision = Vec::new();
    for (i, (p, rawp)) in t.provision.iter().zip(raw.provision.iter()).enumerate() {
        let key = format!("provision[{i}]");
        check_provisioner(cx, &dir, p, rawp, &key);
        if p.applies_to(iaas) {
            provision.push(p.clone());
        }
    }

    // Outputs resolve against the template's directory, like every other
    // relative path of a template (an absolute path stays as it is).
    let output_dir = dir.join(t.outputs.directory.clone().unwrap_or_else(|| "out".into()));
    let manifest_path = t
        .outputs
        .manifest
        .clone()
        .map(|m| dir.join(m))
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

/// Check a host key policy when the template is checked: every pin must
/// be a public key, a whole known_hosts line or a `SHA256:` fingerprint; a
/// `known_hosts` file must be well formed and hold a key for the host.
/// Returns the policy with pins reduced to keys and fingerprints.
fn check_host_key(
    cx: &Ctx<'_>,
    dir: &Path,
    spec: &HostKeySpec,
    key: &str,
    target: (Option<&str>, u16),
) -> HostKeySpec {
    use crate::hostkeys::{host_name, keys_for, parse_pin, KNOWN_HOSTS_MARK};
    let HostKeySpec::Pin(pins) = spec else {
        return spec.clone();
    };
    let mut out = Vec::new();
    for (i, p) in pins.iter().enumerate() {
        if let Some(rest) = p.strip_prefix(KNOWN_HOSTS_MARK) {
            let (host, file) = rest.trim_start().split_once(' ').unwrap_or(("-", rest));
            let k = format!("{key}.known_hosts");
            let name = match (host, target.0) {
                ("-", Some(h)) => host_name(h, target.1),
                ("-", None) => {
                    cx.report(
                        "",
                        &k,
                        "give `host` (the build VM's address is not known before it is launched; or set `ssh.host`)",
                    );
                    continue;
                }
                (h, _) => h.to_string(),
            };
            let full = dir.join(file.trim());
            match std::fs::read_to_string(&full) {
                Ok(text) => match keys_for(&text, &name) {
                    Ok(keys) if keys.is_empty() => cx.report(
                        "",
                        &k,
                        format!("{} holds no key for {name}", full.display()),
                    ),
                    Ok(keys) => out.extend(keys),
                    Err(m) => cx.report("", &k, format!("{}: {m}", full.display())),
                },
                Err(e) => cx.report("", &k, format!("{}: {e}", full.display())),
            }
            continue;
        }
        match parse_pin(p) {
            Ok(k) => out.push(k),
            Err(m) => cx.report("", &format!("{key}.pin[{i}]"), m),
        }
    }
    if pins.is_empty() {
        cx.report("", key, "`pin` needs at least one key");
    }
    HostKeySpec::Pin(out)
}

fn check_provisioner(cx: &Ctx<'_>, dir: &Path, p: &Provisioner, raw: &Provisioner, key: &str) {
    let c = p.common();
    let rc = raw.common();
    cx.tv::<Dur>(
        &c.pause_before,
        &rc.pause_before,
        &format!("{key}.pause_before"),
    );
    cx.tv::<Dur>(&c.timeout, &rc.timeout, &format!("{key}.timeout"));
    cx.tv::<u32>(
        &c.max_retries,
        &rc.max_retries,
        &format!("{key}.max_retries"),
    );
    match p {
        Provisioner::File(f) => {
            let dir_down = f.direction.as_deref().unwrap_or("upload");
            if dir_down != "upload" && dir_down != "download" {
                cx.report(
                    dir_down,
                    &format!("{key}.direction"),
                    "must be `upload` or `download`",
                );
            }
            let n = f.source.iter().count() + f.sources.len() + f.content.iter().count();
            if n == 0 {
                cx.report("", key, "needs `source`, `sources` or `content`");
            }
            if f.content.is_some() && n > 1 {
                cx.report("", key, "`content` excludes `source`/`sources`");
            }
            if let Some(m) = &f.mode {
                if u32::from_str_radix(m.trim_start_matches("0o"), 8).is_err() {
                    cx.report(
                        m,
                        &format!("{key}.mode"),
                        "must be an octal mode such as 0644",
                    );
                }
            }
            if dir_down == "upload" {
                if let Some(s) = &f.source {
                    cx.path_exists(dir, s, &format!("{key}.source"));
                }
                for (j, s) in f.sources.iter().enumerate() {
                    cx.path_exists(dir, s, &format!("{key}.sources[{j}]"));
                }
            }
        }
        Provisioner::Shell(s) | Provisioner::ShellLocal(s) => {
            let n = usize::from(!s.inline.is_empty())
                + s.script.iter().count()
                + usize::from(!s.scripts.is_empty());
            if n != 1 {
                cx.report(
                    "",
                    key,
                    "needs exactly one of `inline`, `script` or `scripts`",
                );
            }
            if let Some(sc) = &s.script {
                cx.path_exists(dir, sc, &format!("{key}.script"));
            }
            for (j, sc) in s.scripts.iter().enumerate() {
                cx.path_exists(dir, sc, &format!("{key}.scripts[{j}]"));
            }
            let raw_s = match raw {
                Provisioner::Shell(r) | Provisioner::ShellLocal(r) => Some(r),
                _ => None,
            };
            cx.tv::<Dur>(
                &s.start_retry_timeout,
                &raw_s.and_then(|r| r.start_retry_timeout.clone()),
                &format!("{key}.start_retry_timeout"),
            );
            for name in s.environment_vars.keys() {
                let ok = !name.is_empty()
                    && name.bytes().enumerate().all(|(i, b)| {
                        b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit())
                    });
                if !ok {
                    cx.report(
                        "",
                        &format!("{key}.environment_vars.{name}"),
                        "not a valid variable name",
                    );
                }
            }
        }
        Provisioner::ChefSolo(ch) => {
            for (j, cp) in ch.cookbook_paths.iter().enumerate() {
                cx.path_exists(dir, cp, &format!("{key}.cookbook_paths[{j}]"));
            }
            for (name, p) in [
                ("roles_path", &ch.roles_path),
                ("data_bags_path", &ch.data_bags_path),
                ("environments_path", &ch.environments_path),
            ] {
                if let Some(p) = p {
                    cx.path_exists(dir, p, &format!("{key}.{name}"));
                }
            }
            if let Some(i) = &ch.install {
                if !["skip", "omnitruck", "package"].contains(&i.as_str()) {
                    cx.report(
                        i,
                        &format!("{key}.install"),
                        "must be `skip`, `omnitruck` or `package`",
                    );
                }
            }
            if let Some(l) = &ch.log_level {
                if !["auto", "trace", "debug", "info", "warn", "error", "fatal"]
                    .contains(&l.as_str())
                {
                    cx.report(l, &format!("{key}.log_level"), "not a chef log level");
                }
            }
        }
        Provisioner::Breakpoint(_) | Provisioner::Handoff(_) => {}
    }
}

/// Check a whole template for every IaaS it builds (what `opsbake validate`
/// does): variables, references, files, values. The first error; see
/// [`validate_all_errors`] for every one.
pub fn validate_all(loaded: &Loaded, vars: &Vars) -> Result<Vec<BuildPlan>, TemplateError> {
    let (plans, mut errors) = validate_all_errors(loaded, vars);
    if errors.is_empty() {
        Ok(plans)
    } else {
        Err(errors.remove(0))
    }
}

/// Plan every IaaS the template builds and return the plans that are valid
/// with every error found, each once (an error in a provisioning step is
/// the same for every IaaS), in the order of the template's lines.
pub fn validate_all_errors(loaded: &Loaded, vars: &Vars) -> (Vec<BuildPlan>, Vec<TemplateError>) {
    let iaases = loaded.template.builds.iaases();
    if iaases.is_empty() {
        return (
            Vec::new(),
            vec![loaded.error_at("", "builds", "no builds: add at least one IaaS entry")],
        );
    }
    let mut plans = Vec::new();
    let mut errors: Vec<TemplateError> = Vec::new();
    for i in iaases {
        match plan_build_all(loaded, vars, i, "validate") {
            Ok(p) => plans.push(p),
            Err(es) => {
                for e in es {
                    if !errors.iter().any(|x| x.to_string() == e.to_string()) {
                        errors.push(e);
                    }
                }
            }
        }
    }
    sort_errors(&mut errors);
    (plans, errors)
}

/// Order errors by their place in the file (errors without one last).
pub fn sort_errors(errors: &mut [TemplateError]) {
    errors.sort_by_key(|e| match e {
        TemplateError::At { line, column, .. } => (0, *line, *column),
        _ => (1, 0, 0),
    });
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

    #[test]
    fn every_error_of_a_template_is_reported_once_in_order() {
        let (_d, l) = setup(
            "name: x\nvariables:\n  a: {default: \"${var.b}\"}\n  b: {default: \"${var.a}\"}\n  c: {default: \"${var.d}\"}\n  d: {default: \"${var.c}\"}\n  ok: {default: \"1\"}\nbuilds:\n  localtest:\n    cpus: lots\n    memory: much\nprovision:\n  - type: shell\n    inline: [\"echo ${var.a}\", \"echo ${var.nope}\"]\n",
        );
        let (v, verr) = crate::vars::resolve_all(&l, &VarSources::default());
        let verr: Vec<String> = verr.iter().map(|e| e.to_string()).collect();
        assert_eq!(verr.len(), 2, "{verr:?}");
        assert!(
            verr[0].contains("t.yml:3:3: variables.a: circular reference: a -> b -> a"),
            "{verr:?}"
        );
        assert!(
            verr[1].contains("t.yml:5:3: variables.c: circular reference: c -> d -> c"),
            "{verr:?}"
        );
        let (_, errs) = validate_all_errors(&l, &v);
        let errs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(
            errs[0].contains(":10:11: builds.localtest.cpus"),
            "{errs:?}"
        );
        assert!(
            errs[1].contains(":11:13: builds.localtest.memory"),
            "{errs:?}"
        );
        // `${var.a}` failed above and is not reported again; `nope` is.
        assert!(
            errs[2].contains(":14:37: provision[0].inline[1]: undefined variable `nope`"),
            "{errs:?}"
        );
    }

    #[test]
    fn a_missing_script_is_placed_at_the_step_not_at_a_comment() {
        let (_d, l) = setup(
            "name: x\n# scripts: [nope.sh] was here\nbuilds:\n  localtest: {}\nprovision:\n  - type: shell\n    scripts: [s.sh, nope.sh]\n",
        );
        let v = resolve(&l, &VarSources::default()).unwrap();
        let (_, errs) = validate_all_errors(&l, &v);
        assert_eq!(errs.len(), 1, "{errs:?}");
        let e = errs[0].to_string();
        assert!(e.contains("t.yml:7:21: provision[0].scripts[1]"), "{e}");
    }

    #[test]
    fn host_key_pins_are_checked_with_the_template() {
        let (d, l) = setup(
            "name: x\nbuilds:\n  localtest:\n    ssh:\n      host_key: {pin: [\"not-a-key\", \"h1,[127.0.0.1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f c\"]}\n",
        );
        let v = resolve(&l, &VarSources::default()).unwrap();
        let (_, errs) = validate_all_errors(&l, &v);
        assert_eq!(errs.len(), 1, "{errs:?}");
        let e = errs[0].to_string();
        assert!(
            e.contains("t.yml:5:") && e.contains("builds.localtest.ssh.host_key.pin[0]"),
            "{e}"
        );
        assert!(e.contains("`not-a-key` is not a host key"), "{e}");
        drop(d);
        // A known_hosts file with a `[host]:port` entry gives the pin.
        let (d, _) = setup("name: x\nbuilds: {}\n");
        std::fs::write(
            d.path().join("kh"),
            "[127.0.0.1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f\nother ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f\n",
        )
        .unwrap();
        let src = "name: x\nbuilds:\n  localtest:\n    ssh: {host: 127.0.0.1, port: 2222, host_key: {known_hosts: kh}}\n";
        let path = d.path().join("t.yml");
        std::fs::write(&path, src).unwrap();
        let l = parse(&path, src.to_string()).unwrap();
        let p = plan_build(&l, &v, Iaas::Localtest, "b").unwrap();
        assert_eq!(
            p.ssh.host_key,
            HostKeySpec::Pin(vec![
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f"
                    .into()
            ])
        );
        let src = "name: x\nbuilds:\n  localtest:\n    ssh: {host: 127.0.0.1, host_key: {known_hosts: kh}}\n";
        let l = parse(&path, src.to_string()).unwrap();
        let e = plan_build(&l, &v, Iaas::Localtest, "b")
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds no key for 127.0.0.1"), "{e}");
    }

    #[test]
    fn outputs_resolve_against_the_template_directory() {
        let (d, l) = setup("name: x\nbuilds:\n  localtest: {}\n");
        let v = resolve(&l, &VarSources::default()).unwrap();
        let p = plan_build(&l, &v, Iaas::Localtest, "b").unwrap();
        let dir = std::fs::canonicalize(d.path()).unwrap();
        assert_eq!(p.output_dir, dir.join("out"));
        assert_eq!(p.manifest_path, dir.join("out/manifest.json"));
    }
}
