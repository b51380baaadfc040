//! The Compute Engine and Cloud Storage calls the builder makes, on the
//! official clients (`google-cloud-compute-v1`, `google-cloud-storage`) with
//! credentials from `google-cloud-auth`. Bodies are written as the REST
//! reference's JSON and converted to the clients' models through serde, so
//! the code reads like the API documentation.
//!
//! Every call retries 429/5xx with backoff (inserts carry a `requestId`, so
//! a retried insert is the same insert); operations are polled with core's
//! [`Waiter`].

use std::future::Future;
use std::time::Duration;

use google_cloud_auth::credentials::{CacheableResource, Credentials};
use google_cloud_compute_v1::client::{
    Disks, Firewalls, GlobalOperations, Images, Instances, MachineTypes, ZoneOperations,
};
use opsbake_core::wait::{Poll, WaitError as _, Waiter};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::error::{api, GcpError};

/// The scope of every token.
pub const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
/// The public Cloud Storage endpoint.
pub const STORAGE_ENDPOINT: &str = "https://storage.googleapis.com";

/// Where credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredSource {
    /// Application Default Credentials (`GOOGLE_APPLICATION_CREDENTIALS`,
    /// the gcloud ADC file, the metadata server).
    Adc,
    /// A key file (service account, authorized user...).
    File(std::path::PathBuf),
    /// None (test servers).
    Anonymous,
}

/// Load credentials (never logs or returns their contents).
pub fn credentials(src: &CredSource) -> Result<Credentials, GcpError> {
    use google_cloud_auth::credentials::{anonymous, service_account, Builder};
    match src {
        CredSource::Anonymous => Ok(anonymous::Builder::new().build()),
        CredSource::Adc => Builder::default()
            .with_scopes([CLOUD_PLATFORM])
            .build()
            .map_err(|e| {
                GcpError::Credentials(format!(
                    "Application Default Credentials: {e} (set GOOGLE_APPLICATION_CREDENTIALS, run `gcloud auth application-default login`, or set options.credentials_file)"
                ))
            }),
        CredSource::File(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| GcpError::Credentials(format!("{}: {e}", p.display())))?;
            let v: Value = serde_json::from_str(&text).map_err(|e| {
                GcpError::Credentials(format!(
                    "{}: not a JSON key file (line {}, column {})",
                    p.display(),
                    e.line(),
                    e.column()
                ))
            })?;
            match v["type"].as_str() {
                Some("service_account") => service_account::Builder::new(v)
                    .with_access_specifier(service_account::AccessSpecifier::from_scopes([
                        CLOUD_PLATFORM,
                    ]))
                    .build()
                    .map_err(|e| GcpError::Credentials(format!("{}: {e}", p.display()))),
                Some(t) => Err(GcpError::Credentials(format!(
                    "{}: key type `{t}` is not supported here (use a service_account key, or Application Default Credentials)",
                    p.display()
                ))),
                None => Err(GcpError::Credentials(format!(
                    "{}: no `type` field (not a Google credentials file)",
                    p.display()
                ))),
            }
        }
    }
}

struct Clients {
    instances: Instances,
    images: Images,
    firewalls: Firewalls,
    machine_types: MachineTypes,
    disks: Disks,
    zone_ops: ZoneOperations,
    global_ops: GlobalOperations,
    creds: Credentials,
    http: reqwest::Client,
}

/// The calls of one project and zone.
pub struct Api {
    /// Project.
    pub project: String,
    /// Zone.
    pub zone: String,
    /// Compute endpoint override.
    pub compute_endpoint: Option<String>,
    /// Storage endpoint override.
    pub storage_endpoint: Option<String>,
    creds: CredSource,
    /// Polling of operations.
    pub waiter: Waiter,
    clients: tokio::sync::OnceCell<Clients>,
    storage: tokio::sync::OnceCell<google_cloud_storage::client::Storage>,
}

fn model<T: serde::de::DeserializeOwned>(v: Value, what: &str) -> Result<T, GcpError> {
    serde_json::from_value(v).map_err(|e| GcpError::Invalid(format!("{what}: {e}")))
}

fn json_of<T: serde::Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap_or(Value::Null)
}

/// A `requestId` (GCE wants a UUID) derived from a journal token, so the
/// same resource record always sends the same id.
pub fn request_id(token: &str) -> String {
    use sha1::Digest as _;
    let h = sha1::Sha1::digest(token.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0f) | 0x50; // version 5 (name-based, SHA-1)
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let x = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

impl Api {
    /// Calls for `project`/`zone` (no I/O until the first call).
    pub fn new(
        project: String,
        zone: String,
        compute_endpoint: Option<String>,
        storage_endpoint: Option<String>,
        creds: CredSource,
        waiter: Waiter,
    ) -> Api {
        Api {
            project,
            zone,
            compute_endpoint,
            storage_endpoint,
            creds,
            waiter,
            clients: tokio::sync::OnceCell::new(),
            storage: tokio::sync::OnceCell::new(),
        }
    }

    /// Where the credentials come from.
    pub fn cred_source(&self) -> CredSource {
        self.creds.clone()
    }

    /// `project/zone`.
    pub fn scope(&self) -> String {
        format!("{}/{}", self.project, self.zone)
    }

    async fn c(&self) -> Result<&Clients, GcpError> {
        self.clients
            .get_or_try_init(|| async {
                let creds = credentials(&self.creds)?;
                let ep = self.compute_endpoint.clone();
                let cerr = |e: google_cloud_gax::client_builder::Error| GcpError::Client {
                    service: "compute",
                    endpoint: ep.clone().unwrap_or_else(|| "default".into()),
                    message: e.to_string(),
                };
                macro_rules! build {
                    ($t:ty) => {{
                        // One retry layer: ours (429/5xx, logged, bounded).
                        let mut b = <$t>::builder()
                            .with_credentials(creds.clone())
                            .with_retry_policy(google_cloud_gax::retry_policy::NeverRetry);
                        if let Some(e) = &ep {
                            b = b.with_endpoint(e.clone());
                        }
                        b.build().await.map_err(cerr)?
                    }};
                }
                Ok(Clients {
                    instances: build!(Instances),
                    images: build!(Images),
                    firewalls: build!(Firewalls),
                    machine_types: build!(MachineTypes),
                    disks: build!(Disks),
                    zone_ops: build!(ZoneOperations),
                    global_ops: build!(GlobalOperations),
                    http: reqwest::Client::builder()
                        .timeout(Duration::from_secs(120))
                        .build()
                        .map_err(|e| GcpError::Client {
                            service: "storage",
                            endpoint: self.storage_base(),
                            message: e.to_string(),
                        })?,
                    creds,
                })
            })
            .await
    }

    /// The storage client (resumable uploads).
    pub async fn storage(&self) -> Result<&google_cloud_storage::client::Storage, GcpError> {
        let creds = self.c().await?.creds.clone();
        self.storage
            .get_or_try_init(|| async {
                let mut b =
                    google_cloud_storage::client::Storage::builder().with_credentials(creds);
                if let Some(e) = &self.storage_endpoint {
                    b = b.with_endpoint(e.clone());
                }
                b.build().await.map_err(|e| GcpError::Client {
                    service: "storage",
                    endpoint: self.storage_base(),
                    message: e.to_string(),
                })
            })
            .await
    }

    fn storage_base(&self) -> String {
        self.storage_endpoint
            .clone()
            .unwrap_or_else(|| STORAGE_ENDPOINT.to_string())
            .trim_end_matches('/')
            .to_string()
    }

    /// Run a call, retrying 429/5xx with backoff (up to 6 tries).
    async fn retry<T, F, Fut>(
        &self,
        op: &'static str,
        scope: &str,
        resource: &str,
        mut f: F,
    ) -> Result<T, GcpError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, google_cloud_gax::error::Error>>,
    {
        let mut delay = Duration::from_millis(200);
        let mut tries = 0;
        loop {
            tries += 1;
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let e = api(op, &self.project, scope, resource)(e);
                    if e.is_transient() && tries < 6 {
                        tracing::debug!(op, resource, error = %e, ?delay, "transient, retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(8));
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    /// machineTypes.get: proves the credentials, project, zone and type.
    pub async fn machine_type(&self, mt: &str) -> Result<Value, GcpError> {
        let c = self.c().await?;
        let r = self
            .retry("machineTypes.get", &self.zone, mt, || {
                c.machine_types
                    .get()
                    .set_project(&self.project)
                    .set_zone(&self.zone)
                    .set_machine_type(mt)
                    .send()
            })
            .await?;
        Ok(json_of(&r))
    }

    /// instances.insert.
    pub async fn instance_insert(&self, body: Value, token: &str) -> Result<Value, GcpError> {
        let c = self.c().await?;
        let name = body["name"].as_str().unwrap_or("").to_string();
        let inst: google_cloud_compute_v1::model::Instance = model(body, "instance body")?;
        let rid = request_id(token);
        let r = self
            .retry("instances.insert", &self.zone, &name, || {
                c.instances
                    .insert()
                    .set_project(&self.project)
                    .set_zone(&self.zone)
                    .set_request_id(&rid)
                    .set_body(inst.clone())
                    .send()
            })
            .await?;
        Ok(json_of(&r))
    }

    /// instances.get; `None` when it does not exist.
    pub async fn instance(&self, zone: &str, name: &str) -> Result<Option<Value>, GcpError> {
        let c = self.c().await?;
        let r = self
            .retry("instances.get", zone, name, || {
                c.instances
                    .get()
                    .set_project(&self.project)
                    .set_zone(zone)
                    .set_instance(name)
                    .send()
            })
            .await;
        match r {
            Ok(v) => Ok(Some(json_of(&v))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// instances.stop / start / delete.
    pub async fn instance_verb(
        &self,
        zone: &str,
        name: &str,
        verb: &str,
    ) -> Result<Value, GcpError> {
        let c = self.c().await?;
        let p = &self.project;
        let r = match verb {
            "stop" => {
                self.retry("instances.stop", zone, name, || {
                    c.instances
                        .stop()
                        .set_project(p)
                        .set_zone(zone)
                        .set_instance(name)
                        .send()
                })
                .await?
            }
            "start" => {
                self.retry("instances.start", zone, name, || {
                    c.instances
                        .start()
                        .set_project(p)
                        .set_zone(zone)
                        .set_instance(name)
                        .send()
                })
                .await?
            }
            _ => {
                self.retry("instances.delete", zone, name, || {
                    c.instances
                        .delete()
                        .set_project(p)
                        .set_zone(zone)
                        .set_instance(name)
                        .send()
                })
                .await?
            }
        };
        Ok(json_of(&r))
    }

    /// instances.getSerialPortOutput (port 1) contents.
    pub async fn serial_output(&self, name: &str) -> Result<String, GcpError> {
        let c = self.c().await?;
        let r = self
            .retry("instances.getSerialPortOutput", &self.zone, name, || {
                c.instances
                    .get_serial_port_output()
                    .set_project(&self.project)
                    .set_zone(&self.zone)
                    .set_instance(name)
                    .set_port(1)
                    .send()
            })
            .await?;
        Ok(r.contents.unwrap_or_default())
    }

    /// instances.list / disks.list with a filter (names).
    pub async fn list_zonal(
        &self,
        zone: &str,
        what: &str,
        filter: &str,
    ) -> Result<Vec<Value>, GcpError> {
        let c = self.c().await?;
        let p = &self.project;
        let v = if what == "disks" {
            json_of(
                &self
                    .retry("disks.list", zone, filter, || {
                        c.disks
                            .list()
                            .set_project(p)
                            .set_zone(zone)
                            .set_filter(filter)
                            .send()
                    })
                    .await?,
            )
        } else {
            json_of(
                &self
                    .retry("instances.list", zone, filter, || {
                        c.instances
                            .list()
                            .set_project(p)
                            .set_zone(zone)
                            .set_filter(filter)
                            .send()
                    })
                    .await?,
            )
        };
        Ok(v["items"].as_array().cloned().unwrap_or_default())
    }

    /// disks.delete; `None` when it was already gone.
    pub async fn disk_delete(&self, zone: &str, name: &str) -> Result<Option<Value>, GcpError> {
        let c = self.c().await?;
        let r = self
            .retry("disks.delete", zone, name, || {
                c.disks
                    .delete()
                    .set_project(&self.project)
                    .set_zone(zone)
                    .set_disk(name)
                    .send()
            })
            .await;
        match r {
            Ok(v) => Ok(Some(json_of(&v))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// images.insert (`forceCreate` for a disk of a running instance).
    pub async fn image_insert(&self, body: Value, token: &str) -> Result<Value, GcpError> {
        let c = self.c().await?;
        let name = body["name"].as_str().unwrap_or("").to_string();
        let img: google_cloud_compute_v1::model::Image = model(body, "image body")?;
        let rid = request_id(token);
        let r = self
            .retry("images.insert", "global", &name, || {
                c.images
                    .insert()
                    .set_project(&self.project)
                    .set_request_id(&rid)
                    .set_body(img.clone())
                    .send()
            })
            .await?;
        Ok(json_of(&r))
    }

    /// images.get in any project; `None` when it does not exist.
    pub async fn image(&self, project: &str, name: &str) -> Result<Option<Value>, GcpError> {
        let c = self.c().await?;
        let r = self
            .retry("images.get", "global", name, || {
                c.images.get().set_project(project).set_image(name).send()
            })
            .await;
        match r {
            Ok(v) => Ok(Some(json_of(&v))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// images.list with a filter.
    pub async fn images(&self, filter: &str) -> Result<Vec<Value>, GcpError> {
        let c = self.c().await?;
        let r = self
            .retry("images.list", "global", filter, || {
                c.images
                    .list()
                    .set_project(&self.project)
                    .set_filter(filter)
                    .send()
            })
            .await?;
        Ok(json_of(&r)["items"].as_array().cloned().unwrap_or_default())
    }

    /// images.delete; `None` when it was already gone.
    pub async fn image_delete(&self, name: &str) -> Result<Option<Value>, GcpError> {
        let c = self.c().await?;
        let r = self
            .retry("images.delete", "global", name, || {
                c.images
                    .delete()
                    .set_project(&self.project)
                    .set_image(name)
                    .send()
            })
            .await;
        match r {
            Ok(v) => Ok(Some(json_of(&v))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// images.setIamPolicy: `roles/compute.imageUser` for `members`, added to
    /// the current policy (read first, its etag sent back).
    pub async fn share_image(&self, name: &str, members: &[String]) -> Result<Value, GcpError> {
        let c = self.c().await?;
        let cur = self
            .retry("images.getIamPolicy", "global", name, || {
                c.images
                    .get_iam_policy()
                    .set_project(&self.project)
                    .set_resource(name)
                    .send()
            })
            .await?;
        let mut pol = json_of(&cur);
        let mut bindings = pol["bindings"].as_array().cloned().unwrap_or_default();
        match bindings
            .iter_mut()
            .find(|b| b["role"] == "roles/compute.imageUser")
        {
            Some(b) => {
                let mut m = b["members"].as_array().cloned().unwrap_or_default();
                for x in members {
                    if !m.iter().any(|y| y == x) {
                        m.push(json!(x));
                    }
                }
                b["members"] = json!(m);
            }
            None => bindings.push(json!({"role": "roles/compute.imageUser", "members": members})),
        }
        pol["bindings"] = json!(bindings);
        let req: google_cloud_compute_v1::model::GlobalSetPolicyRequest =
            model(json!({ "policy": pol }), "IAM policy")?;
        let r = self
            .retry("images.setIamPolicy", "global", name, || {
                c.images
                    .set_iam_policy()
                    .set_project(&self.project)
                    .set_resource(name)
                    .set_body(req.clone())
                    .send()
            })
            .await?;
        Ok(json_of(&r))
    }

    /// firewalls.insert.
    pub async fn firewall_insert(&self, body: Value, token: &str) -> Result<Value, GcpError> {
        let c = self.c().await?;
        let name = body["name"].as_str().unwrap_or("").to_string();
        let fw: google_cloud_compute_v1::model::Firewall = model(body, "firewall body")?;
        let rid = request_id(token);
        let r = self
            .retry("firewalls.insert", "global", &name, || {
                c.firewalls
                    .insert()
                    .set_project(&self.project)
                    .set_request_id(&rid)
                    .set_body(fw.clone())
                    .send()
            })
            .await?;
        Ok(json_of(&r))
    }

    /// firewalls.list with a filter.
    pub async fn firewalls(&self, filter: &str) -> Result<Vec<Value>, GcpError> {
        let c = self.c().await?;
        let r = self
            .retry("firewalls.list", "global", filter, || {
                c.firewalls
                    .list()
                    .set_project(&self.project)
                    .set_filter(filter)
                    .send()
            })
            .await?;
        Ok(json_of(&r)["items"].as_array().cloned().unwrap_or_default())
    }

    /// firewalls.delete; `None` when it was already gone.
    pub async fn firewall_delete(&self, name: &str) -> Result<Option<Value>, GcpError> {
        let c = self.c().await?;
        let r = self
            .retry("firewalls.delete", "global", name, || {
                c.firewalls
                    .delete()
                    .set_project(&self.project)
                    .set_firewall(name)
                    .send()
            })
            .await;
        match r {
            Ok(v) => Ok(Some(json_of(&v))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Wait until an operation is `DONE` (adaptive polling with the core
    /// waiter); its `error.errors[]` become [`GcpError::Operation`].
    pub async fn wait_op(
        &self,
        op: &Value,
        what: &str,
        cancel: Option<&CancellationToken>,
    ) -> Result<Value, GcpError> {
        let c = self.c().await?;
        let name = op["name"].as_str().unwrap_or("").to_string();
        let zone = op["zone"]
            .as_str()
            .map(|z| z.rsplit('/').next().unwrap_or(z).to_string());
        let scope = zone.clone().unwrap_or_else(|| "global".to_string());
        let label = format!("operation {name} ({what})");
        let sc = format!("{}/{scope}", self.project);
        let (done, _) = self
            .waiter
            .wait_cancellable(&label, &sc, cancel, || {
                let (name, zone) = (name.clone(), zone.clone());
                async move {
                    let r = match &zone {
                        Some(z) => c
                            .zone_ops
                            .get()
                            .set_project(&self.project)
                            .set_zone(z)
                            .set_operation(&name)
                            .send()
                            .await
                            .map_err(api("zoneOperations.get", &self.project, z, &name)),
                        None => c
                            .global_ops
                            .get()
                            .set_project(&self.project)
                            .set_operation(&name)
                            .send()
                            .await
                            .map_err(api("globalOperations.get", &self.project, "global", &name)),
                    }?;
                    let v = json_of(&r);
                    Ok(match v["status"].as_str() {
                        Some("DONE") => Poll::Ready(v),
                        Some(s) => {
                            Poll::Pending(format!("{s} {}%", v["progress"].as_i64().unwrap_or(0)))
                        }
                        None => Poll::Pending("no status".into()),
                    })
                }
            })
            .await?;
        let errors: Vec<String> = done["error"]["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                format!(
                    "{}: {}",
                    e["code"].as_str().unwrap_or("ERROR"),
                    e["message"].as_str().unwrap_or("")
                )
            })
            .collect();
        if !errors.is_empty() {
            return Err(GcpError::Operation {
                operation: name,
                what: what.to_string(),
                project: self.project.clone(),
                scope,
                errors: errors.join("; "),
            });
        }
        Ok(done)
    }

    /// A JSON API call to Cloud Storage with the client's credentials
    /// (bucket get, object delete and list: the storage client's control
    /// plane is gRPC only).
    async fn gcs(
        &self,
        method: reqwest::Method,
        path: &str,
        what: &'static str,
        res: &str,
    ) -> Result<(u16, Value), GcpError> {
        let c = self.c().await?;
        let headers = match c.creds.headers(http::Extensions::new()).await {
            Ok(CacheableResource::New { data, .. }) => data,
            Ok(CacheableResource::NotModified) => http::HeaderMap::new(),
            Err(e) => return Err(GcpError::Credentials(e.to_string())),
        };
        let url = format!("{}{path}", self.storage_base());
        let mut delay = Duration::from_millis(200);
        let mut tries = 0;
        loop {
            tries += 1;
            let r = c
                .http
                .request(method.clone(), &url)
                .headers(headers.clone())
                .send()
                .await;
            let err = |code: Option<u16>, message: String| GcpError::Api {
                op: what,
                project: self.project.clone(),
                scope: "global".into(),
                resource: res.to_string(),
                code,
                message,
            };
            match r {
                Ok(resp) => {
                    let st = resp.status().as_u16();
                    let body = resp.bytes().await.unwrap_or_default();
                    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    if (st == 429 || st >= 500) && tries < 6 {
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(8));
                        continue;
                    }
                    if st >= 400 && st != 404 {
                        let m = v["error"]["message"]
                            .as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| {
                                String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned()
                            });
                        return Err(err(Some(st), m));
                    }
                    return Ok((st, v));
                }
                Err(e) if tries < 6 && (e.is_connect() || e.is_timeout()) => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(8));
                }
                Err(e) => return Err(err(None, e.to_string())),
            }
        }
    }

    /// Whether a bucket exists (buckets.get).
    pub async fn bucket_exists(&self, bucket: &str) -> Result<bool, GcpError> {
        let (st, _) = self
            .gcs(
                reqwest::Method::GET,
                &format!("/storage/v1/b/{}", enc(bucket)),
                "buckets.get",
                bucket,
            )
            .await?;
        Ok(st != 404)
    }

    /// Delete an object; false when it was already gone.
    pub async fn object_delete(&self, bucket: &str, object: &str) -> Result<bool, GcpError> {
        let (st, _) = self
            .gcs(
                reqwest::Method::DELETE,
                &format!("/storage/v1/b/{}/o/{}", enc(bucket), enc(object)),
                "objects.delete",
                &format!("gs://{bucket}/{object}"),
            )
            .await?;
        Ok(st != 404)
    }

    /// Object names under a prefix.
    pub async fn objects(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, GcpError> {
        let (st, v) = self
            .gcs(
                reqwest::Method::GET,
                &format!("/storage/v1/b/{}/o?prefix={}", enc(bucket), enc(prefix)),
                "objects.list",
                &format!("gs://{bucket}/{prefix}"),
            )
            .await?;
        if st == 404 {
            return Ok(Vec::new());
        }
        Ok(v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o["name"].as_str().map(str::to_string))
            .collect())
    }
}

/// Percent-encode a path segment.
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn request_ids_are_uuids_stable_per_token() {
        let a = request_id("ob-1-gcp-abc-3");
        assert_eq!(a, request_id("ob-1-gcp-abc-3"));
        assert_ne!(a, request_id("ob-1-gcp-abc-4"));
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('5'));
    }
}
