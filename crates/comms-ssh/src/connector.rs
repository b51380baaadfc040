//! core's [`Connector`] over this crate: what the CLI hands the runner so
//! that every builder's `SshTarget` becomes an [`SshTransport`].
//!
//! Per connection it makes a fresh host-key verifier and password guard:
//! the runner connects once per build, and reconnects (after a reboot) go
//! through the transport, which keeps both, so TOFU pins and "one password
//! per build" hold for the whole build.

use std::sync::Arc;

use async_trait::async_trait;
use opsbake_core::builder::{
    Connector, HostKeyPolicy as CorePolicy, KeyAlgorithm, KeyPair as CoreKeyPair, SshAuth,
    SshTarget,
};
use opsbake_core::transport::{Transport, TransportError};
use opsbake_core::Secret;
use tokio_util::sync::CancellationToken;

use crate::connect::{Auth, PasswordGuard, SshOptions, Target};
use crate::hostkey::{HostKeyPolicy, HostKeyVerifier};
use crate::keys::{KeyKind, KeyPair};
use crate::transport::SshTransport;

/// The production connector.
#[derive(Debug, Default, Clone)]
pub struct SshConnector;

fn err(target: &str, message: impl Into<String>) -> TransportError {
    TransportError::Other {
        target: target.to_string(),
        message: message.into(),
    }
}

fn policy(p: &CorePolicy) -> HostKeyPolicy {
    match p {
        CorePolicy::Pin(keys) => HostKeyPolicy::Pin(keys.clone()),
        CorePolicy::TrustOnFirstUse => HostKeyPolicy::TrustOnFirstUse,
        CorePolicy::Insecure => HostKeyPolicy::Insecure,
    }
}

/// SSH options for a core target (and its bastion, recursively).
pub fn options(t: &SshTarget) -> Result<SshOptions, TransportError> {
    let name = format!("{}@{}:{}", t.user, t.host, t.port);
    let auth = match &t.auth {
        SshAuth::Key(k) => Auth::Key(
            KeyPair::from_openssh(&k.private_openssh).map_err(|e| err(&name, e.to_string()))?,
        ),
        SshAuth::KeyFile(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| TransportError::LocalIo {
                path: path.clone(),
                source,
            })?;
            Auth::Key(
                KeyPair::from_openssh(&Secret::new(text))
                    .map_err(|e| err(&name, format!("{}: {e}", path.display())))?,
            )
        }
        SshAuth::Password(p) => Auth::Password {
            password: p.clone(),
            guard: PasswordGuard::new(),
        },
        SshAuth::KeyThenPassword {
            key,
            password,
            after,
        } => Auth::KeyThenPassword {
            key: KeyPair::from_openssh(&key.private_openssh)
                .map_err(|e| err(&name, e.to_string()))?,
            password: password.clone(),
            guard: PasswordGuard::new(),
            after: *after,
        },
    };
    let mut o = SshOptions::new(
        Target {
            host: t.host.clone(),
            port: t.port,
            user: t.user.clone(),
        },
        auth,
        HostKeyVerifier::new(policy(&t.host_key)),
    );
    o.login_timeout = t.login_timeout;
    o.target_cpus = t.cpus.and_then(|c| usize::try_from(c).ok());
    // sshd's MaxSessions (10 on stemcells) counts every open channel: the
    // defaults budget 10 channels per connection (SFTP pool at most 8) and
    // learn a lower limit from the first refused channel.
    if let Some(b) = &t.bastion {
        o.jump = Some(Box::new(options(b)?));
    }
    Ok(o)
}

#[async_trait]
impl Connector for SshConnector {
    fn generate_key(
        &self,
        algorithm: KeyAlgorithm,
        comment: &str,
    ) -> Result<CoreKeyPair, TransportError> {
        let (kind, name) = match algorithm {
            KeyAlgorithm::Ed25519 => (KeyKind::Ed25519, "ssh-ed25519"),
            KeyAlgorithm::Rsa => (KeyKind::Rsa(3072), "ssh-rsa"),
        };
        let k = KeyPair::generate(kind, comment).map_err(|e| err("keygen", e.to_string()))?;
        Ok(CoreKeyPair {
            public_openssh: k.public_openssh().to_string(),
            private_openssh: k
                .private_openssh()
                .map_err(|e| err("keygen", e.to_string()))?,
            algorithm: name.to_string(),
        })
    }

    async fn connect(
        &self,
        target: &SshTarget,
        cancel: CancellationToken,
    ) -> Result<Arc<dyn Transport>, TransportError> {
        let o = options(target)?;
        tokio::select! {
            _ = cancel.cancelled() => Err(TransportError::Cancelled),
            r = SshTransport::connect(o) => Ok(Arc::new(r?) as Arc<dyn Transport>),
        }
    }
}
