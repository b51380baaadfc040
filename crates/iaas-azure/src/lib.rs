//! opsbake-iaas-azure: the `azure` builder.
//!
//! Not implemented yet: [`builder`] says so with a clear error instead of
//! pretending to work. See docs/architecture.md for the crate's role.

pub mod blob;
pub mod error;
pub mod sas;

use std::sync::Arc;

use opsbake_core::builder::{BuildError, Builder, Deleter};
use opsbake_core::plan::BuildPlan;

/// The builder for one plan.
pub fn builder(_plan: &BuildPlan) -> Result<Arc<dyn Builder>, BuildError> {
    Err(BuildError::NotImplemented {
        what: "the `azure` builder".to_string(),
    })
}

/// A deleter for `opsbake cleanup` from a journal's `cleanup_config`.
pub fn deleter(_cleanup_config: &serde_json::Value) -> Result<Arc<dyn Deleter>, BuildError> {
    Err(BuildError::NotImplemented {
        what: "cleanup of `azure` resources".to_string(),
    })
}
