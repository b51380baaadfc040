//! Deleting what a gcp build made: by journal record (id, else the name
//! the intent recorded: every GCE name is chosen by opsbake), and the sweep
//! by label (`opsbake-build-id`) for what a kill left unrecorded. Deletes
//! wait for their operation, whatever the build's cancellation: cleanup
//! does not leave a half-deleted instance behind.

use std::sync::Arc;

use async_trait::async_trait;
use opsbake_core::builder::{BuildError, Deleted, Deleter};
use opsbake_core::journal::Resource;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::api::{Api, CredSource};
use crate::error::GcpError;

/// A Cloud Storage object (`gs://bucket/object`).
pub const GCS_OBJECT: &str = "gcs_object";
/// An image (`projects/P/global/images/N`).
pub const IMAGE: &str = "image";
/// An instance (`projects/P/zones/Z/instances/N`).
pub const INSTANCE: &str = "instance";
/// A disk (`projects/P/zones/Z/disks/N`).
pub const DISK: &str = "disk";
/// A firewall rule (`projects/P/global/firewalls/N`).
pub const FIREWALL: &str = "firewall";

/// The label holding the build id.
pub const BUILD_LABEL: &str = "opsbake-build-id";
/// The label holding the journal token of the resource.
pub const TOKEN_LABEL: &str = "opsbake-token";
/// The label marking a base image imported from a stemcell (kept as cache).
pub const ROLE_LABEL: &str = "opsbake-role";
/// The label with the stemcell's sha1.
pub const SHA1_LABEL: &str = "opsbake-stemcell-sha1";

/// What `opsbake cleanup` needs to delete a gcp build's resources (no
/// secrets: the credentials are found again the same way).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct CleanupConfig {
    /// Project.
    pub project: String,
    /// Zone of the build.
    pub zone: String,
    /// Compute endpoint override.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Storage endpoint override.
    #[serde(default)]
    pub storage_endpoint: Option<String>,
    /// The key file named in the options, if any.
    #[serde(default)]
    pub credentials_file: Option<String>,
    /// Anonymous credentials (test servers).
    #[serde(default)]
    pub anonymous_credentials: bool,
    /// The import bucket.
    #[serde(default)]
    pub bucket: Option<String>,
    /// First delay between operation polls (options.poll_interval).
    #[serde(default)]
    pub poll_interval_ms: Option<u64>,
}

impl CleanupConfig {
    /// Where credentials come from.
    pub fn cred_source(&self) -> CredSource {
        if self.anonymous_credentials {
            CredSource::Anonymous
        } else if let Some(f) = &self.credentials_file {
            CredSource::File(f.into())
        } else {
            CredSource::Adc
        }
    }
}

/// Deletes gcp resources.
#[derive(Clone)]
pub struct GcpDeleter {
    /// The calls.
    pub api: Arc<Api>,
    /// The import bucket (swept for `opsbake/<build id>/`).
    pub bucket: Option<String>,
}

/// The last segment of an id or a name.
fn last(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

/// The zone in `projects/P/zones/Z/...`.
fn zone_of(id: &str) -> Option<&str> {
    let mut it = id.split('/');
    while let Some(p) = it.next() {
        if p == "zones" {
            return it.next();
        }
    }
    None
}

/// The id of a zonal resource.
pub fn zonal_id(project: &str, zone: &str, coll: &str, name: &str) -> String {
    format!("projects/{project}/zones/{zone}/{coll}/{name}")
}

/// The id of a global resource.
pub fn global_id(project: &str, coll: &str, name: &str) -> String {
    format!("projects/{project}/global/{coll}/{name}")
}

impl GcpDeleter {
    fn zone<'a>(&'a self, res: &'a Resource) -> &'a str {
        res.id
            .as_deref()
            .and_then(zone_of)
            .or_else(|| res.data["zone"].as_str())
            .unwrap_or(&self.api.zone)
    }

    /// Delete one resource (waiting for its operation).
    pub async fn delete_one(&self, res: &Resource) -> Result<Deleted, GcpError> {
        let name = last(res.id.as_deref().unwrap_or(&res.name)).to_string();
        let what = format!("delete {} {name}", res.kind);
        let op = match res.kind.as_str() {
            INSTANCE => {
                self.api
                    .instance_verb_opt(self.zone(res), &name, "delete")
                    .await?
            }
            DISK => self.api.disk_delete(self.zone(res), &name).await?,
            IMAGE => self.api.image_delete(&name).await?,
            FIREWALL => self.api.firewall_delete(&name).await?,
            GCS_OBJECT => {
                let (bucket, object) =
                    match (res.data["bucket"].as_str(), res.data["object"].as_str()) {
                        (Some(b), Some(o)) => (b.to_string(), o.to_string()),
                        _ => {
                            let s = res.id.as_deref().unwrap_or(&res.name);
                            let rest = s.strip_prefix("gs://").unwrap_or(s);
                            let (b, o) = rest.split_once('/').unwrap_or((rest, ""));
                            (b.to_string(), o.to_string())
                        }
                    };
                return Ok(if self.api.object_delete(&bucket, &object).await? {
                    Deleted::Now
                } else {
                    Deleted::AlreadyGone
                });
            }
            other => {
                return Err(GcpError::Invalid(format!(
                    "unknown resource kind `{other}` in a gcp build"
                )))
            }
        };
        match op {
            None => Ok(Deleted::AlreadyGone),
            Some(op) => {
                match self.api.wait_op(&op, &what, None).await {
                    Ok(_) => Ok(Deleted::Now),
                    // Gone meanwhile (deleted with its instance).
                    Err(GcpError::Operation { errors, .. })
                        if errors.contains("NOT_FOUND") || errors.contains("notFound") =>
                    {
                        Ok(Deleted::AlreadyGone)
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Resources labelled with the build id (images that are not base
    /// images, instances, disks), firewall rules named after the build, and
    /// objects under `opsbake/<build id>/`, in creation order.
    pub async fn sweep_all(&self, build_id: &str) -> Result<Vec<Resource>, GcpError> {
        let api = &self.api;
        let (p, z) = (api.project.clone(), api.zone.clone());
        let mut out = Vec::new();
        let mut push = |kind: &str, id: String, data: Value| {
            out.push(Resource {
                seq: 0,
                kind: kind.to_string(),
                name: id.clone(),
                token: String::new(),
                id: Some(id),
                data,
                created_data: Value::Null,
                last_error: None,
            });
        };
        let lf = format!("labels.{BUILD_LABEL} = \"{build_id}\"");
        if let Some(b) = &self.bucket {
            for o in api.objects(b, &format!("opsbake/{build_id}/")).await? {
                push(
                    GCS_OBJECT,
                    format!("gs://{b}/{o}"),
                    json!({"bucket": b, "object": o}),
                );
            }
        }
        for fw in api
            .firewalls(&format!("name eq opsbake-{build_id}.*"))
            .await?
        {
            if let Some(n) = fw["name"].as_str() {
                push(
                    FIREWALL,
                    global_id(&p, "firewalls", n),
                    json!({"project": p}),
                );
            }
        }
        for d in api.list_zonal(&z, "disks", &lf).await? {
            if let Some(n) = d["name"].as_str() {
                push(
                    DISK,
                    zonal_id(&p, &z, "disks", n),
                    json!({"project": p, "zone": z}),
                );
            }
        }
        for i in api.list_zonal(&z, "instances", &lf).await? {
            if let Some(n) = i["name"].as_str() {
                push(
                    INSTANCE,
                    zonal_id(&p, &z, "instances", n),
                    json!({"project": p, "zone": z}),
                );
            }
        }
        for i in api.images(&lf).await? {
            if i["labels"][ROLE_LABEL] == "base" {
                continue;
            }
            if let Some(n) = i["name"].as_str() {
                push(IMAGE, global_id(&p, "images", n), json!({"project": p}));
            }
        }
        Ok(out)
    }
}

impl Api {
    /// instances.delete; `None` when it was already gone.
    pub async fn instance_verb_opt(
        &self,
        zone: &str,
        name: &str,
        verb: &str,
    ) -> Result<Option<Value>, GcpError> {
        use opsbake_core::wait::WaitError as _;
        match self.instance_verb(zone, name, verb).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl Deleter for GcpDeleter {
    async fn delete(&self, res: &Resource) -> Result<Deleted, BuildError> {
        Ok(self.delete_one(res).await?)
    }

    async fn sweep(&self, build_id: &str) -> Result<Vec<Resource>, BuildError> {
        Ok(self.sweep_all(build_id).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_zone_and_resource() {
        let id = zonal_id("p", "us-central1-a", "instances", "vm-1");
        assert_eq!(zone_of(&id), Some("us-central1-a"));
        assert_eq!(last(&id), "vm-1");
        assert_eq!(zone_of(&global_id("p", "images", "i")), None);
    }
}
