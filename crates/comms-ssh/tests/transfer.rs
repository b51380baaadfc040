//! Uploads and downloads against a real, hardened OpenSSH sshd (SFTP and the
//! SCP fallback), and recovery from faults injected by a TCP proxy.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use opsbake_comms_ssh::SshTransport;
use opsbake_core::transport::{Download, Transport, TransportError, Upload, UploadSource};
use opsbake_test_support::sshd::{Sshd, SshdOptions};
use sha2::{Digest as _, Sha256};

fn write(p: &Path, data: &[u8], mode: u32) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    // xorshift: incompressible enough, reproducible.
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

/// A tree with modes, an empty file, a big file (split across channels),
/// nested and read-only directories, relative and absolute symlinks.
fn make_tree(root: &Path) {
    write(&root.join("bin/run.sh"), b"#!/bin/sh\necho run\n", 0o755);
    write(&root.join("secret.txt"), b"only me\n", 0o600);
    write(&root.join("empty"), b"", 0o644);
    write(&root.join("big.bin"), &random_bytes(20 << 20, 7), 0o640);
    write(
        &root.join("sub/deeper/file name with spaces"),
        b"deep\n",
        0o640,
    );
    write(&root.join("ro/readonly.txt"), b"read only\n", 0o444);
    std::fs::set_permissions(root.join("ro"), std::fs::Permissions::from_mode(0o555)).unwrap();
    std::fs::set_permissions(root.join("sub"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::symlink("bin/run.sh", root.join("link-rel")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.join("sub/link-abs")).unwrap();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o750)).unwrap();
}

#[derive(Debug, PartialEq)]
enum Entry {
    File { mode: u32, sha256: String },
    Dir { mode: u32 },
    Link(PathBuf),
}

fn snapshot(root: &Path) -> BTreeMap<String, Entry> {
    let mut m = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let entry = if md.file_type().is_symlink() {
                Entry::Link(std::fs::read_link(&p).unwrap())
            } else if md.is_dir() {
                stack.push(p.clone());
                Entry::Dir {
                    mode: md.mode() & 0o7777,
                }
            } else {
                Entry::File {
                    mode: md.mode() & 0o7777,
                    sha256: hex::encode(Sha256::digest(std::fs::read(&p).unwrap())),
                }
            };
            m.insert(rel, entry);
        }
    }
    m
}

fn owned_by_vcap(sshd: &Sshd, p: &Path) {
    let (uid, _) = sshd.ids();
    assert_eq!(
        std::fs::symlink_metadata(p).unwrap().uid(),
        uid,
        "{}",
        p.display()
    );
}

async fn connect(sshd: &Sshd, k: &opsbake_comms_ssh::KeyPair) -> SshTransport {
    SshTransport::connect(opts(sshd.addr(), k, pinned(sshd)))
        .await
        .unwrap()
}

async fn upload_tree_and_check(sshd: &Sshd, t: &SshTransport) {
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("tree");
    make_tree(&src);
    let home = sshd.home().to_str().unwrap().to_string();
    let dest = format!("{home}/dest/tree");
    let items = vec![
        Upload {
            source: UploadSource::Path(src.clone()),
            remote: dest.clone(),
            mode: None,
            verify_sha256: true,
        },
        Upload {
            source: UploadSource::Bytes(b"#!/bin/sh\nexit 0\n".to_vec()),
            remote: format!("{home}/dest/gen/wrapper.sh"),
            mode: Some(0o700),
            verify_sha256: true,
        },
        Upload {
            source: UploadSource::Path(src.join("bin/run.sh")),
            remote: format!("{home}/dest/single/renamed.sh"),
            mode: None,
            verify_sha256: true,
        },
    ];
    let r = t.upload(items.clone()).await.unwrap();
    assert_eq!(r.files, 6 + 1 + 1, "{r:?}");
    assert_eq!(r.symlinks, 2, "{r:?}");
    assert_eq!(r.dirs, 5, "{r:?}"); // tree, bin, sub, sub/deeper, ro
    let remote = Path::new(&dest);
    assert_eq!(snapshot(remote), snapshot(&src));
    assert_eq!(std::fs::metadata(remote).unwrap().mode() & 0o7777, 0o750);
    owned_by_vcap(sshd, &remote.join("big.bin"));
    let w = Path::new(&home).join("dest/gen/wrapper.sh");
    assert_eq!(std::fs::metadata(&w).unwrap().mode() & 0o7777, 0o700);
    assert_eq!(std::fs::read(&w).unwrap(), b"#!/bin/sh\nexit 0\n");
    let single = Path::new(&home).join("dest/single/renamed.sh");
    assert_eq!(std::fs::read(&single).unwrap(), b"#!/bin/sh\necho run\n");
    assert_eq!(std::fs::metadata(&single).unwrap().mode() & 0o7777, 0o755);
    // Uploading again over the result (read-only dir and file included) works.
    let r2 = t.upload(items).await.unwrap();
    assert_eq!(r2, r);
    assert_eq!(snapshot(remote), snapshot(&src));
}

#[tokio::test]
async fn sftp_upload_of_a_tree_with_modes_and_symlinks_verified_by_sha256() {
    init_tracing();
    let k = key();
    let sshd = sshd_with(&k, SshdOptions::default());
    let mut o = opts(sshd.addr(), &k, pinned(&sshd));
    o.tar_stream = false;
    let t = SshTransport::connect(o).await.unwrap();
    upload_tree_and_check(&sshd, &t).await;
}

/// The same tree through the tar stream (small files, directories and
/// symlinks in one stream, the 20 MiB file over SFTP).
#[tokio::test]
async fn tar_stream_upload_of_a_tree_with_modes_and_symlinks_verified_by_sha256() {
    init_tracing();
    let k = key();
    let sshd = sshd_with(&k, SshdOptions::default());
    let t = connect(&sshd, &k).await;
    upload_tree_and_check(&sshd, &t).await;
}

/// 2000 small files in 20 folders (the bench's tree) with mtimes kept.
fn make_small_tree(root: &Path) {
    for d in 0..20 {
        for f in 0..100 {
            let p = root.join(format!("d{d:02}/f{f:03}.txt"));
            write(&p, &random_bytes(4096, (d * 100 + f + 1) as u64), 0o644);
        }
    }
    write(&root.join("d00/exec.sh"), b"#!/bin/sh\n", 0o750);
    std::os::unix::fs::symlink("../d01/f000.txt", root.join("d00/link")).unwrap();
}

fn mtimes(root: &Path) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    for d in std::fs::read_dir(root).unwrap() {
        let d = d.unwrap().path();
        for f in std::fs::read_dir(&d).unwrap() {
            let f = f.unwrap().path();
            let md = std::fs::symlink_metadata(&f).unwrap();
            if md.is_file() {
                m.insert(
                    f.strip_prefix(root).unwrap().display().to_string(),
                    md.mtime(),
                );
            }
        }
    }
    m
}

/// The local tree `src` uploaded to `dest`, sha256 verified.
async fn upload_dir(
    t: &SshTransport,
    src: &Path,
    dest: &Path,
) -> Result<opsbake_core::transport::TransferReport, TransportError> {
    t.upload(vec![Upload {
        source: UploadSource::Path(src.to_path_buf()),
        remote: dest.display().to_string(),
        mode: None,
        verify_sha256: true,
    }])
    .await
}

/// A test sshd, a connection to it, and a local temp dir.
async fn tree_test() -> (
    opsbake_comms_ssh::KeyPair,
    Sshd,
    SshTransport,
    tempfile::TempDir,
) {
    init_tracing();
    let k = key();
    let sshd = sshd_with(&k, SshdOptions::default());
    let t = connect(&sshd, &k).await;
    (k, sshd, t, tempfile::tempdir().unwrap())
}

#[tokio::test]
async fn a_tree_of_small_files_is_one_tar_stream_without_sftp() {
    let (_k, sshd, t, local) = tree_test().await;
    let src = local.path().join("small");
    make_small_tree(&src);
    // Old mtimes, so that "kept" differs from "now".
    let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_500_000_000);
    std::fs::File::options()
        .write(true)
        .open(src.join("d05/f050.txt"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    let dest = sshd.home().join("small");
    let r = upload_dir(&t, &src, &dest).await.unwrap();
    assert_eq!(r.files, 2001, "{r:?}");
    assert_eq!(r.symlinks, 1, "{r:?}");
    assert!(r.tar_streams >= 1, "{r:?}");
    assert_eq!(snapshot(&dest), snapshot(&src));
    assert_eq!(mtimes(&dest), mtimes(&src));
    owned_by_vcap(&sshd, &dest.join("d07/f001.txt"));
    assert_eq!(
        t.channel_limits().sftp_pool,
        0,
        "no SFTP channel was needed"
    );
    // The sha256 list does not stay behind.
    let left: Vec<_> = std::fs::read_dir("/tmp")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".opsbake-sha256-")
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// [`make_small_tree`] uploaded (sha256 verified) to `small` in vcap's
/// home; the local tree's dir is kept alive by the returned tempdir.
async fn upload_small_tree(
    t: &SshTransport,
    sshd: &Sshd,
) -> (tempfile::TempDir, opsbake_core::transport::TransferReport) {
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("small");
    make_small_tree(&src);
    let r = upload_dir(t, &src, &sshd.home().join("small"))
        .await
        .unwrap();
    (local, r)
}

/// Over a 50 ms link the same tree goes in several tar streams at once
/// (one channel window each), even to a one-CPU target, and every file,
/// mode, mtime and symlink still checks out.
#[tokio::test]
async fn over_a_slow_link_a_tree_goes_in_several_tar_streams() {
    init_tracing();
    let k = key();
    let sshd = sshd_with(&k, SshdOptions::default());
    let proxy = opsbake_test_support::delay_proxy::DelayProxy::start(
        sshd.addr(),
        Duration::from_millis(25),
    )
    .unwrap();
    // A one-CPU target: only the link's round trip (measured by the first
    // stream's channel) asks for more than one stream.
    let mut o = opts(proxy.addr(), &k, pinned(&sshd));
    o.target_cpus = Some(1);
    let t = SshTransport::connect(o).await.unwrap();
    let (local, r) = upload_small_tree(&t, &sshd).await;
    let (src, dest) = (local.path().join("small"), sshd.home().join("small"));
    assert_eq!(r.files, 2001, "{r:?}");
    assert_eq!(r.symlinks, 1, "{r:?}");
    assert!(r.tar_streams > 1, "{r:?}");
    assert_eq!(snapshot(&dest), snapshot(&src));
    assert_eq!(mtimes(&dest), mtimes(&src));
    assert_eq!(t.channel_limits().sftp_pool, 0, "no SFTP channel");
}

/// A tree of many directories (600, of 4 files each) goes in several tar
/// streams at once into a tree that does not exist yet, six times over:
/// each stream past the first finds directories still missing, which the
/// first stream makes at the same moment. Left to GNU tar's own making of
/// parents this failed about one upload in four ("Cannot open: No such
/// file or directory": tar gives up when the directory appeared between
/// its failed open and its own mkdir); every upload must now arrive whole.
#[tokio::test]
async fn streams_side_by_side_into_a_new_tree_of_many_directories() {
    let (_k, sshd, t, local) = tree_test().await;
    let src = local.path().join("many");
    for d in 0..600 {
        for f in 0..4 {
            let p = src.join(format!("d{d:03}/f{f}"));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            write(&p, &random_bytes(2048, d * 4 + f), 0o640);
        }
    }
    for round in 0..6 {
        let dest = sshd.home().join(format!("many-{round}"));
        let r = upload_dir(&t, &src, &dest)
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(r.tar_streams > 1, "round {round}: {r:?}");
        assert_eq!(r.files, 2400, "round {round}: {r:?}");
        assert_eq!(snapshot(&dest), snapshot(&src), "round {round}");
    }
}

/// Uploads one 80 MiB file over a link of 25 ms each way that takes at most
/// `max_connections` connections, over a file already at the destination
/// that is longer and read-only; checks what arrived (sha256, cut to size,
/// mode) and returns the client-to-server bytes of each connection.
async fn upload_big_file_over_a_slow_link(max_connections: usize) -> Vec<u64> {
    upload_big_file_over_a_slow_link_with(max_connections, None)
        .await
        .0
}

/// [`upload_big_file_over_a_slow_link`]; `stall_second`: the second
/// connection goes silent once it has carried that many bytes (keepalives
/// every 300 ms then). Also returns how long the upload took and whether
/// the second connection did go silent.
async fn upload_big_file_over_a_slow_link_with(
    max_connections: usize,
    stall_second: Option<u64>,
) -> (Vec<u64>, Duration, bool) {
    init_tracing();
    let k = key();
    let sshd = sshd_with(&k, SshdOptions::default());
    let proxy = opsbake_test_support::delay_proxy::DelayProxy::start_limited(
        sshd.addr(),
        Duration::from_millis(25),
        max_connections,
    )
    .unwrap();
    let mut o = opts(proxy.addr(), &k, pinned(&sshd));
    if let Some(bytes) = stall_second {
        proxy.stall_after(1, bytes);
        o.keepalive = Some(Duration::from_millis(300));
    }
    let t = SshTransport::connect(o).await.unwrap();
    let local = tempfile::tempdir().unwrap();
    let data = random_bytes(80 << 20, 11);
    let f = local.path().join("big.img");
    write(&f, &data, 0o644);
    let dest = sshd.home().join("big.img");
    write(&dest, &random_bytes(100 << 20, 12), 0o444);
    let (uid, gid) = sshd.ids();
    std::os::unix::fs::chown(&dest, Some(uid), Some(gid)).unwrap();
    let started = std::time::Instant::now();
    let r = t
        .upload(vec![Upload {
            source: UploadSource::Path(f),
            remote: dest.to_str().unwrap().into(),
            mode: Some(0o640),
            verify_sha256: true,
        }])
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.bytes, 80 << 20, "{r:?}");
    t.close().await.unwrap();
    let got = std::fs::read(&dest).unwrap();
    assert_eq!(got.len(), data.len(), "cut to size");
    assert_eq!(
        hex::encode(Sha256::digest(&got)),
        hex::encode(Sha256::digest(&data))
    );
    assert_eq!(std::fs::metadata(&dest).unwrap().mode() & 0o7777, 0o640);
    (proxy.client_bytes(), took, proxy.stalled(1))
}

/// A big file over a slow link: one connection's flight is capped by
/// sshd's 2 MiB window per channel, so a second connection's channels take
/// pieces of the file too. The file arrives whole (sha256), cut to its
/// size over a longer, read-only file that was there, with its mode.
#[tokio::test]
async fn over_a_slow_link_a_big_file_also_goes_over_a_second_connection() {
    let sent = upload_big_file_over_a_slow_link(usize::MAX).await;
    assert_eq!(sent.len(), 2, "two connections: {sent:?}");
    assert!(sent[1] > 4 << 20, "the second carried pieces: {sent:?}");
    assert!(
        sent.iter().sum::<u64>() > 80 << 20,
        "every byte went once at least: {sent:?}"
    );
}

/// The second connection cannot be made (the link takes one connection):
/// the upload goes on over the first, nothing is lost.
#[tokio::test]
async fn a_refused_second_connection_leaves_the_big_file_to_the_first() {
    let sent = upload_big_file_over_a_slow_link(1).await;
    assert_eq!(sent.len(), 1, "one connection: {sent:?}");
    assert!(sent[0] > 80 << 20, "{sent:?}");
}

/// The second connection goes silent in the middle of the upload (no FIN,
/// no RST: a dead NAT): when its keepalive gives up (3 x 300 ms) its
/// session ends, its channels' SFTP requests fail at once (not at the SFTP
/// request timeout, 60 s: its writers watch the first connection, alive
/// all along, for a drop), and the first connection takes their pieces;
/// the file arrives whole.
#[tokio::test]
async fn a_second_connection_gone_silent_leaves_its_pieces_to_the_first() {
    let (sent, took, stalled) =
        upload_big_file_over_a_slow_link_with(usize::MAX, Some(3 << 20)).await;
    assert!(stalled, "the second connection went silent: {sent:?}");
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(
        took < Duration::from_secs(30),
        "the pieces of the silent connection waited {took:?} (the SFTP request timeout is 60 s)"
    );
}

/// A target without `tar`: the upload falls back to SFTP (and the
/// connection remembers it).
#[tokio::test]
async fn without_tar_on_the_target_the_tree_goes_over_sftp() {
    init_tracing();
    let k = key();
    let sshd = sshd_with(&k, SshdOptions::default());
    let home = sshd.home().to_str().unwrap().to_string();
    let bin = format!("{home}/bin");
    std::fs::create_dir_all(&bin).unwrap();
    let real = std::process::Command::new("sh")
        .args(["-c", "command -v sha256sum"])
        .output()
        .unwrap();
    let real = String::from_utf8(real.stdout).unwrap();
    std::os::unix::fs::symlink(real.trim(), format!("{bin}/sha256sum")).unwrap();
    write(
        Path::new(&format!("{home}/.bashrc")),
        format!("PATH={bin}\n").as_bytes(),
        0o644,
    );
    let t = connect(&sshd, &k).await;
    let (local, r) = upload_small_tree(&t, &sshd).await;
    let (src, dest) = (local.path().join("small"), sshd.home().join("small"));
    assert_eq!(r.files, 2001, "{r:?}");
    assert_eq!(snapshot(&dest), snapshot(&src));
    assert!(t.channel_limits().sftp_pool > 0, "SFTP carried it");
}

/// The connection is cut in the middle of the tar stream: without retries
/// the error says so (a lost connection, not a failed command); with them
/// the stream is sent again on a new connection and every file checks out.
#[tokio::test]
async fn a_cut_in_the_middle_of_the_tar_stream_fails_clearly_or_resumes() {
    init_tracing();
    let k = key();
    let sshd = sshd_with(&k, SshdOptions::default());
    let proxy = FaultProxy::start(sshd.addr()).await;
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("small");
    make_small_tree(&src);
    let dest = sshd.home().join("small");
    let item = Upload {
        source: UploadSource::Path(src.clone()),
        remote: dest.display().to_string(),
        mode: None,
        verify_sha256: true,
    };
    for retries in [0, 3] {
        let mut o = opts(proxy.addr, &k, pinned(&sshd));
        o.transfer_retries = retries;
        let t = SshTransport::connect(o).await.unwrap();
        *proxy.cut_after.lock().unwrap() = Some(3 << 20);
        t.reconnect(Duration::from_secs(10)).await.unwrap();
        let cuts = proxy.cuts.load(Ordering::SeqCst);
        let r = t.upload(vec![item.clone()]).await;
        assert_eq!(proxy.cuts.load(Ordering::SeqCst), cuts + 1, "cut once");
        if retries == 0 {
            let e = r.err().unwrap();
            assert!(e.is_disconnect(), "{e:?}");
            assert!(e.to_string().contains("tar"), "{e}");
        } else {
            let r = r.unwrap();
            assert_eq!(r.files, 2001);
            assert_eq!(snapshot(&dest), snapshot(&src));
        }
    }
}

#[tokio::test]
async fn scp_fallback_without_the_sftp_subsystem() {
    init_tracing();
    let k = key();
    let sshd = sshd_with(
        &k,
        SshdOptions {
            sftp: false,
            ..Default::default()
        },
    );
    let mut o = opts(sshd.addr(), &k, pinned(&sshd));
    o.tar_stream = false;
    let t = SshTransport::connect(o).await.unwrap();
    upload_tree_and_check(&sshd, &t).await;
    assert!(
        sshd.log_text().contains("subsystem request for sftp"),
        "{}",
        sshd.log_text()
    );
    let e = t
        .download(vec![Download {
            remote: "/etc/hostname".into(),
            local: PathBuf::from("/nonexistent/x"),
        }])
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("sftp subsystem"), "{e}");
}

#[tokio::test]
async fn sha256_mismatch_is_reported() {
    let k = key();
    let sshd = sshd_with(&k, SshdOptions::default());
    let mut o = opts(sshd.addr(), &k, pinned(&sshd));
    o.tar_stream = false;
    let t = SshTransport::connect(o).await.unwrap();
    // A remote sha256sum that lies stands in for corruption in transit.
    let home = sshd.home().to_str().unwrap().to_string();
    std::fs::create_dir_all(format!("{home}/bin")).unwrap();
    write(
        Path::new(&format!("{home}/bin/sha256sum")),
        b"#!/bin/sh\necho 0000  \"$2\"\n",
        0o755,
    );
    // bash started by sshd reads ~/.bashrc (Debian builds it that way).
    write(
        Path::new(&format!("{home}/.bashrc")),
        b"PATH=$HOME/bin:$PATH\n",
        0o644,
    );
    let e = t
        .upload(vec![Upload {
            source: UploadSource::Bytes(b"hello".to_vec()),
            remote: format!("{home}/f"),
            mode: None,
            verify_sha256: true,
        }])
        .await;
    match e {
        Err(TransportError::Verify {
            what,
            expected,
            actual,
            ..
        }) => {
            assert_eq!(what, "sha256");
            assert_eq!(expected, hex::encode(Sha256::digest(b"hello")));
            assert_eq!(actual, "0000");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn download_of_a_tree_round_trips() {
    let k = key();
    let sshd = sshd_with(&k, SshdOptions::default());
    let t = connect(&sshd, &k).await;
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("tree");
    make_tree(&src);
    let home = sshd.home().to_str().unwrap().to_string();
    t.upload(vec![Upload {
        source: UploadSource::Path(src.clone()),
        remote: format!("{home}/t"),
        mode: None,
        verify_sha256: false,
    }])
    .await
    .unwrap();
    let back = local.path().join("back");
    let r = t
        .download(vec![
            Download {
                remote: format!("{home}/t"),
                local: back.clone(),
            },
            Download {
                remote: format!("{home}/t/bin/run.sh"),
                local: local.path().join("one.sh"),
            },
        ])
        .await
        .unwrap();
    assert_eq!(r.files, 7, "{r:?}");
    assert_eq!(snapshot(&back), snapshot(&src));
    assert_eq!(
        std::fs::read(local.path().join("one.sh")).unwrap(),
        b"#!/bin/sh\necho run\n"
    );
}

#[tokio::test]
async fn upload_resumes_after_the_connection_drops_mid_transfer() {
    init_tracing();
    let k = key();
    let sshd = sshd_with(&k, SshdOptions::default());
    let proxy = FaultProxy::start(sshd.addr()).await;
    let t = SshTransport::connect(opts(proxy.addr, &k, pinned(&sshd)))
        .await
        .unwrap();
    // The next connection is cut after 12 MiB from the client; the first one
    // (already open) is cut below by arming before the SFTP channels exist.
    *proxy.cut_after.lock().unwrap() = Some(12 << 20);
    // Force the transfer onto a fresh connection that carries the cut.
    t.reconnect(Duration::from_secs(10)).await.unwrap();
    let local = tempfile::tempdir().unwrap();
    let data = random_bytes(48 << 20, 42);
    let f = local.path().join("big.img");
    write(&f, &data, 0o644);
    let remote = format!("{}/big.img", sshd.home().display());
    let start = Instant::now();
    let r = t
        .upload(vec![Upload {
            source: UploadSource::Path(f),
            remote: remote.clone(),
            mode: None,
            verify_sha256: true,
        }])
        .await
        .unwrap();
    assert_eq!(r.bytes, 48 << 20);
    assert_eq!(
        proxy.cuts.load(Ordering::SeqCst),
        1,
        "the connection was cut once"
    );
    let got = std::fs::read(&remote).unwrap();
    assert_eq!(
        hex::encode(Sha256::digest(&got)),
        hex::encode(Sha256::digest(&data))
    );
    assert_eq!(
        sshd.log_count("Accepted publickey for vcap"),
        3,
        "{}",
        sshd.log_text()
    );
    assert!(start.elapsed() < Duration::from_secs(60));
}

#[tokio::test]
async fn a_stalled_server_times_out() {
    init_tracing();
    let k = key();
    let sshd = sshd_with(&k, SshdOptions::default());
    let proxy = FaultProxy::start(sshd.addr()).await;
    let mut o = opts(proxy.addr, &k, pinned(&sshd));
    o.keepalive = Some(Duration::from_millis(500));
    o.sftp_request_timeout = Duration::from_secs(2);
    o.login_timeout = Duration::from_secs(3);
    o.attempt_timeout = Duration::from_secs(2);
    let t = SshTransport::connect(o).await.unwrap();
    proxy.stall.store(true, Ordering::SeqCst);
    let start = Instant::now();
    let e = t
        .upload(vec![Upload {
            source: UploadSource::Bytes(vec![1u8; 1 << 20]),
            remote: format!("{}/stalled", sshd.home().display()),
            mode: None,
            verify_sha256: false,
        }])
        .await
        .err()
        .unwrap();
    assert!(
        matches!(
            e,
            TransportError::Timeout { .. } | TransportError::Disconnected { .. }
        ),
        "{e:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    let mut req = opsbake_core::transport::ExecRequest::new("true");
    req.timeout = Some(Duration::from_secs(1));
    let e = t
        .exec(req, Collected::default().sink())
        .await
        .err()
        .unwrap();
    assert!(
        matches!(
            e,
            TransportError::Timeout { .. } | TransportError::Disconnected { .. }
        ),
        "{e:?}"
    );
}

/// The tar stream's check: a `sha256sum -c` that reports a difference (a
/// stand-in for corruption in transit) fails the upload naming the file.
#[tokio::test]
async fn sha256_mismatch_in_the_tar_stream_is_reported() {
    let k = key();
    let sshd = sshd_with(&k, SshdOptions::default());
    let t = connect(&sshd, &k).await;
    let home = sshd.home().to_str().unwrap().to_string();
    std::fs::create_dir_all(format!("{home}/bin")).unwrap();
    write(
        Path::new(&format!("{home}/bin/sha256sum")),
        b"#!/bin/sh\nwhile read h p; do echo \"$p: FAILED\"; done < \"$2\"; exit 1\n",
        0o755,
    );
    write(
        Path::new(&format!("{home}/.bashrc")),
        b"PATH=$HOME/bin:$PATH\n",
        0o644,
    );
    let e = t
        .upload(vec![
            Upload {
                source: UploadSource::Bytes(b"hello".to_vec()),
                remote: format!("{home}/f"),
                mode: None,
                verify_sha256: true,
            },
            Upload {
                source: UploadSource::Bytes(b"world".to_vec()),
                remote: format!("{home}/g"),
                mode: None,
                verify_sha256: true,
            },
        ])
        .await;
    match e {
        Err(TransportError::Verify {
            what,
            expected,
            actual,
            path,
            ..
        }) => {
            assert_eq!(what, "sha256");
            assert_eq!(path, format!("{home}/f"));
            assert_eq!(expected, hex::encode(Sha256::digest(b"hello")));
            assert!(actual.contains("FAILED"), "{actual}");
        }
        other => panic!("{other:?}"),
    }
}
