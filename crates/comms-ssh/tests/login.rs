//! Logging in to a real, hardened OpenSSH sshd.

mod common;

use std::time::{Duration, Instant};

use common::*;
use opsbake_comms_ssh::{
    Auth, HostKeyPolicy, HostKeyVerifier, KeyKind, KeyPair, PasswordGuard, SshTransport,
};
use opsbake_core::secret::Secret;
use opsbake_core::transport::{Transport, TransportError};
use opsbake_test_support::sshd::{SshdOptions, DEFAULT_PASSWORD};

#[tokio::test]
async fn login_with_ephemeral_ed25519_key_pinned_host_key() {
    init_tracing();
    let k = key();
    let sshd = sshd_with(&k, SshdOptions::default());
    let t = SshTransport::connect(opts(sshd.addr(), &k, pinned(&sshd)))
        .await
        .unwrap();
    assert_eq!(whoami(&t).await, "vcap");
    let r = t.login_report();
    assert_eq!(r.attempts, 1);
    assert!(r.host_key.starts_with("SHA256:"), "{r:?}");
    assert!(t.ping().await);
    t.close().await.unwrap();
    assert_eq!(
        sshd.log_count("Accepted publickey for vcap"),
        1,
        "{}",
        sshd.log_text()
    );
    assert_eq!(sshd.log_count("Failed"), 0, "{}", sshd.log_text());
}

#[tokio::test]
async fn login_with_rsa_key() {
    let k = KeyPair::generate(KeyKind::Rsa(2048), "opsbake-rsa").unwrap();
    let sshd = sshd_with(&k, SshdOptions::default());
    let t = SshTransport::connect(opts(sshd.addr(), &k, pinned(&sshd)))
        .await
        .unwrap();
    assert_eq!(whoami(&t).await, "vcap");
    assert!(
        sshd.log_text().contains("Accepted publickey for vcap"),
        "{}",
        sshd.log_text()
    );
    assert!(
        sshd.log_text().contains("RSA SHA256:"),
        "{}",
        sshd.log_text()
    );
}

/// A key login sends the signed request at once, right behind the service
/// request (our russh patch, vendor/README.md): sshd sees no unsigned query
/// for the key first, for an ed25519 and an RSA key alike, and the login
/// works.
#[tokio::test]
async fn a_key_login_sends_the_signed_request_without_a_probe() {
    init_tracing();
    for k in [
        key(),
        KeyPair::generate(KeyKind::Rsa(2048), "opsbake-rsa").unwrap(),
    ] {
        let sshd = sshd_with(
            &k,
            SshdOptions {
                extra_config: vec!["LogLevel DEBUG2".into()],
                ..SshdOptions::default()
            },
        );
        let t = SshTransport::connect(opts(sshd.addr(), &k, pinned(&sshd)))
            .await
            .unwrap();
        assert_eq!(whoami(&t).await, "vcap");
        let log = sshd.log_text();
        assert_eq!(sshd.log_count("attempting public key"), 1, "{log}");
        assert_eq!(sshd.log_count("querying public key"), 0, "{log}");
    }
}

#[tokio::test]
async fn restricted_algorithms_negotiate() {
    let k = key();
    for (cipher, mac, hk) in [
        ("aes256-gcm@openssh.com", "hmac-sha2-512", "ssh-ed25519"),
        (
            "aes128-gcm@openssh.com",
            "hmac-sha2-256",
            "ecdsa-sha2-nistp256",
        ),
        (
            "aes256-ctr",
            "hmac-sha2-512-etm@openssh.com",
            "rsa-sha2-512",
        ),
        (
            "aes192-ctr",
            "hmac-sha2-256-etm@openssh.com",
            "rsa-sha2-256",
        ),
        ("aes128-ctr", "hmac-sha2-512", "ssh-ed25519"),
        ("aes256-ctr", "hmac-sha2-256", "ecdsa-sha2-nistp256"),
    ] {
        {
            let sshd = sshd_with(
                &k,
                SshdOptions {
                    extra_config: vec![
                        format!("Ciphers {cipher}"),
                        format!("MACs {mac}"),
                        format!("HostKeyAlgorithms {hk}"),
                        "LogLevel DEBUG1".into(),
                    ],
                    ..Default::default()
                },
            );
            let t = SshTransport::connect(opts(sshd.addr(), &k, pinned(&sshd)))
                .await
                .unwrap_or_else(|e| panic!("{cipher}/{mac}/{hk}: {e}"));
            assert_eq!(whoami(&t).await, "vcap");
            t.close().await.unwrap();
            let log = sshd.log_text();
            assert!(
                log.contains(&format!("cipher: {cipher}")),
                "{cipher}: {log}"
            );
            if !cipher.contains("gcm") {
                assert!(log.contains(&format!("MAC: {mac}")), "{mac}: {log}");
            }
            assert!(
                log.contains(&format!("host key algorithm: {hk}")),
                "{hk}: {log}"
            );
        }
    }
}

#[tokio::test]
async fn wait_for_login_retries_until_the_key_is_installed_without_hitting_max_auth_tries() {
    init_tracing();
    let k = key();
    let other = key();
    // The VM is up but the agent has not written our key yet.
    let sshd = sshd_with(&other, SshdOptions::default());
    sshd.set_authorized_keys(&[other.public_openssh().to_string()])
        .unwrap();
    let o = opts(sshd.addr(), &k, pinned(&sshd));
    let start = Instant::now();
    let login = tokio::spawn(SshTransport::connect(o));
    // The key arrives while the client keeps trying.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    sshd.set_authorized_keys(&[k.public_openssh().to_string()])
        .unwrap();
    let t = login.await.unwrap().unwrap();
    let r = t.login_report();
    assert!(r.attempts >= 4, "first retries come fast: {r:?}");
    assert!(
        r.elapsed >= Duration::from_millis(1000) && start.elapsed() < Duration::from_secs(10),
        "{r:?}"
    );
    assert_eq!(whoami(&t).await, "vcap");
    t.close().await.unwrap();
    let log = sshd.log_text();
    // Every attempt was one connection offering exactly one key: one failure
    // per connection at most, never the MaxAuthTries cut-off.
    let failed = sshd.log_count("Failed publickey for vcap");
    let accepted = sshd.log_count("Accepted publickey for vcap");
    assert_eq!(accepted, 1, "{log}");
    assert!(
        failed >= 1 && (failed as u32) < r.attempts,
        "failed {failed} attempts {}: {log}",
        r.attempts
    );
    assert!(!log.contains("Too many authentication failures"), "{log}");
    assert!(
        !log.contains("maximum authentication attempts exceeded"),
        "{log}"
    );
    // Per connection (sshd logs the pid in brackets), at most one failure.
    let mut per_pid = std::collections::HashMap::<String, usize>::new();
    for l in log.lines().filter(|l| l.contains("Failed ")) {
        let pid = l
            .split('[')
            .nth(1)
            .and_then(|x| x.split(']').next())
            .unwrap_or(l)
            .to_string();
        *per_pid.entry(pid).or_default() += 1;
    }
    assert!(per_pid.values().all(|&n| n <= 1), "{per_pid:?}\n{log}");
}

#[tokio::test]
async fn wait_for_login_reports_refused_with_fast_first_retries() {
    // A port nobody listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let k = key();
    let mut o = opts(
        addr,
        &k,
        HostKeyVerifier::new(HostKeyPolicy::TrustOnFirstUse),
    );
    o.login_timeout = Duration::from_millis(1000);
    let start = Instant::now();
    let e = SshTransport::connect(o).await.err().unwrap();
    let msg = e.to_string();
    assert!(matches!(e, TransportError::Timeout { .. }), "{e:?}");
    assert!(msg.contains("connection refused"), "{msg}");
    // 100 ms +- 25%, then x1.6: at least 4 attempts in one second.
    let attempts: u32 = msg
        .split('(')
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(attempts >= 4, "{msg}");
    assert!(start.elapsed() < Duration::from_millis(1500));
}

#[tokio::test]
async fn wait_for_login_reports_a_missing_banner() {
    // Accepts TCP but never speaks SSH.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let _srv = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    let k = key();
    let mut o = opts(
        addr,
        &k,
        HostKeyVerifier::new(HostKeyPolicy::TrustOnFirstUse),
    );
    o.login_timeout = Duration::from_millis(1500);
    o.attempt_timeout = Duration::from_millis(500);
    let e = SshTransport::connect(o).await.err().unwrap();
    assert!(matches!(e, TransportError::Timeout { .. }), "{e:?}");
    assert!(e.to_string().contains("timeout"), "{e}");
}

#[tokio::test]
async fn auth_rejected_is_reported_after_the_timeout() {
    let k = key();
    let other = key();
    let sshd = sshd_with(&other, SshdOptions::default());
    let mut o = opts(sshd.addr(), &k, pinned(&sshd));
    o.login_timeout = Duration::from_secs(3);
    let e = SshTransport::connect(o).await.err().unwrap();
    assert!(matches!(e, TransportError::Auth { .. }), "{e:?}");
    assert!(e.to_string().contains(k.fingerprint()), "{e}");
    assert!(!sshd.log_text().contains("Too many authentication failures"));
}

#[tokio::test]
async fn password_login_is_tried_once_per_build() {
    let k = key();
    let sshd = sshd_with(
        &k,
        SshdOptions {
            password_auth: true,
            ..Default::default()
        },
    );
    // Right password: logs in.
    let guard = PasswordGuard::new();
    let mut o = opts(sshd.addr(), &k, pinned(&sshd));
    o.auth = Auth::Password {
        password: Secret::new(DEFAULT_PASSWORD.to_string()),
        guard: guard.clone(),
    };
    let t = SshTransport::connect(o).await.unwrap();
    assert_eq!(whoami(&t).await, "vcap");
    assert_eq!(guard.attempts(), 1);
    assert_eq!(
        sshd.log_count("Accepted password for vcap"),
        1,
        "{}",
        sshd.log_text()
    );

    // Wrong password: one attempt, then the build never sends it again,
    // even on a fresh connection with a long login timeout.
    let guard = PasswordGuard::new();
    let mut o = opts(sshd.addr(), &k, pinned(&sshd));
    o.auth = Auth::Password {
        password: Secret::new("wrong-password".to_string()),
        guard: guard.clone(),
    };
    let e = SshTransport::connect(o.clone()).await.err().unwrap();
    assert!(matches!(e, TransportError::Auth { .. }), "{e:?}");
    assert!(!e.to_string().contains("wrong-password"));
    assert!(guard.is_spent());
    let start = Instant::now();
    let e2 = SshTransport::connect(o).await.err().unwrap();
    assert!(e2.to_string().contains("not sending it again"), "{e2}");
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(guard.attempts(), 1);
    assert_eq!(
        sshd.log_count("Failed password for vcap"),
        1,
        "{}",
        sshd.log_text()
    );
    assert!(!sshd.log_text().contains("wrong-password"));
}

#[tokio::test]
async fn password_is_not_sent_where_password_auth_is_off() {
    let k = key();
    let sshd = sshd_with(&k, SshdOptions::default());
    let guard = PasswordGuard::new();
    let mut o = opts(sshd.addr(), &k, pinned(&sshd));
    o.auth = Auth::Password {
        password: Secret::new(DEFAULT_PASSWORD.to_string()),
        guard: guard.clone(),
    };
    let e = SshTransport::connect(o).await.err().unwrap();
    assert!(e.to_string().contains("does not offer password"), "{e}");
    assert_eq!(guard.attempts(), 0);
    assert_eq!(sshd.log_count("Failed"), 0, "{}", sshd.log_text());
}

#[tokio::test]
async fn keyboard_interactive_login() {
    let k = key();
    let sshd = sshd_with(
        &k,
        SshdOptions {
            kbd_interactive: true,
            ..Default::default()
        },
    );
    let guard = PasswordGuard::new();
    let mut o = opts(sshd.addr(), &k, pinned(&sshd));
    o.auth = Auth::KeyboardInteractive {
        password: Secret::new(DEFAULT_PASSWORD.to_string()),
        guard: guard.clone(),
    };
    let t = SshTransport::connect(o).await.unwrap();
    assert_eq!(whoami(&t).await, "vcap");
    assert_eq!(guard.attempts(), 1);
    assert!(
        sshd.log_text()
            .contains("Accepted keyboard-interactive/pam for vcap"),
        "{}",
        sshd.log_text()
    );
}

#[tokio::test]
async fn wrong_pinned_host_key_is_refused_before_auth() {
    let k = key();
    let sshd = sshd_with(&k, SshdOptions::default());
    let stranger = key();
    let hk = HostKeyVerifier::new(HostKeyPolicy::Pin(vec![
        stranger.public_openssh().to_string(),
        stranger.fingerprint().to_string(),
    ]));
    let e = SshTransport::connect(opts(sshd.addr(), &k, hk))
        .await
        .err()
        .unwrap();
    let TransportError::HostKey { reason, .. } = &e else {
        panic!("{e:?}")
    };
    assert!(reason.contains("SHA256:"), "{reason}");
    assert_eq!(sshd.log_count("Accepted"), 0, "{}", sshd.log_text());
}

#[tokio::test]
async fn pin_by_fingerprint() {
    let k = key();
    let sshd = sshd_with(&k, SshdOptions::default());
    let ed = sshd.host_ed25519_key().unwrap();
    let fp = russh::keys::PublicKey::from_openssh(ed)
        .unwrap()
        .fingerprint(russh::keys::HashAlg::Sha256)
        .to_string();
    let hk = HostKeyVerifier::new(HostKeyPolicy::Pin(vec![fp]));
    let t = SshTransport::connect(opts(sshd.addr(), &k, hk))
        .await
        .unwrap();
    assert_eq!(whoami(&t).await, "vcap");
}

#[tokio::test]
async fn tofu_then_pin_across_reconnect_and_a_replaced_server_is_refused() {
    init_tracing();
    let k = key();
    let mut a = sshd_with(&k, SshdOptions::default());
    let b = sshd_with(&k, SshdOptions::default());
    let proxy = FaultProxy::start(a.addr()).await;
    let hk = HostKeyVerifier::new(HostKeyPolicy::TrustOnFirstUse);
    let t = SshTransport::connect(opts(proxy.addr, &k, hk.clone()))
        .await
        .unwrap();
    let learned = hk.learned().unwrap();
    // A reboot: same server, same key.
    a.restart().unwrap();
    t.reconnect(Duration::from_secs(10)).await.unwrap();
    assert_eq!(whoami(&t).await, "vcap");
    assert_eq!(hk.learned().unwrap(), learned);
    // Now a different machine answers on the same address.
    *proxy.upstream.lock().unwrap() = b.addr();
    let e = t.reconnect(Duration::from_secs(5)).await.err().unwrap();
    assert!(matches!(e, TransportError::HostKey { .. }), "{e:?}");
    assert!(e.to_string().contains("pinned"), "{e}");
    assert_eq!(b.log_count("Accepted"), 0, "{}", b.log_text());
}

#[tokio::test]
async fn insecure_policy_accepts_with_a_warning() {
    let k = key();
    let sshd = sshd_with(&k, SshdOptions::default());
    let hk = HostKeyVerifier::new(HostKeyPolicy::Insecure);
    let t = SshTransport::connect(opts(sshd.addr(), &k, hk))
        .await
        .unwrap();
    assert_eq!(whoami(&t).await, "vcap");
}

#[tokio::test]
async fn bastion_jump_host() {
    let k = key();
    let bastion = sshd_with(
        &k,
        SshdOptions {
            extra_config: vec!["LogLevel DEBUG1".into()],
            ..Default::default()
        },
    );
    let inner = sshd_with(&k, SshdOptions::default());
    let mut o = opts(inner.addr(), &k, pinned(&inner));
    o.jump = Some(Box::new(opts(bastion.addr(), &k, pinned(&bastion))));
    let t = SshTransport::connect(o).await.unwrap();
    assert_eq!(whoami(&t).await, "vcap");
    assert_eq!(inner.log_count("Accepted publickey"), 1);
    assert_eq!(bastion.log_count("Accepted publickey"), 1);
    let needle = format!("target 127.0.0.1 port {}", inner.port());
    assert!(
        bastion.log_text().contains(&needle),
        "bastion did not forward: {}",
        bastion.log_text()
    );
}

/// A port forward in front of a booting VM (QEMU user networking,
/// VirtualBox NAT): it accepts TCP connections at once but holds them
/// silently until the guest's sshd listens. Here: held (never answered)
/// until `up_after`, forwarded to the real sshd from then on.
#[allow(clippy::unwrap_used)]
async fn silent_forward(to: std::net::SocketAddr, up_after: Duration) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let up_at = Instant::now() + up_after;
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((mut c, _)) = l.accept().await else {
                return;
            };
            if Instant::now() < up_at {
                held.push(c); // open, silent, never closed by us
                continue;
            }
            tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(to).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut c, &mut s).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_silently_held_connection_is_given_up_after_the_handshake_timeout() {
    let k = key();
    let sshd = sshd_with(&k, SshdOptions::default());
    let fwd = silent_forward(sshd.addr(), Duration::from_secs(2)).await;
    let mut o = opts(fwd, &k, pinned(&sshd));
    o.login_timeout = Duration::from_secs(60);
    o.attempt_timeout = Duration::from_secs(20);
    o.handshake_timeout = Duration::from_secs(1);
    let t0 = Instant::now();
    let t = SshTransport::connect(o).await.unwrap();
    let took = t0.elapsed();
    assert_eq!(whoami(&t).await, "vcap");
    let r = t.login_report();
    // the first attempts were held; one of them did not cost the 20 s
    // attempt timeout
    assert!(r.attempts >= 2, "{r:?}");
    assert!(
        took < Duration::from_secs(10),
        "login took {took:?}: a held connection was waited out"
    );
}

#[tokio::test]
async fn a_link_slower_than_the_handshake_timeout_still_logs_in() {
    // 1.5 s each way: sshd's banner arrives 1.5 s after the connect, later
    // than the 1 s handshake timeout; the limit grows until it fits
    let k = key();
    let sshd = sshd_with(&k, SshdOptions::default());
    let proxy = opsbake_test_support::delay_proxy::DelayProxy::start(
        sshd.addr(),
        Duration::from_millis(1500),
    )
    .unwrap();
    let mut o = opts(proxy.addr(), &k, pinned(&sshd));
    o.login_timeout = Duration::from_secs(120);
    o.attempt_timeout = Duration::from_secs(60);
    o.handshake_timeout = Duration::from_secs(1);
    let t = SshTransport::connect(o).await.unwrap();
    assert_eq!(whoami(&t).await, "vcap");
    assert!(t.login_report().attempts >= 2, "{:?}", t.login_report());
}

/// The first login follows the banner, not a handshake timeout: the
/// forward holds every connection made before the server is up (as QEMU's
/// and VirtualBox's do while the guest boots) and the handshake timeout is
/// longer than the whole login timeout, so only an attempt started after
/// the server came up can log in in time.
#[tokio::test]
async fn the_first_login_follows_the_banner_not_the_handshake_timeout() {
    let k = key();
    let sshd = sshd_with(&k, SshdOptions::default());
    let fwd = silent_forward(sshd.addr(), Duration::from_millis(1500)).await;
    let mut o = opts(fwd, &k, pinned(&sshd));
    o.login_timeout = Duration::from_secs(30);
    o.attempt_timeout = Duration::from_secs(120);
    o.handshake_timeout = Duration::from_secs(120);
    let t = SshTransport::connect(o).await.unwrap();
    assert_eq!(whoami(&t).await, "vcap");
    let r = t.login_report();
    assert!(r.attempts >= 2, "{r:?}");
}

/// vSphere's rule: the build's key first; once it has been refused for
/// `after` (the stemcell did not take it from its settings) the password,
/// once, on a server that offers it. Never the password while the key works.
#[tokio::test]
async fn a_refused_key_falls_back_to_the_password_once() {
    let k = key();
    let other = key();
    let sshd = sshd_with(
        &other,
        SshdOptions {
            password_auth: true,
            ..Default::default()
        },
    );
    let fallback = |password: &str, guard: &std::sync::Arc<PasswordGuard>| Auth::KeyThenPassword {
        key: k.clone(),
        password: Secret::new(password.to_string()),
        guard: guard.clone(),
        after: Duration::from_millis(800),
    };

    // The key is accepted: the password is never sent.
    sshd.set_authorized_keys(&[k.public_openssh().to_string()])
        .unwrap();
    let guard = PasswordGuard::new();
    let mut o = opts(sshd.addr(), &k, pinned(&sshd));
    o.auth = fallback(DEFAULT_PASSWORD, &guard);
    let t = SshTransport::connect(o).await.unwrap();
    assert_eq!(whoami(&t).await, "vcap");
    t.close().await.unwrap();
    assert_eq!(guard.attempts(), 0);
    assert_eq!(sshd.log_count("Accepted password for vcap"), 0);

    // The key is refused: retried for `after`, then the password, once.
    sshd.set_authorized_keys(&[other.public_openssh().to_string()])
        .unwrap();
    let guard = PasswordGuard::new();
    let mut o = opts(sshd.addr(), &k, pinned(&sshd));
    o.auth = fallback(DEFAULT_PASSWORD, &guard);
    let t = SshTransport::connect(o).await.unwrap();
    let r = t.login_report();
    assert_eq!(whoami(&t).await, "vcap");
    t.close().await.unwrap();
    assert_eq!(guard.attempts(), 1);
    assert!(r.elapsed >= Duration::from_millis(800), "{r:?}");
    assert!(r.attempts >= 2, "the key was retried first: {r:?}");
    let log = sshd.log_text();
    assert_eq!(sshd.log_count("Accepted password for vcap"), 1, "{log}");
    assert!(sshd.log_count("Failed publickey for vcap") >= 2, "{log}");
    assert!(!log.contains("Too many authentication failures"), "{log}");

    // A wrong password: sent once, then never again in this build.
    let guard = PasswordGuard::new();
    let mut o = opts(sshd.addr(), &k, pinned(&sshd));
    o.auth = fallback("wrong-password", &guard);
    let e = SshTransport::connect(o.clone()).await.err().unwrap();
    assert!(matches!(e, TransportError::Auth { .. }), "{e:?}");
    assert!(!e.to_string().contains("wrong-password"), "{e}");
    assert!(guard.is_spent());
    let e2 = SshTransport::connect(o).await.err().unwrap();
    assert!(e2.to_string().contains("not sending it again"), "{e2}");
    assert_eq!(guard.attempts(), 1);
    assert_eq!(sshd.log_count("Failed password for vcap"), 1);
}

/// Without password authentication on the server the fallback never sends
/// the password: the key's refusal is reported at the login timeout.
#[tokio::test]
async fn the_fallback_sends_no_password_where_password_auth_is_off() {
    let k = key();
    let other = key();
    let sshd = sshd_with(&other, SshdOptions::default());
    let guard = PasswordGuard::new();
    let mut o = opts(sshd.addr(), &k, pinned(&sshd));
    // long enough for a key refusal to arrive on a loaded machine (the
    // error is the refusal, reported at this timeout)
    o.login_timeout = Duration::from_secs(8);
    o.auth = Auth::KeyThenPassword {
        key: k.clone(),
        password: Secret::new(DEFAULT_PASSWORD.to_string()),
        guard: guard.clone(),
        after: Duration::from_millis(200),
    };
    let e = SshTransport::connect(o).await.err().unwrap();
    assert!(matches!(e, TransportError::Auth { .. }), "{e:?}");
    assert!(e.to_string().contains(k.fingerprint()), "{e}");
    assert_eq!(guard.attempts(), 0);
    assert_eq!(sshd.log_count("password"), 0, "{}", sshd.log_text());
}
