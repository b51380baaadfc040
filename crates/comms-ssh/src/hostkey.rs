//! Host-key policy: pin, trust-on-first-use then pin for the build, or
//! insecure (loudly). Never a silent accept-all.

use std::sync::{Arc, Mutex};

use russh::keys::{HashAlg, PublicKey};

/// How the server's host key is checked.
#[derive(Debug, Clone)]
pub enum HostKeyPolicy {
    /// Accept only these: OpenSSH public key lines (`ssh-ed25519 AAAA...`)
    /// or fingerprints (`SHA256:...`).
    Pin(Vec<String>),
    /// Accept the first key seen, then only that key for the rest of the
    /// build (reconnects after a reboot must present it again).
    TrustOnFirstUse,
    /// Accept anything, with a warning on every connection.
    Insecure,
}

/// The policy plus what the build has learned (the TOFU key). Share one
/// `Arc<HostKeyVerifier>` across every connection of a build.
#[derive(Debug)]
pub struct HostKeyVerifier {
    policy: HostKeyPolicy,
    learned: Mutex<Option<PublicKey>>,
}

/// Outcome of a check, with a reason for refusals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted.
    Accept,
    /// Refused (fingerprints only in the reason).
    Refuse(String),
}

/// `SHA256:...` of a key.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

impl HostKeyVerifier {
    /// A verifier for `policy`.
    pub fn new(policy: HostKeyPolicy) -> Arc<HostKeyVerifier> {
        Arc::new(HostKeyVerifier {
            policy,
            learned: Mutex::new(None),
        })
    }

    /// The policy.
    pub fn policy(&self) -> &HostKeyPolicy {
        &self.policy
    }

    /// The key pinned by trust-on-first-use, if any.
    pub fn learned(&self) -> Option<PublicKey> {
        self.learned.lock().ok().and_then(|g| g.clone())
    }

    /// Check a presented key (for `target`, used in logs).
    pub fn check(&self, target: &str, key: &PublicKey) -> Verdict {
        let fp = fingerprint(key);
        match &self.policy {
            HostKeyPolicy::Insecure => {
                tracing::warn!(%target, fingerprint = %fp, "INSECURE host key policy: accepting the server's key without checking it; anyone on the path can impersonate this VM");
                Verdict::Accept
            }
            HostKeyPolicy::Pin(list) => {
                let ok = list.iter().any(|entry| {
                    let entry = entry.trim();
                    if entry.starts_with("SHA256:") {
                        entry == fp
                    } else {
                        PublicKey::from_openssh(entry)
                            .map(|p| p.key_data() == key.key_data())
                            .unwrap_or(false)
                    }
                });
                if ok {
                    tracing::debug!(%target, fingerprint = %fp, "host key matches a pinned key");
                    Verdict::Accept
                } else {
                    Verdict::Refuse(format!(
                        "presented {} {fp}, which is not among the {} pinned key(s)",
                        key.algorithm(),
                        list.len()
                    ))
                }
            }
            HostKeyPolicy::TrustOnFirstUse => {
                let Ok(mut learned) = self.learned.lock() else {
                    return Verdict::Refuse("host key state poisoned".into());
                };
                match learned.as_ref() {
                    None => {
                        tracing::info!(%target, fingerprint = %fp, "trusting host key on first use; pinned for the rest of the build");
                        *learned = Some(key.clone());
                        Verdict::Accept
                    }
                    Some(k) if k.key_data() == key.key_data() => Verdict::Accept,
                    Some(k) => Verdict::Refuse(format!(
                        "presented {} {fp}, but this build pinned {} {} on first use",
                        key.algorithm(),
                        k.algorithm(),
                        fingerprint(k)
                    )),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyKind, KeyPair};

    fn pubkey() -> (String, PublicKey) {
        let k = KeyPair::generate(KeyKind::Ed25519, "h").unwrap();
        let line = k.public_openssh().to_string();
        let p = PublicKey::from_openssh(&line).unwrap();
        (line, p)
    }

    #[test]
    fn pin_by_line_or_fingerprint() {
        let (line, key) = pubkey();
        let (_, other) = pubkey();
        let v = HostKeyVerifier::new(HostKeyPolicy::Pin(vec![line]));
        assert_eq!(v.check("t", &key), Verdict::Accept);
        assert!(matches!(v.check("t", &other), Verdict::Refuse(_)));
        let v = HostKeyVerifier::new(HostKeyPolicy::Pin(vec![fingerprint(&other)]));
        assert_eq!(v.check("t", &other), Verdict::Accept);
        assert!(matches!(v.check("t", &key), Verdict::Refuse(_)));
    }

    #[test]
    fn tofu_pins_the_first_key() {
        let (_, a) = pubkey();
        let (_, b) = pubkey();
        let v = HostKeyVerifier::new(HostKeyPolicy::TrustOnFirstUse);
        assert_eq!(v.check("t", &a), Verdict::Accept);
        assert_eq!(v.check("t", &a), Verdict::Accept);
        let Verdict::Refuse(r) = v.check("t", &b) else {
            panic!("second key accepted")
        };
        assert!(r.contains(&fingerprint(&a)), "{r}");
    }
}
