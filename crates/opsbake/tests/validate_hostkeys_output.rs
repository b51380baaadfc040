//! Host keys as users give them and what the CLI prints, through `opsbake
//! build` with the `ssh` builder against the test sshd: a refused key is
//! reported once and without colour codes on a pipe (also with
//! OPSBAKE_LOG=debug), trust-on-first-use prints the fingerprint it pinned,
//! and pins read from a known_hosts file (`[host]:port` entry) are used.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use opsbake_comms_ssh::{KeyKind, KeyPair};
use opsbake_test_support::sshd::{skip_peers, Sshd, SshdError, SshdOptions};

const BIN: &str = env!("CARGO_BIN_EXE_opsbake");

fn sshd(client: &KeyPair) -> Option<Sshd> {
    let mut o = SshdOptions::default();
    o.authorized_keys.push(client.public_openssh().to_string());
    match Sshd::start(o) {
        Ok(s) => Some(s),
        Err(e @ SshdError::Missing { .. }) if skip_peers() => {
            eprintln!("skipped: {e}");
            None
        }
        Err(e) => panic!("test sshd: {e}"),
    }
}

fn template(dir: &Path, port: u16, host_key: &str) {
    std::fs::write(
        dir.join("t.yml"),
        format!(
            "name: t\nbuilds:\n  ssh:\n    ssh:\n      host: 127.0.0.1\n      port: {port}\n      private_key_file: id\n      host_key: {host_key}\n      login_timeout: 20s\n    options: {{allow_loopback: true}}\nprovision:\n  - type: shell\n    inline: [\"echo provisioned\"]\n    sudo: false\noutputs: {{directory: out}}\n"
        ),
    )
    .unwrap();
}

fn build(dir: &Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let mut c = Command::new(BIN);
    c.current_dir(dir)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--no-progress", "build", "t.yml"])
        .env_remove("OPSBAKE_LOG")
        .env_remove("NO_COLOR");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn fingerprint(dir: &Path, key_line: &str) -> String {
    let f = dir.join("hostkey.pub");
    std::fs::write(&f, format!("{key_line}\n")).unwrap();
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(&f)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("ssh-keygen -lf: {text}"))
        .to_string()
}

#[test]
fn host_key_refusal_is_printed_once_without_colour_and_tofu_prints_the_pin() {
    let client = KeyPair::generate(KeyKind::Ed25519, "opsbake-test").unwrap();
    let Some(sshd) = sshd(&client) else { return };
    let d = tempfile::tempdir().unwrap();
    client.write_private_key(&d.path().join("id")).unwrap();
    let host_key = sshd.host_ed25519_key().unwrap().to_string();

    // A valid key that is not the server's: refused at connect, reported once.
    let other = KeyPair::generate(KeyKind::Ed25519, "other").unwrap();
    template(
        d.path(),
        sshd.port(),
        &format!("{{pin: [\"{}\"]}}", other.public_openssh()),
    );
    for env in [vec![], vec![("OPSBAKE_LOG", "debug")]] {
        let (code, _out, err) = build(d.path(), &env);
        assert_eq!(code, 1, "{err}");
        assert!(
            !err.contains('\u{1b}'),
            "colour codes on a pipe ({env:?}):\n{err}"
        );
        let n = err.matches("not among the 1 pinned key(s)").count();
        if env.is_empty() {
            assert_eq!(n, 1, "the refusal is printed {n} times:\n{err}");
        } else {
            assert!(n >= 1, "{err}");
            assert!(
                err.contains("DEBUG"),
                "no debug lines with OPSBAKE_LOG=debug:\n{err}"
            );
        }
    }

    // Default trust-on-first-use: the pinned fingerprint is printed.
    template(d.path(), sshd.port(), "tofu");
    let (code, out, err) = build(d.path(), &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    let fp = fingerprint(d.path(), &host_key);
    assert!(
        err.contains(&format!("host key ssh-ed25519 {fp} trusted on first use")),
        "{fp} not printed:\n{err}"
    );

    // Pins from an OpenSSH known_hosts file with a `[host]:port` entry.
    std::fs::write(
        d.path().join("known_hosts"),
        format!(
            "# written by ssh\nexample.org {}\n[127.0.0.1]:{} {host_key}\n",
            other.public_openssh(),
            sshd.port()
        ),
    )
    .unwrap();
    template(d.path(), sshd.port(), "{known_hosts: known_hosts}");
    let (code, out, err) = build(d.path(), &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!err.contains("trusted on first use"), "{err}");
}
