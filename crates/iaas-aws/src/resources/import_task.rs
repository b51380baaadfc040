//! ImportSnapshot tasks (`import: s3`): started with the client token,
//! waited for (their snapshot), cancelled while still running.

use aws_sdk_ec2::types::{ResourceType, SnapshotDiskContainer, UserBucket};
use opsbake_core::builder::{BuildContext, BuildError, Deleted, Made};

use super::{rid, tag_spec, AwsDeleter, IMPORT_TASK};
use crate::error::{api, AwsError};
use crate::wait::Poll;
use crate::AwsBuilder;

impl AwsBuilder {
    /// ImportSnapshot of `bucket/key` (a raw disk) named `name`; returns
    /// (journal seq, task id).
    pub(crate) async fn start_import_snapshot(
        &self,
        ctx: &BuildContext,
        name: &str,
        bucket: &str,
        key: &str,
    ) -> Result<(u64, String), BuildError> {
        let region = self.region.as_str();
        let ec2 = self.clients.ec2(region).await?;
        let object = format!("{bucket}/{key}");
        let object = object.as_str();
        ctx.create_resource(
            IMPORT_TASK,
            name,
            serde_json::json!({ "region": region }),
            |token| async move {
                let out = ec2
                    .import_snapshot()
                    .client_token(&token)
                    .description(format!("{name} (opsbake {})", ctx.build_id()))
                    .disk_container(
                        SnapshotDiskContainer::builder()
                            .format("RAW")
                            .description(name)
                            .user_bucket(
                                UserBucket::builder().s3_bucket(bucket).s3_key(key).build(),
                            )
                            .build(),
                    )
                    .tag_specifications(tag_spec(
                        ResourceType::ImportSnapshotTask,
                        &self.tags(ctx, &token, name),
                    ))
                    .send()
                    .await
                    .map_err(api("ImportSnapshot", region, Some(object)))?;
                let task = out
                    .import_task_id()
                    .ok_or_else(|| AwsError::Missing {
                        op: "ImportSnapshot",
                        region: region.to_string(),
                        what: "import task id",
                    })?
                    .to_string();
                Ok::<_, AwsError>(
                    Made::new(rid(region, &task), task)
                        .with_data(serde_json::json!({ "region": region })),
                )
            },
        )
        .await
    }

    /// Wait for an import snapshot task; returns its snapshot.
    pub(crate) async fn wait_import(&self, region: &str, task: &str) -> Result<String, AwsError> {
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
}

impl AwsDeleter {
    /// Cancel a task that is still active or pending (a finished one
    /// cannot be cancelled: it expires by itself).
    pub(crate) async fn cancel_import_task(
        &self,
        region: &str,
        task: &str,
    ) -> Result<Deleted, AwsError> {
        let ec2 = self.clients.ec2(region).await?;
        let o = ec2
            .describe_import_snapshot_tasks()
            .import_task_ids(task)
            .send()
            .await;
        let active = match o {
            Ok(o) => o.import_snapshot_tasks().iter().any(|t| {
                t.snapshot_task_detail()
                    .and_then(|d| d.status())
                    .is_some_and(|s| s == "active" || s == "pending")
            }),
            Err(e) => {
                let e = api("DescribeImportSnapshotTasks", region, Some(task))(e);
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
            .import_task_id(task)
            .cancel_reason("opsbake cleanup")
            .send()
            .await
            .map_err(api("CancelImportTask", region, Some(task)))?;
        Ok(Deleted::Now)
    }
}
