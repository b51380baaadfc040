//! The channel budget against a real, hardened OpenSSH sshd with a low
//! `MaxSessions`: refused channels are waited for and retried, the SFTP pool
//! shrinks to what the server allows, and a server that allows too few is
//! reported as a refused channel (host and reason code), never as a lost
//! connection.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use opsbake_comms_ssh::{RefusalReason, SshOptions, SshTransport};
use opsbake_core::transport::{
    ExecRequest, ExitStatus, Stream, Transport, TransportError, Upload, UploadSource,
};
use opsbake_test_support::sshd::{Sshd, SshdOptions};

fn max_sessions(n: u32) -> SshdOptions {
    SshdOptions {
        extra_config: vec![format!("MaxSessions {n}")],
        ..SshdOptions::default()
    }
}

async fn setup(n: u32, tune: impl FnOnce(&mut SshOptions)) -> (Sshd, Arc<SshTransport>) {
    init_tracing();
    let k = key();
    let sshd = sshd_with(&k, max_sessions(n));
    let mut o = opts(sshd.addr(), &k, pinned(&sshd));
    tune(&mut o);
    let t = SshTransport::connect(o).await.unwrap();
    (sshd, Arc::new(t))
}

/// `count` small files in 10 folders plus one 12 MiB file (split across the
/// SFTP channels when there are several).
fn make_tree(root: &Path, count: usize) {
    for i in 0..count {
        let p = root.join(format!("d{}/f{i}.txt", i % 10));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, format!("file {i}\n").repeat(i % 50 + 1)).unwrap();
    }
    let big: Vec<u8> = (0..12u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(root.join("big.bin"), big).unwrap();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn tree_upload(local: &Path, remote: &Path) -> Upload {
    Upload {
        source: UploadSource::Path(local.to_path_buf()),
        remote: remote.to_string_lossy().into_owned(),
        mode: None,
        verify_sha256: true,
    }
}

async fn run(t: &SshTransport, cmd: &str) -> (Result<ExitStatus, TransportError>, Vec<String>) {
    let c = Collected::default();
    let r = t.exec(ExecRequest::new(cmd), c.sink()).await;
    (r, c.lines(Stream::Stdout))
}

/// Poll (with a deadline) until a command on the target created `p` (the
/// target's home is a local directory).
async fn wait_for_file(p: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !p.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", p.display());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn refused_message(e: &TransportError) -> String {
    match e {
        TransportError::ChannelRefused {
            target,
            code,
            detail,
        } => {
            assert_eq!(*code, 2, "OpenSSH answers SSH_OPEN_CONNECT_FAILED");
            format!("{target}: {detail}")
        }
        other => panic!("expected TransportError::ChannelRefused, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_sessions_3_upload_of_many_files_with_concurrent_execs() {
    // Defaults: a budget of 10 channels, a pool of up to 8: the server
    // allows 3, which is learned from its first refusal.
    let (sshd, t) = setup(3, |_| {}).await;
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path(), 400);
    let dest = sshd.home().join("up3");

    for round in 0..2 {
        let dest_r = dest.join(format!("r{round}"));
        let up = {
            let t = t.clone();
            let u = tree_upload(src.path(), &dest_r);
            tokio::spawn(async move { t.upload(vec![u]).await })
        };
        let execs: Vec<_> = (0..6)
            .map(|i| {
                let t = t.clone();
                tokio::spawn(async move {
                    run(&t, &format!("sleep 0.$(( {i} % 3 )); echo exec-{i}")).await
                })
            })
            .collect();
        let rep = up
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("round {round}: upload: {e:?}"));
        assert_eq!(rep.files, 401, "round {round}");
        for (i, h) in execs.into_iter().enumerate() {
            let (r, out) = h.await.unwrap();
            let st = r.unwrap_or_else(|e| panic!("round {round}: exec {i}: {e:?}"));
            assert_eq!(st, ExitStatus::Code(0));
            assert_eq!(out, [format!("exec-{i}")]);
        }
        // verify_sha256 compared every file; spot-check the tree too.
        assert_eq!(
            std::fs::read_to_string(dest_r.join("d7/f397.txt")).unwrap(),
            "file 397\n".repeat(397 % 50 + 1)
        );
        assert_eq!(
            std::fs::metadata(dest_r.join("big.bin")).unwrap().len(),
            12 << 20
        );
    }

    let l = t.channel_limits();
    assert_eq!(l.configured, 10);
    let (learned, reason) = l.learned.clone().expect("a limit learned from a refusal");
    assert_eq!(learned, 3, "{l:?}");
    // OpenSSH answers "connect failed" when MaxSessions is reached.
    assert_eq!(reason, RefusalReason::ConnectFailed, "{l:?}");
    assert_eq!(l.allowed, 3, "{l:?}");
    assert!(l.sftp_pool <= 1, "pool within max - 2: {l:?}");
    // The server did refuse channels (the path under test ran), and the
    // connection survived it.
    assert!(
        sshd.log_count("no more sessions") >= 1,
        "sshd never refused a session:\n{}",
        sshd.log_text()
    );
    assert!(t.ping().await);
}

#[tokio::test]
async fn max_sessions_0_reports_the_refused_channel_not_a_lost_connection() {
    let (sshd, t) = setup(0, |o| o.channel_wait = Duration::from_secs(30)).await;
    let started = Instant::now();
    let (r, _) = run(&t, "true").await;
    let e = r.unwrap_err();
    assert!(!e.is_disconnect(), "{e:?}");
    let msg = refused_message(&e);
    let host = format!("127.0.0.1:{}", sshd.port());
    assert!(msg.contains(&host), "{msg}");
    assert!(msg.contains("connect failed"), "{msg}");
    assert!(msg.contains("reason code 2"), "{msg}");
    assert!(msg.contains("MaxSessions 0"), "{msg}");
    // Nothing of ours could close: no waiting for the deadline.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        t.channel_limits().learned,
        Some((0, RefusalReason::ConnectFailed))
    );

    // Uploads report the same (the tar stream's exec channel, or with
    // `tar_stream: false` the sftp channel, is refused the same way).
    let e = t
        .upload(vec![Upload {
            source: UploadSource::Bytes(b"x".to_vec()),
            remote: sshd.home().join("x").to_string_lossy().into_owned(),
            mode: None,
            verify_sha256: false,
        }])
        .await
        .unwrap_err();
    assert!(!e.is_disconnect(), "{e:?}");
    let msg = refused_message(&e);
    assert!(
        (msg.contains("for sftp") || msg.contains("for a command")) && msg.contains(&host),
        "{msg}"
    );
    // The connection is alive.
    assert!(t.ping().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_sessions_1_waits_for_our_channel_then_reports_refusal_at_the_deadline() {
    let (sshd, t) = setup(1, |o| o.channel_wait = Duration::from_secs(3)).await;

    // Sequential commands work (the channel opened ahead is refused and the
    // limit of 1 learned).
    for i in 0..3 {
        let (r, out) = run(&t, &format!("echo seq-{i}")).await;
        assert_eq!(r.unwrap(), ExitStatus::Code(0));
        assert_eq!(out, [format!("seq-{i}")]);
    }
    // An upload with sha256 verification: the pool's only channel is given
    // back for the sha256sum command.
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path(), 30);
    let rep = t
        .upload(vec![tree_upload(src.path(), &sshd.home().join("up1"))])
        .await
        .unwrap_or_else(|e| panic!("upload with MaxSessions 1: {e:?}"));
    assert_eq!(rep.files, 31);
    assert_eq!(t.channel_limits().learned.map(|l| l.0), Some(1));

    // A command waits for the running one to close its channel (no fixed
    // delay: the budget's permit comes back when the channel closes).
    let long = {
        let t = t.clone();
        tokio::spawn(async move { run(&t, "touch started-1; sleep 1; echo long").await })
    };
    // Let the long command take the only channel first.
    wait_for_file(&sshd.home().join("started-1")).await;
    let (r, out) = run(&t, "echo after").await;
    assert_eq!(r.unwrap(), ExitStatus::Code(0));
    assert_eq!(out, ["after"]);
    let (r, out) = long.await.unwrap();
    assert_eq!(r.unwrap(), ExitStatus::Code(0));
    assert_eq!(out, ["long"]);

    // A command that would need a second channel for longer than
    // channel_wait (3 s): the refusal is reported, with host and reason.
    let long = {
        let t = t.clone();
        tokio::spawn(async move { run(&t, "touch started-2; sleep 6; echo long").await })
    };
    wait_for_file(&sshd.home().join("started-2")).await;
    let started = Instant::now();
    let (r, _) = run(&t, "echo never").await;
    let waited = started.elapsed();
    let e = r.unwrap_err();
    assert!(!e.is_disconnect(), "{e:?}");
    let msg = refused_message(&e);
    assert!(msg.contains(&format!("127.0.0.1:{}", sshd.port())), "{msg}");
    assert!(
        msg.contains("connect failed (SSH_OPEN_CONNECT_FAILED, reason code 2)"),
        "{msg}"
    );
    assert!(msg.contains("allows 1 at once"), "{msg}");
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(6),
        "{waited:?}"
    );
    // The running command was not disturbed and the connection is alive.
    let (r, out) = long.await.unwrap();
    assert_eq!(r.unwrap(), ExitStatus::Code(0));
    assert_eq!(out, ["long"]);
    assert!(t.ping().await);
    let (r, _) = run(&t, "true").await;
    assert!(r.unwrap().success());
}

/// One SFTP channel (what a pool shrinks to) with hundreds of files in
/// flight: sftp-server's handle indexes pass 127, which russh-sftp cannot
/// carry (it keeps handles as lossily decoded strings); the uploader keeps
/// fewer handles per channel open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sftp_channel_with_hundreds_of_files_in_flight() {
    let (sshd, t) = setup(10, |o| o.sftp_channels = 1).await;
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path(), 400);
    let rep = t
        .upload(vec![tree_upload(src.path(), &sshd.home().join("one"))])
        .await
        .unwrap();
    assert_eq!(rep.files, 401);
    assert_eq!(t.channel_limits().sftp_pool, 1);
}
