//! opsbake-core: the template model, the plan, the step runner with
//! cancellation, the resource journal, events, secrets, the manifest, and the
//! `Builder` and `Transport` traits that the IaaS crates and `comms-ssh`
//! implement.

pub mod builder;
pub mod digest;
pub mod endpoint;
pub mod events;
pub mod exec;
pub mod hostkeys;
pub mod iaas;
pub mod journal;
pub mod local;
pub mod located;
pub mod manifest;
pub mod options;
pub mod plan;
pub mod runner;
pub mod secret;
pub mod task;
pub mod template;
pub mod transport;
pub mod vars;
pub mod wait;

pub use secret::{redactor, Secret};
pub use transport::{
    Download, ExecRequest, ExitStatus, OutputSink, Stream, TransferReport, Transport,
    TransportError, Upload, UploadSource,
};
