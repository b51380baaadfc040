//! The azure builder's typed errors: each names the operation and the
//! resource (id, blob, location) it concerns. Never a SAS or a token.

use std::path::PathBuf;
use std::time::Duration;

use opsbake_core::builder::BuildError;
use opsbake_core::template::Iaas;
use opsbake_core::wait::WaitError;

/// An azure error.
#[derive(Debug, thiserror::Error)]
pub enum AzureError {
    /// ARM or blob storage answered an error (`error.code` / `error.message`).
    #[error("{op} {resource}: HTTP {status} {code}: {message}")]
    Api {
        /// The call (`PUT virtualMachines`, `Put Page`).
        op: String,
        /// The resource id or blob (without a SAS).
        resource: String,
        /// HTTP status.
        status: u16,
        /// The service's error code (`ResourceGroupNotFound`).
        code: String,
        /// The service's message.
        message: String,
    },
    /// The request did not get an answer (connection refused or cut).
    #[error("{op} {resource}: {message}")]
    Transport {
        /// The call.
        op: String,
        /// The resource.
        resource: String,
        /// What happened.
        message: String,
    },
    /// A long-running operation ended badly.
    #[error("{what} in {scope}: {state}")]
    Operation {
        /// The wait.
        what: String,
        /// Location or resource group.
        scope: String,
        /// The final state with `error.code: message`.
        state: String,
    },
    /// A wait passed its limit.
    #[error("{what} in {scope}: still not done after {after:?} (last: {last})")]
    TimedOut {
        /// The wait.
        what: String,
        /// Location or resource group.
        scope: String,
        /// The limit.
        after: Duration,
        /// The last state seen.
        last: String,
    },
    /// Credentials could not be had.
    #[error("azure credentials: {0}")]
    Credential(String),
    /// The stemcell is not usable.
    #[error("stemcell {path}: {message}")]
    Stemcell {
        /// Its path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Bad settings or an answer missing something.
    #[error("{0}")]
    Invalid(String),
}

impl AzureError {
    /// The HTTP status, for API errors.
    pub fn status(&self) -> Option<u16> {
        match self {
            AzureError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The service's error code, for API errors.
    pub fn code(&self) -> Option<&str> {
        match self {
            AzureError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

impl WaitError for AzureError {
    fn is_transient(&self) -> bool {
        match self {
            AzureError::Api { status, .. } => *status == 429 || *status >= 500,
            AzureError::Transport { .. } => true,
            _ => false,
        }
    }

    fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    fn failed(what: &str, scope: &str, state: String) -> Self {
        AzureError::Operation {
            what: what.to_string(),
            scope: scope.to_string(),
            state,
        }
    }

    fn timed_out(what: &str, scope: &str, after: Duration, last: String) -> Self {
        AzureError::TimedOut {
            what: what.to_string(),
            scope: scope.to_string(),
            after,
            last,
        }
    }
}

impl From<AzureError> for BuildError {
    fn from(e: AzureError) -> BuildError {
        BuildError::iaas(Iaas::Azure, e)
    }
}

/// An `azure_core` error of a blob call as an [`AzureError`] (status and
/// error code kept; the URL, which may carry a SAS, is not included).
pub fn blob_error(op: &str, blob: &str, e: azure_core::Error) -> AzureError {
    use azure_core::error::ErrorKind;
    match e.kind() {
        ErrorKind::HttpResponse {
            status, error_code, ..
        } => AzureError::Api {
            op: op.to_string(),
            resource: blob.to_string(),
            status: u16::from(*status),
            code: error_code.clone().unwrap_or_default(),
            message: "blob service error".to_string(),
        },
        ErrorKind::Io | ErrorKind::Connection => AzureError::Transport {
            op: op.to_string(),
            resource: blob.to_string(),
            message: "connection failed".to_string(),
        },
        _ => AzureError::Transport {
            op: op.to_string(),
            resource: blob.to_string(),
            message: strip_urls(&e.to_string()),
        },
    }
}

/// Remove query strings from any URL in a message (a SAS lives there).
pub fn strip_urls(s: &str) -> String {
    s.split(' ')
        .map(|w| {
            if (w.starts_with("http://") || w.starts_with("https://")) && w.contains('?') {
                let base = w.split('?').next().unwrap_or(w);
                format!("{base}?<redacted>")
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
