//! Credentials for Resource Manager (and blob storage over https), from
//! `azure_identity`, in the order of the standard chain:
//! 1. an environment service principal (`AZURE_TENANT_ID`, `AZURE_CLIENT_ID`,
//!    `AZURE_CLIENT_SECRET`);
//! 2. workload identity (`AZURE_FEDERATED_TOKEN_FILE` with tenant and client ids);
//! 3. managed identity, only when `use_managed_identity: true` (it is never
//!    probed otherwise: the instance metadata address is not contacted by
//!    surprise);
//! 4. the Azure CLI (`az account get-access-token`).
//!
//! [`StaticToken`] is a test credential (no network): a fixed token.

use std::sync::Arc;

use azure_core::credentials::{AccessToken, Secret, TokenCredential, TokenRequestOptions};

use crate::error::AzureError;

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.trim().is_empty())
}

/// Which credential the chain picked (for logs; no secrets).
pub fn describe() -> &'static str {
    if env("AZURE_CLIENT_SECRET").is_some() {
        "environment service principal"
    } else if env("AZURE_FEDERATED_TOKEN_FILE").is_some() {
        "workload identity"
    } else {
        "Azure CLI"
    }
}

/// The credential of the chain above, with its tokens cached until five
/// minutes before they expire (the Azure CLI credential runs `az` per call).
pub fn chain(use_managed_identity: bool) -> Result<Arc<dyn TokenCredential>, AzureError> {
    Ok(Arc::new(Cached {
        inner: pick(use_managed_identity)?,
        token: tokio::sync::Mutex::new(None),
    }))
}

/// Caches one credential's token (one scope: Resource Manager's).
#[derive(Debug)]
pub struct Cached {
    inner: Arc<dyn TokenCredential>,
    token: tokio::sync::Mutex<Option<(String, AccessToken)>>,
}

#[async_trait::async_trait]
impl TokenCredential for Cached {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        let key = scopes.join(" ");
        let mut g = self.token.lock().await;
        if let Some((k, t)) = g.as_ref() {
            if *k == key
                && t.expires_on > time::OffsetDateTime::now_utc() + time::Duration::minutes(5)
            {
                return Ok(t.clone());
            }
        }
        let t = self.inner.get_token(scopes, options).await?;
        *g = Some((key, t.clone()));
        Ok(t)
    }
}

fn pick(use_managed_identity: bool) -> Result<Arc<dyn TokenCredential>, AzureError> {
    let cred =
        |e: azure_core::Error| AzureError::Credential(crate::error::strip_urls(&e.to_string()));
    if let (Some(t), Some(c), Some(s)) = (
        env("AZURE_TENANT_ID"),
        env("AZURE_CLIENT_ID"),
        env("AZURE_CLIENT_SECRET"),
    ) {
        let c: Arc<dyn TokenCredential> =
            azure_identity::ClientSecretCredential::new(&t, c, Secret::new(s), None)
                .map_err(cred)?;
        return Ok(c);
    }
    if env("AZURE_FEDERATED_TOKEN_FILE").is_some() {
        let c: Arc<dyn TokenCredential> =
            azure_identity::WorkloadIdentityCredential::new(None).map_err(cred)?;
        return Ok(c);
    }
    if use_managed_identity {
        let c: Arc<dyn TokenCredential> =
            azure_identity::ManagedIdentityCredential::new(None).map_err(cred)?;
        return Ok(c);
    }
    let c: Arc<dyn TokenCredential> =
        azure_identity::AzureCliCredential::new(None).map_err(cred)?;
    Ok(c)
}

/// A fixed token (tests against the ARM test server; no network).
pub struct StaticToken(pub String);

impl std::fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StaticToken(<redacted>)")
    }
}

#[async_trait::async_trait]
impl TokenCredential for StaticToken {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        Ok(AccessToken::new(
            Secret::new(self.0.clone()),
            time::OffsetDateTime::now_utc() + time::Duration::hours(1),
        ))
    }
}
