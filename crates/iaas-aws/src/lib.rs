//! opsbake-iaas-aws: the `aws` builder.
//!
//! validate (region, credentials and instance type in one
//! DescribeInstanceTypes call, copy regions, the stemcell) → base image
//! (light: the region's AMI from the MF; heavy: EBS direct APIs upload, or
//! with `import: s3` an S3 multipart upload and ImportSnapshot, then
//! RegisterImage, reused by stemcell sha1) → launch (ImportKeyPair of the
//! ephemeral key, a temporary security group, RunInstances with the BOSH
//! agent settings as user data and IMDSv2 required) → capture (stop,
//! CreateImage, copies to other regions in parallel, permissions,
//! encryption, tags, deprecation).
//!
//! Every resource is journaled before its create call and tagged with the
//! build id and its journal token; see [`cleanup`] for deletion.

pub mod checks;
pub mod cleanup;
pub mod clients;
pub mod error;
pub mod import;
pub mod s3import;
pub mod wait;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ec2::primitives::{Blob, DateTime, DateTimeFormat};
use aws_sdk_ec2::types::{
    ArchitectureValues, BlockDeviceMapping, EbsBlockDevice, HttpTokensState, ImageState,
    InstanceMarketOptionsRequest, InstanceMetadataEndpointState, InstanceMetadataOptionsRequest,
    InstanceNetworkInterfaceSpecification, InstanceStateName, InstanceType, IpPermission, IpRange,
    LaunchPermission, LaunchPermissionModifications, MarketType, OperationType, ResourceType,
    SnapshotAttributeName, SnapshotState, Tag, TagSpecification, VolumeType,
};
use base64::Engine as _;
use opsbake_core::builder::{
    Access, Artifact, BaseImage, BuildContext, BuildError, Builder, ConnectTarget, Deleted,
    Deleter, HostKeyPolicy, SshAuth, SshTarget, LOCAL_DIR,
};
use opsbake_core::journal::Resource;
use opsbake_core::plan::BuildPlan;
use opsbake_core::template::{AwsOptions, HostKeySpec, Iaas};

use crate::cleanup::{
    filter, rid, AwsDeleter, IMAGE, IMPORT_TASK, INSTANCE, KEY_PAIR, ROLE_BASE, ROLE_TAG,
    S3_OBJECT, SECURITY_GROUP, SNAPSHOT, TOKEN_TAG, VOLUME,
};
use crate::clients::Clients;
use crate::error::{api, AwsError};
use crate::wait::{Poll, Waiter};

/// Default instance type.
pub const DEFAULT_INSTANCE_TYPE: &str = "m5.large";
/// The tag that names the stemcell an imported base image came from.
pub const STEMCELL_SHA1_TAG: &str = "opsbake:stemcell-sha1";
/// Default number of snapshot blocks in flight.
pub const DEFAULT_UPLOAD_CONCURRENCY: usize = 16;

fn be(e: AwsError) -> BuildError {
    BuildError::iaas(Iaas::Aws, e)
}

/// What `launch` found out, for `capture`.
#[derive(Debug, Default, Clone)]
struct Launched {
    instance: Option<String>,
}

/// The AWS builder of one plan.
pub struct AwsBuilder {
    opts: AwsOptions,
    checked: checks::Checked,
    region: String,
    clients: Arc<Clients>,
    deleter: AwsDeleter,
    waiter: Waiter,
    launched: tokio::sync::Mutex<Launched>,
}

/// Every region a build touches: its own first, then the copies.
fn all_regions(region: &str, opts: &AwsOptions) -> Vec<String> {
    let mut v = vec![region.to_string()];
    for r in &opts.copy_regions {
        if !v.contains(r) {
            v.push(r.clone());
        }
    }
    v
}

/// Empty strings stand for "not set": a template variable with an empty
/// default (`endpoint: "${var.aws_endpoint}"`, `copy_regions:
/// ["${var.aws_copy_region}"]`) switches the setting off instead of sending
/// an empty value to AWS.
pub fn normalise(mut o: AwsOptions) -> AwsOptions {
    fn set(v: &mut Option<String>) {
        if v.as_deref().is_some_and(|s| s.trim().is_empty()) {
            *v = None;
        }
    }
    fn list(v: &mut Vec<String>) {
        v.retain(|s| !s.trim().is_empty());
        v.iter_mut().for_each(|s| *s = s.trim().to_string());
    }
    set(&mut o.region);
    set(&mut o.instance_type);
    set(&mut o.ami_name);
    set(&mut o.ami_description);
    set(&mut o.deprecate_at);
    set(&mut o.security_group_id);
    set(&mut o.endpoint);
    set(&mut o.import);
    set(&mut o.import_bucket);
    list(&mut o.copy_regions);
    checks::dedupe_copy_regions(&mut o.copy_regions);
    list(&mut o.ami_users);
    list(&mut o.ami_groups);
    list(&mut o.snapshot_users);
    o.kms_key_ids
        .retain(|k, v| !k.trim().is_empty() && !v.trim().is_empty());
    o.tags.retain(|k, _| !k.trim().is_empty());
    o
}

/// The SSH CIDRs of a plan without empty entries (see [`normalise`]).
fn ssh_cidrs(plan: &BuildPlan) -> Vec<String> {
    plan.network
        .ssh_cidrs
        .iter()
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .collect()
}

/// Whether an endpoint URL names this machine (127.0.0.0/8, ::1,
/// `localhost`): the only endpoints `--offline` allows.
pub fn is_loopback_endpoint(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(h) = host_port.strip_prefix('[') {
        h.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// The builder for one plan.
pub fn builder(plan: &BuildPlan) -> Result<Arc<dyn Builder>, BuildError> {
    Ok(Arc::new(AwsBuilder::new(plan)?))
}

impl AwsBuilder {
    /// Make the builder (no I/O).
    pub fn new(plan: &BuildPlan) -> Result<AwsBuilder, BuildError> {
        let spec = plan.template.builds.aws.as_ref().ok_or_else(|| {
            be(AwsError::Invalid(
                "the template has no builds.aws entry".into(),
            ))
        })?;
        let opts = normalise(spec.options.clone());
        let region = checks::resolve_region(&opts, &checks::process_env)
            .ok_or_else(|| checks::no_region(plan))?;
        let checked = checks::check(plan, Some(&region), &checks::process_env);
        let clients = Arc::new(Clients::new(&region, opts.endpoint.clone()));
        let waiter = Waiter::with_timeout(
            opts.wait_timeout
                .as_ref()
                .map(|d| d.0)
                .unwrap_or(wait::DEFAULT_TIMEOUT),
        );
        let deleter = AwsDeleter::new(clients.clone(), all_regions(&region, &opts), waiter)
            .with_bucket(opts.import_bucket.clone());
        Ok(AwsBuilder {
            opts,
            checked,
            region,
            clients,
            deleter,
            waiter,
            launched: tokio::sync::Mutex::new(Launched::default()),
        })
    }

    /// Replace the waiter (tests: shorter delays).
    pub fn set_waiter(&mut self, w: Waiter) {
        self.waiter = w;
        self.deleter.waiter = w;
    }

    /// The build's region.
    pub fn region(&self) -> &str {
        &self.region
    }

    fn tags(&self, ctx: &BuildContext, token: &str, name: &str) -> BTreeMap<String, String> {
        let mut t = ctx.tags();
        t.insert(TOKEN_TAG.to_string(), token.to_string());
        t.insert("Name".to_string(), name.to_string());
        t
    }

    fn stemcell_path(&self, ctx: &BuildContext) -> Result<PathBuf, AwsError> {
        let s = ctx
            .plan
            .stemcell
            .as_ref()
            .ok_or_else(|| AwsError::Invalid("the template names no stemcell".into()))?;
        match (&s.path, &s.url) {
            (Some(p), _) => Ok(PathBuf::from(p)),
            (None, Some(u)) => Err(AwsError::Invalid(format!(
                "stemcell {u}: download it first (stemcell.path); URLs are not fetched by the aws builder"
            ))),
            (None, None) => Err(AwsError::Invalid("stemcell has neither path nor url".into())),
        }
    }

    async fn manifest(
        &self,
        ctx: &BuildContext,
    ) -> Result<(PathBuf, opsbake_stemcell::Manifest), AwsError> {
        let path = self.stemcell_path(ctx)?;
        let p = path.clone();
        let m = tokio::task::spawn_blocking(move || opsbake_stemcell::read_manifest(&p))
            .await
            .map_err(|e| AwsError::Stemcell {
                path: path.clone(),
                message: e.to_string(),
            })?
            .map_err(|e| AwsError::Stemcell {
                path: path.clone(),
                message: e.to_string(),
            })?;
        if m.iaas() != "aws" {
            return Err(AwsError::Stemcell {
                path,
                message: format!("is a stemcell for `{}`, not aws ({})", m.iaas(), m.name),
            });
        }
        Ok((path, m))
    }

    fn ssh_cidrs_ok(&self, ctx: &BuildContext) -> Result<(), AwsError> {
        if self.opts.security_group_id.is_none() && ssh_cidrs(&ctx.plan).is_empty() {
            return Err(AwsError::Invalid(
                "network.ssh_cidrs is empty: name the CIDRs allowed to reach SSH on the build instance, or an existing security_group_id".into(),
            ));
        }
        Ok(())
    }

    async fn find_base_image(&self, sha1: &str) -> Result<Option<(String, String)>, AwsError> {
        let ec2 = self.clients.ec2(&self.region).await?;
        let out = ec2
            .describe_images()
            .owners("self")
            .filters(filter(&format!("tag:{STEMCELL_SHA1_TAG}"), sha1))
            .send()
            .await
            .map_err(api("DescribeImages", &self.region, Some(sha1)))?;
        Ok(out
            .images()
            .iter()
            .filter(|i| i.state() == Some(&ImageState::Available))
            .find_map(|i| {
                Some((
                    i.image_id()?.to_string(),
                    i.root_device_name().unwrap_or("/dev/sda1").to_string(),
                ))
            }))
    }

    /// Wait until an AMI is available (adaptive polling, see [`wait`]).
    pub async fn wait_image(&self, region: &str, id: &str) -> Result<(), AwsError> {
        let ec2 = self.clients.ec2(region).await?;
        self.waiter
            .wait(&format!("image {id} available"), region, || {
                let ec2 = ec2.clone();
                async move {
                    let o = ec2
                        .describe_images()
                        .image_ids(id)
                        .send()
                        .await
                        .map_err(api("DescribeImages", region, Some(id)));
                    let o = match o {
                        // Eventual consistency: a new AMI may not be visible yet.
                        Err(e) if e.is_not_found() => {
                            return Ok(Poll::Pending("not visible yet".into()))
                        }
                        r => r?,
                    };
                    Ok(match o.images().first() {
                        None => Poll::Pending("not visible yet".into()),
                        Some(i) => match i.state() {
                            Some(ImageState::Available) => Poll::Ready(()),
                            Some(s @ (ImageState::Failed | ImageState::Error)) => {
                                Poll::Failed(format!(
                                    "{}: {}",
                                    s.as_str(),
                                    i.state_reason()
                                        .and_then(|r| r.message())
                                        .unwrap_or("no reason given")
                                ))
                            }
                            Some(s) => Poll::Pending(s.as_str().to_string()),
                            None => Poll::Pending("no state".into()),
                        },
                    })
                }
            })
            .await
            .map(|_| ())
    }

    async fn wait_snapshot(&self, region: &str, id: &str) -> Result<(), AwsError> {
        let ec2 = self.clients.ec2(region).await?;
        self.waiter
            .wait(&format!("snapshot {id} completed"), region, || {
                let ec2 = ec2.clone();
                async move {
                    let o = ec2
                        .describe_snapshots()
                        .snapshot_ids(id)
                        .send()
                        .await
                        .map_err(api("DescribeSnapshots", region, Some(id)))?;
                    Ok(match o.snapshots().first().and_then(|s| s.state()) {
                        Some(SnapshotState::Completed) => Poll::Ready(()),
                        Some(SnapshotState::Error) => Poll::Failed("error".into()),
                        Some(s) => Poll::Pending(s.as_str().to_string()),
                        None => Poll::Pending("not visible yet".into()),
                    })
                }
            })
            .await
            .map(|_| ())
    }

    async fn wait_instance(
        &self,
        id: &str,
        want: InstanceStateName,
    ) -> Result<aws_sdk_ec2::types::Instance, AwsError> {
        let region = self.region.as_str();
        let ec2 = self.clients.ec2(region).await?;
        let want2 = want.clone();
        self.waiter
            .wait(
                &format!("instance {id} {}", want.as_str()),
                region,
                move || {
                    let ec2 = ec2.clone();
                    let want = want2.clone();
                    async move {
                        let o = ec2
                            .describe_instances()
                            .instance_ids(id)
                            .send()
                            .await
                            .map_err(api("DescribeInstances", region, Some(id)));
                        let o = match o {
                            Err(e) if e.is_not_found() => {
                                return Ok(Poll::Pending("not visible yet".into()))
                            }
                            r => r?,
                        };
                        let Some(i) = o
                            .reservations()
                            .iter()
                            .flat_map(|r| r.instances())
                            .next()
                            .cloned()
                        else {
                            return Ok(Poll::Pending("not visible yet".into()));
                        };
                        let st = i.state().and_then(|s| s.name()).cloned();
                        Ok(match st {
                            Some(s) if s == want => Poll::Ready(i),
                            Some(
                                s @ (InstanceStateName::Terminated
                                | InstanceStateName::ShuttingDown),
                            ) => Poll::Failed(format!(
                                "{} ({})",
                                s.as_str(),
                                i.state_reason()
                                    .and_then(|r| r.message())
                                    .unwrap_or("no reason given")
                            )),
                            Some(s) => Poll::Pending(s.as_str().to_string()),
                            None => Poll::Pending("no state".into()),
                        })
                    }
                },
            )
            .await
            .map(|(i, _)| i)
    }

    /// Heavy stemcell: extract, upload through the EBS direct APIs,
    /// RegisterImage; both kept as a cache for the next builds.
    async fn import(
        &self,
        ctx: &BuildContext,
        path: &std::path::Path,
        m: &opsbake_stemcell::Manifest,
    ) -> Result<BaseImage, BuildError> {
        let region = self.region.as_str();
        // Extract the raw disk (SHA-1 checked on the way) into the state dir.
        let dest = ctx.state_dir().join("stemcell");
        let dseq = ctx.intent(
            LOCAL_DIR,
            &dest.display().to_string(),
            serde_json::Value::Null,
        )?;
        let (p, d) = (path.to_path_buf(), dest.clone());
        let report = tokio::task::spawn_blocking(move || {
            opsbake_stemcell::extract(&p, &d, &opsbake_stemcell::ExtractOptions::default())
        })
        .await
        .map_err(|e| BuildError::Other(format!("extracting {}: {e}", path.display())))?
        .map_err(|e| {
            be(AwsError::Stemcell {
                path: path.to_path_buf(),
                message: e.to_string(),
            })
        })?;
        ctx.created(
            dseq,
            LOCAL_DIR,
            &dest.display().to_string(),
            serde_json::Value::Null,
        )?;
        let disk = report
            .files
            .iter()
            .find(|f| f.kind == "file" && f.path.file_name().is_some_and(|n| n == "root.img"))
            .map(|f| dest.join(&f.path))
            .ok_or_else(|| {
                be(AwsError::Stemcell {
                    path: path.to_path_buf(),
                    message: "its image holds no root.img (an aws-raw stemcell does)".into(),
                })
            })?;
        let len = std::fs::metadata(&disk)
            .map_err(BuildError::io(&disk))?
            .len();
        let gib = 1u64 << 30;
        let volume_gib = len.div_ceil(gib).max(m.disk_mib().div_ceil(1024)).max(1);
        let short_sha = &m.sha1[..m.sha1.len().min(12)];
        let name = format!("opsbake-base-{}-{}-{}", m.name, m.version, short_sha);
        // Snapshot.
        let mut tags_base = BTreeMap::new();
        tags_base.insert(ROLE_TAG.to_string(), ROLE_BASE.to_string());
        tags_base.insert(STEMCELL_SHA1_TAG.to_string(), m.sha1.clone());
        let (sseq, snap, uploaded) = if self.opts.import.as_deref() == Some("s3") {
            self.snapshot_via_s3(ctx, &disk, &name, &tags_base).await?
        } else {
            let sseq = ctx.intent(SNAPSHOT, &name, serde_json::json!({ "region": region }))?;
            let token = ctx.token(sseq);
            let mut tags = self.tags(ctx, &token, &name);
            tags.extend(tags_base.clone());
            let ebs = self.clients.ebs(region).await.map_err(be)?;
            let up = import::Upload {
                ebs: &ebs,
                region,
                disk: &disk,
                volume_gib: volume_gib as i64,
                description: format!("{name} (opsbake {})", ctx.build_id()),
                client_token: token.clone(),
                tags: tags.clone(),
                concurrency: self
                    .opts
                    .upload_concurrency
                    .map(|c| c as usize)
                    .unwrap_or(DEFAULT_UPLOAD_CONCURRENCY),
            };
            let (snap, block_size) = import::start(&up).await.map_err(be)?;
            ctx.created(
                sseq,
                SNAPSHOT,
                &rid(region, &snap),
                serde_json::json!({ "region": region }),
            )?;
            let rep = import::upload_blocks(&up, &snap, block_size)
                .await
                .map_err(be)?;
            ctx.events.info(format!(
                "uploaded {} of {} blocks ({} MiB) of {} to {snap} in {:.1} s",
                rep.sent,
                rep.blocks,
                rep.bytes_sent >> 20,
                disk.display(),
                rep.seconds
            ));
            (sseq, snap, rep.sent.to_string())
        };
        self.wait_snapshot(region, &snap).await.map_err(be)?;
        // The AMI.
        let root = m
            .cloud_properties
            .root_device_name
            .clone()
            .unwrap_or_else(|| "/dev/sda1".to_string());
        let img_name = format!("{name}-{}", ctx.build_id());
        let iseq = ctx.intent(IMAGE, &img_name, serde_json::json!({ "region": region }))?;
        let itoken = ctx.token(iseq);
        let ec2 = self.clients.ec2(region).await.map_err(be)?;
        let out = ec2
            .register_image()
            .name(&img_name)
            .description(format!(
                "BOSH stemcell {} {} (sha1 {})",
                m.name, m.version, m.sha1
            ))
            .architecture(ArchitectureValues::X8664)
            .virtualization_type("hvm")
            .ena_support(true)
            .sriov_net_support("simple")
            .root_device_name(&root)
            .block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name(&root)
                    .ebs(
                        EbsBlockDevice::builder()
                            .snapshot_id(&snap)
                            .delete_on_termination(true)
                            .volume_type(VolumeType::Gp3)
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await
            .map_err(api("RegisterImage", region, Some(&snap)))
            .map_err(be)?;
        let ami = out
            .image_id()
            .ok_or_else(|| {
                be(AwsError::Missing {
                    op: "RegisterImage",
                    region: region.to_string(),
                    what: "image id",
                })
            })?
            .to_string();
        ctx.created(
            iseq,
            IMAGE,
            &rid(region, &ami),
            serde_json::json!({ "region": region }),
        )?;
        let mut itags = self.tags(ctx, &itoken, &img_name);
        itags.insert(ROLE_TAG.into(), ROLE_BASE.into());
        itags.insert(STEMCELL_SHA1_TAG.into(), m.sha1.clone());
        self.create_tags(region, &ami, &itags).await.map_err(be)?;
        self.wait_image(region, &ami).await.map_err(be)?;
        // A cache for the next builds: kept whatever this build's outcome.
        ctx.keep(sseq, SNAPSHOT, &rid(region, &snap))?;
        ctx.keep(iseq, IMAGE, &rid(region, &ami))?;
        // The extracted disk is no longer needed.
        if tokio::fs::remove_dir_all(&dest).await.is_ok() {
            ctx.deleted(dseq, LOCAL_DIR, &dest.display().to_string())?;
        }
        let mut details = BTreeMap::new();
        details.insert("source".into(), "imported".into());
        details.insert("snapshot".into(), snap);
        details.insert("root_device_name".into(), root);
        details.insert("stemcell_sha1".into(), m.sha1.clone());
        details.insert("blocks_uploaded".into(), uploaded);
        Ok(BaseImage { id: ami, details })
    }

    /// `import: s3`: the raw disk to S3 (multipart), ImportSnapshot, wait,
    /// the object deleted; returns (journal seq, snapshot id, what was sent).
    async fn snapshot_via_s3(
        &self,
        ctx: &BuildContext,
        disk: &std::path::Path,
        name: &str,
        extra_tags: &BTreeMap<String, String>,
    ) -> Result<(u64, String, String), BuildError> {
        let region = self.region.as_str();
        let bucket = self.opts.import_bucket.clone().ok_or_else(|| {
            be(AwsError::Invalid(
                "import: s3 needs options.import_bucket".into(),
            ))
        })?;
        let key = format!("opsbake/{}/{name}.raw", ctx.build_id());
        let s3 = self.clients.s3(region).await.map_err(be)?;
        let object = format!("{bucket}/{key}");
        let oseq = ctx.intent(
            S3_OBJECT,
            &object,
            serde_json::json!({ "region": region, "bucket": bucket, "key": key }),
        )?;
        let up = s3import::S3Upload {
            s3: &s3,
            region,
            bucket: &bucket,
            key: &key,
            disk,
            part_size: s3import::part_size(
                std::fs::metadata(disk).map_err(BuildError::io(disk))?.len(),
                s3import::DEFAULT_PART,
            ),
            concurrency: self
                .opts
                .upload_concurrency
                .map(|c| c as usize)
                .unwrap_or(s3import::DEFAULT_CONCURRENCY)
                .min(16),
        };
        let rep = up.run().await.map_err(be)?;
        ctx.created(
            oseq,
            S3_OBJECT,
            &rid(region, &object),
            serde_json::json!({ "region": region, "bucket": bucket, "key": key }),
        )?;
        ctx.events.info(format!(
            "uploaded {} ({} MiB, {} parts) to s3://{object} in {:.1} s",
            disk.display(),
            rep.bytes >> 20,
            rep.parts,
            rep.seconds
        ));
        // ImportSnapshot.
        let ec2 = self.clients.ec2(region).await.map_err(be)?;
        let tseq = ctx.intent(IMPORT_TASK, name, serde_json::json!({ "region": region }))?;
        let ttoken = ctx.token(tseq);
        let out = ec2
            .import_snapshot()
            .client_token(&ttoken)
            .description(format!("{name} (opsbake {})", ctx.build_id()))
            .disk_container(
                aws_sdk_ec2::types::SnapshotDiskContainer::builder()
                    .format("RAW")
                    .description(name)
                    .user_bucket(
                        aws_sdk_ec2::types::UserBucket::builder()
                            .s3_bucket(&bucket)
                            .s3_key(&key)
                            .build(),
                    )
                    .build(),
            )
            .tag_specifications(tag_spec(
                ResourceType::ImportSnapshotTask,
                &self.tags(ctx, &ttoken, name),
            ))
            .send()
            .await
            .map_err(api("ImportSnapshot", region, Some(&object)))
            .map_err(be)?;
        let task = out
            .import_task_id()
            .ok_or_else(|| {
                be(AwsError::Missing {
                    op: "ImportSnapshot",
                    region: region.to_string(),
                    what: "import task id",
                })
            })?
            .to_string();
        ctx.created(
            tseq,
            IMPORT_TASK,
            &rid(region, &task),
            serde_json::json!({ "region": region }),
        )?;
        let snap = self.wait_import(region, &task).await.map_err(be)?;
        // A finished task cannot be cancelled (it expires by itself).
        ctx.deleted(tseq, IMPORT_TASK, &rid(region, &task))?;
        let sseq = ctx.intent(SNAPSHOT, name, serde_json::json!({ "region": region }))?;
        ctx.created(
            sseq,
            SNAPSHOT,
            &rid(region, &snap),
            serde_json::json!({ "region": region }),
        )?;
        let mut tags = self.tags(ctx, &ctx.token(sseq), name);
        tags.extend(extra_tags.clone());
        self.create_tags(region, &snap, &tags).await.map_err(be)?;
        // The object is no longer needed.
        s3import::delete_object(&s3, region, &bucket, &key)
            .await
            .map_err(be)?;
        ctx.deleted(oseq, S3_OBJECT, &rid(region, &object))?;
        Ok((sseq, snap, format!("{} bytes through S3", rep.bytes)))
    }

    /// Wait for an import snapshot task; returns its snapshot.
    async fn wait_import(&self, region: &str, task: &str) -> Result<String, AwsError> {
        let ec2 = self.clients.ec2(region).await?;
        self.waiter
            .wait(&format!("import task {task} completed"), region, || {
                let ec2 = ec2.clone();
                async move {
                    let o = ec2
                        .describe_import_snapshot_tasks()
                        .import_task_ids(task)
                        .send()
                        .await
                        .map_err(api("DescribeImportSnapshotTasks", region, Some(task)))?;
                    let Some(d) = o
                        .import_snapshot_tasks()
                        .first()
                        .and_then(|t| t.snapshot_task_detail())
                    else {
                        return Ok(Poll::Pending("not visible yet".into()));
                    };
                    let status = d.status().unwrap_or("unknown").to_string();
                    Ok(match status.as_str() {
                        "completed" => match d.snapshot_id() {
                            Some(s) => Poll::Ready(s.to_string()),
                            None => Poll::Failed("completed without a snapshot id".into()),
                        },
                        "deleted" | "deleting" | "error" => Poll::Failed(format!(
                            "{status}: {}",
                            d.status_message().unwrap_or("no message")
                        )),
                        _ => Poll::Pending(format!("{status} {}%", d.progress().unwrap_or("?"))),
                    })
                }
            })
            .await
            .map(|(s, _)| s)
    }

    async fn create_tags(
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

    async fn vpc_of_build(&self, ctx: &BuildContext) -> Result<String, AwsError> {
        let region = self.region.as_str();
        let ec2 = self.clients.ec2(region).await?;
        if let Some(subnet) = &ctx.plan.network.subnet {
            let o = ec2
                .describe_subnets()
                .subnet_ids(subnet)
                .send()
                .await
                .map_err(api("DescribeSubnets", region, Some(subnet)))?;
            return o
                .subnets()
                .first()
                .and_then(|s| s.vpc_id())
                .map(str::to_string)
                .ok_or(AwsError::Missing {
                    op: "DescribeSubnets",
                    region: region.to_string(),
                    what: "VPC of the subnet",
                });
        }
        let o = ec2
            .describe_vpcs()
            .filters(filter("isDefault", "true"))
            .send()
            .await
            .map_err(api("DescribeVpcs", region, None))?;
        o.vpcs()
            .first()
            .and_then(|v| v.vpc_id())
            .map(str::to_string)
            .ok_or_else(|| {
                AwsError::Invalid(format!("{region} has no default VPC: set network.subnet"))
            })
    }

    /// Snapshots behind an AMI.
    async fn image_snapshots(&self, region: &str, ami: &str) -> Result<Vec<String>, AwsError> {
        let ec2 = self.clients.ec2(region).await?;
        let o = ec2
            .describe_images()
            .image_ids(ami)
            .send()
            .await
            .map_err(api("DescribeImages", region, Some(ami)))?;
        Ok(o.images()
            .iter()
            .flat_map(|i| i.block_device_mappings())
            .filter_map(|b| b.ebs().and_then(|e| e.snapshot_id()).map(str::to_string))
            .collect())
    }

    /// Record, tag and share the snapshots of a new AMI; returns their seqs.
    async fn adopt_snapshots(
        &self,
        ctx: &BuildContext,
        region: &str,
        ami: &str,
        name: &str,
    ) -> Result<Vec<(u64, String)>, BuildError> {
        let mut out = Vec::new();
        for s in self.image_snapshots(region, ami).await.map_err(be)? {
            let seq = ctx.intent(
                SNAPSHOT,
                &format!("{name} {s}"),
                serde_json::json!({ "region": region, "image": ami }),
            )?;
            let id = rid(region, &s);
            ctx.created(seq, SNAPSHOT, &id, serde_json::json!({ "region": region }))?;
            let mut tags = self.tags(ctx, &ctx.token(seq), name);
            tags.extend(self.opts.tags.clone());
            // moto answers 500 to snapshot TagSpecifications on CreateImage;
            // CreateTags afterwards works everywhere.
            self.create_tags(region, &s, &tags).await.map_err(be)?;
            if !self.opts.snapshot_users.is_empty() {
                let ec2 = self.clients.ec2(region).await.map_err(be)?;
                ec2.modify_snapshot_attribute()
                    .snapshot_id(&s)
                    .attribute(SnapshotAttributeName::CreateVolumePermission)
                    .operation_type(OperationType::Add)
                    .set_user_ids(Some(self.opts.snapshot_users.clone()))
                    .send()
                    .await
                    .map_err(api("ModifySnapshotAttribute", region, Some(&s)))
                    .map_err(be)?;
            }
            out.push((seq, id));
        }
        Ok(out)
    }

    /// Launch permissions, tags and deprecation of a finished AMI.
    async fn finish_image(
        &self,
        ctx: &BuildContext,
        region: &str,
        ami: &str,
        name: &str,
        token: &str,
    ) -> Result<(), BuildError> {
        let ec2 = self.clients.ec2(region).await.map_err(be)?;
        let mut tags = self.tags(ctx, token, name);
        tags.extend(self.opts.tags.clone());
        self.create_tags(region, ami, &tags).await.map_err(be)?;
        if !self.opts.ami_users.is_empty() || !self.opts.ami_groups.is_empty() {
            let mut m = LaunchPermissionModifications::builder();
            for u in &self.opts.ami_users {
                m = m.add(LaunchPermission::builder().user_id(u).build());
            }
            for g in &self.opts.ami_groups {
                m = m.add(LaunchPermission::builder().group(g.as_str().into()).build());
            }
            ec2.modify_image_attribute()
                .image_id(ami)
                .launch_permission(m.build())
                .send()
                .await
                .map_err(api("ModifyImageAttribute", region, Some(ami)))
                .map_err(be)?;
        }
        if let Some(at) = &self.opts.deprecate_at {
            let t = DateTime::from_str(at, DateTimeFormat::DateTime)
                .map_err(|e| be(AwsError::Invalid(format!("deprecate_at {at}: {e}"))))?;
            ec2.enable_image_deprecation()
                .image_id(ami)
                .deprecate_at(t)
                .send()
                .await
                .map_err(api("EnableImageDeprecation", region, Some(ami)))
                .map_err(be)?;
        }
        Ok(())
    }

    /// Deregister images of this name (force_deregister) in a region.
    async fn deregister_named(&self, region: &str, name: &str) -> Result<bool, AwsError> {
        let ec2 = self.clients.ec2(region).await?;
        let o = ec2
            .describe_images()
            .owners("self")
            .filters(filter("name", name))
            .send()
            .await
            .map_err(api("DescribeImages", region, Some(name)))?;
        let ids: Vec<String> = o
            .images()
            .iter()
            .filter_map(|i| i.image_id().map(str::to_string))
            .collect();
        if ids.is_empty() {
            return Ok(false);
        }
        if !self.opts.force_deregister {
            return Err(AwsError::Invalid(format!(
                "an AMI named {name} exists in {region} ({}): choose another ami_name or set force_deregister",
                ids.join(", ")
            )));
        }
        for id in ids {
            self.deleter.delete_image(region, &id).await?;
        }
        Ok(true)
    }

    /// CopyImage to one region, journaled, waited for; returns (seq, ami, token).
    async fn copy_to(
        &self,
        ctx: &BuildContext,
        src_region: &str,
        src: &str,
        dst_region: &str,
        name: &str,
    ) -> Result<(u64, String, String), BuildError> {
        let seq = ctx.intent(
            IMAGE,
            name,
            serde_json::json!({ "region": dst_region, "source": rid(src_region, src) }),
        )?;
        let token = ctx.token(seq);
        let ec2 = self.clients.ec2(dst_region).await.map_err(be)?;
        let mut req = ec2
            .copy_image()
            .source_region(src_region)
            .source_image_id(src)
            .name(name)
            .client_token(&token);
        if let Some(d) = &self.opts.ami_description {
            req = req.description(d);
        }
        if self.opts.encrypt {
            req = req.encrypted(true);
            if let Some(k) = self.opts.kms_key_ids.get(dst_region) {
                req = req.kms_key_id(k);
            }
        }
        let out = req
            .send()
            .await
            .map_err(api("CopyImage", dst_region, Some(src)))
            .map_err(be)?;
        let ami = out
            .image_id()
            .ok_or_else(|| {
                be(AwsError::Missing {
                    op: "CopyImage",
                    region: dst_region.to_string(),
                    what: "image id",
                })
            })?
            .to_string();
        ctx.created(
            seq,
            IMAGE,
            &rid(dst_region, &ami),
            serde_json::json!({ "region": dst_region }),
        )?;
        self.wait_image(dst_region, &ami).await.map_err(be)?;
        Ok((seq, ami, token))
    }

    fn host_key_policy(&self, ctx: &BuildContext, console_keys: Vec<String>) -> HostKeyPolicy {
        match &ctx.plan.ssh.host_key {
            HostKeySpec::Pin(k) => HostKeyPolicy::Pin(k.clone()),
            HostKeySpec::Insecure => HostKeyPolicy::Insecure,
            HostKeySpec::Tofu if !console_keys.is_empty() => HostKeyPolicy::Pin(console_keys),
            HostKeySpec::Tofu => HostKeyPolicy::TrustOnFirstUse,
        }
    }

    async fn console_host_keys(&self, id: &str) -> Vec<String> {
        let Ok(ec2) = self.clients.ec2(&self.region).await else {
            return Vec::new();
        };
        match ec2.get_console_output().instance_id(id).send().await {
            Ok(o) => o.output().map(host_keys_from_console).unwrap_or_default(),
            Err(e) => {
                tracing::debug!(instance = id, error = %aws_sdk_ec2::error::DisplayErrorContext(&e), "no console output");
                Vec::new()
            }
        }
    }
}

/// The host keys a cloud image prints between `-----BEGIN SSH HOST KEY
/// KEYS-----` and `-----END SSH HOST KEY KEYS-----` in its console output
/// (base64 as GetConsoleOutput returns it).
pub fn host_keys_from_console(b64: &str) -> Vec<String> {
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let mut inside = false;
    let mut keys = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        if l.contains("-----BEGIN SSH HOST KEY KEYS-----") {
            inside = true;
        } else if l.contains("-----END SSH HOST KEY KEYS-----") {
            inside = false;
        } else if inside {
            let mut parts = l.split_whitespace();
            if let (Some(t), Some(k)) = (parts.next(), parts.next()) {
                if t.starts_with("ssh-") || t.starts_with("ecdsa-") {
                    keys.push(format!("{t} {k}"));
                }
            }
        }
    }
    keys
}

fn tag_spec(rt: ResourceType, tags: &BTreeMap<String, String>) -> TagSpecification {
    let mut b = TagSpecification::builder().resource_type(rt);
    for (k, v) in tags {
        b = b.tags(Tag::builder().key(k).value(v).build());
    }
    b.build()
}

#[async_trait]
impl Deleter for AwsBuilder {
    async fn delete(&self, res: &Resource) -> Result<Deleted, BuildError> {
        self.deleter.delete(res).await
    }

    async fn sweep(&self, build_id: &str) -> Result<Vec<Resource>, BuildError> {
        self.deleter.sweep(build_id).await
    }
}

#[async_trait]
impl Builder for AwsBuilder {
    fn iaas(&self) -> Iaas {
        Iaas::Aws
    }

    fn offline_checks(&self) -> Vec<opsbake_core::builder::Finding> {
        self.checked.errors.clone()
    }

    fn offline_warnings(&self) -> Vec<opsbake_core::builder::Finding> {
        self.checked.warnings.clone()
    }

    fn cleanup_config(&self) -> serde_json::Value {
        serde_json::json!({
            "region": self.region,
            "regions": all_regions(&self.region, &self.opts),
            "endpoint": self.opts.endpoint,
            "import_bucket": self.opts.import_bucket,
        })
    }

    async fn validate(&self, ctx: &BuildContext) -> Result<(), BuildError> {
        let o = &self.opts;
        if ctx.options.offline {
            // `--offline`: nothing may leave this machine. An EC2 API on
            // loopback (moto) is allowed; credentials then come from the
            // environment only (no IMDS, SSO or container endpoints).
            match o.endpoint.as_deref() {
                Some(e) if is_loopback_endpoint(e) => self.clients.set_offline(),
                Some(e) => {
                    return Err(be(AwsError::Invalid(format!(
                        "--offline: the endpoint {e} is not on this machine (an aws build is offline only against a loopback endpoint such as moto)"
                    ))))
                }
                None => {
                    return Err(be(AwsError::Invalid(format!(
                        "--offline: an aws build talks to the EC2 API of {} (set options.endpoint to a loopback emulator, or build without --offline)",
                        self.region
                    ))))
                }
            }
        }
        self.ssh_cidrs_ok(ctx).map_err(be)?;
        match o.import.as_deref() {
            None | Some("ebs-direct") => {}
            Some("s3") if o.import_bucket.is_none() => {
                return Err(be(AwsError::Invalid(
                    "import: s3 needs options.import_bucket (an S3 bucket in the build region)"
                        .into(),
                )))
            }
            Some("s3") => {}
            Some(x) => {
                return Err(be(AwsError::Invalid(format!(
                    "import: `{x}` is not `ebs-direct` or `s3`"
                ))))
            }
        }
        if let Some(at) = &o.deprecate_at {
            DateTime::from_str(at, DateTimeFormat::DateTime).map_err(|e| {
                be(AwsError::Invalid(format!(
                    "deprecate_at `{at}` is not an RFC 3339 time: {e}"
                )))
            })?;
        }
        for r in o.kms_key_ids.keys() {
            if !all_regions(&self.region, o).contains(r) {
                return Err(be(AwsError::Invalid(format!(
                    "kms_key_ids names {r}, which is neither the region nor a copy region"
                ))));
            }
        }
        // The stemcell resolves.
        let (path, m) = self.manifest(ctx).await.map_err(be)?;
        if m.is_light() {
            m.light_image(Some(&self.region)).map_err(|e| {
                be(AwsError::Stemcell {
                    path: path.clone(),
                    message: e.to_string(),
                })
            })?;
        } else if !m.stemcell_formats.iter().any(|f| f == "aws-raw")
            && m.cloud_properties.disk_format.as_deref() != Some("raw")
        {
            return Err(be(AwsError::Stemcell {
                path,
                message: format!(
                    "formats {:?}: not importable (aws-raw or aws-light needed)",
                    m.stemcell_formats
                ),
            }));
        }
        // The import bucket, when a heavy stemcell goes through S3.
        if let (false, Some("s3"), Some(b)) = (
            m.is_light(),
            o.import.as_deref(),
            o.import_bucket.as_deref(),
        ) {
            let s3 = self.clients.s3(&self.region).await.map_err(be)?;
            s3.head_bucket()
                .bucket(b)
                .send()
                .await
                .map_err(api("HeadBucket", &self.region, Some(b)))
                .map_err(be)?;
        }
        // Credentials and the instance type: one call.
        let region = self.region.as_str();
        let ec2 = self.clients.ec2(region).await.map_err(be)?;
        let it = o
            .instance_type
            .clone()
            .unwrap_or_else(|| DEFAULT_INSTANCE_TYPE.to_string());
        let out = ec2
            .describe_instance_types()
            .instance_types(InstanceType::from(it.as_str()))
            .send()
            .await
            .map_err(api("DescribeInstanceTypes", region, Some(&it)))
            .map_err(be)?;
        if out.instance_types().is_empty() {
            return Err(be(AwsError::Invalid(format!(
                "instance type {it} is not offered in {region}"
            ))));
        }
        // Copy regions exist.
        if !o.copy_regions.is_empty() {
            let out = ec2
                .describe_regions()
                .all_regions(true)
                .send()
                .await
                .map_err(api("DescribeRegions", region, None))
                .map_err(be)?;
            let known: Vec<&str> = out
                .regions()
                .iter()
                .filter_map(|r| r.region_name())
                .collect();
            for r in &o.copy_regions {
                if !known.contains(&r.as_str()) {
                    return Err(be(AwsError::Invalid(format!(
                        "copy region {r} is not a region (known: {})",
                        known.join(", ")
                    ))));
                }
            }
        }
        Ok(())
    }

    async fn base_image(&self, ctx: &BuildContext) -> Result<BaseImage, BuildError> {
        let (path, m) = self.manifest(ctx).await.map_err(be)?;
        let region = self.region.as_str();
        if m.is_light() {
            let r = m.light_image(Some(region)).map_err(|e| {
                be(AwsError::Stemcell {
                    path: path.clone(),
                    message: e.to_string(),
                })
            })?;
            let opsbake_stemcell::CloudImageRef::AwsAmi { ami, .. } = r else {
                return Err(be(AwsError::Stemcell {
                    path,
                    message: "is light but names no AMI".into(),
                }));
            };
            let ec2 = self.clients.ec2(region).await.map_err(be)?;
            let out = ec2
                .describe_images()
                .image_ids(&ami)
                .send()
                .await
                .map_err(api("DescribeImages", region, Some(&ami)))
                .map_err(be)?;
            let img = out.images().first().ok_or_else(|| {
                be(AwsError::Stemcell {
                    path: path.clone(),
                    message: format!("its AMI {ami} does not exist in {region}"),
                })
            })?;
            let mut details = BTreeMap::new();
            details.insert("source".into(), "light stemcell".into());
            details.insert(
                "root_device_name".into(),
                img.root_device_name().unwrap_or("/dev/sda1").to_string(),
            );
            details.insert("stemcell".into(), format!("{} {}", m.name, m.version));
            return Ok(BaseImage { id: ami, details });
        }
        let reimport = self.opts.reimport || ctx.options.reimport;
        if !reimport {
            if let Some((ami, root)) = self.find_base_image(&m.sha1).await.map_err(be)? {
                ctx.events.info(format!(
                    "reusing {ami} in {region}, imported earlier from stemcell sha1 {}",
                    m.sha1
                ));
                let mut details = BTreeMap::new();
                details.insert("source".into(), "reused".into());
                details.insert("root_device_name".into(), root);
                details.insert("stemcell_sha1".into(), m.sha1.clone());
                return Ok(BaseImage { id: ami, details });
            }
        }
        self.import(ctx, &path, &m).await
    }

    async fn launch(
        &self,
        ctx: &BuildContext,
        base: &BaseImage,
        access: &Access,
    ) -> Result<ConnectTarget, BuildError> {
        let region = self.region.as_str();
        let ec2 = self.clients.ec2(region).await.map_err(be)?;
        let plan = &ctx.plan;
        let name = format!("opsbake-{}", ctx.build_id());
        // Key pair.
        let mut key_name = None;
        if let Some(k) = &access.key {
            let seq = ctx.intent(KEY_PAIR, &name, serde_json::json!({ "region": region }))?;
            let tags = self.tags(ctx, &ctx.token(seq), &name);
            ec2.import_key_pair()
                .key_name(&name)
                .public_key_material(Blob::new(k.public_openssh.as_bytes()))
                .tag_specifications(tag_spec(ResourceType::KeyPair, &tags))
                .send()
                .await
                .map_err(api("ImportKeyPair", region, Some(&name)))
                .map_err(be)?;
            ctx.created(
                seq,
                KEY_PAIR,
                &rid(region, &name),
                serde_json::json!({ "region": region }),
            )?;
            key_name = Some(name.clone());
        }
        // Security group.
        let sg = match &self.opts.security_group_id {
            Some(g) => g.clone(),
            None => {
                let vpc = self.vpc_of_build(ctx).await.map_err(be)?;
                let seq = ctx.intent(
                    SECURITY_GROUP,
                    &name,
                    serde_json::json!({ "region": region, "vpc": vpc }),
                )?;
                let tags = self.tags(ctx, &ctx.token(seq), &name);
                let out = ec2
                    .create_security_group()
                    .group_name(&name)
                    .description(format!("opsbake build {}: SSH only", ctx.build_id()))
                    .vpc_id(&vpc)
                    .tag_specifications(tag_spec(ResourceType::SecurityGroup, &tags))
                    .send()
                    .await
                    .map_err(api("CreateSecurityGroup", region, Some(&name)))
                    .map_err(be)?;
                let gid = out
                    .group_id()
                    .ok_or_else(|| {
                        be(AwsError::Missing {
                            op: "CreateSecurityGroup",
                            region: region.to_string(),
                            what: "group id",
                        })
                    })?
                    .to_string();
                ctx.created(
                    seq,
                    SECURITY_GROUP,
                    &rid(region, &gid),
                    serde_json::json!({ "region": region }),
                )?;
                let mut perm = IpPermission::builder()
                    .ip_protocol("tcp")
                    .from_port(22)
                    .to_port(22);
                for c in &ssh_cidrs(plan) {
                    perm = perm.ip_ranges(
                        IpRange::builder()
                            .cidr_ip(c)
                            .description("opsbake SSH")
                            .build(),
                    );
                }
                ec2.authorize_security_group_ingress()
                    .group_id(&gid)
                    .ip_permissions(perm.build())
                    .send()
                    .await
                    .map_err(api("AuthorizeSecurityGroupIngress", region, Some(&gid)))
                    .map_err(be)?;
                gid
            }
        };
        // User data: the BOSH agent settings with the build's key.
        let keys: Vec<String> = access
            .key
            .iter()
            .map(|k| k.public_openssh.clone())
            .collect();
        let settings = opsbake_stemcell::AgentSettings::minimal(&name, keys, None);
        let json = settings
            .to_json()
            .map_err(|e| BuildError::Other(format!("agent settings: {e}")))?;
        let user_data = base64::engine::general_purpose::STANDARD.encode(json);
        // The instance.
        let seq = ctx.intent(
            INSTANCE,
            &name,
            serde_json::json!({ "region": region, "image": base.id }),
        )?;
        let token = ctx.token(seq);
        let tags = self.tags(ctx, &token, &name);
        let it = self
            .opts
            .instance_type
            .clone()
            .unwrap_or_else(|| DEFAULT_INSTANCE_TYPE.to_string());
        let mut req = ec2
            .run_instances()
            .image_id(&base.id)
            .instance_type(InstanceType::from(it.as_str()))
            .min_count(1)
            .max_count(1)
            .client_token(&token)
            .user_data(user_data)
            .metadata_options(
                InstanceMetadataOptionsRequest::builder()
                    .http_tokens(HttpTokensState::Required)
                    .http_endpoint(InstanceMetadataEndpointState::Enabled)
                    .http_put_response_hop_limit(1)
                    .build(),
            )
            .tag_specifications(tag_spec(ResourceType::Instance, &tags))
            .tag_specifications(tag_spec(ResourceType::Volume, &tags));
        if let Some(k) = &key_name {
            req = req.key_name(k);
        }
        if plan.network.public_ip.is_some() {
            let mut ni = InstanceNetworkInterfaceSpecification::builder()
                .device_index(0)
                .groups(&sg)
                .delete_on_termination(true)
                .associate_public_ip_address(plan.network.public_ip.unwrap_or(false));
            if let Some(s) = &plan.network.subnet {
                ni = ni.subnet_id(s);
            }
            req = req.network_interfaces(ni.build());
        } else {
            req = req.security_group_ids(&sg);
            if let Some(s) = &plan.network.subnet {
                req = req.subnet_id(s);
            }
        }
        if let Some(mib) = plan.disk_mib {
            let root = base
                .details
                .get("root_device_name")
                .cloned()
                .unwrap_or_else(|| "/dev/sda1".into());
            req = req.block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name(root)
                    .ebs(
                        EbsBlockDevice::builder()
                            .volume_size(i32::try_from(mib.div_ceil(1024)).unwrap_or(i32::MAX))
                            .volume_type(VolumeType::Gp3)
                            .delete_on_termination(true)
                            .build(),
                    )
                    .build(),
            );
        }
        if self.opts.spot {
            req = req.instance_market_options(
                InstanceMarketOptionsRequest::builder()
                    .market_type(MarketType::Spot)
                    .build(),
            );
        }
        let out = req
            .send()
            .await
            .map_err(api("RunInstances", region, Some(&base.id)))
            .map_err(be)?;
        let id = out
            .instances()
            .first()
            .and_then(|i| i.instance_id())
            .ok_or_else(|| {
                be(AwsError::Missing {
                    op: "RunInstances",
                    region: region.to_string(),
                    what: "instance id",
                })
            })?
            .to_string();
        ctx.created(
            seq,
            INSTANCE,
            &rid(region, &id),
            serde_json::json!({ "region": region }),
        )?;
        self.launched.lock().await.instance = Some(id.clone());
        let inst = self
            .wait_instance(&id, InstanceStateName::Running)
            .await
            .map_err(be)?;
        // Its volumes (tagged by RunInstances, deleted with it).
        for b in inst.block_device_mappings() {
            if let Some(v) = b.ebs().and_then(|e| e.volume_id()) {
                let vseq = ctx.intent(
                    VOLUME,
                    &format!("{name} {}", b.device_name().unwrap_or("")),
                    serde_json::json!({ "region": region, "instance": id }),
                )?;
                ctx.created(
                    vseq,
                    VOLUME,
                    &rid(region, v),
                    serde_json::json!({ "region": region }),
                )?;
            }
        }
        // Where to connect: the override (tests, tunnels), else the address
        // of the interface asked for.
        let host = match plan.ssh.host.as_deref().map(str::trim) {
            Some(h) if !h.is_empty() => h.to_string(),
            _ => {
                let public = inst.public_ip_address().map(str::to_string);
                let private = inst.private_ip_address().map(str::to_string);
                match plan.ssh.interface.as_deref() {
                    Some("private") => private,
                    Some("public") => public,
                    _ => public.or(private),
                }
                .ok_or_else(|| {
                    be(AwsError::Missing {
                        op: "DescribeInstances",
                        region: region.to_string(),
                        what: "address to connect to (ssh.interface)",
                    })
                })?
            }
        };
        let console = self.console_host_keys(&id).await;
        let auth = if let Some(p) = &plan.ssh.private_key_file {
            SshAuth::KeyFile(p.clone())
        } else if let Some(k) = &access.key {
            SshAuth::Key(k.clone())
        } else if let Some(p) = &plan.ssh.password {
            SshAuth::Password(p.clone())
        } else {
            return Err(be(AwsError::Invalid(
                "no way to log in: no ephemeral key, ssh.private_key_file or ssh.password".into(),
            )));
        };
        let bastion = plan.ssh.bastion.as_ref().map(|b| {
            Box::new(SshTarget {
                host: b.host.clone(),
                port: b.port,
                user: b.user.clone(),
                auth: match &b.private_key_file {
                    Some(p) => SshAuth::KeyFile(p.clone()),
                    None => auth.clone(),
                },
                host_key: match &b.host_key {
                    HostKeySpec::Pin(k) => HostKeyPolicy::Pin(k.clone()),
                    HostKeySpec::Insecure => HostKeyPolicy::Insecure,
                    HostKeySpec::Tofu => HostKeyPolicy::TrustOnFirstUse,
                },
                login_timeout: plan.ssh.login_timeout,
                bastion: None,
            })
        });
        Ok(ConnectTarget::Ssh(SshTarget {
            host,
            port: plan.ssh.port.unwrap_or(22),
            user: plan.ssh.user.clone(),
            auth,
            host_key: self.host_key_policy(ctx, console),
            login_timeout: plan.ssh.login_timeout,
            bastion,
        }))
    }

    async fn capture(&self, ctx: &BuildContext) -> Result<Artifact, BuildError> {
        let region = self.region.clone();
        let region = region.as_str();
        let id = self
            .launched
            .lock()
            .await
            .instance
            .clone()
            .ok_or_else(|| BuildError::Other("capture without a launched instance".into()))?;
        let ec2 = self.clients.ec2(region).await.map_err(be)?;
        let name = self
            .opts
            .ami_name
            .clone()
            .unwrap_or_else(|| format!("{}-{}", ctx.plan.template.name, ctx.build_id()));
        for r in all_regions(region, &self.opts) {
            self.deregister_named(&r, &name).await.map_err(be)?;
        }
        ec2.stop_instances()
            .instance_ids(&id)
            .send()
            .await
            .map_err(api("StopInstances", region, Some(&id)))
            .map_err(be)?;
        self.wait_instance(&id, InstanceStateName::Stopped)
            .await
            .map_err(be)?;
        // The image.
        let create_name = if self.opts.encrypt {
            format!("{name}-unencrypted")
        } else {
            name.clone()
        };
        let seq = ctx.intent(
            IMAGE,
            &create_name,
            serde_json::json!({ "region": region, "instance": id }),
        )?;
        let token = ctx.token(seq);
        let mut req = ec2
            .create_image()
            .instance_id(&id)
            .name(&create_name)
            .tag_specifications(tag_spec(
                ResourceType::Image,
                &self.tags(ctx, &token, &create_name),
            ));
        if let Some(d) = &self.opts.ami_description {
            req = req.description(d);
        }
        let out = req
            .send()
            .await
            .map_err(api("CreateImage", region, Some(&id)))
            .map_err(be)?;
        let mut ami = out
            .image_id()
            .ok_or_else(|| {
                be(AwsError::Missing {
                    op: "CreateImage",
                    region: region.to_string(),
                    what: "image id",
                })
            })?
            .to_string();
        ctx.created(
            seq,
            IMAGE,
            &rid(region, &ami),
            serde_json::json!({ "region": region }),
        )?;
        self.wait_image(region, &ami).await.map_err(be)?;
        let mut images: Vec<(String, u64, String, String)> = Vec::new(); // region, seq, ami, token
        if self.opts.encrypt {
            // An encrypted copy in the same region replaces the original.
            let (eseq, eami, etoken) = self.copy_to(ctx, region, &ami, region, &name).await?;
            self.deleter.delete_image(region, &ami).await.map_err(be)?;
            ctx.deleted(seq, IMAGE, &rid(region, &ami))?;
            ami = eami;
            images.push((region.to_string(), eseq, ami.clone(), etoken));
        } else {
            images.push((region.to_string(), seq, ami.clone(), token));
        }
        // Copies, in parallel.
        let copies = futures::future::join_all(
            self.opts
                .copy_regions
                .iter()
                .filter(|r| r.as_str() != region)
                .map(|r| {
                    let ami = ami.clone();
                    let name = name.clone();
                    async move {
                        self.copy_to(ctx, region, &ami, r, &name)
                            .await
                            .map(|(s, a, t)| (r.clone(), s, a, t))
                    }
                }),
        )
        .await;
        let mut errors = Vec::new();
        for c in copies {
            match c {
                Ok(x) => images.push(x),
                Err(e) => errors.push(e.to_string()),
            }
        }
        if !errors.is_empty() {
            return Err(BuildError::Other(format!(
                "copying {ami}: {}",
                errors.join("; ")
            )));
        }
        // Tags, permissions, deprecation; snapshots recorded and kept.
        let mut kept = Vec::new();
        for (r, s, a, t) in &images {
            self.finish_image(ctx, r, a, &name, t).await?;
            for (sseq, sid) in self.adopt_snapshots(ctx, r, a, &name).await? {
                kept.push((sseq, SNAPSHOT, sid));
            }
            kept.push((*s, IMAGE, rid(r, a)));
        }
        for (s, k, i) in kept {
            ctx.keep(s, k, &i)?;
        }
        let artifact_id = images
            .iter()
            .map(|(r, _, a, _)| format!("{r}:{a}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut custom = BTreeMap::new();
        custom.insert("ami_name".into(), name);
        custom.insert("source_region".into(), region.to_string());
        Ok(Artifact {
            id: artifact_id,
            files: Vec::new(),
            custom_data: custom,
        })
    }
}

/// A deleter for `opsbake cleanup` from a journal's `cleanup_config`
/// (`{"region", "regions", "endpoint"}`).
pub fn deleter(cleanup_config: &serde_json::Value) -> Result<Arc<dyn Deleter>, BuildError> {
    let region = cleanup_config
        .get("region")
        .and_then(|v| v.as_str())
        .ok_or_else(|| {
            be(AwsError::Invalid(
                "the journal's cleanup_config has no region".into(),
            ))
        })?
        .to_string();
    let mut regions = vec![region.clone()];
    for r in cleanup_config
        .get("regions")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
    {
        if !regions.iter().any(|x| x == r) {
            regions.push(r.to_string());
        }
    }
    let endpoint = cleanup_config
        .get("endpoint")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let clients = Arc::new(Clients::new(&region, endpoint));
    let bucket = cleanup_config
        .get("import_bucket")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    Ok(Arc::new(
        AwsDeleter::new(
            clients,
            regions,
            Waiter::with_timeout(Duration::from_secs(15 * 60)),
        )
        .with_bucket(bucket),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_endpoints_only() {
        for ok in [
            "http://127.0.0.1:5000",
            "http://127.9.8.7/",
            "http://localhost:1234/x",
            "https://[::1]:443",
            "http://user@127.0.0.1:80",
        ] {
            assert!(is_loopback_endpoint(ok), "{ok}");
        }
        for no in [
            "https://ec2.us-east-1.amazonaws.com",
            "http://10.0.0.1:5000",
            "http://127.0.0.1.example.com",
            "http://[2001:db8::1]:80",
            "",
        ] {
            assert!(!is_loopback_endpoint(no), "{no}");
        }
    }

    #[test]
    fn empty_strings_mean_unset() {
        let mut o = AwsOptions {
            endpoint: Some(String::new()),
            copy_regions: vec!["".into(), " eu-west-1 ".into()],
            ami_users: vec!["".into()],
            ..AwsOptions::default()
        };
        o.tags.insert("appliance".into(), "1".into());
        o.tags.insert("".into(), "".into());
        let o = normalise(o);
        assert_eq!(o.endpoint, None);
        assert_eq!(o.copy_regions, vec!["eu-west-1".to_string()]);
        assert!(o.ami_users.is_empty());
        assert_eq!(o.tags.len(), 1);
    }
}
