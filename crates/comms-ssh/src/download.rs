//! Downloads over the SFTP pool.

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;

use futures::stream::StreamExt as _;
use opsbake_core::transport::{Download, TransferReport, TransportError};
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};
use tokio::io::AsyncWriteExt as _;

use crate::connect::{SshHandle, SshOptions};
use crate::plan::{io_err, join};
use crate::sftp::{is_status, sftp_err, SftpPool, CHUNK};

/// Download files and trees (same destination semantics as uploads).
pub(crate) async fn download(
    handle: &SshHandle,
    target: &str,
    opts: &SshOptions,
    pool: &SftpPool,
    items: &[Download],
) -> Result<TransferReport, TransportError> {
    let mut report = TransferReport::default();
    let sess = &pool.sessions[0];
    let err = |op: &str, path: &str, e: SftpError| {
        sftp_err(handle, target, op, path, e, opts.sftp_request_timeout)
    };
    for d in items {
        // Walk the remote side first.
        let mut files: Vec<(String, PathBuf, u32)> = Vec::new();
        let mut stack = vec![(d.remote.clone(), d.local.clone())];
        while let Some((r, l)) = stack.pop() {
            let a = sess
                .lstat(r.clone())
                .await
                .map_err(|e| err("lstat", &r, e))?;
            if a.attrs.is_symlink() {
                let n = sess
                    .readlink(r.clone())
                    .await
                    .map_err(|e| err("readlink", &r, e))?;
                if let Some(f) = n.files.first() {
                    let _ = std::fs::remove_file(&l);
                    std::os::unix::fs::symlink(&f.filename, &l).map_err(io_err(&l))?;
                    report.symlinks += 1;
                }
            } else if a.attrs.is_dir() {
                std::fs::create_dir_all(&l).map_err(io_err(&l))?;
                report.dirs += 1;
                let h = sess
                    .opendir(r.clone())
                    .await
                    .map_err(|e| err("opendir", &r, e))?;
                loop {
                    match sess.readdir(h.handle.clone()).await {
                        Ok(names) => {
                            for f in names.files {
                                if f.filename == "." || f.filename == ".." {
                                    continue;
                                }
                                stack.push((join(&r, &f.filename), l.join(&f.filename)));
                            }
                        }
                        Err(e) if is_status(&e, StatusCode::Eof) => break,
                        Err(e) => return Err(err("readdir", &r, e)),
                    }
                }
                let _ = sess.close(h.handle).await;
                if let Some(m) = a.attrs.permissions {
                    std::fs::set_permissions(&l, std::fs::Permissions::from_mode(m & 0o7777))
                        .map_err(io_err(&l))?;
                }
            } else {
                if let Some(p) = l.parent() {
                    std::fs::create_dir_all(p).map_err(io_err(p))?;
                }
                files.push((r, l, a.attrs.permissions.unwrap_or(0o644) & 0o7777));
            }
        }
        let n = pool.sessions.len();
        let mut futs = Vec::new();
        for (i, (r, l, mode)) in files.iter().enumerate() {
            let sess = pool.sessions[i % n].clone();
            let fut = async move {
                let h = sess
                    .open(r.clone(), OpenFlags::READ, FileAttributes::empty())
                    .await
                    .map_err(|e| err("open", r, e))?;
                let mut out = tokio::fs::File::create(l).await.map_err(io_err(l))?;
                let mut offset = 0u64;
                let mut eof = false;
                let mut total = 0u64;
                let mut inflight = futures::stream::FuturesOrdered::new();
                while !eof || !inflight.is_empty() {
                    while !eof && inflight.len() < 32 {
                        let off = offset;
                        let hh = h.handle.clone();
                        let s = &sess;
                        inflight
                            .push_back(async move { (off, s.read(hh, off, CHUNK as u32).await) });
                        offset += CHUNK as u64;
                    }
                    let Some((off, res)) = inflight.next().await else {
                        break;
                    };
                    match res {
                        Ok(data) => {
                            if off != total {
                                // A short read earlier: fall back to a sequential re-read.
                                return Err(TransportError::Remote {
                                    target: target.into(),
                                    op: "read".into(),
                                    path: r.clone(),
                                    reason: format!("short read before offset {off}"),
                                });
                            }
                            out.write_all(&data.data).await.map_err(io_err(l))?;
                            total += data.data.len() as u64;
                            if (data.data.len() as u64) < CHUNK as u64 {
                                eof = true;
                            }
                        }
                        Err(e) if is_status(&e, StatusCode::Eof) => eof = true,
                        Err(e) => return Err(err("read", r, e)),
                    }
                    if eof {
                        // Drain the outstanding reads past the end.
                        while let Some((_, res)) = inflight.next().await {
                            if let Ok(d) = res {
                                if !d.data.is_empty() {
                                    return Err(TransportError::Remote {
                                        target: target.into(),
                                        op: "read".into(),
                                        path: r.clone(),
                                        reason: "data after a short read".into(),
                                    });
                                }
                            }
                        }
                    }
                }
                out.flush().await.map_err(io_err(l))?;
                let _ = sess.close(h.handle).await;
                std::fs::set_permissions(l, std::fs::Permissions::from_mode(*mode))
                    .map_err(io_err(l))?;
                Ok::<u64, TransportError>(total)
            };
            futs.push(fut);
        }
        let mut s = futures::stream::iter(futs).buffer_unordered(32);
        while let Some(r) = s.next().await {
            report.bytes += r?;
            report.files += 1;
        }
    }
    Ok(report)
}
