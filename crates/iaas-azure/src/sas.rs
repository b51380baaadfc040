//! Account shared access signatures (SAS), signed with a storage account key.
//!
//! Used where a token credential cannot be: against azurite over plain http
//! (the SDK's token credentials require https), and with an account key given
//! through `AZURE_STORAGE_KEY`. The string to sign is the account SAS of
//! service version 2020-12-06 and later (nine fields and an empty encryption
//! scope, each ending in a newline), HMAC-SHA256 with the decoded key.
//! The signature is a secret: [`AccountSas`] never prints it.

use base64::Engine as _;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::error::AzureError;

/// The service version the SAS is signed for.
pub const SAS_VERSION: &str = "2022-11-02";

/// azurite's well-known development account.
pub const DEV_ACCOUNT: &str = "devstoreaccount1";
/// azurite's well-known development key (public, documented by Microsoft).
pub const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A signed account SAS (blob service; service, container and object
/// resource types). Its `Debug` output hides the signature.
#[derive(Clone)]
pub struct AccountSas {
    query: String,
}

impl std::fmt::Debug for AccountSas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccountSas(<redacted>)")
    }
}

/// Percent-encode a query value (RFC 3986 unreserved kept).
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

impl AccountSas {
    /// Sign an account SAS for `account` with its base64 `key`, valid from a
    /// minute ago until `expiry`; permissions read, write, delete, list, add,
    /// create (`rwdlac`), over http and https (`https,http`: azurite speaks http).
    pub fn sign(
        account: &str,
        key: &str,
        expiry: OffsetDateTime,
    ) -> Result<AccountSas, AzureError> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .map_err(|_| {
                AzureError::Invalid(format!(
                    "the key of storage account {account} is not base64"
                ))
            })?;
        let fmt = |t: OffsetDateTime| -> Result<String, AzureError> {
            let t = t.replace_nanosecond(0).unwrap_or(t);
            t.format(&Rfc3339)
                .map_err(|e| AzureError::Invalid(format!("SAS time: {e}")))
        };
        let start = fmt(OffsetDateTime::now_utc() - time::Duration::minutes(1))?;
        let expiry = fmt(expiry)?;
        let (perms, services, types, proto) = ("rwdlac", "b", "sco", "https,http");
        let to_sign = format!(
            "{account}\n{perms}\n{services}\n{types}\n{start}\n{expiry}\n\n{proto}\n{SAS_VERSION}\n\n"
        );
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &raw);
        let sig = base64::engine::general_purpose::STANDARD
            .encode(ring::hmac::sign(&k, to_sign.as_bytes()).as_ref());
        let query = format!(
            "sv={SAS_VERSION}&ss={services}&srt={types}&sp={perms}&st={}&se={}&spr={}&sig={}",
            enc(&start),
            enc(&expiry),
            enc(proto),
            enc(&sig)
        );
        Ok(AccountSas { query })
    }

    /// The query string (`sv=...&sig=...`). A secret: never log it.
    pub fn query(&self) -> &str {
        &self.query
    }

    /// `url` with the SAS as its query.
    pub fn apply(&self, url: &url::Url) -> url::Url {
        let mut u = url.clone();
        u.set_query(Some(&self.query));
        u
    }
}

/// A URL without its query (for logs and errors: a SAS lives in the query).
pub fn redact(url: &url::Url) -> String {
    let mut u = url.clone();
    if u.query().is_some() {
        u.set_query(None);
        format!("{u}?<redacted>")
    } else {
        u.to_string()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn debug_and_redact_hide_the_signature() {
        let sas = AccountSas::sign(DEV_ACCOUNT, DEV_KEY, OffsetDateTime::now_utc()).unwrap();
        assert!(sas.query().contains("&sig="));
        assert!(!format!("{sas:?}").contains("sig"));
        let u = sas.apply(&url::Url::parse("http://127.0.0.1:1/a/b").unwrap());
        let r = redact(&u);
        assert!(!r.contains("sig"), "{r}");
        assert!(r.starts_with("http://127.0.0.1:1/a/b"));
    }

    #[test]
    fn a_key_that_is_not_base64_is_refused_naming_the_account() {
        let e = AccountSas::sign("acct1", "not base64 !!", OffsetDateTime::now_utc())
            .unwrap_err()
            .to_string();
        assert!(e.contains("acct1"), "{e}");
    }
}
