//! The build instance (RunInstances with the client token, IMDSv2
//! required) and the EBS volumes it comes with; waiting for its states;
//! terminating it and deleting volumes.

use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, HttpTokensState, InstanceMarketOptionsRequest,
    InstanceMetadataEndpointState, InstanceMetadataOptionsRequest,
    InstanceNetworkInterfaceSpecification, InstanceStateName, InstanceType, MarketType,
    ResourceType, VolumeType,
};
use opsbake_core::builder::{BaseImage, BuildContext, BuildError, Deleted, Made};

use super::{rid, tag_spec, AwsDeleter, INSTANCE, VOLUME};
use crate::error::{api, AwsError};
use crate::options::DEFAULT_INSTANCE_TYPE;
use crate::wait::Poll;
use crate::AwsBuilder;

/// What RunInstances gets besides the plan and the base image.
pub(crate) struct RunSpec<'a> {
    /// Name (and Name tag) of the instance.
    pub name: &'a str,
    /// The imported key pair, if any.
    pub key_name: Option<&'a str>,
    /// The security group.
    pub security_group: &'a str,
    /// Base64 user data.
    pub user_data: String,
}

impl AwsBuilder {
    /// RunInstances; returns the instance id.
    pub(crate) async fn run_instance(
        &self,
        ctx: &BuildContext,
        base: &BaseImage,
        spec: RunSpec<'_>,
    ) -> Result<String, BuildError> {
        let region = self.region.as_str();
        let ec2 = self.clients.ec2(region).await?;
        let plan = &ctx.plan;
        let name = spec.name;
        let (_, id) = ctx
            .create_resource(
                INSTANCE,
                name,
                serde_json::json!({ "region": region, "image": base.id }),
                |token| async move {
                    let tags = self.tags(ctx, &token, name);
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
                        .user_data(spec.user_data)
                        .metadata_options(
                            InstanceMetadataOptionsRequest::builder()
                                .http_tokens(HttpTokensState::Required)
                                .http_endpoint(InstanceMetadataEndpointState::Enabled)
                                .http_put_response_hop_limit(1)
                                .build(),
                        )
                        .tag_specifications(tag_spec(ResourceType::Instance, &tags))
                        .tag_specifications(tag_spec(ResourceType::Volume, &tags));
                    if let Some(k) = spec.key_name {
                        req = req.key_name(k);
                    }
                    let sg = spec.security_group;
                    if plan.network.public_ip.is_some() {
                        let mut ni = InstanceNetworkInterfaceSpecification::builder()
                            .device_index(0)
                            .groups(sg)
                            .delete_on_termination(true)
                            .associate_public_ip_address(plan.network.public_ip.unwrap_or(false));
                        if let Some(s) = &plan.network.subnet {
                            ni = ni.subnet_id(s);
                        }
                        req = req.network_interfaces(ni.build());
                    } else {
                        req = req.security_group_ids(sg);
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
                                        .volume_size(
                                            i32::try_from(mib.div_ceil(1024)).unwrap_or(i32::MAX),
                                        )
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
                    let out =
                        req.send()
                            .await
                            .map_err(api("RunInstances", region, Some(&base.id)))?;
                    let id = out
                        .instances()
                        .first()
                        .and_then(|i| i.instance_id())
                        .ok_or_else(|| AwsError::Missing {
                            op: "RunInstances",
                            region: region.to_string(),
                            what: "instance id",
                        })?
                        .to_string();
                    Ok::<_, AwsError>(
                        Made::new(rid(region, &id), id)
                            .with_data(serde_json::json!({ "region": region })),
                    )
                },
            )
            .await?;
        Ok(id)
    }

    /// Record the volumes of a running instance (tagged by RunInstances,
    /// deleted with it).
    pub(crate) async fn record_volumes(
        &self,
        ctx: &BuildContext,
        name: &str,
        id: &str,
        inst: &aws_sdk_ec2::types::Instance,
    ) -> Result<(), BuildError> {
        let region = self.region.as_str();
        for b in inst.block_device_mappings() {
            if let Some(v) = b.ebs().and_then(|e| e.volume_id()) {
                ctx.create_resource(
                    VOLUME,
                    &format!("{name} {}", b.device_name().unwrap_or("")),
                    serde_json::json!({ "region": region, "instance": id }),
                    |_| async move {
                        Ok::<_, BuildError>(
                            Made::new(rid(region, v), ())
                                .with_data(serde_json::json!({ "region": region })),
                        )
                    },
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Wait until the instance reaches `want` (fails on terminated).
    pub(crate) async fn wait_instance(
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
}

impl AwsDeleter {
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

    pub(crate) async fn delete_volume(&self, region: &str, id: &str) -> Result<Deleted, AwsError> {
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
}
