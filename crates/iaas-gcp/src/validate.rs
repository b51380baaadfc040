//! Validate: the offline rules, then project, zone, credentials and
//! machine type in one `machineTypes.get`, the bucket of a heavy stemcell.

use opsbake_core::builder::{BuildContext, BuildError};

use crate::api::CredSource;
use crate::connect::is_loopback_endpoint;
use crate::error::GcpError;
use crate::options::*;
use crate::GcpBuilder;
use opsbake_core::builder::Builder as _;

impl GcpBuilder {
    pub(crate) async fn validate_all(&self, ctx: &BuildContext) -> Result<(), BuildError> {
        let findings = self.offline_checks();
        if !findings.is_empty() {
            let m: Vec<String> = findings
                .iter()
                .map(|f| format!("{}: {}", f.key, f.message))
                .collect();
            return Err(GcpError::Invalid(m.join("; ")).into());
        }
        if ctx.options.offline {
            for (what, ep) in [
                ("endpoint", self.opts.endpoint.as_deref()),
                ("storage_endpoint", self.opts.storage_endpoint.as_deref()),
            ] {
                match ep {
                    Some(e) if is_loopback_endpoint(e) => {}
                    Some(e) => {
                        return Err(GcpError::Invalid(format!(
                            "--offline: options.{what} {e} is not on this machine"
                        ))
                        .into())
                    }
                    None => {
                        return Err(GcpError::Invalid(format!(
                            "--offline: a gcp build talks to Google's APIs (set options.{what} to a loopback test server, or build without --offline)"
                        ))
                        .into())
                    }
                }
            }
            if matches!(self.api_creds(), CredSource::Adc) {
                return Err(GcpError::Invalid(
                    "--offline: Application Default Credentials may reach the metadata server; set options.credentials_file or anonymous_credentials".into(),
                )
                .into());
            }
        }
        let (path, m) = self.manifest(ctx).await?;
        let heavy = !m.is_light();
        if heavy {
            let fmt_ok = m.stemcell_formats.iter().any(|f| f == "google-rawdisk")
                || matches!(
                    m.cloud_properties.disk_format.as_deref(),
                    Some("rawdisk" | "raw")
                );
            if !fmt_ok {
                return Err(GcpError::Stemcell {
                    path,
                    message: format!(
                        "formats {:?}: not importable into GCE (google-rawdisk or google-light needed)",
                        m.stemcell_formats
                    ),
                }
                .into());
            }
        } else {
            m.light_image(None).map_err(|e| GcpError::Stemcell {
                path: path.clone(),
                message: e.to_string(),
            })?;
        }
        // Credentials, project, zone and machine type: one cheap read.
        let mt = self
            .opts
            .machine_type
            .clone()
            .unwrap_or_else(|| DEFAULT_MACHINE_TYPE.to_string());
        self.api.machine_type(&mt).await?;
        if heavy {
            let b = self.opts.bucket.clone().ok_or_else(|| {
                GcpError::Invalid(format!(
                    "{} is a heavy stemcell: set builds.gcp.options.bucket (a Cloud Storage bucket for the import)",
                    path.display()
                ))
            })?;
            if !self.api.bucket_exists(&b).await? {
                return Err(GcpError::Invalid(format!(
                    "bucket gs://{b} does not exist (builds.gcp.options.bucket)"
                ))
                .into());
            }
        }
        Ok(())
    }
}
