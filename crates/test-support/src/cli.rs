//! Running the `opsbake` CLI from tests of any crate: finding the binary
//! (see [`opsbake_bin`]) and reading its `--json` events.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

/// The `opsbake` binary for tests outside the `opsbake` package (where
/// `CARGO_BIN_EXE_opsbake` does not exist).
///
/// 1. `OPSBAKE_BIN` when set (CI or a developer pointing at a build);
/// 2. else `cargo build -p opsbake --bin opsbake --message-format=json`,
///    run once per test process, and the executable its `compiler-artifact`
///    message names. Cargo itself resolves the target dir (`CARGO_TARGET_DIR`,
///    `--target-dir` config, build-dir split), and the binary is never stale:
///    when the workspace run already built it this is a no-op of about a
///    second.
///
/// Panics with the reason (tests only).
#[allow(clippy::panic)]
pub fn opsbake_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("OPSBAKE_BIN").filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        match build_opsbake() {
            Ok(p) => p,
            Err(e) => panic!("cannot find the opsbake binary: {e} (or set OPSBAKE_BIN)"),
        }
    })
}

fn build_opsbake() -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = workspace_root().join("Cargo.toml");
    let out = Command::new(&cargo)
        .args(["build", "--quiet", "-p", "opsbake", "--bin", "opsbake"])
        .args([
            "--message-format=json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(&manifest)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running {}: {e}", Path::new(&cargo).display()))?;
    if !out.status.success() {
        return Err(format!("cargo build -p opsbake: {}", out.status));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "opsbake")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| "cargo named no opsbake executable".to_string())
}

/// The workspace root (this crate is `crates/test-support`).
pub fn workspace_root() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    p.canonicalize().unwrap_or(p)
}

/// The `--json` events a run printed on stdout (one JSON object a line;
/// other lines are skipped).
pub fn events(out: &Output) -> Vec<Value> {
    json_lines(&String::from_utf8_lossy(&out.stdout))
}

/// The JSON objects of a text, one a line.
pub fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

/// The `--json` events a running child prints on `out` (its stdout), read
/// on a thread as they come: one JSON object a line, other lines skipped;
/// the channel ends when the output does (or the receiver is dropped).
pub fn event_stream(out: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<Value> {
    use std::io::BufRead as _;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if tx.send(v).is_err() {
                    break;
                }
            }
        }
    });
    rx
}

/// `bin` (an opsbake binary) run in `dir` with its state in `dir/state`,
/// `--no-progress`, `HOME` at `dir`, no colour, and no AWS region or
/// credentials anywhere (no env, no config file) nor `OPSBAKE_LOG`: the
/// caller adds the arguments and any env it wants.
pub fn isolated(bin: impl AsRef<std::ffi::OsStr>, dir: &Path) -> Command {
    let mut c = Command::new(bin);
    c.current_dir(dir)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--no-progress")
        .env("HOME", dir)
        .env("AWS_CONFIG_FILE", dir.join("no-aws-config"))
        .env("NO_COLOR", "1");
    for v in [
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_PROFILE",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "OPSBAKE_LOG",
    ] {
        c.env_remove(v);
    }
    c
}
