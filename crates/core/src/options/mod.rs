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

/// A string option that is empty or blank (often a template variable with an
/// empty default) is not set: `None`, so nothing empty reaches the IaaS.
pub fn unset_if_blank(v: &mut Option<String>) {
    if v.as_deref().is_some_and(|s| s.trim().is_empty()) {
        *v = None;
    }
}

/// [`unset_if_blank`], and a set value trimmed.
pub fn trim_or_unset(v: &mut Option<String>) {
    unset_if_blank(v);
    if let Some(s) = v {
        *s = s.trim().to_string();
    }
}

/// A list option without its blank entries, the others trimmed.
pub fn trim_list(v: &mut Vec<String>) {
    v.retain(|s| !s.trim().is_empty());
    v.iter_mut().for_each(|s| *s = s.trim().to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_options_are_unset_and_lists_trimmed() {
        let mut a = Some("  ".to_string());
        unset_if_blank(&mut a);
        assert_eq!(a, None);
        let mut b = Some(" x ".to_string());
        unset_if_blank(&mut b);
        assert_eq!(b.as_deref(), Some(" x "));
        trim_or_unset(&mut b);
        assert_eq!(b.as_deref(), Some("x"));
        let mut l = vec![" a".to_string(), "".into(), " ".into(), "b ".into()];
        trim_list(&mut l);
        assert_eq!(l, ["a", "b"]);
    }
}
