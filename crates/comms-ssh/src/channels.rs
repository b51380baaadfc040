//! The channel budget of one connection, and what a refused channel means.
//!
//! sshd counts every open session channel of a connection against its
//! `MaxSessions` (10 by default): the pooled SFTP channels, the exec channel
//! opened ahead of the next step, the running commands, SCP channels. When
//! the count is reached it answers `SSH_MSG_CHANNEL_OPEN_FAILURE` (OpenSSH:
//! reason 2, "connect failed"). That is not a lost connection: the
//! connection is fine and a channel will open once one of ours closes.
//!
//! Every channel this crate opens holds a permit of one semaphore per
//! connection, sized from [`SshOptions::max_sessions`](crate::SshOptions).
//! A permit is given back when its channel has closed, which wakes whoever
//! waits for one. When the server refuses a channel although we held a
//! permit, its real limit is lower than configured: the budget shrinks to the
//! number of channels open at that moment and stays there for the connection.
//!
//! A channel is free for sshd only once it has closed on its side: sshd
//! counts an SFTP channel until its sftp-server exited. SFTP channels are
//! therefore ended with an EOF and their permit is held until the server's
//! `CHANNEL_CLOSE` arrives; a command's permit is given back after its
//! channel closed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opsbake_core::transport::TransportError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The reason code of an `SSH_MSG_CHANNEL_OPEN_FAILURE` (RFC 4254 §5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefusalReason {
    /// `SSH_OPEN_ADMINISTRATIVELY_PROHIBITED` (1).
    AdministrativelyProhibited,
    /// `SSH_OPEN_CONNECT_FAILED` (2): what OpenSSH answers when `MaxSessions`
    /// is reached (or is 0).
    ConnectFailed,
    /// `SSH_OPEN_UNKNOWN_CHANNEL_TYPE` (3).
    UnknownChannelType,
    /// `SSH_OPEN_RESOURCE_SHORTAGE` (4).
    ResourceShortage,
    /// Another code.
    Other(u32),
}

impl RefusalReason {
    /// The numeric reason code.
    pub fn code(&self) -> u32 {
        match self {
            RefusalReason::AdministrativelyProhibited => 1,
            RefusalReason::ConnectFailed => 2,
            RefusalReason::UnknownChannelType => 3,
            RefusalReason::ResourceShortage => 4,
            RefusalReason::Other(c) => *c,
        }
    }

    /// The RFC 4254 name (`SSH_OPEN_CONNECT_FAILED`, ...).
    pub fn rfc_name(&self) -> &'static str {
        match self {
            RefusalReason::AdministrativelyProhibited => "SSH_OPEN_ADMINISTRATIVELY_PROHIBITED",
            RefusalReason::ConnectFailed => "SSH_OPEN_CONNECT_FAILED",
            RefusalReason::UnknownChannelType => "SSH_OPEN_UNKNOWN_CHANNEL_TYPE",
            RefusalReason::ResourceShortage => "SSH_OPEN_RESOURCE_SHORTAGE",
            RefusalReason::Other(_) => "unknown reason code",
        }
    }
}

impl std::fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            RefusalReason::AdministrativelyProhibited => "administratively prohibited",
            RefusalReason::ConnectFailed => "connect failed",
            RefusalReason::UnknownChannelType => "unknown channel type",
            RefusalReason::ResourceShortage => "resource shortage",
            RefusalReason::Other(_) => "refused",
        };
        write!(f, "{s} ({}, reason code {})", self.rfc_name(), self.code())
    }
}

impl From<&russh::ChannelOpenFailure> for RefusalReason {
    fn from(f: &russh::ChannelOpenFailure) -> Self {
        match f {
            russh::ChannelOpenFailure::AdministrativelyProhibited => {
                RefusalReason::AdministrativelyProhibited
            }
            russh::ChannelOpenFailure::ConnectFailed => RefusalReason::ConnectFailed,
            russh::ChannelOpenFailure::UnknownChannelType => RefusalReason::UnknownChannelType,
            russh::ChannelOpenFailure::ResourceShortage => RefusalReason::ResourceShortage,
            russh::ChannelOpenFailure::Other { code, .. } => RefusalReason::Other(*code),
        }
    }
}

/// What a channel was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// A command (`exec`), including internal ones such as `sha256sum`.
    Exec,
    /// An SFTP channel of the upload/download pool.
    Sftp,
    /// An `scp -t` channel (servers without the sftp subsystem).
    Scp,
}

impl std::fmt::Display for ChannelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChannelKind::Exec => "a command",
            ChannelKind::Sftp => "sftp",
            ChannelKind::Scp => "scp",
        })
    }
}

/// The server refused to open a channel (`SSH_MSG_CHANNEL_OPEN_FAILURE`) and
/// none became available in time. The connection itself is alive: this is
/// not a lost connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRefused {
    /// `user@host:port`.
    pub target: String,
    /// What the channel was for.
    pub kind: ChannelKind,
    /// The server's reason code.
    pub reason: RefusalReason,
    /// Channels of ours open on this connection when it was refused.
    pub open_channels: usize,
    /// How long we waited for one of our channels to close.
    pub waited: Duration,
}

impl ChannelRefused {
    /// The message without the target (the target leads the `Display`).
    pub fn detail(&self) -> String {
        let mut s = format!(
            "the server refused to open a session channel for {}: {}",
            self.kind, self.reason
        );
        if self.open_channels == 0 {
            s.push_str(
                "; no other channel of ours was open, so it allows none on this connection \
                 (sshd `MaxSessions 0`?)",
            );
        } else {
            s.push_str(&format!(
                "; it allows {n} at once on this connection (sshd `MaxSessions {n}`?) and none \
                 of ours closed within {w:?}",
                n = self.open_channels,
                w = self.waited
            ));
        }
        s
    }
}

impl std::fmt::Display for ChannelRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.target, self.detail())
    }
}

impl std::error::Error for ChannelRefused {}

impl From<ChannelRefused> for TransportError {
    fn from(e: ChannelRefused) -> Self {
        TransportError::ChannelRefused {
            code: e.reason.code(),
            detail: e.detail(),
            target: e.target,
        }
    }
}

/// The channel budget of a connection, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelLimits {
    /// `SshOptions::max_sessions`.
    pub configured: usize,
    /// What the budget allows now (lower than `configured` once the server
    /// refused a channel).
    pub allowed: usize,
    /// The limit learned from a refusal, with its reason.
    pub learned: Option<(usize, RefusalReason)>,
    /// Channels of ours open (or opening) now.
    pub open: usize,
    /// SFTP channels in the pool now (0 when none is open).
    pub sftp_pool: usize,
}

/// One semaphore per connection for every channel kind.
pub(crate) struct Budget {
    sem: Arc<Semaphore>,
    /// Permits in existence (the semaphore does not tell).
    capacity: AtomicUsize,
    configured: usize,
    learned: Mutex<Option<(usize, RefusalReason)>>,
}

impl Budget {
    pub(crate) fn new(configured: usize, carried: Option<(usize, RefusalReason)>) -> Budget {
        let start = match &carried {
            Some((n, _)) => (*n).min(configured),
            None => configured,
        };
        Budget {
            sem: Arc::new(Semaphore::new(start)),
            capacity: AtomicUsize::new(start),
            configured,
            learned: Mutex::new(carried),
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity.load(Ordering::SeqCst)
    }

    /// Permits held now.
    pub(crate) fn in_use(&self) -> usize {
        self.capacity().saturating_sub(self.sem.available_permits())
    }

    pub(crate) fn learned(&self) -> Option<(usize, RefusalReason)> {
        self.learned.lock().ok().and_then(|l| l.clone())
    }

    pub(crate) fn configured(&self) -> usize {
        self.configured
    }

    pub(crate) fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.sem.clone().try_acquire_owned().ok()
    }

    /// Resolves when a permit is free (given back by a closed channel).
    pub(crate) async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.sem.clone().acquire_owned().await.ok()
    }

    /// The server refused a channel while `permit` was held and `others`
    /// other permits were: it allows `others`. Shrink to that (forgetting
    /// `permit` and free permits) and remember it.
    pub(crate) fn learn(&self, permit: OwnedSemaphorePermit, others: usize, reason: RefusalReason) {
        permit.forget();
        self.capacity.fetch_sub(1, Ordering::SeqCst);
        let excess = self.capacity().saturating_sub(others);
        let forgotten = self.sem.forget_permits(excess);
        self.capacity.fetch_sub(forgotten, Ordering::SeqCst);
        // Concurrent refusals each count the others' attempts as open; the
        // capacity converges (every refused attempt forgets its own permit),
        // so that is what is remembered.
        let now = self.capacity().min(others);
        if let Ok(mut l) = self.learned.lock() {
            let lower = match &*l {
                Some((n, _)) => now < *n,
                None => true,
            };
            if lower {
                *l = Some((now, reason));
            }
        }
    }
}
