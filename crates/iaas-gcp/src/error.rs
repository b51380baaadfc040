//! The GCP builder's typed errors: each names the call, the project and the
//! zone (or `global`) and the resource.

use std::time::Duration;

use opsbake_core::builder::BuildError;
use opsbake_core::template::Iaas;
use opsbake_core::wait::WaitError;

/// What went wrong talking to GCP.
#[derive(Debug, thiserror::Error)]
pub enum GcpError {
    /// A setting is missing or wrong (caught before anything is created).
    #[error("{0}")]
    Invalid(String),
    /// Credentials could not be loaded (never shows their contents).
    #[error("credentials: {0}")]
    Credentials(String),
    /// A client could not be built.
    #[error("{service} client for {endpoint}: {message}")]
    Client {
        /// `compute`, `storage`.
        service: &'static str,
        /// The endpoint.
        endpoint: String,
        /// What happened.
        message: String,
    },
    /// An API call failed.
    #[error("{op} {resource} (project {project}, {scope}): {message}{}", code.map(|c| format!(" [HTTP {c}]")).unwrap_or_default())]
    Api {
        /// `instances.insert`...
        op: &'static str,
        /// Project.
        project: String,
        /// Zone or `global`.
        scope: String,
        /// The resource named in the call.
        resource: String,
        /// HTTP status, if any.
        code: Option<u16>,
        /// The service's message (its status and reason).
        message: String,
    },
    /// An operation ended with `error.errors[]`.
    #[error("operation {operation} ({what}, project {project}, {scope}) failed: {errors}")]
    Operation {
        /// The operation's name.
        operation: String,
        /// What it did.
        what: String,
        /// Project.
        project: String,
        /// Zone or `global`.
        scope: String,
        /// `CODE: message` of each error.
        errors: String,
    },
    /// A wait met a terminal state.
    #[error("waiting for {what} ({scope}): {state}")]
    WaitFailed {
        /// What.
        what: String,
        /// Project/zone.
        scope: String,
        /// The state.
        state: String,
    },
    /// A wait passed its limit (the operation may still be running).
    #[error("waiting for {what} ({scope}) timed out after {after:?}; last state: {last}")]
    Timeout {
        /// What.
        what: String,
        /// Project/zone.
        scope: String,
        /// The limit.
        after: Duration,
        /// The last state seen.
        last: String,
    },
    /// The stemcell cannot be used.
    #[error("stemcell {path}: {message}")]
    Stemcell {
        /// Its path.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Uploading to Cloud Storage failed.
    #[error("upload of {path} to gs://{bucket}/{object}: {message}")]
    Upload {
        /// Local file.
        path: std::path::PathBuf,
        /// Bucket.
        bucket: String,
        /// Object.
        object: String,
        /// What happened.
        message: String,
    },
}

impl GcpError {
    /// The HTTP status of an API error.
    pub fn http_code(&self) -> Option<u16> {
        match self {
            GcpError::Api { code, .. } => *code,
            _ => None,
        }
    }
}

impl WaitError for GcpError {
    fn is_transient(&self) -> bool {
        matches!(self.http_code(), Some(429 | 500 | 502 | 503 | 504))
    }

    fn is_not_found(&self) -> bool {
        self.http_code() == Some(404)
    }

    fn failed(what: &str, scope: &str, state: String) -> Self {
        GcpError::WaitFailed {
            what: what.to_string(),
            scope: scope.to_string(),
            state,
        }
    }

    fn timed_out(what: &str, scope: &str, after: Duration, last: String) -> Self {
        GcpError::Timeout {
            what: what.to_string(),
            scope: scope.to_string(),
            after,
            last,
        }
    }
}

impl From<GcpError> for BuildError {
    fn from(e: GcpError) -> Self {
        BuildError::iaas(Iaas::Gcp, e)
    }
}

/// Map a client error of call `op` on `resource` to [`GcpError::Api`].
pub fn api<'a>(
    op: &'static str,
    project: &'a str,
    scope: &'a str,
    resource: &'a str,
) -> impl FnOnce(google_cloud_gax::error::Error) -> GcpError + 'a {
    move |e| {
        let code = e.http_status_code();
        let message = match e.status() {
            Some(s) => format!("{:?}: {}", s.code, s.message),
            None => e.to_string(),
        };
        GcpError::Api {
            op,
            project: project.to_string(),
            scope: scope.to_string(),
            resource: resource.to_string(),
            code,
            message,
        }
    }
}
