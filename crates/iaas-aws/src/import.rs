//! Heavy stemcells: the raw disk uploaded as an EBS snapshot through the EBS
//! direct APIs, as awslabs/coldsnap does: StartSnapshot, PutSnapshotBlock in
//! parallel with bounded concurrency (zero blocks skipped, short last block
//! padded, a SHA-256 per block), CompleteSnapshot with the linear aggregate
//! checksum (SHA-256 over the block digests in index order).

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_sdk_ebs::primitives::ByteStream;
use aws_sdk_ebs::types::{ChecksumAggregationMethod, ChecksumAlgorithm, Tag};
use base64::Engine as _;
use futures::StreamExt as _;
use sha2::{Digest as _, Sha256};

use crate::error::{api, AwsError};

/// Default block size of the EBS direct APIs (StartSnapshot tells the real one).
pub const BLOCK_SIZE: usize = 512 * 1024;

/// What an upload did.
#[derive(Debug, Clone, Default)]
pub struct UploadReport {
    /// The snapshot.
    pub snapshot_id: String,
    /// Blocks of the disk.
    pub blocks: u64,
    /// Blocks sent (non-zero).
    pub sent: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Seconds spent in PutSnapshotBlock calls overall (wall).
    pub seconds: f64,
}

/// Where and how to upload.
pub struct Upload<'a> {
    /// EBS client of the region.
    pub ebs: &'a aws_sdk_ebs::Client,
    /// Region (for errors).
    pub region: &'a str,
    /// The raw disk.
    pub disk: &'a Path,
    /// Volume size in GiB.
    pub volume_gib: i64,
    /// Description.
    pub description: String,
    /// Idempotency token.
    pub client_token: String,
    /// Tags of the snapshot.
    pub tags: BTreeMap<String, String>,
    /// Blocks in flight.
    pub concurrency: usize,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AwsError + '_ {
    move |source| AwsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Start the snapshot; returns (snapshot id, block size).
pub async fn start(u: &Upload<'_>) -> Result<(String, usize), AwsError> {
    let mut req = u
        .ebs
        .start_snapshot()
        .volume_size(u.volume_gib)
        .description(&u.description)
        .client_token(&u.client_token)
        .timeout(60);
    for (k, v) in &u.tags {
        req = req.tags(Tag::builder().key(k).value(v).build());
    }
    let out = req
        .send()
        .await
        .map_err(api("StartSnapshot", u.region, Some(&u.description)))?;
    let id = out.snapshot_id().ok_or(AwsError::Missing {
        op: "StartSnapshot",
        region: u.region.to_string(),
        what: "snapshot id",
    })?;
    // AWS answers 524288 (bytes). moto answers 512 (KiB, it seems): a size
    // under 4 KiB cannot be bytes, so it is taken as the default.
    let bs = match out.block_size().and_then(|b| usize::try_from(b).ok()) {
        Some(b) if b >= 4096 => b,
        other => {
            tracing::warn!(answered = ?other, "StartSnapshot block size not in bytes; using 524288");
            BLOCK_SIZE
        }
    };
    Ok((id.to_string(), bs))
}

/// Upload every non-zero block of `u.disk` to `snapshot_id` and complete it.
pub async fn upload_blocks(
    u: &Upload<'_>,
    snapshot_id: &str,
    block_size: usize,
) -> Result<UploadReport, AwsError> {
    let started = std::time::Instant::now();
    let file = std::fs::File::open(u.disk).map_err(io(u.disk))?;
    let len = file.metadata().map_err(io(u.disk))?.len();
    let file = Arc::new(file);
    let bs = block_size as u64;
    let blocks = len.div_ceil(bs);
    let disk: PathBuf = u.disk.to_path_buf();
    let results = futures::stream::iter(0..blocks)
        .map(|index| {
            let file = file.clone();
            let disk = disk.clone();
            async move {
                let off = index * bs;
                let n = (len - off).min(bs) as usize;
                let block = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; block_size];
                    file.read_exact_at(&mut buf[..n], off).map(|_| buf)
                })
                .await
                .map_err(|e| AwsError::Io {
                    path: disk.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?
                .map_err(|source| AwsError::Io {
                    path: disk.clone(),
                    source,
                })?;
                if block.iter().all(|b| *b == 0) {
                    return Ok::<_, AwsError>(None);
                }
                let digest = Sha256::digest(&block).to_vec();
                let b64 = base64::engine::general_purpose::STANDARD.encode(&digest);
                let idx = i32::try_from(index).map_err(|_| {
                    AwsError::Invalid(format!("disk {} has too many blocks", disk.display()))
                })?;
                let size = block.len();
                u.ebs
                    .put_snapshot_block()
                    .snapshot_id(snapshot_id)
                    .block_index(idx)
                    .data_length(size as i32)
                    .checksum(b64)
                    .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
                    .block_data(ByteStream::from(block))
                    .send()
                    .await
                    .map_err(api(
                        "PutSnapshotBlock",
                        u.region,
                        Some(&format!("{snapshot_id} block {index}")),
                    ))?;
                Ok(Some((index, digest, size as u64)))
            }
        })
        .buffer_unordered(u.concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    let mut digests = BTreeMap::new();
    let mut errors = Vec::new();
    let mut bytes = 0u64;
    for r in results {
        match r {
            Ok(Some((i, d, n))) => {
                digests.insert(i, d);
                bytes += n;
            }
            Ok(None) => {}
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !errors.is_empty() {
        let n = errors.len();
        errors.truncate(5);
        return Err(AwsError::Invalid(format!(
            "{n} block(s) of {snapshot_id} failed to upload in {}: {}",
            u.region,
            errors.join("; ")
        )));
    }
    let mut all = Sha256::new();
    for d in digests.values() {
        all.update(d);
    }
    let aggregate = base64::engine::general_purpose::STANDARD.encode(all.finalize());
    let sent = digests.len() as u64;
    u.ebs
        .complete_snapshot()
        .snapshot_id(snapshot_id)
        .changed_blocks_count(i32::try_from(sent).unwrap_or(i32::MAX))
        .checksum(aggregate)
        .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
        .checksum_aggregation_method(ChecksumAggregationMethod::ChecksumAggregationLinear)
        .send()
        .await
        .map_err(api("CompleteSnapshot", u.region, Some(snapshot_id)))?;
    Ok(UploadReport {
        snapshot_id: snapshot_id.to_string(),
        blocks,
        sent,
        bytes_sent: bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}
