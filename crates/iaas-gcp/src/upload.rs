//! Heavy stemcell → Cloud Storage: the stemcell's `image` member is already
//! the `disk.raw` tar.gz that GCE imports, so it is streamed out of the
//! stemcell `.tgz` (decompressed on the fly, never written to disk) into a
//! resumable upload of the official storage client (chunks of
//! [`CHUNK`], CRC32C checked by the client against the object, MD5 sent).
//! The member's SHA-1 is computed on the way and must match the MF's `sha1`.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;
use google_cloud_storage::streaming_source::{SizeHint, StreamingSource};
use sha1::Digest as _;
use tokio::sync::{mpsc, oneshot};

use crate::api::Api;
use crate::error::GcpError;

/// Resumable upload chunk (a multiple of 256 KiB, as GCS requires).
pub const CHUNK: usize = 8 << 20;
const READ: usize = 1 << 20;

/// What an upload did.
#[derive(Debug, Clone)]
pub struct UploadReport {
    /// Bytes sent.
    pub bytes: u64,
    /// SHA-1 of what was sent.
    pub sha1: String,
    /// Seconds.
    pub seconds: f64,
    /// CRC32C the service reported.
    pub crc32c: Option<u32>,
}

/// A single-pass source fed by the thread that reads the stemcell.
struct MemberSource {
    rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
    known: Option<u64>,
}

impl StreamingSource for MemberSource {
    type Error = std::io::Error;

    async fn next(&mut self) -> Option<Result<Bytes, Self::Error>> {
        self.rx.recv().await
    }

    async fn size_hint(&self) -> Result<SizeHint, Self::Error> {
        Ok(match self.known {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::new(),
        })
    }
}

/// Stream the `image` member of `stemcell` to `gs://bucket/object`.
pub async fn upload_image_member(
    api: &Api,
    stemcell: &Path,
    bucket: &str,
    object: &str,
    expect_sha1: &str,
) -> Result<UploadReport, GcpError> {
    let started = Instant::now();
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let (size_tx, size_rx) = oneshot::channel::<u64>();
    let path: PathBuf = stemcell.to_path_buf();
    let up_err = |message: String| GcpError::Upload {
        path: stemcell.to_path_buf(),
        bucket: bucket.to_string(),
        object: object.to_string(),
        message,
    };
    let reader = tokio::task::spawn_blocking(move || -> Result<(u64, String), String> {
        let f = std::fs::File::open(&path).map_err(|e| format!("open: {e}"))?;
        let gz = flate2::read::GzDecoder::new(std::io::BufReader::with_capacity(READ, f));
        let mut ar = tar::Archive::new(gz);
        let entries = ar.entries().map_err(|e| format!("not a tar.gz: {e}"))?;
        for e in entries {
            let mut e = e.map_err(|e| format!("reading the stemcell: {e}"))?;
            let name = e
                .path()
                .map_err(|e| format!("bad member name: {e}"))?
                .to_string_lossy()
                .trim_start_matches("./")
                .to_string();
            if name != "image" {
                continue;
            }
            let _ = size_tx.send(e.size());
            let mut h = sha1::Sha1::new();
            let mut n = 0u64;
            loop {
                let mut buf = vec![0u8; READ];
                let k = match e.read(&mut buf) {
                    Ok(0) => break,
                    Ok(k) => k,
                    Err(err) => {
                        let m = format!("reading the image member: {err}");
                        let _ = tx.blocking_send(Err(std::io::Error::other(m.clone())));
                        return Err(m);
                    }
                };
                buf.truncate(k);
                h.update(&buf);
                n += k as u64;
                if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                    return Err("the upload stopped reading".into());
                }
            }
            return Ok((n, hex::encode(h.finalize())));
        }
        Err("the stemcell has no `image` member".into())
    });
    // The size of the member is known once the reader reaches it.
    let known = size_rx.await.ok();
    let source = MemberSource { rx, known };
    let storage = api.storage().await?;
    let obj = storage
        .write_object(format!("projects/_/buckets/{bucket}"), object, source)
        .set_content_type("application/gzip")
        .with_resumable_upload_threshold(0usize)
        .with_resumable_upload_buffer_size(CHUNK)
        .send_buffered()
        .await;
    let read = reader
        .await
        .map_err(|e| up_err(format!("reader thread: {e}")))?;
    let obj = obj.map_err(|e| up_err(e.to_string()))?;
    let (n, sha1) = read.map_err(up_err)?;
    if !sha1.eq_ignore_ascii_case(expect_sha1) {
        return Err(up_err(format!(
            "the image member's SHA-1 is {sha1}, the stemcell.MF says {expect_sha1} (corrupt stemcell)"
        )));
    }
    if obj.size >= 0 && obj.size as u64 != n {
        return Err(up_err(format!(
            "the service stored {} bytes, {n} were sent",
            obj.size
        )));
    }
    Ok(UploadReport {
        bytes: n,
        sha1,
        seconds: started.elapsed().as_secs_f64(),
        crc32c: obj.checksums.as_ref().and_then(|c| c.crc32c),
    })
}
