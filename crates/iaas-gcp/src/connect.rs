//! Connect: which endpoints `--offline` allows, the host keys from the
//! serial console, the host-key policy of the SSH target.

use opsbake_core::builder::{BuildContext, HostKeyPolicy};
use opsbake_core::template::HostKeySpec;

use crate::GcpBuilder;

pub use opsbake_core::endpoint::is_loopback_endpoint;

/// The host keys an image prints between `-----BEGIN SSH HOST KEY KEYS-----`
/// and `-----END SSH HOST KEY KEYS-----` on its serial console.
pub fn host_keys_from_serial(text: &str) -> Vec<String> {
    opsbake_core::hostkeys::from_console(text)
}

impl GcpBuilder {
    pub(crate) fn host_key_policy(
        &self,
        ctx: &BuildContext,
        serial_keys: Vec<String>,
    ) -> HostKeyPolicy {
        match &ctx.plan.ssh.host_key {
            HostKeySpec::Pin(k) => HostKeyPolicy::Pin(k.clone()),
            HostKeySpec::Insecure => HostKeyPolicy::Insecure,
            HostKeySpec::Tofu if !serial_keys.is_empty() => HostKeyPolicy::Pin(serial_keys),
            HostKeySpec::Tofu => HostKeyPolicy::TrustOnFirstUse,
        }
    }
}
