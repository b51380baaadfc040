//! opsbake-iaas-gcp: the `gcp` builder (Compute Engine).
//!
//! validate (project, zone, credentials and machine type in one
//! machineTypes.get, the image name, the bucket of a heavy stemcell) → base
//! image (light: the stemcell's `image_url`, or its older `source_url`
//! imported; heavy: the `image` member streamed to Cloud Storage by a
//! resumable upload, `images.insert` with `rawDisk.source`, labelled with
//! the stemcell's sha1 and reused, the object deleted) → launch (a temporary
//! firewall rule for `network.ssh_cidrs` to the build's network tag, the
//! instance with the BOSH agent settings in the `bosh_settings` metadata
//! key) → connect (host keys from the serial console, else TOFU) → capture
//! (stop, `images.insert` from the boot disk, family, labels, storage
//! locations, IAM sharing).
//!
//! Every resource goes through `BuildContext::create_resource` (journaled
//! before its create call, the journal token as `requestId` and label);
//! operations are waited for with core's waiter. See [`cleanup`].

pub mod api;
pub mod cleanup;
pub mod error;
pub mod upload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use opsbake_core::builder::{
    Access, Artifact, BaseImage, BuildContext, BuildError, Builder, ConnectTarget, Deleted,
    Deleter, Finding, HostKeyPolicy, Made, SshAuth, SshTarget,
};
use opsbake_core::journal::Resource;
use opsbake_core::plan::BuildPlan;
use opsbake_core::template::{GcpOptions, HostKeySpec, Iaas};
use opsbake_core::wait::{Waiter, DEFAULT_TIMEOUT};
use serde_json::{json, Value};

use crate::api::{Api, CredSource};
use crate::cleanup::{
    global_id, zonal_id, CleanupConfig, GcpDeleter, BUILD_LABEL, DISK, FIREWALL, GCS_OBJECT, IMAGE,
    INSTANCE, ROLE_LABEL, SHA1_LABEL, TOKEN_LABEL,
};
use crate::error::GcpError;

/// Default machine type.
pub const DEFAULT_MACHINE_TYPE: &str = "e2-medium";
/// The metadata key the stemcell's agent reads its settings from.
pub const SETTINGS_KEY: &str = "bosh_settings";

/// Empty strings and empty list entries stand for "not set".
pub fn normalise(mut o: GcpOptions) -> GcpOptions {
    fn set(v: &mut Option<String>) {
        if v.as_deref().is_some_and(|s| s.trim().is_empty()) {
            *v = None;
        }
        if let Some(s) = v {
            *s = s.trim().to_string();
        }
    }
    fn list(v: &mut Vec<String>) {
        v.retain(|s| !s.trim().is_empty());
        v.iter_mut().for_each(|s| *s = s.trim().to_string());
    }
    set(&mut o.project_id);
    set(&mut o.zone);
    set(&mut o.machine_type);
    set(&mut o.image_name);
    set(&mut o.image_family);
    set(&mut o.image_description);
    set(&mut o.bucket);
    set(&mut o.credentials_file);
    set(&mut o.endpoint);
    set(&mut o.storage_endpoint);
    set(&mut o.poll_interval);
    list(&mut o.image_storage_locations);
    list(&mut o.image_users);
    list(&mut o.network_tags);
    o.labels.retain(|k, _| !k.trim().is_empty());
    o.image_labels.retain(|k, _| !k.trim().is_empty());
    o
}

/// `options.poll_interval` parsed (None: unset or not a duration, which
/// the offline checks report).
pub fn poll_interval(o: &GcpOptions) -> Option<std::time::Duration> {
    o.poll_interval
        .as_deref()
        .and_then(|s| s.parse::<opsbake_core::template::Dur>().ok())
        .map(|d| d.0)
}

/// The project: the option, else `GOOGLE_PROJECT_ID`, else
/// `GOOGLE_CLOUD_PROJECT` (empty values count as unset).
pub fn resolve_project(o: &GcpOptions) -> Option<String> {
    o.project_id
        .clone()
        .or_else(|| std::env::var("GOOGLE_PROJECT_ID").ok())
        .or_else(|| std::env::var("GOOGLE_CLOUD_PROJECT").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

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

/// Whether an endpoint URL names this machine (the only endpoints
/// `--offline` allows).
pub fn is_loopback_endpoint(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(h) = host_port.strip_prefix('[') {
        h.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The host keys an image prints between `-----BEGIN SSH HOST KEY KEYS-----`
/// and `-----END SSH HOST KEY KEYS-----` on its serial console.
pub fn host_keys_from_serial(text: &str) -> Vec<String> {
    let mut inside = false;
    let mut keys = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        if l.contains("-----BEGIN SSH HOST KEY KEYS-----") {
            inside = true;
        } else if l.contains("-----END SSH HOST KEY KEYS-----") {
            inside = false;
        } else if inside {
            let mut parts = l.split_whitespace();
            if let (Some(t), Some(k)) = (parts.next(), parts.next()) {
                if t.starts_with("ssh-") || t.starts_with("ecdsa-") {
                    keys.push(format!("{t} {k}"));
                }
            }
        }
    }
    keys
}

/// `projects/P/global/images/N` from an image URL or partial URL.
pub fn image_path(url: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = url.split('/').collect();
    let i = parts.iter().position(|p| *p == "projects")?;
    let project = parts.get(i + 1)?;
    let n = parts.iter().position(|p| *p == "images")?;
    let name = parts.get(n + 1)?;
    Some((project.to_string(), name.to_string()))
}

#[derive(Debug, Default, Clone)]
struct Launched {
    instance: Option<String>,
    disk: Option<String>,
}

/// The GCP builder of one plan.
pub struct GcpBuilder {
    opts: GcpOptions,
    project: Option<String>,
    zone: Option<String>,
    api: Arc<Api>,
    deleter: GcpDeleter,
    launched: tokio::sync::Mutex<Launched>,
    plan_ssh_cidrs: Vec<String>,
    image_name: String,
}

/// The builder for one plan.
pub fn builder(plan: &BuildPlan) -> Result<Arc<dyn Builder>, BuildError> {
    Ok(Arc::new(GcpBuilder::new(plan)?))
}

/// A deleter for `opsbake cleanup` from a journal's `cleanup_config`.
pub fn deleter(cleanup_config: &Value) -> Result<Arc<dyn Deleter>, BuildError> {
    let c: CleanupConfig = serde_json::from_value(cleanup_config.clone())
        .map_err(|e| GcpError::Invalid(format!("the journal's gcp cleanup config: {e}")))?;
    let mut waiter = Waiter::default();
    if let Some(ms) = c.poll_interval_ms {
        waiter.initial = std::time::Duration::from_millis(ms);
    }
    let api = Arc::new(Api::new(
        c.project.clone(),
        c.zone.clone(),
        c.endpoint.clone(),
        c.storage_endpoint.clone(),
        c.cred_source(),
        waiter,
    ));
    Ok(Arc::new(GcpDeleter {
        api,
        bucket: c.bucket.clone(),
    }))
}

impl GcpBuilder {
    /// Make the builder (no I/O; missing settings are reported by
    /// [`Builder::offline_checks`] and `validate`).
    pub fn new(plan: &BuildPlan) -> Result<GcpBuilder, BuildError> {
        let spec = plan
            .template
            .builds
            .gcp
            .as_ref()
            .ok_or_else(|| GcpError::Invalid("the template has no builds.gcp entry".into()))?;
        let opts = normalise(spec.options.clone());
        let project = resolve_project(&opts);
        let zone = opts.zone.clone();
        let mut waiter = Waiter::with_timeout(
            opts.wait_timeout
                .as_ref()
                .map(|d| d.0)
                .unwrap_or(DEFAULT_TIMEOUT),
        );
        if let Some(d) = poll_interval(&opts) {
            waiter.initial = d;
        }
        let creds = if opts.anonymous_credentials {
            CredSource::Anonymous
        } else if let Some(f) = &opts.credentials_file {
            CredSource::File(plan.template_dir.join(f))
        } else {
            CredSource::Adc
        };
        let api = Arc::new(Api::new(
            project.clone().unwrap_or_default(),
            zone.clone().unwrap_or_default(),
            opts.endpoint.clone(),
            opts.storage_endpoint.clone(),
            creds,
            waiter,
        ));
        let deleter = GcpDeleter {
            api: api.clone(),
            bucket: opts.bucket.clone(),
        };
        let image_name = opts.image_name.clone().unwrap_or_else(|| {
            let base = sanitize(&plan.template.name, 63);
            let base = if base.starts_with(|c: char| c.is_ascii_lowercase()) {
                base
            } else {
                format!("opsbake-{base}")
            };
            let id = sanitize(&plan.build_id, 40);
            let keep = 63usize.saturating_sub(id.len() + 1);
            let mut b = base;
            b.truncate(keep);
            format!("{}-{id}", b.trim_end_matches('-'))
        });
        Ok(GcpBuilder {
            plan_ssh_cidrs: plan
                .network
                .ssh_cidrs
                .iter()
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
                .collect(),
            opts,
            project,
            zone,
            api,
            deleter,
            launched: tokio::sync::Mutex::new(Launched::default()),
            image_name,
        })
    }

    /// Replace the waiter (tests: shorter delays).
    pub fn set_waiter(&mut self, w: Waiter) {
        if let Some(api) = Arc::get_mut(&mut self.api) {
            api.waiter = w;
        }
        let api = self.api.clone();
        self.deleter.api = api;
    }

    /// The project (after options and environment).
    pub fn project(&self) -> Option<&str> {
        self.project.as_deref()
    }

    /// The name of the image a build makes.
    pub fn image_name(&self) -> &str {
        &self.image_name
    }

    fn labels(&self, ctx: &BuildContext, token: &str) -> BTreeMap<String, String> {
        let mut l = self.opts.labels.clone();
        l.insert(BUILD_LABEL.into(), sanitize(ctx.build_id(), 63));
        l.insert(TOKEN_LABEL.into(), sanitize(token, 63));
        l.insert(
            "opsbake-image".into(),
            sanitize(&ctx.plan.template.name, 63),
        );
        l
    }

    fn vm_name(ctx: &BuildContext) -> String {
        format!("opsbake-{}", sanitize(ctx.build_id(), 55))
    }

    fn stemcell_path(&self, ctx: &BuildContext) -> Result<PathBuf, GcpError> {
        let s = ctx
            .plan
            .stemcell
            .as_ref()
            .ok_or_else(|| GcpError::Invalid("the template names no stemcell".into()))?;
        match (&s.path, &s.url) {
            (Some(p), _) => Ok(PathBuf::from(p)),
            (None, Some(u)) => Err(GcpError::Invalid(format!(
                "stemcell {u}: download it first (stemcell.path); URLs are not fetched by the gcp builder"
            ))),
            (None, None) => Err(GcpError::Invalid("stemcell has neither path nor url".into())),
        }
    }

    async fn manifest(
        &self,
        ctx: &BuildContext,
    ) -> Result<(PathBuf, opsbake_stemcell::Manifest), GcpError> {
        let path = self.stemcell_path(ctx)?;
        let p = path.clone();
        let st = |m: String| GcpError::Stemcell {
            path: path.clone(),
            message: m,
        };
        let m = tokio::task::spawn_blocking(move || opsbake_stemcell::read_manifest(&p))
            .await
            .map_err(|e| st(e.to_string()))?
            .map_err(|e| st(e.to_string()))?;
        if !matches!(m.iaas().as_str(), "google" | "gcp" | "gce") {
            return Err(st(format!(
                "is a stemcell for `{}`, not google ({})",
                m.iaas(),
                m.name
            )));
        }
        Ok((path, m))
    }

    fn host_key_policy(&self, ctx: &BuildContext, serial_keys: Vec<String>) -> HostKeyPolicy {
        match &ctx.plan.ssh.host_key {
            HostKeySpec::Pin(k) => HostKeyPolicy::Pin(k.clone()),
            HostKeySpec::Insecure => HostKeyPolicy::Insecure,
            HostKeySpec::Tofu if !serial_keys.is_empty() => HostKeyPolicy::Pin(serial_keys),
            HostKeySpec::Tofu => HostKeyPolicy::TrustOnFirstUse,
        }
    }

    /// A base image imported from stemcell `sha1`, READY, if one exists.
    async fn find_base_image(&self, sha1: &str) -> Result<Option<String>, GcpError> {
        let imgs = self
            .api
            .images(&format!("labels.{SHA1_LABEL} = \"{}\"", sanitize(sha1, 63)))
            .await?;
        Ok(imgs
            .iter()
            .filter(|i| i["status"] == "READY" && i["labels"][ROLE_LABEL] == "base")
            .find_map(|i| i["name"].as_str().map(str::to_string)))
    }

    /// `images.insert` from a `rawDisk.source`, waited for, kept as a cache.
    async fn import_raw(
        &self,
        ctx: &BuildContext,
        source: &str,
        sha1: &str,
        m: &opsbake_stemcell::Manifest,
    ) -> Result<String, BuildError> {
        let project = self.api.project.clone();
        let suffix: String = ctx.build_id().chars().rev().take(6).collect::<String>();
        let suffix: String = sanitize(&suffix.chars().rev().collect::<String>(), 6);
        let name = sanitize(
            &format!("opsbake-base-{}-{suffix}", &sha1[..sha1.len().min(12)]),
            63,
        );
        let features: Vec<Value> = m
            .cloud_properties
            .extra
            .get("guest_os_features")
            .and_then(|v| v.as_sequence())
            .map(|s| {
                s.iter()
                    .filter_map(|f| f.as_str())
                    .map(|f| json!({"type": f}))
                    .collect()
            })
            .unwrap_or_default();
        let api = self.api.clone();
        let (seq, op) = ctx
            .create_resource(
                IMAGE,
                &name,
                json!({"project": project, "source": source}),
                |token| {
                    let mut labels = self.labels(ctx, &token);
                    labels.insert(ROLE_LABEL.into(), "base".into());
                    labels.insert(SHA1_LABEL.into(), sanitize(sha1, 63));
                    let body = json!({
                        "name": name,
                        "description": format!("BOSH stemcell {} {} (sha1 {sha1}), imported by opsbake", m.name, m.version),
                        "rawDisk": {"source": source},
                        "guestOsFeatures": features,
                        "labels": labels,
                    });
                    let id = global_id(&project, "images", &name);
                    let project = project.clone();
                    async move {
                        let op = api.image_insert(body, &token).await?;
                        Ok::<_, GcpError>(
                            Made::new(id, op).with_data(json!({"project": project})),
                        )
                    }
                },
            )
            .await?;
        self.api
            .wait_op(&op, &format!("import image {name}"), Some(&ctx.cancel))
            .await?;
        // A cache for the next builds, whatever this build's outcome.
        ctx.keep(seq, IMAGE, &global_id(&self.api.project, "images", &name))?;
        Ok(name)
    }

    /// Heavy stemcell: the image member to GCS, imported, object deleted.
    async fn import_heavy(
        &self,
        ctx: &BuildContext,
        path: &std::path::Path,
        m: &opsbake_stemcell::Manifest,
    ) -> Result<String, BuildError> {
        let bucket = self.opts.bucket.clone().ok_or_else(|| {
            GcpError::Invalid(
                "a heavy stemcell needs builds.gcp.options.bucket (a bucket for the import)".into(),
            )
        })?;
        let object = format!("opsbake/{}/{}-{}.tar.gz", ctx.build_id(), m.name, m.version);
        let api = self.api.clone();
        let id = format!("gs://{bucket}/{object}");
        let (oseq, rep) = ctx
            .create_resource(
                GCS_OBJECT,
                &id,
                json!({"bucket": bucket, "object": object}),
                |_token| {
                    let (bucket, object, id) = (bucket.clone(), object.clone(), id.clone());
                    async move {
                        let rep =
                            upload::upload_image_member(&api, path, &bucket, &object, &m.sha1)
                                .await?;
                        Ok::<_, GcpError>(
                            Made::new(id, rep)
                                .with_data(json!({"bucket": bucket, "object": object})),
                        )
                    }
                },
            )
            .await?;
        ctx.events.info(format!(
            "uploaded the image of {} ({} MiB) to gs://{bucket}/{object} in {:.1} s (sha1 {} checked)",
            path.display(),
            rep.bytes >> 20,
            rep.seconds,
            rep.sha1
        ));
        let source = format!("https://storage.googleapis.com/{bucket}/{object}");
        let name = self.import_raw(ctx, &source, &m.sha1, m).await?;
        // The object is no longer needed once the image exists.
        self.api.object_delete(&bucket, &object).await?;
        ctx.deleted(oseq, GCS_OBJECT, &format!("gs://{bucket}/{object}"))?;
        Ok(name)
    }
}

#[async_trait]
impl Deleter for GcpBuilder {
    async fn delete(&self, res: &Resource) -> Result<Deleted, BuildError> {
        self.deleter.delete(res).await
    }

    async fn sweep(&self, build_id: &str) -> Result<Vec<Resource>, BuildError> {
        self.deleter.sweep(build_id).await
    }
}

#[async_trait]
impl Builder for GcpBuilder {
    fn iaas(&self) -> Iaas {
        Iaas::Gcp
    }

    fn cleanup_config(&self) -> Value {
        serde_json::to_value(CleanupConfig {
            project: self.api.project.clone(),
            zone: self.api.zone.clone(),
            endpoint: self.opts.endpoint.clone(),
            storage_endpoint: self.opts.storage_endpoint.clone(),
            credentials_file: match self.api_creds() {
                CredSource::File(p) => Some(p.display().to_string()),
                _ => None,
            },
            anonymous_credentials: self.opts.anonymous_credentials,
            bucket: self.opts.bucket.clone(),
            poll_interval_ms: poll_interval(&self.opts).map(|d| d.as_millis() as u64),
        })
        .unwrap_or(Value::Null)
    }

    fn offline_checks(&self) -> Vec<Finding> {
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

    async fn validate(&self, ctx: &BuildContext) -> Result<(), BuildError> {
        let findings = self.offline_checks();
        if !findings.is_empty() {
            let m: Vec<String> = findings
                .iter()
                .map(|f| format!("{}: {}", f.key, f.message))
                .collect();
            return Err(GcpError::Invalid(m.join("; ")).into());
        }
        if ctx.options.offline {
            for (what, ep) in [
                ("endpoint", self.opts.endpoint.as_deref()),
                ("storage_endpoint", self.opts.storage_endpoint.as_deref()),
            ] {
                match ep {
                    Some(e) if is_loopback_endpoint(e) => {}
                    Some(e) => {
                        return Err(GcpError::Invalid(format!(
                            "--offline: options.{what} {e} is not on this machine"
                        ))
                        .into())
                    }
                    None => {
                        return Err(GcpError::Invalid(format!(
                            "--offline: a gcp build talks to Google's APIs (set options.{what} to a loopback test server, or build without --offline)"
                        ))
                        .into())
                    }
                }
            }
            if matches!(self.api_creds(), CredSource::Adc) {
                return Err(GcpError::Invalid(
                    "--offline: Application Default Credentials may reach the metadata server; set options.credentials_file or anonymous_credentials".into(),
                )
                .into());
            }
        }
        let (path, m) = self.manifest(ctx).await?;
        let heavy = !m.is_light();
        if heavy {
            let fmt_ok = m.stemcell_formats.iter().any(|f| f == "google-rawdisk")
                || matches!(
                    m.cloud_properties.disk_format.as_deref(),
                    Some("rawdisk" | "raw")
                );
            if !fmt_ok {
                return Err(GcpError::Stemcell {
                    path,
                    message: format!(
                        "formats {:?}: not importable into GCE (google-rawdisk or google-light needed)",
                        m.stemcell_formats
                    ),
                }
                .into());
            }
        } else {
            m.light_image(None).map_err(|e| GcpError::Stemcell {
                path: path.clone(),
                message: e.to_string(),
            })?;
        }
        // Credentials, project, zone and machine type: one cheap read.
        let mt = self
            .opts
            .machine_type
            .clone()
            .unwrap_or_else(|| DEFAULT_MACHINE_TYPE.to_string());
        self.api.machine_type(&mt).await?;
        if heavy {
            let b = self.opts.bucket.clone().ok_or_else(|| {
                GcpError::Invalid(format!(
                    "{} is a heavy stemcell: set builds.gcp.options.bucket (a Cloud Storage bucket for the import)",
                    path.display()
                ))
            })?;
            if !self.api.bucket_exists(&b).await? {
                return Err(GcpError::Invalid(format!(
                    "bucket gs://{b} does not exist (builds.gcp.options.bucket)"
                ))
                .into());
            }
        }
        Ok(())
    }

    async fn base_image(&self, ctx: &BuildContext) -> Result<BaseImage, BuildError> {
        let (path, m) = self.manifest(ctx).await?;
        let mut details = BTreeMap::new();
        details.insert("stemcell".into(), format!("{} {}", m.name, m.version));
        if m.is_light() {
            let r = m.light_image(None).map_err(|e| GcpError::Stemcell {
                path: path.clone(),
                message: e.to_string(),
            })?;
            match r {
                opsbake_stemcell::CloudImageRef::GcpImage { image_url } => {
                    let (p, n) = image_path(&image_url).ok_or_else(|| GcpError::Stemcell {
                        path: path.clone(),
                        message: format!(
                            "image_url {image_url} names no projects/P/global/images/N"
                        ),
                    })?;
                    if self.api.image(&p, &n).await?.is_none() {
                        return Err(GcpError::Stemcell {
                            path,
                            message: format!("its image {image_url} does not exist (or is not visible to project {})", self.api.project),
                        }
                        .into());
                    }
                    details.insert("source".into(), "light stemcell".into());
                    return Ok(BaseImage {
                        id: global_id(&p, "images", &n),
                        details,
                    });
                }
                opsbake_stemcell::CloudImageRef::GcpSource {
                    source_url,
                    raw_disk_sha1,
                } => {
                    let key = raw_disk_sha1.clone().unwrap_or_else(|| {
                        use sha1::Digest as _;
                        hex::encode(sha1::Sha1::digest(source_url.as_bytes()))
                    });
                    let reimport = self.opts.reimport || ctx.options.reimport;
                    let name = match (reimport, self.find_base_image(&key).await?) {
                        (false, Some(n)) => n,
                        _ => self.import_raw(ctx, &source_url, &key, &m).await?,
                    };
                    details.insert("source".into(), "light stemcell (source_url)".into());
                    return Ok(BaseImage {
                        id: global_id(&self.api.project, "images", &name),
                        details,
                    });
                }
                _ => {
                    return Err(GcpError::Stemcell {
                        path,
                        message: "is light but names no GCE image".into(),
                    }
                    .into())
                }
            }
        }
        let reimport = self.opts.reimport || ctx.options.reimport;
        if !reimport {
            if let Some(name) = self.find_base_image(&m.sha1).await? {
                ctx.events.info(format!(
                    "reusing image {name}, imported earlier from stemcell sha1 {}",
                    m.sha1
                ));
                details.insert("source".into(), "reused".into());
                details.insert("stemcell_sha1".into(), m.sha1.clone());
                return Ok(BaseImage {
                    id: global_id(&self.api.project, "images", &name),
                    details,
                });
            }
        }
        let name = self.import_heavy(ctx, &path, &m).await?;
        details.insert("source".into(), "imported".into());
        details.insert("stemcell_sha1".into(), m.sha1.clone());
        Ok(BaseImage {
            id: global_id(&self.api.project, "images", &name),
            details,
        })
    }

    async fn launch(
        &self,
        ctx: &BuildContext,
        base: &BaseImage,
        access: &Access,
    ) -> Result<ConnectTarget, BuildError> {
        let plan = &ctx.plan;
        let (project, zone) = (self.api.project.clone(), self.api.zone.clone());
        let name = Self::vm_name(ctx);
        let tag = name.clone();
        let network = plan
            .network
            .network
            .clone()
            .filter(|s| !s.trim().is_empty())
            .map(|n| {
                if n.contains('/') {
                    n
                } else {
                    format!("global/networks/{n}")
                }
            })
            .unwrap_or_else(|| "global/networks/default".to_string());
        // The temporary firewall rule: TCP 22 from ssh_cidrs to this build's tag.
        let fw_name = format!("{name}-ssh");
        let api = self.api.clone();
        let (_, fw_op) = ctx
            .create_resource(FIREWALL, &fw_name, json!({"project": project}), |token| {
                let body = json!({
                    "name": fw_name,
                    "network": network,
                    "direction": "INGRESS",
                    "priority": 1000,
                    "sourceRanges": self.plan_ssh_cidrs,
                    "targetTags": [tag],
                    "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}],
                    "description": format!("opsbake build {}: SSH to the build VM only (token {token})", ctx.build_id()),
                });
                let id = global_id(&project, "firewalls", &fw_name);
                let project = project.clone();
                async move {
                    let op = api.firewall_insert(body, &token).await?;
                    Ok::<_, GcpError>(Made::new(id, op).with_data(json!({"project": project})))
                }
            })
            .await?;
        self.api
            .wait_op(
                &fw_op,
                &format!("create firewall {fw_name}"),
                Some(&ctx.cancel),
            )
            .await?;
        // The agent settings with the build's key, in `bosh_settings`.
        let keys: Vec<String> = access
            .key
            .iter()
            .map(|k| k.public_openssh.clone())
            .collect();
        let settings = opsbake_stemcell::AgentSettings::minimal(&name, keys, None);
        let settings = String::from_utf8(
            settings
                .to_json()
                .map_err(|e| BuildError::Other(format!("agent settings: {e}")))?,
        )
        .map_err(|e| BuildError::Other(format!("agent settings: {e}")))?;
        // The boot disk is made by instances.insert under the instance's
        // name; its record comes first so that a reverse unwind deletes
        // the instance (which deletes it) before looking at it.
        let dseq = ctx.intent(DISK, &name, json!({"project": project, "zone": zone}))?;
        let mt = self
            .opts
            .machine_type
            .clone()
            .unwrap_or_else(|| DEFAULT_MACHINE_TYPE.to_string());
        let public = plan.network.public_ip.unwrap_or(true);
        let mut tags = self.opts.network_tags.clone();
        tags.push(tag.clone());
        let api = self.api.clone();
        let (_, op) = ctx
            .create_resource(
                INSTANCE,
                &name,
                json!({"project": project, "zone": zone, "image": base.id}),
                |token| {
                    let labels = self.labels(ctx, &token);
                    let mut init = json!({
                        "sourceImage": base.id,
                        "labels": labels,
                    });
                    if let Some(mib) = plan.disk_mib {
                        init["diskSizeGb"] = json!(mib.div_ceil(1024).to_string());
                    }
                    let mut nic = json!({"network": network});
                    if let Some(s) = plan
                        .network
                        .subnet
                        .as_ref()
                        .filter(|s| !s.trim().is_empty())
                    {
                        nic["subnetwork"] = json!(s);
                    }
                    if public {
                        nic["accessConfigs"] =
                            json!([{"type": "ONE_TO_ONE_NAT", "name": "External NAT"}]);
                    }
                    let body = json!({
                        "name": name,
                        "machineType": format!("zones/{zone}/machineTypes/{mt}"),
                        "disks": [{
                            "boot": true,
                            "autoDelete": true,
                            "deviceName": name,
                            "initializeParams": init,
                        }],
                        "networkInterfaces": [nic],
                        "metadata": {"items": [{"key": SETTINGS_KEY, "value": settings}]},
                        "labels": labels,
                        "tags": {"items": tags},
                    });
                    let id = zonal_id(&project, &zone, "instances", &name);
                    let data = json!({"project": project, "zone": zone});
                    async move {
                        let op = api.instance_insert(body, &token).await?;
                        Ok::<_, GcpError>(Made::new(id, op).with_data(data))
                    }
                },
            )
            .await?;
        {
            let mut l = self.launched.lock().await;
            l.instance = Some(name.clone());
            l.disk = Some(name.clone());
        }
        self.api
            .wait_op(&op, &format!("create instance {name}"), Some(&ctx.cancel))
            .await?;
        ctx.created(
            dseq,
            DISK,
            &zonal_id(&project, &zone, "disks", &name),
            json!({"project": project, "zone": zone}),
        )?;
        let inst = self.api.instance(&zone, &name).await?.ok_or_else(|| {
            GcpError::Invalid(format!(
                "instance {name} (project {project}, {zone}) vanished right after its insert finished"
            ))
        })?;
        let nic = &inst["networkInterfaces"][0];
        let private = nic["networkIP"].as_str().map(str::to_string);
        let public_ip = nic["accessConfigs"][0]["natIP"]
            .as_str()
            .map(str::to_string);
        let host = match plan.ssh.host.as_deref().map(str::trim) {
            Some(h) if !h.is_empty() => h.to_string(),
            _ => match plan.ssh.interface.as_deref() {
                Some("private") => private,
                Some("public") => public_ip,
                _ => public_ip.or(private),
            }
            .ok_or_else(|| {
                GcpError::Invalid(format!(
                    "instance {name} (project {project}, {zone}) has no address to connect to (ssh.interface, network.public_ip)"
                ))
            })?,
        };
        let serial = match self.api.serial_output(&name).await {
            Ok(t) => host_keys_from_serial(&t),
            Err(e) => {
                tracing::debug!(instance = %name, error = %e, "no serial console output");
                Vec::new()
            }
        };
        if !serial.is_empty() {
            ctx.events.info(format!(
                "pinning {} host key(s) {name} printed on its serial console",
                serial.len()
            ));
        }
        let auth = if let Some(p) = &plan.ssh.private_key_file {
            SshAuth::KeyFile(p.clone())
        } else if let Some(k) = &access.key {
            SshAuth::Key(k.clone())
        } else if let Some(p) = &plan.ssh.password {
            SshAuth::Password(p.clone())
        } else {
            return Err(GcpError::Invalid(
                "no way to log in: no ephemeral key, ssh.private_key_file or ssh.password".into(),
            )
            .into());
        };
        let bastion = plan.ssh.bastion.as_ref().map(|b| {
            Box::new(SshTarget {
                host: b.host.clone(),
                port: b.port,
                user: b.user.clone(),
                auth: match &b.private_key_file {
                    Some(p) => SshAuth::KeyFile(p.clone()),
                    None => auth.clone(),
                },
                host_key: match &b.host_key {
                    HostKeySpec::Pin(k) => HostKeyPolicy::Pin(k.clone()),
                    HostKeySpec::Insecure => HostKeyPolicy::Insecure,
                    HostKeySpec::Tofu => HostKeyPolicy::TrustOnFirstUse,
                },
                login_timeout: plan.ssh.login_timeout,
                bastion: None,
            })
        });
        Ok(ConnectTarget::Ssh(SshTarget {
            host,
            port: plan.ssh.port.unwrap_or(22),
            user: plan.ssh.user.clone(),
            auth,
            host_key: self.host_key_policy(ctx, serial),
            login_timeout: plan.ssh.login_timeout,
            bastion,
        }))
    }

    async fn capture(&self, ctx: &BuildContext) -> Result<Artifact, BuildError> {
        let l = self.launched.lock().await.clone();
        let (Some(inst), Some(disk)) = (l.instance, l.disk) else {
            return Err(BuildError::Other(
                "capture without a launched instance".into(),
            ));
        };
        let (project, zone) = (self.api.project.clone(), self.api.zone.clone());
        let op = self.api.instance_verb(&zone, &inst, "stop").await?;
        self.api
            .wait_op(&op, &format!("stop instance {inst}"), Some(&ctx.cancel))
            .await?;
        let name = self.image_name.clone();
        let api = self.api.clone();
        let (seq, op) = ctx
            .create_resource(
                IMAGE,
                &name,
                json!({"project": project, "disk": disk}),
                |token| {
                    let mut labels = self.labels(ctx, &token);
                    labels.extend(self.opts.image_labels.clone());
                    let mut body = json!({
                        "name": name,
                        "sourceDisk": format!("projects/{project}/zones/{zone}/disks/{disk}"),
                        "labels": labels,
                        "description": self.opts.image_description.clone().unwrap_or_else(|| {
                            format!("{} built by opsbake (build {})", ctx.plan.template.name, ctx.build_id())
                        }),
                    });
                    if let Some(f) = &self.opts.image_family {
                        body["family"] = json!(f);
                    }
                    if !self.opts.image_storage_locations.is_empty() {
                        body["storageLocations"] = json!(self.opts.image_storage_locations);
                    }
                    let id = global_id(&project, "images", &name);
                    let project = project.clone();
                    async move {
                        let op = api.image_insert(body, &token).await?;
                        Ok::<_, GcpError>(Made::new(id, op).with_data(json!({"project": project})))
                    }
                },
            )
            .await?;
        self.api
            .wait_op(&op, &format!("create image {name}"), Some(&ctx.cancel))
            .await?;
        if !self.opts.image_users.is_empty() {
            self.api.share_image(&name, &self.opts.image_users).await?;
        }
        let id = global_id(&project, "images", &name);
        ctx.keep(seq, IMAGE, &id)?;
        let img = self
            .api
            .image(&project, &name)
            .await?
            .unwrap_or(Value::Null);
        let mut custom = BTreeMap::new();
        custom.insert("project".into(), project.clone());
        custom.insert("zone".into(), zone.clone());
        custom.insert("image_name".into(), name.clone());
        if let Some(f) = &self.opts.image_family {
            custom.insert("image_family".into(), f.clone());
        }
        if let Some(s) = img["selfLink"].as_str() {
            custom.insert("self_link".into(), s.to_string());
        }
        Ok(Artifact {
            id: name,
            files: Vec::new(),
            custom_data: custom,
        })
    }
}

impl GcpBuilder {
    fn api_creds(&self) -> CredSource {
        self.api.cred_source()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_labels_and_keys() {
        assert!(valid_name("appliance-1"));
        assert!(!valid_name("Appliance"));
        assert!(!valid_name("1appliance"));
        assert!(!valid_name("appliance-"));
        assert!(!valid_name(&"a".repeat(64)));
        assert!(valid_label(
            "opsbake-build-id",
            "ob-20261205-223315-gcp-abc123"
        ));
        assert!(!valid_label("Env", "x"));
        assert_eq!(sanitize("My_Appliance 2.0", 63), "my-appliance-2-0");
        assert!(is_loopback_endpoint("http://127.0.0.1:8080/"));
        assert!(!is_loopback_endpoint("https://compute.googleapis.com"));
        let text = "boot\r\n-----BEGIN SSH HOST KEY KEYS-----\r\nssh-ed25519 AAAAC3 root@h\r\necdsa-sha2-nistp256 AAAAE2 root@h\r\n-----END SSH HOST KEY KEYS-----\r\n";
        assert_eq!(
            host_keys_from_serial(text),
            ["ssh-ed25519 AAAAC3", "ecdsa-sha2-nistp256 AAAAE2"]
        );
        assert_eq!(
            image_path("https://www.googleapis.com/compute/v1/projects/bosh-cpi/global/images/x-1"),
            Some(("bosh-cpi".into(), "x-1".into()))
        );
    }
}
