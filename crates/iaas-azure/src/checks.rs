//! Offline checks: settings that must be there and names Azure accepts
//! (lengths and characters from the Azure naming rules), each reported at
//! its template key before anything is created.

use opsbake_core::builder::Finding;
use opsbake_core::options::AzureOptions;

/// An empty string means unset (templates switch settings off that way).
pub fn set(v: &Option<String>) -> Option<String> {
    v.as_ref()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The subscription: the option, else `AZURE_SUBSCRIPTION_ID`.
pub fn subscription(o: &AzureOptions) -> Option<String> {
    set(&o.subscription_id).or_else(|| set(&std::env::var("AZURE_SUBSCRIPTION_ID").ok()))
}

fn chars_ok(s: &str, extra: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
}

/// Managed image names: 1-80, letters, digits, `_` `.` `-`, starting with a
/// letter or digit and ending with a letter, digit or `_`.
pub fn image_name(s: &str) -> Result<(), String> {
    let first = s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    let last = s
        .chars()
        .last()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    if (1..=80).contains(&s.len()) && chars_ok(s, "_.-") && first && last {
        Ok(())
    } else {
        Err(format!("{s:?} is not a valid Azure image name (1-80 letters, digits, `_` `.` `-`; starts with a letter or digit; ends with a letter, digit or `_`)"))
    }
}

/// Resource group names: 1-90, letters, digits, `_` `-` `.` `(` `)`, not ending in `.`.
pub fn resource_group(s: &str) -> Result<(), String> {
    if (1..=90).contains(&s.len()) && chars_ok(s, "_-.()") && !s.ends_with('.') {
        Ok(())
    } else {
        Err(format!("{s:?} is not a valid resource group name (1-90 letters, digits, `_` `-` `.` `(` `)`; not ending in `.`)"))
    }
}

/// Gallery names: 1-80, letters, digits, `_` `.`, not starting or ending with `.`.
pub fn gallery(s: &str) -> Result<(), String> {
    if (1..=80).contains(&s.len()) && chars_ok(s, "_.") && !s.starts_with('.') && !s.ends_with('.')
    {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid gallery name (1-80 letters, digits, `_` `.`)"
        ))
    }
}

/// Gallery image definitions: 1-80, letters, digits, `_` `-` `.`.
pub fn gallery_image(s: &str) -> Result<(), String> {
    if (1..=80).contains(&s.len()) && chars_ok(s, "_-.") {
        Ok(())
    } else {
        Err(format!("{s:?} is not a valid gallery image definition name (1-80 letters, digits, `_` `-` `.`)"))
    }
}

/// Gallery image versions: `MAJOR.MINOR.PATCH`, 32-bit integers.
pub fn gallery_version(s: &str) -> Result<(), String> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.parse::<i32>().is_ok())
    {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a gallery image version (MAJOR.MINOR.PATCH, integers)"
        ))
    }
}

/// Storage account names: 3-24 lowercase letters and digits.
pub fn storage_account(s: &str) -> Result<(), String> {
    if (3..=24).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid storage account name (3-24 lowercase letters and digits)"
        ))
    }
}

/// Subscription ids are GUIDs.
pub fn guid(s: &str) -> Result<(), String> {
    let parts: Vec<usize> = s.split('-').map(str::len).collect();
    if parts == [8, 4, 4, 4, 12] && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        Ok(())
    } else {
        Err(format!("{s:?} is not a subscription id (a GUID)"))
    }
}

/// A VHD output blob name: 1-1024 characters ending in `.vhd` (what Azure
/// takes as a disk), no `/` (at the container's top), `\\`, `?` or `#`.
pub fn vhd_blob_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 1024
        && !s.contains(['\\', '?', '#', '/'])
        && !s.ends_with('.')
        && !s.ends_with('/')
        && !s.starts_with('/')
        && s.to_ascii_lowercase().ends_with(".vhd");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a VHD blob name (1-1024 characters ending in .vhd, no `/`, `\\`, `?`, `#`)"
        ))
    }
}

/// Every offline finding of these options.
pub fn findings(o: &AzureOptions, ssh_cidrs_empty: bool) -> Vec<Finding> {
    let k = |f: &str| format!("builds.azure.options.{f}");
    let mut out = Vec::new();
    match subscription(o) {
        None => out.push(Finding::new(
            k("subscription_id"),
            "no subscription: set builds.azure.options.subscription_id or AZURE_SUBSCRIPTION_ID",
        )),
        Some(s) => {
            if let Err(m) = guid(&s) {
                out.push(Finding::new(k("subscription_id"), m));
            }
        }
    }
    match set(&o.resource_group) {
        None => out.push(Finding::new(
            k("resource_group"),
            "no resource_group: name the resource group that receives the images",
        )),
        Some(g) => {
            if let Err(m) = resource_group(&g) {
                out.push(Finding::new(k("resource_group"), m));
            }
        }
    }
    if let Some(g) = set(&o.build_resource_group) {
        if let Err(m) = resource_group(&g) {
            out.push(Finding::new(k("build_resource_group"), m));
        }
    }
    if set(&o.location).is_none() {
        out.push(Finding::new(k("location"), "no location (e.g. westeurope)"));
    }
    if let Some(n) = set(&o.image_name) {
        if let Err(m) = image_name(&n) {
            out.push(Finding::new(k("image_name"), m));
        }
    }
    if set(&o.image_name).is_none() && o.gallery.is_none() && set(&o.vhd_output).is_none() {
        out.push(Finding::new(
            k("image_name"),
            "nothing to capture: set image_name (a managed image), gallery and/or vhd_output",
        ));
    }
    if let Some(v) = set(&o.vhd_output) {
        if let Err(m) = vhd_blob_name(&v) {
            out.push(Finding::new(k("vhd_output"), m));
        }
        if set(&o.storage_account).is_none() && set(&o.storage_endpoint).is_none() {
            out.push(Finding::new(
                k("vhd_output"),
                "a VHD output needs storage_account (or storage_endpoint) to hold its page blob",
            ));
        }
    }
    if let Some(a) = set(&o.storage_account) {
        if let Err(m) = storage_account(&a) {
            out.push(Finding::new(k("storage_account"), m));
        }
    }
    if let Some(g) = &o.gallery {
        if let Err(m) = gallery(&g.name) {
            out.push(Finding::new(k("gallery.name"), m));
        }
        if let Err(m) = gallery_image(&g.image) {
            out.push(Finding::new(k("gallery.image"), m));
        }
        if let Err(m) = gallery_version(&g.version) {
            out.push(Finding::new(k("gallery.version"), m));
        }
    }
    if let Some(p) = set(&o.poll_interval) {
        if let Err(m) = p.parse::<opsbake_core::template::Dur>() {
            out.push(Finding::new(k("poll_interval"), m));
        }
    }
    if ssh_cidrs_empty {
        out.push(Finding::new(
            "builds.azure.network.ssh_cidrs",
            "network.ssh_cidrs is empty: name the CIDRs allowed to reach SSH on the build VM (the NSG allows TCP 22 from them only)",
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_azure_rules() {
        assert!(image_name("appliance-1.0.0-b1").is_ok());
        assert!(image_name("-x").is_err());
        assert!(image_name("x.").is_err());
        assert!(image_name(&"a".repeat(81)).is_err());
        assert!(image_name("a b").is_err());
        assert!(resource_group("rg-(1)").is_ok());
        assert!(resource_group("rg.").is_err());
        assert!(gallery("my_gallery.1").is_ok());
        assert!(gallery("my-gallery").is_err());
        assert!(gallery_version("1.0.0").is_ok());
        assert!(gallery_version("1.0").is_err());
        assert!(gallery_version("1.a.0").is_err());
        assert!(storage_account("opsbake01").is_ok());
        assert!(storage_account("Opsbake").is_err());
        assert!(guid("00000000-0000-4000-8000-000000000001").is_ok());
        assert!(guid("sub-1").is_err());
        assert!(vhd_blob_name("appliance-1.0.vhd").is_ok());
        assert!(vhd_blob_name("appliance.VHD").is_ok());
        assert!(vhd_blob_name("dir/appliance.vhd").is_err());
        assert!(vhd_blob_name("appliance.raw").is_err());
        assert!(vhd_blob_name("a?b.vhd").is_err());
        assert!(vhd_blob_name("/a.vhd").is_err());
    }

    #[test]
    fn a_vhd_output_needs_storage_and_a_vhd_name() {
        let o = AzureOptions {
            subscription_id: Some("00000000-0000-4000-8000-000000000001".into()),
            resource_group: Some("rg".into()),
            location: Some("westeurope".into()),
            vhd_output: Some("out.img".into()),
            ..AzureOptions::default()
        };
        let f = findings(&o, false);
        let keys: Vec<&str> = f
            .iter()
            .filter(|x| x.key == "builds.azure.options.vhd_output")
            .map(|x| x.message.as_str())
            .collect();
        assert_eq!(keys.len(), 2, "{f:?}");
        assert!(keys.iter().any(|m| m.contains(".vhd")));
        assert!(keys.iter().any(|m| m.contains("storage_account")));
        // A VHD output alone is something to capture.
        assert!(!f.iter().any(|x| x.message.contains("nothing to capture")));
    }

    #[test]
    fn findings_name_each_key_and_empty_means_unset() {
        let o = AzureOptions {
            subscription_id: Some("00000000-0000-4000-8000-000000000001".into()),
            resource_group: Some(String::new()),
            location: Some("westeurope".into()),
            image_name: Some("bad name".into()),
            gallery: Some(opsbake_core::options::AzureGallery {
                name: "g-1".into(),
                image: "img".into(),
                version: "1".into(),
                ..Default::default()
            }),
            ..AzureOptions::default()
        };
        let f = findings(&o, true);
        let keys: Vec<&str> = f.iter().map(|x| x.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "builds.azure.options.resource_group",
                "builds.azure.options.image_name",
                "builds.azure.options.gallery.name",
                "builds.azure.options.gallery.version",
                "builds.azure.network.ssh_cidrs",
            ]
        );
        assert!(f[1].message.contains("bad name"));
    }
}
