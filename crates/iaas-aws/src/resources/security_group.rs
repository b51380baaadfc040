//! The temporary security group (SSH from `network.ssh_cidrs` only) in the
//! VPC of the build's subnet or the default VPC, and its deletion.

use aws_sdk_ec2::types::{IpPermission, IpRange, ResourceType};
use opsbake_core::builder::{BuildContext, BuildError, Deleted, Made};

use super::{filter, rid, tag_spec, AwsDeleter, SECURITY_GROUP};
use crate::error::{api, AwsError};
use crate::AwsBuilder;

impl AwsBuilder {
    /// Create the group `name` allowing SSH from the plan's CIDRs; its id.
    pub(crate) async fn create_security_group(
        &self,
        ctx: &BuildContext,
        name: &str,
    ) -> Result<String, BuildError> {
        let region = self.region.as_str();
        let ec2 = self.clients.ec2(region).await?;
        let vpc = self.vpc_of_build(ctx).await?;
        let vpc = vpc.as_str();
        let ec2_ref = &ec2;
        let (_, gid) = ctx
            .create_resource(
                SECURITY_GROUP,
                name,
                serde_json::json!({ "region": region, "vpc": vpc }),
                |token| async move {
                    let tags = self.tags(ctx, &token, name);
                    let out = ec2_ref
                        .create_security_group()
                        .group_name(name)
                        .description(format!("opsbake build {}: SSH only", ctx.build_id()))
                        .vpc_id(vpc)
                        .tag_specifications(tag_spec(ResourceType::SecurityGroup, &tags))
                        .send()
                        .await
                        .map_err(api("CreateSecurityGroup", region, Some(name)))?;
                    let gid = out
                        .group_id()
                        .ok_or_else(|| AwsError::Missing {
                            op: "CreateSecurityGroup",
                            region: region.to_string(),
                            what: "group id",
                        })?
                        .to_string();
                    Ok::<_, AwsError>(
                        Made::new(rid(region, &gid), gid)
                            .with_data(serde_json::json!({ "region": region })),
                    )
                },
            )
            .await?;
        let mut perm = IpPermission::builder()
            .ip_protocol("tcp")
            .from_port(22)
            .to_port(22);
        for c in &ctx.plan.ssh_cidrs() {
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
            .map_err(api("AuthorizeSecurityGroupIngress", region, Some(&gid)))?;
        Ok(gid)
    }

    /// The VPC of `network.subnet`, else the region's default VPC.
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
}

impl AwsDeleter {
    pub(crate) async fn delete_security_group(
        &self,
        region: &str,
        id: &str,
    ) -> Result<Deleted, AwsError> {
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
}
