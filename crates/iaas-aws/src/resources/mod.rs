//! The EC2 resources a build makes, each kind's create call beside its
//! delete (one file per kind: [`key_pair`], [`security_group`],
//! [`instance`] with its volumes, [`image`], [`snapshot`]; the S3 object
//! and the ImportSnapshot task live in [`crate::s3import`]), and here what
//! they share: the kinds, the tags, `region:id`, the [`AwsDeleter`] that
//! deletes by journal entry (with or without an id) and sweeps by tag.
//!
//! Every EC2 resource is recorded as `<region>:<id>` (key pairs by name), and
//! carries the tags `opsbake:build-id` and `opsbake:token` (the idempotency
//! token of its journal entry), so an entry without an id (the process died
//! inside the create call) is found again by token, name or tag.

pub mod image;
pub mod import_task;
pub mod instance;
pub mod key_pair;
pub mod s3_object;
pub mod security_group;
pub mod snapshot;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_ec2::types::{Filter, InstanceStateName, ResourceType, Tag, TagSpecification};
use opsbake_core::builder::{BuildContext, BuildError, Deleted, Deleter, BUILD_ID_TAG};
use opsbake_core::journal::Resource;

use crate::clients::Clients;
use crate::error::{api, AwsError};
use crate::wait::Waiter;
use crate::AwsBuilder;

/// Kind of an imported key pair.
pub const KEY_PAIR: &str = "aws_key_pair";
/// Kind of a temporary security group.
pub const SECURITY_GROUP: &str = "aws_security_group";
/// Kind of the build instance.
pub const INSTANCE: &str = "aws_instance";
/// Kind of an EBS volume.
pub const VOLUME: &str = "aws_volume";
/// Kind of an EBS snapshot.
pub const SNAPSHOT: &str = "aws_snapshot";
/// Kind of an AMI.
pub const IMAGE: &str = "aws_image";
/// Kind of the S3 object of an `import: s3` (id `region:bucket/key`).
pub const S3_OBJECT: &str = "aws_s3_object";
/// Kind of an ImportSnapshot task.
pub const IMPORT_TASK: &str = "aws_import_snapshot_task";

/// The tag holding a resource's idempotency token.
pub const TOKEN_TAG: &str = "opsbake:token";
/// The tag marking base images imported from a heavy stemcell (a cache that
/// is kept for the next builds; sweeps leave them alone).
pub const ROLE_TAG: &str = "opsbake:role";
/// Value of [`ROLE_TAG`] on base images and their snapshots.
pub const ROLE_BASE: &str = "base-image";

/// The tag that names the stemcell an imported base image came from.
pub const STEMCELL_SHA1_TAG: &str = "opsbake:stemcell-sha1";

/// `region:id`.
pub fn rid(region: &str, id: &str) -> String {
    format!("{region}:{id}")
}

/// Split `region:id`; ids without a region take it from the entry's data.
pub fn split_rid(res: &Resource, default_region: &str) -> (String, Option<String>) {
    let data_region = res
        .data
        .get("region")
        .and_then(|v| v.as_str())
        .or_else(|| res.created_data.get("region").and_then(|v| v.as_str()));
    match &res.id {
        Some(id) => match id.split_once(':') {
            Some((r, i)) => (r.to_string(), Some(i.to_string())),
            None => (
                data_region.unwrap_or(default_region).to_string(),
                Some(id.clone()),
            ),
        },
        None => (data_region.unwrap_or(default_region).to_string(), None),
    }
}

pub(crate) fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

pub(crate) fn tag_spec(rt: ResourceType, tags: &BTreeMap<String, String>) -> TagSpecification {
    let mut b = TagSpecification::builder().resource_type(rt);
    for (k, v) in tags {
        b = b.tags(Tag::builder().key(k).value(v).build());
    }
    b.build()
}

impl AwsBuilder {
    /// The tags of one resource: the build's, its journal token, its name.
    pub(crate) fn tags(
        &self,
        ctx: &BuildContext,
        token: &str,
        name: &str,
    ) -> BTreeMap<String, String> {
        let mut t = ctx.tags();
        t.insert(TOKEN_TAG.to_string(), token.to_string());
        t.insert("Name".to_string(), name.to_string());
        t
    }

    /// CreateTags on one resource.
    pub(crate) async fn create_tags(
        &self,
        region: &str,
        id: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<(), AwsError> {
        let ec2 = self.clients.ec2(region).await?;
        let mut req = ec2.create_tags().resources(id);
        for (k, v) in tags {
            req = req.tags(Tag::builder().key(k).value(v).build());
        }
        req.send()
            .await
            .map_err(api("CreateTags", region, Some(id)))?;
        Ok(())
    }
}

/// Deletes AWS resources of builds.
pub struct AwsDeleter {
    pub(crate) clients: Arc<Clients>,
    pub(crate) regions: Vec<String>,
    pub(crate) waiter: Waiter,
    /// The `import: s3` bucket, swept for `opsbake/<build-id>/` keys.
    pub(crate) bucket: Option<String>,
    /// Delays of [`AwsDeleter::find_again`].
    pub(crate) recheck: Vec<std::time::Duration>,
}

impl AwsDeleter {
    /// A deleter for these regions (the first is the build's).
    pub fn new(clients: Arc<Clients>, regions: Vec<String>, waiter: Waiter) -> AwsDeleter {
        AwsDeleter {
            clients,
            regions,
            waiter,
            bucket: None,
            recheck: [1, 2, 4].map(std::time::Duration::from_secs).to_vec(),
        }
    }

    /// Look up an entry that has only an intent (the process was stopped
    /// inside its create call) again after 1, 2 and 4 s before taking it as
    /// never created: a create call cut off by Ctrl-C may still land, and
    /// EC2's Describe calls are eventually consistent after a create. Used
    /// for instances and AMIs (the costly ones).
    async fn find_again<F, Fut>(&self, mut find: F) -> Result<Option<String>, AwsError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<String>, AwsError>>,
    {
        if let Some(i) = find().await? {
            return Ok(Some(i));
        }
        for d in &self.recheck {
            tokio::time::sleep(*d).await;
            if let Some(i) = find().await? {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    /// Sweep this `import: s3` bucket too.
    pub fn with_bucket(mut self, bucket: Option<String>) -> AwsDeleter {
        self.bucket = bucket.filter(|b| !b.is_empty());
        self
    }

    fn home(&self) -> &str {
        self.regions
            .first()
            .map(String::as_str)
            .unwrap_or("us-east-1")
    }

    async fn find_by_token(
        &self,
        region: &str,
        kind: &str,
        token: &str,
    ) -> Result<Option<String>, AwsError> {
        let ec2 = self.clients.ec2(region).await?;
        let f = filter(&format!("tag:{TOKEN_TAG}"), token);
        Ok(match kind {
            INSTANCE => ec2
                .describe_instances()
                .filters(f)
                .send()
                .await
                .map_err(api("DescribeInstances", region, Some(token)))?
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .filter(|i| {
                    !matches!(
                        i.state().and_then(|s| s.name()),
                        Some(InstanceStateName::Terminated)
                    )
                })
                .find_map(|i| i.instance_id().map(str::to_string)),
            SNAPSHOT => ec2
                .describe_snapshots()
                .owner_ids("self")
                .filters(f)
                .send()
                .await
                .map_err(api("DescribeSnapshots", region, Some(token)))?
                .snapshots()
                .iter()
                .find_map(|s| s.snapshot_id().map(str::to_string)),
            SECURITY_GROUP => ec2
                .describe_security_groups()
                .filters(f)
                .send()
                .await
                .map_err(api("DescribeSecurityGroups", region, Some(token)))?
                .security_groups()
                .iter()
                .find_map(|g| g.group_id().map(str::to_string)),
            _ => None,
        })
    }

    async fn delete_res(&self, res: &Resource) -> Result<Deleted, AwsError> {
        let (region, id) = split_rid(res, self.home());
        let region = region.as_str();
        match res.kind.as_str() {
            KEY_PAIR => {
                let name = id.unwrap_or_else(|| res.name.clone());
                self.delete_key_pair(region, &name).await
            }
            SECURITY_GROUP => {
                let id = match id {
                    Some(i) => Some(i),
                    None => match self
                        .find_by_token(region, SECURITY_GROUP, &res.token)
                        .await?
                    {
                        Some(i) => Some(i),
                        None => {
                            let ec2 = self.clients.ec2(region).await?;
                            ec2.describe_security_groups()
                                .filters(filter("group-name", &res.name))
                                .send()
                                .await
                                .map_err(api("DescribeSecurityGroups", region, Some(&res.name)))?
                                .security_groups()
                                .iter()
                                .find_map(|g| g.group_id().map(str::to_string))
                        }
                    },
                };
                match id {
                    Some(i) => self.delete_security_group(region, &i).await,
                    None => Ok(Deleted::AlreadyGone),
                }
            }
            INSTANCE => {
                let id = match id {
                    Some(i) => Some(i),
                    None => {
                        self.find_again(|| self.find_by_token(region, INSTANCE, &res.token))
                            .await?
                    }
                };
                match id {
                    Some(i) => self.terminate(region, &i).await,
                    None => Ok(Deleted::AlreadyGone),
                }
            }
            VOLUME => match id {
                Some(i) => self.delete_volume(region, &i).await,
                None => Ok(Deleted::AlreadyGone),
            },
            SNAPSHOT => {
                let id = match id {
                    Some(i) => Some(i),
                    None => self.find_by_token(region, SNAPSHOT, &res.token).await?,
                };
                match id {
                    Some(i) => self.delete_snapshot(region, &i).await,
                    None => Ok(Deleted::AlreadyGone),
                }
            }
            IMAGE => {
                let id = match id {
                    Some(i) => Some(i),
                    None => {
                        let ec2 = self.clients.ec2(region).await?;
                        self.find_again(|| {
                            let ec2 = ec2.clone();
                            async move {
                                Ok(ec2
                                    .describe_images()
                                    .owners("self")
                                    .filters(filter("name", &res.name))
                                    .send()
                                    .await
                                    .map_err(api("DescribeImages", region, Some(&res.name)))?
                                    .images()
                                    .iter()
                                    .find_map(|i| i.image_id().map(str::to_string)))
                            }
                        })
                        .await?
                    }
                };
                match id {
                    Some(i) => self.delete_image(region, &i).await,
                    None => Ok(Deleted::AlreadyGone),
                }
            }
            S3_OBJECT => self.delete_s3_object(res, region, id.as_deref()).await,
            IMPORT_TASK => match id {
                Some(task) => self.cancel_import_task(region, &task).await,
                // Killed inside ImportSnapshot: its snapshot, if it ever
                // appears, carries no build tag; the S3 object is deleted
                // (an import reading it fails).
                None => Ok(Deleted::AlreadyGone),
            },
            other => Err(AwsError::Invalid(format!(
                "unknown resource kind `{other}` in an aws build"
            ))),
        }
    }

    async fn sweep_region(&self, region: &str, build_id: &str) -> Result<Vec<Resource>, AwsError> {
        let ec2 = self.clients.ec2(region).await?;
        let tag = || filter(&format!("tag:{BUILD_ID_TAG}"), build_id);
        let mut out = Vec::new();
        let mut push = |kind: &str, id: &str| {
            let full = rid(region, id);
            out.push(Resource {
                seq: 0,
                kind: kind.to_string(),
                name: full.clone(),
                token: String::new(),
                id: Some(full),
                data: serde_json::json!({ "region": region }),
                created_data: serde_json::Value::Null,
                last_error: None,
            });
        };
        let is_base = |tags: &[aws_sdk_ec2::types::Tag]| {
            tags.iter()
                .any(|t| t.key() == Some(ROLE_TAG) && t.value() == Some(ROLE_BASE))
        };
        // Creation order, so that a reverse unwind deletes dependents first.
        let kps = ec2
            .describe_key_pairs()
            .filters(tag())
            .send()
            .await
            .map_err(api("DescribeKeyPairs", region, Some(build_id)))?;
        for k in kps.key_pairs() {
            if let Some(n) = k.key_name() {
                push(KEY_PAIR, n);
            }
        }
        let sgs = ec2
            .describe_security_groups()
            .filters(tag())
            .send()
            .await
            .map_err(api("DescribeSecurityGroups", region, Some(build_id)))?;
        for g in sgs.security_groups() {
            if let Some(i) = g.group_id() {
                push(SECURITY_GROUP, i);
            }
        }
        let inst = ec2
            .describe_instances()
            .filters(tag())
            .send()
            .await
            .map_err(api("DescribeInstances", region, Some(build_id)))?;
        for i in inst.reservations().iter().flat_map(|r| r.instances()) {
            if matches!(
                i.state().and_then(|s| s.name()),
                Some(InstanceStateName::Terminated)
            ) {
                continue;
            }
            if let Some(id) = i.instance_id() {
                push(INSTANCE, id);
            }
        }
        let vols = ec2
            .describe_volumes()
            .filters(tag())
            .send()
            .await
            .map_err(api("DescribeVolumes", region, Some(build_id)))?;
        for v in vols.volumes() {
            if let Some(id) = v.volume_id() {
                push(VOLUME, id);
            }
        }
        let snaps = ec2
            .describe_snapshots()
            .owner_ids("self")
            .filters(tag())
            .send()
            .await
            .map_err(api("DescribeSnapshots", region, Some(build_id)))?;
        for s in snaps.snapshots() {
            if is_base(s.tags()) {
                continue;
            }
            if let Some(id) = s.snapshot_id() {
                push(SNAPSHOT, id);
            }
        }
        let imgs = ec2
            .describe_images()
            .owners("self")
            .filters(tag())
            .send()
            .await
            .map_err(api("DescribeImages", region, Some(build_id)))?;
        for i in imgs.images() {
            if is_base(i.tags()) {
                continue;
            }
            if let Some(id) = i.image_id() {
                push(IMAGE, id);
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Deleter for AwsDeleter {
    async fn delete(&self, res: &Resource) -> Result<Deleted, BuildError> {
        Ok(self.delete_res(res).await?)
    }

    async fn sweep(&self, build_id: &str) -> Result<Vec<Resource>, BuildError> {
        let mut all = Vec::new();
        if let (Some(bucket), Some(region)) = (&self.bucket, self.regions.first()) {
            let s3 = self.clients.s3(region).await?;
            let keys =
                crate::s3import::keys_under(&s3, region, bucket, &format!("opsbake/{build_id}/"))
                    .await?;
            for k in keys {
                let full = rid(region, &format!("{bucket}/{k}"));
                all.push(Resource {
                    seq: 0,
                    kind: S3_OBJECT.to_string(),
                    name: full.clone(),
                    token: String::new(),
                    id: Some(full),
                    data: serde_json::json!({ "region": region, "bucket": bucket, "key": k }),
                    created_data: serde_json::Value::Null,
                    last_error: None,
                });
            }
        }
        for r in &self.regions {
            all.extend(self.sweep_region(r, build_id).await?);
        }
        Ok(all)
    }
}
