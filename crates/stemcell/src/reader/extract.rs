//! extract: the image member to a sparse file (size, sha1 and member-path checks as it streams), the rest of the stemcell beside it.

#[allow(unused_imports)]
use super::*;

/// Options for [`extract`].
#[derive(Clone, Default)]
pub struct ExtractOptions {
    /// Limits.
    pub limits: Limits,
    /// Progress callback.
    pub progress: Option<Progress>,
}

impl std::fmt::Debug for ExtractOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtractOptions")
            .field("limits", &self.limits)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// Extract the inner image's files (e.g. `root.img`, or `image.ovf`,
/// `image.mf` and `image-disk1.vmdk`) into `dest`, checking the `image`
/// member's SHA-1 on the way. `dest` must not exist or be an empty
/// directory; on any error nothing is left behind.
pub fn extract(
    path: &Path,
    dest: &Path,
    opts: &ExtractOptions,
) -> Result<ExtractReport, ReadError> {
    if dest.exists() {
        let empty = std::fs::read_dir(dest)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty {
            return Err(ReadError::DestinationExists(dest.to_path_buf()));
        }
    }
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let limits = opts.limits;
    let (mut ar, ctx, _, _) = open(path, opts.progress.clone())?;
    let mut manifest: Option<Manifest> = None;
    let mut result: Option<(Vec<ExtractedFile>, u64, u64, String, tempfile::TempDir)> = None;
    let mut seen = SeenOuter::default();
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
            if name == MANIFEST_MEMBER {
                manifest = Some(read_manifest_member(&mut entry, &ctx, &limits)?);
                continue;
            }
            if name != IMAGE_MEMBER {
                if size > limits.max_member_bytes {
                    return Err(ReadError::MemberTooLarge {
                        path: ctx.path.clone(),
                        member: name,
                        size,
                        limit: limits.max_member_bytes,
                    });
                }
                let n = drain(&mut entry, &mut buf)
                    .map_err(|e| ctx.stream_err(e, &format!("reading {name}")))?;
                if n < size {
                    return Err(ctx.short(&name, n, size));
                }
                continue;
            }
            let m = manifest
                .as_ref()
                .ok_or_else(|| ReadError::ManifestAfterImage {
                    path: ctx.path.clone(),
                })?;
            if m.is_light() || size == 0 {
                return Err(ReadError::LightStemcell {
                    path: ctx.path.clone(),
                });
            }
            let limit = image_limit(m, &limits);
            if size > limit {
                return Err(ReadError::MemberTooLarge {
                    path: ctx.path.clone(),
                    member: name,
                    size,
                    limit,
                });
            }
            std::fs::create_dir_all(&parent).map_err(|e| ctx.io(&parent, e))?;
            let tmp = tempfile::Builder::new()
                .prefix(".opsbake-extract-")
                .tempdir_in(&parent)
                .map_err(|e| ctx.io(&parent, e))?;
            let mut hashed = HashingReader {
                inner: &mut entry,
                hasher: Sha1::new(),
                count: 0,
            };
            let (files, logical, written) =
                extract_inner(&mut hashed, tmp.path(), m, &limits, &ctx, &mut buf)?;
            drain(&mut hashed, &mut buf).map_err(|e| ctx.stream_err(e, "reading image"))?;
            if hashed.count < size {
                return Err(ctx.short(IMAGE_MEMBER, hashed.count, size));
            }
            let sha1 = hex::encode(hashed.hasher.finalize());
            if !sha1.eq_ignore_ascii_case(&m.sha1) {
                return Err(ReadError::Sha1Mismatch {
                    path: ctx.path.clone(),
                    expected: m.sha1.clone(),
                    actual: sha1,
                });
            }
            result = Some((files, logical, written, sha1, tmp));
        }
    }
    drain(ar.into_inner().by_ref(), &mut buf)
        .map_err(|e| ctx.stream_err(e, "reading the end of the gzip stream"))?;
    let manifest = manifest.ok_or_else(|| ReadError::MissingManifest {
        path: ctx.path.clone(),
    })?;
    let (files, logical_bytes, written_bytes, image_sha1, tmp) =
        result.ok_or_else(|| ReadError::MissingImage {
            path: ctx.path.clone(),
        })?;
    let tmp_path = tmp.keep();
    // Temp dirs are 0700; the extracted directory gets the usual 0755.
    if let Err(e) = std::fs::set_permissions(
        &tmp_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    ) {
        let _ = std::fs::remove_dir_all(&tmp_path);
        return Err(ctx.io(&tmp_path, e));
    }
    if let Err(e) = std::fs::rename(&tmp_path, dest) {
        let _ = std::fs::remove_dir_all(&tmp_path);
        return Err(ctx.io(dest, e));
    }
    tracing::info!(
        stemcell = %ctx.path.display(),
        dest = %dest.display(),
        logical_bytes,
        written_bytes,
        "extracted stemcell image"
    );
    Ok(ExtractReport {
        manifest,
        dest: dest.to_path_buf(),
        files,
        logical_bytes,
        written_bytes,
        image_sha1,
    })
}

pub(super) fn extract_inner<R: Read>(
    image: &mut R,
    root: &Path,
    m: &Manifest,
    limits: &Limits,
    ctx: &Ctx,
    buf: &mut [u8],
) -> Result<(Vec<ExtractedFile>, u64, u64), ReadError> {
    let mut peek = io::BufReader::with_capacity(BUF, image);
    {
        use io::BufRead;
        let head = peek
            .fill_buf()
            .map_err(|e| ctx.stream_err(e, "reading image"))?;
        if head.len() < 2 || head[0] != 0x1f || head[1] != 0x8b {
            return Err(ReadError::ImageNotGzip {
                path: ctx.path.clone(),
            });
        }
    }
    let limit = image_limit(m, limits);
    let mut inner = tar::Archive::new(MultiGzDecoder::new(&mut peek));
    let mut files = Vec::new();
    let mut seen: BTreeSet<PathBuf> = BTreeSet::new();
    let mut symlinks: BTreeSet<PathBuf> = BTreeSet::new();
    let mut regular: BTreeMap<PathBuf, u64> = BTreeMap::new();
    let mut logical = 0u64;
    let mut written = 0u64;
    let mut count = 0u64;
    {
        let entries = inner
            .entries()
            .map_err(|e| ctx.stream_err(e, "reading the image tar"))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| ctx.stream_err(e, "reading an image tar header"))?;
            count += 1;
            if count > limits.max_entries {
                return Err(ReadError::TooManyMembers {
                    path: ctx.path.clone(),
                    limit: limits.max_entries,
                });
            }
            let raw = entry.path_bytes().into_owned();
            let display = String::from_utf8_lossy(&raw).into_owned();
            let rel = check_member_path(&raw).map_err(|r| ctx.unsafe_member(&display, r))?;
            // No member may be written through a symlink extracted earlier.
            let mut prefix = PathBuf::new();
            for c in rel.components() {
                prefix.push(c);
                if prefix != rel && symlinks.contains(&prefix) {
                    return Err(ctx.unsafe_member(
                        &display,
                        UnsafeReason::ThroughSymlink(prefix.display().to_string()),
                    ));
                }
            }
            let kind = entry.header().entry_type();
            if !kind.is_dir() && !seen.insert(rel.clone()) {
                return Err(ctx.unsafe_member(&display, UnsafeReason::Duplicate));
            }
            let out = root.join(&rel);
            let mkparent = |out: &Path| -> Result<(), ReadError> {
                if let Some(p) = out.parent() {
                    std::fs::create_dir_all(p).map_err(|e| ctx.io(p, e))?;
                }
                Ok(())
            };
            match kind {
                EntryType::Directory => {
                    std::fs::create_dir_all(&out).map_err(|e| ctx.io(&out, e))?;
                    files.push(ExtractedFile {
                        path: rel,
                        size: 0,
                        kind: "dir",
                    });
                }
                EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                    let size = entry.size();
                    let total = logical.saturating_add(size);
                    if total > limit {
                        return Err(ReadError::ExtractTooLarge {
                            path: ctx.path.clone(),
                            member: display,
                            size: total,
                            limit,
                            disk_mib: m.disk_mib(),
                        });
                    }
                    mkparent(&out)?;
                    let mut f = File::create(&out).map_err(|e| ctx.io(&out, e))?;
                    let (n, w) = write_sparse(&mut entry, &mut f, buf, size.saturating_add(1))
                        .map_err(|e| match e {
                            SparseError::Read(e) => {
                                ctx.stream_err(e, &format!("reading image member {display}"))
                            }
                            SparseError::Write(e) => ctx.io(&out, e),
                        })?;
                    if n < size {
                        return Err(ctx.short(&display, n, size));
                    }
                    if n > size {
                        return Err(ReadError::Corrupt {
                            path: ctx.path.clone(),
                            detail: format!(
                                "image member {display} holds more than its declared {size} bytes"
                            ),
                        });
                    }
                    f.sync_all().map_err(|e| ctx.io(&out, e))?;
                    logical = total;
                    written += w;
                    regular.insert(rel.clone(), size);
                    files.push(ExtractedFile {
                        path: rel,
                        size,
                        kind: "file",
                    });
                }
                EntryType::Symlink => {
                    let target = entry
                        .link_name_bytes()
                        .map(|t| t.into_owned())
                        .unwrap_or_default();
                    let tdisp = String::from_utf8_lossy(&target).into_owned();
                    if resolve_inside(&rel, &target).is_none() {
                        return Err(ctx.unsafe_member(&display, UnsafeReason::SymlinkEscape(tdisp)));
                    }
                    mkparent(&out)?;
                    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), &out)
                        .map_err(|e| ctx.io(&out, e))?;
                    symlinks.insert(rel.clone());
                    files.push(ExtractedFile {
                        path: rel,
                        size: 0,
                        kind: "symlink",
                    });
                }
                EntryType::Link => {
                    let target = entry
                        .link_name_bytes()
                        .map(|t| t.into_owned())
                        .unwrap_or_default();
                    let tdisp = String::from_utf8_lossy(&target).into_owned();
                    let trel = check_member_path(&target)
                        .ok()
                        .filter(|t| regular.contains_key(t))
                        .ok_or_else(|| {
                            ctx.unsafe_member(&display, UnsafeReason::HardlinkEscape(tdisp))
                        })?;
                    mkparent(&out)?;
                    std::fs::hard_link(root.join(&trel), &out).map_err(|e| ctx.io(&out, e))?;
                    files.push(ExtractedFile {
                        path: rel,
                        size: 0,
                        kind: "hardlink",
                    });
                }
                EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink => {}
                other => {
                    return Err(
                        ctx.unsafe_member(&display, UnsafeReason::Special(other.as_byte() as char))
                    );
                }
            }
        }
    }
    // Check the inner gzip stream to its end (CRC, length).
    drain(inner.into_inner().by_ref(), buf)
        .map_err(|e| ctx.stream_err(e, "reading the end of the image's gzip stream"))?;
    Ok((files, logical, written))
}

#[derive(Debug)]
pub(super) enum SparseError {
    Read(io::Error),
    Write(io::Error),
}

/// Copy at most `max` bytes from `r` into `f`, seeking over all-zero blocks
/// so that the file is sparse where the data is. Returns (logical, written).
pub(super) fn write_sparse<R: Read>(
    r: &mut R,
    f: &mut File,
    buf: &mut [u8],
    max: u64,
) -> Result<(u64, u64), SparseError> {
    let mut pos = 0u64;
    let mut written = 0u64;
    let mut limited = r.take(max);
    loop {
        // Fill the buffer as far as possible so that blocks line up.
        let mut filled = 0;
        while filled < buf.len() {
            match limited.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(SparseError::Read(e)),
            }
        }
        if filled == 0 {
            break;
        }
        let data = &buf[..filled];
        let mut i = 0;
        while i < data.len() {
            let end = (i + SPARSE_BLOCK).min(data.len());
            if data[i..end].iter().all(|b| *b == 0) {
                i = end;
                continue;
            }
            // A run of non-zero blocks.
            let mut j = end;
            while j < data.len() {
                let e2 = (j + SPARSE_BLOCK).min(data.len());
                if data[j..e2].iter().all(|b| *b == 0) {
                    break;
                }
                j = e2;
            }
            f.seek(SeekFrom::Start(pos + i as u64))
                .map_err(SparseError::Write)?;
            f.write_all(&data[i..j]).map_err(SparseError::Write)?;
            written += (j - i) as u64;
            i = j;
        }
        pos += filled as u64;
        if filled < buf.len() {
            break;
        }
    }
    f.set_len(pos).map_err(SparseError::Write)?;
    Ok((pos, written))
}
