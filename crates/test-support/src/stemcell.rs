//! The project's test stemcells (`OPSBAKE_TEST_STEMCELL_DIR`, made by
//! .ci/setup.d/20-test-stemcell.sh) and the appliance template the
//! builders' end-to-end tests build from them.
//!
//! These are fixtures: a missing stemcell fails the test (hence the panics).
#![allow(clippy::panic)]

use std::path::{Path, PathBuf};

/// The test stemcell directory, or None when peers are skipped
/// (`OPSBAKE_SKIP_PEERS=1`) and it is unset; unset otherwise fails the test.
pub fn dir() -> Option<PathBuf> {
    match std::env::var_os("OPSBAKE_TEST_STEMCELL_DIR") {
        Some(d) => Some(PathBuf::from(d)),
        None if crate::skip_peers() => None,
        None => panic!(
            "OPSBAKE_TEST_STEMCELL_DIR is unset: run scripts/setup.sh and export target/ci-env, or set OPSBAKE_SKIP_PEERS=1"
        ),
    }
}

/// The test stemcell `name`, which must exist; None as for [`dir`].
pub fn path(name: &str) -> Option<PathBuf> {
    let p = dir()?.join(name);
    assert!(
        p.is_file(),
        "{} missing: rerun .ci/setup.d/20-test-stemcell.sh",
        p.display()
    );
    Some(p)
}

/// Write `dir/appliance.yml`: the appliance every builder's end-to-end test
/// builds: `build` is the body of `builds.<iaas>` (indented four spaces),
/// the provisioner writes `$HOME/opsbake-marker`, outputs go to `dir/out`.
pub fn appliance(dir: &Path, iaas: &str, stemcell: &Path, build: &str) -> PathBuf {
    let t = dir.join("appliance.yml");
    let text = format!(
        r#"name: appliance
version: "1.0"
stemcells:
  {iaas}: {{path: "{}"}}
builds:
  {iaas}:
{build}
provision:
  - type: shell
    sudo: false
    inline:
      - echo "provisioned by opsbake as $(id -un)" > "$HOME/opsbake-marker"
outputs:
  directory: "{}"
"#,
        stemcell.display(),
        dir.join("out").display()
    );
    std::fs::write(&t, text).unwrap_or_else(|e| panic!("write {}: {e}", t.display()));
    t
}

/// The `network` and `ssh` lines of a build whose SSH goes to the loopback
/// sshd on `port` (the cloud's invented addresses are never contacted).
pub fn loopback_ssh(port: u16) -> String {
    format!(
        "    network: {{ssh_cidrs: [203.0.113.0/24]}}\n    ssh: {{user: vcap, host: 127.0.0.1, port: {port}, login_timeout: 60s}}"
    )
}

/// A gzipped tar of `members` (name, bytes; mode 0644): a stemcell made up
/// by a test (a light stemcell's MF and empty image).
pub fn tgz(members: &[(&str, &[u8])]) -> std::io::Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut t = tar::Builder::new(gz);
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        t.append_data(&mut h, name, *data)?;
    }
    t.into_inner()?.finish()
}

/// Write the [`tgz`] of `members` at `path`.
pub fn write_tgz(path: &Path, members: &[(&str, &[u8])]) -> std::io::Result<()> {
    std::fs::write(path, tgz(members)?)
}

/// The file name of the light azure stemcell of [`azure_light`].
pub const AZURE_LIGHT: &str = "light-bosh-stemcell-1.0-azure-hyperv-debian-bookworm-go_agent.tgz";

/// The MF of a light azure stemcell pointing at the marketplace image the
/// ARM test server knows (pivotal / bosh-debian-bookworm).
pub const AZURE_LIGHT_MF: &str = "---\nname: bosh-azure-hyperv-debian-bookworm-go_agent\nversion: '1.0'\nbosh_protocol: 1\napi_version: 3\nsha1: da39a3ee5e6b4b0d3255bfef95601890afd80709\noperating_system: debian-bookworm\nstemcell_formats: [azure-light]\ncloud_properties:\n  name: bosh-azure-hyperv-debian-bookworm-go_agent\n  version: '1.0'\n  infrastructure: azure\n  hypervisor: hyperv\n  disk: 384\n  os_type: linux\n  architecture: x86_64\n  image: {publisher: pivotal, offer: bosh-debian-bookworm, sku: debian-bookworm, version: '1.0.0'}\n";

/// Write `dir/`[`AZURE_LIGHT`] with `mf` as its MF (and an empty image).
pub fn azure_light(dir: &Path, mf: &str) -> std::io::Result<PathBuf> {
    let p = dir.join(AZURE_LIGHT);
    write_tgz(&p, &[("stemcell.MF", mf.as_bytes()), ("image", b"")])?;
    Ok(p)
}

/// Link every `.tgz` of the test stemcell directory `from` into `into`
/// (a template naming every IaaS's stemcell finds them there).
pub fn link_all(from: &Path, into: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(into)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_name().to_string_lossy().ends_with(".tgz") {
            std::os::unix::fs::symlink(e.path(), into.join(e.file_name()))?;
        }
    }
    Ok(())
}
