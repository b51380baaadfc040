//! Trees of small files as one stream: a tar archive built on the fly and
//! piped into the target's own `tar` over one exec channel. 2000 files are
//! then one stream, not 2000 SFTP open/write/close round trips.
//!
//! The remote command checks that `tar` exists (exit 97 when not: the
//! connection remembers it and uses SFTP from then on), makes directories
//! of an earlier upload writable again, extracts with modes (`-p`), mtimes
//! and symlinks, and checks the sha256 of every verified file against a
//! list that travels as the archive's last member (`sha256sum -c`), all in
//! one exec. Big files (at least [`SPLIT_AT`]) still go over the SFTP pool,
//! several channels at once.
//!
//! On a slow link a big tree goes as several tar streams at once, each on
//! its own channel ([`parts`]): sshd gives every channel its own window
//! (2 MiB), so at 50 ms one channel carries at most about 40 MiB/s; the
//! first stream carries the directories and symlinks, the others only files
//! and make their directories with `mkdir -p` before their tar starts (the
//! directory's own entry, in the first stream, sets its mode). Every stream
//! costs the target a session, a shell, a `tar` and a `sha256sum`: about
//! 0.35 s of guest time each in a one-vCPU emulated
//! guest, where the round trip is a millisecond and one window-limited
//! stream is not the bottleneck. A target with several CPUs extracts and
//! hashes the streams side by side (and the build host reads and hashes
//! their files side by side: 2000 files of 4 KiB to a 2-core host on
//! loopback go 1.5x faster in 6 streams than in one). So a tree goes in up
//! to 6 streams of 1 MiB or more, except to a target known to have one CPU
//! (`SshOptions::target_cpus`), which gets more than one stream only on a
//! slow link: how much a stream then carries at least follows the round
//! trip the connection measured ([`per_stream`]): 40 MiB at 1 ms, 4 MiB at
//! 10 ms, 1 MiB (the least) from 40 ms on ([`stream_count`]).

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use opsbake_core::transport::{shell_quote, TransferReport, TransportError};
use russh::ChannelMsg;
use sha2::{Digest as _, Sha256};

use crate::conn::{Conn, Leased};
use crate::exec::disconnected;
use crate::plan::{io_err, parent_of, FileItem, Plan, Src};
use crate::sftp::SPLIT_AT;

/// Exit code of the remote command when the target has no `tar`.
const NO_TAR: u32 = 97;
/// Exit code when `tar -x` failed.
const TAR_FAILED: u32 = 98;
/// Exit code when `sha256sum -c` found a difference.
const VERIFY_FAILED: u32 = 99;
/// Bytes per channel write.
const WRITE: usize = 256 << 10;
/// Bytes of tar stream (headers included) per channel at least, on the
/// slowest links: a bigger tree is split over several channels.
const MIN_PER_STREAM: u64 = 1 << 20;
/// The window sshd gives a session channel.
const WINDOW: u64 = 2 << 20;
/// A stream carries at least what its window lets through in this long:
/// splitting a tree that one channel sends in less time saves less than
/// the extra streams cost the target.
const STREAM_TIME: Duration = Duration::from_millis(20);
/// Tar streams of one upload at most.
const MAX_STREAMS: usize = 6;
/// Longest command line (directory list included) sent as one exec.
const MAX_COMMAND: usize = 64 << 10;

/// What a tar upload found.
pub(crate) enum TarOutcome {
    /// Extracted (and verified).
    Done(TransferReport),
    /// The target has no `tar`: use SFTP.
    NoTar,
}

/// The components of an absolute remote path, or None when tar cannot
/// carry it as it is (relative, `..`, or characters `sha256sum -c` lines
/// cannot hold).
fn rel(remote: &str) -> Option<String> {
    if !remote.starts_with('/') || remote.contains(['\n', '\r', '\\']) {
        return None;
    }
    let comps: Vec<&str> = remote
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if comps.is_empty() || comps.contains(&"..") {
        return None;
    }
    Some(comps.join("/"))
}

/// Split a plan into the part one tar stream carries (directories,
/// symlinks, files below [`SPLIT_AT`]) and the big files left to SFTP.
/// None when tar cannot carry it (see [`rel`]), when a big file goes into
/// a read-only directory of the tree (its mode is applied by tar before the
/// SFTP part runs), or when the command line would be too long.
pub(crate) fn split(plan: &Plan) -> Option<(Plan, Plan)> {
    let paths = plan
        .parents
        .iter()
        .chain(plan.dirs.iter().map(|(d, _)| d))
        .chain(plan.files.iter().map(|f| &f.remote))
        .chain(plan.links.iter().map(|(l, _)| l));
    for p in paths {
        rel(p)?;
    }
    let readonly: Vec<&str> = plan
        .dirs
        .iter()
        .filter(|(_, m)| m & 0o200 == 0)
        .map(|(d, _)| d.as_str())
        .collect();
    let mut small = Plan {
        parents: plan.parents.clone(),
        dirs: plan.dirs.clone(),
        files: Vec::new(),
        links: plan.links.clone(),
    };
    let mut big = Plan::default();
    for f in &plan.files {
        if f.size >= SPLIT_AT {
            let parent = parent_of(&f.remote);
            if parent.as_deref().is_some_and(|p| readonly.contains(&p)) {
                return None;
            }
            big.parents.extend(parent);
            big.files.push(f.clone());
        } else {
            small.files.push(f.clone());
        }
    }
    big.parents.sort();
    big.parents.dedup();
    if small.files.is_empty() && small.links.is_empty() && small.dirs.is_empty() {
        return None;
    }
    if command(&small, "x", true).len() > MAX_COMMAND {
        return None;
    }
    Some((small, big))
}

/// Bytes of tar stream one channel should carry at least over a link with
/// this round trip: what its window lets through in [`STREAM_TIME`], never
/// below [`MIN_PER_STREAM`] (None: not measured, everything in one stream).
pub(crate) fn per_stream(rtt: Option<Duration>) -> u64 {
    let Some(rtt) = rtt else { return u64::MAX };
    let rtt_us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX).max(1);
    let stream_us = u64::try_from(STREAM_TIME.as_micros()).unwrap_or(u64::MAX);
    (WINDOW.saturating_mul(stream_us) / rtt_us).max(MIN_PER_STREAM)
}

/// Tar stream bytes of one file: its header and its data in 512-byte
/// blocks.
fn tar_bytes(f: &FileItem) -> u64 {
    f.size.div_ceil(512) * 512 + 512
}

/// Tar stream bytes of a plan's files.
fn stream_bytes(plan: &Plan) -> u64 {
    plan.files.iter().map(tar_bytes).sum()
}

/// How many tar streams a tree of `total` bytes goes in, at most `max`:
/// one per [`MIN_PER_STREAM`]; to a one-CPU target only as many as the
/// link's round trip asks for ([`per_stream`]).
pub(crate) fn stream_count(total: u64, rtt: Option<Duration>, cpus: usize, max: usize) -> usize {
    let by_link = usize::try_from(total / per_stream(rtt).max(1)).unwrap_or(usize::MAX);
    let by_size = usize::try_from(total / MIN_PER_STREAM).unwrap_or(usize::MAX);
    let by_cpus = if cpus <= 1 { 1 } else { by_size };
    by_link.max(by_cpus).clamp(1, max.max(1))
}

/// Split the tar part of a plan into at most `n` plans of about the same
/// size, each one tar stream: the first keeps the directories and
/// symlinks, every one a contiguous run of the files (tree order). One plan
/// when `n` is 1, or when the tree has a read-only directory (its files
/// must be extracted before tar applies its mode).
pub(crate) fn parts(plan: &Plan, n: usize) -> Vec<Plan> {
    let total: u64 = stream_bytes(plan);
    let n = n.max(1);
    if n == 1 || plan.dirs.iter().any(|(_, m)| m & 0o200 == 0) {
        return vec![plan.clone()];
    }
    let each = total.div_ceil(n as u64);
    let mut out = vec![Plan {
        parents: plan.parents.clone(),
        dirs: plan.dirs.clone(),
        files: Vec::new(),
        links: plan.links.clone(),
    }];
    let mut filled = 0u64;
    for f in &plan.files {
        if filled >= each && out.len() < n {
            out.push(Plan {
                parents: plan.parents.clone(),
                ..Plan::default()
            });
            filled = 0;
        }
        filled += tar_bytes(f);
        if let Some(last) = out.last_mut() {
            last.files.push(f.clone());
        }
    }
    // The other streams make their files' directories with `mkdir -p`
    // before their `tar` starts (see `command`): left to tar, a directory
    // the first stream makes between another tar's failed open and its
    // own mkdir fails that tar ("Cannot open: No such file or directory").
    for part in out.iter_mut().skip(1) {
        let need: Vec<String> = part
            .files
            .iter()
            .filter_map(|f| parent_of(&f.remote))
            .collect();
        part.parents.extend(need);
        part.parents.sort();
        part.parents.dedup();
    }
    out
}

/// The tar part of a plan as [`parts`] over several channels at once: done
/// when every stream is; the first error (in stream order) otherwise.
pub(crate) async fn upload_all(
    conn: &Arc<Conn>,
    plan: &Plan,
) -> Result<TarOutcome, TransportError> {
    let room = conn.limits().allowed.saturating_sub(2).max(1);
    let max = MAX_STREAMS.min(room);
    let total = stream_bytes(plan);
    if max == 1 || total < 2 * MIN_PER_STREAM {
        return upload(conn, plan, None, false).await;
    }
    // The round trip only counts for a one-CPU target: known from an
    // earlier channel (the provisioner's staging exec), or else measured by
    // the first stream's channel, opened before the split is chosen.
    let mut first = if conn.cpus <= 1 && conn.rtt().is_none() {
        Some(conn.exec_channel().await?)
    } else {
        None
    };
    let mut rtt = conn.rtt();
    if conn.cpus <= 1 && stream_count(total, rtt, conn.cpus, max) > 1 {
        // A slow link to a one-CPU target, as channel opens saw it: they
        // also wait for the target itself, so a ping says whether the link
        // is slow (one round trip, only in this case).
        rtt = conn.measure_rtt().await.or(rtt);
    }
    let parts = parts(plan, stream_count(total, rtt, conn.cpus, max));
    if parts.len() == 1 {
        return upload(conn, plan, first, false).await;
    }
    tracing::debug!(target = %conn.target, streams = parts.len(), ?rtt, "tar upload over several channels");
    let results =
        futures::future::join_all(parts.iter().map(|p| upload(conn, p, first.take(), true))).await;
    let mut rep = TransferReport::default();
    let mut no_tar = false;
    for r in results {
        match r? {
            TarOutcome::Done(r) => {
                rep.files += r.files;
                rep.dirs += r.dirs;
                rep.symlinks += r.symlinks;
                rep.bytes += r.bytes;
                rep.tar_streams += r.tar_streams;
            }
            TarOutcome::NoTar => no_tar = true,
        }
    }
    Ok(if no_tar {
        TarOutcome::NoTar
    } else {
        TarOutcome::Done(rep)
    })
}

/// The remote command for `plan` with the sha256 list at `/tmp/.opsbake-sha256-<tag>`.
/// `shared`: one of several streams extracting into the same tree at once;
/// the plan's `parents` are then made (`mkdir -p`, which another stream
/// making the same directory cannot fail) before `tar` runs. GNU tar makes
/// a missing parent itself, but gives up on a file when another process
/// made that directory between its failed open and its own mkdir.
fn command(plan: &Plan, tag: &str, shared: bool) -> String {
    let list = format!("/tmp/.opsbake-sha256-{tag}");
    let mut c = format!("command -v tar >/dev/null 2>&1 || exit {NO_TAR}\n");
    if shared && !plan.parents.is_empty() {
        c.push_str("mkdir -p --");
        for d in &plan.parents {
            c.push(' ');
            c.push_str(&shell_quote(d));
        }
        c.push_str(&format!(" || exit {TAR_FAILED}\n"));
    }
    // An earlier upload may have left read-only directories (their mode is
    // applied last): the owner gets write access back until tar sets the
    // mode again. Only the tree's own directories, only when they exist.
    if !plan.dirs.is_empty() {
        c.push_str("for d in");
        for (d, _) in &plan.dirs {
            c.push(' ');
            c.push_str(&shell_quote(d));
        }
        c.push_str("; do if [ -d \"$d\" ] && [ ! -w \"$d\" ]; then chmod u+w \"$d\"; fi; done 2>/dev/null\n");
    }
    c.push_str(&format!(
        "tar -x -o -p -f - -C / || {{ rm -f {list}; exit {TAR_FAILED}; }}\n"
    ));
    if plan.files.iter().any(|f| f.verify) {
        c.push_str(&format!(
            "out=$(sha256sum -c {list} 2>&1); r=$?; rm -f {list}\n\
             if [ $r -ne 0 ]; then printf '%s\\n' \"$out\" | grep -v ': OK$'; exit {VERIFY_FAILED}; fi\n"
        ));
    }
    c
}

/// Collects the archive into channel-sized chunks for the async side.
struct ChanWriter {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    buf: Vec<u8>,
}

impl ChanWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let b = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(WRITE)));
        self.tx
            .blocking_send(b)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "channel closed"))
    }
}

impl std::io::Write for ChanWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= WRITE {
            self.send()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What went wrong while building the archive.
enum BuildErr {
    /// The channel went away (the remote side ended early): not our error.
    Gone,
    Local(TransportError),
}

fn header(kind: tar::EntryType, mode: u32, mtime: u64, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_mtime(mtime);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// Write the archive of `plan` (and the sha256 list as its last member)
/// into `w`. Runs on a blocking thread.
fn build(plan: &Plan, list: &str, w: ChanWriter) -> Result<(), BuildErr> {
    let t = now();
    let gone = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            BuildErr::Gone
        } else {
            BuildErr::Local(TransportError::Other {
                target: "local".into(),
                message: format!("building the tar stream: {e}"),
            })
        }
    };
    // Tree order (a directory, then everything in it): GNU tar applies a
    // directory's mode once it has left it, so a read-only directory must
    // come right before its contents.
    enum E {
        Dir(usize),
        File(usize),
        Link(usize),
    }
    let mut entries: Vec<(Vec<String>, E)> = Vec::new();
    let comps = |p: &str| -> Vec<String> {
        rel(p)
            .unwrap_or_default()
            .split('/')
            .map(str::to_string)
            .collect()
    };
    entries.extend(
        plan.dirs
            .iter()
            .enumerate()
            .map(|(i, (d, _))| (comps(d), E::Dir(i))),
    );
    entries.extend(
        plan.files
            .iter()
            .enumerate()
            .map(|(i, f)| (comps(&f.remote), E::File(i))),
    );
    entries.extend(
        plan.links
            .iter()
            .enumerate()
            .map(|(i, (l, _))| (comps(l), E::Link(i))),
    );
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut b = tar::Builder::new(w);
    let mut sums = String::new();
    for (path, e) in entries {
        let path = path.join("/");
        match e {
            E::Dir(i) => {
                let mode = plan.dirs.get(i).map(|d| d.1).unwrap_or(0o755);
                let mut h = header(tar::EntryType::Directory, mode, t, 0);
                b.append_data(&mut h, format!("{path}/"), std::io::empty())
                    .map_err(gone)?;
            }
            E::File(i) => {
                let Some(f) = plan.files.get(i) else { continue };
                let data: std::borrow::Cow<'_, [u8]> = match &f.src {
                    Src::Bytes(b) => std::borrow::Cow::Borrowed(b.as_slice()),
                    Src::Path(p) => std::fs::read(p)
                        .map(std::borrow::Cow::Owned)
                        .map_err(|e| BuildErr::Local(io_err(p)(e)))?,
                };
                if f.verify {
                    sums.push_str(&hex::encode(Sha256::digest(&data)));
                    sums.push_str("  /");
                    sums.push_str(&path);
                    sums.push('\n');
                }
                let mtime = f.mtime.map(u64::from).unwrap_or(t);
                let mut h = header(tar::EntryType::Regular, f.mode, mtime, data.len() as u64);
                b.append_data(&mut h, &path, &data[..]).map_err(gone)?;
            }
            E::Link(i) => {
                let Some((_, to)) = plan.links.get(i) else {
                    continue;
                };
                let mut h = header(tar::EntryType::Symlink, 0o777, t, 0);
                b.append_link(&mut h, &path, Path::new(to)).map_err(gone)?;
            }
        }
    }
    if !sums.is_empty() {
        let mut h = header(tar::EntryType::Regular, 0o600, t, sums.len() as u64);
        b.append_data(&mut h, list.trim_start_matches('/'), sums.as_bytes())
            .map_err(gone)?;
    }
    let mut w = b.into_inner().map_err(gone)?;
    w.flush().map_err(gone)
}

/// Extract `plan` on the target through its `tar` over one exec channel.
/// `leased`: a channel opened for it already; `shared`: other streams
/// extract into the same tree at once (see [`command`]).
pub(crate) async fn upload(
    conn: &Arc<Conn>,
    plan: &Plan,
    leased: Option<Leased>,
    shared: bool,
) -> Result<TarOutcome, TransportError> {
    let target = conn.target.as_str();
    let tag = hex::encode(rand::random::<[u8; 8]>());
    let cmd = command(plan, &tag, shared);
    let list = format!("/tmp/.opsbake-sha256-{tag}");
    let Leased { ch, permit } = match leased {
        Some(l) => l,
        None => conn.exec_channel().await?,
    };
    let _permit = permit;
    let (mut rd, wr) = ch.split();
    wr.exec(true, cmd.as_bytes())
        .await
        .map_err(|e| disconnected(target, "exec request (tar -x)", e))?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let owned = plan.clone();
    let builder = tokio::task::spawn_blocking(move || {
        build(
            &owned,
            &list,
            ChanWriter {
                tx,
                buf: Vec::with_capacity(WRITE),
            },
        )
    });
    // Read while writing: the server's messages must keep flowing (window
    // adjustments, an early exit when there is no tar).
    let mut reader = Box::pin(async move {
        let mut out = Output::default();
        while let Some(m) = rd.wait().await {
            match m {
                ChannelMsg::Data { data } => out.stdout.extend_from_slice(&data),
                ChannelMsg::ExtendedData { data, .. } => out.stderr.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => out.status = Some(exit_status),
                ChannelMsg::Failure => {
                    out.refused = true;
                    break;
                }
                ChannelMsg::Close => {
                    out.closed = true;
                    break;
                }
                _ => {}
            }
        }
        out
    });
    let wr = &wr;
    let mut writer = Box::pin(async move {
        while let Some(chunk) = rx.recv().await {
            wr.data_bytes(chunk)
                .await
                .map_err(|e| disconnected(target, "sending the tar stream", e))?;
        }
        match builder.await {
            Ok(Ok(())) => wr
                .eof()
                .await
                .map_err(|e| disconnected(target, "sending EOF after the tar stream", e)),
            // The remote side stopped reading: its exit status tells why.
            Ok(Err(BuildErr::Gone)) => Ok(()),
            Ok(Err(BuildErr::Local(e))) => {
                // Never EOF a truncated archive: close the channel instead.
                let _ = wr.close().await;
                Err(e)
            }
            Err(e) => {
                let _ = wr.close().await;
                Err(TransportError::Other {
                    target: target.into(),
                    message: format!("tar stream task: {e}"),
                })
            }
        }
    });
    let out = tokio::select! {
        r = &mut writer => {
            r?;
            reader.await
        }
        o = &mut reader => o,
    };
    drop(writer);
    outcome(conn, plan, out).await
}

#[derive(Default)]
struct Output {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: Option<u32>,
    refused: bool,
    closed: bool,
}

fn first_lines(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let lines: Vec<&str> = s.lines().take(5).collect();
    lines.join("; ")
}

/// What the remote command's end means.
async fn outcome(conn: &Arc<Conn>, plan: &Plan, out: Output) -> Result<TarOutcome, TransportError> {
    let target = conn.target.as_str();
    let root = plan
        .dirs
        .first()
        .map(|(d, _)| d.clone())
        .or_else(|| plan.files.first().map(|f| f.remote.clone()))
        .unwrap_or_default();
    if out.refused {
        return Err(TransportError::Other {
            target: target.into(),
            message: "the server refused the exec request for tar -x".into(),
        });
    }
    let Some(status) = out.status else {
        if !out.closed || conn.handle.is_closed() {
            return Err(TransportError::Disconnected {
                target: target.into(),
                reason: format!("connection lost while extracting the tar stream into {root}"),
            });
        }
        return Err(TransportError::Other {
            target: target.into(),
            message: format!("tar -x into {root}: channel closed without exit status"),
        });
    };
    match status {
        0 => Ok(TarOutcome::Done(TransferReport {
            files: plan.files.len() as u64,
            dirs: plan.dirs.len() as u64,
            symlinks: plan.links.len() as u64,
            bytes: plan.files.iter().map(|f| f.size).sum(),
            tar_streams: 1,
        })),
        NO_TAR => Ok(TarOutcome::NoTar),
        VERIFY_FAILED => {
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let failed = text
                .lines()
                .find_map(|l| l.strip_suffix(": FAILED"))
                .map(str::to_string);
            match failed.and_then(|p| {
                plan.files
                    .iter()
                    .find(|f| f.remote == p || rel(&f.remote).is_some_and(|r| format!("/{r}") == p))
            }) {
                Some(f) => Err(mismatch(target, f).await),
                None => Err(TransportError::Remote {
                    target: target.into(),
                    op: "sha256sum -c".into(),
                    path: root,
                    reason: format!("{}; {}", first_lines(&out.stdout), first_lines(&out.stderr)),
                }),
            }
        }
        TAR_FAILED => Err(TransportError::Remote {
            target: target.into(),
            op: "tar -x".into(),
            path: root,
            reason: first_lines(&out.stderr),
        }),
        other => Err(TransportError::Remote {
            target: target.into(),
            op: "tar -x".into(),
            path: root,
            reason: format!("exit code {other}: {}", first_lines(&out.stderr)),
        }),
    }
}

async fn mismatch(target: &str, f: &FileItem) -> TransportError {
    let expected = crate::plan::local_sha256(&f.src)
        .await
        .unwrap_or_else(|e| format!("(unreadable: {e})"));
    TransportError::Verify {
        target: target.into(),
        path: f.remote.clone(),
        what: "sha256".into(),
        expected,
        actual: "a different sha256 (sha256sum -c: FAILED)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(remote: &str, size: u64) -> FileItem {
        FileItem {
            src: Src::Bytes(Arc::new(vec![0; 1])),
            remote: remote.into(),
            size,
            mode: 0o644,
            mtime: None,
            verify: true,
        }
    }

    #[test]
    fn big_files_go_to_sftp_and_odd_paths_refuse_tar() {
        let p = Plan {
            parents: vec!["/opt".into()],
            dirs: vec![("/opt/t".into(), 0o755)],
            files: vec![file("/opt/t/a", 10), file("/opt/t/big", SPLIT_AT)],
            links: vec![],
        };
        let (small, big) = split(&p).unwrap_or_default();
        assert_eq!(small.files.len(), 1);
        assert_eq!(big.files.len(), 1);
        assert_eq!(big.parents, ["/opt/t"]);
        let mut rel_path = p.clone();
        rel_path.files.push(file("relative/x", 1));
        assert!(split(&rel_path).is_none());
        let mut dotdot = p.clone();
        dotdot.files.push(file("/opt/../etc/x", 1));
        assert!(split(&dotdot).is_none());
        let mut ro = p.clone();
        ro.dirs[0].1 = 0o555;
        assert!(split(&ro).is_none(), "a big file into a read-only dir");
        assert_eq!(rel("//a/./b/"), Some("a/b".into()));
    }

    #[test]
    fn a_big_tree_is_split_into_streams_that_cover_it_once() {
        let files: Vec<FileItem> = (0..2000)
            .map(|i| file(&format!("/opt/t/d{:02}/f{i:04}", i / 100), 4096))
            .collect();
        let p = Plan {
            parents: vec!["/opt".into()],
            dirs: vec![("/opt/t".into(), 0o755), ("/opt/t/d00".into(), 0o750)],
            files,
            links: vec![("/opt/t/l".into(), "d00".into())],
        };
        let total = stream_bytes(&p);
        let ms = |m| Some(Duration::from_millis(m));
        assert_eq!(
            per_stream(ms(50)),
            MIN_PER_STREAM,
            "1 MiB a stream at 50 ms"
        );
        let ps = parts(&p, stream_count(total, ms(50), 1, 6));
        assert_eq!(ps.len(), 6);
        assert_eq!(ps[0].dirs, p.dirs);
        assert_eq!(ps[0].links, p.links);
        assert!(ps[1..]
            .iter()
            .all(|x| x.dirs.is_empty() && x.links.is_empty()));
        let all: Vec<&str> = ps
            .iter()
            .flat_map(|x| x.files.iter().map(|f| f.remote.as_str()))
            .collect();
        let want: Vec<&str> = p.files.iter().map(|f| f.remote.as_str()).collect();
        assert_eq!(all, want, "every file once, in tree order");
        let sizes: Vec<usize> = ps.iter().map(|x| x.files.len()).collect();
        assert!(sizes.iter().all(|&n| (300..=400).contains(&n)), "{sizes:?}");
        assert_eq!(stream_count(total, ms(50), 1, 1), 1, "the channel budget");
        let mut small = p.clone();
        small.files.truncate(100);
        assert_eq!(
            stream_count(stream_bytes(&small), ms(50), 8, 6),
            1,
            "400 KiB is one stream"
        );
        let mut ro = p.clone();
        ro.dirs[1].1 = 0o555;
        assert_eq!(parts(&ro, 6).len(), 1, "a read-only dir keeps one stream");
        // A fast link (an emulated guest on loopback: about 1 ms): the 9 MiB
        // tree goes to a one-vCPU target in one stream, at 10 ms in two; to
        // a target with more CPUs in six.
        assert_eq!(per_stream(ms(1)), 40 << 20);
        assert_eq!(stream_count(total, ms(1), 1, 6), 1, "one vCPU");
        assert_eq!(stream_count(total, ms(10), 1, 6), 2);
        assert_eq!(stream_count(total, None, 1, 6), 1, "not measured");
        assert_eq!(stream_count(total, ms(1), 2, 6), 6, "two CPUs");
        assert_eq!(stream_count(total, None, 2, 4), 4, "the channel budget");
        assert_eq!(parts(&p, 2).len(), 2);
    }

    /// Several tars extract into one tree at once: every stream but the
    /// first makes its files' directories with `mkdir -p` before its tar
    /// runs (never tar's own parent-making, which loses a race with the
    /// first stream's mkdir of the same directory); one stream alone does
    /// not spend a `mkdir` on it.
    #[test]
    fn streams_side_by_side_make_their_directories_before_tar() {
        let files: Vec<FileItem> = (0..600)
            .map(|i| file(&format!("/opt/t/d{:02}/f{i:04}", i / 100), 4096))
            .collect();
        let dirs = (0..6).map(|d| (format!("/opt/t/d{d:02}"), 0o750));
        let p = Plan {
            parents: vec!["/opt".into()],
            dirs: std::iter::once(("/opt/t".to_string(), 0o755))
                .chain(dirs)
                .collect(),
            files,
            links: vec![],
        };
        let ps = parts(&p, 3);
        assert_eq!(ps.len(), 3);
        assert_eq!(
            ps[0].parents,
            ["/opt"],
            "the first stream's tar makes the tree's dirs"
        );
        for x in &ps[1..] {
            for f in &x.files {
                let dir = parent_of(&f.remote).unwrap_or_default();
                assert!(
                    x.parents.contains(&dir),
                    "{dir} of {} not made first",
                    f.remote
                );
            }
            let c = command(x, "t", true);
            let (mkdir, tar) = (c.find("mkdir -p --"), c.find("tar -x"));
            assert!(mkdir.is_some() && mkdir < tar, "{c}");
        }
        assert_eq!(ps[1].parents, ["/opt", "/opt/t/d02", "/opt/t/d03"]);
        assert!(
            !command(&p, "t", false).contains("mkdir"),
            "one stream: tar alone"
        );
    }
}
