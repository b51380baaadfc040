//! The `builds.vsphere.options` of a template (one file per IaaS, so that a builder
//! changes only its own).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// vSphere options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct VsphereOptions {
    /// vCenter URL.
    #[serde(default)]
    pub url: Option<String>,
    /// User.
    #[serde(default)]
    pub username: Option<String>,
    /// Password.
    #[serde(default)]
    pub password: Option<Secret<String>>,
    /// Skip TLS verification (tests only).
    #[serde(default)]
    pub insecure: bool,
    /// Datacenter.
    #[serde(default)]
    pub datacenter: Option<String>,
    /// Cluster.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Datastore.
    #[serde(default)]
    pub datastore: Option<String>,
    /// Resource pool.
    #[serde(default)]
    pub resource_pool: Option<String>,
    /// Folder.
    #[serde(default)]
    pub folder: Option<String>,
    /// Port group.
    #[serde(default)]
    pub network: Option<String>,
}
