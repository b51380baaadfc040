//! A small typed Azure Resource Manager client on `reqwest` (there is no
//! official ARM compute crate for Rust): bearer token from an
//! `azure_identity` credential (scope `https://management.azure.com/.default`),
//! explicit `api-version`s, and long-running operations done right:
//! `Azure-AsyncOperation` first, then `Location`, `Retry-After` honoured,
//! the operation's `error.code`/`message` surfaced, every wait through core's
//! [`Waiter`]. 429 answers are retried after their `Retry-After`.
//! Operation URLs are only followed on the endpoint's own origin (the token
//! is never sent anywhere else).

use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use opsbake_core::wait::{Poll, WaitError as _, Waiter};
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::AzureError;

/// The public cloud's Resource Manager.
pub const DEFAULT_ENDPOINT: &str = "https://management.azure.com";
/// The token scope.
pub const SCOPE: &str = "https://management.azure.com/.default";

/// api-versions, one per resource provider (pinned, documented in docs/azure.md).
pub mod api {
    /// Microsoft.Resources (resource groups, resources by tag).
    pub const RESOURCES: &str = "2021-04-01";
    /// Microsoft.Network.
    pub const NETWORK: &str = "2023-09-01";
    /// Microsoft.Compute virtual machines, images, vmSizes.
    pub const COMPUTE: &str = "2024-03-01";
    /// Microsoft.Compute disks.
    pub const DISKS: &str = "2023-10-02";
    /// Microsoft.Compute galleries.
    pub const GALLERY: &str = "2023-07-03";
}

/// The api-version for a resource id (by its provider and type).
pub fn api_for(id: &str) -> &'static str {
    let l = id.to_ascii_lowercase();
    if l.contains("/providers/microsoft.network/") {
        api::NETWORK
    } else if l.contains("/providers/microsoft.compute/galleries") {
        api::GALLERY
    } else if l.contains("/providers/microsoft.compute/disks") {
        api::DISKS
    } else if l.contains("/providers/microsoft.compute/") {
        api::COMPUTE
    } else {
        api::RESOURCES
    }
}

/// One answer.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Body (JSON, `Null` when empty).
    pub body: Value,
    /// `Azure-AsyncOperation`.
    pub async_op: Option<String>,
    /// `Location`.
    pub location: Option<String>,
    /// `Retry-After` seconds.
    pub retry_after: Option<u64>,
}

/// The ARM client of one subscription.
#[derive(Clone)]
pub struct Arm {
    http: reqwest::Client,
    endpoint: String,
    credential: Arc<dyn TokenCredential>,
    /// The subscription id.
    pub subscription: String,
    /// Waits of long-running operations.
    pub waiter: Waiter,
    /// Cancels waits (the build's token).
    pub cancel: Option<CancellationToken>,
    /// 429 retries per call.
    pub throttle_retries: u32,
}

impl std::fmt::Debug for Arm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arm")
            .field("endpoint", &self.endpoint)
            .field("subscription", &self.subscription)
            .finish()
    }
}

fn header(h: &reqwest::header::HeaderMap, k: &str) -> Option<String> {
    h.get(k).and_then(|v| v.to_str().ok()).map(str::to_string)
}

impl Arm {
    /// A client for `subscription` at `endpoint` (no I/O).
    pub fn new(
        endpoint: &str,
        subscription: &str,
        credential: Arc<dyn TokenCredential>,
        waiter: Waiter,
    ) -> Result<Arm, AzureError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(20))
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| AzureError::Invalid(format!("HTTP client: {e}")))?;
        Ok(Arm {
            http,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            credential,
            subscription: subscription.to_string(),
            waiter,
            cancel: None,
            throttle_retries: 5,
        })
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `/subscriptions/<id>`.
    pub fn sub(&self) -> String {
        format!("/subscriptions/{}", self.subscription)
    }

    /// A resource group's id.
    pub fn rg_id(&self, rg: &str) -> String {
        format!("{}/resourceGroups/{rg}", self.sub())
    }

    /// A resource's id in a group (`Microsoft.Network/networkInterfaces`, name).
    pub fn res_id(&self, rg: &str, kind: &str, name: &str) -> String {
        format!("{}/providers/{kind}/{name}", self.rg_id(rg))
    }

    async fn token(&self) -> Result<String, AzureError> {
        let t = self
            .credential
            .get_token(&[SCOPE], None)
            .await
            .map_err(|e| AzureError::Credential(crate::error::strip_urls(&e.to_string())))?;
        Ok(t.token.secret().to_string())
    }

    fn url(&self, path_or_url: &str, api: Option<&str>) -> Result<String, AzureError> {
        let url = if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            if !path_or_url.starts_with(&format!("{}/", self.endpoint)) {
                return Err(AzureError::Invalid(format!(
                    "ARM answered an operation URL outside {}: {}; not followed",
                    self.endpoint,
                    path_or_url.split('?').next().unwrap_or("")
                )));
            }
            path_or_url.to_string()
        } else {
            format!("{}{path_or_url}", self.endpoint)
        };
        Ok(match api {
            Some(a) if !url.contains("api-version=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}api-version={a}")
            }
            _ => url,
        })
    }

    /// One call (429 retried after `Retry-After`); `op` and `resource` name
    /// it in errors. Any status is returned; see [`Arm::check`].
    pub async fn call(
        &self,
        method: reqwest::Method,
        path_or_url: &str,
        api: Option<&str>,
        body: Option<&Value>,
        op: &str,
    ) -> Result<Answer, AzureError> {
        let url = self.url(path_or_url, api)?;
        let resource = path_or_url.split('?').next().unwrap_or("").to_string();
        let mut tries = 0;
        loop {
            let token = self.token().await?;
            let mut req = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(token)
                .header("accept", "application/json");
            if let Some(b) = body {
                req = req.json(b);
            } else if method == reqwest::Method::POST || method == reqwest::Method::PUT {
                req = req.header("content-length", "0");
            }
            let r = req.send().await.map_err(|e| AzureError::Transport {
                op: op.to_string(),
                resource: resource.clone(),
                message: if e.is_timeout() {
                    "timed out".into()
                } else if e.is_connect() {
                    "could not connect".into()
                } else {
                    "request failed".into()
                },
            })?;
            let status = r.status().as_u16();
            let h = r.headers().clone();
            let retry_after = header(&h, "retry-after").and_then(|v| v.trim().parse().ok());
            let bytes = r.bytes().await.map_err(|_| AzureError::Transport {
                op: op.to_string(),
                resource: resource.clone(),
                message: "answer cut".into(),
            })?;
            let body: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap_or(Value::Null)
            };
            if status == 429 && tries < self.throttle_retries {
                tries += 1;
                let wait = Duration::from_secs(retry_after.unwrap_or(2).min(60));
                tracing::info!(op, resource = %resource, ?wait, "throttled (429): retrying after Retry-After");
                self.sleep(wait).await?;
                continue;
            }
            return Ok(Answer {
                status,
                body,
                async_op: header(&h, "azure-asyncoperation"),
                location: header(&h, "location"),
                retry_after,
            });
        }
    }

    async fn sleep(&self, d: Duration) -> Result<(), AzureError> {
        match &self.cancel {
            Some(c) => tokio::select! {
                _ = c.cancelled() => Err(AzureError::cancelled("wait", "azure")),
                _ = tokio::time::sleep(d) => Ok(()),
            },
            None => {
                tokio::time::sleep(d).await;
                Ok(())
            }
        }
    }

    /// GET a SAS URL ARM handed out (a boot diagnostics log): no bearer
    /// token is sent; only https, or http on loopback (test peers).
    pub async fn get_sas_text(&self, url: &str, what: &str) -> Result<String, AzureError> {
        let u = url::Url::parse(url)
            .map_err(|e| AzureError::Invalid(format!("{what}: bad URL: {e}")))?;
        let loopback = match u.host() {
            Some(url::Host::Ipv4(a)) => a.is_loopback(),
            Some(url::Host::Ipv6(a)) => a.is_loopback(),
            _ => false,
        };
        if u.scheme() != "https" && !loopback {
            return Err(AzureError::Invalid(format!(
                "{what}: not fetched over plain http from {}",
                u.host_str().unwrap_or("?")
            )));
        }
        let r = self
            .http
            .get(u.clone())
            .send()
            .await
            .map_err(|_| AzureError::Transport {
                op: "GET".into(),
                resource: what.to_string(),
                message: "request failed".into(),
            })?;
        if !r.status().is_success() {
            return Err(AzureError::Api {
                op: "GET".into(),
                resource: what.to_string(),
                status: r.status().as_u16(),
                code: String::new(),
                message: "boot diagnostics log not readable".into(),
            });
        }
        r.text().await.map_err(|_| AzureError::Transport {
            op: "GET".into(),
            resource: what.to_string(),
            message: "answer cut".into(),
        })
    }

    /// An error answer as [`AzureError::Api`] with ARM's `error.code` and
    /// `error.message`.
    pub fn api_error(op: &str, resource: &str, a: &Answer) -> AzureError {
        let e = a.body.get("error").unwrap_or(&a.body);
        AzureError::Api {
            op: op.to_string(),
            resource: resource.to_string(),
            status: a.status,
            code: e
                .get("code")
                .and_then(Value::as_str)
                .unwrap_or("(no code)")
                .to_string(),
            message: e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("(no message)")
                .to_string(),
        }
    }

    /// GET a resource; `None` on 404.
    pub async fn get(&self, id: &str, expand: Option<&str>) -> Result<Option<Value>, AzureError> {
        let path = match expand {
            Some(e) => format!("{id}?$expand={e}"),
            None => id.to_string(),
        };
        let a = self
            .call(reqwest::Method::GET, &path, Some(api_for(id)), None, "GET")
            .await?;
        match a.status {
            200 => Ok(Some(a.body)),
            404 => Ok(None),
            _ => Err(Self::api_error("GET", id, &a)),
        }
    }

    /// GET a list (`value`), following `nextLink`.
    pub async fn list(&self, path: &str, api: &str) -> Result<Vec<Value>, AzureError> {
        let mut out = Vec::new();
        let mut next = Some(path.to_string());
        while let Some(p) = next.take() {
            let a = self
                .call(reqwest::Method::GET, &p, Some(api), None, "GET (list)")
                .await?;
            if a.status != 200 {
                return Err(Self::api_error("GET (list)", path, &a));
            }
            if let Some(v) = a.body.get("value").and_then(Value::as_array) {
                out.extend(v.iter().cloned());
            }
            next = a
                .body
                .get("nextLink")
                .and_then(Value::as_str)
                .map(str::to_string);
        }
        Ok(out)
    }

    /// PUT a resource and wait for its operation; returns the final resource.
    pub async fn put(&self, id: &str, body: &Value, scope: &str) -> Result<Value, AzureError> {
        let op = format!("PUT {}", kind_of(id));
        let a = self
            .call(reqwest::Method::PUT, id, Some(api_for(id)), Some(body), &op)
            .await?;
        if !(a.status == 200 || a.status == 201 || a.status == 202) {
            return Err(Self::api_error(&op, id, &a));
        }
        let state = a
            .body
            .pointer("/properties/provisioningState")
            .and_then(Value::as_str)
            .unwrap_or("Succeeded");
        if a.async_op.is_some() || a.status == 202 || !state.eq_ignore_ascii_case("Succeeded") {
            self.wait_operation(&a, id, scope, &format!("create {id}"))
                .await?;
        }
        self.get(id, None).await?.ok_or_else(|| AzureError::Api {
            op,
            resource: id.to_string(),
            status: 404,
            code: "NotFound".into(),
            message: "gone right after its create succeeded".into(),
        })
    }

    /// POST an action (`powerOff`, `deallocate`, `generalize`) and wait.
    pub async fn action(&self, id: &str, action: &str, scope: &str) -> Result<(), AzureError> {
        let op = format!("POST {action}");
        let a = self
            .call(
                reqwest::Method::POST,
                &format!("{id}/{action}"),
                Some(api_for(id)),
                None,
                &op,
            )
            .await?;
        match a.status {
            200 | 204 if a.async_op.is_none() && a.location.is_none() => Ok(()),
            200 | 202 | 204 => {
                self.wait_operation(&a, id, scope, &format!("{action} {id}"))
                    .await
            }
            _ => Err(Self::api_error(&op, id, &a)),
        }
    }

    /// POST an action with a body whose long-running operation has a
    /// result (`beginGetAccess`: `{"accessSAS": ...}`), wait for it, and
    /// return the result: the `Location` URL's final answer, else the
    /// `Azure-AsyncOperation` status's `properties.output`, else the body of
    /// a synchronous answer.
    pub async fn action_result(
        &self,
        id: &str,
        action: &str,
        body: &Value,
        scope: &str,
    ) -> Result<Value, AzureError> {
        let op = format!("POST {action}");
        let a = self
            .call(
                reqwest::Method::POST,
                &format!("{id}/{action}"),
                Some(api_for(id)),
                Some(body),
                &op,
            )
            .await?;
        match a.status {
            200 if a.async_op.is_none() && a.location.is_none() => Ok(a.body),
            200 | 202 => {
                self.wait_operation(&a, id, scope, &format!("{action} {id}"))
                    .await?;
                if let Some(loc) = &a.location {
                    let r = self
                        .call(
                            reqwest::Method::GET,
                            loc,
                            None,
                            None,
                            "GET operation result",
                        )
                        .await?;
                    if r.status == 200 && !r.body.is_null() {
                        return Ok(r.body);
                    }
                }
                if let Some(u) = &a.async_op {
                    let r = self
                        .call(reqwest::Method::GET, u, None, None, "GET operation")
                        .await?;
                    if let Some(out) = r.body.pointer("/properties/output") {
                        return Ok(out.clone());
                    }
                }
                Err(AzureError::Api {
                    op,
                    resource: id.to_string(),
                    status: a.status,
                    code: "NoOperationResult".into(),
                    message: "the operation succeeded without a result".into(),
                })
            }
            _ => Err(Self::api_error(&op, id, &a)),
        }
    }

    /// DELETE a resource (or group) and wait; `false` when it was not there.
    pub async fn delete(&self, id: &str, scope: &str) -> Result<bool, AzureError> {
        let op = format!("DELETE {}", kind_of(id));
        let a = self
            .call(reqwest::Method::DELETE, id, Some(api_for(id)), None, &op)
            .await?;
        match a.status {
            404 => Ok(false),
            204 => Ok(a.async_op.is_some() || a.location.is_some()),
            200 | 202 => {
                if a.async_op.is_some() || a.location.is_some() {
                    self.wait_operation(&a, id, scope, &format!("delete {id}"))
                        .await?;
                }
                Ok(true)
            }
            _ => Err(Self::api_error(&op, id, &a)),
        }
    }

    /// Wait for a long-running operation: poll `Azure-AsyncOperation` if the
    /// answer had one (its `status`: InProgress, Succeeded, Failed,
    /// Canceled), else `Location` (202: running; 200/204: done).
    /// `Retry-After` sets the earliest next poll.
    pub async fn wait_operation(
        &self,
        first: &Answer,
        id: &str,
        scope: &str,
        what: &str,
    ) -> Result<(), AzureError> {
        self.wait_operation_with(first, id, scope, what, || async {})
            .await
    }

    /// [`Arm::wait_operation`], calling `after_poll` after each poll (progress).
    pub async fn wait_operation_with<H, HF>(
        &self,
        first: &Answer,
        id: &str,
        scope: &str,
        what: &str,
        after_poll: H,
    ) -> Result<(), AzureError>
    where
        H: Fn() -> HF,
        HF: std::future::Future<Output = ()>,
    {
        let (url, by_status) = match (&first.async_op, &first.location) {
            (Some(u), _) => (u.clone(), true),
            (None, Some(u)) => (u.clone(), false),
            (None, None) => {
                // No operation URL: poll the resource's provisioningState.
                return self.wait_provisioned(id, scope, what).await;
            }
        };
        let not_before = std::sync::Mutex::new(
            Instant::now() + Duration::from_secs(first.retry_after.unwrap_or(0)),
        );
        let next = |ra: Option<u64>| {
            if let Ok(mut g) = not_before.lock() {
                *g = Instant::now() + Duration::from_secs(ra.unwrap_or(0));
            }
        };
        let (_, stats) = self
            .waiter
            .wait_cancellable(what, scope, self.cancel.as_ref(), || {
                let url = url.clone();
                let nb = not_before
                    .lock()
                    .map(|g| *g)
                    .unwrap_or_else(|_| Instant::now());
                let next = &next;
                let after_poll = &after_poll;
                async move {
                    tokio::time::sleep_until(nb).await;
                    let a = self
                        .call(reqwest::Method::GET, &url, None, None, "GET operation")
                        .await?;
                    next(a.retry_after);
                    after_poll().await;
                    if by_status {
                        if a.status != 200 {
                            return Err(Self::api_error("GET operation", id, &a));
                        }
                        let st = a
                            .body
                            .get("status")
                            .and_then(Value::as_str)
                            .unwrap_or("InProgress")
                            .to_string();
                        match st.as_str() {
                            "Succeeded" => Ok(Poll::Ready(())),
                            "Failed" | "Canceled" => {
                                let e = a.body.get("error").cloned().unwrap_or(Value::Null);
                                Ok(Poll::Failed(format!(
                                    "{st}: {}: {}",
                                    e.get("code").and_then(Value::as_str).unwrap_or("(no code)"),
                                    e.get("message")
                                        .and_then(Value::as_str)
                                        .unwrap_or("(no message)")
                                )))
                            }
                            other => Ok(Poll::Pending(other.to_string())),
                        }
                    } else {
                        match a.status {
                            202 => Ok(Poll::Pending("202 Accepted".into())),
                            200 | 201 | 204 => Ok(Poll::Ready(())),
                            _ => {
                                let e = Self::api_error("GET operation result", id, &a);
                                Ok(Poll::Failed(e.to_string()))
                            }
                        }
                    }
                }
            })
            .await?;
        tracing::debug!(what, polls = stats.polls, "operation done");
        Ok(())
    }

    async fn wait_provisioned(&self, id: &str, scope: &str, what: &str) -> Result<(), AzureError> {
        self.waiter
            .wait_cancellable(what, scope, self.cancel.as_ref(), || async move {
                match self.get(id, None).await? {
                    None => Ok(Poll::Failed("the resource vanished".into())),
                    Some(v) => {
                        let st = v
                            .pointer("/properties/provisioningState")
                            .and_then(Value::as_str)
                            .unwrap_or("Succeeded")
                            .to_string();
                        match st.as_str() {
                            "Succeeded" => Ok(Poll::Ready(())),
                            "Failed" | "Canceled" => Ok(Poll::Failed(st)),
                            _ => Ok(Poll::Pending(st)),
                        }
                    }
                }
            })
            .await
            .map(|_| ())
    }
}

/// `Microsoft.Compute/virtualMachines` from an id.
pub fn kind_of(id: &str) -> String {
    match id.split_once("/providers/") {
        Some((_, rest)) => {
            let segs: Vec<&str> = rest.split('/').collect();
            let mut k = segs.first().copied().unwrap_or("").to_string();
            for (i, s) in segs.iter().enumerate().skip(1) {
                if i % 2 == 1 {
                    k.push('/');
                    k.push_str(s);
                }
            }
            k
        }
        None if id.to_ascii_lowercase().contains("/resourcegroups/") => {
            "Microsoft.Resources/resourceGroups".into()
        }
        None => "subscription".into(),
    }
}

/// The resource group of a resource id.
pub fn rg_of(id: &str) -> Option<&str> {
    let l = id.to_ascii_lowercase();
    let i = l.find("/resourcegroups/")? + "/resourcegroups/".len();
    id[i..].split('/').next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_api_versions_follow_the_id() {
        let vm =
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1";
        assert_eq!(kind_of(vm), "Microsoft.Compute/virtualMachines");
        assert_eq!(api_for(vm), api::COMPUTE);
        let v = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/i/versions/1.0.0";
        assert_eq!(kind_of(v), "Microsoft.Compute/galleries/images/versions");
        assert_eq!(api_for(v), api::GALLERY);
        assert_eq!(rg_of(v), Some("rg"));
        assert_eq!(
            kind_of("/subscriptions/s/resourceGroups/rg"),
            "Microsoft.Resources/resourceGroups"
        );
        assert_eq!(
            api_for("/subscriptions/s/resourceGroups/rg"),
            api::RESOURCES
        );
    }
}
