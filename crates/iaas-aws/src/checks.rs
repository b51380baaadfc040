//! The aws builder's offline checks (no network): the region, the AMI name
//! after interpolation, credential variables, and `copy_regions`. `opsbake
//! validate` and the validate step of `build` report each finding at its
//! template key with file:line:col.

use opsbake_core::builder::Finding;
use opsbake_core::plan::BuildPlan;
use opsbake_core::template::AwsOptions;

/// Reads an environment variable; an empty value counts as unset.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, empty values as unset.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn get(env: Env<'_>, name: &str) -> Option<String> {
    env(name).filter(|v| !v.trim().is_empty())
}

/// The build's region, as the SDK would find it: `options.region`, then
/// `AWS_REGION`, `AWS_DEFAULT_REGION`, then the `region` of the profile
/// (`AWS_PROFILE`, default `default`) in the config file (`AWS_CONFIG_FILE`,
/// default `~/.aws/config`). Empty values count as unset.
pub fn resolve_region(opts: &AwsOptions, env: Env<'_>) -> Option<String> {
    opts.region
        .clone()
        .filter(|r| !r.trim().is_empty())
        .or_else(|| get(env, "AWS_REGION"))
        .or_else(|| get(env, "AWS_DEFAULT_REGION"))
        .or_else(|| config_file_region(env))
        .map(|r| r.trim().to_string())
}

/// The `region` of the active profile in the AWS config file.
fn config_file_region(env: Env<'_>) -> Option<String> {
    let path = get(env, "AWS_CONFIG_FILE")
        .map(std::path::PathBuf::from)
        .or_else(|| get(env, "HOME").map(|h| std::path::Path::new(&h).join(".aws/config")))?;
    let text = std::fs::read_to_string(path).ok()?;
    let profile = get(env, "AWS_PROFILE").unwrap_or_else(|| "default".to_string());
    region_in_config(&text, &profile)
}

/// The `region = ...` of `[default]` or `[profile NAME]` in config text.
pub fn region_in_config(text: &str, profile: &str) -> Option<String> {
    let mut in_profile = false;
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('#') || l.starts_with(';') || l.is_empty() {
            continue;
        }
        if let Some(h) = l.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            let h = h.trim();
            let name = h.strip_prefix("profile ").map_or(h, str::trim);
            in_profile = name == profile;
            continue;
        }
        if in_profile {
            if let Some((k, v)) = l.split_once('=') {
                if k.trim() == "region" && !v.trim().is_empty() {
                    return Some(v.trim().to_string());
                }
            }
        }
    }
    None
}

/// The characters an AMI name may hold (EC2 CreateImage / RegisterImage).
const AMI_NAME_RULE: &str =
    "3 to 128 characters of letters, digits, spaces and ( ) [ ] . / - ' @ _";

fn ami_name_ok(name: &str) -> Result<(), String> {
    let n = name.chars().count();
    if !(3..=128).contains(&n) {
        return Err(format!("is {n} characters long"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || " ()[]./-'@_".contains(*c)))
    {
        return Err(format!("holds `{c}`"));
    }
    Ok(())
}

/// The error of a plan without a region, at its template key (what
/// [`crate::builder`] returns; `validate` places it at file:line:col).
pub fn no_region(plan: &BuildPlan) -> opsbake_core::builder::BuildError {
    opsbake_core::builder::BuildError::Template(opsbake_core::template::TemplateError::Invalid {
        path: plan.template_path.clone(),
        key: "builds.aws.options.region".to_string(),
        message: NO_REGION.to_string(),
    })
}

const NO_REGION: &str = "no region: set builds.aws.options.region, AWS_REGION or AWS_DEFAULT_REGION, or `region` in the AWS config file's profile (an empty value counts as unset)";

/// Drop repeated regions, keeping the first of each (never two identical
/// copy operations).
pub fn dedupe_copy_regions(list: &mut Vec<String>) {
    let mut seen = std::collections::BTreeSet::new();
    list.retain(|r| seen.insert(r.clone()));
}

/// What the checks found: errors stop `validate` and `build`, warnings are
/// printed.
#[derive(Debug, Clone, Default)]
pub struct Checked {
    /// Errors.
    pub errors: Vec<Finding>,
    /// Warnings (what was de-duplicated).
    pub warnings: Vec<Finding>,
}

/// A build id as `build` makes them, to check the default AMI name
/// (`<template name>-<build id>`) before there is one.
const SAMPLE_BUILD_ID: &str = "ob-20260101-000000-aws-000000";

/// Every offline check of an aws plan. `region` is [`resolve_region`]'s.
pub fn check(plan: &BuildPlan, region: Option<&str>, env: Env<'_>) -> Checked {
    let mut c = Checked::default();
    let raw = plan
        .template
        .builds
        .aws
        .as_ref()
        .map(|b| b.options.clone())
        .unwrap_or_default();
    let o = crate::normalise(raw.clone());
    const K: &str = "builds.aws.options";
    if region.is_none() {
        c.errors
            .push(Finding::new(format!("{K}.region"), NO_REGION));
    }
    // The AMI name after interpolation (as `capture` will use it).
    match &o.ami_name {
        Some(name) => {
            if let Err(why) = ami_name_ok(name) {
                c.errors.push(Finding::new(
                    format!("{K}.ami_name"),
                    format!("the AMI name `{name}` {why}: an AMI name is {AMI_NAME_RULE}"),
                ));
            }
        }
        None => {
            let name = format!("{}-{SAMPLE_BUILD_ID}", plan.template.name);
            if let Err(why) = ami_name_ok(&name) {
                c.errors.push(Finding::new(
                    "name",
                    format!(
                        "without builds.aws.options.ami_name the AMI is named `<name>-<build id>`, and `{name}` {why}: an AMI name is {AMI_NAME_RULE}"
                    ),
                ));
            }
        }
    }
    // A credential variable set to "" counts as unset: a key id without its
    // secret (or the reverse) would fail at the first call.
    let id = get(env, "AWS_ACCESS_KEY_ID");
    let secret = get(env, "AWS_SECRET_ACCESS_KEY");
    match (id.is_some(), secret.is_some()) {
        (true, false) => c.errors.push(Finding::new(
            "builds.aws",
            "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is unset or empty (an empty credential variable counts as unset)",
        )),
        (false, true) => c.errors.push(Finding::new(
            "builds.aws",
            "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is unset or empty (an empty credential variable counts as unset)",
        )),
        _ => {}
    }
    // copy_regions: the same region twice, or the source region.
    let mut seen: Vec<&str> = Vec::new();
    for (i, r) in raw.copy_regions.iter().enumerate() {
        let r = r.trim();
        if r.is_empty() {
            continue;
        }
        let key = format!("{K}.copy_regions[{i}]");
        if Some(r) == region {
            c.warnings.push(Finding::new(
                key,
                format!(
                    "`{r}` is the build's own region: the AMI is made there, not copied (ignored)"
                ),
            ));
        } else if seen.contains(&r) {
            c.warnings.push(Finding::new(
                key,
                format!("`{r}` is listed twice: the AMI is copied there once"),
            ));
        } else {
            seen.push(r);
        }
    }
    c
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::BTreeMap;

    fn env(map: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: BTreeMap<String, String> = map
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| m.get(k).cloned()
    }

    fn plan(options: &str, name: &str) -> (tempfile::TempDir, BuildPlan) {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("sc.tgz"), "x").unwrap();
        let src = format!(
            "name: {name}\nstemcells:\n  aws: {{path: sc.tgz}}\nbuilds:\n  aws:\n    options: {options}\n"
        );
        let p = d.path().join("t.yml");
        std::fs::write(&p, &src).unwrap();
        let l = opsbake_core::template::parse(&p, src).unwrap();
        let v = opsbake_core::vars::resolve(&l, &Default::default()).unwrap();
        let plan =
            opsbake_core::plan::plan_build(&l, &v, opsbake_core::template::Iaas::Aws, "b").unwrap();
        (d, plan)
    }

    #[test]
    fn region_from_options_env_or_config_file_and_empty_is_unset() {
        let o = AwsOptions::default();
        assert_eq!(resolve_region(&o, &env(&[])), None);
        assert_eq!(
            resolve_region(
                &o,
                &env(&[("AWS_REGION", ""), ("AWS_DEFAULT_REGION", "eu-west-1")])
            ),
            Some("eu-west-1".into())
        );
        let d = tempfile::tempdir().unwrap();
        let cfg = d.path().join("config");
        std::fs::write(
            &cfg,
            "[default]\nregion = us-west-2\n\n[profile ops]\noutput = json\nregion=ap-south-1\n",
        )
        .unwrap();
        let c = cfg.display().to_string();
        assert_eq!(
            resolve_region(&o, &env(&[("AWS_CONFIG_FILE", &c)])),
            Some("us-west-2".into())
        );
        assert_eq!(
            resolve_region(&o, &env(&[("AWS_CONFIG_FILE", &c), ("AWS_PROFILE", "ops")])),
            Some("ap-south-1".into())
        );
        assert_eq!(
            resolve_region(
                &o,
                &env(&[("AWS_CONFIG_FILE", &c), ("AWS_PROFILE", "none")])
            ),
            None
        );
        let o = AwsOptions {
            region: Some("ca-central-1".into()),
            ..AwsOptions::default()
        };
        assert_eq!(
            resolve_region(&o, &env(&[("AWS_REGION", "eu-west-1")])),
            Some("ca-central-1".into())
        );
    }

    #[test]
    fn no_region_bad_ami_names_and_half_credentials_are_findings() {
        let (_d, p) = plan("{ami_name: \"app:1.0\"}", "x");
        let e = env(&[("AWS_ACCESS_KEY_ID", "AKIA"), ("AWS_SECRET_ACCESS_KEY", "")]);
        let c = check(
            &p,
            resolve_region(&AwsOptions::default(), &e).as_deref(),
            &e,
        );
        let keys: Vec<&str> = c.errors.iter().map(|f| f.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "builds.aws.options.region",
                "builds.aws.options.ami_name",
                "builds.aws"
            ],
            "{c:?}"
        );
        assert!(c.errors[1].message.contains("`app:1.0` holds `:`"), "{c:?}");
        assert!(c.errors[1].message.contains("3 to 128"), "{c:?}");
        assert!(
            c.errors[2]
                .message
                .contains("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is unset or empty"),
            "{c:?}"
        );
        // Both empty: unset, no finding; a long default name is one.
        let long = "n".repeat(120);
        let (_d, p) = plan("{region: us-east-1}", &long);
        let e = env(&[("AWS_ACCESS_KEY_ID", ""), ("AWS_SECRET_ACCESS_KEY", "")]);
        let c = check(&p, Some("us-east-1"), &e);
        assert_eq!(c.errors.len(), 1, "{c:?}");
        assert_eq!(c.errors[0].key, "name");
        assert!(c.errors[0].message.contains("150 characters"), "{c:?}");
    }

    #[test]
    fn copy_regions_duplicates_and_the_source_are_warned_and_dropped() {
        let (_d, p) = plan(
            "{region: us-east-1, copy_regions: [eu-west-1, us-east-1, eu-west-1, ap-south-1]}",
            "x",
        );
        let c = check(&p, Some("us-east-1"), &env(&[]));
        assert!(c.errors.is_empty(), "{c:?}");
        let keys: Vec<&str> = c.warnings.iter().map(|f| f.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "builds.aws.options.copy_regions[1]",
                "builds.aws.options.copy_regions[2]"
            ]
        );
        let mut o = crate::normalise(p.template.builds.aws.clone().unwrap().options);
        assert_eq!(o.copy_regions, vec!["eu-west-1", "us-east-1", "ap-south-1"]);
        dedupe_copy_regions(&mut o.copy_regions);
        assert_eq!(o.copy_regions, vec!["eu-west-1", "us-east-1", "ap-south-1"]);
    }
}
