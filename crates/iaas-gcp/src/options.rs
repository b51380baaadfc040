//! Options: defaults, empty strings as unset, the project from the
//! environment, the poll interval.

use opsbake_core::template::GcpOptions;

/// Default machine type.
pub const DEFAULT_MACHINE_TYPE: &str = "e2-medium";
/// The metadata key the stemcell's agent reads its settings from.
pub const SETTINGS_KEY: &str = "bosh_settings";

/// Empty strings and empty list entries stand for "not set".
pub fn normalise(mut o: GcpOptions) -> GcpOptions {
    use opsbake_core::options::{trim_list as list, trim_or_unset as set};
    set(&mut o.project_id);
    set(&mut o.zone);
    set(&mut o.machine_type);
    set(&mut o.image_name);
    set(&mut o.image_family);
    set(&mut o.image_description);
    set(&mut o.bucket);
    set(&mut o.credentials_file);
    set(&mut o.endpoint);
    set(&mut o.storage_endpoint);
    set(&mut o.poll_interval);
    list(&mut o.image_storage_locations);
    list(&mut o.image_users);
    list(&mut o.network_tags);
    o.labels.retain(|k, _| !k.trim().is_empty());
    o.image_labels.retain(|k, _| !k.trim().is_empty());
    o
}

/// `options.poll_interval` parsed (None: unset or not a duration, which
/// the offline checks report).
pub fn poll_interval(o: &GcpOptions) -> Option<std::time::Duration> {
    o.poll_interval
        .as_deref()
        .and_then(|s| s.parse::<opsbake_core::template::Dur>().ok())
        .map(|d| d.0)
}

/// The project: the option, else `GOOGLE_PROJECT_ID`, else
/// `GOOGLE_CLOUD_PROJECT` (empty values count as unset).
pub fn resolve_project(o: &GcpOptions) -> Option<String> {
    o.project_id
        .clone()
        .or_else(|| std::env::var("GOOGLE_PROJECT_ID").ok())
        .or_else(|| std::env::var("GOOGLE_CLOUD_PROJECT").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}
