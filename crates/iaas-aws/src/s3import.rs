//! Heavy stemcells where the EBS direct APIs are denied (`import: s3`): the
//! raw disk goes to S3 as a multipart upload (parts in parallel, bounded
//! concurrency, a SHA-256 of each part checked by S3), then `ImportSnapshot`
//! turns the object into an EBS snapshot, polled with
//! `DescribeImportSnapshotTasks` by the builder's own waiter. The object is
//! deleted once the snapshot exists (and by cleanup, together with any
//! unfinished multipart upload under its key).

use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use base64::Engine as _;
use futures::StreamExt as _;
use sha2::{Digest as _, Sha256};

use crate::error::{api, AwsError};

/// Smallest part (AWS: 5 MiB, except the last one).
pub const MIN_PART: u64 = 5 << 20;
/// Part size unless the disk needs bigger parts (at most 10,000 parts).
pub const DEFAULT_PART: u64 = 16 << 20;
/// Parts in flight.
pub const DEFAULT_CONCURRENCY: usize = 4;

/// The part size for a disk of `len` bytes: `preferred` (at least 5 MiB),
/// grown to whole MiB so that 10,000 parts hold the disk.
pub fn part_size(len: u64, preferred: u64) -> u64 {
    let min_for_len = len.div_ceil(10_000).div_ceil(1 << 20) << 20;
    preferred.max(MIN_PART).max(min_for_len)
}

/// Where and how to upload.
pub struct S3Upload<'a> {
    /// S3 client of the build region.
    pub s3: &'a aws_sdk_s3::Client,
    /// Region (for errors).
    pub region: &'a str,
    /// Bucket.
    pub bucket: &'a str,
    /// Object key.
    pub key: &'a str,
    /// The raw disk.
    pub disk: &'a Path,
    /// Part size (see [`part_size`]).
    pub part_size: u64,
    /// Parts in flight.
    pub concurrency: usize,
}

/// What an upload did.
#[derive(Debug, Clone, Default)]
pub struct S3Report {
    /// Parts sent.
    pub parts: usize,
    /// Bytes sent.
    pub bytes: u64,
    /// Wall seconds.
    pub seconds: f64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AwsError + '_ {
    move |source| AwsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl S3Upload<'_> {
    fn what(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }

    /// Upload the disk (CreateMultipartUpload, UploadPart in parallel,
    /// CompleteMultipartUpload). On a failure the upload is aborted before
    /// the error is returned.
    pub async fn run(&self) -> Result<S3Report, AwsError> {
        let started = std::time::Instant::now();
        let what = self.what();
        let out = self
            .s3
            .create_multipart_upload()
            .bucket(self.bucket)
            .key(self.key)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .send()
            .await
            .map_err(api("CreateMultipartUpload", self.region, Some(&what)))?;
        let upload_id = out
            .upload_id()
            .ok_or(AwsError::Missing {
                op: "CreateMultipartUpload",
                region: self.region.to_string(),
                what: "upload id",
            })?
            .to_string();
        match self.parts(&upload_id).await {
            Ok(r) => Ok(S3Report {
                seconds: started.elapsed().as_secs_f64(),
                ..r
            }),
            Err(e) => {
                if let Err(a) = self
                    .s3
                    .abort_multipart_upload()
                    .bucket(self.bucket)
                    .key(self.key)
                    .upload_id(&upload_id)
                    .send()
                    .await
                {
                    tracing::warn!(upload = %upload_id, error = %aws_sdk_s3::error::DisplayErrorContext(&a), "abort multipart upload");
                }
                Err(e)
            }
        }
    }

    async fn parts(&self, upload_id: &str) -> Result<S3Report, AwsError> {
        let what = self.what();
        let file = std::fs::File::open(self.disk).map_err(io(self.disk))?;
        let len = file.metadata().map_err(io(self.disk))?.len();
        let file = Arc::new(file);
        let ps = self.part_size.max(MIN_PART);
        let count = len.div_ceil(ps).max(1);
        let results: Vec<Result<CompletedPart, AwsError>> = futures::stream::iter(0..count)
            .map(|i| {
                let file = file.clone();
                let what = what.clone();
                async move {
                    let off = i * ps;
                    let n = (len - off).min(ps) as usize;
                    let disk = self.disk.to_path_buf();
                    let data = tokio::task::spawn_blocking(move || {
                        let mut buf = vec![0u8; n];
                        file.read_exact_at(&mut buf, off).map(|_| buf)
                    })
                    .await
                    .map_err(|e| AwsError::Io {
                        path: disk.clone(),
                        source: std::io::Error::other(e.to_string()),
                    })?
                    .map_err(io(&disk))?;
                    let sum =
                        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&data));
                    let number = i32::try_from(i + 1).map_err(|_| {
                        AwsError::Invalid(format!("{what}: more than {} parts", i32::MAX))
                    })?;
                    let out = self
                        .s3
                        .upload_part()
                        .bucket(self.bucket)
                        .key(self.key)
                        .upload_id(upload_id)
                        .part_number(number)
                        .checksum_sha256(&sum)
                        .body(ByteStream::from(data))
                        .send()
                        .await
                        .map_err(api(
                            "UploadPart",
                            self.region,
                            Some(&format!("{what} part {number}")),
                        ))?;
                    Ok(CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.e_tag().map(str::to_string))
                        .checksum_sha256(sum)
                        .build())
                }
            })
            .buffered(self.concurrency.max(1))
            .collect()
            .await;
        let mut parts = Vec::with_capacity(results.len());
        let mut errors = Vec::new();
        for r in results {
            match r {
                Ok(p) => parts.push(p),
                Err(e) => errors.push(e.to_string()),
            }
        }
        if !errors.is_empty() {
            return Err(AwsError::Invalid(format!(
                "uploading {what}: {} part(s) failed: {}",
                errors.len(),
                errors.join("; ")
            )));
        }
        let n = parts.len();
        self.s3
            .complete_multipart_upload()
            .bucket(self.bucket)
            .key(self.key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(api("CompleteMultipartUpload", self.region, Some(&what)))?;
        Ok(S3Report {
            parts: n,
            bytes: len,
            seconds: 0.0,
        })
    }
}

/// Delete an object and abort every unfinished multipart upload under its
/// key; true when something was there.
pub async fn delete_object(
    s3: &aws_sdk_s3::Client,
    region: &str,
    bucket: &str,
    key: &str,
) -> Result<bool, AwsError> {
    let what = format!("s3://{bucket}/{key}");
    let mut found = false;
    let ups = s3
        .list_multipart_uploads()
        .bucket(bucket)
        .prefix(key)
        .send()
        .await
        .map_err(api("ListMultipartUploads", region, Some(&what)))?;
    for u in ups.uploads() {
        if u.key() != Some(key) {
            continue;
        }
        if let Some(id) = u.upload_id() {
            found = true;
            s3.abort_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(id)
                .send()
                .await
                .map_err(api("AbortMultipartUpload", region, Some(&what)))?;
        }
    }
    let listed = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(key)
        .send()
        .await
        .map_err(api("ListObjectsV2", region, Some(&what)))?;
    if listed.contents().iter().any(|o| o.key() == Some(key)) {
        found = true;
        s3.delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(api("DeleteObject", region, Some(&what)))?;
    }
    Ok(found)
}

/// Keys under `prefix` (objects and unfinished uploads), for tag-less sweeps.
pub async fn keys_under(
    s3: &aws_sdk_s3::Client,
    region: &str,
    bucket: &str,
    prefix: &str,
) -> Result<Vec<String>, AwsError> {
    let what = format!("s3://{bucket}/{prefix}");
    let mut keys: Vec<String> = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .map_err(api("ListObjectsV2", region, Some(&what)))?
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect();
    let ups = s3
        .list_multipart_uploads()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .map_err(api("ListMultipartUploads", region, Some(&what)))?;
    for u in ups.uploads() {
        if let Some(k) = u.key() {
            if !keys.iter().any(|x| x == k) {
                keys.push(k.to_string());
            }
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_at_least_5_mib_and_at_most_10000() {
        assert_eq!(part_size(1 << 20, DEFAULT_PART), DEFAULT_PART);
        assert_eq!(part_size(1 << 20, 1), MIN_PART);
        let big = 500u64 << 30; // 500 GiB
        let p = part_size(big, DEFAULT_PART);
        assert!(big.div_ceil(p) <= 10_000, "{p}");
        assert_eq!(p % (1 << 20), 0);
    }
}
