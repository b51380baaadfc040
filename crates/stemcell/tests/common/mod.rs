//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

/// Fail (not skip) when a tool is missing, unless OPSBAKE_SKIP_PEERS=1.
/// Returns false when the test should be skipped.
pub fn require_tool(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if found {
        return true;
    }
    if std::env::var("OPSBAKE_SKIP_PEERS").as_deref() == Ok("1") {
        eprintln!("skipping: {tool} is missing and OPSBAKE_SKIP_PEERS=1");
        return false;
    }
    panic!("{tool} is missing: run .ci/setup.d/10-stemcell-tools.sh (or set OPSBAKE_SKIP_PEERS=1)");
}

/// Run a command, panic with its output when it fails, return stdout.
pub fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Run a Python script with arguments.
pub fn python(script: &str, args: &[&Path]) {
    let mut c = Command::new("python3");
    c.arg("-c").arg(script);
    for a in args {
        c.arg(a);
    }
    run(&mut c);
}
