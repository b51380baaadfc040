//! Test support shared by every crate's tests (dev-dependency only): peers
//! started and stopped by PID with readiness checks, proxies, boot helpers.
//!
//! One module per peer; each is owned by the issue that needs it.

pub mod arm;
pub mod azurite;
pub mod build;
pub mod cli;
pub mod delay_proxy;
pub mod fault_proxy;
pub mod gce;
pub mod gcs;
pub mod guest;
pub mod kill;
pub mod moto;
pub mod nfc_export;
pub mod process;
pub mod qemu;
pub mod sshd;
pub mod stemcell;
pub mod vcsim;

/// True when peer tests may be skipped (`OPSBAKE_SKIP_PEERS=1`): the one
/// rule every test crate uses (re-exported by the peer modules).
pub fn skip_peers() -> bool {
    std::env::var("OPSBAKE_SKIP_PEERS").is_ok_and(|v| v == "1")
}
