//! opsbake-iaas-aws: the `aws` builder.
//!
//! One module per step, in build order, so that "how does AWS do X" has one
//! place (the layout the gcp, azure and vsphere builders follow):
//!
//! | step | module |
//! |---|---|
//! | options, defaults, cleanup config | [`options`] |
//! | offline checks (region, AMI name, copy regions; `opsbake validate` reports them) | [`checks`] |
//! | validate (offline rules, stemcell, credentials and instance type in one call) | [`validate`] |
//! | base image (light AMI, reuse by stemcell sha1, heavy import) | [`base_image`], with the uploads in [`import`] (EBS direct) and [`s3import`] (`import: s3`) |
//! | launch (key pair, security group, RunInstances with the agent settings) | [`launch`] |
//! | connect (address, console host keys, the SSH target) | [`connect`] |
//! | capture (stop, CreateImage, encryption, copies) | [`capture`] |
//! | copy and share (CopyImage, permissions, deprecation, snapshots) | [`copy`] |
//! | resources: each kind's create beside its delete, the sweep | [`resources`] |
//! | waiters (core's waiter with AWS's transient errors) | [`wait`] |
//!
//! Every resource is created through `BuildContext::create_resource`
//! (journaled before its create call, tagged with the build id and its
//! journal token); see [`resources`] for deletion. This file only wires the
//! [`Builder`] impl.

pub mod base_image;
pub mod capture;
pub mod checks;
pub mod clients;
pub mod connect;
pub mod copy;
pub mod error;
pub mod import;
pub mod launch;
pub mod options;
pub mod resources;
pub mod s3import;
pub mod validate;
pub mod wait;

/// The deleting side of [`resources`] under its former name.
pub use resources as cleanup;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use opsbake_core::builder::{
    Access, Artifact, BaseImage, BuildContext, BuildError, Builder, ConnectTarget, Deleted, Deleter,
};
use opsbake_core::journal::Resource;
use opsbake_core::plan::BuildPlan;
use opsbake_core::template::{AwsOptions, Iaas};

pub use crate::connect::host_keys_from_console;
pub use crate::options::{
    is_loopback_endpoint, normalise, CleanupConfig, DEFAULT_INSTANCE_TYPE,
    DEFAULT_UPLOAD_CONCURRENCY,
};
pub use crate::resources::STEMCELL_SHA1_TAG;

use crate::clients::Clients;
use crate::error::AwsError;
use crate::options::all_regions;
use crate::resources::AwsDeleter;
use crate::wait::Waiter;

/// What `launch` found out, for `capture`.
#[derive(Debug, Default, Clone)]
pub(crate) struct Launched {
    pub(crate) instance: Option<String>,
}

/// The AWS builder of one plan.
pub struct AwsBuilder {
    pub(crate) opts: AwsOptions,
    pub(crate) checked: checks::Checked,
    pub(crate) region: String,
    pub(crate) clients: Arc<Clients>,
    pub(crate) deleter: AwsDeleter,
    pub(crate) waiter: Waiter,
    pub(crate) launched: tokio::sync::Mutex<Launched>,
}

/// The builder for one plan.
pub fn builder(plan: &BuildPlan) -> Result<Arc<dyn Builder>, BuildError> {
    Ok(Arc::new(AwsBuilder::new(plan)?))
}

impl AwsBuilder {
    /// Make the builder (no I/O).
    pub fn new(plan: &BuildPlan) -> Result<AwsBuilder, BuildError> {
        let spec = plan
            .template
            .builds
            .aws
            .as_ref()
            .ok_or_else(|| AwsError::Invalid("the template has no builds.aws entry".into()))?;
        let opts = normalise(spec.options.clone());
        let region = checks::resolve_region(&opts, &checks::process_env)
            .ok_or_else(|| checks::no_region(plan))?;
        let checked = checks::check(plan, Some(&region), &checks::process_env);
        let clients = Arc::new(Clients::new(&region, opts.endpoint.clone()));
        let waiter = Waiter::with_timeout(
            opts.wait_timeout
                .as_ref()
                .map(|d| d.0)
                .unwrap_or(wait::DEFAULT_TIMEOUT),
        );
        let deleter = AwsDeleter::new(clients.clone(), all_regions(&region, &opts), waiter)
            .with_bucket(opts.import_bucket.clone());
        Ok(AwsBuilder {
            opts,
            checked,
            region,
            clients,
            deleter,
            waiter,
            launched: tokio::sync::Mutex::new(Launched::default()),
        })
    }

    /// Replace the waiter (tests: shorter delays).
    pub fn set_waiter(&mut self, w: Waiter) {
        self.waiter = w;
        self.deleter.waiter = w;
    }

    /// The build's region.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The cleanup config of this build (see [`deleter`]).
    pub fn cleanup(&self) -> CleanupConfig {
        CleanupConfig {
            region: Some(self.region.clone()),
            regions: all_regions(&self.region, &self.opts),
            endpoint: self.opts.endpoint.clone(),
            import_bucket: self.opts.import_bucket.clone(),
        }
    }
}

#[async_trait]
impl Deleter for AwsBuilder {
    async fn delete(&self, res: &Resource) -> Result<Deleted, BuildError> {
        self.deleter.delete(res).await
    }

    async fn sweep(&self, build_id: &str) -> Result<Vec<Resource>, BuildError> {
        self.deleter.sweep(build_id).await
    }
}

#[async_trait]
impl Builder for AwsBuilder {
    fn iaas(&self) -> Iaas {
        Iaas::Aws
    }

    fn offline_checks(&self) -> Vec<opsbake_core::builder::Finding> {
        self.checked.errors.clone()
    }

    fn offline_warnings(&self) -> Vec<opsbake_core::builder::Finding> {
        self.checked.warnings.clone()
    }

    fn cleanup_config(&self) -> serde_json::Value {
        serde_json::to_value(self.cleanup()).unwrap_or(serde_json::Value::Null)
    }

    async fn validate(&self, ctx: &BuildContext) -> Result<(), BuildError> {
        self.validate_build(ctx).await
    }

    async fn base_image(&self, ctx: &BuildContext) -> Result<BaseImage, BuildError> {
        self.find_or_import(ctx).await
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

/// A deleter for `opsbake cleanup` from a journal's `cleanup_config`
/// ([`CleanupConfig`]).
pub fn deleter(cleanup_config: &serde_json::Value) -> Result<Arc<dyn Deleter>, BuildError> {
    let cfg: CleanupConfig = serde_json::from_value(cleanup_config.clone())
        .map_err(|e| AwsError::Invalid(format!("the journal's cleanup_config: {e}")))?;
    let region = cfg
        .region
        .filter(|r| !r.is_empty())
        .ok_or_else(|| AwsError::Invalid("the journal's cleanup_config has no region".into()))?;
    let mut regions = vec![region.clone()];
    for r in cfg.regions {
        if !regions.contains(&r) {
            regions.push(r);
        }
    }
    let clients = Arc::new(Clients::new(&region, cfg.endpoint));
    Ok(Arc::new(
        AwsDeleter::new(
            clients,
            regions,
            Waiter::with_timeout(Duration::from_secs(15 * 60)),
        )
        .with_bucket(cfg.import_bucket),
    ))
}
