//! Endpoint URLs: which ones name this machine (what `--offline` allows).
//! Tested where the builders re-export it (iaas-aws options.rs, iaas-gcp).

/// Whether an endpoint URL names this machine (127.0.0.0/8, ::1,
/// `localhost`): the only endpoints `--offline` allows.
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
