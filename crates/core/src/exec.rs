//! The one helper that runs programs on the build host (qemu-img, QEMU's
//! helpers, VBoxManage, mkfs, `sh -c` for the local transport): output
//! captured (or streamed line by line), an optional timeout after which the
//! process is killed, kill on drop for the async runs, and errors that name
//! the command and carry the end of its output. Arguments never hold secrets
//! (those go through `stdin`).

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

/// How many lines of output a [`ExecError::Failed`] keeps.
pub const TAIL_LINES: usize = 30;

/// A program that could not be run, or that failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The program is not installed.
    #[error("{program} is not installed or not on PATH (Debian: apt-get install {package})")]
    NotFound {
        /// The program.
        program: String,
        /// The Debian package that has it.
        package: String,
    },
    /// It could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Feeding or waiting for it failed.
    #[error("`{command}`: {source}")]
    Io {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It ran longer than its timeout and was killed.
    #[error("`{command}` did not finish in {after:?} and was killed")]
    TimedOut {
        /// The command line.
        command: String,
        /// The timeout.
        after: Duration,
    },
    /// It exited with an error.
    #[error("`{command}` failed ({status}): {stderr}{stdout}")]
    Failed {
        /// The command line.
        command: String,
        /// Exit status (`exit 1`, `killed by a signal`).
        status: String,
        /// The end of its standard output (trimmed).
        stdout: String,
        /// The end of its standard error (trimmed).
        stderr: String,
    },
    /// Its output was not what the caller expected.
    #[error("`{command}` printed something unexpected: {detail}")]
    Output {
        /// The command line.
        command: String,
        /// What was wrong.
        detail: String,
    },
}

/// The captured result of a command that ran to its end.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit code (None: killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// The command line, for messages.
    pub command: String,
}

impl Output {
    /// Whether it exited 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The error for this run: [`ExecError::Failed`] with the end of both outputs.
    pub fn failed(self) -> ExecError {
        ExecError::Failed {
            status: self
                .code
                .map_or_else(|| "killed by a signal".to_string(), |c| format!("exit {c}")),
            stdout: tail(self.stdout.trim(), TAIL_LINES),
            stderr: tail(self.stderr.trim(), TAIL_LINES),
            command: self.command,
        }
    }

    /// Ok when it exited 0, else [`Output::failed`].
    pub fn checked(self) -> Result<Output, ExecError> {
        if self.success() {
            Ok(self)
        } else {
            Err(self.failed())
        }
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Where [`Cmd::stream`] hands each line (`true`: standard error).
pub type LineSink = std::sync::Arc<dyn Fn(bool, &str) + Send + Sync>;

/// One command to run. Its `Debug` shows neither its standard input nor
/// its environment's values (they may hold secrets).
#[derive(Clone, Default)]
pub struct Cmd {
    /// The program.
    pub program: OsString,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Bytes for its standard input (then EOF); none: `/dev/null`.
    pub stdin: Option<Vec<u8>>,
    /// Its working directory (none: ours).
    pub dir: Option<PathBuf>,
    /// Killed after this long (none: no limit).
    pub timeout: Option<Duration>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cmd")
            .field("command", &self.display())
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field(
                "stdin",
                &self.stdin.as_ref().map(|b| format!("<{} bytes>", b.len())),
            )
            .field("dir", &self.dir)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Cmd {
    /// `program` with no arguments.
    pub fn new(program: impl Into<OsString>) -> Cmd {
        Cmd {
            program: program.into(),
            ..Cmd::default()
        }
    }

    /// Add an argument.
    pub fn arg(mut self, a: impl Into<OsString>) -> Cmd {
        self.args.push(a.into());
        self
    }

    /// Add arguments.
    pub fn args<I, S>(mut self, a: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(a.into_iter().map(Into::into));
        self
    }

    /// Set an environment variable.
    pub fn env(mut self, k: &str, v: impl Into<String>) -> Cmd {
        self.env.push((k.to_string(), v.into()));
        self
    }

    /// Run in `dir`.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Cmd {
        self.dir = Some(dir.into());
        self
    }

    /// Feed `bytes` to its standard input.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Cmd {
        self.stdin = Some(bytes.into());
        self
    }

    /// Kill it after `after`.
    pub fn timeout(mut self, after: Duration) -> Cmd {
        self.timeout = Some(after);
        self
    }

    /// The command line for messages.
    pub fn display(&self) -> String {
        std::iter::once(&self.program)
            .chain(self.args.iter())
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn spawn_error(&self, e: std::io::Error) -> ExecError {
        let program = self.program.to_string_lossy().into_owned();
        if e.kind() == std::io::ErrorKind::NotFound {
            ExecError::NotFound {
                package: package_of(&program).to_string(),
                program,
            }
        } else {
            ExecError::Spawn { program, source: e }
        }
    }

    /// The process as `std` spawns it: arguments, environment, directory,
    /// stdin piped only when there is input, both outputs piped.
    fn std_command(&self) -> std::process::Command {
        let mut c = std::process::Command::new(&self.program);
        c.args(&self.args)
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            c.env(k, v);
        }
        if let Some(d) = &self.dir {
            c.current_dir(d);
        }
        c
    }

    fn tokio_command(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::from(self.std_command());
        c.kill_on_drop(true);
        c
    }

    /// Run it to its end, capturing both outputs, whatever its exit status
    /// (killed on timeout, or when the future is dropped).
    pub async fn output(&self) -> Result<Output, ExecError> {
        let command = self.display();
        tracing::debug!(%command, "exec");
        let mut child = self
            .tokio_command()
            .spawn()
            .map_err(|e| self.spawn_error(e))?;
        let io = |source| ExecError::Io {
            command: command.clone(),
            source,
        };
        if let (Some(bytes), Some(mut si)) = (self.stdin.clone(), child.stdin.take()) {
            // a writer of its own: a program that prints before it reads all
            // of its input must not block on a full pipe
            tokio::spawn(async move {
                let _ = si.write_all(&bytes).await;
            });
        }
        let waited = child.wait_with_output();
        let out = match self.timeout {
            Some(t) => match tokio::time::timeout(t, waited).await {
                Ok(r) => r.map_err(io)?,
                // the child future is dropped: kill_on_drop kills it
                Err(_) => {
                    return Err(ExecError::TimedOut {
                        command: command.clone(),
                        after: t,
                    })
                }
            },
            None => waited.await.map_err(io)?,
        };
        Ok(Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            command,
        })
    }

    /// Run it; a non-zero exit is [`ExecError::Failed`]. Returns standard output.
    pub async fn run(&self) -> Result<String, ExecError> {
        self.output().await?.checked().map(|o| o.stdout)
    }

    /// Run it, handing each line of its output to `line` as it comes
    /// (`false`: standard output, `true`: standard error). Returns its exit
    /// status; killed on timeout or when the future is dropped.
    pub async fn stream(&self, line: LineSink) -> Result<std::process::ExitStatus, ExecError> {
        let command = self.display();
        tracing::debug!(%command, "exec");
        let mut child = self
            .tokio_command()
            .spawn()
            .map_err(|e| self.spawn_error(e))?;
        if let (Some(bytes), Some(mut si)) = (self.stdin.clone(), child.stdin.take()) {
            tokio::spawn(async move {
                let _ = si.write_all(&bytes).await;
            });
        }
        let pump = |r: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>, is_err: bool| {
            let line = line.clone();
            tokio::spawn(async move {
                if let Some(r) = r {
                    let mut lines = BufReader::new(r).lines();
                    while let Ok(Some(l)) = lines.next_line().await {
                        line(is_err, &l);
                    }
                }
            })
        };
        let t1 = pump(
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            false,
        );
        let t2 = pump(
            child
                .stderr
                .take()
                .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            true,
        );
        let io = |source| ExecError::Io {
            command: command.clone(),
            source,
        };
        let status = match self.timeout {
            Some(t) => match tokio::time::timeout(t, child.wait()).await {
                Ok(r) => r.map_err(io)?,
                Err(_) => {
                    let _ = child.kill().await;
                    return Err(ExecError::TimedOut {
                        command: command.clone(),
                        after: t,
                    });
                }
            },
            None => child.wait().await.map_err(io)?,
        };
        let _ = t1.await;
        let _ = t2.await;
        Ok(status)
    }

    /// [`Cmd::output`] for code that is not async (the stemcell crate's
    /// disk conversions): the same capture, timeout (the process is killed
    /// by its PID) and errors, on this thread.
    pub fn output_blocking(&self) -> Result<Output, ExecError> {
        use std::io::{Read as _, Write as _};
        let command = self.display();
        tracing::debug!(%command, "exec");
        let mut child = self
            .std_command()
            .spawn()
            .map_err(|e| self.spawn_error(e))?;
        if let (Some(bytes), Some(mut si)) = (self.stdin.clone(), child.stdin.take()) {
            std::thread::spawn(move || {
                let _ = si.write_all(&bytes);
            });
        }
        let reader = |r: Option<Box<dyn std::io::Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_end(&mut buf);
                }
                buf
            })
        };
        let out = reader(
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
        );
        let err = reader(
            child
                .stderr
                .take()
                .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
        );
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let r = child.wait();
            let _ = tx.send(());
            r
        });
        let mut timed_out = None;
        if let Some(t) = self.timeout {
            if rx.recv_timeout(t).is_err() {
                if let Ok(p) = i32::try_from(pid) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                timed_out = Some(t);
            }
        }
        let io = |source| ExecError::Io {
            command: command.clone(),
            source,
        };
        let status = waiter
            .join()
            .map_err(|_| io(std::io::Error::other("the waiting thread panicked")))?
            .map_err(io)?;
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        if let Some(after) = timed_out {
            return Err(ExecError::TimedOut { command, after });
        }
        Ok(Output {
            code: status.code(),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            command,
        })
    }
}

/// The Debian package that holds a program (for "not installed" messages).
pub fn package_of(program: &str) -> &'static str {
    match Path::new(program)
        .file_name()
        .and_then(OsStr::to_str)
        .unwrap_or("")
    {
        "qemu-system-x86_64" => "qemu-system-x86",
        "qemu-img" => "qemu-utils",
        "mkfs.ext4" | "debugfs" | "e2fsck" => "e2fsprogs",
        "fallocate" | "unshare" | "mount" => "util-linux",
        "openssl" => "openssl",
        "genisoimage" => "genisoimage",
        "sh" => "dash",
        "VBoxManage" => "virtualbox (from Oracle; not in Debian main)",
        _ => "(unknown)",
    }
}

/// Find a program on PATH (a name with a `/` is taken as a path).
pub fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// A program that must be on PATH.
pub fn require(program: &str) -> Result<PathBuf, ExecError> {
    which(program).ok_or_else(|| ExecError::NotFound {
        program: program.to_string(),
        package: package_of(program).to_string(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn captures_both_outputs_and_feeds_stdin() {
        let o = Cmd::new("sh")
            .args(["-c", "cat; echo err >&2; exit 3"])
            .stdin(b"in\n".to_vec())
            .output()
            .await
            .unwrap();
        assert_eq!(o.code, Some(3));
        assert_eq!(o.stdout, "in\n");
        assert_eq!(o.stderr, "err\n");
        let e = o.checked().unwrap_err().to_string();
        assert!(
            e.contains("`sh -c cat; echo err >&2; exit 3` failed (exit 3): err"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_timeout_kills_and_names_the_command() {
        let t = std::time::Instant::now();
        let e = Cmd::new("sleep")
            .arg("30")
            .timeout(Duration::from_millis(200))
            .output()
            .await
            .unwrap_err();
        assert!(matches!(e, ExecError::TimedOut { .. }), "{e}");
        assert!(e.to_string().contains("`sleep 30`"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(10));
        let e = Cmd::new("sleep")
            .arg("30")
            .timeout(Duration::from_millis(200))
            .output_blocking()
            .unwrap_err();
        assert!(matches!(e, ExecError::TimedOut { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(20));
    }

    #[tokio::test]
    async fn missing_programs_name_their_package() {
        let e = Cmd::new("qemu-img-not-here").run().await.unwrap_err();
        assert!(matches!(e, ExecError::NotFound { .. }), "{e}");
        let e = require("/nonexistent/qemu-img").unwrap_err().to_string();
        assert!(e.contains("qemu-utils"), "{e}");
        let e = Cmd::new("/nonexistent/x").output_blocking().unwrap_err();
        assert!(matches!(e, ExecError::NotFound { .. }), "{e}");
    }

    #[tokio::test]
    async fn streams_lines_in_a_directory() {
        let d = tempfile::tempdir().unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        let st = Cmd::new("sh")
            .args(["-c", "pwd; echo e >&2"])
            .current_dir(d.path())
            .stream(std::sync::Arc::new(move |err, l: &str| {
                s.lock().unwrap().push((err, l.to_string()))
            }))
            .await
            .unwrap();
        assert!(st.success());
        let mut seen = seen.lock().unwrap().clone();
        seen.sort();
        let dir = std::fs::canonicalize(d.path()).unwrap();
        assert_eq!(
            seen,
            vec![(false, dir.display().to_string()), (true, "e".to_string())]
        );
    }

    #[test]
    fn blocking_output_matches() {
        let o = Cmd::new("sh")
            .args(["-c", "read x; echo got $x"])
            .stdin(b"y\n".to_vec())
            .output_blocking()
            .unwrap();
        assert!(o.success());
        assert_eq!(o.stdout, "got y\n");
    }
}
