//! SCP (`scp -t`) fallback for servers without the sftp subsystem.

use std::time::Duration;

use futures::stream::StreamExt as _;
use opsbake_core::transport::{shell_quote, TransferReport, TransportError};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use std::sync::Arc;

use crate::channels::ChannelKind;
use crate::conn::{Conn, PermitStream};
use crate::exec::{capture, disconnected};
use crate::plan::{verify_sha256, FileItem, Plan, Src};

async fn run_checked(conn: &Arc<Conn>, what: &str, cmd: String) -> Result<(), TransportError> {
    let target = conn.target.as_str();
    let (st, _, err) = capture(conn, cmd, Some(Duration::from_secs(300))).await?;
    if !st.success() {
        return Err(TransportError::Remote {
            target: target.into(),
            op: what.into(),
            path: String::new(),
            reason: format!("{st}: {}", err.trim()),
        });
    }
    Ok(())
}

async fn read_ack<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    target: &str,
    path: &str,
) -> Result<(), TransportError> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)
        .await
        .map_err(|e| disconnected(target, &format!("scp ack for {path}"), e))?;
    if b[0] == 0 {
        return Ok(());
    }
    let mut msg = Vec::new();
    loop {
        let mut c = [0u8; 1];
        match r.read(&mut c).await {
            Ok(1) if c[0] != b'\n' => msg.push(c[0]),
            _ => break,
        }
    }
    Err(TransportError::Remote {
        target: target.into(),
        op: "scp".into(),
        path: path.into(),
        reason: String::from_utf8_lossy(&msg).trim().to_string(),
    })
}

async fn send_file(conn: &Conn, f: &FileItem) -> Result<(), TransportError> {
    let target = conn.target.as_str();
    let (leased, _) = conn.open(ChannelKind::Scp).await?;
    leased
        .ch
        .exec(true, format!("scp -p -t -- {}", shell_quote(&f.remote)))
        .await
        .map_err(|e| disconnected(target, "scp exec", e))?;
    let mut s = PermitStream::new(leased);
    let p = &f.remote;
    read_ack(&mut s, target, p).await?;
    let m = f.mtime.unwrap_or(0);
    let io = |e: std::io::Error| disconnected(target, &format!("scp to {p}"), e);
    s.write_all(format!("T{m} 0 {m} 0\n").as_bytes())
        .await
        .map_err(io)?;
    read_ack(&mut s, target, p).await?;
    let name = p.rsplit('/').next().unwrap_or("file");
    s.write_all(format!("C{:04o} {} {}\n", f.mode & 0o7777, f.size, name).as_bytes())
        .await
        .map_err(io)?;
    read_ack(&mut s, target, p).await?;
    match &f.src {
        Src::Bytes(b) => s.write_all(b).await.map_err(io)?,
        Src::Path(path) => {
            let mut file =
                tokio::fs::File::open(path)
                    .await
                    .map_err(|source| TransportError::LocalIo {
                        path: path.clone(),
                        source,
                    })?;
            let mut buf = vec![0u8; 256 << 10];
            let mut left = f.size;
            while left > 0 {
                let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
                let n = file.read(&mut buf[..want]).await.map_err(|source| {
                    TransportError::LocalIo {
                        path: path.clone(),
                        source,
                    }
                })?;
                if n == 0 {
                    return Err(TransportError::LocalIo {
                        path: path.clone(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "file shrank during upload",
                        ),
                    });
                }
                s.write_all(&buf[..n]).await.map_err(io)?;
                left -= n as u64;
            }
        }
    }
    s.write_all(&[0]).await.map_err(io)?;
    read_ack(&mut s, target, p).await?;
    let _ = s.shutdown().await;
    Ok(())
}

/// Run a plan with `scp -t` and shell commands.
pub(crate) async fn upload(
    conn: &Arc<Conn>,
    plan: &Plan,
) -> Result<TransferReport, TransportError> {
    let mut dirs: Vec<String> = plan.parents.clone();
    dirs.extend(plan.dirs.iter().map(|(d, _)| d.clone()));
    for batch in dirs.chunks(200) {
        let mut cmd = String::from("mkdir -p --");
        for d in batch {
            cmd.push(' ');
            cmd.push_str(&shell_quote(d));
        }
        run_checked(conn, "mkdir -p", cmd).await?;
    }
    // A previous upload may have left read-only files and directories of
    // ours: make them writable for the owner (their modes are set again below).
    let mut existing: Vec<String> = plan.dirs.iter().map(|(d, _)| d.clone()).collect();
    existing.extend(plan.files.iter().map(|f| f.remote.clone()));
    for batch in existing.chunks(200) {
        let mut cmd = String::from("for p in");
        for p in batch {
            cmd.push(' ');
            cmd.push_str(&shell_quote(p));
        }
        cmd.push_str("; do if [ -d \"$p\" ]; then chmod u+rwx -- \"$p\"; elif [ -f \"$p\" ]; then chmod u+w -- \"$p\"; fi; done; true");
        run_checked(conn, "chmod u+w", cmd).await?;
    }
    let futs: Vec<_> = plan.files.iter().map(|f| send_file(conn, f)).collect();
    let mut work = futures::stream::iter(futs).buffer_unordered(8);
    while let Some(r) = work.next().await {
        r?;
    }
    drop(work);
    let mut cmds: Vec<String> = plan
        .links
        .iter()
        .map(|(link, to)| format!("ln -sfn -- {} {}", shell_quote(to), shell_quote(link)))
        .collect();
    cmds.extend(
        plan.dirs
            .iter()
            .rev()
            .map(|(d, m)| format!("chmod {:o} -- {}", m, shell_quote(d))),
    );
    for batch in cmds.chunks(100) {
        run_checked(
            conn,
            "links and modes",
            format!("set -e; {}", batch.join("; ")),
        )
        .await?;
    }
    verify_sha256(conn, plan).await?;
    Ok(TransferReport {
        files: plan.files.len() as u64,
        dirs: plan.dirs.len() as u64,
        symlinks: plan.links.len() as u64,
        bytes: plan.files.iter().map(|f| f.size).sum(),
        tar_streams: 0,
    })
}
