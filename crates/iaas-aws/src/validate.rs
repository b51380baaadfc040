//! `validate`: everything checked before anything is created (offline
//! rules, import mode, deprecation time, KMS regions, the stemcell, the
//! import bucket, credentials and instance type in one call, copy regions).

use std::path::PathBuf;

use aws_sdk_ec2::primitives::{DateTime, DateTimeFormat};
use aws_sdk_ec2::types::InstanceType;
use opsbake_core::builder::{BuildContext, BuildError};
use opsbake_core::template::Iaas;

use crate::error::{api, AwsError};
use crate::options::{all_regions, is_loopback_endpoint, DEFAULT_INSTANCE_TYPE};
use crate::AwsBuilder;

impl AwsBuilder {
    pub(crate) async fn validate_build(&self, ctx: &BuildContext) -> Result<(), BuildError> {
        let o = &self.opts;
        if ctx.options.offline {
            // `--offline`: nothing may leave this machine. An EC2 API on
            // loopback (moto) is allowed; credentials then come from the
            // environment only (no IMDS, SSO or container endpoints).
            match o.endpoint.as_deref() {
                Some(e) if is_loopback_endpoint(e) => self.clients.set_offline(),
                Some(e) => {
                    return Err(AwsError::Invalid(format!(
                        "--offline: the endpoint {e} is not on this machine (an aws build is offline only against a loopback endpoint such as moto)"
                    )).into())
                }
                None => {
                    return Err(AwsError::Invalid(format!(
                        "--offline: an aws build talks to the EC2 API of {} (set options.endpoint to a loopback emulator, or build without --offline)",
                        self.region
                    )).into())
                }
            }
        }
        self.ssh_cidrs_ok(ctx)?;
        match o.import.as_deref() {
            None | Some("ebs-direct") => {}
            Some("s3") if o.import_bucket.is_none() => {
                return Err(AwsError::Invalid(
                    "import: s3 needs options.import_bucket (an S3 bucket in the build region)"
                        .into(),
                )
                .into())
            }
            Some("s3") => {}
            Some(x) => {
                return Err(
                    AwsError::Invalid(format!("import: `{x}` is not `ebs-direct` or `s3`")).into(),
                )
            }
        }
        if let Some(at) = &o.deprecate_at {
            DateTime::from_str(at, DateTimeFormat::DateTime).map_err(|e| {
                AwsError::Invalid(format!("deprecate_at `{at}` is not an RFC 3339 time: {e}"))
            })?;
        }
        for r in o.kms_key_ids.keys() {
            if !all_regions(&self.region, o).contains(r) {
                return Err(AwsError::Invalid(format!(
                    "kms_key_ids names {r}, which is neither the region nor a copy region"
                ))
                .into());
            }
        }
        // The stemcell resolves.
        let (path, m) = self.manifest(ctx).await?;
        if m.is_light() {
            m.light_image(Some(&self.region))
                .map_err(|e| AwsError::Stemcell {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
        } else if !m.stemcell_formats.iter().any(|f| f == "aws-raw")
            && m.cloud_properties.disk_format.as_deref() != Some("raw")
        {
            return Err(AwsError::Stemcell {
                path,
                message: format!(
                    "formats {:?}: not importable (aws-raw or aws-light needed)",
                    m.stemcell_formats
                ),
            }
            .into());
        }
        // The import bucket, when a heavy stemcell goes through S3.
        if let (false, Some("s3"), Some(b)) = (
            m.is_light(),
            o.import.as_deref(),
            o.import_bucket.as_deref(),
        ) {
            let s3 = self.clients.s3(&self.region).await?;
            s3.head_bucket().bucket(b).send().await.map_err(api(
                "HeadBucket",
                &self.region,
                Some(b),
            ))?;
        }
        // Credentials and the instance type: one call.
        let region = self.region.as_str();
        let ec2 = self.clients.ec2(region).await?;
        let it = o
            .instance_type
            .clone()
            .unwrap_or_else(|| DEFAULT_INSTANCE_TYPE.to_string());
        let out = ec2
            .describe_instance_types()
            .instance_types(InstanceType::from(it.as_str()))
            .send()
            .await
            .map_err(api("DescribeInstanceTypes", region, Some(&it)))?;
        if out.instance_types().is_empty() {
            return Err(AwsError::Invalid(format!(
                "instance type {it} is not offered in {region}"
            ))
            .into());
        }
        // Copy regions exist.
        if !o.copy_regions.is_empty() {
            let out = ec2
                .describe_regions()
                .all_regions(true)
                .send()
                .await
                .map_err(api("DescribeRegions", region, None))?;
            let known: Vec<&str> = out
                .regions()
                .iter()
                .filter_map(|r| r.region_name())
                .collect();
            for r in &o.copy_regions {
                if !known.contains(&r.as_str()) {
                    return Err(AwsError::Invalid(format!(
                        "copy region {r} is not a region (known: {})",
                        known.join(", ")
                    ))
                    .into());
                }
            }
        }
        Ok(())
    }

    fn ssh_cidrs_ok(&self, ctx: &BuildContext) -> Result<(), AwsError> {
        if self.opts.security_group_id.is_none() && ctx.plan.ssh_cidrs().is_empty() {
            return Err(AwsError::Invalid(
                "network.ssh_cidrs is empty: name the CIDRs allowed to reach SSH on the build instance, or an existing security_group_id".into(),
            ));
        }
        Ok(())
    }

    /// The stemcell's path and manifest (an aws stemcell, checked).
    pub(crate) async fn manifest(
        &self,
        ctx: &BuildContext,
    ) -> Result<(PathBuf, opsbake_stemcell::Manifest), AwsError> {
        (ctx.plan)
            .read_stemcell(
                Iaas::Aws,
                opsbake_stemcell::read_manifest,
                |m| (m.iaas(), m.name.clone()),
                AwsError::Invalid,
                |path, message| AwsError::Stemcell { path, message },
            )
            .await
    }
}
