//! Copying and sharing a finished AMI: CopyImage to a region (waited for),
//! then per image its tags, launch permissions and deprecation, and its
//! snapshots recorded, tagged and shared.

use aws_sdk_ec2::primitives::{DateTime, DateTimeFormat};
use aws_sdk_ec2::types::{
    LaunchPermission, LaunchPermissionModifications, OperationType, SnapshotAttributeName,
};
use opsbake_core::builder::{BuildContext, BuildError};

use crate::error::{api, AwsError};
use crate::resources::rid;
use crate::AwsBuilder;

impl AwsBuilder {
    /// CopyImage to one region, journaled, waited for; returns (seq, ami, token).
    pub(crate) async fn copy_to(
        &self,
        ctx: &BuildContext,
        src_region: &str,
        src: &str,
        dst_region: &str,
        name: &str,
    ) -> Result<(u64, String, String), BuildError> {
        let (seq, ami, token) = self
            .copy_image(ctx, src_region, src, dst_region, name)
            .await?;
        self.wait_image(dst_region, &ami).await?;
        Ok((seq, ami, token))
    }

    /// Record, tag and share the snapshots of a new AMI; returns their seqs.
    pub(crate) async fn adopt_snapshots(
        &self,
        ctx: &BuildContext,
        region: &str,
        ami: &str,
        name: &str,
    ) -> Result<Vec<(u64, String)>, BuildError> {
        let mut out = Vec::new();
        for s in self.image_snapshots(region, ami).await? {
            let seq = self
                .record_snapshot(
                    ctx,
                    &format!("{name} {s}"),
                    serde_json::json!({ "region": region, "image": ami }),
                    region,
                    &s,
                )
                .await?;
            let mut tags = self.tags(ctx, &ctx.token(seq), name);
            tags.extend(self.opts.tags.clone());
            // moto answers 500 to snapshot TagSpecifications on CreateImage;
            // CreateTags afterwards works everywhere.
            self.create_tags(region, &s, &tags).await?;
            if !self.opts.snapshot_users.is_empty() {
                let ec2 = self.clients.ec2(region).await?;
                ec2.modify_snapshot_attribute()
                    .snapshot_id(&s)
                    .attribute(SnapshotAttributeName::CreateVolumePermission)
                    .operation_type(OperationType::Add)
                    .set_user_ids(Some(self.opts.snapshot_users.clone()))
                    .send()
                    .await
                    .map_err(api("ModifySnapshotAttribute", region, Some(&s)))?;
            }
            out.push((seq, rid(region, &s)));
        }
        Ok(out)
    }

    /// Launch permissions, tags and deprecation of a finished AMI.
    pub(crate) async fn finish_image(
        &self,
        ctx: &BuildContext,
        region: &str,
        ami: &str,
        name: &str,
        token: &str,
    ) -> Result<(), BuildError> {
        let ec2 = self.clients.ec2(region).await?;
        let mut tags = self.tags(ctx, token, name);
        tags.extend(self.opts.tags.clone());
        self.create_tags(region, ami, &tags).await?;
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
                .map_err(api("ModifyImageAttribute", region, Some(ami)))?;
        }
        if let Some(at) = &self.opts.deprecate_at {
            let t = DateTime::from_str(at, DateTimeFormat::DateTime)
                .map_err(|e| AwsError::Invalid(format!("deprecate_at {at}: {e}")))?;
            ec2.enable_image_deprecation()
                .image_id(ami)
                .deprecate_at(t)
                .send()
                .await
                .map_err(api("EnableImageDeprecation", region, Some(ami)))?;
        }
        Ok(())
    }
}
