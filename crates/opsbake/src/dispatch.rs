//! The one place that maps an IaaS to its builder and deleter.

use std::path::Path;
use std::sync::Arc;

use opsbake_core::builder::{BuildError, Builder, Deleter};
use opsbake_core::plan::BuildPlan;
use opsbake_core::template::Iaas;

/// Whether the IaaS has a working builder in this version.
pub fn implemented(iaas: Iaas) -> bool {
    matches!(
        iaas,
        Iaas::Localtest
            | Iaas::Ssh
            | Iaas::Aws
            | Iaas::Gcp
            | Iaas::Azure
            | Iaas::Vsphere
            | Iaas::Vbox
    )
}

/// The builder for a plan.
pub fn builder(plan: &BuildPlan, state_dir: &Path) -> Result<Arc<dyn Builder>, BuildError> {
    match plan.iaas {
        Iaas::Aws => opsbake_iaas_aws::builder(plan),
        Iaas::Gcp => opsbake_iaas_gcp::builder(plan),
        Iaas::Azure => opsbake_iaas_azure::builder(plan),
        Iaas::Vsphere => opsbake_iaas_vsphere::builder(plan),
        Iaas::Vbox => opsbake_iaas_vbox::builder(plan),
        Iaas::Ssh => opsbake_provision::ssh_builder::builder(plan),
        Iaas::Localtest => crate::localtest::builder(plan, state_dir),
    }
}

/// A deleter for `opsbake cleanup`, from a journal header.
pub fn deleter(iaas: &str, cfg: &serde_json::Value) -> Result<Arc<dyn Deleter>, BuildError> {
    let i: Iaas = iaas.parse().map_err(BuildError::Other)?;
    match i {
        Iaas::Aws => opsbake_iaas_aws::deleter(cfg),
        Iaas::Gcp => opsbake_iaas_gcp::deleter(cfg),
        Iaas::Azure => opsbake_iaas_azure::deleter(cfg),
        Iaas::Vsphere => opsbake_iaas_vsphere::deleter(cfg),
        Iaas::Vbox => opsbake_iaas_vbox::deleter(cfg),
        Iaas::Ssh => Ok(Arc::new(NothingToDelete)),
        Iaas::Localtest => Ok(Arc::new(crate::localtest::LocaltestDeleter::from_config(
            cfg,
        )?)),
    }
}

/// The `ssh` builder creates nothing but local files, which core deletes.
struct NothingToDelete;

#[async_trait::async_trait]
impl Deleter for NothingToDelete {
    async fn delete(
        &self,
        res: &opsbake_core::journal::Resource,
    ) -> Result<opsbake_core::builder::Deleted, BuildError> {
        Err(BuildError::Other(format!(
            "unknown resource kind `{}` in an ssh build",
            res.kind
        )))
    }
}
