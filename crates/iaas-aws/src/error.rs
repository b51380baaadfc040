//! Typed errors of the AWS builder: each names the operation, the region and
//! the resource it was about.

use std::path::PathBuf;
use std::time::Duration;

use aws_sdk_ec2::error::ProvideErrorMetadata;

/// An error of the AWS builder.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    /// An API call failed (after the SDK's retries).
    #[error("{op} in {region}{}: {message}", about(.resource))]
    Api {
        /// The operation (`RunInstances`).
        op: &'static str,
        /// The region.
        region: String,
        /// The resource it was about.
        resource: Option<String>,
        /// The AWS error code, when there is one.
        code: Option<String>,
        /// The error with its context.
        message: String,
    },
    /// A wait ran out of time.
    #[error("timed out after {after:?} waiting for {what} in {region} (last seen: {last})")]
    WaitTimeout {
        /// What was awaited (`instance i-1 running`).
        what: String,
        /// The region.
        region: String,
        /// The limit.
        after: Duration,
        /// The last state or error seen.
        last: String,
    },
    /// A resource reached a state it cannot leave towards the one awaited.
    #[error("{what} in {region} failed: {state}")]
    Failed {
        /// What was awaited.
        what: String,
        /// The region.
        region: String,
        /// The state and its reason.
        state: String,
    },
    /// An answer lacked something it must hold.
    #[error("{op} in {region}: the answer has no {what}")]
    Missing {
        /// The operation.
        op: &'static str,
        /// The region.
        region: String,
        /// What is missing.
        what: &'static str,
    },
    /// The stemcell cannot be used.
    #[error("stemcell {path}: {message}")]
    Stemcell {
        /// The stemcell file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The template asks for something impossible.
    #[error("builds.aws: {0}")]
    Invalid(String),
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The SDK configuration could not be made.
    #[error("AWS configuration: {0}")]
    Config(String),
}

fn about(r: &Option<String>) -> String {
    match r {
        Some(r) => format!(" ({r})"),
        None => String::new(),
    }
}

impl AwsError {
    /// The AWS error code of an API error.
    pub fn code(&self) -> Option<&str> {
        match self {
            AwsError::Api { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// True when the resource does not exist (any `*.NotFound` code, and the
    /// codes EC2 uses for AMIs that are gone).
    pub fn is_not_found(&self) -> bool {
        match self.code() {
            Some(c) => {
                c.ends_with(".NotFound")
                    || c.ends_with("NotFound")
                    || c == "InvalidAMIID.Unavailable"
                    || c == "ResourceNotFoundException"
            }
            None => false,
        }
    }
}

/// Map an SDK error to [`AwsError::Api`].
pub fn api<E, R>(
    op: &'static str,
    region: &str,
    resource: Option<&str>,
) -> impl FnOnce(aws_sdk_ec2::error::SdkError<E, R>) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let region = region.to_string();
    let resource = resource.map(str::to_string);
    move |e| {
        let code = e.code().map(str::to_string);
        let message = match (e.code(), e.message()) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (Some(c), None) => c.to_string(),
            _ => aws_sdk_ec2::error::DisplayErrorContext(&e).to_string(),
        };
        AwsError::Api {
            op,
            region,
            resource,
            code,
            message,
        }
    }
}

impl From<AwsError> for opsbake_core::builder::BuildError {
    fn from(e: AwsError) -> Self {
        opsbake_core::builder::BuildError::iaas(opsbake_core::template::Iaas::Aws, e)
    }
}
