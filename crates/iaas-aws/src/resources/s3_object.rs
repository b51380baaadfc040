//! The S3 object of an `import: s3` (the raw disk, uploaded by
//! [`crate::s3import`]; id `region:bucket/key`): its journaled upload and
//! its deletion (with any unfinished multipart upload under its key).

use opsbake_core::builder::{BuildContext, BuildError, Deleted, Made};
use opsbake_core::journal::Resource;

use super::{rid, AwsDeleter, S3_OBJECT};
use crate::error::AwsError;
use crate::s3import::{S3Report, S3Upload};
use crate::AwsBuilder;

impl AwsBuilder {
    /// Upload the object (journaled as `bucket/key`); returns (journal
    /// seq, what the upload did).
    pub(crate) async fn upload_object(
        &self,
        ctx: &BuildContext,
        up: &S3Upload<'_>,
    ) -> Result<(u64, S3Report), BuildError> {
        let (region, bucket, key) = (up.region, up.bucket, up.key);
        let object = format!("{bucket}/{key}");
        let object = object.as_str();
        let data = serde_json::json!({ "region": region, "bucket": bucket, "key": key });
        ctx.create_resource(S3_OBJECT, object, data.clone(), |_| async move {
            let rep = up.run().await?;
            Ok::<_, AwsError>(Made::new(rid(region, object), rep).with_data(data))
        })
        .await
    }
}

impl AwsDeleter {
    /// Delete the object of an entry (its data names bucket and key; a
    /// swept one has them in its id).
    pub(crate) async fn delete_s3_object(
        &self,
        res: &Resource,
        region: &str,
        id: Option<&str>,
    ) -> Result<Deleted, AwsError> {
        let (bucket, key) = match (
            res.data.get("bucket").and_then(|v| v.as_str()),
            res.data.get("key").and_then(|v| v.as_str()),
        ) {
            (Some(b), Some(k)) => (b.to_string(), k.to_string()),
            // Found by a sweep: `region:bucket/key`.
            _ => match id.and_then(|i| i.split_once('/')) {
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
}
