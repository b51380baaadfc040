//! A Compute Engine test server on 127.0.0.1, for the GCP builder's tests.
//!
//! Google publishes no Compute Engine emulator, so this is written from the
//! Compute v1 REST reference (`/compute/v1/projects/{project}/...`):
//! instances insert/get/list/stop/start/delete/getSerialPortOutput/
//! setMetadata, disks get/list/delete, images insert (from a disk, or from
//! `rawDisk.source` read from fake-gcs-server and checked to be a tar.gz
//! holding exactly `disk.raw`)/get/list/delete/getIamPolicy/setIamPolicy,
//! firewalls insert/get/list/delete, machineTypes get, zonal and global
//! operations.
//!
//! Behaviour that matters to a client:
//! - every mutation answers an `Operation` in `PENDING`; each `GET` of it
//!   advances it (`RUNNING` ... `DONE` after [`GceOptions::polls_to_done`]
//!   polls), and its effect (instance `RUNNING`, image `READY`, resource
//!   gone) lands when it turns `DONE`. Inserted resources exist at once in
//!   their transitional state (`PROVISIONING`, `PENDING`), as in GCE;
//! - `requestId` makes inserts idempotent: the same id answers the same
//!   operation;
//! - errors carry Google's JSON error body (`error.code`, `message`,
//!   `errors[].reason`, `status`): 404 `notFound`, 409 `alreadyExists`, 429
//!   `rateLimitExceeded`, 412 `conditionNotMet` (metadata fingerprint), 400
//!   `resourceInUseByAnotherResource`; an operation can end `DONE` with
//!   `error.errors[]` (e.g. `QUOTA_EXCEEDED`, injected with
//!   [`GceServer::inject`]);
//! - addresses are invented from TEST-NET ranges (192.0.2.x internal,
//!   203.0.113.x external) and are never contacted; instances do not run;
//! - links are built from a fixed base (`https://www.googleapis.com/compute/v1/`),
//!   never from the `Host` header;
//! - `Authorization: Bearer` is required when [`GceOptions::require_bearer`]
//!   is set, and the tokens seen are recorded.
//!
//! Tests inspect what exists through [`GceServer::instances`],
//! [`GceServer::images`], [`GceServer::disks`], [`GceServer::firewalls`],
//! [`GceServer::calls`]. The server runs on its own thread with its own
//! Tokio runtime and stops when dropped.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use sha2::Digest as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::oneshot;

/// The fixed base of every link the server writes.
pub const LINK_BASE: &str = "https://www.googleapis.com/compute/v1/";

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum GceError {
    /// Binding or the runtime failed.
    #[error("gce test server {what}: {source}")]
    Io {
        /// What was done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// An image that exists before the test (what a light stemcell points at).
#[derive(Debug, Clone)]
pub struct SeedImage {
    /// Project holding it (e.g. `bosh-cpi`).
    pub project: String,
    /// Name.
    pub name: String,
}

/// How to start the server.
#[derive(Debug, Clone)]
pub struct GceOptions {
    /// Projects that exist (others answer 404).
    pub projects: Vec<String>,
    /// Zones of every project.
    pub zones: Vec<String>,
    /// Machine types offered in every zone.
    pub machine_types: Vec<String>,
    /// `GET`s of an operation until it is `DONE` (at least 1).
    pub polls_to_done: u32,
    /// fake-gcs-server's endpoint (`http://127.0.0.1:P`), where
    /// `rawDisk.source` objects are read.
    pub gcs_endpoint: Option<String>,
    /// Images that exist from the start.
    pub seed_images: Vec<SeedImage>,
    /// Host keys an instance prints on its serial console at first boot
    /// (`ssh-ed25519 AAAA...`); none: it prints none.
    pub serial_host_keys: Vec<String>,
    /// Refuse calls without `Authorization: Bearer ...` (401).
    pub require_bearer: bool,
}

impl Default for GceOptions {
    fn default() -> Self {
        GceOptions {
            projects: vec!["opsbake-test".into()],
            zones: vec!["us-central1-a".into(), "europe-west1-b".into()],
            machine_types: vec![
                "e2-small".into(),
                "e2-medium".into(),
                "e2-standard-2".into(),
                "n2-standard-2".into(),
            ],
            polls_to_done: 3,
            gcs_endpoint: None,
            seed_images: Vec::new(),
            serial_host_keys: Vec::new(),
            require_bearer: false,
        }
    }
}

/// An error the server answers instead of doing the call.
#[derive(Debug, Clone)]
pub enum Injected {
    /// An HTTP error with Google's error body.
    Http {
        /// Status.
        status: u16,
        /// `errors[].reason`, e.g. `rateLimitExceeded`.
        reason: String,
        /// Message.
        message: String,
    },
    /// The call is accepted, its operation ends `DONE` with this error and
    /// nothing is created (e.g. `QUOTA_EXCEEDED`).
    Operation {
        /// `error.errors[].code`.
        code: String,
        /// Message.
        message: String,
    },
}

/// One call the server saw.
#[derive(Debug, Clone)]
pub struct GceCall {
    /// `instances.insert`, `zoneOperations.get`...
    pub method: String,
    /// The path.
    pub path: String,
    /// The status answered.
    pub status: u16,
}

struct Op {
    json: Value,
    polls: u32,
    effect: Option<Effect>,
    error: Option<(String, String)>,
}

enum Effect {
    InstanceRunning { key: Key },
    InstanceStopped { key: Key },
    InstanceDeleted { key: Key },
    DiskDeleted { key: Key },
    ImageReady { key: Key },
    ImageDeleted { key: Key },
    FirewallDeleted { key: Key },
    Undo(Box<Effect>),
}

/// (project, zone or "global", name)
type Key = (String, String, String);

#[derive(Default)]
struct Image {
    json: Value,
    policy: Value,
    raw_sha256: Option<String>,
    raw_len: Option<u64>,
}

#[derive(Default)]
struct State {
    opts: Option<GceOptions>,
    next_id: u64,
    next_ip: u8,
    instances: BTreeMap<Key, Value>,
    disks: BTreeMap<Key, Value>,
    images: BTreeMap<Key, Image>,
    firewalls: BTreeMap<Key, Value>,
    ops: HashMap<Key, Op>,
    request_ids: HashMap<(String, String), Key>,
    injected: Vec<(String, Injected, Option<usize>)>,
    calls: Vec<GceCall>,
    tokens: Vec<String>,
}

/// A running Compute Engine test server.
pub struct GceServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

type Answer = (StatusCode, Value);

fn gerr(status: u16, reason: &str, message: impl Into<String>) -> Answer {
    let message = message.into();
    let st = match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ALREADY_EXISTS",
        412 => "FAILED_PRECONDITION",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        _ => "UNKNOWN",
    };
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        json!({"error": {
            "code": status,
            "message": message,
            "errors": [{"message": message, "domain": "global", "reason": reason}],
            "status": st,
        }}),
    )
}

fn not_found(what: &str) -> Answer {
    gerr(
        404,
        "notFound",
        format!("The resource '{what}' was not found"),
    )
}

fn already_exists(what: &str) -> Answer {
    gerr(
        409,
        "alreadyExists",
        format!("The resource '{what}' already exists"),
    )
}

fn ok(v: Value) -> Answer {
    (StatusCode::OK, v)
}

fn link(rel: &str) -> String {
    format!("{LINK_BASE}{rel}")
}

/// The last path segment of a link or partial URL.
fn last_seg(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

/// `projects/P/global/images/N` (or a full link) -> (P, N).
fn image_ref(s: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = s.split('/').collect();
    let i = parts.iter().position(|p| *p == "projects")?;
    let project = parts.get(i + 1)?;
    let n = parts.iter().position(|p| *p == "images")?;
    let name = parts.get(n + 1)?;
    if *name == "family" {
        return None;
    }
    Some((project.to_string(), name.to_string()))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match h {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Google's list filter, the subset the builder uses: clauses joined by
/// `AND`, each `labels.K = "V"`, `name = "V"` or `name eq V` (prefix
/// regex `V.*`).
fn matches_filter(v: &Value, filter: &str) -> bool {
    for clause in filter.split(" AND ") {
        let c = clause.trim().trim_start_matches('(').trim_end_matches(')');
        if c.is_empty() {
            continue;
        }
        let (field, op, want) = if let Some((f, w)) = c.split_once(" eq ") {
            (f.trim(), "eq", w.trim())
        } else if let Some((f, w)) = c.split_once('=') {
            (f.trim(), "=", w.trim())
        } else {
            return false;
        };
        let want = want.trim_matches('"');
        let have = if let Some(l) = field.strip_prefix("labels.") {
            v.get("labels")
                .and_then(|x| x.get(l))
                .and_then(Value::as_str)
        } else {
            v.get(field).and_then(Value::as_str)
        };
        let Some(have) = have else { return false };
        let hit = match op {
            "eq" => match want.strip_suffix(".*") {
                Some(prefix) => have.starts_with(prefix),
                None => have == want,
            },
            _ => have == want,
        };
        if !hit {
            return false;
        }
    }
    true
}

mod state;
#[allow(unused_imports)]
pub use state::*;
mod routes;
#[allow(unused_imports)]
pub use routes::*;
mod inserts;
#[allow(unused_imports)]
pub use inserts::*;
mod guest;
#[allow(unused_imports)]
pub use guest::*;

/// What a request needs read from fake-gcs-server before it is handled.
struct RawDisk {
    sha256: String,
    len: u64,
    problem: Option<String>,
}

impl GceServer {
    /// Listen on a random port of 127.0.0.1.
    pub fn start(opts: GceOptions) -> Result<GceServer, GceError> {
        let io = |what: &str| {
            let what = what.to_string();
            move |source| GceError::Io { what, source }
        };
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("bind"))?;
        std_listener
            .set_nonblocking(true)
            .map_err(io("set_nonblocking"))?;
        let addr = std_listener.local_addr().map_err(io("local_addr"))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(io("runtime"))?;
        let mut st = State {
            opts: Some(opts.clone()),
            ..State::default()
        };
        for s in &opts.seed_images {
            let id = st.id();
            st.images.insert(
                (s.project.clone(), "global".into(), s.name.clone()),
                Image {
                    json: json!({
                        "kind": "compute#image", "id": id, "name": s.name,
                        "status": "READY", "diskSizeGb": "5",
                        "selfLink": link(&format!("projects/{}/global/images/{}", s.project, s.name)),
                    }),
                    policy: json!({"version": 1, "etag": "BwY=", "bindings": []}),
                    ..Image::default()
                },
            );
        }
        let state = Arc::new(Mutex::new(st));
        let (stop_tx, stop_rx) = oneshot::channel();
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
                    return;
                };
                let accept = async {
                    loop {
                        let Ok((sock, _)) = listener.accept().await else {
                            continue;
                        };
                        let st = st.clone();
                        tokio::spawn(async move {
                            let svc = hyper::service::service_fn(move |req| {
                                let st = st.clone();
                                async move { Ok::<_, Infallible>(handle(st, req).await) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                                .await;
                        });
                    }
                };
                tokio::select! {
                    _ = stop_rx => {}
                    _ = accept => {}
                }
            });
            rt.shutdown_background();
        });
        Ok(GceServer {
            addr,
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT` (the endpoint override).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut g = match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }

    /// Answer the next `times` calls of `method` (`instances.insert`,
    /// `*` for any; `None`: every call) with `what`.
    pub fn inject(&self, method: &str, what: Injected, times: Option<usize>) {
        self.with(|s| s.injected.push((method.to_string(), what, times)));
    }

    /// Every instance (API JSON).
    pub fn instances(&self) -> Vec<Value> {
        self.with(|s| s.instances.values().cloned().collect())
    }

    /// Every disk.
    pub fn disks(&self) -> Vec<Value> {
        self.with(|s| s.disks.values().cloned().collect())
    }

    /// Every image but the seeded ones' projects are included too.
    pub fn images(&self) -> Vec<Value> {
        self.with(|s| s.images.values().map(|i| i.json.clone()).collect())
    }

    /// One image's IAM policy.
    pub fn image_policy(&self, project: &str, name: &str) -> Option<Value> {
        self.with(|s| {
            s.images
                .get(&(project.into(), "global".into(), name.into()))
                .map(|i| i.policy.clone())
        })
    }

    /// SHA-256 (hex) and length of the `rawDisk.source` tar.gz an image was
    /// imported from, as read from fake-gcs-server.
    pub fn image_raw_source(&self, project: &str, name: &str) -> Option<(String, u64)> {
        self.with(|s| {
            s.images
                .get(&(project.into(), "global".into(), name.into()))
                .and_then(|i| Some((i.raw_sha256.clone()?, i.raw_len?)))
        })
    }

    /// Every firewall rule.
    pub fn firewalls(&self) -> Vec<Value> {
        self.with(|s| s.firewalls.values().cloned().collect())
    }

    /// Operations not yet `DONE`.
    pub fn pending_operations(&self) -> Vec<Value> {
        self.with(|s| {
            s.ops
                .values()
                .filter(|o| o.json["status"] != "DONE")
                .map(|o| o.json.clone())
                .collect()
        })
    }

    /// Finish every operation (what time would do on GCE), applying effects.
    pub fn settle(&self) {
        self.with(State::settle);
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<GceCall> {
        self.with(|s| s.calls.clone())
    }

    /// How many calls of `method`.
    pub fn count(&self, method: &str) -> usize {
        self.with(|s| s.calls.iter().filter(|c| c.method == method).count())
    }

    /// Bearer tokens seen.
    pub fn tokens(&self) -> Vec<String> {
        self.with(|s| s.tokens.clone())
    }

    /// Instance, disk, image and firewall names that carry the label
    /// `opsbake-build-id=<build_id>` (firewalls: whose name holds it).
    pub fn left_of_build(&self, build_id: &str) -> Vec<String> {
        let f = format!("labels.opsbake-build-id = \"{build_id}\"");
        self.with(|s| {
            let mut v = Vec::new();
            for (k, i) in &s.instances {
                if matches_filter(i, &f) {
                    v.push(format!("instance {}", k.2));
                }
            }
            for (k, d) in &s.disks {
                if matches_filter(d, &f) {
                    v.push(format!("disk {}", k.2));
                }
            }
            for (k, i) in &s.images {
                if matches_filter(&i.json, &f) {
                    v.push(format!("image {}", k.2));
                }
            }
            for k in s.firewalls.keys() {
                if k.2.contains(build_id) {
                    v.push(format!("firewall {}", k.2));
                }
            }
            v
        })
    }

    /// Host keys instances print on their serial console from now on.
    pub fn set_serial_host_keys(&self, keys: Vec<String>) {
        self.with(|s| {
            if let Some(o) = s.opts.as_mut() {
                o.serial_host_keys = keys;
            }
        });
    }

    /// Set an instance's status by hand (a VM that stopped by itself...).
    pub fn set_instance_status(&self, project: &str, zone: &str, name: &str, status: &str) {
        self.with(|s| {
            if let Some(i) = s
                .instances
                .get_mut(&(project.into(), zone.into(), name.into()))
            {
                i["status"] = json!(status);
            }
        });
    }

    /// Stop the server.
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for GceServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn handle(
    st: Arc<Mutex<State>>,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let q = query(req.uri().query());
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    };
    let segs: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let name = route_name(&method, &segs);
    // rawDisk imports read the object before the state is locked.
    let raw = if name == "images.insert" {
        match body["rawDisk"]["source"].as_str() {
            Some(src) => {
                let gcs = lock(&st).opts().gcs_endpoint;
                Some(read_raw_disk(gcs.as_deref(), src).await)
            }
            None => None,
        }
    } else {
        None
    };
    let (status, v) = {
        let mut s = lock(&st);
        let a = if s.opts().require_bearer
            && !auth.as_deref().is_some_and(|a| a.starts_with("Bearer "))
        {
            gerr(
                401,
                "required",
                "Request is missing required authentication credential.",
            )
        } else {
            if let Some(a) = &auth {
                if let Some(t) = a.strip_prefix("Bearer ") {
                    if !s.tokens.iter().any(|x| x == t) {
                        s.tokens.push(t.to_string());
                    }
                }
            }
            match s.take_injected(&name) {
                Some(Injected::Http {
                    status,
                    reason,
                    message,
                }) => gerr(status, &reason, message),
                Some(Injected::Operation { code, message }) => route(
                    &mut s,
                    &method,
                    &segs,
                    &q,
                    &body,
                    raw,
                    Some((code, message)),
                ),
                None => route(&mut s, &method, &segs, &q, &body, raw, None),
            }
        };
        s.calls.push(GceCall {
            method: name,
            path: path.clone(),
            status: a.0.as_u16(),
        });
        a
    };
    let bytes = serde_json::to_vec(&v).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn filters_and_routes() {
        let v = json!({"name": "opsbake-b1-ssh", "labels": {"opsbake-build-id": "b1"}});
        assert!(matches_filter(&v, "labels.opsbake-build-id = \"b1\""));
        assert!(!matches_filter(&v, "labels.opsbake-build-id = \"b2\""));
        assert!(matches_filter(&v, "name eq opsbake-b1.*"));
        assert!(!matches_filter(&v, "name eq opsbake-b2.*"));
        let segs: Vec<String> = "compute/v1/projects/p/zones/z/instances/i/stop"
            .split('/')
            .map(str::to_string)
            .collect();
        assert_eq!(route_name("POST", &segs), "instances.stop");
        let segs: Vec<String> = "compute/v1/projects/p/global/operations/o"
            .split('/')
            .map(str::to_string)
            .collect();
        assert_eq!(route_name("GET", &segs), "globalOperations.get");
    }

    #[test]
    fn disk_tar_must_hold_only_disk_raw() {
        let mk = |names: &[&str]| {
            let mut b = tar::Builder::new(Vec::new());
            for n in names {
                let mut h = tar::Header::new_gnu();
                h.set_size(3);
                h.set_mode(0o644);
                h.set_cksum();
                b.append_data(&mut h, n, &b"abc"[..]).unwrap();
            }
            let raw = b.into_inner().unwrap();
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut gz, &raw).unwrap();
            gz.finish().unwrap()
        };
        assert!(check_disk_tar(&mk(&["disk.raw"])).is_ok());
        assert!(check_disk_tar(&mk(&["root.img"])).is_err());
        assert!(check_disk_tar(&mk(&["disk.raw", "x"])).is_err());
        assert!(check_disk_tar(b"plain").is_err());
    }
}
