//! opsbake-iaas-gcp: the `gcp` builder (Compute Engine).
//!
//! One module per step, in build order, as in iaas-aws:
//!
//! | step | module |
//! |---|---|
//! | options, defaults, project from the environment | [`options`] |
//! | offline checks (required settings, GCE's name and label rules) | [`checks`] |
//! | validate (project, zone, credentials and machine type in one `machineTypes.get`, the bucket of a heavy stemcell) | [`validate`] |
//! | base image (light: the stemcell's `image_url`, or its older `source_url` imported; heavy: the `image` member streamed to Cloud Storage by a resumable upload ([`upload`]), `images.insert` with `rawDisk.source`, labelled with the stemcell's sha1 and reused, the object deleted) | [`base_image`] |
//! | launch (a temporary firewall rule for `network.ssh_cidrs` to the build's network tag, the instance with the BOSH agent settings in the `bosh_settings` metadata key) | [`launch`] |
//! | connect (host keys from the serial console, else TOFU; loopback endpoints) | [`connect`] |
//! | capture (stop, `images.insert` from the boot disk, family, labels, storage locations, IAM sharing) | [`capture`] |
//! | resources: deleting each kind, the sweep, the cleanup config | [`cleanup`] |
//! | the REST calls and operation waits (core's waiter) | [`api`] |
//!
//! Every resource goes through `BuildContext::create_resource` (journaled
//! before its create call, the journal token as `requestId` and label);
//! operations are waited for with core's waiter. This file only wires the
//! [`Builder`] impl.

pub mod api;
pub mod base_image;
pub mod capture;
pub mod checks;
pub mod cleanup;
pub mod connect;
pub mod error;
pub mod launch;
pub mod options;
pub mod upload;
pub mod validate;

pub use crate::base_image::image_path;
pub use crate::checks::{sanitize, valid_label, valid_name};
pub use crate::connect::{host_keys_from_serial, is_loopback_endpoint};
pub use crate::options::{
    normalise, poll_interval, resolve_project, DEFAULT_MACHINE_TYPE, SETTINGS_KEY,
};

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use opsbake_core::builder::{
    Access, Artifact, BaseImage, BuildContext, BuildError, Builder, ConnectTarget, Deleted,
    Deleter, Finding,
};
use opsbake_core::journal::Resource;
use opsbake_core::plan::BuildPlan;
use opsbake_core::template::{GcpOptions, Iaas};
use opsbake_core::wait::{Waiter, DEFAULT_TIMEOUT};
use serde_json::Value;

use crate::api::{Api, CredSource};
use crate::cleanup::{CleanupConfig, GcpDeleter, BUILD_LABEL, TOKEN_LABEL};
use crate::error::GcpError;

#[derive(Debug, Default, Clone)]
pub(crate) struct Launched {
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
        self.offline_findings()
    }

    async fn validate(&self, ctx: &BuildContext) -> Result<(), BuildError> {
        self.validate_all(ctx).await
    }

    async fn base_image(&self, ctx: &BuildContext) -> Result<BaseImage, BuildError> {
        self.make_base_image(ctx).await
    }

    async fn launch(
        &self,
        ctx: &BuildContext,
        base: &BaseImage,
        access: &Access,
    ) -> Result<ConnectTarget, BuildError> {
        self.launch_instance(ctx, base, access).await
    }

    async fn capture(&self, ctx: &BuildContext) -> Result<Artifact, BuildError> {
        self.capture_image(ctx).await
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
