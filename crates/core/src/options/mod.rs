//! Per-IaaS options of a template's `builds` entries, one file per IaaS.

mod aws;
mod azure;
mod gcp;
mod localtest;
mod ssh;
mod vbox;
mod vsphere;

pub use aws::AwsOptions;
pub use azure::{AzureGallery, AzureOptions, AzureReplication};
pub use gcp::GcpOptions;
pub use localtest::LocaltestOptions;
pub use ssh::SshHostOptions;
pub use vbox::VboxOptions;
pub use vsphere::VsphereOptions;
