//! TLS for vCenter: the system roots, a CA file, a pinned certificate
//! thumbprint (SHA-256, or SHA-1 as `govc about.cert -thumbprint` prints
//! it), or no verification at all when asked (`insecure: true`, with a
//! warning). rustls with ring, the provider russh already builds.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha1::Digest as _;

/// How the server's certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// The system's roots (rustls-native-certs).
    System,
    /// The roots in this PEM file (a private CA, vCenter's VMCA root).
    CaFile(PathBuf),
    /// The leaf certificate's digest: 20 bytes (SHA-1) or 32 (SHA-256).
    Thumbprint(Vec<u8>),
    /// Accept any certificate (`insecure: true`).
    Insecure,
}

/// Parse a thumbprint: hex with or without `:`, any case; 20 bytes is
/// SHA-1, 32 is SHA-256. An `SHA256:`/`SHA1:` prefix is allowed.
pub fn parse_thumbprint(s: &str) -> Result<Vec<u8>, String> {
    let t = s.trim();
    let t = t
        .strip_prefix("SHA256:")
        .or_else(|| t.strip_prefix("sha256:"))
        .or_else(|| t.strip_prefix("SHA1:"))
        .or_else(|| t.strip_prefix("sha1:"))
        .unwrap_or(t);
    let hexs: String = t.chars().filter(|c| *c != ':' && *c != ' ').collect();
    let b = hex::decode(&hexs).map_err(|e| format!("thumbprint {s:?} is not hexadecimal ({e})"))?;
    match b.len() {
        20 | 32 => Ok(b),
        n => Err(format!(
            "thumbprint {s:?} has {n} bytes: expected 20 (SHA-1) or 32 (SHA-256)"
        )),
    }
}

/// The SHA-256 thumbprint of a DER certificate, as `AA:BB:...`.
pub fn sha256_thumbprint(der: &[u8]) -> String {
    colon_hex(&sha2::Sha256::digest(der))
}

fn colon_hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[derive(Debug)]
struct Pinned {
    want: Vec<u8>,
    provider: Arc<CryptoProvider>,
    accept_any: bool,
    legacy: bool,
}

/// RSA PKCS#1 handshake signatures with keys from 1024 bits (ring's legacy
/// algorithms): only for a pinned (or `insecure`) certificate over TLS 1.2,
/// because vcsim (and old ESXi) serve 1024-bit RSA keys that ring refuses
/// by default. The pin, not the key size, is what identifies the server.
#[derive(Debug)]
struct LegacyRsa(
    &'static ring::signature::RsaParameters,
    rustls::pki_types::AlgorithmIdentifier,
);

impl rustls::pki_types::SignatureVerificationAlgorithm for LegacyRsa {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), rustls::pki_types::InvalidSignature> {
        ring::signature::UnparsedPublicKey::new(self.0, public_key)
            .verify(message, signature)
            .map_err(|_| rustls::pki_types::InvalidSignature)
    }

    fn public_key_alg_id(&self) -> rustls::pki_types::AlgorithmIdentifier {
        rustls::pki_types::alg_id::RSA_ENCRYPTION
    }

    fn signature_alg_id(&self) -> rustls::pki_types::AlgorithmIdentifier {
        self.1
    }
}

static LEGACY_SHA256: LegacyRsa = LegacyRsa(
    &ring::signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
    rustls::pki_types::alg_id::RSA_PKCS1_SHA256,
);
static LEGACY_SHA384: LegacyRsa = LegacyRsa(
    &ring::signature::RSA_PKCS1_2048_8192_SHA384,
    rustls::pki_types::alg_id::RSA_PKCS1_SHA384,
);
static LEGACY_SHA512: LegacyRsa = LegacyRsa(
    &ring::signature::RSA_PKCS1_1024_8192_SHA512_FOR_LEGACY_USE_ONLY,
    rustls::pki_types::alg_id::RSA_PKCS1_SHA512,
);
static LEGACY_ALGS: rustls::crypto::WebPkiSupportedAlgorithms =
    rustls::crypto::WebPkiSupportedAlgorithms {
        all: &[&LEGACY_SHA256, &LEGACY_SHA384, &LEGACY_SHA512],
        mapping: &[
            (SignatureScheme::RSA_PKCS1_SHA256, &[&LEGACY_SHA256]),
            (SignatureScheme::RSA_PKCS1_SHA384, &[&LEGACY_SHA384]),
            (SignatureScheme::RSA_PKCS1_SHA512, &[&LEGACY_SHA512]),
        ],
    };

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.accept_any {
            return Ok(ServerCertVerified::assertion());
        }
        let got: Vec<u8> = if self.want.len() == 20 {
            sha1::Sha1::digest(end_entity.as_ref()).to_vec()
        } else {
            sha2::Sha256::digest(end_entity.as_ref()).to_vec()
        };
        if got == self.want {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the server's certificate has thumbprint {} ({}), not the pinned {}",
                colon_hex(&got),
                if self.want.len() == 20 {
                    "SHA-1"
                } else {
                    "SHA-256"
                },
                colon_hex(&self.want)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if self.legacy {
            if let Ok(v) = rustls::crypto::verify_tls12_signature(message, cert, dss, &LEGACY_ALGS)
            {
                return Ok(v);
            }
        }
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        let mut v = Vec::new();
        if self.legacy {
            // first, so that a TLS 1.2 server picks PKCS#1 over PSS
            v.extend(LEGACY_ALGS.supported_schemes());
        }
        for x in self
            .provider
            .signature_verification_algorithms
            .supported_schemes()
        {
            if !v.contains(&x) {
                v.push(x);
            }
        }
        v
    }
}

/// The rustls client configuration for a mode. `legacy` (pinned or
/// insecure modes only): TLS 1.2 with RSA PKCS#1 handshake signatures from
/// 1024-bit keys, the retry [`crate::vim::Vim::connect`] makes when a
/// handshake fails on such a key (vcsim's certificate).
pub fn client_config(mode: &TlsMode, legacy: bool) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let legacy = legacy && matches!(mode, TlsMode::Thumbprint(_) | TlsMode::Insecure);
    let builder = if legacy {
        ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS12])
    } else {
        ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()
    }
    .map_err(|e| e.to_string())?;
    let cfg = match mode {
        TlsMode::System | TlsMode::CaFile(_) => {
            let mut roots = RootCertStore::empty();
            if let TlsMode::CaFile(p) = mode {
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(p)
                    .map_err(|e| format!("CA file {}: {e}", p.display()))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("CA file {}: {e}", p.display()))?;
                if certs.is_empty() {
                    return Err(format!("CA file {}: no certificate in it", p.display()));
                }
                for c in certs {
                    roots
                        .add(c)
                        .map_err(|e| format!("CA file {}: {e}", p.display()))?;
                }
            } else {
                let native = rustls_native_certs::load_native_certs();
                for c in native.certs {
                    let _ = roots.add(c);
                }
                if roots.is_empty() {
                    return Err(
                        "no system root certificates found: set `ca_file` or `thumbprint`".into(),
                    );
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        TlsMode::Thumbprint(want) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                want: want.clone(),
                provider,
                accept_any: false,
                legacy,
            }))
            .with_no_client_auth(),
        TlsMode::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                want: Vec::new(),
                provider,
                accept_any: true,
                legacy,
            }))
            .with_no_client_auth(),
    };
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn thumbprints_parse_in_govc_and_plain_forms() {
        let sha1 = "5D:01:7C:4B:2E:8C:AE:3F:42:4A:91:0F:6F:C1:5F:38:7E:2B:90:11";
        assert_eq!(parse_thumbprint(sha1).unwrap().len(), 20);
        let sha256 = "ab".repeat(32);
        assert_eq!(parse_thumbprint(&sha256).unwrap().len(), 32);
        assert_eq!(
            parse_thumbprint(&format!("SHA256:{sha256}")).unwrap().len(),
            32
        );
        assert!(parse_thumbprint("AB:CD").unwrap_err().contains("2 bytes"));
        assert!(parse_thumbprint("zz").is_err());
    }
}
