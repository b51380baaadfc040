//! The guest side: the disk tarball check, the instance sshd with its bosh_settings keys.

#[allow(unused_imports)]
use super::*;

/// A gzip'd tar holding exactly one regular file, `disk.raw`.
pub fn check_disk_tar(bytes: &[u8]) -> Result<(), String> {
    let gz = flate2::read::GzDecoder::new(bytes);
    let mut ar = tar::Archive::new(gz);
    let entries = ar.entries().map_err(|e| format!("not a tar.gz: {e}"))?;
    let mut names = Vec::new();
    for e in entries {
        let mut e = e.map_err(|e| format!("not a tar.gz: {e}"))?;
        let p = e
            .path()
            .map_err(|e| format!("bad tar entry: {e}"))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        if p.is_empty() {
            continue;
        }
        let mut sink = [0u8; 64 * 1024];
        loop {
            match e.read(&mut sink) {
                Ok(0) => break,
                Ok(_) => {}
                Err(err) => return Err(format!("reading {p} in the tar.gz: {err}")),
            }
        }
        names.push(p);
    }
    if names != ["disk.raw"] {
        return Err(format!(
            "The tar archive must hold exactly one file named disk.raw; it holds {names:?}"
        ));
    }
    Ok(())
}

pub(super) async fn http_get(hostport: &str, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let addr: SocketAddr = hostport
        .parse()
        .map_err(|e| std::io::Error::other(format!("{hostport}: {e}")))?;
    if !addr.ip().is_loopback() {
        return Err(std::io::Error::other(format!(
            "{hostport} is not on 127.0.0.0/8"
        )));
    }
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.0\r\nHost: {hostport}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header end"))?;
    let head = String::from_utf8_lossy(&buf[..end]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, buf[end + 4..].to_vec()))
}

/// An `AuthorizedKeysCommand` that prints `env.bosh.authorized_keys` of the
/// `bosh_settings` metadata of every RUNNING instance of `project`/`zone`
/// at the test server: a login then proves the key travelled through the
/// agent settings, as on GCE.
pub fn bosh_settings_keys_command(
    server: &GceServer,
    project: &str,
    zone: &str,
) -> Result<crate::sshd::AuthorizedKeysCommand, crate::sshd::SshdError> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = crate::sshd::private_script_dir("gce-bosh-settings")?;
    let script = dir.join(format!("keys-{}-{project}-{zone}", server.addr().port()));
    let text = format!(
        r#"#!/usr/bin/python3
# Prints env.bosh.authorized_keys of the bosh_settings metadata of every RUNNING instance.
import json, urllib.request
URL = "{ep}/compute/v1/projects/{project}/zones/{zone}/instances"
REQ = urllib.request.Request(URL, headers={{"Authorization": "Bearer opsbake-test-sshd"}})
with urllib.request.urlopen(REQ, timeout=5) as r:
    items = json.load(r).get("items", [])
for i in items:
    if i.get("status") != "RUNNING":
        continue
    for it in i.get("metadata", {{}}).get("items", []):
        if it.get("key") == "bosh_settings":
            for k in json.loads(it["value"])["env"]["bosh"]["authorized_keys"]:
                print(k)
"#,
        ep = server.endpoint(),
    );
    let io = |source| crate::sshd::SshdError::Io {
        path: script.clone(),
        source,
    };
    std::fs::write(&script, text).map_err(io)?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).map_err(
        |source| crate::sshd::SshdError::Io {
            path: script.clone(),
            source,
        },
    )?;
    Ok(crate::sshd::AuthorizedKeysCommand {
        command: script,
        args: "%u".into(),
        user: "nobody".into(),
    })
}

/// A hardened test sshd that plays the test server's instances of
/// `project`/`zone`: no authorized_keys, only
/// [`bosh_settings_keys_command`]; the server's instances print its host
/// keys on their serial console.
pub fn instance_sshd(
    server: &GceServer,
    project: &str,
    zone: &str,
) -> Result<crate::sshd::Sshd, crate::sshd::SshdError> {
    let sshd = crate::sshd::Sshd::start(crate::sshd::SshdOptions {
        authorized_keys_command: Some(bosh_settings_keys_command(server, project, zone)?),
        ..crate::sshd::SshdOptions::default()
    })?;
    server.set_serial_host_keys(sshd.host_public_keys().to_vec());
    Ok(sshd)
}
