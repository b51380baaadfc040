//! Big files in pieces: each channel of the pool (and of a second
//! connection, once it is up) takes the next piece when its window has
//! room, keeping its writes in flight from one piece into the next. A file
//! of one range is written by the same code with a single piece.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use futures::stream::{FuturesUnordered, StreamExt as _};
use opsbake_core::transport::TransportError;
use russh_sftp::client::RawSftpSession;
use russh_sftp::protocol::OpenFlags;

use super::{
    attrs_for, connection_closed, finish_handle, no_handle, open_for_write, resume_from, Ctx,
    ExtraSessions, Reader, SftpPool, Span, CHUNK, PIECE, SPLIT_AT, WRITE_HEADER, WRITE_OVERHEAD,
};
use crate::plan::FileItem;

/// The pieces `[start, end)` of a file split across channels (none below
/// [`SPLIT_AT`] or with one channel: one range, written in order).
pub(super) fn ranges(size: u64, parts: usize) -> Vec<(u64, u64)> {
    if size < SPLIT_AT || parts <= 1 {
        return vec![(0, size)];
    }
    let mut v = Vec::new();
    let mut s = 0;
    while s < size {
        let e = (s + PIECE).min(size);
        v.push((s, e));
        s = e;
    }
    v
}

/// One channel's share of a split file: takes pieces from `queue` while its
/// window has room, keeps writes in flight across pieces (no pause between
/// them), and records each piece's contiguously acknowledged offset.
/// `handle`: the file already open on this session; otherwise it is opened
/// (without truncating: the size is set at the end) before the first piece,
/// or at once when `keep` (the handle that sets the attributes at the end:
/// returned open). Other handles are closed. On error, the parts of its
/// pieces that were not acknowledged are returned with it, so that another
/// channel can take them.
pub(super) async fn piece_worker(
    ctx: &Ctx<'_>,
    sess: Arc<RawSftpSession>,
    idx: usize,
    item: &FileItem,
    queue: &Mutex<VecDeque<Span>>,
    handle: Option<String>,
    keep: bool,
) -> Result<Option<String>, (TransportError, Vec<Span>)> {
    let mut handle = handle;
    if handle.is_none() && keep {
        handle = Some(
            open_for_write(ctx, &sess, item, OpenFlags::WRITE | OpenFlags::CREATE)
                .await
                .map_err(|e| (e, Vec::new()))?,
        );
    }
    // Per piece (by its start): its end, the acknowledged offset, and
    // acknowledged writes beyond it.
    let mut pieces: BTreeMap<u64, (u64, u64, BTreeMap<u64, u64>)> = BTreeMap::new();
    let leftovers = |pieces: &BTreeMap<u64, (u64, u64, BTreeMap<u64, u64>)>| -> Vec<Span> {
        pieces
            .iter()
            .filter(|(_, (end, acked, _))| acked < end)
            .map(|(&range_start, &(end, acked, _))| Span {
                range_start,
                start: acked,
                end,
            })
            .collect()
    };
    let mut cur: Option<(Span, Reader)> = None;
    let mut inflight = FuturesUnordered::new();
    let mut inflight_bytes = 0usize;
    loop {
        // Whole writes only, headers counted: a write that does not fit the
        // channel's window goes out as a header-sized SSH packet and waits
        // for the window (more packets to encrypt on both ends).
        while inflight_bytes + CHUNK + WRITE_OVERHEAD <= ctx.window.max(CHUNK + WRITE_OVERHEAD) {
            if cur.as_ref().is_none_or(|(sp, _)| sp.start >= sp.end) {
                let next = queue.lock().ok().and_then(|mut q| q.pop_front());
                let Some(sp) = next else {
                    cur = None;
                    break;
                };
                pieces.insert(sp.range_start, (sp.end, sp.start, BTreeMap::new()));
                if handle.is_none() {
                    match open_for_write(ctx, &sess, item, OpenFlags::WRITE | OpenFlags::CREATE)
                        .await
                    {
                        Ok(h) => handle = Some(h),
                        Err(e) => return Err((e, leftovers(&pieces))),
                    }
                }
                let reader = match Reader::open(&item.src, sp.start, sp.end).await {
                    Ok(r) => r,
                    Err(e) => return Err((e, leftovers(&pieces))),
                };
                cur = Some((sp, reader));
            }
            let (Some((sp, reader)), Some(h)) = (cur.as_mut(), handle.as_ref()) else {
                break;
            };
            // The request, header included, fills whole SSH packets
            // (sshd's 32 KiB): a 128 KiB write would leave a 29-byte fifth.
            let most = CHUNK - WRITE_HEADER - h.len();
            let len = usize::try_from((sp.end - sp.start).min(most as u64)).unwrap_or(most);
            let data = match reader.next(len).await {
                Ok(d) => d,
                Err(e) => return Err((e, leftovers(&pieces))),
            };
            let (piece, off) = (sp.range_start, sp.start);
            let (sess, h) = (&sess, h.clone());
            inflight.push(async move { (piece, off, len, sess.write(h, off, data).await) });
            sp.start += len as u64;
            inflight_bytes += len + WRITE_OVERHEAD;
        }
        if inflight.is_empty() {
            break;
        }
        let next = tokio::select! {
            n = inflight.next() => n,
            _ = connection_closed(ctx.handle) => {
                let e = TransportError::Disconnected {
                    target: ctx.target.into(),
                    reason: format!("connection lost while writing {}", item.remote),
                };
                return Err((e, leftovers(&pieces)));
            }
        };
        let Some((piece, off, len, res)) = next else {
            break;
        };
        if let Err(e) = res {
            let e = ctx.err("write", &item.remote, e);
            return Err((e, leftovers(&pieces)));
        }
        inflight_bytes -= len + WRITE_OVERHEAD;
        if let Some((_, acked, done)) = pieces.get_mut(&piece) {
            done.insert(off, len as u64);
            while let Some(l) = done.remove(acked) {
                *acked += l;
            }
            if let Ok(mut st) = ctx.state.lock() {
                st.acked.insert((idx, piece), *acked);
                st.bytes += len as u64;
            }
        }
    }
    match handle {
        Some(h) if !keep => {
            sess.close(h)
                .await
                .map_err(|e| (ctx.err("close", &item.remote, e), Vec::new()))?;
            Ok(None)
        }
        other => Ok(other),
    }
}

/// `fut`'s output with a tag (here: whether it runs on the second connection).
async fn tagged<F: std::future::Future>(tag: bool, fut: F) -> (bool, F::Output) {
    (tag, fut.await)
}

/// A file of several pieces ([`super::upload_file`]).
#[allow(clippy::too_many_arguments)]
pub(super) async fn upload_split(
    ctx: &Ctx<'_>,
    pool: &SftpPool,
    extra: Option<&ExtraSessions>,
    idx: usize,
    item: &FileItem,
    rs: &[(u64, u64)],
    resuming: bool,
    acked: &HashMap<(usize, u64), u64>,
) -> Result<(), TransportError> {
    let n = pool.sessions.len();
    let first = &pool.sessions[idx % n];
    // Resuming: what the target holds bounds each piece's acknowledged
    // offset (one fstat before the pieces are handed out).
    let mut first_handle = None;
    let mut remote_size = None;
    if resuming {
        let h = open_for_write(ctx, first, item, OpenFlags::WRITE | OpenFlags::CREATE).await?;
        let a = first
            .fstat(h.clone())
            .await
            .map_err(|e| ctx.err("fstat", &item.remote, e))?;
        remote_size = a.attrs.size;
        first_handle = Some(h);
    }
    let queue: VecDeque<Span> = rs
        .iter()
        .filter_map(|&(s, e)| {
            let from = resume_from(acked, idx, (s, e), remote_size);
            (from < e).then_some(Span {
                range_start: s,
                start: from,
                end: e,
            })
        })
        .collect();
    if resuming {
        let left: u64 = queue.iter().map(|sp| sp.end - sp.start).sum();
        tracing::info!(path = %item.remote, left, size = item.size, "resuming upload");
    }
    let queue = Mutex::new(queue);
    let queue = &queue;
    let mut workers = FuturesUnordered::new();
    for i in 0..n {
        let sess = pool.sessions[(idx + i) % n].clone();
        let h = if i == 0 { first_handle.take() } else { None };
        workers.push(tagged(
            false,
            piece_worker(ctx, sess, idx, item, queue, h, i == 0),
        ));
    }
    let mut extra = extra.cloned();
    let mut kept = None;
    let mut failed = None;
    loop {
        tokio::select! {
            r = workers.next() => match r {
                None => break,
                Some((_, Ok(Some(h)))) => kept = Some(h),
                Some((_, Ok(None))) => {}
                Some((from_extra, Err((e, left)))) => {
                    // A channel of the second connection failed while this
                    // connection is alive: its pieces go back to the queue,
                    // for a channel of this pool.
                    if from_extra && !ctx.handle.is_closed() {
                        tracing::warn!(path = %item.remote, error = %e, "a channel of the second connection failed: the first takes its pieces");
                        if let Ok(mut q) = queue.lock() {
                            q.extend(left);
                        }
                        workers.push(tagged(false, piece_worker(ctx, first.clone(), idx, item, queue, None, false)));
                    } else {
                        failed = Some(e);
                        break;
                    }
                }
            },
            p = async { match extra.as_mut() { Some(f) => f.await, None => std::future::pending().await } }, if extra.is_some() => {
                extra = None;
                let left = queue.lock().map(|q| !q.is_empty()).unwrap_or(false);
                if let (Some(p), true) = (p, left) {
                    tracing::debug!(path = %item.remote, channels = p.sessions.len(), "second connection's channels join");
                    for s in &p.sessions {
                        workers.push(tagged(true, piece_worker(ctx, s.clone(), idx, item, queue, None, false)));
                    }
                }
            }
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let Some(h) = kept else {
        return Err(no_handle(ctx, item));
    };
    // The size too: the pieces were written without truncating.
    let mut attrs = attrs_for(item);
    attrs.size = Some(item.size);
    finish_handle(ctx, first, h, idx, item, attrs).await
}
