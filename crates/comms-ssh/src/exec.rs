//! Running commands: streamed line-split output, exit status and signal,
//! PTY, environment, stdin (for `sudo -S`), timeout, dropped connections.

use std::sync::Arc;
use std::time::Duration;

use opsbake_core::secret::redactor;
use opsbake_core::transport::{
    env_prefix, ExecRequest, ExitStatus, OutputSink, Stream, TransportError,
};
use russh::{ChannelMsg, Sig};

use crate::conn::{Conn, Leased};
use crate::connect::SshHandle;

/// Splits a byte stream into lines for an [`OutputSink`].
pub(crate) struct LineSplitter {
    stream: Stream,
    buf: Vec<u8>,
}

impl LineSplitter {
    pub(crate) fn new(stream: Stream) -> Self {
        LineSplitter {
            stream,
            buf: Vec::new(),
        }
    }

    fn emit(&self, sink: &dyn OutputSink, mut line: &[u8]) {
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        let text = String::from_utf8_lossy(line);
        let r = redactor();
        if r.is_empty() {
            sink.line(self.stream, &text);
        } else {
            sink.line(self.stream, &r.scrub(&text));
        }
    }

    pub(crate) fn push(&mut self, data: &[u8], sink: &dyn OutputSink) {
        self.buf.extend_from_slice(data);
        let mut start = 0;
        while let Some(pos) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + pos;
            let line = self.buf[start..end].to_vec();
            self.emit(sink, &line);
            start = end + 1;
        }
        self.buf.drain(..start);
    }

    pub(crate) fn finish(&mut self, sink: &dyn OutputSink) {
        if !self.buf.is_empty() {
            let line = std::mem::take(&mut self.buf);
            self.emit(sink, &line);
        }
    }
}

fn sig_name(s: &Sig) -> String {
    match s {
        Sig::ABRT => "ABRT".into(),
        Sig::ALRM => "ALRM".into(),
        Sig::FPE => "FPE".into(),
        Sig::HUP => "HUP".into(),
        Sig::ILL => "ILL".into(),
        Sig::INT => "INT".into(),
        Sig::KILL => "KILL".into(),
        Sig::PIPE => "PIPE".into(),
        Sig::QUIT => "QUIT".into(),
        Sig::SEGV => "SEGV".into(),
        Sig::TERM => "TERM".into(),
        Sig::USR1 => "USR1".into(),
        Sig::Custom(c) => c.clone(),
    }
}

pub(crate) fn disconnected(target: &str, what: &str, e: impl std::fmt::Display) -> TransportError {
    TransportError::Disconnected {
        target: target.to_string(),
        reason: format!("{what}: {e}"),
    }
}

/// The full command line (environment exports + command).
pub(crate) fn command_line(target: &str, req: &ExecRequest) -> Result<String, TransportError> {
    let prefix = env_prefix(&req.env).map_err(|message| TransportError::Other {
        target: target.to_string(),
        message,
    })?;
    Ok(format!("{prefix}{}", req.command))
}

/// Run one command on `leased` (a session channel opened by the
/// connection's budget; a spare one opened ahead of time costs a round trip
/// less). The permit is given back when the channel has closed.
pub(crate) async fn exec_on(
    handle: &SshHandle,
    target: &str,
    req: ExecRequest,
    sink: Arc<dyn OutputSink>,
    leased: Leased,
) -> Result<ExitStatus, TransportError> {
    let cmd = command_line(target, &req)?;
    let Leased { mut ch, permit } = leased;
    let _permit = permit;
    if req.pty {
        ch.request_pty(true, "xterm", 200, 50, 0, 0, &[])
            .await
            .map_err(|e| disconnected(target, "requesting a pty", e))?;
    }
    ch.exec(true, cmd.as_bytes())
        .await
        .map_err(|e| disconnected(target, "exec request", e))?;
    if let Some(stdin) = &req.stdin {
        ch.data(&stdin.expose()[..])
            .await
            .map_err(|e| disconnected(target, "writing stdin", e))?;
    }
    if !req.pty {
        ch.eof()
            .await
            .map_err(|e| disconnected(target, "sending EOF", e))?;
    }
    let mut out = LineSplitter::new(Stream::Stdout);
    let mut err = LineSplitter::new(Stream::Stderr);
    let mut status: Option<ExitStatus> = None;
    let mut closed = false;
    let run = async {
        while let Some(msg) = ch.wait().await {
            match msg {
                ChannelMsg::Data { data } => out.push(&data, sink.as_ref()),
                ChannelMsg::ExtendedData { data, ext: 1 } => err.push(&data, sink.as_ref()),
                ChannelMsg::ExitStatus { exit_status } => {
                    status = Some(ExitStatus::Code(exit_status))
                }
                ChannelMsg::ExitSignal {
                    signal_name,
                    core_dumped,
                    error_message,
                    ..
                } => {
                    status = Some(ExitStatus::Signal {
                        signal: sig_name(&signal_name),
                        core_dumped,
                        message: error_message,
                    })
                }
                ChannelMsg::Failure => {
                    return Err(TransportError::Other {
                        target: target.to_string(),
                        message: "the server refused the exec request".into(),
                    })
                }
                ChannelMsg::Close => {
                    closed = true;
                    break;
                }
                _ => {}
            }
        }
        Ok(())
    };
    let (res, timed_out) = match req.timeout {
        Some(t) => match tokio::time::timeout(t, run).await {
            Ok(r) => (r, None),
            Err(_) => (Ok(()), Some(t)),
        },
        None => (run.await, None),
    };
    if let Err(e) = res {
        // The channel is still open on the server (it refused the request,
        // not the channel): close it before its permit is given back.
        let _ = ch.close().await;
        return Err(e);
    }
    out.finish(sink.as_ref());
    err.finish(sink.as_ref());
    if let Some(after) = timed_out {
        // OpenSSH honours "signal" requests; closing the channel also hangs
        // up the command's session.
        let _ = ch.signal(Sig::KILL).await;
        // sshd counts the session until the killed command is gone: wait
        // (briefly) for its CLOSE before the channel's permit goes back.
        let server_closed = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(m) = ch.wait().await {
                if matches!(m, ChannelMsg::Close) {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        if !server_closed {
            let _ = ch.close().await;
        }
        return Err(TransportError::Timeout {
            target: target.to_string(),
            what: format!("command {:?}", short(&req.command)),
            after,
        });
    }
    match status {
        Some(s) => Ok(s),
        None if !closed || handle.is_closed() => Err(TransportError::Disconnected {
            target: target.to_string(),
            reason: format!(
                "connection lost while running {:?} (no exit status)",
                short(&req.command)
            ),
        }),
        None => Err(TransportError::Other {
            target: target.to_string(),
            message: format!(
                "channel closed without exit status for {:?}",
                short(&req.command)
            ),
        }),
    }
}

fn short(cmd: &str) -> String {
    let c: String = cmd.chars().take(80).collect();
    if c.len() < cmd.len() {
        format!("{c}...")
    } else {
        c
    }
}

/// Run a command and collect its stdout (for internal helpers such as
/// `sha256sum`); stderr is kept for the error.
pub(crate) async fn capture(
    conn: &Arc<Conn>,
    command: String,
    timeout: Option<Duration>,
) -> Result<(ExitStatus, String, String), TransportError> {
    let lines = Arc::new(std::sync::Mutex::new((String::new(), String::new())));
    let l2 = lines.clone();
    let sink: Arc<dyn OutputSink> = Arc::new(move |s: Stream, line: &str| {
        if let Ok(mut g) = l2.lock() {
            let buf = match s {
                Stream::Stdout => &mut g.0,
                Stream::Stderr => &mut g.1,
            };
            buf.push_str(line);
            buf.push('\n');
        }
    });
    let mut req = ExecRequest::new(command);
    req.timeout = timeout;
    let st = conn.exec(req, sink).await?;
    let (o, e) = lines.lock().map(|g| g.clone()).unwrap_or_default();
    Ok((st, o, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn splits_lines_across_chunks_and_strips_cr() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let sink = move |s: Stream, l: &str| g.lock().unwrap().push((s, l.to_string()));
        let mut sp = LineSplitter::new(Stream::Stdout);
        sp.push(b"one\r\ntw", &sink);
        sp.push(b"o\n\nthr", &sink);
        sp.finish(&sink);
        let v: Vec<String> = got.lock().unwrap().iter().map(|x| x.1.clone()).collect();
        assert_eq!(v, ["one", "two", "", "thr"]);
    }
}
