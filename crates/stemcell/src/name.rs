//! Stemcell file names (STEMCELLS.md §1).
//!
//! `[light-]bosh-stemcell-<ver>-<iaas>-<hypervisor>-<distro>-<os>[-<variant>][-go_agent][-<fmt>].tgz`
//!
//! AWS names use the two-part hypervisor `xen-hvm`; noble (24.04) names drop
//! `-go_agent`; `<variant>` is e.g. `fips`; `<fmt>` is e.g. `raw` for the
//! OpenStack raw flavour.

use std::fmt;

use serde::Serialize;

/// Hypervisor names made of two dash-separated words.
const TWO_WORD_HYPERVISORS: &[&str] = &["xen-hvm"];
/// Format suffixes that can follow the OS when `-go_agent` is absent (noble).
const FORMAT_SUFFIXES: &[&str] = &["raw", "qcow2", "vhd", "ovf", "ova"];

/// Why a file name is not a stemcell name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not a stemcell file name: {reason}")]
pub struct NameError {
    /// The name given.
    pub name: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A parsed stemcell file name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StemcellName {
    /// `light-` prefix present.
    pub light: bool,
    /// Version, e.g. `1.406` or `621.74`.
    pub version: String,
    /// IaaS, e.g. `aws`, `google`, `azure`, `vsphere`, `openstack`, `warden`.
    pub iaas: String,
    /// Hypervisor, e.g. `xen-hvm`, `kvm`, `hyperv`, `esxi`, `boshlite`.
    pub hypervisor: String,
    /// Distribution, e.g. `ubuntu`.
    pub distro: String,
    /// OS code name, e.g. `jammy`, `noble`.
    pub os: String,
    /// Variants, e.g. `["fips"]`.
    pub variants: Vec<String>,
    /// `-go_agent` present (absent from noble names).
    pub go_agent: bool,
    /// Trailing format, e.g. `raw`.
    pub format: Option<String>,
}

impl StemcellName {
    /// Parse a file name (a path's directories are ignored).
    pub fn parse(file_name: &str) -> Result<Self, NameError> {
        let base = file_name.rsplit('/').next().unwrap_or(file_name);
        let err = |reason: &str| NameError {
            name: file_name.to_string(),
            reason: reason.to_string(),
        };
        let stem = base
            .strip_suffix(".tgz")
            .or_else(|| base.strip_suffix(".tar.gz"))
            .ok_or_else(|| err("it does not end in .tgz"))?;
        let (light, stem) = match stem.strip_prefix("light-") {
            Some(s) => (true, s),
            None => (false, stem),
        };
        let rest = stem
            .strip_prefix("bosh-stemcell-")
            .ok_or_else(|| err("it does not start with bosh-stemcell- or light-bosh-stemcell-"))?;
        let mut parts: Vec<&str> = rest.split('-').collect();
        parts.reverse(); // pop from the front
        let mut next = |what: &str| {
            parts
                .pop()
                .filter(|p| !p.is_empty())
                .ok_or_else(|| err(&format!("the {what} is missing")))
        };
        let version = next("version")?;
        if !version.chars().all(|c| c.is_ascii_digit() || c == '.')
            || !version.starts_with(|c: char| c.is_ascii_digit())
        {
            return Err(err(&format!("version {version:?} is not numeric")));
        }
        let iaas = next("IaaS")?;
        let mut hypervisor = next("hypervisor")?.to_string();
        let distro_or_second = next("distribution")?;
        let distro = if TWO_WORD_HYPERVISORS
            .contains(&format!("{hypervisor}-{distro_or_second}").as_str())
        {
            hypervisor = format!("{hypervisor}-{distro_or_second}");
            next("distribution")?
        } else {
            distro_or_second
        };
        let os = next("OS code name")?;
        let mut tail: Vec<&str> = Vec::new();
        while let Some(p) = parts.pop() {
            if p.is_empty() {
                return Err(err("it has an empty part (two dashes in a row)"));
            }
            tail.push(p);
        }
        let (go_agent, variants, format) = match tail.iter().position(|p| *p == "go_agent") {
            Some(i) => {
                let after = &tail[i + 1..];
                if after.len() > 1 {
                    return Err(err("more than one part follows go_agent"));
                }
                (true, tail[..i].to_vec(), after.first().copied())
            }
            None => match tail.split_last() {
                Some((last, before)) if FORMAT_SUFFIXES.contains(last) => {
                    (false, before.to_vec(), Some(*last))
                }
                _ => (false, tail.clone(), None),
            },
        };
        Ok(StemcellName {
            light,
            version: version.to_string(),
            iaas: iaas.to_string(),
            hypervisor,
            distro: distro.to_string(),
            os: os.to_string(),
            variants: variants.into_iter().map(str::to_string).collect(),
            go_agent,
            format: format.map(str::to_string),
        })
    }

    /// The stemcell's name as `stemcell.MF` has it, e.g.
    /// `bosh-aws-xen-hvm-ubuntu-jammy-fips-go_agent`.
    pub fn stemcell_name(&self) -> String {
        let mut s = format!(
            "bosh-{}-{}-{}-{}",
            self.iaas, self.hypervisor, self.distro, self.os
        );
        for v in &self.variants {
            s.push('-');
            s.push_str(v);
        }
        if self.go_agent {
            s.push_str("-go_agent");
        }
        s
    }

    /// `operating_system` as the MF has it, e.g. `ubuntu-jammy`.
    pub fn operating_system(&self) -> String {
        format!("{}-{}", self.distro, self.os)
    }
}

impl fmt::Display for StemcellName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.light {
            f.write_str("light-")?;
        }
        write!(
            f,
            "bosh-stemcell-{}-{}-{}-{}-{}",
            self.version, self.iaas, self.hypervisor, self.distro, self.os
        )?;
        for v in &self.variants {
            write!(f, "-{v}")?;
        }
        if self.go_agent {
            f.write_str("-go_agent")?;
        }
        if let Some(fmt) = &self.format {
            write!(f, "-{fmt}")?;
        }
        f.write_str(".tgz")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_names_parse_and_print_back() {
        let cases = [
            (
                "bosh-stemcell-1.406-aws-xen-hvm-ubuntu-jammy-go_agent.tgz",
                false,
                "aws",
                "xen-hvm",
                "jammy",
                vec![],
                true,
                None,
            ),
            (
                "light-bosh-stemcell-1.406-aws-xen-hvm-ubuntu-jammy-go_agent.tgz",
                true,
                "aws",
                "xen-hvm",
                "jammy",
                vec![],
                true,
                None,
            ),
            (
                "bosh-stemcell-1.406-aws-xen-hvm-ubuntu-jammy-fips-go_agent.tgz",
                false,
                "aws",
                "xen-hvm",
                "jammy",
                vec!["fips"],
                true,
                None,
            ),
            (
                "light-bosh-stemcell-1.406-google-kvm-ubuntu-jammy-go_agent.tgz",
                true,
                "google",
                "kvm",
                "jammy",
                vec![],
                true,
                None,
            ),
            (
                "bosh-stemcell-1.406-azure-hyperv-ubuntu-jammy-go_agent.tgz",
                false,
                "azure",
                "hyperv",
                "jammy",
                vec![],
                true,
                None,
            ),
            (
                "bosh-stemcell-1.406-vsphere-esxi-ubuntu-jammy-go_agent.tgz",
                false,
                "vsphere",
                "esxi",
                "jammy",
                vec![],
                true,
                None,
            ),
            (
                "bosh-stemcell-1.7-vsphere-esxi-ubuntu-noble.tgz",
                false,
                "vsphere",
                "esxi",
                "noble",
                vec![],
                false,
                None,
            ),
            (
                "bosh-stemcell-1.7-aws-xen-hvm-ubuntu-noble-fips.tgz",
                false,
                "aws",
                "xen-hvm",
                "noble",
                vec!["fips"],
                false,
                None,
            ),
            (
                "bosh-stemcell-621.74-openstack-kvm-ubuntu-xenial-go_agent-raw.tgz",
                false,
                "openstack",
                "kvm",
                "xenial",
                vec![],
                true,
                Some("raw"),
            ),
            (
                "bosh-stemcell-1.7-openstack-kvm-ubuntu-noble-raw.tgz",
                false,
                "openstack",
                "kvm",
                "noble",
                vec![],
                false,
                Some("raw"),
            ),
            (
                "bosh-stemcell-1.406-warden-boshlite-ubuntu-jammy-go_agent.tgz",
                false,
                "warden",
                "boshlite",
                "jammy",
                vec![],
                true,
                None,
            ),
        ];
        for (file, light, iaas, hyp, os, variants, go_agent, format) in cases {
            let n = StemcellName::parse(file).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(n.light, light, "{file}");
            assert_eq!(n.iaas, iaas, "{file}");
            assert_eq!(n.hypervisor, hyp, "{file}");
            assert_eq!(n.os, os, "{file}");
            assert_eq!(n.distro, "ubuntu", "{file}");
            assert_eq!(n.variants, variants, "{file}");
            assert_eq!(n.go_agent, go_agent, "{file}");
            assert_eq!(n.format.as_deref(), format, "{file}");
            assert_eq!(n.to_string(), file);
        }
        let n = StemcellName::parse(
            "/x/bosh-stemcell-1.406-aws-xen-hvm-ubuntu-jammy-fips-go_agent.tgz",
        )
        .unwrap();
        assert_eq!(n.version, "1.406");
        assert_eq!(
            n.stemcell_name(),
            "bosh-aws-xen-hvm-ubuntu-jammy-fips-go_agent"
        );
        assert_eq!(n.operating_system(), "ubuntu-jammy");
    }

    #[test]
    fn bad_names_are_refused_with_a_reason() {
        for bad in [
            "bosh-stemcell-1.406-aws-xen-hvm-ubuntu-jammy-go_agent.zip",
            "stemcell-1.406-aws-xen-hvm-ubuntu-jammy.tgz",
            "bosh-stemcell-latest-aws-xen-hvm-ubuntu-jammy.tgz",
            "bosh-stemcell-1.406-aws.tgz",
            "bosh-stemcell-1.406-aws-xen-hvm-ubuntu.tgz",
            "bosh-stemcell-1.406-aws-kvm-ubuntu-jammy-go_agent-raw-x.tgz",
        ] {
            let e = StemcellName::parse(bad).unwrap_err();
            assert_eq!(e.name, bad);
            assert!(!e.reason.is_empty());
        }
    }
}
