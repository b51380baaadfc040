//! The crate's typed errors. Every message names the object (inventory path,
//! managed object id, datastore path or URL) and never the password: the
//! SOAP client keeps it in a `Secret` and no error carries a request body.

use std::path::PathBuf;
use std::time::Duration;

use opsbake_core::builder::BuildError;
use opsbake_core::template::Iaas;
use opsbake_core::wait::WaitError;

/// What went wrong talking to vCenter (or building for it).
#[derive(Debug, thiserror::Error)]
pub enum VsphereError {
    /// The template's options are wrong.
    #[error("builds.vsphere.options: {0}")]
    Config(String),
    /// TLS set-up (CA file, thumbprint) failed.
    #[error("TLS for {url}: {message}")]
    Tls {
        /// The endpoint.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// An HTTP request failed before an answer arrived.
    #[error("{op} {url}: {message}")]
    Http {
        /// The call or transfer.
        op: String,
        /// The URL (never with credentials).
        url: String,
        /// reqwest's message, with its source chain.
        message: String,
        /// A connection or timeout problem (retry-worthy).
        transient: bool,
    },
    /// An HTTP status that is not a SOAP fault.
    #[error("{op} {url}: HTTP {status}: {body}")]
    Status {
        /// The call or transfer.
        op: String,
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// `InvalidLogin`: the user name or password is wrong.
    #[error("login to {url} as {user} failed: InvalidLogin (wrong user name or password; the password is not shown)")]
    InvalidLogin {
        /// The endpoint.
        url: String,
        /// The user.
        user: String,
    },
    /// `DuplicateName`: the name is taken.
    #[error(
        "{op}: DuplicateName: {name} already exists ({object}); set `force: true` to replace it"
    )]
    DuplicateName {
        /// The call.
        op: String,
        /// The name.
        name: String,
        /// The object holding it.
        object: String,
    },
    /// An inventory path that does not exist.
    #[error("{what} {path} not found in {scope}")]
    NotFound {
        /// What was looked for (datacenter, datastore...).
        what: String,
        /// The inventory path or name.
        path: String,
        /// Where (the vCenter URL, the datacenter).
        scope: String,
    },
    /// `ManagedObjectNotFound`: the object was deleted meanwhile.
    #[error("{op}: ManagedObjectNotFound: {object} no longer exists")]
    ManagedObjectNotFound {
        /// The call.
        op: String,
        /// The object.
        object: String,
    },
    /// `InvalidPowerState`.
    #[error("{op} on {object}: InvalidPowerState (requested {requested}, it is {existing})")]
    InvalidPowerState {
        /// The call.
        op: String,
        /// The VM.
        object: String,
        /// The state the call needs.
        requested: String,
        /// The state it is in.
        existing: String,
    },
    /// Any other SOAP fault.
    #[error("{op} on {object}: {fault}: {message}")]
    Fault {
        /// The call.
        op: String,
        /// The object.
        object: String,
        /// The fault type (`NotSupported`, `FileNotFound`...).
        fault: String,
        /// vCenter's message.
        message: String,
    },
    /// A task ended in error.
    #[error("task {task} ({op} on {object}) failed: {fault}: {message}")]
    Task {
        /// The task id.
        task: String,
        /// What it did.
        op: String,
        /// The object.
        object: String,
        /// The fault type.
        fault: String,
        /// vCenter's message.
        message: String,
    },
    /// An answer this client cannot read.
    #[error("{op}: unexpected answer: {message}")]
    Protocol {
        /// The call.
        op: String,
        /// What is missing or wrong.
        message: String,
    },
    /// A wait passed its limit.
    #[error("waiting for {what} of {object}: no result after {after:?} (last: {last})")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The object.
        object: String,
        /// The limit.
        after: Duration,
        /// The last state seen.
        last: String,
    },
    /// A wait met a terminal state.
    #[error("waiting for {what} of {object}: {state}")]
    WaitFailed {
        /// What was awaited.
        what: String,
        /// The object.
        object: String,
        /// The state.
        state: String,
    },
    /// The datastore is too small.
    #[error("datastore {datastore} has {free_mib} MiB free; the build needs {need_mib} MiB")]
    DatastoreFull {
        /// The datastore.
        datastore: String,
        /// Free space.
        free_mib: u64,
        /// Needed.
        need_mib: u64,
    },
    /// A local file.
    #[error("{path}: {message}")]
    Local {
        /// The path.
        path: PathBuf,
        /// What happened.
        message: String,
    },
    /// The build was cancelled.
    #[error("cancelled while {0}")]
    Cancelled(String),
}

impl VsphereError {
    /// A local file error.
    pub fn local(path: impl Into<PathBuf>, e: impl std::fmt::Display) -> VsphereError {
        VsphereError::Local {
            path: path.into(),
            message: e.to_string(),
        }
    }

    /// The fault name, when this is a fault.
    pub fn fault_name(&self) -> Option<&str> {
        match self {
            VsphereError::Fault { fault, .. } | VsphereError::Task { fault, .. } => Some(fault),
            VsphereError::DuplicateName { .. } => Some("DuplicateName"),
            VsphereError::ManagedObjectNotFound { .. } => Some("ManagedObjectNotFound"),
            VsphereError::InvalidPowerState { .. } => Some("InvalidPowerState"),
            VsphereError::InvalidLogin { .. } => Some("InvalidLogin"),
            _ => None,
        }
    }
}

impl From<VsphereError> for BuildError {
    fn from(e: VsphereError) -> BuildError {
        match e {
            VsphereError::Cancelled(_) => BuildError::Cancelled,
            e => BuildError::iaas(Iaas::Vsphere, e),
        }
    }
}

impl WaitError for VsphereError {
    fn is_transient(&self) -> bool {
        match self {
            VsphereError::Http { transient, .. } => *transient,
            VsphereError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    fn is_not_found(&self) -> bool {
        matches!(
            self,
            VsphereError::ManagedObjectNotFound { .. } | VsphereError::NotFound { .. }
        ) || self.fault_name() == Some("FileNotFound")
    }

    fn failed(what: &str, scope: &str, state: String) -> Self {
        VsphereError::WaitFailed {
            what: what.to_string(),
            object: scope.to_string(),
            state,
        }
    }

    fn timed_out(what: &str, scope: &str, after: Duration, last: String) -> Self {
        VsphereError::Timeout {
            what: what.to_string(),
            object: scope.to_string(),
            after,
            last,
        }
    }

    fn cancelled(what: &str, scope: &str) -> Self {
        VsphereError::Cancelled(format!("waiting for {what} of {scope}"))
    }
}
