//! A [`Transport`] that runs commands on the build host (shell-local, the
//! localtest builder, tests), through [`crate::exec::Cmd`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::transport::{
    Download, ExecRequest, ExitStatus, OutputSink, Stream, TransferReport, Transport,
    TransportError, Upload, UploadSource,
};
use async_trait::async_trait;

/// Runs commands with `sh -c` in a working directory.
pub struct LocalTransport {
    dir: PathBuf,
}

impl LocalTransport {
    /// Commands run in `dir`.
    pub fn new(dir: PathBuf) -> LocalTransport {
        LocalTransport { dir }
    }

    fn err(&self, message: String) -> TransportError {
        TransportError::Other {
            target: self.describe(),
            message,
        }
    }
}

fn local_io(path: &Path) -> impl FnOnce(std::io::Error) -> TransportError + '_ {
    move |source| TransportError::LocalIo {
        path: path.to_path_buf(),
        source,
    }
}

async fn copy_tree(src: &Path, dst: &Path, rep: &mut TransferReport) -> Result<(), TransportError> {
    let meta = tokio::fs::symlink_metadata(src)
        .await
        .map_err(local_io(src))?;
    if meta.is_dir() {
        tokio::fs::create_dir_all(dst)
            .await
            .map_err(local_io(dst))?;
        rep.dirs += 1;
        let mut rd = tokio::fs::read_dir(src).await.map_err(local_io(src))?;
        while let Some(e) = rd.next_entry().await.map_err(local_io(src))? {
            Box::pin(copy_tree(&e.path(), &dst.join(e.file_name()), rep)).await?;
        }
        tokio::fs::set_permissions(dst, meta.permissions())
            .await
            .map_err(local_io(dst))?;
    } else if meta.file_type().is_symlink() {
        let target = tokio::fs::read_link(src).await.map_err(local_io(src))?;
        let _ = tokio::fs::remove_file(dst).await;
        tokio::fs::symlink(&target, dst)
            .await
            .map_err(local_io(dst))?;
        rep.symlinks += 1;
    } else {
        if let Some(p) = dst.parent() {
            tokio::fs::create_dir_all(p).await.map_err(local_io(p))?;
        }
        rep.bytes += tokio::fs::copy(src, dst).await.map_err(local_io(dst))?;
        rep.files += 1;
    }
    Ok(())
}

#[async_trait]
impl Transport for LocalTransport {
    fn describe(&self) -> String {
        format!("local {}", self.dir.display())
    }

    async fn exec(
        &self,
        req: ExecRequest,
        sink: Arc<dyn OutputSink>,
    ) -> Result<ExitStatus, TransportError> {
        let mut cmd = crate::exec::Cmd::new("sh")
            .arg("-c")
            .arg(&req.command)
            .current_dir(&self.dir);
        cmd.env = req
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        cmd.stdin = req.stdin.as_ref().map(|s| s.expose().clone());
        cmd.timeout = req.timeout;
        let status = cmd
            .stream(Arc::new(move |is_err, l: &str| {
                sink.line(
                    if is_err {
                        Stream::Stderr
                    } else {
                        Stream::Stdout
                    },
                    l,
                )
            }))
            .await
            .map_err(|e| match e {
                crate::exec::ExecError::TimedOut { after, .. } => TransportError::Timeout {
                    target: self.describe(),
                    what: "command".into(),
                    after,
                },
                e => self.err(e.to_string()),
            })?;
        use std::os::unix::process::ExitStatusExt;
        Ok(match (status.code(), status.signal()) {
            (Some(c), _) => ExitStatus::Code(c as u32),
            (None, Some(s)) => ExitStatus::Signal {
                signal: nix::sys::signal::Signal::try_from(s)
                    .map(|s| s.as_str().trim_start_matches("SIG").to_string())
                    .unwrap_or_else(|_| s.to_string()),
                core_dumped: status.core_dumped(),
                message: String::new(),
            },
            _ => ExitStatus::Code(255),
        })
    }

    async fn upload(&self, items: Vec<Upload>) -> Result<TransferReport, TransportError> {
        let mut rep = TransferReport::default();
        for u in items {
            let dst = self.dir.join(u.remote.trim_start_matches('/'));
            match &u.source {
                UploadSource::Bytes(b) => {
                    if let Some(p) = dst.parent() {
                        tokio::fs::create_dir_all(p).await.map_err(local_io(p))?;
                    }
                    tokio::fs::write(&dst, b).await.map_err(local_io(&dst))?;
                    rep.files += 1;
                    rep.bytes += b.len() as u64;
                }
                UploadSource::Path(p) => copy_tree(p, &dst, &mut rep).await?,
            }
            if let Some(m) = u.mode {
                use std::os::unix::fs::PermissionsExt;
                tokio::fs::set_permissions(&dst, std::fs::Permissions::from_mode(m))
                    .await
                    .map_err(local_io(&dst))?;
            }
        }
        Ok(rep)
    }

    async fn download(&self, items: Vec<Download>) -> Result<TransferReport, TransportError> {
        let mut rep = TransferReport::default();
        for d in items {
            let src = self.dir.join(d.remote.trim_start_matches('/'));
            copy_tree(&src, &d.local, &mut rep).await?;
        }
        Ok(rep)
    }

    async fn reconnect(&self, _timeout: Duration) -> Result<(), TransportError> {
        Ok(())
    }

    async fn close(&self) -> Result<(), TransportError> {
        Ok(())
    }

    fn command_path(&self, remote: &str) -> String {
        self.dir
            .join(remote.trim_start_matches('/'))
            .display()
            .to_string()
    }
}
