//! The builder's reading of `builds.aws.options` (the struct itself lives
//! in core, `opsbake_core::options::aws`): defaults, empty strings as unset,
//! the regions a build touches, and the typed cleanup config a journal
//! keeps for `opsbake cleanup`.

use opsbake_core::template::AwsOptions;

/// Default instance type.
pub const DEFAULT_INSTANCE_TYPE: &str = "m5.large";
/// Default number of snapshot blocks in flight.
pub const DEFAULT_UPLOAD_CONCURRENCY: usize = 16;

/// What `opsbake cleanup` needs to delete an aws build's resources later
/// (the journal header's `cleanup_config`). Never secrets.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CleanupConfig {
    /// The build's region.
    #[serde(default)]
    pub region: Option<String>,
    /// Every region the build touched (its own first, then the copies).
    #[serde(default)]
    pub regions: Vec<String>,
    /// The EC2/S3 endpoint override (an emulator).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The `import: s3` bucket.
    #[serde(default)]
    pub import_bucket: Option<String>,
}

/// Every region a build touches: its own first, then the copies.
pub(crate) fn all_regions(region: &str, opts: &AwsOptions) -> Vec<String> {
    let mut v = vec![region.to_string()];
    for r in &opts.copy_regions {
        if !v.contains(r) {
            v.push(r.clone());
        }
    }
    v
}

/// Empty strings stand for "not set": a template variable with an empty
/// default (`endpoint: "${var.aws_endpoint}"`, `copy_regions:
/// ["${var.aws_copy_region}"]`) switches the setting off instead of sending
/// an empty value to AWS.
pub fn normalise(mut o: AwsOptions) -> AwsOptions {
    use opsbake_core::options::{trim_list as list, unset_if_blank as set};
    set(&mut o.region);
    set(&mut o.instance_type);
    set(&mut o.ami_name);
    set(&mut o.ami_description);
    set(&mut o.deprecate_at);
    set(&mut o.security_group_id);
    set(&mut o.endpoint);
    set(&mut o.import);
    set(&mut o.import_bucket);
    list(&mut o.copy_regions);
    crate::checks::dedupe_copy_regions(&mut o.copy_regions);
    list(&mut o.ami_users);
    list(&mut o.ami_groups);
    list(&mut o.snapshot_users);
    o.kms_key_ids
        .retain(|k, v| !k.trim().is_empty() && !v.trim().is_empty());
    o.tags.retain(|k, _| !k.trim().is_empty());
    o
}

/// Whether an endpoint URL names this machine (core's, re-exported: the
/// crate's public API).
pub use opsbake_core::endpoint::is_loopback_endpoint;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_endpoints_only() {
        for ok in [
            "http://127.0.0.1:5000",
            "http://127.9.8.7/",
            "http://localhost:1234/x",
            "https://[::1]:443",
            "http://user@127.0.0.1:80",
        ] {
            assert!(is_loopback_endpoint(ok), "{ok}");
        }
        for no in [
            "https://ec2.us-east-1.amazonaws.com",
            "http://10.0.0.1:5000",
            "http://127.0.0.1.example.com",
            "http://[2001:db8::1]:80",
            "",
        ] {
            assert!(!is_loopback_endpoint(no), "{no}");
        }
    }

    #[test]
    fn empty_strings_mean_unset() {
        let mut o = AwsOptions {
            endpoint: Some(String::new()),
            copy_regions: vec!["".into(), " eu-west-1 ".into()],
            ami_users: vec!["".into()],
            ..AwsOptions::default()
        };
        o.tags.insert("appliance".into(), "1".into());
        o.tags.insert("".into(), "".into());
        let o = normalise(o);
        assert_eq!(o.endpoint, None);
        assert_eq!(o.copy_regions, vec!["eu-west-1".to_string()]);
        assert!(o.ami_users.is_empty());
        assert_eq!(o.tags.len(), 1);
    }

    #[test]
    fn cleanup_config_reads_what_older_journals_wrote() {
        let c: CleanupConfig = serde_json::from_value(serde_json::json!({
            "region": "us-east-1",
            "regions": ["us-east-1", "eu-west-1"],
            "endpoint": null,
            "import_bucket": null,
        }))
        .unwrap();
        assert_eq!(c.region.as_deref(), Some("us-east-1"));
        assert_eq!(c.regions.len(), 2);
        let c: CleanupConfig =
            serde_json::from_value(serde_json::json!({ "region": "us-east-1" })).unwrap();
        assert!(c.regions.is_empty() && c.endpoint.is_none());
    }
}
