//! Test support shared by every crate's tests (dev-dependency only): peers
//! started and stopped by PID with readiness checks, proxies, boot helpers.
//!
//! One module per peer; each is owned by the issue that needs it.

pub mod delay_proxy;
pub mod fault_proxy;
pub mod moto;
pub mod nfc_export;
pub mod process;
pub mod qemu;
pub mod sshd;
pub mod vcsim;
