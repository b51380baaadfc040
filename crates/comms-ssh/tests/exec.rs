//! Running commands on a real, hardened OpenSSH sshd.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use opsbake_comms_ssh::SshTransport;
use opsbake_core::secret::Secret;
use opsbake_core::transport::{ExecRequest, ExitStatus, Stream, Transport, TransportError};
use opsbake_test_support::sshd::{Sshd, SshdOptions, DEFAULT_PASSWORD};

async fn setup(o: SshdOptions) -> (Sshd, SshTransport) {
    init_tracing();
    let k = key();
    let sshd = sshd_with(&k, o);
    let t = SshTransport::connect(opts(sshd.addr(), &k, pinned(&sshd)))
        .await
        .unwrap();
    (sshd, t)
}

async fn run(
    t: &SshTransport,
    req: ExecRequest,
) -> (Result<ExitStatus, TransportError>, Collected) {
    let c = Collected::default();
    let r = t.exec(req, c.sink()).await;
    (r, c)
}

#[tokio::test]
async fn exit_codes_signals_and_separate_streams() {
    let (_sshd, t) = setup(SshdOptions::default()).await;
    let (r, c) = run(
        &t,
        ExecRequest::new("echo out1; echo err1 >&2; printf 'no-newline'; exit 3"),
    )
    .await;
    assert_eq!(r.unwrap(), ExitStatus::Code(3));
    assert_eq!(c.lines(Stream::Stdout), ["out1", "no-newline"]);
    assert_eq!(c.lines(Stream::Stderr), ["err1"]);

    let (r, _) = run(&t, ExecRequest::new("kill -KILL $$")).await;
    let st = r.unwrap();
    assert!(
        matches!(&st, ExitStatus::Signal { signal, .. } if signal == "KILL"),
        "{st:?}"
    );
    assert!(!st.success());

    // Many lines, streamed in order.
    let (r, c) = run(&t, ExecRequest::new("seq 1 20000")).await;
    assert!(r.unwrap().success());
    let out = c.lines(Stream::Stdout);
    assert_eq!(out.len(), 20000);
    assert_eq!(out[19999], "20000");
}

#[tokio::test]
async fn environment_keeps_quotes_and_spaces() {
    let (_sshd, t) = setup(SshdOptions::default()).await;
    let mut env = BTreeMap::new();
    env.insert(
        "GREETING".to_string(),
        "it's \"quoted\"  with  spaces $HOME `x`".to_string(),
    );
    env.insert("EMPTY".to_string(), String::new());
    let mut req = ExecRequest::new("printf '%s|%s|' \"$GREETING\" \"$EMPTY\"");
    req.env = env;
    let (r, c) = run(&t, req).await;
    assert!(r.unwrap().success());
    assert_eq!(
        c.lines(Stream::Stdout),
        ["it's \"quoted\"  with  spaces $HOME `x`||"]
    );
    let mut bad = ExecRequest::new("true");
    bad.env.insert("A;B".into(), "x".into());
    assert!(run(&t, bad).await.0.is_err());
}

#[tokio::test]
async fn timeout_kills_the_command() {
    let (_sshd, t) = setup(SshdOptions::default()).await;
    let mut req = ExecRequest::new("echo started; sleep 30; echo never");
    req.timeout = Some(Duration::from_millis(700));
    let start = Instant::now();
    let (r, c) = run(&t, req).await;
    let e = r.err().unwrap();
    assert!(matches!(e, TransportError::Timeout { .. }), "{e:?}");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(c.lines(Stream::Stdout), ["started"]);
    // The connection is still usable.
    let (r, _) = run(&t, ExecRequest::new("true")).await;
    assert!(r.unwrap().success());
}

#[tokio::test]
async fn pty_merges_streams_and_is_a_terminal() {
    let (_sshd, t) = setup(SshdOptions::default()).await;
    let mut req = ExecRequest::new("tty; echo to-stderr >&2; test -t 1");
    req.pty = true;
    let (r, c) = run(&t, req).await;
    assert_eq!(r.unwrap(), ExitStatus::Code(0));
    let out = c.lines(Stream::Stdout);
    assert!(out[0].starts_with("/dev/pts/"), "{out:?}");
    assert!(out.contains(&"to-stderr".to_string()), "{out:?}");
    assert!(c.lines(Stream::Stderr).is_empty());
    let (r, _) = run(&t, ExecRequest::new("test -t 1")).await;
    assert_eq!(r.unwrap(), ExitStatus::Code(1));
}

#[tokio::test]
async fn sudo_password_goes_through_stdin_only() {
    let (sshd, t) = setup(SshdOptions {
        sudo_with_password: true,
        ..Default::default()
    })
    .await;
    let mut req = ExecRequest::new("sudo -S -p '' id -u");
    req.stdin = Some(Secret::new(format!("{DEFAULT_PASSWORD}\n").into_bytes()));
    let (r, c) = run(&t, req).await;
    assert!(r.unwrap().success(), "{:?}", c.0.lock().unwrap());
    assert_eq!(c.lines(Stream::Stdout), ["0"]);
    // Not in argv of anything, not in the output, not in sshd's log.
    let all = format!("{:?}", c.0.lock().unwrap());
    assert!(!all.contains(DEFAULT_PASSWORD));
    assert!(!sshd.log_text().contains(DEFAULT_PASSWORD));
    // Without the password sudo fails (it asks and gets EOF).
    let (r, _) = run(&t, ExecRequest::new("sudo -S -p '' id -u")).await;
    assert!(!r.unwrap().success());
}

#[tokio::test]
async fn a_dropped_connection_is_not_a_failed_command() {
    let (_sshd, t) = setup(SshdOptions::default()).await;
    // Kill this session's sshd process: the connection vanishes mid-command.
    let (r, c) = run(
        &t,
        ExecRequest::new("echo before; kill -KILL $PPID; sleep 5"),
    )
    .await;
    let e = r
        .err()
        .unwrap_or_else(|| panic!("no error: {:?}", c.0.lock().unwrap()));
    assert!(e.is_disconnect(), "{e:?}");
    // ("before" may or may not have been flushed before sshd died.)
}

#[tokio::test]
async fn reconnect_after_reboot_keeps_the_host_key() {
    let k = key();
    let mut sshd = sshd_with(&k, SshdOptions::default());
    let hk =
        opsbake_comms_ssh::HostKeyVerifier::new(opsbake_comms_ssh::HostKeyPolicy::TrustOnFirstUse);
    let t = SshTransport::connect(opts(sshd.addr(), &k, hk.clone()))
        .await
        .unwrap();
    let first = hk.learned().unwrap();
    // expect_disconnect: the command takes the machine down.
    let (r, _) = run(&t, ExecRequest::new("kill -KILL $PPID")).await;
    assert!(r.err().unwrap().is_disconnect());
    sshd.restart().unwrap();
    let start = Instant::now();
    t.reconnect(Duration::from_secs(10)).await.unwrap();
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(whoami(&t).await, "vcap");
    assert_eq!(hk.learned().unwrap(), first);
    assert_eq!(
        sshd.log_count("Accepted publickey for vcap"),
        2,
        "{}",
        sshd.log_text()
    );
}
