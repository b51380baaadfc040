//! The builder's settings, resolved once from the plan's options, and the
//! offline checks `opsbake validate` reports at their template keys.

use std::path::PathBuf;
use std::time::Duration;

use opsbake_core::builder::Finding;
use opsbake_core::options::VsphereOptions;
use opsbake_core::plan::BuildPlan;
use opsbake_core::Secret;

use crate::error::VsphereError;
use crate::vim::normalise_url;
use crate::vim::tls::{parse_thumbprint, TlsMode};

/// Default wait for VMware Tools to report an address.
pub const DEFAULT_IP_WAIT: Duration = Duration::from_secs(600);
/// Default time an address must stay the same.
pub const DEFAULT_IP_SETTLE: Duration = Duration::from_secs(5);
/// Default guest shutdown limit.
pub const DEFAULT_SHUTDOWN: Duration = Duration::from_secs(300);
/// Default name prefix.
pub const DEFAULT_PREFIX: &str = "opsbake-";
/// Limit of one vCenter task (clone, import, destroy).
pub const TASK_TIMEOUT: Duration = Duration::from_secs(3600);
/// vSphere's limit on VM and template names.
pub const MAX_NAME: usize = 80;

const KEY: &str = "builds.vsphere.options";

/// Everything the builder needs, resolved.
#[derive(Debug, Clone)]
pub struct Config {
    /// `https://host/sdk`.
    pub url: reqwest::Url,
    /// User.
    pub username: String,
    /// Password.
    pub password: Secret<String>,
    /// TLS.
    pub tls: TlsMode,
    /// Datacenter name.
    pub datacenter: String,
    /// Cluster.
    pub cluster: Option<String>,
    /// Host.
    pub host: Option<String>,
    /// Datastore.
    pub datastore: String,
    /// Resource pool path below the root pool.
    pub resource_pool: Option<String>,
    /// Folder path below the `vm` folder.
    pub folder: Option<String>,
    /// Network.
    pub network: Option<String>,
    /// Build VM name.
    pub vm_name: String,
    /// Template name.
    pub template_name: String,
    /// Existing template/VM to clone.
    pub source_template: Option<String>,
    /// Linked clone.
    pub linked_clone: bool,
    /// Replace existing objects.
    pub force: bool,
    /// Mark as template.
    pub template: bool,
    /// Export an OVA.
    pub export_ova: bool,
    /// IP wait.
    pub ip_wait: Duration,
    /// IP settle.
    pub ip_settle: Duration,
    /// Shutdown limit.
    pub shutdown_timeout: Duration,
    /// Name prefix.
    pub prefix: String,
}

fn dur(
    v: &Option<opsbake_core::template::Tv<opsbake_core::template::Dur>>,
    key: &str,
    default: Duration,
    findings: &mut Vec<Finding>,
) -> Duration {
    match v {
        None => default,
        Some(t) => match t.get() {
            Ok(d) => d.0,
            Err(m) => {
                findings.push(Finding::new(format!("{KEY}.{key}"), m));
                default
            }
        },
    }
}

fn nonempty(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// A VM name's problems (vSphere: at most 80 characters; `/`, `\` and `%`
/// are escaped by vCenter, which breaks inventory paths: refused here).
pub fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("is empty".into());
    }
    if name.chars().count() > MAX_NAME {
        return Some(format!(
            "{name:?} has {} characters; vSphere allows {MAX_NAME}",
            name.chars().count()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| matches!(c, '/' | '\\' | '%') || c.is_control())
    {
        return Some(format!(
            "{name:?} contains {c:?}, which vCenter escapes in inventory paths"
        ));
    }
    None
}

impl Config {
    /// Resolve the plan's options; every problem is a finding at its key.
    pub fn resolve(plan: &BuildPlan, o: &VsphereOptions) -> (Option<Config>, Vec<Finding>) {
        let mut f = Vec::new();
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let url_s = nonempty(&o.url).or_else(|| env("GOVC_URL"));
        let mut url = None;
        let (mut url_user, mut url_pass) = (None, None);
        match url_s {
            None => f.push(Finding::new(
                format!("{KEY}.url"),
                "the vCenter URL is required (or GOVC_URL)",
            )),
            Some(s) => match normalise_url(&s) {
                Ok((u, user, pass)) => {
                    url = Some(u);
                    url_user = user;
                    url_pass = pass;
                }
                Err(m) => f.push(Finding::new(format!("{KEY}.url"), m)),
            },
        }
        let username = nonempty(&o.username)
            .or(url_user)
            .or_else(|| env("GOVC_USERNAME"));
        if username.is_none() {
            f.push(Finding::new(
                format!("{KEY}.username"),
                "the vCenter user is required (or GOVC_USERNAME, or user@ in the URL)",
            ));
        }
        let password = o
            .password
            .clone()
            .filter(|p| !p.expose().is_empty())
            .or(url_pass)
            .or_else(|| env("GOVC_PASSWORD").map(Secret::new));
        if password.is_none() {
            f.push(Finding::new(
                format!("{KEY}.password"),
                "the vCenter password is required (a sensitive variable, or GOVC_PASSWORD)",
            ));
        }
        let thumb = nonempty(&o.thumbprint);
        let ca = nonempty(&o.ca_file);
        let set = [o.insecure, thumb.is_some(), ca.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if set > 1 {
            f.push(Finding::new(
                format!("{KEY}.insecure"),
                "set at most one of insecure, thumbprint and ca_file",
            ));
        }
        let tls = if o.insecure {
            TlsMode::Insecure
        } else if let Some(t) = thumb {
            match parse_thumbprint(&t) {
                Ok(b) => TlsMode::Thumbprint(b),
                Err(m) => {
                    f.push(Finding::new(format!("{KEY}.thumbprint"), m));
                    TlsMode::System
                }
            }
        } else if let Some(c) = ca {
            let p = PathBuf::from(&c);
            let p = if p.is_relative() {
                plan.template_dir.join(p)
            } else {
                p
            };
            if !p.is_file() {
                f.push(Finding::new(
                    format!("{KEY}.ca_file"),
                    format!("{} is not a file", p.display()),
                ));
            }
            TlsMode::CaFile(p)
        } else {
            TlsMode::System
        };
        let datacenter = nonempty(&o.datacenter);
        if datacenter.is_none() {
            f.push(Finding::new(
                format!("{KEY}.datacenter"),
                "the datacenter is required",
            ));
        }
        let cluster = nonempty(&o.cluster);
        let host = nonempty(&o.host);
        if cluster.is_none() && host.is_none() {
            f.push(Finding::new(
                format!("{KEY}.cluster"),
                "set `cluster` or `host` (where the build VM runs)",
            ));
        }
        let datastore = nonempty(&o.datastore);
        if datastore.is_none() {
            f.push(Finding::new(
                format!("{KEY}.datastore"),
                "the datastore is required",
            ));
        }
        let prefix = nonempty(&o.name_prefix).unwrap_or_else(|| DEFAULT_PREFIX.to_string());
        let vm_name = nonempty(&o.vm_name).unwrap_or_else(|| format!("{prefix}{}", plan.build_id));
        let t = &plan.template;
        let template_name = nonempty(&o.template_name).unwrap_or_else(|| match &t.version {
            Some(v) => format!("{}-{v}-{}", t.name, plan.build_id),
            None => format!("{}-{}", t.name, plan.build_id),
        });
        for (k, n) in [("vm_name", &vm_name), ("template_name", &template_name)] {
            if let Some(m) = name_problem(n) {
                f.push(Finding::new(format!("{KEY}.{k}"), m));
            }
        }
        let template = o.template.unwrap_or(true);
        if !template && !o.export_ova {
            f.push(Finding::new(
                format!("{KEY}.template"),
                "the build would leave nothing: set `template: true` or `export_ova: true`",
            ));
        }
        let ip_wait = dur(
            &o.ip_wait_timeout,
            "ip_wait_timeout",
            DEFAULT_IP_WAIT,
            &mut f,
        );
        let ip_settle = dur(&o.ip_settle, "ip_settle", DEFAULT_IP_SETTLE, &mut f);
        let shutdown_timeout = dur(
            &o.shutdown_timeout,
            "shutdown_timeout",
            DEFAULT_SHUTDOWN,
            &mut f,
        );
        if ip_settle >= ip_wait {
            f.push(Finding::new(
                format!("{KEY}.ip_settle"),
                format!(
                    "ip_settle ({ip_settle:?}) must be shorter than ip_wait_timeout ({ip_wait:?})"
                ),
            ));
        }
        if plan.stemcell.is_none() && nonempty(&o.source_template).is_none() {
            f.push(Finding::new(
                "stemcells.vsphere",
                "no vSphere stemcell and no builds.vsphere.options.source_template: nothing to start from",
            ));
        }
        if !f.is_empty() {
            return (None, f);
        }
        let (Some(url), Some(username), Some(password), Some(datacenter), Some(datastore)) =
            (url, username, password, datacenter, datastore)
        else {
            return (None, f);
        };
        (
            Some(Config {
                url,
                username,
                password,
                tls,
                datacenter,
                cluster,
                host,
                datastore,
                resource_pool: nonempty(&o.resource_pool),
                folder: nonempty(&o.folder).map(|s| s.trim_matches('/').to_string()),
                network: nonempty(&o.network),
                vm_name,
                template_name,
                source_template: nonempty(&o.source_template),
                linked_clone: o.linked_clone,
                force: o.force,
                template,
                export_ova: o.export_ova,
                ip_wait,
                ip_settle,
                shutdown_timeout,
                prefix,
            }),
            f,
        )
    }

    /// The error for a plan whose options do not resolve.
    pub fn findings_error(f: &[Finding]) -> VsphereError {
        VsphereError::Config(
            f.iter()
                .map(|x| format!("{}: {}", x.key, x.message))
                .collect::<Vec<_>>()
                .join("; "),
        )
    }
}

/// The path of an inventory item below a datacenter (`DC0/vm/folder`).
/// vCenter escapes `/` in names as `%2f`; names with it are refused earlier.
pub fn inventory_path(datacenter: &str, parts: &[&str]) -> String {
    let mut p = datacenter.to_string();
    for x in parts {
        let x = x.trim_matches('/');
        if !x.is_empty() {
            p.push('/');
            p.push_str(x);
        }
    }
    p
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_follow_vsphere_rules() {
        assert!(name_problem("opsbake-abc").is_none());
        assert!(name_problem(&"x".repeat(81))
            .unwrap()
            .contains("81 characters"));
        assert!(name_problem("a/b").unwrap().contains("'/'"));
        assert!(name_problem("").is_some());
        assert_eq!(inventory_path("DC0", &["vm", "/a/b/", ""]), "DC0/vm/a/b");
    }
}
