//! The `builds.localtest.options` of a template (one file per IaaS, so that a builder
//! changes only its own).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::template::Tv;

/// Options of the `localtest` builder (tests and demos of the runner).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct LocaltestOptions {
    /// Where its resources (files) are created.
    #[serde(default)]
    pub root: Option<String>,
    /// How many resources `launch` creates.
    #[serde(default)]
    pub resources: Option<Tv<u32>>,
    /// Fail at this step (`validate`, `base_image`, `launch`, `provision`,
    /// `capture`, `export`).
    #[serde(default)]
    pub fail_at: Option<String>,
    /// Before `capture`, wait until this file exists (lets a test act on a
    /// build that is known to be mid-way).
    #[serde(default)]
    pub wait_for_file: Option<String>,
}
