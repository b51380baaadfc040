//! Shared test helpers: a build context from a template text, events in
//! memory, and a recording fake transport.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use opsbake_core::builder::{BuildContext, RunOptions};
use opsbake_core::events::{Emitter, EventKind, MemorySink};
use opsbake_core::journal::{Header, Journal, ProcessIdentity};
use opsbake_core::plan::plan_build;
use opsbake_core::template::{parse, Iaas};
use opsbake_core::transport::{
    Download, ExecRequest, ExitStatus, OutputSink, Stream, TransferReport, Transport,
    TransportError, Upload,
};
use opsbake_core::vars::{resolve, VarSources};
use tokio_util::sync::CancellationToken;

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub ctx: BuildContext,
    pub sink: Arc<MemorySink>,
}

impl Harness {
    /// `files`: (relative path, content, mode) written next to the template.
    pub fn new(
        yaml: &str,
        iaas: Iaas,
        files: &[(&str, &str, u32)],
        options: RunOptions,
    ) -> Harness {
        Self::in_dir(tempfile::tempdir().unwrap(), yaml, iaas, files, options)
    }

    pub fn in_dir(
        dir: tempfile::TempDir,
        yaml: &str,
        iaas: Iaas,
        files: &[(&str, &str, u32)],
        options: RunOptions,
    ) -> Harness {
        use std::os::unix::fs::PermissionsExt as _;
        for (p, c, m) in files {
            let full = dir.path().join(p);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(&full, c).unwrap();
            std::fs::set_permissions(&full, std::fs::Permissions::from_mode(*m)).unwrap();
        }
        let path = dir.path().join("t.yml");
        std::fs::write(&path, yaml).unwrap();
        let loaded = parse(&path, yaml.to_string()).unwrap();
        let vars = resolve(&loaded, &VarSources::default()).unwrap();
        let build_id = format!("t{}-{}", std::process::id(), rand_suffix());
        let plan = plan_build(&loaded, &vars, iaas, &build_id).unwrap();
        let state = dir.path().join("state");
        let journal = Journal::create(
            &state,
            Header {
                build_id: build_id.clone(),
                iaas: iaas.to_string(),
                template: path.display().to_string(),
                started_at: "2026-01-01T00:00:00Z".into(),
                process: ProcessIdentity::current(),
                cleanup_config: serde_json::Value::Null,
            },
        )
        .unwrap();
        let sink = Arc::new(MemorySink::default());
        let ctx = BuildContext {
            plan: Arc::new(plan),
            journal: Arc::new(journal),
            events: Emitter::for_build(sink.clone(), iaas.as_str(), &build_id),
            cancel: CancellationToken::new(),
            options,
            creating: Default::default(),
        };
        Harness { dir, ctx, sink }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Output lines of a step: (stream, line).
    pub fn output(&self, step: &str) -> Vec<(Stream, String)> {
        self.sink
            .events()
            .into_iter()
            .filter_map(|e| match e.kind {
                EventKind::Output {
                    step: s,
                    stream,
                    line,
                } if s == step => Some((stream, line)),
                _ => None,
            })
            .collect()
    }

    pub fn messages(&self) -> Vec<String> {
        self.sink
            .events()
            .into_iter()
            .filter_map(|e| match e.kind {
                EventKind::Message { level, text } => Some(format!("{level}: {text}")),
                _ => None,
            })
            .collect()
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{:x}{}", t, N.fetch_add(1, Ordering::SeqCst))
}

/// What the fake transport saw.
#[derive(Debug, Clone)]
pub enum Call {
    Exec(String, Option<Vec<u8>>),
    Upload(Vec<String>),
    Download(Vec<String>),
    Reconnect,
}

/// A scripted answer to a command.
pub struct Answer {
    /// Substring of the command it answers.
    pub matches: String,
    /// Lines on stdout.
    pub stdout: Vec<String>,
    /// The result.
    pub result: Result<u32, &'static str>,
    /// How many times (then it is dropped); 0 = forever.
    pub times: usize,
}

/// Records every call; answers commands from a script of answers (first
/// match wins), else exit 0 with no output.
pub struct Recorder {
    pub calls: Mutex<Vec<Call>>,
    pub answers: Mutex<VecDeque<Answer>>,
    /// Printed for the staging probe: uid, machine-id, boot-id.
    pub identity: Mutex<(u32, String, String)>,
}

impl Recorder {
    pub fn new(uid: u32) -> Arc<Recorder> {
        Arc::new(Recorder {
            calls: Mutex::new(Vec::new()),
            answers: Mutex::new(VecDeque::new()),
            identity: Mutex::new((uid, "guest-machine-id".into(), "guest-boot-1".into())),
        })
    }

    pub fn answer(
        &self,
        matches: &str,
        stdout: &[&str],
        result: Result<u32, &'static str>,
        times: usize,
    ) {
        self.answers.lock().unwrap().push_back(Answer {
            matches: matches.into(),
            stdout: stdout.iter().map(|s| s.to_string()).collect(),
            result,
            times,
        });
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    pub fn execs(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Exec(s, _) => Some(s),
                _ => None,
            })
            .collect()
    }
}

#[async_trait]
impl Transport for Recorder {
    fn describe(&self) -> String {
        "recorder".into()
    }

    async fn exec(
        &self,
        req: ExecRequest,
        sink: Arc<dyn OutputSink>,
    ) -> Result<ExitStatus, TransportError> {
        self.calls.lock().unwrap().push(Call::Exec(
            req.command.clone(),
            req.stdin.as_ref().map(|s| s.expose().clone()),
        ));
        if req.command.contains("/proc/sys/kernel/random/boot_id")
            && req.command.starts_with("set -e; if")
        {
            let (uid, m, b) = self.identity.lock().unwrap().clone();
            sink.line(Stream::Stdout, &uid.to_string());
            sink.line(Stream::Stdout, &m);
            sink.line(Stream::Stdout, &b);
            return Ok(ExitStatus::Code(0));
        }
        let mut answers = self.answers.lock().unwrap();
        let pos = answers
            .iter()
            .position(|a| req.command.contains(&a.matches));
        if let Some(i) = pos {
            let (stdout, result) = {
                let a = &mut answers[i];
                let r = (a.stdout.clone(), a.result);
                if a.times == 1 {
                    answers.remove(i);
                } else if a.times > 1 {
                    a.times -= 1;
                }
                r
            };
            drop(answers);
            for l in stdout {
                sink.line(Stream::Stdout, &l);
            }
            return match result {
                Ok(c) => Ok(ExitStatus::Code(c)),
                Err(reason) => Err(TransportError::Disconnected {
                    target: "recorder".into(),
                    reason: reason.into(),
                }),
            };
        }
        Ok(ExitStatus::Code(0))
    }

    async fn upload(&self, items: Vec<Upload>) -> Result<TransferReport, TransportError> {
        let n = items.len() as u64;
        self.calls
            .lock()
            .unwrap()
            .push(Call::Upload(items.into_iter().map(|u| u.remote).collect()));
        Ok(TransferReport {
            files: n,
            ..Default::default()
        })
    }

    async fn download(&self, items: Vec<Download>) -> Result<TransferReport, TransportError> {
        self.calls.lock().unwrap().push(Call::Download(
            items.into_iter().map(|d| d.remote).collect(),
        ));
        Ok(TransferReport::default())
    }

    async fn reconnect(&self, _timeout: Duration) -> Result<(), TransportError> {
        self.calls.lock().unwrap().push(Call::Reconnect);
        let mut id = self.identity.lock().unwrap();
        id.2 = "guest-boot-2".into();
        Ok(())
    }

    async fn close(&self) -> Result<(), TransportError> {
        Ok(())
    }
}

pub fn local_vm(root: &Path) -> PathBuf {
    let vm = root.join("vm");
    std::fs::create_dir_all(&vm).unwrap();
    vm
}
