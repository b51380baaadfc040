//! The one place that maps an IaaS to its builder and deleter: one line per
//! IaaS (the match is exhaustive, so an IaaS added to core's table without
//! its line here does not compile).

use std::path::Path;
use std::sync::Arc;

use opsbake_core::builder::{BuildError, Builder, Deleter};
use opsbake_core::plan::BuildPlan;
use opsbake_core::template::Iaas;

/// Makes the builder of a plan (`state_dir` for builders that keep files).
type MakeBuilder = fn(&BuildPlan, &Path) -> Result<Arc<dyn Builder>, BuildError>;
/// Makes the deleter of `opsbake cleanup` from a journal header's config.
type MakeDeleter = fn(&serde_json::Value) -> Result<Arc<dyn Deleter>, BuildError>;

/// The builder and deleter of each IaaS.
fn entry(iaas: Iaas) -> (MakeBuilder, MakeDeleter) {
    use opsbake_iaas_aws as aws;
    use opsbake_iaas_azure as azure;
    use opsbake_iaas_gcp as gcp;
    use opsbake_iaas_vbox as vbox;
    use opsbake_iaas_vsphere as vsphere;
    #[rustfmt::skip]
    let e: (MakeBuilder, MakeDeleter) = match iaas {
        Iaas::Aws => (|p, _| aws::builder(p), aws::deleter),
        Iaas::Gcp => (|p, _| gcp::builder(p), gcp::deleter),
        Iaas::Azure => (|p, _| azure::builder(p), azure::deleter),
        Iaas::Vsphere => (|p, _| vsphere::builder(p), vsphere::deleter),
        Iaas::Vbox => (|p, _| vbox::builder(p), vbox::deleter),
        Iaas::Ssh => (|p, _| opsbake_provision::ssh_builder::builder(p), |_| Ok(Arc::new(NothingToDelete))),
        Iaas::Localtest => (crate::localtest::builder, |c| Ok(Arc::new(crate::localtest::LocaltestDeleter::from_config(c)?))),
    };
    e
}

/// The builder for a plan.
pub fn builder(plan: &BuildPlan, state_dir: &Path) -> Result<Arc<dyn Builder>, BuildError> {
    (entry(plan.iaas).0)(plan, state_dir)
}

/// A deleter for `opsbake cleanup`, from a journal header.
pub fn deleter(iaas: &str, cfg: &serde_json::Value) -> Result<Arc<dyn Deleter>, BuildError> {
    let i: Iaas = iaas.parse().map_err(BuildError::Other)?;
    (entry(i).1)(cfg)
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
