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
