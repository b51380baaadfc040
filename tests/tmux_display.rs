//! The terminal display of `opsbake build --iaas aws,gcp,azure`, for real:
//! the command runs in a tmux pane of a fixed size (its own tmux server on
//! its own socket), the pane is captured while the builds run and at the
//! end. Asserted: one live line per build (its IaaS, current step, elapsed
//! time) while they run, colour on the terminal, the builds' lines
//! prefixed above the live lines, and the final summary table (one row per
//! IaaS: succeeded, its artifact, duration, resources created/deleted).
//! The same command without a terminal (stderr to a file) prints no bars
//! and no colour codes, NO_COLOR turns the colour off on the terminal.
//!
//! Fast peers only (moto, the GCE test server + fake-gcs-server, the ARM
//! test server + azurite); the GCE server's operations take 10 polls (about
//! 2 s each) so that the builds last long enough to be seen running.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod aws_support;
mod clouds_support;
mod gcp_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clouds_support::*;

const THREE: [&str; 3] = ["aws", "gcp", "azure"];

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A script that runs `c` as it is (environment, directory, arguments) and
/// then prints `OPSBAKE-EXIT=<code>`.
fn script(c: &Command, dir: &Path, name: &str, env: &[(&str, &str)]) -> PathBuf {
    // the pane is cleared and marked: captures start at the marker, which
    // names the script (the pane's history still holds earlier runs' marks)
    let mut s = format!("#!/bin/sh\nclear\necho OPSBAKE-START-{name}\n");
    for (k, v) in c.get_envs() {
        let k = k.to_string_lossy();
        match v {
            Some(v) => s.push_str(&format!("export {k}={}\n", quote(&v.to_string_lossy()))),
            None => s.push_str(&format!("unset {k}\n")),
        }
    }
    for (k, v) in env {
        s.push_str(&format!("export {k}={}\n", quote(v)));
    }
    if let Some(d) = c.get_current_dir() {
        s.push_str(&format!("cd {}\n", quote(&d.display().to_string())));
    }
    s.push_str(&quote(&c.get_program().to_string_lossy()));
    for a in c.get_args() {
        s.push(' ');
        s.push_str(&quote(&a.to_string_lossy()));
    }
    s.push_str("\necho OPSBAKE-EXIT=$?\n");
    let p = dir.join(name);
    std::fs::write(&p, s).unwrap();
    p
}

/// A tmux server of this test (its own socket), stopped on drop.
struct Tmux {
    sock: PathBuf,
}

impl Tmux {
    fn start(dir: &Path) -> Tmux {
        let t = Tmux {
            sock: dir.join("tmux.sock"),
        };
        let o = t
            .cmd()
            .args([
                "new-session",
                "-d",
                "-s",
                "five",
                "-x",
                "160",
                "-y",
                "48",
                "sh",
            ])
            .env("TERM", "xterm-256color")
            .env_remove("TMUX")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        t
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.sock);
        c
    }

    fn send(&self, line: &str) {
        let o = self
            .cmd()
            .args(["send-keys", "-t", "five", line, "Enter"])
            .output()
            .unwrap();
        assert!(o.status.success());
    }

    /// The pane and its history; `escapes`: with colour escape sequences.
    fn capture(&self, escapes: bool) -> String {
        let mut c = self.cmd();
        // -J: a line the pane wrapped comes back as one
        // -S -: the history too (the run's start marker scrolls into it)
        c.args(["capture-pane", "-p", "-J", "-S", "-", "-t", "five"]);
        if escapes {
            c.arg("-e");
        }
        String::from_utf8_lossy(&c.output().unwrap().stdout).into_owned()
    }

    /// Capture every 100 ms until `OPSBAKE-EXIT=` shows; every capture
    /// of this run (from the script's start marker on).
    fn run(&self, script: &Path, secs: u64) -> Vec<String> {
        self.send(&format!("sh {}", script.display()));
        let name = script.file_name().unwrap_or_default().to_string_lossy();
        // Until the script's own marker shows, the pane still holds the
        // previous run, exit line and all: that is not this run.
        let marker = format!("OPSBAKE-START-{name}\n");
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut shots = Vec::new();
        loop {
            let s = self.capture(true);
            let Some(i) = s.rfind(&marker) else {
                assert!(Instant::now() < deadline, "{marker:?} never showed:\n{s}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            let s = s[i..].to_string();
            let done = s.contains("OPSBAKE-EXIT=");
            shots.push(s);
            if done {
                return shots;
            }
            assert!(
                Instant::now() < deadline,
                "no exit after {secs} s:\n{:?}",
                shots.last()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            if it.peek() == Some(&'[') {
                it.next();
                for d in it.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

const STEPS: [&str; 9] = [
    "starting",
    "validate",
    "base_image",
    "launch",
    "connect",
    "before_provision",
    "after_provision",
    "capture",
    "export",
];

/// The live line of `iaas` (the lowest one: the bars are drawn at the
/// bottom): `<spinner> [iaas] <step>[ done] [<elapsed>]`.
fn live_line<'a>(pane: &'a str, iaas: &str) -> Option<&'a str> {
    let tag = format!("[{iaas}] ");
    pane.lines().rev().find(|l| {
        let t = l.trim();
        let Some(rest) = t.find(&tag).map(|i| &t[i + tag.len()..]) else {
            return false;
        };
        STEPS.iter().any(|s| rest.starts_with(s))
            && t.ends_with("s]")
            && rest.contains(" [")
            && !rest.contains("==>")
    })
}

#[test]
fn three_builds_on_a_terminal_then_without_one() {
    if Command::new("tmux").arg("-V").output().is_err() {
        assert!(
            opsbake_test_support::skip_peers(),
            "tmux missing: run scripts/setup.sh"
        );
        return;
    }
    let Some(c) = Clouds::start(&THREE, PeerOptions { gce_polls: 10 }) else {
        return;
    };
    let extra: [&str; 0] = [];
    let tmux = Tmux::start(c.dir.path());
    let tty = script(
        &c.command(&THREE, false, &extra),
        c.dir.path(),
        "tty.sh",
        &[],
    );
    let shots = tmux.run(&tty, 600);
    let last = strip_ansi(shots.last().unwrap());
    assert!(last.contains("OPSBAKE-EXIT=0"), "{last}");
    // while running: each build's live line, in one capture with at least
    // one other build's
    let plain: Vec<String> = shots.iter().map(|s| strip_ansi(s)).collect();
    for i in THREE {
        assert!(
            plain.iter().any(|s| live_line(s, i).is_some()),
            "no live line of {i} in {} captures; the last:\n{last}",
            plain.len()
        );
    }
    assert!(
        plain
            .iter()
            .any(|s| THREE.iter().filter(|i| live_line(s, i).is_some()).count() >= 2),
        "never two live lines at once"
    );
    // several moments: the live line changed (its step or elapsed time)
    let seen: std::collections::BTreeSet<String> = plain
        .iter()
        .filter_map(|s| live_line(s, "gcp"))
        .map(|l| l.split("[gcp] ").nth(1).unwrap().to_string())
        .collect();
    assert!(seen.len() >= 2, "{seen:?}");
    // colour on the terminal: the prefixes carry escape sequences
    assert!(
        shots
            .iter()
            .any(|s| s.contains("\u{1b}[") && s.contains("[aws]")),
        "no colour on the terminal"
    );
    // the builds' lines above the live lines, prefixed
    assert!(
        plain.iter().any(|s| s.contains("[gcp] ==> launch")),
        "{last}"
    );
    // the final summary
    let table: Vec<&str> = last
        .lines()
        .skip_while(|l| !l.starts_with("IAAS"))
        .collect();
    assert!(!table.is_empty(), "no summary table:\n{last}");
    assert!(table[0].contains("RESULT") && table[0].contains("ARTIFACT"));
    for i in THREE {
        let row: Vec<&str> = table
            .iter()
            .find(|l| l.starts_with(&format!("{i} ")))
            .unwrap_or_else(|| panic!("no {i} row:\n{last}"))
            .split_whitespace()
            .collect();
        assert_eq!(row[1], "succeeded", "{row:?}");
        let created: usize = row[row.len() - 3].parse().unwrap();
        let deleted: usize = row[row.len() - 2].parse().unwrap();
        assert!(created > 0 && deleted > 0 && deleted <= created, "{row:?}");
        assert_eq!(row[row.len() - 1], "0", "{row:?}");
    }
    assert!(last.contains("3 of 3 build(s) succeeded"), "{last}");

    // NO_COLOR on the terminal: live lines still, no colour
    let nc = script(
        &c.command(&["aws"], false, &[]),
        c.dir.path(),
        "nocolor.sh",
        &[("NO_COLOR", "1")],
    );
    let shots = tmux.run(&nc, 300);
    let last = shots.last().unwrap();
    assert!(strip_ansi(last).contains("OPSBAKE-EXIT=0"), "{last}");
    for s in &shots {
        for l in s.lines().filter(|l| l.contains("[aws]")) {
            assert!(!l.contains("\u{1b}[38;5;"), "colour under NO_COLOR: {l:?}");
        }
    }

    // no terminal: plain prefixed lines, no bars, no escape codes
    let out = c
        .command(&THREE, false, &extra)
        .env("OPSBAKE_LOG", "info")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        !err.contains('\u{1b}'),
        "escape codes without a terminal:\n{err}"
    );
    for i in THREE {
        assert!(err.contains(&format!("[{i}] ==> launch")), "{err}");
    }
    assert!(err.contains("3 of 3 build(s) succeeded"), "{err}");
    for l in err.lines() {
        assert!(!l.contains('\r'), "a redrawn line: {l:?}");
    }
    assert!(out.stdout.is_empty(), "human output goes to stderr");
}
