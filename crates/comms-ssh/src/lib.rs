//! opsbake-comms-ssh: the SSH/SFTP transport on russh.
//!
//! - [`connect`]: wait for a *login* (connect + handshake + key auth, retried
//!   with a short jittered backoff), one identity per connection, a password
//!   sent at most once per build, bastion hosts.
//! - [`keys`]: ephemeral ed25519/RSA keys held in memory.
//! - [`hostkey`]: pin, trust-on-first-use-then-pin, or (loudly) insecure.
//! - [`SshTransport`]: core's `Transport`: exec with streamed output, exit
//!   status and signal; pipelined multi-channel SFTP uploads that resume
//!   after a dropped connection; SCP fallback; reconnect.
//! - [`channels`]: one channel budget per connection (sshd's `MaxSessions`);
//!   a refused channel is [`ChannelRefused`], not a lost connection.
//!
//! Algorithms: AES-GCM/CTR with HMAC-SHA2 (what hardened stemcells allow),
//! through russh's `ring` backend (no cmake/nasm needed to build).

pub mod channels;
mod conn;
pub mod connect;
pub mod connector;
mod download;
mod exec;
pub mod hostkey;
pub mod keys;
mod plan;
mod scp;
mod sftp;
mod tarstream;
mod transport;

pub use channels::{ChannelKind, ChannelLimits, ChannelRefused, RefusalReason};
pub use connect::{Auth, LoginReport, PasswordGuard, SshOptions, Target};
pub use connector::SshConnector;
pub use hostkey::{HostKeyPolicy, HostKeyVerifier};
pub use keys::{KeyKind, KeyPair};
pub use transport::SshTransport;
