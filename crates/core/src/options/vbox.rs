//! The `builds.vbox.options` of a template (one file per IaaS, so that a builder
//! changes only its own).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::template::{Dur, Tv};

/// VirtualBox (and QEMU) options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct VboxOptions {
    /// `auto` (VirtualBox if installed, else QEMU), `vbox` or `qemu`.
    #[serde(default)]
    pub engine: Option<String>,
    /// QEMU accelerator: `auto` (probe KVM, fall back to TCG), `kvm`, `tcg`.
    #[serde(default)]
    pub accel: Option<String>,
    /// VM name in the OVA.
    #[serde(default)]
    pub vm_name: Option<String>,
    /// Shutdown timeout before a hard power-off.
    #[serde(default)]
    pub shutdown_timeout: Option<Tv<Dur>>,
}
