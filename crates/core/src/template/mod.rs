//! The image template: one YAML file describes one image for every IaaS.
//!
//! Every struct denies unknown fields (also inside one provisioner), so a typo
//! is an error that names file, line, column and key path instead of a
//! silently ignored setting. String values may hold `${var.NAME}`,
//! `${build.iaas}`, `${build.id}` and `${template.dir}` references; numbers
//! may be given as such a string too (see [`Tv`]). See docs/template.md.

mod builds;
mod load;
mod provision;
mod recover;
mod ssh;
#[cfg(test)]
mod tests;
mod values;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::iaas::Builds;
pub use crate::iaas::Iaas;
pub use crate::options::{
    AwsOptions, AzureOptions, GcpOptions, LocaltestOptions, SshHostOptions, VboxOptions,
    VsphereOptions,
};
pub use builds::{BuildSpec, CommonSpec};
pub use load::{load, load_all, parse, parse_all, Loaded, TemplateError, MAX_TEMPLATE_BYTES};
pub use provision::{
    BreakpointProvisioner, ChecksumType, ChefSoloProvisioner, Common, FileProvisioner,
    HandoffProvisioner, Outputs, Provisioner, ShellProvisioner,
};
pub use ssh::{BastionSpec, HostKeySpec, NetworkSpec, SshSpec};
pub use values::{Dur, Tv};

/// A template variable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct VariableDecl {
    /// Default value (may reference other variables and `${env.NAME}`).
    /// Without a default the variable must be set (`--var`, `--var-file`,
    /// `OPSBAKE_VAR_<NAME>`).
    #[serde(default)]
    pub default: Option<String>,
    /// What it is for.
    #[serde(default)]
    pub description: Option<String>,
    /// A secret: redacted from every output.
    #[serde(default)]
    pub sensitive: bool,
}

/// Where a build's stemcell comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct StemcellRef {
    /// A local `.tgz` (relative to the template's directory).
    #[serde(default)]
    pub path: Option<String>,
    /// A URL to download (requires `sha1`).
    #[serde(default)]
    pub url: Option<String>,
    /// The SHA-1 of the whole `.tgz` (as bosh.io publishes it).
    #[serde(default)]
    pub sha1: Option<String>,
}

/// A whole template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// Image name.
    pub name: String,
    /// Image version.
    #[serde(default)]
    pub version: Option<String>,
    /// What the image is.
    #[serde(default)]
    pub description: Option<String>,
    /// Variables.
    #[serde(default)]
    pub variables: BTreeMap<String, VariableDecl>,
    /// The stemcell of each IaaS.
    #[serde(default)]
    pub stemcells: BTreeMap<Iaas, StemcellRef>,
    /// One entry per IaaS.
    pub builds: Builds,
    /// Ordered provisioning steps.
    #[serde(default)]
    pub provision: Vec<Provisioner>,
    /// Outputs.
    #[serde(default)]
    pub outputs: Outputs,
}

/// The JSON Schema of the template format.
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(Template);
    serde_json::to_value(schema).unwrap_or(serde_json::Value::Null)
}
