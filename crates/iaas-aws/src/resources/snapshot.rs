//! EBS snapshots: recorded when something else made them (the EBS direct
//! upload in [`crate::import`], ImportSnapshot in [`crate::s3import`],
//! CreateImage and CopyImage behind an AMI), waited for, deleted (an AMI
//! registered from one goes first).

use aws_sdk_ec2::types::SnapshotState;
use opsbake_core::builder::{BuildContext, BuildError, Deleted, Made};

use super::{rid, AwsDeleter, SNAPSHOT};
use crate::error::{api, AwsError};
use crate::wait::Poll;
use crate::AwsBuilder;

impl AwsBuilder {
    /// Journal a snapshot that another call made (`intent` names its
    /// origin); returns its journal seq.
    pub(crate) async fn record_snapshot(
        &self,
        ctx: &BuildContext,
        name: &str,
        intent: serde_json::Value,
        region: &str,
        snap: &str,
    ) -> Result<u64, BuildError> {
        let (seq, ()) = ctx
            .create_resource(SNAPSHOT, name, intent, |_| async move {
                Ok::<_, BuildError>(
                    Made::new(rid(region, snap), ())
                        .with_data(serde_json::json!({ "region": region })),
                )
            })
            .await?;
        Ok(seq)
    }

    /// Wait until a snapshot is completed.
    pub(crate) async fn wait_snapshot(&self, region: &str, id: &str) -> Result<(), AwsError> {
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

    /// Snapshots behind an AMI.
    pub(crate) async fn image_snapshots(
        &self,
        region: &str,
        ami: &str,
    ) -> Result<Vec<String>, AwsError> {
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
}

impl AwsDeleter {
    pub(crate) async fn delete_snapshot_only(
        &self,
        region: &str,
        id: &str,
    ) -> Result<Deleted, AwsError> {
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

    pub(crate) async fn delete_snapshot(
        &self,
        region: &str,
        id: &str,
    ) -> Result<Deleted, AwsError> {
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
}
