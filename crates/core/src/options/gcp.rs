//! The `builds.gcp.options` of a template (one file per IaaS, so that a builder
//! changes only its own).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// GCP options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct GcpOptions {
    /// Project (else `GOOGLE_PROJECT_ID`).
    #[serde(default)]
    pub project_id: Option<String>,
    /// Zone.
    #[serde(default)]
    pub zone: Option<String>,
    /// Machine type.
    #[serde(default)]
    pub machine_type: Option<String>,
    /// Image name.
    #[serde(default)]
    pub image_name: Option<String>,
    /// Image family.
    #[serde(default)]
    pub image_family: Option<String>,
    /// Bucket for heavy stemcell imports.
    #[serde(default)]
    pub bucket: Option<String>,
    /// Endpoint override (tests).
    #[serde(default)]
    pub endpoint: Option<String>,
}
