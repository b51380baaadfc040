//! The `builds.azure.options` of a template (one file per IaaS, so that a builder
//! changes only its own). See docs/azure.md. An empty string means unset.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::template::Dur;

/// Azure options (see docs/azure.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct AzureOptions {
    /// Subscription id (else `AZURE_SUBSCRIPTION_ID`).
    #[serde(default)]
    pub subscription_id: Option<String>,
    /// The resource group that receives the images (and the imported base
    /// image); it must exist unless `create_resource_group` is true.
    #[serde(default)]
    pub resource_group: Option<String>,
    /// Create `resource_group` when it does not exist (it is kept).
    #[serde(default)]
    pub create_resource_group: bool,
    /// Build the VM in this existing resource group, one resource at a time,
    /// instead of a temporary resource group per build (the default, deleted
    /// as a whole in one call).
    #[serde(default)]
    pub build_resource_group: Option<String>,
    /// Location of the build (e.g. `westeurope`).
    #[serde(default)]
    pub location: Option<String>,
    /// VM size of the build VM (default `Standard_D2s_v3`).
    #[serde(default)]
    pub vm_size: Option<String>,
    /// Storage account for heavy stemcell imports (the VHD page blob).
    #[serde(default)]
    pub storage_account: Option<String>,
    /// Container of the VHD page blobs (default `opsbake-vhds`; created if missing).
    #[serde(default)]
    pub storage_container: Option<String>,
    /// Blob endpoint override, e.g. azurite's `http://127.0.0.1:10000/devstoreaccount1`
    /// (default `https://<storage_account>.blob.core.windows.net`).
    #[serde(default)]
    pub storage_endpoint: Option<String>,
    /// Name of the managed image made by capture (empty: no managed image,
    /// only the gallery version).
    #[serde(default)]
    pub image_name: Option<String>,
    /// Also copy the captured OS disk's VHD into this page blob of
    /// `storage_container` in `storage_account` (Packer's VHD output), e.g.
    /// `appliance-1.0.vhd`; it is kept after the build and named in the
    /// manifest (`vhd_url`). Empty: no VHD output.
    #[serde(default)]
    pub vhd_output: Option<String>,
    /// Publish a Compute Gallery image version.
    #[serde(default)]
    pub gallery: Option<AzureGallery>,
    /// Use a managed identity for credentials (opt-in: the instance metadata
    /// endpoint is only contacted when this is true).
    #[serde(default)]
    pub use_managed_identity: bool,
    /// Resource Manager endpoint override (tests: the ARM test server;
    /// default `https://management.azure.com`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Tags on the images (besides opsbake's own).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Overall limit of each wait (VM running/stopped, image, replication); default 30m.
    #[serde(default)]
    pub wait_timeout: Option<Dur>,
    /// First delay between polls of a long-running operation, as `250ms`,
    /// `2s` (default 2s; `Retry-After` is honoured on top). A string, so that
    /// a variable can set it; empty means the default.
    #[serde(default)]
    pub poll_interval: Option<String>,
    /// Put Page calls in flight when importing a heavy stemcell (default 8).
    #[serde(default)]
    pub upload_concurrency: Option<u32>,
}

/// A Compute Gallery image version to publish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct AzureGallery {
    /// Gallery name (letters, digits, `_`, `.`); created if missing.
    pub name: String,
    /// Image definition; created if missing (Linux, generalized).
    pub image: String,
    /// Version `MAJOR.MINOR.PATCH`.
    pub version: String,
    /// Publisher/offer/sku of a new image definition (default opsbake/<image>/<image>).
    #[serde(default)]
    pub publisher: Option<String>,
    /// Offer of a new image definition.
    #[serde(default)]
    pub offer: Option<String>,
    /// SKU of a new image definition.
    #[serde(default)]
    pub sku: Option<String>,
    /// Target regions (default: the build's location, one replica).
    #[serde(default)]
    pub regions: Vec<AzureReplication>,
    /// Shallow replication (fast, for tests of an image; not for production).
    #[serde(default)]
    pub shallow_replication: bool,
    /// Storage account type of the replicas (`Standard_LRS`, `Standard_ZRS`, `Premium_LRS`).
    #[serde(default)]
    pub storage_account_type: Option<String>,
}

/// One target region of a gallery version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct AzureReplication {
    /// Region.
    pub name: String,
    /// Replica count (default 1).
    #[serde(default)]
    pub replicas: Option<u32>,
}
