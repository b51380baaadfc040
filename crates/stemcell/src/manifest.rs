//! `stemcell.MF` (STEMCELLS.md §2) and light stemcells' cloud image references.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_yaml_ng::Value;

use opsbake_core::iaas::Iaas;

/// SHA-1 of the empty string: the `sha1` of every light stemcell.
pub const EMPTY_SHA1: &str = "da39a3ee5e6b4b0d3255bfef95601890afd80709";
/// `cloud_properties.disk` when the MF does not give one (MiB).
pub const DEFAULT_DISK_MIB: u64 = 5120;
/// Keys a `stemcell.MF` must have.
pub const REQUIRED_KEYS: &[&str] = &["name", "version", "sha1", "cloud_properties"];

/// What is wrong with a `stemcell.MF`, or with a light stemcell's references.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not YAML, or a key has the wrong type.
    #[error("stemcell.MF is not valid: {0}")]
    Yaml(#[from] serde_yaml_ng::Error),
    /// Not a YAML mapping.
    #[error("stemcell.MF is not a YAML mapping")]
    NotAMapping,
    /// A required key is absent.
    #[error("stemcell.MF has no {0:?} key")]
    MissingKey(&'static str),
    /// `sha1` is not 40 hex digits.
    #[error("stemcell.MF sha1 {0:?} is not 40 hex digits")]
    BadSha1(String),
    /// `bosh_protocol` is neither an integer nor a string holding one.
    #[error("stemcell.MF bosh_protocol {0:?} is not an integer")]
    BadProtocol(String),
    /// A light AWS stemcell has no AMI for the region asked for.
    #[error("light stemcell {stemcell} has no AMI for region {region}; it has AMIs for: {}", available.join(", "))]
    AmiRegionMissing {
        /// The stemcell's name.
        stemcell: String,
        /// The region asked for.
        region: String,
        /// Regions that have an AMI.
        available: Vec<String>,
    },
    /// A light AWS stemcell needs a region to resolve.
    #[error("light AWS stemcell {0} needs a region to pick an AMI")]
    RegionNeeded(String),
    /// The stemcell is heavy: it has no cloud image reference.
    #[error("stemcell {0} is heavy: it carries an image, not a cloud image reference")]
    NotLight(String),
    /// A light stemcell's cloud properties lack what its IaaS needs.
    #[error("light stemcell {stemcell} ({iaas}) has no usable image reference: {missing}")]
    NoImageReference {
        /// The stemcell's name.
        stemcell: String,
        /// Its infrastructure.
        iaas: String,
        /// What is missing.
        missing: String,
    },
}

/// `bosh_protocol`: an integer in heavy stemcells, the string "1" in light AWS ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BoshProtocol {
    /// `bosh_protocol: 1`
    Int(u64),
    /// `bosh_protocol: "1"`
    Str(String),
}

impl BoshProtocol {
    /// The protocol as a number.
    pub fn number(&self) -> Result<u64, ManifestError> {
        match self {
            BoshProtocol::Int(n) => Ok(*n),
            BoshProtocol::Str(s) => s
                .trim()
                .parse()
                .map_err(|_| ManifestError::BadProtocol(s.clone())),
        }
    }
}

/// A parsed `stemcell.MF`. Unknown keys are kept in `extra`, so a
/// manifest written back holds everything that was read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// e.g. `bosh-aws-xen-hvm-ubuntu-jammy-go_agent`.
    pub name: String,
    /// e.g. `1.406` (a number in the YAML is accepted and kept as text).
    #[serde(deserialize_with = "string_or_number")]
    pub version: String,
    /// Integer or string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bosh_protocol: Option<BoshProtocol>,
    /// 3 in current stemcells.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<u64>,
    /// SHA-1 of the `image` member as a whole.
    pub sha1: String,
    /// e.g. `ubuntu-jammy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operating_system: Option<String>,
    /// e.g. `[aws-raw]`, `[vsphere-ova, vsphere-ovf]`, `[aws-light]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stemcell_formats: Vec<String>,
    /// The IaaS-specific properties.
    pub cloud_properties: CloudProperties,
    /// Keys opsbake does not know.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// `cloud_properties`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CloudProperties {
    /// Stemcell name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Stemcell version.
    #[serde(
        default,
        deserialize_with = "opt_string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub version: Option<String>,
    /// `aws`, `google`, `azure`, `vsphere`, `openstack`, `warden`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infrastructure: Option<String>,
    /// `xen`, `kvm`, `hyperv`, `esxi`, `boshlite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hypervisor: Option<String>,
    /// Root disk size in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<u64>,
    /// `raw`, `rawdisk`, `vhd`, `ovf`, `qcow2`, `files`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_format: Option<String>,
    /// `bare`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_format: Option<String>,
    /// `linux`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_type: Option<String>,
    /// `ubuntu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_distro: Option<String>,
    /// `x86_64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// e.g. `/dev/sda1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_device_name: Option<String>,
    /// Light AWS: AMI id by region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ami: Option<BTreeMap<String, String>>,
    /// Light GCP (current): `https://www.googleapis.com/compute/v1/projects/<p>/global/images/<i>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_url: Option<String>,
    /// Light GCP (older): a GCS `.tar.gz`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_url: Option<String>,
    /// Light GCP (older): SHA-1 of the raw disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_disk_sha1: Option<String>,
    /// Light Azure: marketplace image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<AzureImageRef>,
    /// Light Azure: `gen1` (default) or `gen2`.
    #[serde(
        default,
        deserialize_with = "opt_string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub generation: Option<String>,
    /// Keys opsbake does not know.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// An Azure marketplace image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AzureImageRef {
    /// Publisher.
    pub publisher: String,
    /// Offer.
    pub offer: String,
    /// SKU.
    pub sku: String,
    /// Version.
    #[serde(deserialize_with = "string_or_number")]
    pub version: String,
    /// Generation, when given inside `image`.
    #[serde(
        default,
        deserialize_with = "opt_string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub generation: Option<String>,
}

/// What a light stemcell points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CloudImageRef {
    /// An AMI in one region.
    AwsAmi {
        /// Region.
        region: String,
        /// AMI id.
        ami: String,
    },
    /// A GCE image (current light stemcells).
    GcpImage {
        /// The image's URL.
        image_url: String,
    },
    /// A GCS tarball to import (older light stemcells).
    GcpSource {
        /// The `.tar.gz` in GCS.
        source_url: String,
        /// SHA-1 of the raw disk, when given.
        raw_disk_sha1: Option<String>,
    },
    /// An Azure marketplace image.
    AzureImage {
        /// Publisher.
        publisher: String,
        /// Offer.
        offer: String,
        /// SKU.
        sku: String,
        /// Version.
        version: String,
        /// `gen1` unless the MF says otherwise.
        generation: String,
    },
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let v = Value::deserialize(d)?;
    value_to_string(&v).ok_or_else(|| serde::de::Error::custom("expected a string or a number"))
}

fn opt_string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v = Value::deserialize(d)?;
    if v.is_null() {
        return Ok(None);
    }
    value_to_string(&v)
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom("expected a string or a number"))
}

fn value_to_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Manifest {
    /// Parse `stemcell.MF` text. Missing required keys give
    /// [`ManifestError::MissingKey`]; unknown keys are kept.
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let v: Value = serde_yaml_ng::from_str(text)?;
        let map = v.as_mapping().ok_or(ManifestError::NotAMapping)?;
        for key in REQUIRED_KEYS {
            match map.get(*key) {
                None | Some(Value::Null) => return Err(ManifestError::MissingKey(key)),
                Some(_) => {}
            }
        }
        let m: Manifest = serde_yaml_ng::from_value(v)?;
        if m.sha1.len() != 40 || !m.sha1.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(ManifestError::BadSha1(m.sha1));
        }
        if let Some(p) = &m.bosh_protocol {
            p.number()?;
        }
        Ok(m)
    }

    /// The manifest as YAML.
    pub fn to_yaml(&self) -> Result<String, ManifestError> {
        Ok(serde_yaml_ng::to_string(self)?)
    }

    /// The infrastructure: `cloud_properties.infrastructure`, else the second
    /// word of the name (`bosh-<iaas>-...`).
    pub fn iaas(&self) -> String {
        self.cloud_properties
            .infrastructure
            .clone()
            .or_else(|| self.name.split('-').nth(1).map(str::to_string))
            .unwrap_or_default()
    }

    /// Declared root disk size in MiB (default 5120).
    pub fn disk_mib(&self) -> u64 {
        self.cloud_properties.disk.unwrap_or(DEFAULT_DISK_MIB)
    }

    /// Light: a `*-light` format, or cloud image references with the empty
    /// string's SHA-1.
    pub fn is_light(&self) -> bool {
        if self.stemcell_formats.iter().any(|f| f.ends_with("-light")) {
            return true;
        }
        let cp = &self.cloud_properties;
        self.sha1.eq_ignore_ascii_case(EMPTY_SHA1)
            && (cp.ami.is_some()
                || cp.image_url.is_some()
                || cp.source_url.is_some()
                || cp.image.is_some())
    }

    /// The cloud image a light stemcell points at. `region` is needed for AWS.
    pub fn light_image(&self, region: Option<&str>) -> Result<CloudImageRef, ManifestError> {
        if !self.is_light() {
            return Err(ManifestError::NotLight(self.name.clone()));
        }
        let cp = &self.cloud_properties;
        let iaas = self.iaas();
        let none = |missing: &str| ManifestError::NoImageReference {
            stemcell: self.name.clone(),
            iaas: iaas.clone(),
            missing: missing.to_string(),
        };
        match Iaas::for_stemcell_infrastructure(&iaas) {
            Some(Iaas::Aws) => {
                let amis = cp
                    .ami
                    .as_ref()
                    .ok_or_else(|| none("no cloud_properties.ami"))?;
                let region =
                    region.ok_or_else(|| ManifestError::RegionNeeded(self.name.clone()))?;
                let ami = amis
                    .get(region)
                    .ok_or_else(|| ManifestError::AmiRegionMissing {
                        stemcell: self.name.clone(),
                        region: region.to_string(),
                        available: amis.keys().cloned().collect(),
                    })?;
                Ok(CloudImageRef::AwsAmi {
                    region: region.to_string(),
                    ami: ami.clone(),
                })
            }
            Some(Iaas::Gcp) => {
                if let Some(url) = &cp.image_url {
                    Ok(CloudImageRef::GcpImage {
                        image_url: url.clone(),
                    })
                } else if let Some(src) = &cp.source_url {
                    Ok(CloudImageRef::GcpSource {
                        source_url: src.clone(),
                        raw_disk_sha1: cp.raw_disk_sha1.clone(),
                    })
                } else {
                    Err(none("neither cloud_properties.image_url nor source_url"))
                }
            }
            Some(Iaas::Azure) => {
                let img = cp
                    .image
                    .as_ref()
                    .ok_or_else(|| none("no cloud_properties.image"))?;
                Ok(CloudImageRef::AzureImage {
                    publisher: img.publisher.clone(),
                    offer: img.offer.clone(),
                    sku: img.sku.clone(),
                    version: img.version.clone(),
                    generation: img
                        .generation
                        .clone()
                        .or_else(|| cp.generation.clone())
                        .unwrap_or_else(|| "gen1".to_string()),
                })
            }
            _ => Err(none(&format!(
                "light stemcells of infrastructure {iaas:?} are not known"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AWS_HEAVY: &str = r#"---
name: bosh-aws-xen-hvm-ubuntu-xenial-go_agent
version: '621.74'
bosh_protocol: 1
api_version: 3
sha1: 98b0844541831392cb2efc66292143a3332c705a
operating_system: ubuntu-xenial
stemcell_formats: [aws-raw]
cloud_properties: {name: bosh-aws-xen-hvm-ubuntu-xenial-go_agent, version: '621.74', infrastructure: aws, hypervisor: xen, disk: 3072, disk_format: raw, container_format: bare, os_type: linux, os_distro: ubuntu, architecture: x86_64, root_device_name: "/dev/sda1"}
"#;

    const AWS_LIGHT: &str = r#"---
name: bosh-aws-xen-hvm-ubuntu-jammy-go_agent
version: "1.406"
bosh_protocol: "1"
api_version: 3
sha1: da39a3ee5e6b4b0d3255bfef95601890afd80709
operating_system: ubuntu-jammy
stemcell_formats:
- aws-light
cloud_properties:
  infrastructure: aws
  ami:
    us-east-1: ami-0123456789abcdef0
    eu-west-1: ami-0fedcba9876543210
"#;

    #[test]
    fn heavy_aws_manifest_parses() {
        let m = Manifest::parse(AWS_HEAVY).unwrap();
        assert_eq!(m.version, "621.74");
        assert_eq!(m.bosh_protocol.as_ref().unwrap().number().unwrap(), 1);
        assert_eq!(m.api_version, Some(3));
        assert_eq!(m.iaas(), "aws");
        assert_eq!(m.disk_mib(), 3072);
        assert_eq!(
            m.cloud_properties.root_device_name.as_deref(),
            Some("/dev/sda1")
        );
        assert!(!m.is_light());
        assert!(matches!(
            m.light_image(Some("us-east-1")),
            Err(ManifestError::NotLight(_))
        ));
    }

    #[test]
    fn light_aws_resolves_per_region_and_names_the_regions_present() {
        let m = Manifest::parse(AWS_LIGHT).unwrap();
        assert_eq!(m.bosh_protocol, Some(BoshProtocol::Str("1".into())));
        assert!(m.is_light());
        assert_eq!(
            m.light_image(Some("eu-west-1")).unwrap(),
            CloudImageRef::AwsAmi {
                region: "eu-west-1".into(),
                ami: "ami-0fedcba9876543210".into()
            }
        );
        let e = m.light_image(Some("ap-south-1")).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("ap-south-1") && msg.contains("eu-west-1, us-east-1"),
            "{msg}"
        );
        assert!(matches!(
            m.light_image(None),
            Err(ManifestError::RegionNeeded(_))
        ));
    }

    #[test]
    fn light_gcp_current_and_older_forms() {
        let cur = r#"
name: bosh-google-kvm-ubuntu-jammy-go_agent
version: "1.406"
bosh_protocol: 1
sha1: da39a3ee5e6b4b0d3255bfef95601890afd80709
operating_system: ubuntu-jammy
stemcell_formats: [google-light]
cloud_properties: {name: bosh-google-kvm-ubuntu-jammy-go_agent, version: "1.406", infrastructure: google, hypervisor: kvm, disk: 5120, disk_format: rawdisk, container_format: bare, os_type: linux, os_distro: ubuntu, architecture: x86_64, image_url: "https://www.googleapis.com/compute/v1/projects/bosh-cpi/global/images/stemcell-1-406"}
"#;
        let m = Manifest::parse(cur).unwrap();
        assert_eq!(
            m.light_image(None).unwrap(),
            CloudImageRef::GcpImage {
                image_url: "https://www.googleapis.com/compute/v1/projects/bosh-cpi/global/images/stemcell-1-406".into()
            }
        );
        let old = r#"
name: bosh-google-kvm-ubuntu-trusty-go_agent
version: 3468
bosh_protocol: 1
sha1: da39a3ee5e6b4b0d3255bfef95601890afd80709
cloud_properties: {infrastructure: google, source_url: "https://storage.googleapis.com/b/light.tar.gz", raw_disk_sha1: "0123456789012345678901234567890123456789"}
"#;
        let m = Manifest::parse(old).unwrap();
        assert_eq!(m.version, "3468");
        assert_eq!(
            m.light_image(None).unwrap(),
            CloudImageRef::GcpSource {
                source_url: "https://storage.googleapis.com/b/light.tar.gz".into(),
                raw_disk_sha1: Some("0123456789012345678901234567890123456789".into())
            }
        );
    }

    #[test]
    fn light_azure_with_and_without_generation() {
        let text = |gen: &str| {
            format!(
                r#"
name: bosh-azure-hyperv-ubuntu-jammy-go_agent
version: "1.406"
bosh_protocol: 1
sha1: da39a3ee5e6b4b0d3255bfef95601890afd80709
operating_system: ubuntu-jammy
stemcell_formats: [azure-light]
cloud_properties:
  infrastructure: azure
  image: {{publisher: pivotal, offer: bosh-ubuntu-jammy, sku: "1.406", version: 1.406.0}}
{gen}
"#
            )
        };
        let m = Manifest::parse(&text("")).unwrap();
        let CloudImageRef::AzureImage {
            generation,
            sku,
            version,
            ..
        } = m.light_image(None).unwrap()
        else {
            panic!("not azure")
        };
        assert_eq!(
            (generation.as_str(), sku.as_str(), version.as_str()),
            ("gen1", "1.406", "1.406.0")
        );
        let m = Manifest::parse(&text("  generation: gen2")).unwrap();
        let CloudImageRef::AzureImage { generation, .. } = m.light_image(None).unwrap() else {
            panic!("not azure")
        };
        assert_eq!(generation, "gen2");
    }

    #[test]
    fn unknown_keys_are_kept_and_written_back() {
        let text = format!("{AWS_HEAVY}future_key: {{a: 1}}\n");
        let text = text.replace("root_device_name", "new_prop: x, root_device_name");
        let m = Manifest::parse(&text).unwrap();
        assert!(m.extra.contains_key("future_key"));
        assert!(m.cloud_properties.extra.contains_key("new_prop"));
        let back = Manifest::parse(&m.to_yaml().unwrap()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn missing_keys_and_bad_values_are_distinct_errors() {
        let no_sha = AWS_HEAVY.replace("sha1: 98b0844541831392cb2efc66292143a3332c705a\n", "");
        assert!(matches!(
            Manifest::parse(&no_sha),
            Err(ManifestError::MissingKey("sha1"))
        ));
        let no_cp = AWS_HEAVY
            .lines()
            .filter(|l| !l.starts_with("cloud_properties"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(matches!(
            Manifest::parse(&no_cp),
            Err(ManifestError::MissingKey("cloud_properties"))
        ));
        let bad_sha = AWS_HEAVY.replace("98b0844541831392cb2efc66292143a3332c705a", "xyz");
        assert!(matches!(
            Manifest::parse(&bad_sha),
            Err(ManifestError::BadSha1(_))
        ));
        let bad_proto = AWS_HEAVY.replace("bosh_protocol: 1", "bosh_protocol: one");
        assert!(matches!(
            Manifest::parse(&bad_proto),
            Err(ManifestError::BadProtocol(_))
        ));
        assert!(matches!(
            Manifest::parse("- a\n- b\n"),
            Err(ManifestError::NotAMapping)
        ));
        assert!(matches!(
            Manifest::parse("a: [\n"),
            Err(ManifestError::Yaml(_))
        ));
    }
}
