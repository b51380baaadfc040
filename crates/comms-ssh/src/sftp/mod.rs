//! Pipelined SFTP transfers over several channels of one connection.
//!
//! russh-sftp's `File` sends one request at a time; here the raw session is
//! used directly and many writes are kept in flight per channel. Big files
//! are cut into ranges written over different channels at once, because
//! sshd grants each channel one 2 MiB window per round trip. Files are
//! streamed from disk chunk by chunk, never read whole.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::StreamExt as _;
use opsbake_core::transport::{TransferReport, TransportError};
use russh::ChannelMsg;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::client::RawSftpSession;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};
use std::path::PathBuf;

use crate::conn::{Leased, PermitStream};
use crate::connect::{SshHandle, SshOptions};
use crate::exec::disconnected;
use crate::plan::{io_err, FileItem, Plan, Src};

mod pieces;

/// Bytes per SFTP write request (OpenSSH's sftp-server takes up to 256 KiB).
pub const CHUNK: usize = 128 << 10;
/// What a write request adds to its data in the channel's window: the SSH
/// string length, type, id, handle (OpenSSH's are 4 bytes; up to 256 by the
/// protocol), offset and data length.
pub(crate) const WRITE_OVERHEAD: usize = WRITE_HEADER + 256;
/// A write request's bytes besides its handle and data: length, type, id,
/// the handle's length, offset, the data's length.
pub(crate) const WRITE_HEADER: usize = 4 + 1 + 4 + 4 + 8 + 4;
/// Files at least this big are split across channels.
pub const SPLIT_AT: u64 = 8 << 20;
/// A split file goes in pieces of this size, each taken by the next channel
/// with room in its window (work stealing): faster channels take more, no
/// channel is left with a long tail of its own, and the channels of a
/// second connection join when they are ready.
pub const PIECE: u64 = 2 << 20;
/// Files up to this size are read whole and sent in one pipelined burst
/// (bounds memory: `FILE_CONCURRENCY * SMALL_FILE`).
const SMALL_FILE: u64 = 128 << 10;
/// Files in flight at once.
const FILE_CONCURRENCY: usize = 256;
/// Open handles per SFTP channel, at most. OpenSSH's sftp-server hands out
/// handles as 4-byte indexes (the lowest free slot) and russh-sftp keeps a
/// handle as a `String` decoded lossily: from index 128 on the last byte is
/// not valid UTF-8 and the handle comes back wrong (writes then fail with
/// `SSH_FX_FAILURE`). Stay well below 128 per channel (range handles of big
/// files and directory handles come on top).
const HANDLES_PER_CHANNEL: usize = 96;

/// The SFTP sessions of a second connection that big files may use, while
/// it is being made (`None` if it could not be).
pub(crate) type ExtraSessions =
    futures::future::Shared<futures::future::BoxFuture<'static, Option<Arc<SftpPool>>>>;

/// A pool of SFTP sessions (one channel each) on one connection.
pub(crate) struct SftpPool {
    pub sessions: Vec<Arc<RawSftpSession>>,
}

/// Start the sftp subsystem on `leased`; `Ok(None)` when the server has
/// none. The channel's permit goes back when the session's stream is dropped.
pub(crate) async fn open_session(
    handle: &SshHandle,
    target: &str,
    leased: Leased,
    timeout: Duration,
) -> Result<Option<Arc<RawSftpSession>>, TransportError> {
    let Leased { mut ch, permit } = leased;
    ch.request_subsystem(true, "sftp")
        .await
        .map_err(|e| disconnected(target, "sftp subsystem request", e))?;
    loop {
        match ch.wait().await {
            Some(ChannelMsg::Success) => break,
            Some(ChannelMsg::Failure) | Some(ChannelMsg::Close) | Some(ChannelMsg::Eof) => {
                let _ = ch.close().await;
                return Ok(None);
            }
            Some(_) => {}
            None => {
                if handle.is_closed() {
                    return Err(disconnected(
                        target,
                        "sftp subsystem request",
                        "connection closed",
                    ));
                }
                return Ok(None);
            }
        }
    }
    let sess = Arc::new(RawSftpSession::new(PermitStream::new(Leased {
        ch,
        permit,
    })));
    sess.set_timeout(timeout.as_secs().max(1));
    // The first poll of `init` queues the INIT; its VERSION is awaited in
    // the background. Requests queued behind it leave behind it and the
    // server reads them in order, so the first OPEN goes out with the INIT
    // instead of a round trip later. A failed INIT fails them too.
    let s = sess.clone();
    let mut init = Box::pin(async move { s.init().await });
    match futures::poll!(&mut init) {
        std::task::Poll::Ready(r) => {
            r.map_err(|e| disconnected(target, "sftp init", e))?;
        }
        std::task::Poll::Pending => {
            let target = target.to_string();
            tokio::spawn(async move {
                if let Err(e) = init.await {
                    tracing::debug!(%target, error = %e, "sftp init");
                }
            });
        }
    }
    Ok(Some(sess))
}

/// Maps an SFTP error: transport failures become `Disconnected`.
pub(crate) fn sftp_err(
    handle: &SshHandle,
    target: &str,
    op: &str,
    path: &str,
    e: SftpError,
    timeout: Duration,
) -> TransportError {
    match e {
        SftpError::Status(s) => TransportError::Remote {
            target: target.into(),
            op: op.into(),
            path: path.into(),
            reason: format!("{}: {}", s.status_code, s.error_message),
        },
        SftpError::Timeout if !handle.is_closed() => TransportError::Timeout {
            target: target.into(),
            what: format!("sftp {op} {path}"),
            after: timeout,
        },
        other
            if handle.is_closed()
                || matches!(
                    other,
                    SftpError::UnexpectedBehavior(_) | SftpError::IO(_) | SftpError::Timeout
                ) =>
        {
            TransportError::Disconnected {
                target: target.into(),
                reason: format!("sftp {op} {path}: {other}"),
            }
        }
        other => TransportError::Remote {
            target: target.into(),
            op: op.into(),
            path: path.into(),
            reason: other.to_string(),
        },
    }
}

pub(crate) fn is_status(e: &SftpError, code: StatusCode) -> bool {
    matches!(e, SftpError::Status(s) if s.status_code == code)
}

/// Progress that survives a dropped connection: which files are complete and
/// how far each range got (contiguously acknowledged by the server).
#[derive(Debug, Default)]
pub(crate) struct UploadState {
    pub dirs_done: bool,
    pub files_done: HashSet<usize>,
    pub started: HashSet<usize>,
    pub acked: HashMap<(usize, u64), u64>,
    pub bytes: u64,
}

struct Ctx<'a> {
    handle: &'a SshHandle,
    target: &'a str,
    timeout: Duration,
    window: usize,
    state: &'a Mutex<UploadState>,
}

impl Ctx<'_> {
    fn err(&self, op: &str, path: &str, e: SftpError) -> TransportError {
        sftp_err(self.handle, self.target, op, path, e, self.timeout)
    }
}

/// `mkdir -p` over SFTP (stat, then mkdir the missing components).
async fn mkdir_p(
    ctx: &Ctx<'_>,
    sess: &RawSftpSession,
    dir: &str,
    known: &mut HashSet<String>,
) -> Result<(), TransportError> {
    // Usually the directory (or its parent) exists: one stat, not one per
    // component (each is a round trip).
    if let Ok(a) = sess.stat(dir.to_string()).await {
        if a.attrs.is_dir() {
            known.insert(dir.to_string());
            return Ok(());
        }
    }
    let mut prefix = String::new();
    for comp in dir.split('/').filter(|c| !c.is_empty()) {
        prefix.push('/');
        prefix.push_str(comp);
        if known.contains(&prefix) {
            continue;
        }
        match sess.stat(prefix.clone()).await {
            Ok(a) if a.attrs.is_dir() => {}
            Ok(_) => {
                return Err(TransportError::Remote {
                    target: ctx.target.into(),
                    op: "mkdir".into(),
                    path: prefix.clone(),
                    reason: "exists and is not a directory".into(),
                })
            }
            Err(e) if is_status(&e, StatusCode::NoSuchFile) => {
                if let Err(e) = sess.mkdir(prefix.clone(), FileAttributes::empty()).await {
                    // Lost a race with a parallel upload: fine if it is a dir now.
                    match sess.stat(prefix.clone()).await {
                        Ok(a) if a.attrs.is_dir() => {}
                        _ => return Err(ctx.err("mkdir", &prefix, e)),
                    }
                }
            }
            Err(e) => return Err(ctx.err("stat", &prefix, e)),
        }
        known.insert(prefix.clone());
    }
    Ok(())
}

async fn ensure_dir(ctx: &Ctx<'_>, sess: &RawSftpSession, dir: &str) -> Result<(), TransportError> {
    match sess.mkdir(dir.to_string(), FileAttributes::empty()).await {
        Ok(_) => Ok(()),
        Err(e) => match sess.stat(dir.to_string()).await {
            Ok(a) if a.attrs.is_dir() => Ok(()),
            _ => Err(ctx.err("mkdir", dir, e)),
        },
    }
}

/// Read up to `len` bytes at `offset` of a source.
struct Reader {
    src: Src,
    file: Option<Arc<std::fs::File>>,
    /// File offset of the next byte handed out.
    pos: u64,
    /// Where reading stops (the end of the piece or file).
    end: u64,
    /// Read ahead: `buf[at..len]` are the bytes from `pos` on.
    buf: Vec<u8>,
    at: usize,
    len: usize,
}

/// How much a [`Reader`] reads at a time: one trip to the blocking pool
/// per this many bytes, not per write request (on two cores the thread
/// hand-offs of 64 KiB reads cost more than the copies).
const READ_AHEAD: usize = 1 << 20;

impl Reader {
    /// A reader of `src` from `offset` up to `end`.
    async fn open(src: &Src, offset: u64, end: u64) -> Result<Reader, TransportError> {
        let mut r = Reader {
            src: src.clone(),
            file: None,
            pos: offset,
            end,
            buf: Vec::new(),
            at: 0,
            len: 0,
        };
        if let Src::Path(p) = src {
            let path = p.clone();
            let f = tokio::task::spawn_blocking(move || {
                std::fs::File::open(&path).map_err(io_err(&path))
            })
            .await
            .map_err(|e| TransportError::LocalIo {
                path: p.clone(),
                source: std::io::Error::other(e.to_string()),
            })??;
            r.file = Some(Arc::new(f));
        }
        Ok(r)
    }

    /// The next `len` bytes.
    async fn next(&mut self, len: usize) -> Result<Vec<u8>, TransportError> {
        let out = match (&self.src, self.file.as_ref()) {
            (Src::Bytes(b), _) => {
                let start = usize::try_from(self.pos).unwrap_or(usize::MAX).min(b.len());
                let end = start.saturating_add(len).min(b.len());
                b[start..end].to_vec()
            }
            (Src::Path(p), Some(f)) => {
                if self.len - self.at < len {
                    self.fill(p.clone(), f.clone(), len).await?;
                }
                let out = self.buf[self.at..self.at + len].to_vec();
                self.at += len;
                out
            }
            (Src::Path(p), None) => {
                return Err(TransportError::LocalIo {
                    path: p.clone(),
                    source: std::io::Error::other("not open"),
                })
            }
        };
        self.pos += out.len() as u64;
        Ok(out)
    }

    /// Read from `pos` up to [`READ_AHEAD`] (at least `want`) bytes, not
    /// past `end`, in one blocking task; the buffer is reused.
    async fn fill(
        &mut self,
        p: PathBuf,
        f: Arc<std::fs::File>,
        want: usize,
    ) -> Result<(), TransportError> {
        let left = usize::try_from(self.end.saturating_sub(self.pos)).unwrap_or(usize::MAX);
        let n = left.min(READ_AHEAD).max(want);
        let mut buf = std::mem::take(&mut self.buf);
        let pos = self.pos;
        let (buf, r) = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            if buf.len() < n {
                buf.resize(n, 0);
            }
            let r = f.read_exact_at(&mut buf[..n], pos);
            (buf, r)
        })
        .await
        .map_err(|e| TransportError::LocalIo {
            path: p.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        self.buf = buf;
        match r {
            Ok(()) => {
                self.at = 0;
                self.len = n;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err(TransportError::LocalIo {
                    path: p,
                    source: std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "file shrank during upload",
                    ),
                })
            }
            Err(e) => Err(io_err(&p)(e)),
        }
    }
}

/// A part of a file: the range it belongs to (`range_start`) and the
/// bytes still to send, `[start, end)`.
#[derive(Debug, Clone, Copy)]
struct Span {
    range_start: u64,
    start: u64,
    end: u64,
}

/// Resolves once the SSH connection is gone.
pub(crate) async fn connection_closed(handle: &SshHandle) {
    while !handle.is_closed() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn attrs_for(item: &FileItem) -> FileAttributes {
    let mut a = FileAttributes::empty();
    a.permissions = Some(item.mode);
    if let Some(m) = item.mtime {
        a.atime = Some(m);
        a.mtime = Some(m);
    }
    a
}

/// Open `item` for writing on `sess`. An existing read-only file of ours (a
/// previous upload of a 0444 file) is made writable for the owner first; a
/// missing parent directory is made (`mkdir -p`) and the open tried again:
/// parents are not checked before the first open, which saves a round trip
/// when they exist, as they usually do.
async fn open_for_write(
    ctx: &Ctx<'_>,
    sess: &RawSftpSession,
    item: &FileItem,
    flags: OpenFlags,
) -> Result<String, TransportError> {
    let mut init = FileAttributes::empty();
    init.permissions = Some(0o600 | (item.mode & 0o700));
    let mut fixed_mode = false;
    let mut made_parent = false;
    loop {
        let e = match sess.open(item.remote.clone(), flags, init.clone()).await {
            Ok(h) => return Ok(h.handle),
            Err(e) => e,
        };
        if is_status(&e, StatusCode::PermissionDenied) && !fixed_mode {
            fixed_mode = true;
            let mut a = FileAttributes::empty();
            a.permissions = Some(0o600 | (item.mode & 0o700));
            if sess.setstat(item.remote.clone(), a).await.is_ok() {
                continue;
            }
        } else if is_status(&e, StatusCode::NoSuchFile) && !made_parent {
            made_parent = true;
            if let Some(parent) = crate::plan::parent_of(&item.remote) {
                mkdir_p(ctx, sess, &parent, &mut HashSet::new()).await?;
                continue;
            }
        }
        return Err(ctx.err("open", &item.remote, e));
    }
}

/// One file. Up to [`SPLIT_AT`]: open (truncating unless resuming), write
/// in order on one channel, set mode and times, check the size, close. A
/// bigger file is written in pieces by every channel of the pool at once
/// (and by the channels of `extra`, a second connection, once it is up):
/// each opens the file without truncating, so the opens go out together,
/// and the size is set with the mode and times at the end.
async fn upload_file(
    ctx: &Ctx<'_>,
    pool: &SftpPool,
    extra: Option<&ExtraSessions>,
    idx: usize,
    item: &FileItem,
) -> Result<(), TransportError> {
    let n = pool.sessions.len();
    let first = &pool.sessions[idx % n];
    let (resuming, acked) = {
        let st = ctx.state.lock().map_err(|_| TransportError::Other {
            target: ctx.target.into(),
            message: "upload state poisoned".into(),
        })?;
        (st.started.contains(&idx), st.acked.clone())
    };
    let rs = pieces::ranges(item.size, n);
    if let Ok(mut st) = ctx.state.lock() {
        st.started.insert(idx);
    }
    if rs.len() > 1 {
        return pieces::upload_split(ctx, pool, extra, idx, item, &rs, resuming, &acked).await;
    }
    let mut flags = OpenFlags::WRITE | OpenFlags::CREATE;
    if !resuming {
        flags |= OpenFlags::TRUNCATE;
    }
    let h = open_for_write(ctx, first, item, flags).await?;
    let mut from = 0;
    if resuming {
        let a = first
            .fstat(h.clone())
            .await
            .map_err(|e| ctx.err("fstat", &item.remote, e))?;
        from = resume_from(&acked, idx, (0, item.size), a.attrs.size);
    } else if item.size <= SMALL_FILE {
        // Small file: every write, the mode, the size check and the close go
        // out back to back (sftp-server answers a channel's requests in
        // order), so the file costs two round trips: open, then the rest.
        return small_file(ctx, first, h, idx, item).await;
    }
    if resuming && from > 0 {
        tracing::info!(path = %item.remote, from, size = item.size, "resuming upload");
    }
    // One range, written in order by this channel (the split file's
    // writer with one piece).
    let span = Span {
        range_start: 0,
        start: from,
        end: item.size,
    };
    let queue = Mutex::new((from < item.size).then_some(span).into_iter().collect());
    let h = pieces::piece_worker(ctx, first.clone(), idx, item, &queue, Some(h), true)
        .await
        .map_err(|(e, _)| e)?;
    let Some(h) = h else {
        return Err(no_handle(ctx, item));
    };
    finish_handle(ctx, first, h, idx, item, attrs_for(item)).await
}

/// Set `attrs` on the open handle, read its size back and close it (one
/// round trip: the three go out back to back), then [`finish_file`].
async fn finish_handle(
    ctx: &Ctx<'_>,
    sess: &RawSftpSession,
    h: String,
    idx: usize,
    item: &FileItem,
    attrs: FileAttributes,
) -> Result<(), TransportError> {
    let (set, st, close) = futures::join!(
        sess.fsetstat(h.clone(), attrs),
        sess.fstat(h.clone()),
        sess.close(h)
    );
    finish_file(ctx, idx, item, set, st, close, false)
}

/// The error for a file whose writers ended without the handle that sets
/// its attributes (cannot happen: that writer returns it or an error).
fn no_handle(ctx: &Ctx<'_>, item: &FileItem) -> TransportError {
    TransportError::Other {
        target: ctx.target.into(),
        message: format!("{}: no handle left to finish the upload", item.remote),
    }
}

/// Where a range resumes: its acknowledged offset, but not beyond what the
/// file on the target holds (`remote_size`, when known).
fn resume_from(
    acked: &HashMap<(usize, u64), u64>,
    idx: usize,
    r: (u64, u64),
    remote_size: Option<u64>,
) -> u64 {
    let a = acked.get(&(idx, r.0)).copied().unwrap_or(r.0);
    match remote_size {
        Some(sz) if sz < a => r.0.max(sz.min(a)),
        _ => a,
    }
}

/// The end of one file's upload: the answers to fsetstat, fstat and close,
/// the size check, and the file marked done (`count_bytes`: its bytes too,
/// for files written without per-range accounting).
fn finish_file<A, B>(
    ctx: &Ctx<'_>,
    idx: usize,
    item: &FileItem,
    set: Result<A, SftpError>,
    st: Result<russh_sftp::protocol::Attrs, SftpError>,
    close: Result<B, SftpError>,
    count_bytes: bool,
) -> Result<(), TransportError> {
    set.map_err(|e| ctx.err("fsetstat", &item.remote, e))?;
    let st = st.map_err(|e| ctx.err("fstat", &item.remote, e))?;
    close.map_err(|e| ctx.err("close", &item.remote, e))?;
    let got = st.attrs.size.unwrap_or(0);
    if got != item.size {
        return Err(TransportError::Verify {
            target: ctx.target.into(),
            path: item.remote.clone(),
            what: "size".into(),
            expected: item.size.to_string(),
            actual: got.to_string(),
        });
    }
    if let Ok(mut s) = ctx.state.lock() {
        s.files_done.insert(idx);
        if count_bytes {
            s.bytes += item.size;
        }
    }
    Ok(())
}

async fn small_file(
    ctx: &Ctx<'_>,
    sess: &RawSftpSession,
    handle: String,
    idx: usize,
    item: &FileItem,
) -> Result<(), TransportError> {
    let mut reader = Reader::open(&item.src, 0, item.size).await?;
    let mut writes = Vec::new();
    let mut off = 0u64;
    while off < item.size {
        let len = usize::try_from((item.size - off).min(CHUNK as u64)).unwrap_or(CHUNK);
        let data = reader.next(len).await?;
        writes.push(sess.write(handle.clone(), off, data));
        off += len as u64;
    }
    // join! polls its futures in order on the first poll: requests leave in
    // this order.
    let (w, set, st, close) = futures::join!(
        futures::future::join_all(writes),
        sess.fsetstat(handle.clone(), attrs_for(item)),
        sess.fstat(handle.clone()),
        sess.close(handle)
    );
    for r in w {
        r.map_err(|e| ctx.err("write", &item.remote, e))?;
    }
    finish_file(ctx, idx, item, set, st, close, true)
}

/// Run a plan over an SFTP pool. Safe to call again with the same `state`
/// after a dropped connection: finished files are skipped and partial ones
/// continue where the server's acknowledged data ends.
pub(crate) async fn upload(
    handle: &SshHandle,
    target: &str,
    opts: &SshOptions,
    pool: &SftpPool,
    extra: Option<&ExtraSessions>,
    plan: &Plan,
    state: &Mutex<UploadState>,
) -> Result<TransferReport, TransportError> {
    let ctx = Ctx {
        handle,
        target,
        timeout: opts.sftp_request_timeout,
        window: opts.sftp_window,
        state,
    };
    let s0 = &pool.sessions[0];
    let dirs_done = state.lock().map(|s| s.dirs_done).unwrap_or(false);
    if !dirs_done {
        let mut known = HashSet::new();
        // Files alone: their opens make missing parents (`open_for_write`),
        // no stat first. Directories and links need them before.
        if plan.files.is_empty() || !plan.dirs.is_empty() || !plan.links.is_empty() {
            for p in &plan.parents {
                mkdir_p(&ctx, s0, p, &mut known).await?;
            }
        }
        // Tree directories level by level (parents exist before children).
        let mut by_depth: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
        for (d, _) in &plan.dirs {
            by_depth.entry(d.matches('/').count()).or_default().push(d);
        }
        let known = &known;
        let modes: HashMap<&str, u32> = plan.dirs.iter().map(|(d, m)| (d.as_str(), *m)).collect();
        for (_, level) in by_depth {
            let n = pool.sessions.len();
            let futs = level.iter().enumerate().map(|(i, d)| {
                let sess = &pool.sessions[i % n];
                let mode = modes.get(d).copied().unwrap_or(0o755);
                let ctx = &ctx;
                async move {
                    if !known.contains(*d) {
                        ensure_dir(ctx, sess, d).await?;
                    }
                    // Keep it writable for us until the end (its own mode is
                    // applied last), also when a previous upload made it 0555.
                    let mut a = FileAttributes::empty();
                    a.permissions = Some(mode | 0o700);
                    sess.setstat(d.to_string(), a)
                        .await
                        .map_err(|e| ctx.err("setstat", d, e))?;
                    Ok::<(), TransportError>(())
                }
            });
            for r in futures::future::join_all(futs).await {
                r?;
            }
        }
        if let Ok(mut s) = state.lock() {
            s.dirs_done = true;
        }
    }

    let done = state
        .lock()
        .map(|s| s.files_done.clone())
        .unwrap_or_default();
    let mut futs = Vec::new();
    for (i, f) in plan.files.iter().enumerate() {
        if !done.contains(&i) {
            futs.push(upload_file(&ctx, pool, extra, i, f));
        }
    }
    let in_flight = FILE_CONCURRENCY.min(HANDLES_PER_CHANNEL * pool.sessions.len());
    let mut work = futures::stream::iter(futs).buffer_unordered(in_flight);
    let mut first_err = None;
    while let Some(r) = work.next().await {
        if let Err(e) = r {
            // A disconnect wins over other errors (it is the retryable one).
            if first_err.is_none() || e.is_disconnect() {
                first_err = Some(e);
            }
            if first_err
                .as_ref()
                .is_some_and(TransportError::is_disconnect)
            {
                break;
            }
        }
    }
    drop(work);
    if let Some(e) = first_err {
        return Err(e);
    }

    // Symlinks: replace whatever is there.
    let n = pool.sessions.len();
    let futs = plan.links.iter().enumerate().map(|(i, (link, to))| {
        let sess = &pool.sessions[i % n];
        let ctx = &ctx;
        async move {
            if sess.lstat(link.clone()).await.is_ok() {
                sess.remove(link.clone())
                    .await
                    .map_err(|e| ctx.err("remove", link, e))?;
            }
            // OpenSSH's sftp-server takes (target, link) in the order the
            // draft's SSH_FXP_SYMLINK reversed by mistake; russh-sftp sends
            // (linkpath, targetpath), so swap.
            sess.symlink(to.clone(), link.clone())
                .await
                .map_err(|e| ctx.err("symlink", link, e))?;
            Ok::<(), TransportError>(())
        }
    });
    for r in futures::future::join_all(futs).await {
        r?;
    }
    // Directory modes last (a read-only directory would refuse its files).
    let futs = plan.dirs.iter().rev().enumerate().map(|(i, (d, mode))| {
        let sess = &pool.sessions[i % n];
        let mut a = FileAttributes::empty();
        a.permissions = Some(*mode);
        let ctx = &ctx;
        async move {
            sess.setstat(d.clone(), a)
                .await
                .map_err(|e| ctx.err("setstat", d, e))
        }
    });
    for r in futures::future::join_all(futs).await {
        r?;
    }
    // sha256 is checked by the caller once it gave the pool back (a
    // command needs a channel, and a tight budget may be all pool).
    let bytes = plan.files.iter().map(|f| f.size).sum();
    Ok(TransferReport {
        files: plan.files.len() as u64,
        dirs: plan.dirs.len() as u64,
        symlinks: plan.links.len() as u64,
        bytes,
        tar_streams: 0,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 4099) as u8).collect()
    }

    #[tokio::test]
    async fn a_reader_hands_out_the_file_across_its_read_ahead() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let all = data(3 * READ_AHEAD + 12345);
        std::fs::write(&p, &all).unwrap();
        // From an offset inside the file to an end short of its size, in
        // requests that straddle each read-ahead boundary.
        let (from, to) = (1000u64, all.len() as u64 - 77);
        let mut r = Reader::open(&Src::Path(p.clone()), from, to).await.unwrap();
        let mut got = Vec::new();
        let mut at = from;
        while at < to {
            let len = (to - at).min(CHUNK as u64 - 29) as usize;
            let b = r.next(len).await.unwrap();
            assert_eq!(b.len(), len);
            got.extend_from_slice(&b);
            at += len as u64;
        }
        assert_eq!(got, &all[from as usize..to as usize]);
    }

    #[tokio::test]
    async fn a_file_shorter_than_planned_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, data(100_000)).unwrap();
        // Planned at 200 000 bytes: it shrank after the plan was made.
        let mut r = Reader::open(&Src::Path(p.clone()), 0, 200_000)
            .await
            .unwrap();
        let e = loop {
            match r.next(65_536).await {
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        let msg = e.to_string();
        assert!(msg.contains("shrank"), "{msg}");
        assert!(msg.contains(&p.display().to_string()), "{msg}");
    }
}
