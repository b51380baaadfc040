//! The upload plan (computed locally before any I/O on the target) and the
//! sha256 check of what arrived.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use opsbake_core::transport::{shell_quote, TransportError, Upload, UploadSource};
use sha2::{Digest as _, Sha256};

use crate::conn::Conn;
use crate::exec::capture;

/// Where file bytes come from.
#[derive(Debug, Clone)]
pub(crate) enum Src {
    Path(PathBuf),
    Bytes(Arc<Vec<u8>>),
}

/// One file of a plan.
#[derive(Debug, Clone)]
pub(crate) struct FileItem {
    pub src: Src,
    pub remote: String,
    pub size: u64,
    pub mode: u32,
    pub mtime: Option<u32>,
    pub verify: bool,
}

/// Everything an upload does, computed locally before any I/O on the target.
#[derive(Debug, Default, Clone)]
pub(crate) struct Plan {
    /// Directories that must exist before anything else (`mkdir -p`).
    pub parents: Vec<String>,
    /// Directories from trees, parents first, with modes.
    pub dirs: Vec<(String, u32)>,
    pub files: Vec<FileItem>,
    /// (remote link path, link target).
    pub links: Vec<(String, String)>,
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TransportError + '_ {
    move |source| TransportError::LocalIo {
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn parent_of(remote: &str) -> Option<String> {
    let p = Path::new(remote).parent()?.to_str()?.to_string();
    if p.is_empty() || p == "/" {
        None
    } else {
        Some(p)
    }
}

pub(crate) fn join(remote: &str, name: &str) -> String {
    if remote.ends_with('/') {
        format!("{remote}{name}")
    } else {
        format!("{remote}/{name}")
    }
}

pub(crate) fn mtime(md: &std::fs::Metadata) -> Option<u32> {
    u32::try_from(md.mtime()).ok()
}

/// Build the plan for `items` (walks local trees).
pub(crate) fn plan(items: &[Upload]) -> Result<Plan, TransportError> {
    let mut p = Plan::default();
    for u in items {
        let remote = u.remote.trim_end_matches('/').to_string();
        let remote = if remote.is_empty() {
            "/".to_string()
        } else {
            remote
        };
        match &u.source {
            UploadSource::Bytes(b) => {
                if let Some(par) = parent_of(&remote) {
                    p.parents.push(par);
                }
                p.files.push(FileItem {
                    src: Src::Bytes(Arc::new(b.clone())),
                    remote,
                    size: b.len() as u64,
                    mode: u.mode.unwrap_or(0o644),
                    mtime: None,
                    verify: u.verify_sha256,
                });
            }
            UploadSource::Path(local) => {
                let md = std::fs::symlink_metadata(local).map_err(io_err(local))?;
                if md.is_dir() {
                    p.parents.push(remote.clone());
                    p.dirs
                        .push((remote.clone(), u.mode.unwrap_or(md.mode() & 0o7777)));
                    walk(local, &remote, u.verify_sha256, &mut p)?;
                } else {
                    if let Some(par) = parent_of(&remote) {
                        p.parents.push(par);
                    }
                    if md.file_type().is_symlink() {
                        let t = std::fs::read_link(local).map_err(io_err(local))?;
                        p.links.push((remote, t.to_string_lossy().into_owned()));
                    } else {
                        p.files.push(FileItem {
                            src: Src::Path(local.clone()),
                            remote,
                            size: md.len(),
                            mode: u.mode.unwrap_or(md.mode() & 0o7777),
                            mtime: mtime(&md),
                            verify: u.verify_sha256,
                        });
                    }
                }
            }
        }
    }
    p.parents.sort();
    p.parents.dedup();
    Ok(p)
}

pub(crate) fn walk(
    local: &Path,
    remote: &str,
    verify: bool,
    p: &mut Plan,
) -> Result<(), TransportError> {
    let mut entries: Vec<_> = std::fs::read_dir(local)
        .map_err(io_err(local))?
        .collect::<Result<_, _>>()
        .map_err(io_err(local))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let r = join(remote, &name);
        let md = std::fs::symlink_metadata(&path).map_err(io_err(&path))?;
        let ft = md.file_type();
        if ft.is_symlink() {
            let t = std::fs::read_link(&path).map_err(io_err(&path))?;
            p.links.push((r, t.to_string_lossy().into_owned()));
        } else if ft.is_dir() {
            p.dirs.push((r.clone(), md.mode() & 0o7777));
            walk(&path, &r, verify, p)?;
        } else if ft.is_file() {
            p.files.push(FileItem {
                src: Src::Path(path.clone()),
                remote: r,
                size: md.len(),
                mode: md.mode() & 0o7777,
                mtime: mtime(&md),
                verify,
            });
        } else {
            tracing::warn!(path = %path.display(), "skipping special file (not a file, directory or symlink)");
        }
    }
    Ok(())
}

/// sha256 of a local source, streamed (a file unchanged since the build's
/// input digests read it is not read again: [`opsbake_core::digest`]).
pub(crate) async fn local_sha256(src: &Src) -> Result<String, TransportError> {
    match src {
        Src::Bytes(b) => Ok(hex::encode(Sha256::digest(b.as_slice()))),
        Src::Path(p) => {
            let p = p.clone();
            tokio::task::spawn_blocking(move || {
                opsbake_core::digest::sha256_file(&p).map_err(|e| match e {
                    opsbake_core::digest::DigestError::Io { source, .. } => io_err(&p)(source),
                    e => TransportError::Other {
                        target: "local".into(),
                        message: e.to_string(),
                    },
                })
            })
            .await
            .map_err(|e| TransportError::Other {
                target: "local".into(),
                message: format!("hashing task: {e}"),
            })?
        }
    }
}

/// Compare sha256 of every file marked `verify` (remote side by `sha256sum`).
pub(crate) async fn verify_sha256(conn: &Arc<Conn>, plan: &Plan) -> Result<(), TransportError> {
    let target = conn.target.as_str();
    let files: Vec<&FileItem> = plan.files.iter().filter(|f| f.verify).collect();
    for batch in files.chunks(200) {
        let mut cmd = String::from("sha256sum --");
        for f in batch {
            cmd.push(' ');
            cmd.push_str(&shell_quote(&f.remote));
        }
        let (st, out, err) = capture(conn, cmd, Some(Duration::from_secs(600))).await?;
        if !st.success() {
            return Err(TransportError::Remote {
                target: target.into(),
                op: "sha256sum".into(),
                path: batch.first().map(|f| f.remote.clone()).unwrap_or_default(),
                reason: format!("{st}: {}", err.trim()),
            });
        }
        // GNU sha256sum prefixes the line with `\` when it escaped the name.
        let remote: Vec<&str> = out
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(|h| h.trim_start_matches('\\'))
            .collect();
        for (i, f) in batch.iter().enumerate() {
            let want = local_sha256(&f.src).await?;
            let got = remote.get(i).copied().unwrap_or("");
            if want != got {
                return Err(TransportError::Verify {
                    target: target.into(),
                    path: f.remote.clone(),
                    what: "sha256".into(),
                    expected: want,
                    actual: got.into(),
                });
            }
        }
    }
    Ok(())
}
