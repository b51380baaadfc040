//! The `builds.ssh.options` of a template (one file per IaaS, so that a builder
//! changes only its own).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Options of the `ssh` builder (an existing host).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct SshHostOptions {
    /// Allow provisioning the build host itself (loopback target). The
    /// hand-off and scrubs still refuse to run there.
    #[serde(default)]
    pub allow_loopback: bool,
}
