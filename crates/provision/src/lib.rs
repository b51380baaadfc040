//! opsbake-provision: provisioners over core's `Transport` trait (file,
//! shell with script staging, shell-local, chef-solo, breakpoint), the
//! stemcell hand-off, and the `ssh` builder. See docs/provisioners.md and
//! docs/handoff.md.

pub mod breakpoint;
pub mod chef;
pub mod error;
pub mod file;
pub mod handoff;
pub mod output;
mod run;
pub mod shell;
pub mod ssh_builder;
pub mod staging;

pub use error::ProvisionError;
pub use run::{check_order, Provision, ProvisionOptions, DEFAULT_START_RETRY_TIMEOUT};
