//! Heavy stemcells: the fixed VHD inside the stemcell's `image` member,
//! streamed into a page blob without unpacking anything to disk.
//!
//! The tarball is read once, in order (stemcell `.tgz` → `image` member →
//! its `.tgz` → `root.vhd`), in chunks of at most [`MAX_PUT_PAGE`] bytes.
//! Each chunk is split into runs of non-zero 512-byte pages; only those runs
//! are sent, each as one Put Page with its MD5, several in flight. The VHD
//! footer (the last 512 bytes) is sent last, once every other page is in:
//! a blob whose footer is present is complete. After a cut (or a killed
//! build whose blob is still there), Get Page Ranges tells what is already
//! stored and only the rest is sent again.
//!
//! The clients are the official `azure_storage_blob` ones. Against azurite
//! (http) they carry an account SAS in the URL ([`crate::sas`]); against
//! Azure, a token credential (https) or the same SAS from an account key.

use std::path::PathBuf;
use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, RequestContent, RetryOptions};
use azure_storage_blob::models::{
    BlobClientGetPropertiesResultHeaders as _, PageBlobClientCreateOptions,
    PageBlobClientUploadPagesOptions,
};
use azure_storage_blob::{BlobClient, BlobClientOptions, PageBlobClient};
use futures::{StreamExt as _, TryStreamExt as _};

use crate::error::{blob_error, AzureError};
use crate::sas::{redact, AccountSas};

/// Azure's largest Put Page (azurite accepts 8 MiB; Azure refuses more than
/// 4 MiB, so the cap is ours).
pub const MAX_PUT_PAGE: usize = 4 * 1024 * 1024;
/// Page size.
pub const PAGE: usize = 512;
/// Default Put Page calls in flight.
pub const DEFAULT_CONCURRENCY: usize = 8;

/// Where the blob lives and how to authenticate.
#[derive(Clone)]
pub struct BlobTarget {
    /// `https://<account>.blob.core.windows.net/<container>/<blob>` (or
    /// azurite's path-style URL). Never carries a SAS itself.
    pub url: url::Url,
    /// A SAS to add to every request.
    pub sas: Option<AccountSas>,
    /// Else a token credential (https only).
    pub credential: Option<Arc<dyn TokenCredential>>,
}

impl std::fmt::Debug for BlobTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobTarget")
            .field("url", &self.url.as_str())
            .field("sas", &self.sas.is_some())
            .finish()
    }
}

impl BlobTarget {
    /// The blob's URL for messages (no SAS).
    pub fn name(&self) -> String {
        redact(&self.url)
    }

    fn signed(&self, url: &url::Url) -> url::Url {
        match &self.sas {
            Some(s) => s.apply(url),
            None => url.clone(),
        }
    }

    fn options(retries: bool) -> ClientOptions {
        ClientOptions {
            retry: if retries {
                RetryOptions::default()
            } else {
                RetryOptions::none()
            },
            ..ClientOptions::default()
        }
    }

    /// The SDK's blob client (retries off for page uploads: a failed pass
    /// resumes from Get Page Ranges instead).
    pub fn blob_client(&self, retries: bool) -> Result<BlobClient, AzureError> {
        let opts = BlobClientOptions {
            client_options: Self::options(retries),
            ..BlobClientOptions::default()
        };
        BlobClient::new(
            self.signed(&self.url),
            if self.sas.is_some() {
                None
            } else {
                self.credential.clone()
            },
            Some(opts),
        )
        .map_err(|e| blob_error("client", &self.name(), e))
    }

    /// The SDK's page blob client.
    pub fn page_client(&self, retries: bool) -> Result<PageBlobClient, AzureError> {
        Ok(self.blob_client(retries)?.page_blob_client())
    }

    /// The container's URL (the blob URL without its last segment).
    pub fn container_url(&self) -> url::Url {
        let mut u = self.url.clone();
        if let Ok(mut segs) = u.path_segments_mut() {
            segs.pop();
        }
        u
    }

    /// Create the container if it does not exist yet (private).
    pub async fn ensure_container(&self) -> Result<bool, AzureError> {
        let cu = self.container_url();
        let c = azure_storage_blob::BlobContainerClient::new(
            self.signed(&cu),
            if self.sas.is_some() {
                None
            } else {
                self.credential.clone()
            },
            None,
        )
        .map_err(|e| blob_error("container client", &redact(&cu), e))?;
        if c.exists()
            .await
            .map_err(|e| blob_error("Get Container Properties", &redact(&cu), e))?
        {
            return Ok(false);
        }
        match c.create(None).await {
            Ok(_) => Ok(true),
            Err(e) => {
                let e = blob_error("Create Container", &redact(&cu), e);
                if e.status() == Some(409) {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// The blob's size and metadata, or `None` if it does not exist.
    pub async fn properties(
        &self,
    ) -> Result<Option<(u64, std::collections::HashMap<String, String>)>, AzureError> {
        let c = self.blob_client(true)?;
        match c.get_properties(None).await {
            Ok(r) => {
                let len = r
                    .content_length()
                    .map_err(|e| blob_error("Get Blob Properties", &self.name(), e))?
                    .unwrap_or(0);
                let meta = r.metadata().unwrap_or_default();
                Ok(Some((len, meta)))
            }
            Err(e) => {
                let e = blob_error("Get Blob Properties", &self.name(), e);
                if e.status() == Some(404) {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Delete the blob; `false` if it was not there.
    pub async fn delete(&self) -> Result<bool, AzureError> {
        let c = self.blob_client(true)?;
        match c.delete(None).await {
            Ok(_) => Ok(true),
            Err(e) => {
                let e = blob_error("Delete Blob", &self.name(), e);
                if e.status() == Some(404) {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// The stored page ranges (inclusive start, exclusive end), sorted.
    pub async fn page_ranges(&self) -> Result<Vec<(u64, u64)>, AzureError> {
        let c = self.page_client(true)?;
        let mut pages = c
            .list_page_ranges(None)
            .map_err(|e| blob_error("Get Page Ranges", &self.name(), e))?;
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| blob_error("Get Page Ranges", &self.name(), e))?;
            let list = page
                .into_model()
                .map_err(|e| blob_error("Get Page Ranges", &self.name(), e))?;
            for r in list.page_ranges {
                if let (Some(s), Some(e)) = (r.start, r.end) {
                    out.push((s.max(0) as u64, e.max(0) as u64 + 1));
                }
            }
        }
        out.sort_unstable();
        Ok(out)
    }
}

/// What an upload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadReport {
    /// The VHD's size (= the blob's).
    pub size: u64,
    /// Put Page calls made.
    pub puts: u64,
    /// Bytes sent in Put Page bodies.
    pub bytes_sent: u64,
    /// Bytes of non-zero pages already stored, not sent again.
    pub bytes_skipped: u64,
    /// The largest Put Page body.
    pub max_put: u64,
    /// Passes made (1 without a cut).
    pub passes: u32,
    /// Whether the blob was created by this upload.
    pub created: bool,
}

/// How to upload.
#[derive(Debug, Clone)]
pub struct UploadOptions {
    /// Put Page calls in flight.
    pub concurrency: usize,
    /// Largest Put Page (capped at [`MAX_PUT_PAGE`]).
    pub max_put: usize,
    /// Passes before giving up (each resumes from Get Page Ranges).
    pub passes: u32,
    /// Metadata of the blob (stemcell sha1).
    pub metadata: Vec<(String, String)>,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            concurrency: DEFAULT_CONCURRENCY,
            max_put: MAX_PUT_PAGE,
            passes: 3,
            metadata: Vec::new(),
        }
    }
}

/// Where the VHD comes from.
#[derive(Debug, Clone)]
pub enum VhdSource {
    /// A fixed VHD file.
    File(PathBuf),
    /// The `.vhd` inside the `image` member (a `.tgz`) of a stemcell `.tgz`.
    Stemcell(PathBuf),
    /// A read SAS URL of a VHD (a managed disk's `beginGetAccess`): read
    /// with one GET, in order, never stored on disk.
    Sas(SasUrl),
}

/// A URL whose query is a secret (a SAS): shown without its query.
#[derive(Clone)]
pub struct SasUrl(pub url::Url);

impl std::fmt::Debug for SasUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

impl VhdSource {
    fn path(&self) -> PathBuf {
        match self {
            VhdSource::File(p) | VhdSource::Stemcell(p) => p.clone(),
            VhdSource::Sas(u) => PathBuf::from(redact(&u.0)),
        }
    }
}

/// A blocking reader over an HTTP answer's body (on a blocking thread of
/// the runtime `rt`).
struct HttpRead {
    rt: tokio::runtime::Handle,
    resp: reqwest::Response,
    buf: bytes_buf::Buf,
}

mod bytes_buf {
    /// The unread rest of the last chunk.
    #[derive(Default)]
    pub struct Buf {
        pub data: Vec<u8>,
        pub at: usize,
    }
}

impl std::io::Read for HttpRead {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.buf.at >= self.buf.data.len() {
            match self.rt.block_on(self.resp.chunk()) {
                Ok(Some(c)) => {
                    self.buf.data = c.to_vec();
                    self.buf.at = 0;
                }
                Ok(None) => return Ok(0),
                Err(_) => {
                    return Err(std::io::Error::other("the VHD's answer was cut"));
                }
            }
        }
        let n = out.len().min(self.buf.data.len() - self.buf.at);
        out[..n].copy_from_slice(&self.buf.data[self.buf.at..self.buf.at + n]);
        self.buf.at += n;
        Ok(n)
    }
}

/// GET a SAS URL (https, or http on loopback only: test peers): its body
/// and length. No bearer token: the SAS is the access.
async fn open_sas(u: &SasUrl) -> Result<(reqwest::Response, u64), AzureError> {
    let name = redact(&u.0);
    let loopback = match u.0.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    if u.0.scheme() != "https" && !loopback {
        return Err(AzureError::Invalid(format!(
            "{name}: a SAS URL is only read over https"
        )));
    }
    let r = reqwest::Client::new()
        .get(u.0.clone())
        .header("x-ms-version", "2021-12-02")
        .send()
        .await
        .map_err(|e| AzureError::Transport {
            op: "GET (disk SAS)".into(),
            resource: name.clone(),
            message: if e.is_connect() {
                "could not connect".into()
            } else {
                "request failed".into()
            },
        })?;
    let status = r.status().as_u16();
    if status != 200 {
        let body = r.text().await.unwrap_or_default();
        return Err(AzureError::Api {
            op: "GET (disk SAS)".into(),
            resource: name,
            status,
            code: crate::error::strip_urls(&body.chars().take(200).collect::<String>()),
            message: "reading the disk's VHD failed".into(),
        });
    }
    let len = r
        .content_length()
        .ok_or_else(|| AzureError::Invalid(format!("{name}: the answer has no Content-Length")))?;
    Ok((r, len))
}

/// The non-zero runs of whole pages in `buf` (at `base`), each at most
/// `max` bytes: (offset in `buf`, length).
pub fn nonzero_runs(buf: &[u8], max: usize) -> Vec<(usize, usize)> {
    let max = (max.min(MAX_PUT_PAGE) / PAGE).max(1) * PAGE;
    let mut runs = Vec::new();
    let mut start: Option<usize> = None;
    let mut off = 0;
    while off < buf.len() {
        let end = (off + PAGE).min(buf.len());
        let zero = buf[off..end].iter().all(|b| *b == 0);
        match (zero, start) {
            (false, None) => start = Some(off),
            (true, Some(s)) => {
                runs.push((s, off - s));
                start = None;
            }
            (false, Some(s)) if off - s >= max => {
                runs.push((s, off - s));
                start = Some(off);
            }
            _ => {}
        }
        off = end;
    }
    if let Some(s) = start {
        runs.push((s, buf.len() - s));
    }
    runs
}

fn covered(ranges: &[(u64, u64)], start: u64, end: u64) -> bool {
    // Ranges are sorted and (from the service) merged.
    let i = ranges.partition_point(|r| r.1 <= start);
    ranges.get(i).is_some_and(|r| r.0 <= start && r.1 >= end)
}

type Chunk = (u64, Vec<u8>);
/// (size, chunks, the reader's task).
type Reader = (
    tokio::sync::oneshot::Receiver<Result<u64, AzureError>>,
    tokio::sync::mpsc::Receiver<Result<Chunk, AzureError>>,
    tokio::task::JoinHandle<()>,
);
/// Bytes sent by one job, and the footer page it held back.
type JobResult = Result<(u64, Option<Vec<u8>>), AzureError>;

/// Read the VHD in order on a blocking thread, sending chunks of `chunk`
/// bytes; returns the VHD's size first.
fn spawn_reader(src: VhdSource, chunk: usize, depth: usize) -> Reader {
    let (size_tx, size_rx) = tokio::sync::oneshot::channel();
    let (tx, rx) = tokio::sync::mpsc::channel(depth.max(1));
    let rt = tokio::runtime::Handle::current();
    let h = tokio::task::spawn_blocking(move || {
        let path = src.path();
        let io = |source: std::io::Error| AzureError::Io {
            path: path.clone(),
            source,
        };
        let mut size_tx = Some(size_tx);
        let mut run = |r: &mut dyn std::io::Read, len: u64| -> Result<(), AzureError> {
            if let Some(t) = size_tx.take() {
                let _ = t.send(Ok(len));
            }
            let mut off = 0u64;
            while off < len {
                let n = (len - off).min(chunk as u64) as usize;
                let mut buf = vec![0u8; n];
                r.read_exact(&mut buf).map_err(io)?;
                if tx.blocking_send(Ok((off, buf))).is_err() {
                    return Ok(()); // the uploader stopped
                }
                off += n as u64;
            }
            Ok(())
        };
        let res = (|| -> Result<(), AzureError> {
            match &src {
                VhdSource::Sas(u) => {
                    let (resp, len) = rt.block_on(open_sas(u))?;
                    let mut r = HttpRead {
                        rt: rt.clone(),
                        resp,
                        buf: bytes_buf::Buf::default(),
                    };
                    run(&mut r, len)
                }
                VhdSource::File(p) => {
                    let f = std::fs::File::open(p).map_err(io)?;
                    let len = f.metadata().map_err(io)?.len();
                    run(&mut std::io::BufReader::new(f), len)
                }
                VhdSource::Stemcell(p) => {
                    let f = std::fs::File::open(p).map_err(io)?;
                    let mut outer =
                        tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(f)));
                    for e in outer.entries().map_err(io)? {
                        let e = e.map_err(io)?;
                        let name = e.path().map_err(io)?.to_string_lossy().to_string();
                        if name.trim_start_matches("./") != "image" {
                            continue;
                        }
                        let mut inner = tar::Archive::new(flate2::read::GzDecoder::new(e));
                        for d in inner.entries().map_err(io)? {
                            let mut d = d.map_err(io)?;
                            let dn = d.path().map_err(io)?.to_string_lossy().to_string();
                            if !dn.to_ascii_lowercase().ends_with(".vhd") {
                                continue;
                            }
                            let len = d.size();
                            return run(&mut d, len);
                        }
                        return Err(AzureError::Stemcell {
                            path: p.clone(),
                            message: "its image member holds no .vhd".into(),
                        });
                    }
                    Err(AzureError::Stemcell {
                        path: p.clone(),
                        message: "no image member".into(),
                    })
                }
            }
        })();
        if let Err(e) = res {
            if let Some(t) = size_tx.take() {
                let _ = t.send(Err(e));
            } else {
                let _ = tx.blocking_send(Err(e));
            }
        }
    });
    (size_rx, rx, h)
}

/// Upload `src` into the page blob `target`, resuming what is stored.
pub async fn upload_vhd(
    target: &BlobTarget,
    src: &VhdSource,
    opts: &UploadOptions,
) -> Result<UploadReport, AzureError> {
    let mut report = UploadReport::default();
    let mut last_err = None;
    for pass in 1..=opts.passes.max(1) {
        report.passes = pass;
        match upload_pass(target, src, opts, &mut report).await {
            Ok(()) => return Ok(report),
            Err(e) => {
                tracing::warn!(blob = %target.name(), pass, error = %e, "page upload pass failed; resuming from Get Page Ranges");
                last_err = Some(e);
            }
        }
    }
    Err(last_err.unwrap_or_else(|| AzureError::Invalid("no upload pass ran".into())))
}

async fn upload_pass(
    target: &BlobTarget,
    src: &VhdSource,
    opts: &UploadOptions,
    report: &mut UploadReport,
) -> Result<(), AzureError> {
    let max_put = (opts.max_put.min(MAX_PUT_PAGE) / PAGE).max(1) * PAGE;
    let (size_rx, mut rx, reader) = spawn_reader(src.clone(), max_put, opts.concurrency * 2);
    let size = size_rx
        .await
        .map_err(|_| AzureError::Invalid(format!("{}: reader stopped", src.path().display())))??;
    if size == 0 || !size.is_multiple_of(PAGE as u64) {
        reader.abort();
        return Err(AzureError::Stemcell {
            path: src.path(),
            message: format!("VHD size {size} is not a positive multiple of 512 (a fixed VHD is)"),
        });
    }
    report.size = size;
    let client = target.page_client(false)?;
    let name = target.name();
    // The blob: created at the VHD's size, or resumed if it has that size.
    let ranges = match target.properties().await? {
        Some((len, _)) if len == size => target.page_ranges().await?,
        Some((len, _)) => {
            tracing::info!(blob = %name, len, size, "blob of another size: replacing it");
            target.delete().await?;
            create(&client, &name, size, opts).await?;
            report.created = true;
            Vec::new()
        }
        None => {
            create(&client, &name, size, opts).await?;
            report.created = true;
            Vec::new()
        }
    };
    let footer_at = size - PAGE as u64;
    if covered(&ranges, footer_at, size) {
        // The footer goes last: present means complete.
        reader.abort();
        return Ok(());
    }
    let mut footer: Option<Vec<u8>> = None;
    let skipped = std::sync::atomic::AtomicU64::new(0);
    let ranges = &ranges;
    let skipped_ref = &skipped;
    let jobs = futures::stream::poll_fn(|cx| rx.poll_recv(cx))
        .map_ok(|(off, buf)| {
            let mut jobs: Vec<(u64, Vec<u8>)> = Vec::new();
            for (s, n) in nonzero_runs(&buf, max_put) {
                let start = off + s as u64;
                let end = start + n as u64;
                if covered(ranges, start, end) {
                    skipped_ref.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    continue;
                }
                jobs.push((start, buf[s..s + n].to_vec()));
            }
            futures::stream::iter(jobs.into_iter().map(Ok::<_, AzureError>))
        })
        .try_flatten();
    let results: Vec<JobResult> = jobs
        .map(|job| {
            let client = &client;
            let name = &name;
            async move {
                let (start, data) = job?;
                let end = start + data.len() as u64;
                if end > footer_at {
                    // Hold the footer's page back; send the rest now.
                    let cut = (footer_at - start) as usize;
                    let (head, tail) = data.split_at(cut);
                    if !head.is_empty() {
                        put(client, name, start, head.to_vec()).await?;
                    }
                    return Ok((cut as u64, Some(tail.to_vec())));
                }
                let n = data.len() as u64;
                put(client, name, start, data).await?;
                Ok((n, None))
            }
        })
        .buffer_unordered(opts.concurrency.max(1))
        .collect()
        .await;
    let _ = reader.await;
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok((n, f)) => {
                if n > 0 {
                    report.puts += 1;
                    report.bytes_sent += n;
                    report.max_put = report.max_put.max(n);
                }
                if f.is_some() {
                    footer = f;
                }
            }
            Err(e) => errors.push(e),
        }
    }
    report.bytes_skipped += skipped.into_inner();
    if let Some(e) = errors.into_iter().next() {
        return Err(e);
    }
    let footer = footer.ok_or_else(|| AzureError::Stemcell {
        path: src.path(),
        message: "the VHD's last 512 bytes (its footer) are zero: not a fixed VHD".into(),
    })?;
    if &footer[..8] != b"conectix" {
        return Err(AzureError::Stemcell {
            path: src.path(),
            message: "no VHD footer (cookie `conectix`) in the last 512 bytes".into(),
        });
    }
    put(&client, &name, footer_at, footer).await?;
    report.puts += 1;
    report.bytes_sent += PAGE as u64;
    Ok(())
}

async fn create(
    client: &PageBlobClient,
    name: &str,
    size: u64,
    opts: &UploadOptions,
) -> Result<(), AzureError> {
    let o = PageBlobClientCreateOptions {
        metadata: Some(opts.metadata.iter().cloned().collect()),
        blob_content_type: Some("application/octet-stream".into()),
        ..Default::default()
    };
    client
        .create(size, Some(o))
        .await
        .map_err(|e| blob_error("Put Blob (page)", name, e))?;
    Ok(())
}

async fn put(
    client: &PageBlobClient,
    name: &str,
    start: u64,
    data: Vec<u8>,
) -> Result<(), AzureError> {
    let n = data.len() as u64;
    if n as usize > MAX_PUT_PAGE
        || !n.is_multiple_of(PAGE as u64)
        || !start.is_multiple_of(PAGE as u64)
    {
        return Err(AzureError::Invalid(format!(
            "Put Page {name} at {start}: {n} bytes is not whole pages of at most 4 MiB"
        )));
    }
    let md5 = md5::compute(&data).0.to_vec();
    let o = PageBlobClientUploadPagesOptions {
        transactional_content_md5: Some(md5),
        ..Default::default()
    };
    client
        .upload_pages(
            RequestContent::from(data),
            n,
            azure_storage_blob::models::HttpRange::new(start, n),
            Some(o),
        )
        .await
        .map_err(|e| blob_error("Put Page", &format!("{name} [{start}, {})", start + n), e))?;
    Ok(())
}

/// Create a container that allows anonymous reads and listing, signed with `sas`
/// (test peers: the ARM test server reads VHD blobs from azurite that way,
/// as Azure reads them with its own access). Builds never make public
/// containers: [`BlobTarget::ensure_container`] makes private ones.
pub async fn create_public_container(
    account_url: &str,
    name: &str,
    sas: &AccountSas,
) -> Result<(), AzureError> {
    let u = url::Url::parse(&format!("{}/{name}", account_url.trim_end_matches('/')))
        .map_err(|e| AzureError::Invalid(format!("container URL: {e}")))?;
    let c = azure_storage_blob::BlobContainerClient::new(sas.apply(&u), None, None)
        .map_err(|e| blob_error("container client", &redact(&u), e))?;
    c.create(Some(
        azure_storage_blob::models::BlobContainerClientCreateOptions {
            access: Some(azure_storage_blob::models::PublicAccessType::Container),
            ..Default::default()
        },
    ))
    .await
    .map_err(|e| blob_error("Create Container", &redact(&u), e))?;
    Ok(())
}

/// Read the whole blob (tests, small blobs): `len` bytes in order.
pub async fn read_all(target: &BlobTarget) -> Result<Vec<u8>, AzureError> {
    let c = target.blob_client(true)?;
    let r = c
        .download(None)
        .await
        .map_err(|e| blob_error("Get Blob", &target.name(), e))?;
    let mut body = r.body;
    let mut out = Vec::new();
    while let Some(b) = body.next().await {
        out.extend_from_slice(&b.map_err(|e| blob_error("Get Blob", &target.name(), e))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn runs_skip_zero_pages_and_respect_the_4mib_cap() {
        let mut buf = vec![0u8; 10 * 1024 * 1024];
        buf[512] = 1; // page 1
        buf[3 * 512 + 7] = 1; // page 3
                              // 9 MiB of data from 1 MiB on: split into 4 MiB runs even if asked 8 MiB.
        for b in &mut buf[1024 * 1024..10 * 1024 * 1024] {
            *b = 7;
        }
        let runs = nonzero_runs(&buf, 8 * 1024 * 1024);
        assert_eq!(runs[0], (512, 512));
        assert_eq!(runs[1], (3 * 512, 512));
        assert!(runs.iter().all(|r| r.1 <= MAX_PUT_PAGE && r.1 % PAGE == 0));
        let total: usize = runs[2..].iter().map(|r| r.1).sum();
        assert_eq!(total, 9 * 1024 * 1024);
        assert_eq!(runs.len(), 2 + 3);
    }

    #[test]
    fn covered_needs_one_range_holding_the_whole_run() {
        let r = vec![(0, 1024), (4096, 8192)];
        assert!(covered(&r, 0, 512));
        assert!(covered(&r, 4096, 8192));
        assert!(!covered(&r, 512, 2048));
        assert!(!covered(&r, 8192, 8704));
    }
}
