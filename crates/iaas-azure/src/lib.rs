//! opsbake-iaas-azure: the `azure` builder.
//!
//! validate (subscription, credentials, resource group, VM size in the
//! location, names, storage for a heavy stemcell) → base image ([`image`]:
//! light: the marketplace reference of the MF; heavy: the fixed VHD streamed
//! into a page blob, then a managed image tagged with the stemcell's sha1 and
//! reused) → launch ([`launch`]: a temporary resource group per build, or
//! resources one by one in a given group; network, NSG for
//! `network.ssh_cidrs`, optional public IP, NIC, the VM with the agent
//! settings in customData) → capture ([`capture`]: power off, deallocate,
//! generalize, managed image and/or gallery image version with replication
//! progress). Every resource goes through `create_resource` (journaled
//! before its create call, tagged with the build id and its token);
//! [`cleanup`] deletes them. ARM calls: [`arm`]; blobs: [`blob`].

pub mod arm;
pub mod blob;
pub mod capture;
pub mod checks;
pub mod cleanup;
pub mod credential;
pub mod error;
pub mod image;
pub mod launch;
pub mod sas;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use opsbake_core::builder::{
    Access, Artifact, BaseImage, BuildContext, BuildError, Builder, ConnectTarget, Deleted,
    Deleter, Finding,
};
use opsbake_core::journal::Resource;
use opsbake_core::options::AzureOptions;
use opsbake_core::plan::BuildPlan;
use opsbake_core::template::Iaas;
use opsbake_core::wait::Waiter;

use crate::arm::{api, Arm};
use crate::checks::set;
use crate::cleanup::{AzureDeleter, CleanupConfig, BUILD_TAG, TOKEN_TAG};
use crate::error::AzureError;

/// Default VM size.
pub const DEFAULT_VM_SIZE: &str = "Standard_D2s_v3";
/// Default container of VHD blobs.
pub const DEFAULT_CONTAINER: &str = "opsbake-vhds";

/// Access to blob storage: an account SAS (from `AZURE_STORAGE_KEY`, or
/// azurite's development key on a loopback endpoint) or a token credential.
#[derive(Clone)]
pub struct Storage {
    /// `https://acct.blob.core.windows.net` or azurite's account URL.
    pub endpoint: url::Url,
    /// SAS.
    pub sas: Option<sas::AccountSas>,
    /// Token credential (https).
    pub credential: Option<Arc<dyn TokenCredential>>,
}

fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

/// Storage access for `account` at `endpoint` (option, else the public
/// cloud's), signing a SAS when `AZURE_STORAGE_KEY` is set (or azurite's
/// well-known key on loopback), else the credential.
pub fn storage(
    account: Option<&str>,
    endpoint: Option<&str>,
    credential: Arc<dyn TokenCredential>,
) -> Result<Option<Storage>, AzureError> {
    let ep = match (endpoint, account) {
        (Some(e), _) => e.trim_end_matches('/').to_string(),
        (None, Some(a)) => format!("https://{a}.blob.core.windows.net"),
        (None, None) => return Ok(None),
    };
    let endpoint = url::Url::parse(&ep)
        .map_err(|e| AzureError::Invalid(format!("storage endpoint {ep}: {e}")))?;
    let acct = account
        .map(str::to_string)
        .or_else(|| {
            endpoint
                .path_segments()
                .and_then(|mut s| s.next().map(str::to_string))
        })
        .unwrap_or_default();
    let key = std::env::var("AZURE_STORAGE_KEY")
        .ok()
        .filter(|k| !k.trim().is_empty())
        .or_else(|| {
            (is_loopback(&endpoint) && acct == sas::DEV_ACCOUNT).then(|| sas::DEV_KEY.to_string())
        });
    let sas = match key {
        Some(k) => Some(sas::AccountSas::sign(
            &acct,
            &k,
            time::OffsetDateTime::now_utc() + time::Duration::hours(12),
        )?),
        None => None,
    };
    if sas.is_none() && endpoint.scheme() != "https" {
        return Err(AzureError::Invalid(format!(
            "storage endpoint {ep} is not https: token credentials need https; set AZURE_STORAGE_KEY to sign a SAS"
        )));
    }
    Ok(Some(Storage {
        endpoint,
        sas,
        credential: Some(credential),
    }))
}

/// What launch found, for capture.
#[derive(Debug, Default, Clone)]
pub struct Launched {
    /// The VM's id.
    pub vm: Option<String>,
    /// The resource group the VM is in.
    pub group: Option<String>,
    /// Gen1/Gen2 of the base image (`V1`/`V2`).
    pub generation: String,
}

/// The azure builder of one plan.
pub struct AzureBuilder {
    /// Options (empty strings already unset).
    pub opts: AzureOptions,
    /// Location.
    pub location: String,
    /// Images' resource group.
    pub resource_group: String,
    /// ARM client.
    pub arm: Arm,
    /// Blob storage (heavy stemcells).
    pub storage: Option<Storage>,
    /// Waits.
    pub waiter: Waiter,
    pub(crate) launched: tokio::sync::Mutex<Launched>,
    pub(crate) base_seq: tokio::sync::Mutex<Option<(u64, String)>>,
    subscription: String,
    endpoint: String,
    ssh_cidrs_empty: bool,
}

/// The builder for one plan (credentials from the chain of [`credential`]).
pub fn builder(plan: &BuildPlan) -> Result<Arc<dyn Builder>, BuildError> {
    let spec = plan
        .template
        .builds
        .azure
        .as_ref()
        .ok_or_else(|| AzureError::Invalid("the template has no builds.azure entry".into()))?;
    let cred = credential::chain(spec.options.use_managed_identity)?;
    Ok(Arc::new(AzureBuilder::new(plan, cred)?))
}

impl AzureBuilder {
    /// Make the builder with this credential (no I/O).
    pub fn new(
        plan: &BuildPlan,
        credential: Arc<dyn TokenCredential>,
    ) -> Result<AzureBuilder, AzureError> {
        let spec =
            plan.template.builds.azure.as_ref().ok_or_else(|| {
                AzureError::Invalid("the template has no builds.azure entry".into())
            })?;
        let opts = spec.options.clone();
        let subscription = checks::subscription(&opts).unwrap_or_default();
        let location = set(&opts.location).unwrap_or_default();
        let resource_group = set(&opts.resource_group).unwrap_or_default();
        let endpoint = set(&opts.endpoint).unwrap_or_else(|| arm::DEFAULT_ENDPOINT.to_string());
        let mut waiter = Waiter::with_timeout(
            opts.wait_timeout
                .as_ref()
                .map(|d| d.0)
                .unwrap_or(opsbake_core::wait::DEFAULT_TIMEOUT),
        );
        if let Some(p) = set(&opts.poll_interval) {
            let d: opsbake_core::template::Dur = p.parse().map_err(|e| {
                AzureError::Invalid(format!("builds.azure.options.poll_interval: {e}"))
            })?;
            waiter.initial = d.0;
            waiter.max = waiter.max.max(d.0);
        }
        let arm = Arm::new(&endpoint, &subscription, credential.clone(), waiter)?;
        let storage = storage(
            set(&opts.storage_account).as_deref(),
            set(&opts.storage_endpoint).as_deref(),
            credential.clone(),
        )?;
        Ok(AzureBuilder {
            opts,
            location,
            resource_group,
            arm,
            storage,
            waiter,
            launched: tokio::sync::Mutex::new(Launched::default()),
            base_seq: tokio::sync::Mutex::new(None),
            subscription,
            endpoint,
            ssh_cidrs_empty: plan.ssh_cidrs().is_empty(),
        })
    }

    /// Replace the waiter (tests: short delays).
    pub fn set_waiter(&mut self, w: Waiter) {
        self.waiter = w;
        self.arm.waiter = w;
    }

    /// The ARM client with the build's cancel token.
    pub fn arm_for(&self, ctx: &BuildContext) -> Arm {
        let mut a = self.arm.clone();
        a.cancel = Some(ctx.cancel.clone());
        a
    }

    /// Tags of a resource of this build.
    pub fn tags(&self, ctx: &BuildContext, token: &str) -> BTreeMap<String, String> {
        let mut t = BTreeMap::new();
        t.insert(BUILD_TAG.to_string(), ctx.build_id().to_string());
        t.insert(TOKEN_TAG.to_string(), token.to_string());
        t.insert("opsbake-image".to_string(), ctx.plan.template.name.clone());
        t
    }

    fn deleter(&self) -> AzureDeleter {
        AzureDeleter {
            arm: self.arm.clone(),
            storage: self.storage.clone(),
        }
    }

    /// The build's wait scope for messages.
    pub fn scope(&self) -> String {
        format!("{} (subscription {})", self.location, self.subscription)
    }
}

#[async_trait]
impl Deleter for AzureBuilder {
    async fn delete(&self, res: &Resource) -> Result<Deleted, BuildError> {
        self.deleter().delete(res).await
    }

    async fn sweep(&self, build_id: &str) -> Result<Vec<Resource>, BuildError> {
        self.deleter().sweep(build_id).await
    }
}

#[async_trait]
impl Builder for AzureBuilder {
    fn iaas(&self) -> Iaas {
        Iaas::Azure
    }

    fn cleanup_config(&self) -> serde_json::Value {
        serde_json::to_value(CleanupConfig {
            subscription: self.subscription.clone(),
            endpoint: self.endpoint.clone(),
            location: self.location.clone(),
            storage_endpoint: self.storage.as_ref().map(|s| s.endpoint.to_string()),
            storage_account: set(&self.opts.storage_account),
            use_managed_identity: self.opts.use_managed_identity,
        })
        .unwrap_or(serde_json::Value::Null)
    }

    fn offline_checks(&self) -> Vec<Finding> {
        checks::findings(&self.opts, self.ssh_cidrs_empty)
    }

    async fn validate(&self, ctx: &BuildContext) -> Result<(), BuildError> {
        let f = checks::findings(&self.opts, ctx.plan.ssh_cidrs().is_empty());
        if let Some(x) = f.first() {
            return Err(AzureError::Invalid(format!("{}: {}", x.key, x.message)).into());
        }
        let arm = self.arm_for(ctx);
        // Credentials and the subscription, the group, the size: read calls only.
        let rg = arm.rg_id(&self.resource_group);
        if arm.get(&rg, None).await?.is_none() && !self.opts.create_resource_group {
            return Err(AzureError::Api {
                op: "GET resourceGroups".into(),
                resource: rg,
                status: 404,
                code: "ResourceGroupNotFound".into(),
                message: format!(
                    "resource group {} does not exist in subscription {}: create it or set create_resource_group: true",
                    self.resource_group, self.subscription
                ),
            }
            .into());
        }
        if let Some(g) = set(&self.opts.build_resource_group) {
            if arm.get(&arm.rg_id(&g), None).await?.is_none() {
                return Err(AzureError::Invalid(format!(
                    "build_resource_group {g} does not exist in subscription {}",
                    self.subscription
                ))
                .into());
            }
        }
        let size = set(&self.opts.vm_size).unwrap_or_else(|| DEFAULT_VM_SIZE.to_string());
        let sizes = arm
            .list(
                &format!(
                    "{}/providers/Microsoft.Compute/locations/{}/vmSizes",
                    arm.sub(),
                    self.location
                ),
                api::COMPUTE,
            )
            .await?;
        if !sizes
            .iter()
            .any(|s| s.get("name").and_then(|n| n.as_str()) == Some(size.as_str()))
        {
            return Err(AzureError::Invalid(format!(
                "VM size {size} is not offered in {} ({} sizes there)",
                self.location,
                sizes.len()
            ))
            .into());
        }
        // The stemcell: heavy needs storage.
        let (path, m) = self.manifest(ctx).await?;
        if m.is_light() {
            m.light_image(None).map_err(|e| AzureError::Stemcell {
                path: path.clone(),
                message: e.to_string(),
            })?;
        } else if self.storage.is_none() {
            return Err(AzureError::Invalid(format!(
                "stemcell {} is heavy: set storage_account (or storage_endpoint) for its VHD page blob",
                path.display()
            ))
            .into());
        }
        tracing::info!(location = %self.location, size, credential = credential::describe(), "azure: validated");
        Ok(())
    }

    async fn base_image(&self, ctx: &BuildContext) -> Result<BaseImage, BuildError> {
        self.base(ctx).await
    }

    async fn launch(
        &self,
        ctx: &BuildContext,
        base: &BaseImage,
        access: &Access,
    ) -> Result<ConnectTarget, BuildError> {
        self.launch_vm(ctx, base, access).await
    }

    async fn capture(&self, ctx: &BuildContext) -> Result<Artifact, BuildError> {
        self.capture_image(ctx).await
    }
}

/// A deleter for `opsbake cleanup` from a journal's `cleanup_config`.
pub fn deleter(cleanup_config: &serde_json::Value) -> Result<Arc<dyn Deleter>, BuildError> {
    let c: CleanupConfig = serde_json::from_value(cleanup_config.clone())
        .map_err(|e| AzureError::Invalid(format!("the journal's azure cleanup_config: {e}")))?;
    let cred = credential::chain(c.use_managed_identity)?;
    deleter_with(&c, cred)
}

/// [`deleter`] with a given credential.
pub fn deleter_with(
    c: &CleanupConfig,
    cred: Arc<dyn TokenCredential>,
) -> Result<Arc<dyn Deleter>, BuildError> {
    let arm = Arm::new(
        &c.endpoint,
        &c.subscription,
        cred.clone(),
        Waiter {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(10),
            timeout: Duration::from_secs(30 * 60),
        },
    )?;
    let storage = storage(
        c.storage_account.as_deref(),
        c.storage_endpoint.as_deref(),
        cred,
    )?;
    Ok(Arc::new(AzureDeleter { arm, storage }))
}
