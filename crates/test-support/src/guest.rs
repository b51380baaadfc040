//! What a test guest needs from the host side: an SSH key pair, the BOSH
//! agent settings (with a password hash) on a `config-2` ISO, and OpenSSH's
//! `ssh` into it. Used with [`crate::qemu`]'s launcher (and re-exported
//! there).

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::qemu::{io_err, require, run, QemuError};

/// An SSH key pair made by `ssh-keygen` for a test.
#[derive(Debug, Clone)]
pub struct TestKey {
    /// The private key file (mode 0600).
    pub private: PathBuf,
    /// The public key line (`ssh-ed25519 AAAA... comment`).
    pub public: String,
}

/// Make an ed25519 key pair without a passphrase in `dir` (`name`, `name.pub`).
pub fn ssh_keypair(dir: &Path, name: &str) -> Result<TestKey, QemuError> {
    let keygen = require("ssh-keygen", "openssh-client")?;
    let private = dir.join(name);
    let _ = fs::remove_file(&private);
    let _ = fs::remove_file(dir.join(format!("{name}.pub")));
    run(Command::new(keygen)
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "opsbake-test", "-f"])
        .arg(&private))?;
    let pubfile = dir.join(format!("{name}.pub"));
    let public = fs::read_to_string(&pubfile)
        .map_err(io_err(&pubfile))?
        .trim()
        .to_string();
    Ok(TestKey { private, public })
}

/// A SHA-512 crypt hash (`$6$...`) of `password`, as `env.bosh.password`
/// wants it (`openssl passwd -6`, the password on stdin).
pub fn password_hash(password: &str) -> Result<String, QemuError> {
    let openssl = require("openssl", "openssl")?;
    let mut child = Command::new(openssl)
        .args(["passwd", "-6", "-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err(Path::new("openssl")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(format!("{password}\n").as_bytes())
            .map_err(io_err(Path::new("openssl stdin")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(io_err(Path::new("openssl")))?;
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || !hash.starts_with("$6$") {
        return Err(QemuError::Command {
            command: "openssl passwd -6 -stdin".into(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(hash)
}

/// Minimal BOSH agent settings (STEMCELLS.md section 3): one dynamic network,
/// `env.bosh.authorized_keys` and, when given, `env.bosh.password` (a crypt hash).
pub fn settings_json(
    agent_id: &str,
    authorized_keys: &[String],
    password_hash: Option<&str>,
) -> String {
    let mut bosh = serde_json::json!({ "authorized_keys": authorized_keys });
    if let Some(h) = password_hash {
        bosh["password"] = serde_json::Value::String(h.to_string());
    }
    serde_json::json!({
        "agent_id": agent_id,
        "vm": { "name": agent_id },
        "networks": { "default": { "type": "dynamic", "default": ["dns", "gateway"] } },
        "disks": { "system": "/dev/sda", "persistent": {} },
        "env": { "bosh": bosh },
    })
    .to_string()
}

/// Write an ISO9660 image (Rock Ridge + Joliet, volume id `config-2`) at
/// `out` holding `settings` in the file `name` (`env` for vSphere, `ENV` for
/// the VirtualBox CPI), with Debian's `genisoimage`.
pub fn settings_iso(settings: &str, name: &str, out: &Path) -> Result<PathBuf, QemuError> {
    let genisoimage = require("genisoimage", "genisoimage")?;
    if name.is_empty() || name.contains('/') {
        return Err(QemuError::Invalid(format!("settings file name {name:?}")));
    }
    let src = tempfile::tempdir().map_err(io_err(Path::new("tempdir")))?;
    let file = src.path().join(name);
    fs::write(&file, settings).map_err(io_err(&file))?;
    run(Command::new(genisoimage)
        .args(["-quiet", "-r", "-J", "-V", "config-2", "-o"])
        .arg(out)
        .arg(src.path()))?;
    Ok(out.to_path_buf())
}

/// OpenSSH's `ssh` to a guest's forward on 127.0.0.1 (no host key
/// checking: the guest is made by the test), running `script` as `user`
/// with the private key file `key`. `connect_timeout` in seconds.
pub fn guest_ssh(
    key: &Path,
    port: u16,
    user: &str,
    script: &str,
    connect_timeout: u32,
) -> std::io::Result<std::process::Output> {
    Command::new("ssh")
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
        ])
        .arg(format!("ConnectTimeout={connect_timeout}"))
        .arg("-i")
        .arg(key)
        .arg("-p")
        .arg(port.to_string())
        .arg(format!("{user}@127.0.0.1"))
        .arg(script)
        .stdin(Stdio::null())
        .output()
}
