//! Deleting what a build made, in a build or from `opsbake cleanup`.
//!
//! Every ARM resource's id is known before its create call (ARM ids follow
//! from names), so the intent record carries it and a resource whose create
//! was cut before its record is still found. The journal unwinds in reverse:
//! the VM, then its OS disk and NIC, then the public IP, NSG and network; or
//! the build's temporary resource group in one call. Sweep finds resource
//! groups and resources tagged with the build id that the journal missed.

use async_trait::async_trait;
use opsbake_core::builder::{BuildError, Deleted, Deleter};
use opsbake_core::journal::Resource;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::arm::{api, Arm};
use crate::blob::BlobTarget;
use crate::error::AzureError;

/// The tag carrying the build id.
pub const BUILD_TAG: &str = "opsbake-build-id";
/// The tag carrying the journal token of the resource.
pub const TOKEN_TAG: &str = "opsbake-token";
/// The tag naming the stemcell of an imported base image.
pub const STEMCELL_TAG: &str = "opsbake-stemcell-sha1";

/// Journal kinds.
pub mod kind {
    /// A page blob (id: its URL without SAS).
    pub const BLOB: &str = "blob";
    /// A resource group (temporary, or created for `create_resource_group`).
    pub const RESOURCE_GROUP: &str = "resource_group";
    /// A virtual network.
    pub const VNET: &str = "virtual_network";
    /// A network security group.
    pub const NSG: &str = "network_security_group";
    /// A public IP.
    pub const PUBLIC_IP: &str = "public_ip";
    /// A network interface.
    pub const NIC: &str = "network_interface";
    /// The VM's OS disk (made by the VM create; journaled before it).
    pub const OS_DISK: &str = "os_disk";
    /// The build VM.
    pub const VM: &str = "virtual_machine";
    /// A managed image (base image or output).
    pub const IMAGE: &str = "image";
    /// A gallery image version.
    pub const GALLERY_VERSION: &str = "gallery_image_version";
}

/// What `opsbake cleanup` needs (never secrets).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct CleanupConfig {
    /// Subscription.
    pub subscription: String,
    /// ARM endpoint.
    pub endpoint: String,
    /// Location.
    pub location: String,
    /// Blob endpoint of the storage account (`https://acct.blob.core.windows.net`).
    #[serde(default)]
    pub storage_endpoint: Option<String>,
    /// Storage account (for `AZURE_STORAGE_KEY`).
    #[serde(default)]
    pub storage_account: Option<String>,
    /// Use a managed identity.
    #[serde(default)]
    pub use_managed_identity: bool,
}

/// Deletes azure resources.
pub struct AzureDeleter {
    /// ARM.
    pub arm: Arm,
    /// Storage access for blobs (SAS or credential).
    pub storage: Option<crate::Storage>,
}

fn intended_id(res: &Resource) -> Option<String> {
    res.id.clone().or_else(|| {
        res.data
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_string)
    })
}

impl AzureDeleter {
    async fn delete_inner(&self, res: &Resource) -> Result<Deleted, AzureError> {
        let Some(id) = intended_id(res) else {
            return Ok(Deleted::AlreadyGone);
        };
        let scope = res
            .data
            .get("location")
            .and_then(Value::as_str)
            .unwrap_or("azure")
            .to_string();
        if let Some(g) = res.data.get("temp_group").and_then(Value::as_str) {
            if res.kind != kind::RESOURCE_GROUP && self.arm.get(g, None).await?.is_some() {
                // Deleted with its temporary group, later in the unwind.
                tracing::debug!(
                    id,
                    group = g,
                    "left to its temporary resource group's delete"
                );
                return Ok(Deleted::AlreadyGone);
            }
        }
        match res.kind.as_str() {
            kind::BLOB => {
                let Some(st) = &self.storage else {
                    return Err(AzureError::Invalid(format!(
                        "blob {id}: no storage access configured to delete it"
                    )));
                };
                let url = url::Url::parse(&id)
                    .map_err(|e| AzureError::Invalid(format!("blob {id}: {e}")))?;
                let t = BlobTarget {
                    url,
                    sas: st.sas.clone(),
                    credential: st.credential.clone(),
                };
                Ok(if t.delete().await? {
                    Deleted::Now
                } else {
                    Deleted::AlreadyGone
                })
            }
            kind::OS_DISK => {
                // Normally gone with its VM (deleteOption Delete); a disk left
                // by a VM created without it, or by a cut delete, goes here.
                Ok(if self.arm.delete(&id, &scope).await? {
                    Deleted::Now
                } else {
                    Deleted::AlreadyGone
                })
            }
            _ => Ok(if self.arm.delete(&id, &scope).await? {
                Deleted::Now
            } else {
                Deleted::AlreadyGone
            }),
        }
    }

    /// Resource groups and resources tagged with `build_id`.
    pub async fn tagged(&self, build_id: &str) -> Result<Vec<(String, String)>, AzureError> {
        let filter = format!(
            "$filter=tagName%20eq%20%27{BUILD_TAG}%27%20and%20tagValue%20eq%20%27{build_id}%27"
        );
        let mut out = Vec::new();
        // Never trust the filter alone: only what carries this build's tag.
        let ours = |v: &Value| {
            v.get("tags")
                .and_then(|t| t.get(BUILD_TAG))
                .and_then(Value::as_str)
                == Some(build_id)
        };
        for v in self
            .arm
            .list(
                &format!("{}/resourcegroups?{filter}", self.arm.sub()),
                api::RESOURCES,
            )
            .await?
        {
            if !ours(&v) {
                continue;
            }
            if let Some(id) = v.get("id").and_then(Value::as_str) {
                out.push((kind::RESOURCE_GROUP.to_string(), id.to_string()));
            }
        }
        for v in self
            .arm
            .list(
                &format!("{}/resources?{filter}", self.arm.sub()),
                api::RESOURCES,
            )
            .await?
        {
            let Some(id) = v.get("id").and_then(Value::as_str) else {
                continue;
            };
            if !ours(&v) {
                continue;
            }
            let k = match v
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_ascii_lowercase()
                .as_str()
            {
                "microsoft.compute/virtualmachines" => kind::VM,
                "microsoft.compute/disks" => kind::OS_DISK,
                "microsoft.network/networkinterfaces" => kind::NIC,
                "microsoft.network/publicipaddresses" => kind::PUBLIC_IP,
                "microsoft.network/networksecuritygroups" => kind::NSG,
                "microsoft.network/virtualnetworks" => kind::VNET,
                "microsoft.compute/images" => kind::IMAGE,
                "microsoft.compute/galleries/images/versions" => kind::GALLERY_VERSION,
                _ => "resource",
            };
            out.push((k.to_string(), id.to_string()));
        }
        // In creation order (groups, then networks, NSGs, IPs and images,
        // then disks and NICs, then VMs): `opsbake cleanup` journals what
        // the sweep found in this order and unwinds in reverse, so VMs go
        // first and the groups last.
        let rank = |k: &str| match k {
            kind::RESOURCE_GROUP => 0,
            kind::OS_DISK | kind::NIC => 2,
            kind::VM => 3,
            _ => 1,
        };
        out.sort_by_key(|(k, _)| rank(k));
        Ok(out)
    }
}

#[async_trait]
impl Deleter for AzureDeleter {
    async fn delete(&self, res: &Resource) -> Result<Deleted, BuildError> {
        Ok(self.delete_inner(res).await?)
    }

    async fn sweep(&self, build_id: &str) -> Result<Vec<Resource>, BuildError> {
        let found = self.tagged(build_id).await?;
        Ok(found
            .into_iter()
            .enumerate()
            .map(|(i, (k, id))| Resource {
                seq: 1_000_000 + i as u64,
                kind: k,
                name: id.rsplit('/').next().unwrap_or("").to_string(),
                token: String::new(),
                data: serde_json::json!({ "id": id }),
                id: Some(id),
                created_data: Value::Null,
                last_error: None,
            })
            .collect())
    }
}
