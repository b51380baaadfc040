//! The `builds.azure.options` of a template (one file per IaaS, so that a builder
//! changes only its own).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Azure options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct AzureOptions {
    /// Subscription (else `AZURE_SUBSCRIPTION_ID`).
    #[serde(default)]
    pub subscription_id: Option<String>,
    /// Resource group.
    #[serde(default)]
    pub resource_group: Option<String>,
    /// Location.
    #[serde(default)]
    pub location: Option<String>,
    /// VM size.
    #[serde(default)]
    pub vm_size: Option<String>,
    /// Storage account for VHD imports.
    #[serde(default)]
    pub storage_account: Option<String>,
    /// Image name.
    #[serde(default)]
    pub image_name: Option<String>,
    /// Endpoint override (tests).
    #[serde(default)]
    pub endpoint: Option<String>,
}
