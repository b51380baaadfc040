//! The resource journal: every resource a build creates, recorded on disk
//! (fsync'ed) before and after the call that creates it, so that a failed,
//! cancelled or killed build can be unwound.
//!
//! Layout: `<state_dir>/builds/<build_id>/journal.jsonl`, one JSON record per
//! line, plus `journal.lock`, held (flock, exclusive) by the process that runs
//! the build, so `opsbake cleanup --all` never touches a live build.
//!
//! Records, in order of writing:
//! - `header`: build id, IaaS, what the builder needs to delete its resources
//!   later (`cleanup_config`, never secrets), the pid and start time of the
//!   process running the build.
//! - `intent`: kind, name, idempotency token: written *before* the create call.
//! - `created`: the id the IaaS gave it: written right after the call returns.
//! - `deleted` when it is gone, `kept` when a successful build keeps it (an
//!   image), `delete_failed` when a delete attempt failed (with the error).
//! - `finished`: the build's outcome.
//!
//! A torn last line (a crash mid-write) is ignored on reading.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::secret::redactor;

/// Errors of the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A file of the journal could not be read or written.
    #[error("journal {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A record could not be encoded or decoded.
    #[error("journal {path}: line {line}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// Line number (1-based).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Another process holds the journal (the build is still running).
    #[error("build {build_id} is still running (journal {path} is locked by another process)")]
    Busy {
        /// The build.
        build_id: String,
        /// The lock file.
        path: PathBuf,
    },
    /// No journal for that build id.
    #[error("no journal for build {build_id} under {dir}")]
    NotFound {
        /// The build.
        build_id: String,
        /// Where we looked.
        dir: PathBuf,
    },
    /// The journal has no header record.
    #[error("journal {path} has no header")]
    NoHeader {
        /// The file.
        path: PathBuf,
    },
}

type Result<T> = std::result::Result<T, JournalError>;

/// The identity of a local process: its PID and its start time (clock ticks
/// after boot, field 22 of `/proc/PID/stat`), since PIDs are reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    /// The PID.
    pub pid: i32,
    /// Start time in clock ticks after boot.
    pub start_time: u64,
}

impl ProcessIdentity {
    /// The identity of a running process, or `None` if it is gone.
    pub fn of(pid: i32) -> Option<ProcessIdentity> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) is in parentheses and may hold spaces:
        // fields after the last ')' are space separated, starting at field 3.
        let rest = &stat[stat.rfind(')')? + 1..];
        let start_time = rest.split_whitespace().nth(19)?.parse().ok()?;
        Some(ProcessIdentity { pid, start_time })
    }

    /// This process.
    pub fn current() -> Option<ProcessIdentity> {
        ProcessIdentity::of(std::process::id() as i32)
    }

    /// True when this exact process (same PID *and* start time) still exists
    /// and is not a zombie.
    pub fn is_alive(&self) -> bool {
        match ProcessIdentity::of(self.pid) {
            Some(now) if now == *self => {
                let state = fs::read_to_string(format!("/proc/{}/stat", self.pid))
                    .ok()
                    .and_then(|s| {
                        s.rfind(')')
                            .and_then(|i| s[i + 1..].split_whitespace().next().map(str::to_string))
                    });
                state.as_deref() != Some("Z")
            }
            _ => false,
        }
    }
}

/// The first record of a journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// The build id (also the directory name).
    pub build_id: String,
    /// Which IaaS the build targets (`aws`, `vbox`, ...).
    pub iaas: String,
    /// The template the build came from.
    pub template: String,
    /// When the build started (RFC 3339).
    pub started_at: String,
    /// The process that ran the build.
    pub process: Option<ProcessIdentity>,
    /// What the builder needs to delete its resources from another process
    /// (region, endpoint, ...). Never secrets.
    #[serde(default)]
    pub cleanup_config: serde_json::Value,
}

/// How a build ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It produced its artifacts.
    Succeeded,
    /// It failed; resources were unwound (or kept on request).
    Failed,
    /// It was interrupted.
    Cancelled,
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Record {
    /// See [`Header`].
    Header(Header),
    /// About to create a resource.
    Intent {
        /// Sequence number (unique in the journal).
        seq: u64,
        /// Resource kind (`instance`, `key_pair`, `local_file`, ...).
        kind: String,
        /// The name it is created under (and tagged with, where possible).
        name: String,
        /// Idempotency token passed to the create call, where the IaaS has one.
        token: String,
        /// Extra facts the deleter needs (region, parent, ...).
        #[serde(default)]
        data: serde_json::Value,
    },
    /// The create call returned this id.
    Created {
        /// The intent's sequence number.
        seq: u64,
        /// The IaaS id (or path, PID ...).
        id: String,
        /// Extra facts learnt at creation (e.g. a process start time).
        #[serde(default)]
        data: serde_json::Value,
    },
    /// The resource is gone.
    Deleted {
        /// The intent's sequence number.
        seq: u64,
    },
    /// A delete attempt failed.
    DeleteFailed {
        /// The intent's sequence number.
        seq: u64,
        /// Why.
        error: String,
    },
    /// A successful build keeps this resource (its artifact).
    Kept {
        /// The intent's sequence number.
        seq: u64,
    },
    /// The build ended.
    Finished {
        /// How.
        outcome: Outcome,
    },
}

/// A resource as the journal knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    /// Sequence number.
    pub seq: u64,
    /// Kind.
    pub kind: String,
    /// Name (tag / path).
    pub name: String,
    /// Idempotency token.
    pub token: String,
    /// The id, once created (`None`: the process died between intent and
    /// the create call's return; find it by name, token or tag).
    pub id: Option<String>,
    /// Facts from the intent.
    pub data: serde_json::Value,
    /// Facts from the creation.
    pub created_data: serde_json::Value,
    /// Last delete error, if any.
    pub last_error: Option<String>,
}

/// The state of a journal after replaying its records.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    /// The header, if present.
    pub header: Option<Header>,
    /// Resources that are neither deleted nor kept, in creation order.
    pub live: Vec<Resource>,
    /// Resources kept as artifacts.
    pub kept: Vec<Resource>,
    /// The outcome, if the build finished.
    pub outcome: Option<Outcome>,
}

impl State {
    /// Replay records.
    pub fn replay(records: &[Record]) -> State {
        let mut st = State::default();
        let mut all: Vec<(Resource, Status)> = Vec::new();
        #[derive(PartialEq)]
        enum Status {
            Live,
            Deleted,
            Kept,
        }
        for r in records {
            match r {
                Record::Header(h) => st.header = Some(h.clone()),
                Record::Intent {
                    seq,
                    kind,
                    name,
                    token,
                    data,
                } => all.push((
                    Resource {
                        seq: *seq,
                        kind: kind.clone(),
                        name: name.clone(),
                        token: token.clone(),
                        id: None,
                        data: data.clone(),
                        created_data: serde_json::Value::Null,
                        last_error: None,
                    },
                    Status::Live,
                )),
                Record::Created { seq, id, data } => {
                    if let Some((res, _)) = all.iter_mut().find(|(r, _)| r.seq == *seq) {
                        res.id = Some(id.clone());
                        res.created_data = data.clone();
                    }
                }
                Record::Deleted { seq } => {
                    if let Some((_, s)) = all.iter_mut().find(|(r, _)| r.seq == *seq) {
                        *s = Status::Deleted;
                    }
                }
                Record::DeleteFailed { seq, error } => {
                    if let Some((r, _)) = all.iter_mut().find(|(r, _)| r.seq == *seq) {
                        r.last_error = Some(error.clone());
                    }
                }
                Record::Kept { seq } => {
                    if let Some((_, s)) = all.iter_mut().find(|(r, _)| r.seq == *seq) {
                        *s = Status::Kept;
                    }
                }
                Record::Finished { outcome } => st.outcome = Some(*outcome),
            }
        }
        for (r, s) in all {
            match s {
                Status::Live => st.live.push(r),
                Status::Kept => st.kept.push(r),
                Status::Deleted => {}
            }
        }
        st
    }
}

/// An open journal.
pub struct Journal {
    dir: PathBuf,
    path: PathBuf,
    build_id: String,
    inner: Mutex<Inner>,
    _lock: Flock<File>,
}

struct Inner {
    file: File,
    next_seq: u64,
    records: Vec<Record>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The directory holding every build's journal under a state dir.
pub fn builds_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("builds")
}

fn lock_exclusive(file: File, path: &Path, build_id: &str) -> Result<Flock<File>> {
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(l),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(JournalError::Busy {
            build_id: build_id.to_string(),
            path: path.to_path_buf(),
        }),
        Err((_, e)) => Err(JournalError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::from(e),
        }),
    }
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Read every complete record of a journal file (a torn last line is
/// skipped; a bad line elsewhere is an error).
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    let f = File::open(path).map_err(io_err(path))?;
    let lines: Vec<String> = BufReader::new(f)
        .lines()
        .collect::<std::io::Result<_>>()
        .map_err(io_err(path))?;
    let n = lines.len();
    let mut out = Vec::with_capacity(n);
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(line) {
            Ok(r) => out.push(r),
            Err(_) if i + 1 == n => {
                tracing::warn!(path = %path.display(), line = i + 1, "ignoring torn last journal line");
            }
            Err(e) => {
                return Err(JournalError::Format {
                    path: path.to_path_buf(),
                    line: i + 1,
                    message: e.to_string(),
                })
            }
        }
    }
    Ok(out)
}

impl Journal {
    /// Create the journal of a new build (and lock it).
    pub fn create(state_dir: &Path, header: Header) -> Result<Journal> {
        let bdir = builds_dir(state_dir);
        let dir = bdir.join(&header.build_id);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        fsync_dir(&bdir)?;
        let lock_path = dir.join("journal.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        let lock = lock_exclusive(lock, &lock_path, &header.build_id)?;
        let path = dir.join("journal.jsonl");
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        fsync_dir(&dir)?;
        let build_id = header.build_id.clone();
        let j = Journal {
            dir,
            path,
            build_id,
            inner: Mutex::new(Inner {
                file,
                next_seq: 1,
                records: Vec::new(),
            }),
            _lock: lock,
        };
        j.append(Record::Header(header))?;
        Ok(j)
    }

    /// Open an existing journal for cleanup. Fails with
    /// [`JournalError::Busy`] while its build runs.
    pub fn open(state_dir: &Path, build_id: &str) -> Result<Journal> {
        let bdir = builds_dir(state_dir);
        let dir = bdir.join(build_id);
        let path = dir.join("journal.jsonl");
        if !path.exists() {
            return Err(JournalError::NotFound {
                build_id: build_id.to_string(),
                dir: bdir,
            });
        }
        let lock_path = dir.join("journal.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        let lock = lock_exclusive(lock, &lock_path, build_id)?;
        let records = read_records(&path)?;
        let next_seq = records
            .iter()
            .filter_map(|r| match r {
                Record::Intent { seq, .. } => Some(*seq),
                _ => None,
            })
            .max()
            .unwrap_or(0)
            + 1;
        // A torn last line (a crash mid-write: the record was never
        // acknowledged) is cut off, so the next record starts on its own line.
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        if bytes.last().is_some_and(|b| *b != b'\n') {
            let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(keep as u64).and_then(|_| f.sync_all()))
                .map_err(io_err(&path))?;
        }
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok(Journal {
            dir,
            path,
            build_id: build_id.to_string(),
            inner: Mutex::new(Inner {
                file,
                next_seq,
                records,
            }),
            _lock: lock,
        })
    }

    /// The build id.
    pub fn build_id(&self) -> &str {
        &self.build_id
    }

    /// The build's state directory (holds the journal; builders may put
    /// temporary files here).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn append(&self, record: Record) -> Result<()> {
        let mut line = serde_json::to_string(&record).map_err(|e| JournalError::Format {
            path: self.path.clone(),
            line: 0,
            message: e.to_string(),
        })?;
        // Defence in depth: no registered secret reaches the disk.
        if !redactor().is_empty() {
            line = redactor().scrub(&line);
        }
        line.push('\n');
        let mut inner = self.inner.lock().map_err(|_| JournalError::Io {
            path: self.path.clone(),
            source: std::io::Error::other("journal mutex poisoned"),
        })?;
        inner
            .file
            .write_all(line.as_bytes())
            .and_then(|_| inner.file.sync_data())
            .map_err(io_err(&self.path))?;
        inner.records.push(record);
        Ok(())
    }

    /// Record the intent to create a resource; returns its sequence number.
    /// Call this *before* the create call.
    /// The idempotency token is `<build-id>-<seq>`.
    pub fn intent(&self, kind: &str, name: &str, data: serde_json::Value) -> Result<u64> {
        let seq = {
            let mut inner = self.inner.lock().map_err(|_| JournalError::Io {
                path: self.path.clone(),
                source: std::io::Error::other("journal mutex poisoned"),
            })?;
            let s = inner.next_seq;
            inner.next_seq += 1;
            s
        };
        self.append(Record::Intent {
            seq,
            kind: kind.to_string(),
            name: name.to_string(),
            token: format!("{}-{seq}", self.build_id),
            data,
        })?;
        Ok(seq)
    }

    /// Record the id of a created resource. Call this right after the create
    /// call returns.
    pub fn created(&self, seq: u64, id: &str, data: serde_json::Value) -> Result<()> {
        self.append(Record::Created {
            seq,
            id: id.to_string(),
            data,
        })
    }

    /// Record that a resource is gone.
    pub fn deleted(&self, seq: u64) -> Result<()> {
        self.append(Record::Deleted { seq })
    }

    /// Record a failed delete attempt.
    pub fn delete_failed(&self, seq: u64, error: &str) -> Result<()> {
        self.append(Record::DeleteFailed {
            seq,
            error: error.to_string(),
        })
    }

    /// Record that a successful build keeps this resource.
    pub fn kept(&self, seq: u64) -> Result<()> {
        self.append(Record::Kept { seq })
    }

    /// Record the build's outcome.
    pub fn finished(&self, outcome: Outcome) -> Result<()> {
        self.append(Record::Finished { outcome })
    }

    /// The current state.
    pub fn state(&self) -> State {
        match self.inner.lock() {
            Ok(inner) => State::replay(&inner.records),
            Err(_) => State::default(),
        }
    }
}

/// Summary of one journal on disk, for `opsbake cleanup --all` and listings.
#[derive(Debug, Clone)]
pub struct JournalInfo {
    /// Build id.
    pub build_id: String,
    /// State (from a read without the lock).
    pub state: State,
    /// True if the lock is held by a live process.
    pub running: bool,
}

/// Every journal under a state dir (oldest name first).
pub fn list(state_dir: &Path) -> Result<Vec<JournalInfo>> {
    let bdir = builds_dir(state_dir);
    let mut out = Vec::new();
    let rd = match fs::read_dir(&bdir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(&bdir)(e)),
    };
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("journal.jsonl").exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    for name in names {
        let dir = bdir.join(&name);
        let records = read_records(&dir.join("journal.jsonl"))?;
        let lock_path = dir.join("journal.lock");
        let running = match OpenOptions::new().write(true).open(&lock_path) {
            Ok(f) => matches!(
                lock_exclusive(f, &lock_path, &name),
                Err(JournalError::Busy { .. })
            ),
            Err(_) => false,
        };
        out.push(JournalInfo {
            build_id: name,
            state: State::replay(&records),
            running,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(id: &str) -> Header {
        Header {
            build_id: id.to_string(),
            iaas: "localtest".to_string(),
            template: "t.yml".to_string(),
            started_at: "2026-01-01T00:00:00Z".to_string(),
            process: ProcessIdentity::current(),
            cleanup_config: serde_json::json!({"root": "/x"}),
        }
    }

    #[test]
    fn replay_tracks_live_kept_and_deleted() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::create(d.path(), header("b1")).unwrap();
        let a = j
            .intent("local_file", "/x/a", serde_json::Value::Null)
            .unwrap();
        j.created(a, "/x/a", serde_json::Value::Null).unwrap();
        let b = j
            .intent("local_file", "/x/b", serde_json::Value::Null)
            .unwrap();
        let c = j.intent("image", "img", serde_json::Value::Null).unwrap();
        j.created(c, "img-1", serde_json::Value::Null).unwrap();
        j.kept(c).unwrap();
        j.deleted(a).unwrap();
        let st = j.state();
        assert_eq!(st.live.len(), 1);
        assert_eq!(st.live[0].seq, b);
        assert_eq!(st.live[0].id, None);
        assert_eq!(st.kept[0].id.as_deref(), Some("img-1"));
        // On disk the same.
        let on_disk = State::replay(&read_records(j.path()).unwrap());
        assert_eq!(on_disk, st);
    }

    #[test]
    fn a_locked_journal_is_busy_and_a_torn_line_is_ignored() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::create(d.path(), header("b2")).unwrap();
        let s = j
            .intent("local_file", "/x/a", serde_json::Value::Null)
            .unwrap();
        // flock locks are per open file description: a second open in this
        // process conflicts too, as another process would.
        assert!(matches!(
            Journal::open(d.path(), "b2"),
            Err(JournalError::Busy { .. })
        ));
        let listed = list(d.path()).unwrap();
        assert!(listed[0].running);
        let path = j.path().to_path_buf();
        drop(j);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"t\":\"created\",\"seq\":1,\"i").unwrap();
        let j2 = Journal::open(d.path(), "b2").unwrap();
        assert_eq!(j2.state().live[0].seq, s);
        assert_eq!(j2.state().live[0].id, None);
        j2.created(s, "/x/a", serde_json::Value::Null).unwrap();
        drop(j2);
        let st = State::replay(&read_records(&path).unwrap());
        assert_eq!(st.live[0].id.as_deref(), Some("/x/a"));
        assert!(!list(d.path()).unwrap()[0].running);
    }

    #[test]
    fn process_identity_detects_pid_reuse() {
        let me = ProcessIdentity::current().unwrap();
        assert!(me.is_alive());
        let fake = ProcessIdentity {
            pid: me.pid,
            start_time: me.start_time + 1,
        };
        assert!(!fake.is_alive());
    }
}
