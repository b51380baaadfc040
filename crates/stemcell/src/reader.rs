//! Streaming, defensive reading of stemcell tarballs.
//!
//! A stemcell is a gzip tar whose members are `stemcell.MF`, a few text
//! files, and `image` (itself a gzip tar holding the disk). Everything here
//! streams: the disk image is never held in memory, `stemcell.MF` is read
//! without touching the rest, and the SHA-1 of `image` is computed while it
//! streams past.
//!
//! # Safety rules (both the outer tarball and the inner `image` tar)
//! - member paths must be relative, without `..` or `.` components, and must
//!   **not start with `./`**: the bosh CLI rejects such stemcells, and a
//!   stemcell that the Director would refuse should fail here first, with a
//!   clear error, rather than build an image from it;
//! - symbolic links must resolve (lexically) inside the target directory,
//!   hard links must name an earlier member, no member may be written through
//!   a symbolic link, a path may appear once;
//! - device nodes, FIFOs and other special files are refused;
//! - `stemcell.MF` is capped at [`Limits::max_manifest_bytes`], other outer
//!   text members at [`Limits::max_member_bytes`], and the `image` member and
//!   the total extracted size at `cloud_properties.disk` MiB plus
//!   [`Limits::disk_slack_bytes`]: sizes are checked from the tar headers
//!   *before* any byte is written, so a tiny tarball that claims many GiB is
//!   refused at once;
//! - extraction goes to a temporary directory next to the destination and is
//!   renamed into place only when everything (including the SHA-1) checked
//!   out: an error leaves nothing behind.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use flate2::read::MultiGzDecoder;
use serde::Serialize;
use sha1::{Digest, Sha1};
use tar::EntryType;

use crate::manifest::{Manifest, ManifestError};

/// The manifest member's name.
pub const MANIFEST_MEMBER: &str = "stemcell.MF";
/// The disk image member's name.
pub const IMAGE_MEMBER: &str = "image";
/// Zero blocks of this size are skipped (seeked over) when writing files.
const SPARSE_BLOCK: usize = 4096;
const BUF: usize = 1 << 20;

/// Size limits applied while reading.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `stemcell.MF` larger than this is refused.
    pub max_manifest_bytes: u64,
    /// Outer members other than `stemcell.MF` and `image` larger than this are refused.
    pub max_member_bytes: u64,
    /// Added to the declared disk size to bound `image` and what it extracts to.
    pub disk_slack_bytes: u64,
    /// At most this many members in the inner image.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_manifest_bytes: 1 << 20,
            max_member_bytes: 256 << 20,
            disk_slack_bytes: 256 << 20,
            max_entries: 1_000_000,
        }
    }
}

/// Why a member is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsafeReason {
    /// Empty path.
    #[error("empty path")]
    Empty,
    /// Absolute path.
    #[error("absolute path")]
    Absolute,
    /// Starts with `./` (the bosh CLI rejects these too).
    #[error("path starts with './' (the bosh CLI rejects such stemcells)")]
    DotSlash,
    /// A `.` component in the middle.
    #[error("path has a '.' component")]
    DotComponent,
    /// A `..` component.
    #[error("path has a '..' component")]
    ParentDir,
    /// A symbolic link that points outside the target.
    #[error("symbolic link to {0:?} points outside the target directory")]
    SymlinkEscape(String),
    /// A hard link that points outside the target or at no earlier member.
    #[error("hard link to {0:?} does not name an earlier member inside the target")]
    HardlinkEscape(String),
    /// The path goes through a symbolic link extracted earlier.
    #[error("path goes through the symbolic link {0:?}")]
    ThroughSymlink(String),
    /// The same path appears twice.
    #[error("path appears twice")]
    Duplicate,
    /// A device node, FIFO or other special file.
    #[error("special file of tar type {0:?} (device nodes and FIFOs are refused)")]
    Special(char),
    /// A link or special member in the outer tarball, where only files belong.
    #[error("the outer stemcell tarball may only hold regular files")]
    NotAFile,
}

/// Errors reading a stemcell. Each failure class is its own variant.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Opening or reading the file, or writing the extraction, failed.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Not gzip at all.
    #[error("{path} is not a gzip file (a stemcell is a .tgz)")]
    NotGzip {
        /// The stemcell.
        path: PathBuf,
    },
    /// The file ends too early.
    #[error("{path} is truncated: {detail}")]
    Truncated {
        /// The stemcell.
        path: PathBuf,
        /// What the reader saw.
        detail: String,
    },
    /// Bad gzip data or a bad tar header.
    #[error("{path} is corrupt: {detail}")]
    Corrupt {
        /// The stemcell.
        path: PathBuf,
        /// What the reader saw.
        detail: String,
    },
    /// No `stemcell.MF` member.
    #[error("{path} has no stemcell.MF member: it is not a stemcell")]
    MissingManifest {
        /// The stemcell.
        path: PathBuf,
    },
    /// `stemcell.MF` larger than the limit.
    #[error("{path}: {member} is {size} bytes, more than the {limit}-byte limit")]
    MemberTooLarge {
        /// The stemcell.
        path: PathBuf,
        /// The member.
        member: String,
        /// Its declared size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// `stemcell.MF` is invalid or lacks keys.
    #[error("{path}: {source}")]
    Manifest {
        /// The stemcell.
        path: PathBuf,
        /// What is wrong.
        source: ManifestError,
    },
    /// No `image` member.
    #[error("{path} has no image member")]
    MissingImage {
        /// The stemcell.
        path: PathBuf,
    },
    /// `image` comes before `stemcell.MF`, so it cannot be checked while streaming.
    #[error("{path}: the image member comes before stemcell.MF")]
    ManifestAfterImage {
        /// The stemcell.
        path: PathBuf,
    },
    /// The `image` member's SHA-1 differs from the MF's.
    #[error("{path}: SHA-1 of the image member is {actual}, stemcell.MF says {expected}")]
    Sha1Mismatch {
        /// The stemcell.
        path: PathBuf,
        /// From the MF.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// A member that must not be extracted.
    #[error("{path}: member {member:?} refused: {reason}")]
    UnsafeMember {
        /// The stemcell.
        path: PathBuf,
        /// The member's path as stored.
        member: String,
        /// Why.
        reason: UnsafeReason,
    },
    /// The image would extract to more than the declared disk size allows.
    #[error("{path}: member {member:?} would bring the extracted size to {size} bytes, more than the {limit} bytes that cloud_properties.disk ({disk_mib} MiB) allows")]
    ExtractTooLarge {
        /// The stemcell.
        path: PathBuf,
        /// The member that crossed the limit.
        member: String,
        /// Total size including that member.
        size: u64,
        /// The limit.
        limit: u64,
        /// Declared disk size.
        disk_mib: u64,
    },
    /// The inner image has more members than allowed.
    #[error("{path}: the image has more than {limit} members")]
    TooManyMembers {
        /// The stemcell.
        path: PathBuf,
        /// The limit.
        limit: u64,
    },
    /// `image` is not a gzip tar.
    #[error("{path}: the image member is not a gzip tar")]
    ImageNotGzip {
        /// The stemcell.
        path: PathBuf,
    },
    /// A light stemcell has nothing to extract.
    #[error("{path} is a light stemcell: it has no image to extract (it points at a cloud image)")]
    LightStemcell {
        /// The stemcell.
        path: PathBuf,
    },
    /// The destination exists and is not an empty directory.
    #[error("destination {0} exists and is not an empty directory")]
    DestinationExists(PathBuf),
}

impl ReadError {
    /// A stable, machine-readable name for the failure class (for `--json`).
    pub fn kind(&self) -> &'static str {
        match self {
            ReadError::Io { .. } => "io",
            ReadError::NotGzip { .. } => "not_gzip",
            ReadError::Truncated { .. } => "truncated",
            ReadError::Corrupt { .. } => "corrupt",
            ReadError::MissingManifest { .. } => "missing_manifest",
            ReadError::MemberTooLarge { .. } => "member_too_large",
            ReadError::Manifest { .. } => "bad_manifest",
            ReadError::MissingImage { .. } => "missing_image",
            ReadError::ManifestAfterImage { .. } => "manifest_after_image",
            ReadError::Sha1Mismatch { .. } => "sha1_mismatch",
            ReadError::UnsafeMember { .. } => "unsafe_member",
            ReadError::ExtractTooLarge { .. } => "extract_too_large",
            ReadError::TooManyMembers { .. } => "too_many_members",
            ReadError::ImageNotGzip { .. } => "image_not_gzip",
            ReadError::LightStemcell { .. } => "light_stemcell",
            ReadError::DestinationExists(_) => "destination_exists",
        }
    }

    /// True when the stemcell (or the request) is at fault, not the machine.
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, ReadError::Io { .. })
    }
}

/// One outer member.
#[derive(Debug, Clone, Serialize)]
pub struct MemberInfo {
    /// Path in the tarball.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

/// What a full pass over the tarball found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The manifest.
    pub manifest: Manifest,
    /// Outer members in order.
    pub members: Vec<MemberInfo>,
    /// Size of the `image` member.
    pub image_size: u64,
    /// SHA-1 of the `image` member.
    pub image_sha1: String,
    /// The SHA-1 matches the MF.
    pub sha1_ok: bool,
    /// Size of the stemcell file.
    pub file_size: u64,
}

/// One extracted file.
#[derive(Debug, Clone, Serialize)]
pub struct ExtractedFile {
    /// Path relative to the destination.
    pub path: PathBuf,
    /// Logical size in bytes (regular files), 0 otherwise.
    pub size: u64,
    /// `file`, `dir`, `symlink`, `hardlink`.
    pub kind: &'static str,
}

/// What an extraction wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ExtractReport {
    /// The manifest.
    pub manifest: Manifest,
    /// The destination directory.
    pub dest: PathBuf,
    /// Files in archive order.
    pub files: Vec<ExtractedFile>,
    /// Sum of the regular files' logical sizes.
    pub logical_bytes: u64,
    /// Bytes actually written (zero blocks are holes).
    pub written_bytes: u64,
    /// SHA-1 of the `image` member (equal to the MF's).
    pub image_sha1: String,
}

/// Reads from a file and records whether it reached its end, so that a
/// failure further up can be told apart: truncated vs corrupt.
struct EofTracking<R> {
    inner: R,
    eof: Arc<AtomicBool>,
    read: Arc<AtomicU64>,
    progress: Option<Progress>,
    total: u64,
    next_report: u64,
}

/// Called with (bytes of the stemcell file read so far, file size) every
/// 16 MiB and at the end, for progress bars.
pub type Progress = Arc<dyn Fn(u64, u64) + Send + Sync>;
const PROGRESS_STEP: u64 = 16 << 20;

impl<R: Read> Read for EofTracking<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.eof.store(true, Ordering::Relaxed);
        }
        let done = self.read.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        if let Some(p) = &self.progress {
            if done >= self.next_report || (n == 0 && !buf.is_empty()) {
                p(done, self.total);
                self.next_report = done + PROGRESS_STEP;
            }
        }
        Ok(n)
    }
}

/// Hashes what passes through.
struct HashingReader<R> {
    inner: R,
    hasher: Sha1,
    count: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Context for turning low-level errors into [`ReadError`]s.
struct Ctx {
    path: PathBuf,
    eof: Arc<AtomicBool>,
}

impl Ctx {
    fn stream_err(&self, e: io::Error, what: &str) -> ReadError {
        let detail = format!("{what}: {e}");
        if self.eof.load(Ordering::Relaxed) || e.kind() == io::ErrorKind::UnexpectedEof {
            ReadError::Truncated {
                path: self.path.clone(),
                detail,
            }
        } else {
            ReadError::Corrupt {
                path: self.path.clone(),
                detail,
            }
        }
    }

    fn short(&self, member: &str, got: u64, want: u64) -> ReadError {
        ReadError::Truncated {
            path: self.path.clone(),
            detail: format!("member {member} ends after {got} of {want} bytes"),
        }
    }

    fn unsafe_member(&self, member: &str, reason: UnsafeReason) -> ReadError {
        ReadError::UnsafeMember {
            path: self.path.clone(),
            member: member.to_string(),
            reason,
        }
    }

    fn io(&self, path: &Path, source: io::Error) -> ReadError {
        ReadError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

type Outer = tar::Archive<MultiGzDecoder<EofTracking<BufReader<File>>>>;

fn open(
    path: &Path,
    progress: Option<Progress>,
) -> Result<(Outer, Ctx, u64, Arc<AtomicU64>), ReadError> {
    let io_err = |source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(io_err)?;
    let file_size = f.metadata().map_err(io_err)?.len();
    let mut magic = [0u8; 2];
    let mut got = 0;
    while got < 2 {
        let n = f.read(&mut magic[got..]).map_err(io_err)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    if got == 0 || (got >= 1 && magic[0] != 0x1f) || (got == 2 && magic[1] != 0x8b) {
        return Err(ReadError::NotGzip {
            path: path.to_path_buf(),
        });
    }
    f.seek(SeekFrom::Start(0)).map_err(io_err)?;
    let eof = Arc::new(AtomicBool::new(false));
    let read = Arc::new(AtomicU64::new(0));
    let tracked = EofTracking {
        inner: BufReader::with_capacity(BUF, f),
        eof: eof.clone(),
        read: read.clone(),
        progress,
        total: file_size,
        next_report: PROGRESS_STEP,
    };
    let ctx = Ctx {
        path: path.to_path_buf(),
        eof,
    };
    Ok((
        tar::Archive::new(MultiGzDecoder::new(tracked)),
        ctx,
        file_size,
        read,
    ))
}

/// Check a member path; return it as a relative path of normal components.
pub fn check_member_path(raw: &[u8]) -> Result<PathBuf, UnsafeReason> {
    if raw.is_empty() {
        return Err(UnsafeReason::Empty);
    }
    if raw.starts_with(b"/") {
        return Err(UnsafeReason::Absolute);
    }
    if raw.starts_with(b"./") || raw == b"." {
        return Err(UnsafeReason::DotSlash);
    }
    let mut out = PathBuf::new();
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" => continue,
            b"." => return Err(UnsafeReason::DotComponent),
            b".." => return Err(UnsafeReason::ParentDir),
            c => out.push(std::ffi::OsStr::from_bytes(c)),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(UnsafeReason::Empty);
    }
    Ok(out)
}

/// Resolve `target` relative to the directory holding `link` (both inside
/// the root), lexically. `None` when it leaves the root or is absolute.
fn resolve_inside(link: &Path, target: &[u8]) -> Option<PathBuf> {
    if target.starts_with(b"/") || target.is_empty() {
        return None;
    }
    let mut stack: Vec<std::ffi::OsString> = link
        .parent()
        .map(|p| {
            p.components()
                .filter_map(|c| match c {
                    Component::Normal(n) => Some(n.to_os_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    // `..` is only allowed before the first normal component: there it pops
    // the link's own parent directories, which are real directories (no
    // member is written through a symlink), so the lexical result is the
    // real one. After a normal component, that component could be a
    // symlink (`sub -> .`, then `esc -> sub/../x` leaves the root), so such
    // targets are refused.
    let mut descended = false;
    for comp in target.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                if descended {
                    return None;
                }
                stack.pop()?;
            }
            c => {
                descended = true;
                stack.push(std::ffi::OsStr::from_bytes(c).to_os_string());
            }
        }
    }
    Some(stack.iter().collect())
}

fn read_manifest_member<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    ctx: &Ctx,
    limits: &Limits,
) -> Result<Manifest, ReadError> {
    let size = entry.size();
    if size > limits.max_manifest_bytes {
        return Err(ReadError::MemberTooLarge {
            path: ctx.path.clone(),
            member: MANIFEST_MEMBER.to_string(),
            size,
            limit: limits.max_manifest_bytes,
        });
    }
    let mut text = Vec::with_capacity(size as usize);
    entry
        .take(limits.max_manifest_bytes + 1)
        .read_to_end(&mut text)
        .map_err(|e| ctx.stream_err(e, "reading stemcell.MF"))?;
    if (text.len() as u64) < size {
        return Err(ctx.short(MANIFEST_MEMBER, text.len() as u64, size));
    }
    let text = String::from_utf8_lossy(&text);
    Manifest::parse(&text).map_err(|source| ReadError::Manifest {
        path: ctx.path.clone(),
        source,
    })
}

fn outer_member_name<R: Read>(entry: &tar::Entry<'_, R>, ctx: &Ctx) -> Result<String, ReadError> {
    let raw = entry.path_bytes().into_owned();
    let display = String::from_utf8_lossy(&raw).into_owned();
    check_member_path(&raw).map_err(|r| ctx.unsafe_member(&display, r))?;
    if entry.header().entry_type() != EntryType::Regular
        && entry.header().entry_type() != EntryType::Continuous
    {
        return Err(ctx.unsafe_member(&display, UnsafeReason::NotAFile));
    }
    Ok(display)
}

/// Outer member names seen so far: a second member of the same name (two
/// `stemcell.MF`, two `image`) is refused, since a reader that stops at the
/// first and one that reads to the end would disagree about the stemcell.
#[derive(Default)]
struct SeenOuter(BTreeSet<String>);

impl SeenOuter {
    fn check(&mut self, name: &str, ctx: &Ctx) -> Result<(), ReadError> {
        if self.0.insert(name.to_string()) {
            Ok(())
        } else {
            Err(ctx.unsafe_member(name, UnsafeReason::Duplicate))
        }
    }
}

/// Read `stemcell.MF`. The members after it are read up to the `image`
/// member (a heavy image is not decompressed; [`verify`] and [`extract`]
/// read to the end), so that a second `stemcell.MF` is refused.
pub fn read_manifest(path: &Path) -> Result<Manifest, ReadError> {
    read_manifest_with(path, &Limits::default())
}

/// [`read_manifest`] with explicit limits.
pub fn read_manifest_with(path: &Path, limits: &Limits) -> Result<Manifest, ReadError> {
    let (mut ar, ctx, _, _) = open(path, None)?;
    let entries = ar
        .entries()
        .map_err(|e| ctx.stream_err(e, "reading the tarball"))?;
    let mut seen = SeenOuter::default();
    let mut manifest = None;
    for entry in entries {
        let mut entry = entry.map_err(|e| ctx.stream_err(e, "reading a tar header"))?;
        let name = outer_member_name(&entry, &ctx)?;
        seen.check(&name, &ctx)?;
        if name == MANIFEST_MEMBER {
            manifest = Some(read_manifest_member(&mut entry, &ctx, limits)?);
        } else if manifest.is_some()
            && ((name == IMAGE_MEMBER && entry.size() > 0)
                || entry.size() > limits.max_member_bytes)
        {
            // A heavy image (or an oversized member) is not decompressed
            // here: verify and extract read to the end.
            break;
        }
    }
    manifest.ok_or(ReadError::MissingManifest { path: ctx.path })
}

fn image_limit(m: &Manifest, limits: &Limits) -> u64 {
    m.disk_mib()
        .saturating_mul(1 << 20)
        .saturating_add(limits.disk_slack_bytes)
}

fn drain<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<u64> {
    let mut n = 0u64;
    loop {
        match r.read(buf) {
            Ok(0) => return Ok(n),
            Ok(k) => n += k as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Stream the whole tarball: read the MF, hash `image`, check the gzip
/// stream to its end. A SHA-1 mismatch is [`ReadError::Sha1Mismatch`].
pub fn verify(path: &Path) -> Result<VerifyReport, ReadError> {
    let report = scan(path, &Limits::default())?;
    if !report.sha1_ok {
        return Err(ReadError::Sha1Mismatch {
            path: path.to_path_buf(),
            expected: report.manifest.sha1.clone(),
            actual: report.image_sha1.clone(),
        });
    }
    Ok(report)
}

/// Like [`verify`], but a SHA-1 mismatch is reported in `sha1_ok` instead of
/// being an error (for `inspect`).
pub fn scan(path: &Path, limits: &Limits) -> Result<VerifyReport, ReadError> {
    scan_with_progress(path, limits, None)
}

/// [`scan`] reporting progress.
pub fn scan_with_progress(
    path: &Path,
    limits: &Limits,
    progress: Option<Progress>,
) -> Result<VerifyReport, ReadError> {
    let (mut ar, ctx, file_size, _) = open(path, progress)?;
    let mut manifest: Option<Manifest> = None;
    let mut members = Vec::new();
    let mut seen = SeenOuter::default();
    let mut image: Option<(u64, String)> = None;
    let mut buf = vec![0u8; BUF];
    {
        let entries = ar
            .entries()
            .map_err(|e| ctx.stream_err(e, "reading the tarball"))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| ctx.stream_err(e, "reading a tar header"))?;
            let name = outer_member_name(&entry, &ctx)?;
            seen.check(&name, &ctx)?;
            let size = entry.size();
            members.push(MemberInfo {
                name: name.clone(),
                size,
            });
            if name == MANIFEST_MEMBER {
                manifest = Some(read_manifest_member(&mut entry, &ctx, limits)?);
                continue;
            }
            let limit = match (&manifest, name.as_str()) {
                (Some(m), IMAGE_MEMBER) => image_limit(m, limits),
                // No MF yet (verify accepts any order): a generous bound.
                (None, IMAGE_MEMBER) => limits.disk_slack_bytes.saturating_add(64 << 30),
                _ => limits.max_member_bytes,
            };
            if size > limit {
                return Err(ReadError::MemberTooLarge {
                    path: ctx.path.clone(),
                    member: name,
                    size,
                    limit,
                });
            }
            if name == IMAGE_MEMBER {
                let mut h = HashingReader {
                    inner: &mut entry,
                    hasher: Sha1::new(),
                    count: 0,
                };
                drain(&mut h, &mut buf).map_err(|e| ctx.stream_err(e, "reading image"))?;
                if h.count < size {
                    return Err(ctx.short(IMAGE_MEMBER, h.count, size));
                }
                image = Some((h.count, hex::encode(h.hasher.finalize())));
            } else {
                let n = drain(&mut entry, &mut buf)
                    .map_err(|e| ctx.stream_err(e, &format!("reading {name}")))?;
                if n < size {
                    return Err(ctx.short(&name, n, size));
                }
            }
        }
    }
    // Read the gzip stream to its end so that its CRC and length are checked.
    drain(ar.into_inner().by_ref(), &mut buf)
        .map_err(|e| ctx.stream_err(e, "reading the end of the gzip stream"))?;
    let manifest = manifest.ok_or_else(|| ReadError::MissingManifest {
        path: ctx.path.clone(),
    })?;
    let (image_size, image_sha1) = image.ok_or_else(|| ReadError::MissingImage {
        path: ctx.path.clone(),
    })?;
    let sha1_ok = image_sha1.eq_ignore_ascii_case(&manifest.sha1);
    Ok(VerifyReport {
        manifest,
        members,
        image_size,
        image_sha1,
        sha1_ok,
        file_size,
    })
}

mod extract;
pub use extract::{extract, ExtractOptions};

#[cfg(test)]
mod tests {
    use super::extract::write_sparse;
    use super::*;

    #[test]
    fn member_paths() {
        assert_eq!(
            check_member_path(b"root.img").unwrap(),
            PathBuf::from("root.img")
        );
        assert_eq!(check_member_path(b"a/b/").unwrap(), PathBuf::from("a/b"));
        assert_eq!(
            check_member_path(b"./root.img"),
            Err(UnsafeReason::DotSlash)
        );
        assert_eq!(
            check_member_path(b"/etc/passwd"),
            Err(UnsafeReason::Absolute)
        );
        assert_eq!(
            check_member_path(b"a/../../x"),
            Err(UnsafeReason::ParentDir)
        );
        assert_eq!(check_member_path(b"a/./x"), Err(UnsafeReason::DotComponent));
        assert_eq!(check_member_path(b""), Err(UnsafeReason::Empty));
    }

    #[test]
    fn link_resolution_stays_inside() {
        assert_eq!(
            resolve_inside(Path::new("a/b/link"), b"../c"),
            Some(PathBuf::from("a/c"))
        );
        assert_eq!(resolve_inside(Path::new("link"), b"../x"), None);
        assert_eq!(resolve_inside(Path::new("a/link"), b"../../x"), None);
        assert_eq!(resolve_inside(Path::new("link"), b"/etc/passwd"), None);
        assert_eq!(
            resolve_inside(Path::new("link"), b"x/./y"),
            Some(PathBuf::from("x/y"))
        );
    }

    #[test]
    fn sparse_writer_makes_holes_and_keeps_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let mut data = vec![0u8; 8 << 20];
        data[5000] = 1;
        data[(6 << 20) + 7] = 2;
        let mut f = File::create(&p).unwrap();
        let mut buf = vec![0u8; BUF];
        let (n, w) = write_sparse(&mut &data[..], &mut f, &mut buf, u64::MAX).unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(w, 2 * SPARSE_BLOCK as u64);
        drop(f);
        assert_eq!(std::fs::read(&p).unwrap(), data);
        use std::os::unix::fs::MetadataExt;
        let blocks = std::fs::metadata(&p).unwrap().blocks();
        assert!(blocks * 512 < 1 << 20, "{blocks} blocks allocated");
    }
}
