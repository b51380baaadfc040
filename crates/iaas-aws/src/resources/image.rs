//! AMIs: RegisterImage (a base image from an imported snapshot),
//! CreateImage (the build's image), CopyImage (encryption and other
//! regions); waiting for them; deregistering (with their snapshots).

use aws_sdk_ec2::types::{
    ArchitectureValues, BlockDeviceMapping, EbsBlockDevice, ImageState, ResourceType, VolumeType,
};
use opsbake_core::builder::{BuildContext, BuildError, Deleted, Made};

use super::{filter, rid, tag_spec, AwsDeleter, IMAGE};
use crate::error::{api, AwsError};
use crate::wait::Poll;
use crate::AwsBuilder;

/// The AMI id in a create call's answer.
fn image_id(id: Option<&str>, op: &'static str, region: &str) -> Result<String, AwsError> {
    id.map(str::to_string).ok_or_else(|| AwsError::Missing {
        op,
        region: region.to_string(),
        what: "image id",
    })
}

impl AwsBuilder {
    /// RegisterImage `name` from a snapshot of a stemcell's root disk;
    /// returns (journal seq, AMI).
    pub(crate) async fn register_image(
        &self,
        ctx: &BuildContext,
        name: &str,
        m: &opsbake_stemcell::Manifest,
        snap: &str,
        root: &str,
    ) -> Result<(u64, String), BuildError> {
        let region = self.region.as_str();
        let ec2 = self.clients.ec2(region).await?;
        ctx.create_resource(
            IMAGE,
            name,
            serde_json::json!({ "region": region }),
            |_token| async move {
                let out = ec2
                    .register_image()
                    .name(name)
                    .description(format!(
                        "BOSH stemcell {} {} (sha1 {})",
                        m.name, m.version, m.sha1
                    ))
                    .architecture(ArchitectureValues::X8664)
                    .virtualization_type("hvm")
                    .ena_support(true)
                    .sriov_net_support("simple")
                    .root_device_name(root)
                    .block_device_mappings(
                        BlockDeviceMapping::builder()
                            .device_name(root)
                            .ebs(
                                EbsBlockDevice::builder()
                                    .snapshot_id(snap)
                                    .delete_on_termination(true)
                                    .volume_type(VolumeType::Gp3)
                                    .build(),
                            )
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(api("RegisterImage", region, Some(snap)))?;
                let ami = image_id(out.image_id(), "RegisterImage", region)?;
                Ok::<_, AwsError>(
                    Made::new(rid(region, &ami), ami)
                        .with_data(serde_json::json!({ "region": region })),
                )
            },
        )
        .await
    }

    /// CreateImage `name` from the stopped instance; returns (journal seq,
    /// AMI, token).
    pub(crate) async fn create_image(
        &self,
        ctx: &BuildContext,
        instance: &str,
        name: &str,
    ) -> Result<(u64, String, String), BuildError> {
        let region = self.region.as_str();
        let ec2 = self.clients.ec2(region).await?;
        let (seq, ami) = ctx
            .create_resource(
                IMAGE,
                name,
                serde_json::json!({ "region": region, "instance": instance }),
                |token| async move {
                    let mut req = ec2
                        .create_image()
                        .instance_id(instance)
                        .name(name)
                        .tag_specifications(tag_spec(
                            ResourceType::Image,
                            &self.tags(ctx, &token, name),
                        ));
                    if let Some(d) = &self.opts.ami_description {
                        req = req.description(d);
                    }
                    let out =
                        req.send()
                            .await
                            .map_err(api("CreateImage", region, Some(instance)))?;
                    let ami = image_id(out.image_id(), "CreateImage", region)?;
                    Ok::<_, AwsError>(
                        Made::new(rid(region, &ami), ami)
                            .with_data(serde_json::json!({ "region": region })),
                    )
                },
            )
            .await?;
        Ok((seq, ami, ctx.token(seq)))
    }

    /// CopyImage of `src` (in `src_region`) as `name` into `dst_region`
    /// (encrypted if asked); returns (journal seq, AMI, token).
    pub(crate) async fn copy_image(
        &self,
        ctx: &BuildContext,
        src_region: &str,
        src: &str,
        dst_region: &str,
        name: &str,
    ) -> Result<(u64, String, String), BuildError> {
        let ec2 = self.clients.ec2(dst_region).await?;
        let (seq, ami) = ctx
            .create_resource(
                IMAGE,
                name,
                serde_json::json!({ "region": dst_region, "source": rid(src_region, src) }),
                |token| async move {
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
                        .map_err(api("CopyImage", dst_region, Some(src)))?;
                    let ami = image_id(out.image_id(), "CopyImage", dst_region)?;
                    Ok::<_, AwsError>(
                        Made::new(rid(dst_region, &ami), ami)
                            .with_data(serde_json::json!({ "region": dst_region })),
                    )
                },
            )
            .await?;
        Ok((seq, ami, ctx.token(seq)))
    }

    /// Wait until an AMI is available (adaptive polling, see [`crate::wait`]).
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

    /// Deregister images of this name (force_deregister) in a region.
    pub(crate) async fn deregister_named(
        &self,
        region: &str,
        name: &str,
    ) -> Result<bool, AwsError> {
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
}

impl AwsDeleter {
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
}
