//! Connect: which endpoints `--offline` allows, the host keys from the
//! serial console, the host-key policy of the SSH target.

use opsbake_core::builder::{BuildContext, HostKeyPolicy};
use opsbake_core::template::HostKeySpec;

use crate::GcpBuilder;

/// Whether an endpoint URL names this machine (the only endpoints
/// `--offline` allows).
pub fn is_loopback_endpoint(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(h) = host_port.strip_prefix('[') {
        h.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

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
