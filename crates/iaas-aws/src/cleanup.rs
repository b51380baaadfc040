//! Deleting what a build created, by journal entry (with or without an id)
//! and by tag sweep.
//!
//! Every EC2 resource is recorded as `<region>:<id>` (key pairs by name), and
//! carries the tags `opsbake:build-id` and `opsbake:token` (the idempotency
//! token of its journal entry), so an entry without an id (the process died
//! inside the create call) is found again by token, name or tag.

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_ec2::types::{Filter, InstanceStateName};
use opsbake_core::builder::{BuildError, Deleted, Deleter, BUILD_ID_TAG};
use opsbake_core::journal::Resource;
use opsbake_core::template::Iaas;

use crate::clients::Clients;
use crate::error::{api, AwsError};
use crate::wait::{Poll, Waiter};

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

fn be(e: AwsError) -> BuildError {
    BuildError::iaas(Iaas::Aws, e)
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

    /// Terminate an instance and wait until it is gone.
    pub async fn terminate(&self, region: &str, id: &str) -> Result<Deleted, AwsError> {
        let ec2 = self.clients.ec2(region).await?;
        let state = match ec2.describe_instances().instance_ids(id).send().await {
            Ok(o) => o
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .find_map(|i| i.state().and_then(|s| s.name()).cloned()),
            Err(e) => {
                let e = api("DescribeInstances", region, Some(id))(e);
                if e.is_not_found() {
                    return Ok(Deleted::AlreadyGone);
                }
                return Err(e);
            }
        };
        match state {
            None | Some(InstanceStateName::Terminated) => return Ok(Deleted::AlreadyGone),
            _ => {}
        }
        ec2.terminate_instances()
            .instance_ids(id)
            .send()
            .await
            .map_err(api("TerminateInstances", region, Some(id)))?;
        self.waiter
            .wait(&format!("instance {id} terminated"), region, || {
                let ec2 = ec2.clone();
                async move {
                    let o = ec2
                        .describe_instances()
                        .instance_ids(id)
                        .send()
                        .await
                        .map_err(api("DescribeInstances", region, Some(id)));
                    match o {
                        Err(e) if e.is_not_found() => Ok(Poll::Ready(())),
                        Err(e) => Err(e),
                        Ok(o) => {
                            let st = o
                                .reservations()
                                .iter()
                                .flat_map(|r| r.instances())
                                .find_map(|i| i.state().and_then(|s| s.name()).cloned());
                            Ok(match st {
                                None | Some(InstanceStateName::Terminated) => Poll::Ready(()),
                                Some(s) => Poll::Pending(s.as_str().to_string()),
                            })
                        }
                    }
                }
            })
            .await?;
        Ok(Deleted::Now)
    }

    /// Deregister an AMI and delete its snapshots.
    pub async fn delete_image(&self, region: &str, id: &str) -> Result<Deleted, AwsError> {
        let ec2 = self.clients.ec2(region).await?;
        let images = match ec2.describe_images().image_ids(id).send().await {
            Ok(o) => o.images().to_vec(),
            Err(e) => {
                let e = api("DescribeImages", region, Some(id))(e);
                if e.is_not_found() {
                    return Ok(Deleted::AlreadyGone);
                }
                return Err(e);
            }
        };
        let Some(img) = images.into_iter().next() else {
            return Ok(Deleted::AlreadyGone);
        };
        let snaps: Vec<String> = img
            .block_device_mappings()
            .iter()
            .filter_map(|b| b.ebs().and_then(|e| e.snapshot_id()).map(str::to_string))
            .collect();
        match ec2.deregister_image().image_id(id).send().await {
            Ok(_) => {}
            Err(e) => {
                let e = api("DeregisterImage", region, Some(id))(e);
                if !e.is_not_found() {
                    return Err(e);
                }
            }
        }
        for s in snaps {
            self.delete_snapshot_only(region, &s).await?;
        }
        Ok(Deleted::Now)
    }

    async fn delete_snapshot_only(&self, region: &str, id: &str) -> Result<Deleted, AwsError> {
        let ec2 = self.clients.ec2(region).await?;
        match ec2.delete_snapshot().snapshot_id(id).send().await {
            Ok(_) => Ok(Deleted::Now),
            Err(e) => {
                let e = api("DeleteSnapshot", region, Some(id))(e);
                if e.is_not_found() {
                    Ok(Deleted::AlreadyGone)
                } else {
                    Err(e)
                }
            }
        }
    }

    async fn delete_snapshot(&self, region: &str, id: &str) -> Result<Deleted, AwsError> {
        let ec2 = self.clients.ec2(region).await?;
        // An AMI registered from it must go first. (Matched here rather than
        // with the `block-device-mapping.snapshot-id` filter, which moto
        // does not implement.)
        let owned = ec2
            .describe_images()
            .owners("self")
            .send()
            .await
            .map_err(api("DescribeImages", region, Some(id)))?;
        for img in owned.images() {
            let uses = img
                .block_device_mappings()
                .iter()
                .any(|b| b.ebs().and_then(|e| e.snapshot_id()) == Some(id));
            if let (true, Some(i)) = (uses, img.image_id()) {
                self.delete_image(region, i).await?;
            }
        }
        self.delete_snapshot_only(region, id).await
    }

    async fn delete_volume(&self, region: &str, id: &str) -> Result<Deleted, AwsError> {
        let ec2 = self.clients.ec2(region).await?;
        let vols = match ec2.describe_volumes().volume_ids(id).send().await {
            Ok(o) => o.volumes().to_vec(),
            Err(e) => {
                let e = api("DescribeVolumes", region, Some(id))(e);
                if e.is_not_found() {
                    return Ok(Deleted::AlreadyGone);
                }
                return Err(e);
            }
        };
        let Some(v) = vols.into_iter().next() else {
            return Ok(Deleted::AlreadyGone);
        };
        // Attached to the build instance: that goes first (the root volume
        // usually goes with it).
        for a in v.attachments() {
            if let Some(i) = a.instance_id() {
                self.terminate(region, i).await?;
            }
        }
        match ec2.delete_volume().volume_id(id).send().await {
            Ok(_) => Ok(Deleted::Now),
            Err(e) => {
                let e = api("DeleteVolume", region, Some(id))(e);
                if e.is_not_found() {
                    // It existed above: gone with the instance terminated
                    // just now (delete on termination), i.e. deleted now.
                    Ok(Deleted::Now)
                } else {
                    Err(e)
                }
            }
        }
    }

    async fn delete_key_pair(&self, region: &str, name: &str) -> Result<Deleted, AwsError> {
        let ec2 = self.clients.ec2(region).await?;
        match ec2.describe_key_pairs().key_names(name).send().await {
            Ok(o) if o.key_pairs().is_empty() => return Ok(Deleted::AlreadyGone),
            Ok(_) => {}
            Err(e) => {
                let e = api("DescribeKeyPairs", region, Some(name))(e);
                if e.is_not_found() {
                    return Ok(Deleted::AlreadyGone);
                }
                return Err(e);
            }
        }
        ec2.delete_key_pair()
            .key_name(name)
            .send()
            .await
            .map_err(api("DeleteKeyPair", region, Some(name)))?;
        Ok(Deleted::Now)
    }

    async fn delete_security_group(&self, region: &str, id: &str) -> Result<Deleted, AwsError> {
        let ec2 = self.clients.ec2(region).await?;
        match ec2.delete_security_group().group_id(id).send().await {
            Ok(_) => Ok(Deleted::Now),
            Err(e) => {
                let e = api("DeleteSecurityGroup", region, Some(id))(e);
                if e.is_not_found() {
                    Ok(Deleted::AlreadyGone)
                } else {
                    Err(e)
                }
            }
        }
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
            S3_OBJECT => {
                let (bucket, key) = match (
                    res.data.get("bucket").and_then(|v| v.as_str()),
                    res.data.get("key").and_then(|v| v.as_str()),
                ) {
                    (Some(b), Some(k)) => (b.to_string(), k.to_string()),
                    // Found by a sweep: `region:bucket/key`.
                    _ => match id.as_deref().and_then(|i| i.split_once('/')) {
                        Some((b, k)) => (b.to_string(), k.to_string()),
                        None => {
                            return Err(AwsError::Invalid(format!(
                                "S3 object entry `{}` names no bucket/key",
                                res.name
                            )))
                        }
                    },
                };
                let s3 = self.clients.s3(region).await?;
                if crate::s3import::delete_object(&s3, region, &bucket, &key).await? {
                    Ok(Deleted::Now)
                } else {
                    Ok(Deleted::AlreadyGone)
                }
            }
            IMPORT_TASK => match id {
                Some(task) => {
                    let ec2 = self.clients.ec2(region).await?;
                    let o = ec2
                        .describe_import_snapshot_tasks()
                        .import_task_ids(&task)
                        .send()
                        .await;
                    let active = match o {
                        Ok(o) => o.import_snapshot_tasks().iter().any(|t| {
                            t.snapshot_task_detail()
                                .and_then(|d| d.status())
                                .is_some_and(|s| s == "active" || s == "pending")
                        }),
                        Err(e) => {
                            let e = api("DescribeImportSnapshotTasks", region, Some(&task))(e);
                            if e.is_not_found() {
                                false
                            } else {
                                return Err(e);
                            }
                        }
                    };
                    if !active {
                        return Ok(Deleted::AlreadyGone);
                    }
                    ec2.cancel_import_task()
                        .import_task_id(&task)
                        .cancel_reason("opsbake cleanup")
                        .send()
                        .await
                        .map_err(api("CancelImportTask", region, Some(&task)))?;
                    Ok(Deleted::Now)
                }
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
        self.delete_res(res).await.map_err(be)
    }

    async fn sweep(&self, build_id: &str) -> Result<Vec<Resource>, BuildError> {
        let mut all = Vec::new();
        if let (Some(bucket), Some(region)) = (&self.bucket, self.regions.first()) {
            let s3 = self.clients.s3(region).await.map_err(be)?;
            let keys =
                crate::s3import::keys_under(&s3, region, bucket, &format!("opsbake/{build_id}/"))
                    .await
                    .map_err(be)?;
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
            all.extend(self.sweep_region(r, build_id).await.map_err(be)?);
        }
        Ok(all)
    }
}
