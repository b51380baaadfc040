//! The `builds.aws.options` of a template (one file per IaaS, so that a builder
//! changes only its own).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::template::Dur;

/// AWS options (see docs/aws.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct AwsOptions {
    /// Region of the build.
    #[serde(default)]
    pub region: Option<String>,
    /// Regions to copy the AMI to.
    #[serde(default)]
    pub copy_regions: Vec<String>,
    /// Instance type (default m5.large).
    #[serde(default)]
    pub instance_type: Option<String>,
    /// AMI name (must be unique).
    #[serde(default)]
    pub ami_name: Option<String>,
    /// AMI description.
    #[serde(default)]
    pub ami_description: Option<String>,
    /// Replace an existing AMI of the same name.
    #[serde(default)]
    pub force_deregister: bool,
    /// Accounts allowed to launch the AMI.
    #[serde(default)]
    pub ami_users: Vec<String>,
    /// Groups allowed to launch the AMI (`all` makes it public).
    #[serde(default)]
    pub ami_groups: Vec<String>,
    /// Accounts allowed to create volumes from the snapshots.
    #[serde(default)]
    pub snapshot_users: Vec<String>,
    /// Encrypt the AMI's snapshots.
    #[serde(default)]
    pub encrypt: bool,
    /// KMS key per region.
    #[serde(default)]
    pub kms_key_ids: BTreeMap<String, String>,
    /// Tags on images and snapshots.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Deprecate the AMI at this time (RFC 3339).
    #[serde(default)]
    pub deprecate_at: Option<String>,
    /// An existing security group instead of a temporary one.
    #[serde(default)]
    pub security_group_id: Option<String>,
    /// Endpoint override (tests: moto).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Use a spot instance.
    #[serde(default)]
    pub spot: bool,
    /// How to import a heavy stemcell: `ebs-direct` (default) or `s3`.
    #[serde(default)]
    pub import: Option<String>,
    /// Bucket for `import: s3`.
    #[serde(default)]
    pub import_bucket: Option<String>,
    /// Re-import the stemcell even if a base AMI with its sha1 exists.
    #[serde(default)]
    pub reimport: bool,
    /// Overall limit of each wait (instance running/stopped, AMI available,
    /// snapshot completed); default 30m.
    #[serde(default)]
    pub wait_timeout: Option<Dur>,
    /// Snapshot blocks uploaded at once when importing a heavy stemcell
    /// (default 16).
    #[serde(default)]
    pub upload_concurrency: Option<u32>,
}
