//! Offline checks (`opsbake validate` reports them): required settings,
//! GCE's name and label rules after interpolation.

use opsbake_core::builder::Finding;

use crate::api::CredSource;
use crate::GcpBuilder;

/// GCE's resource name rule `[a-z]([-a-z0-9]{0,61}[a-z0-9])?`.
pub fn valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[b.len() - 1] != b'-'
}

/// GCE's label rule: keys start with a lowercase letter; keys and values
/// hold lowercase letters, digits, `_` and `-`, at most 63 characters.
pub fn valid_label(k: &str, v: &str) -> bool {
    let ok = |s: &str| {
        s.len() <= 63
            && s.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
    };
    k.as_bytes().first().is_some_and(u8::is_ascii_lowercase) && ok(k) && ok(v)
}

/// A string made fit for a label value or a name part (lowercase, other
/// characters to `-`, at most `max`).
pub fn sanitize(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    out.truncate(max);
    while out.ends_with('-') {
        out.pop();
    }
    out
}

impl GcpBuilder {
    pub(crate) fn offline_findings(&self) -> Vec<Finding> {
        let k = |f: &str| format!("builds.gcp.options.{f}");
        let mut out = Vec::new();
        if self.project.is_none() {
            out.push(Finding::new(
                k("project_id"),
                "no project: set builds.gcp.options.project_id, or GOOGLE_PROJECT_ID, or GOOGLE_CLOUD_PROJECT",
            ));
        }
        match &self.zone {
            None => out.push(Finding::new(
                k("zone"),
                "no zone: set builds.gcp.options.zone (e.g. us-central1-a)",
            )),
            Some(z) => {
                let parts: Vec<&str> = z.split('-').collect();
                let ok = parts.len() == 3
                    && parts.iter().all(|p| {
                        !p.is_empty()
                            && p.bytes()
                                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                    })
                    && parts[1].ends_with(|c: char| c.is_ascii_digit())
                    && parts[2].len() == 1;
                if !ok {
                    out.push(Finding::new(
                        k("zone"),
                        format!("`{z}` is not a zone name (REGION-ZONE such as us-central1-a)"),
                    ));
                }
            }
        }
        if !valid_name(&self.image_name) {
            out.push(Finding::new(
                k("image_name"),
                format!(
                    "`{}` breaks GCE's name rule [a-z]([-a-z0-9]{{0,61}}[a-z0-9])? (lowercase letters, digits and dashes, at most 63, starting with a letter)",
                    self.image_name
                ),
            ));
        }
        if let Some(f) = &self.opts.image_family {
            if !valid_name(f) {
                out.push(Finding::new(
                    k("image_family"),
                    format!("`{f}` breaks GCE's name rule [a-z]([-a-z0-9]{{0,61}}[a-z0-9])?"),
                ));
            }
        }
        if let Some(mt) = &self.opts.machine_type {
            if !valid_name(mt) {
                out.push(Finding::new(
                    k("machine_type"),
                    format!("`{mt}` is not a machine type name"),
                ));
            }
        }
        for (field, labels) in [
            ("labels", &self.opts.labels),
            ("image_labels", &self.opts.image_labels),
        ] {
            for (lk, lv) in labels.iter() {
                if !valid_label(lk, lv) {
                    out.push(Finding::new(
                        k(field),
                        format!("label `{lk}: {lv}`: keys start with a lowercase letter; keys and values hold lowercase letters, digits, `_` and `-` (at most 63)"),
                    ));
                }
            }
        }
        for m in &self.opts.image_users {
            let ok = ["user:", "serviceAccount:", "group:", "domain:"]
                .iter()
                .any(|p| m.starts_with(p) && m.len() > p.len())
                || m == "allAuthenticatedUsers";
            if !ok {
                out.push(Finding::new(
                    k("image_users"),
                    format!("`{m}` is not an IAM member (user:, serviceAccount:, group:, domain:)"),
                ));
            }
        }
        for t in &self.opts.network_tags {
            if !valid_name(t) {
                out.push(Finding::new(
                    k("network_tags"),
                    format!("network tag `{t}` breaks the rule [a-z]([-a-z0-9]{{0,61}}[a-z0-9])?"),
                ));
            }
        }
        if let Some(p) = &self.opts.poll_interval {
            if let Err(e) = p.parse::<opsbake_core::template::Dur>() {
                out.push(Finding::new(k("poll_interval"), format!("`{p}`: {e}")));
            }
        }
        if self.plan_ssh_cidrs.is_empty() {
            out.push(Finding::new(
                "builds.gcp.network.ssh_cidrs",
                "empty: name the CIDRs allowed to reach SSH on the build VM (the temporary firewall rule allows only these)",
            ));
        }
        if let CredSource::File(p) = self.api_creds() {
            if !p.is_file() {
                out.push(Finding::new(
                    k("credentials_file"),
                    format!("{} does not exist", p.display()),
                ));
            }
        }
        out
    }
}
