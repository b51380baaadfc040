//! Ephemeral client keys, generated in memory.
//!
//! The private half lives in a [`Secret`] and touches disk only through
//! [`KeyPair::write_private_key`] (the CLI's `--debug-keep-key`).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use opsbake_core::secret::Secret;
use russh::keys::ssh_key::private::{KeypairData, RsaKeypair};
use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, HashAlg, PrivateKey};

/// Errors creating, parsing or saving keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Generation failed.
    #[error("generating {algorithm} key: {message}")]
    Generate {
        /// The algorithm.
        algorithm: String,
        /// Why.
        message: String,
    },
    /// A key could not be parsed (the text itself is never included).
    #[error("parsing {what}: {message}")]
    Parse {
        /// What was parsed.
        what: String,
        /// Why.
        message: String,
    },
    /// Writing the key failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Key types opsbake generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// ed25519 (the default).
    Ed25519,
    /// RSA with this many bits (for IaaSes that only take RSA, e.g. AWS
    /// ImportKeyPair on old APIs).
    Rsa(usize),
}

/// A client key pair whose private half is a [`Secret`].
#[derive(Clone)]
pub struct KeyPair {
    private: Secret<Arc<PrivateKey>>,
    public_openssh: String,
    fingerprint: String,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// Generate a key in memory. `comment` ends up in the public key line
    /// (e.g. `opsbake-<build id>`).
    pub fn generate(kind: KeyKind, comment: &str) -> Result<KeyPair, KeyError> {
        let mut rng = rand_10::rng();
        let key = match kind {
            KeyKind::Ed25519 => PrivateKey::random(&mut rng, Algorithm::Ed25519).map_err(|e| {
                KeyError::Generate {
                    algorithm: "ed25519".into(),
                    message: e.to_string(),
                }
            })?,
            KeyKind::Rsa(bits) => {
                let gen_err = |e: russh::keys::ssh_key::Error| KeyError::Generate {
                    algorithm: format!("rsa-{bits}"),
                    message: e.to_string(),
                };
                let kp = RsaKeypair::random(&mut rng, bits).map_err(gen_err)?;
                PrivateKey::new(KeypairData::from(kp), comment).map_err(gen_err)?
            }
        };
        Self::from_private(key, comment)
    }

    fn from_private(mut key: PrivateKey, comment: &str) -> Result<KeyPair, KeyError> {
        key.set_comment(comment);
        let public_openssh = key.public_key().to_openssh().map_err(|e| KeyError::Parse {
            what: "public key".into(),
            message: e.to_string(),
        })?;
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        Ok(KeyPair {
            private: Secret::new(Arc::new(key)),
            public_openssh,
            fingerprint,
        })
    }

    /// Load an OpenSSH private key (unencrypted) from text.
    pub fn from_openssh(text: &Secret<String>) -> Result<KeyPair, KeyError> {
        let key = PrivateKey::from_openssh(text.expose()).map_err(|e| KeyError::Parse {
            what: "OpenSSH private key".into(),
            message: e.to_string(),
        })?;
        let comment = key.comment().to_string();
        Self::from_private(key, &comment)
    }

    /// The public key as one `authorized_keys` line (`ssh-ed25519 AAAA... comment`).
    pub fn public_openssh(&self) -> &str {
        &self.public_openssh
    }

    /// `SHA256:...` fingerprint of the public key.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// True for RSA keys.
    pub fn is_rsa(&self) -> bool {
        self.private.expose().algorithm().is_rsa()
    }

    pub(crate) fn private(&self) -> Arc<PrivateKey> {
        self.private.expose().clone()
    }

    /// The private key in OpenSSH format, still a secret (for IaaS APIs that
    /// want it, never for logs). Registered with the global redactor.
    pub fn private_openssh(&self) -> Result<Secret<String>, KeyError> {
        let pem = self
            .private
            .expose()
            .to_openssh(LineEnding::LF)
            .map_err(|e| KeyError::Parse {
                what: "private key encoding".into(),
                message: e.to_string(),
            })?;
        Ok(Secret::registered(pem.as_str()))
    }

    /// Write the private key to `path` with mode 0600 (and the public key to
    /// `path.pub`). Only for `--debug-keep-key`: the default is to keep keys
    /// in memory.
    pub fn write_private_key(&self, path: &Path) -> Result<(), KeyError> {
        let pem = self.private_openssh()?;
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        f.write_all(pem.expose().as_bytes()).map_err(io)?;
        let pub_path = PathBuf::from(format!("{}.pub", path.display()));
        std::fs::write(&pub_path, format!("{}\n", self.public_openssh)).map_err(|source| {
            KeyError::Io {
                path: pub_path.clone(),
                source,
            }
        })?;
        tracing::warn!(path = %path.display(), fingerprint = %self.fingerprint, "private key written to disk (--debug-keep-key)");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_round_trips_and_never_prints_private_material() {
        let k = KeyPair::generate(KeyKind::Ed25519, "opsbake-test").unwrap();
        assert!(k.public_openssh().starts_with("ssh-ed25519 AAAA"));
        assert!(k.public_openssh().ends_with(" opsbake-test"));
        assert!(k.fingerprint().starts_with("SHA256:"));
        let pem = k.private_openssh().unwrap();
        assert!(pem.expose().contains("BEGIN OPENSSH PRIVATE KEY"));
        let dbg = format!("{k:?} {pem:?}");
        assert!(!dbg.contains("PRIVATE KEY"), "{dbg}");
        let back = KeyPair::from_openssh(&pem).unwrap();
        assert_eq!(back.fingerprint(), k.fingerprint());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("id");
        k.write_private_key(&p).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn rsa_keys_generate() {
        let k = KeyPair::generate(KeyKind::Rsa(2048), "opsbake-rsa").unwrap();
        assert!(k.public_openssh().starts_with("ssh-rsa AAAA"));
        assert!(k.is_rsa());
    }
}
