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

impl State {
    fn opts(&self) -> GceOptions {
        self.opts.clone().unwrap_or_default()
    }

    fn id(&mut self) -> String {
        self.next_id += 1;
        format!("{}", 4_000_000_000_000_000_000u64 + self.next_id)
    }

    fn op(
        &mut self,
        project: &str,
        scope: &str,
        op_type: &str,
        target: &str,
        effect: Option<Effect>,
        error: Option<(String, String)>,
    ) -> Value {
        let id = self.id();
        let name = format!("operation-{id}-{op_type}");
        let mut j = json!({
            "kind": "compute#operation",
            "id": id,
            "name": name,
            "operationType": op_type,
            "targetLink": link(target),
            "status": "PENDING",
            "progress": 0,
            "insertTime": "2026-01-01T00:00:00.000-00:00",
        });
        if scope == "global" {
            j["selfLink"] = json!(link(&format!(
                "projects/{project}/global/operations/{name}"
            )));
        } else {
            j["zone"] = json!(link(&format!("projects/{project}/zones/{scope}")));
            j["selfLink"] = json!(link(&format!(
                "projects/{project}/zones/{scope}/operations/{name}"
            )));
        }
        self.ops.insert(
            (project.into(), scope.into(), name),
            Op {
                json: j.clone(),
                polls: 0,
                effect,
                error,
            },
        );
        j
    }

    fn apply(&mut self, e: Effect) {
        match e {
            Effect::InstanceRunning { key } => {
                if let Some(i) = self.instances.get_mut(&key) {
                    i["status"] = json!("RUNNING");
                }
            }
            Effect::InstanceStopped { key } => {
                if let Some(i) = self.instances.get_mut(&key) {
                    i["status"] = json!("TERMINATED");
                }
            }
            Effect::InstanceDeleted { key } => {
                if let Some(i) = self.instances.remove(&key) {
                    let disks = i["disks"].as_array().cloned().unwrap_or_default();
                    for d in disks {
                        let name = last_seg(d["source"].as_str().unwrap_or("")).to_string();
                        let dk = (key.0.clone(), key.1.clone(), name);
                        if d["autoDelete"].as_bool().unwrap_or(false) {
                            self.disks.remove(&dk);
                        } else if let Some(disk) = self.disks.get_mut(&dk) {
                            disk["users"] = json!([]);
                        }
                    }
                }
            }
            Effect::DiskDeleted { key } => {
                self.disks.remove(&key);
            }
            Effect::ImageReady { key } => {
                if let Some(i) = self.images.get_mut(&key) {
                    i.json["status"] = json!("READY");
                }
            }
            Effect::ImageDeleted { key } => {
                self.images.remove(&key);
            }
            Effect::FirewallDeleted { key } => {
                self.firewalls.remove(&key);
            }
            Effect::Undo(inner) => match *inner {
                Effect::InstanceRunning { key } => {
                    self.instances.remove(&key);
                    self.disks.remove(&key);
                }
                Effect::ImageReady { key } => {
                    self.images.remove(&key);
                }
                _ => {}
            },
        }
    }

    fn advance(&mut self, key: &Key) -> Option<Value> {
        let done_after = self.opts().polls_to_done.max(1);
        let op = self.ops.get_mut(key)?;
        if op.json["status"] != "DONE" {
            op.polls += 1;
            if op.polls >= done_after {
                op.json["status"] = json!("DONE");
                op.json["progress"] = json!(100);
                op.json["endTime"] = json!("2026-01-01T00:00:01.000-00:00");
                if let Some((code, message)) = op.error.clone() {
                    op.json["error"] = json!({"errors": [{"code": code, "message": message}]});
                    op.json["httpErrorStatusCode"] =
                        json!(if code == "QUOTA_EXCEEDED" { 403 } else { 400 });
                    op.json["httpErrorMessage"] = json!(if code == "QUOTA_EXCEEDED" {
                        "FORBIDDEN"
                    } else {
                        "BAD REQUEST"
                    });
                    let e = op.effect.take();
                    if let Some(e) = e {
                        self.apply(Effect::Undo(Box::new(e)));
                    }
                } else if let Some(e) = op.effect.take() {
                    self.apply(e);
                }
            } else {
                op.json["status"] = json!("RUNNING");
                op.json["progress"] = json!(op.polls * 100 / done_after);
            }
        }
        self.ops.get(key).map(|o| o.json.clone())
    }

    /// Finish every operation (as time passing would).
    fn settle(&mut self) {
        let keys: Vec<Key> = self.ops.keys().cloned().collect();
        for k in keys {
            for _ in 0..self.opts().polls_to_done.max(1) {
                self.advance(&k);
            }
        }
    }

    fn take_injected(&mut self, method: &str) -> Option<Injected> {
        let i = self
            .injected
            .iter()
            .position(|(m, _, left)| (m == method || m == "*") && left.is_none_or(|n| n > 0))?;
        let (_, inj, left) = &mut self.injected[i];
        let inj = inj.clone();
        if let Some(n) = left {
            *n -= 1;
            if *n == 0 {
                self.injected.remove(i);
            }
        }
        Some(inj)
    }
}

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

fn lock(st: &Arc<Mutex<State>>) -> std::sync::MutexGuard<'_, State> {
    match st.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// `instances.insert`, `zoneOperations.get`... from the route.
fn route_name(method: &str, segs: &[String]) -> String {
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let tail = match s.as_slice() {
        ["compute", "v1", "projects", _, rest @ ..] => rest,
        _ => return format!("{method} /{}", s.join("/")),
    };
    let (coll, rest): (&str, &[&str]) = match tail {
        ["zones", _, "operations", rest @ ..] => ("zoneOperations", rest),
        ["global", "operations", rest @ ..] => ("globalOperations", rest),
        ["zones", _, c, rest @ ..] => (c, rest),
        ["global", c, rest @ ..] => (c, rest),
        _ => return format!("{method} /{}", s.join("/")),
    };
    let verb = match (method, rest) {
        ("POST", []) => "insert".to_string(),
        ("GET", []) => "list".to_string(),
        ("GET", [_]) => "get".to_string(),
        ("DELETE", [_]) => "delete".to_string(),
        ("GET", [_, "serialPort"]) => "getSerialPortOutput".to_string(),
        (_, [_, v]) => (*v).to_string(),
        _ => method.to_lowercase(),
    };
    format!("{coll}.{verb}")
}

#[allow(clippy::too_many_arguments)]
fn route(
    s: &mut State,
    method: &str,
    segs: &[String],
    q: &HashMap<String, String>,
    body: &Value,
    raw: Option<RawDisk>,
    op_error: Option<(String, String)>,
) -> Answer {
    let p: Vec<&str> = segs.iter().map(String::as_str).collect();
    let opts = s.opts();
    let ["compute", "v1", "projects", project, tail @ ..] = p.as_slice() else {
        return gerr(
            404,
            "notFound",
            format!("no route {method} /{}", p.join("/")),
        );
    };
    let project = project.to_string();
    let known_project =
        opts.projects.contains(&project) || opts.seed_images.iter().any(|i| i.project == project);
    if !known_project {
        return not_found(&format!("projects/{project}"));
    }
    if let ["zones", zone, ..] = tail {
        if !opts.zones.iter().any(|z| z == zone) {
            return not_found(&format!("projects/{project}/zones/{zone}"));
        }
    }
    match (method, tail) {
        // Operations.
        ("GET", ["zones", zone, "operations", name]) => {
            let key = (project.clone(), zone.to_string(), name.to_string());
            match s.advance(&key) {
                Some(v) => ok(v),
                None => not_found(&format!(
                    "projects/{project}/zones/{zone}/operations/{name}"
                )),
            }
        }
        ("GET", ["global", "operations", name]) => {
            let key = (project.clone(), "global".into(), name.to_string());
            match s.advance(&key) {
                Some(v) => ok(v),
                None => not_found(&format!("projects/{project}/global/operations/{name}")),
            }
        }
        // Machine types.
        ("GET", ["zones", zone, "machineTypes", mt]) => {
            if opts.machine_types.iter().any(|m| m == mt) {
                let id = s.id();
                ok(json!({
                    "kind": "compute#machineType", "id": id, "name": mt,
                    "guestCpus": 2, "memoryMb": 4096, "zone": zone,
                    "selfLink": link(&format!("projects/{project}/zones/{zone}/machineTypes/{mt}")),
                }))
            } else {
                not_found(&format!(
                    "projects/{project}/zones/{zone}/machineTypes/{mt}"
                ))
            }
        }
        // Instances.
        ("POST", ["zones", zone, "instances"]) => {
            instance_insert(s, &project, zone, q, body, op_error)
        }
        ("GET", ["zones", zone, "instances"]) => {
            let items: Vec<Value> = s
                .instances
                .iter()
                .filter(|(k, v)| {
                    k.0 == project
                        && k.1 == *zone
                        && q.get("filter").is_none_or(|f| matches_filter(v, f))
                })
                .map(|(_, v)| v.clone())
                .collect();
            ok(json!({"kind": "compute#instanceList", "items": items}))
        }
        ("GET", ["zones", zone, "instances", name]) => {
            let key = (project.clone(), zone.to_string(), name.to_string());
            match s.instances.get(&key) {
                Some(v) => ok(v.clone()),
                None => not_found(&format!("projects/{project}/zones/{zone}/instances/{name}")),
            }
        }
        ("GET", ["zones", zone, "instances", name, "serialPort"]) => {
            let key = (project.clone(), zone.to_string(), name.to_string());
            if !s.instances.contains_key(&key) {
                return not_found(&format!("projects/{project}/zones/{zone}/instances/{name}"));
            }
            let mut text = String::from("[    0.000000] Linux version 5.15.0 (buildd@bosh)\r\n");
            if !opts.serial_host_keys.is_empty() {
                text.push_str("-----BEGIN SSH HOST KEY KEYS-----\r\n");
                for k in &opts.serial_host_keys {
                    text.push_str(k);
                    text.push_str(" root@localhost\r\n");
                }
                text.push_str("-----END SSH HOST KEY KEYS-----\r\n");
            }
            ok(json!({
                "kind": "compute#serialPortOutput", "contents": text,
                "start": "0", "next": text.len().to_string(),
                "selfLink": link(&format!("projects/{project}/zones/{zone}/instances/{name}/serialPort")),
            }))
        }
        ("POST", ["zones", zone, "instances", name, verb @ ("stop" | "start" | "setMetadata")]) => {
            let key = (project.clone(), zone.to_string(), name.to_string());
            let target = format!("projects/{project}/zones/{zone}/instances/{name}");
            let Some(inst) = s.instances.get_mut(&key) else {
                return not_found(&target);
            };
            let effect = match *verb {
                "stop" => {
                    inst["status"] = json!("STOPPING");
                    Effect::InstanceStopped { key }
                }
                "start" => {
                    inst["status"] = json!("STAGING");
                    Effect::InstanceRunning { key }
                }
                _ => {
                    let have = inst["metadata"]["fingerprint"].as_str().unwrap_or("");
                    if body["fingerprint"].as_str() != Some(have) {
                        return gerr(
                            412,
                            "conditionNotMet",
                            format!("Supplied fingerprint does not match current metadata fingerprint of {target}."),
                        );
                    }
                    let mut md = body.clone();
                    md["kind"] = json!("compute#metadata");
                    md["fingerprint"] = json!(fingerprint(&md["items"]));
                    inst["metadata"] = md;
                    Effect::InstanceRunning { key }
                }
            };
            // Metadata lands at once; the status stays what it was.
            let effect = (*verb != "setMetadata").then_some(effect);
            ok(s.op(&project, zone, verb, &target, effect, op_error))
        }
        ("DELETE", ["zones", zone, "instances", name]) => {
            let key = (project.clone(), zone.to_string(), name.to_string());
            let target = format!("projects/{project}/zones/{zone}/instances/{name}");
            let Some(inst) = s.instances.get_mut(&key) else {
                return not_found(&target);
            };
            inst["status"] = json!("STOPPING");
            ok(s.op(
                &project,
                zone,
                "delete",
                &target,
                Some(Effect::InstanceDeleted { key }),
                op_error,
            ))
        }
        // Disks.
        ("GET", ["zones", zone, "disks"]) => {
            let items: Vec<Value> = s
                .disks
                .iter()
                .filter(|(k, v)| {
                    k.0 == project
                        && k.1 == *zone
                        && q.get("filter").is_none_or(|f| matches_filter(v, f))
                })
                .map(|(_, v)| v.clone())
                .collect();
            ok(json!({"kind": "compute#diskList", "items": items}))
        }
        ("GET", ["zones", zone, "disks", name]) => {
            let key = (project.clone(), zone.to_string(), name.to_string());
            match s.disks.get(&key) {
                Some(v) => ok(v.clone()),
                None => not_found(&format!("projects/{project}/zones/{zone}/disks/{name}")),
            }
        }
        ("DELETE", ["zones", zone, "disks", name]) => {
            let key = (project.clone(), zone.to_string(), name.to_string());
            let target = format!("projects/{project}/zones/{zone}/disks/{name}");
            let Some(d) = s.disks.get(&key) else {
                return not_found(&target);
            };
            if let Some(u) = d["users"].as_array().and_then(|u| u.first()) {
                return gerr(
                    400,
                    "resourceInUseByAnotherResource",
                    format!(
                        "The disk resource '{target}' is already being used by '{}'",
                        u.as_str().unwrap_or("")
                    ),
                );
            }
            ok(s.op(
                &project,
                zone,
                "delete",
                &target,
                Some(Effect::DiskDeleted { key }),
                op_error,
            ))
        }
        // Images.
        ("POST", ["global", "images"]) => image_insert(s, &project, q, body, raw, op_error),
        ("GET", ["global", "images"]) => {
            let items: Vec<Value> = s
                .images
                .iter()
                .filter(|(k, v)| {
                    k.0 == project && q.get("filter").is_none_or(|f| matches_filter(&v.json, f))
                })
                .map(|(_, v)| v.json.clone())
                .collect();
            ok(json!({"kind": "compute#imageList", "items": items}))
        }
        ("GET", ["global", "images", name]) => {
            match s
                .images
                .get(&(project.clone(), "global".into(), name.to_string()))
            {
                Some(i) => ok(i.json.clone()),
                None => not_found(&format!("projects/{project}/global/images/{name}")),
            }
        }
        ("DELETE", ["global", "images", name]) => {
            let key = (project.clone(), "global".to_string(), name.to_string());
            let target = format!("projects/{project}/global/images/{name}");
            if !s.images.contains_key(&key) {
                return not_found(&target);
            }
            ok(s.op(
                &project,
                "global",
                "delete",
                &target,
                Some(Effect::ImageDeleted { key }),
                op_error,
            ))
        }
        ("GET", ["global", "images", name, "getIamPolicy"]) => {
            match s
                .images
                .get(&(project.clone(), "global".into(), name.to_string()))
            {
                Some(i) => ok(i.policy.clone()),
                None => not_found(&format!("projects/{project}/global/images/{name}")),
            }
        }
        ("POST", ["global", "images", name, "setIamPolicy"]) => {
            let target = format!("projects/{project}/global/images/{name}");
            let Some(img) = s
                .images
                .get_mut(&(project.clone(), "global".into(), name.to_string()))
            else {
                return not_found(&target);
            };
            let mut pol = body["policy"].clone();
            if !pol.is_object() {
                return gerr(400, "required", "Required field 'policy' not specified");
            }
            let have = img.policy["etag"].as_str().unwrap_or("");
            if let Some(e) = pol["etag"].as_str() {
                if e != have {
                    return gerr(
                        412,
                        "conditionNotMet",
                        format!("The etag of the policy of {target} does not match"),
                    );
                }
            }
            for b in pol["bindings"].as_array().cloned().unwrap_or_default() {
                let role = b["role"].as_str().unwrap_or("");
                if !role.starts_with("roles/") {
                    return gerr(400, "invalid", format!("Role {role} is not a valid role"));
                }
                for m in b["members"].as_array().cloned().unwrap_or_default() {
                    let m = m.as_str().unwrap_or("");
                    let okm = ["user:", "serviceAccount:", "group:", "domain:"]
                        .iter()
                        .any(|p| m.starts_with(p))
                        || m == "allAuthenticatedUsers"
                        || m == "allUsers";
                    if !okm {
                        return gerr(
                            400,
                            "invalid",
                            format!("Invalid member {m}: expected user:, serviceAccount:, group: or domain:"),
                        );
                    }
                }
            }
            let n = s.next_id;
            // An etag is base64 bytes; 16 hex digits are valid base64.
            pol["etag"] = json!(format!("{:016x}", 0xe7a9_0000_0000_0000u64 + n));
            pol["version"] = json!(1);
            if let Some(img) =
                s.images
                    .get_mut(&(project.clone(), "global".into(), name.to_string()))
            {
                img.policy = pol.clone();
            }
            s.next_id += 1;
            ok(pol)
        }
        // Firewalls.
        ("POST", ["global", "firewalls"]) => {
            let Some(name) = body["name"].as_str().map(str::to_string) else {
                return gerr(
                    400,
                    "required",
                    "Required field 'resource.name' not specified",
                );
            };
            if let Some(a) = request_seen(s, &project, q) {
                return a;
            }
            let key = (project.clone(), "global".to_string(), name.clone());
            let target = format!("projects/{project}/global/firewalls/{name}");
            if s.firewalls.contains_key(&key) {
                return already_exists(&target);
            }
            if body["sourceRanges"].as_array().is_none_or(|r| r.is_empty())
                && body["sourceTags"].as_array().is_none_or(|r| r.is_empty())
            {
                return gerr(
                    400,
                    "invalid",
                    "Invalid value for field 'resource.sourceRanges': at least one source is required for an INGRESS rule",
                );
            }
            let id = s.id();
            let mut fw = body.clone();
            fw["kind"] = json!("compute#firewall");
            fw["id"] = json!(id);
            fw["selfLink"] = json!(link(&target));
            if fw["network"].is_null() {
                fw["network"] = json!(link(&format!("projects/{project}/global/networks/default")));
            }
            let created = op_error.is_none();
            if created {
                s.firewalls.insert(key, fw);
            }
            let op = s.op(&project, "global", "insert", &target, None, op_error);
            remember_request(s, &project, q, &op);
            ok(op)
        }
        ("GET", ["global", "firewalls"]) => {
            let items: Vec<Value> = s
                .firewalls
                .iter()
                .filter(|(k, v)| {
                    k.0 == project && q.get("filter").is_none_or(|f| matches_filter(v, f))
                })
                .map(|(_, v)| v.clone())
                .collect();
            ok(json!({"kind": "compute#firewallList", "items": items}))
        }
        ("GET", ["global", "firewalls", name]) => {
            match s
                .firewalls
                .get(&(project.clone(), "global".into(), name.to_string()))
            {
                Some(v) => ok(v.clone()),
                None => not_found(&format!("projects/{project}/global/firewalls/{name}")),
            }
        }
        ("DELETE", ["global", "firewalls", name]) => {
            let key = (project.clone(), "global".to_string(), name.to_string());
            let target = format!("projects/{project}/global/firewalls/{name}");
            if !s.firewalls.contains_key(&key) {
                return not_found(&target);
            }
            ok(s.op(
                &project,
                "global",
                "delete",
                &target,
                Some(Effect::FirewallDeleted { key }),
                op_error,
            ))
        }
        _ => gerr(
            404,
            "notFound",
            format!("no such method: {method} /{}", p.join("/")),
        ),
    }
}

fn fingerprint(v: &Value) -> String {
    let h = sha2::Sha256::digest(v.to_string().as_bytes());
    hex::encode(&h[..8])
}

/// An insert with a `requestId` seen before answers the same operation.
fn request_seen(s: &mut State, project: &str, q: &HashMap<String, String>) -> Option<Answer> {
    let rid = q.get("requestId")?;
    let uuid = rid.len() == 36
        && rid.bytes().enumerate().all(|(i, b)| {
            if [8, 13, 18, 23].contains(&i) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        });
    if !uuid {
        return Some(gerr(
            400,
            "invalid",
            format!("Invalid value for field 'requestId': '{rid}'. The request ID must be a valid UUID."),
        ));
    }
    let key = s
        .request_ids
        .get(&(project.to_string(), rid.clone()))?
        .clone();
    s.ops.get(&key).map(|o| ok(o.json.clone()))
}

fn remember_request(s: &mut State, project: &str, q: &HashMap<String, String>, op: &Value) {
    if let (Some(rid), Some(name)) = (q.get("requestId"), op["name"].as_str()) {
        let scope = op["zone"]
            .as_str()
            .map(|z| last_seg(z).to_string())
            .unwrap_or_else(|| "global".into());
        s.request_ids.insert(
            (project.to_string(), rid.clone()),
            (project.to_string(), scope, name.to_string()),
        );
    }
}

fn instance_insert(
    s: &mut State,
    project: &str,
    zone: &str,
    q: &HashMap<String, String>,
    body: &Value,
    op_error: Option<(String, String)>,
) -> Answer {
    let Some(name) = body["name"].as_str().map(str::to_string) else {
        return gerr(
            400,
            "required",
            "Required field 'resource.name' not specified",
        );
    };
    if let Some(a) = request_seen(s, project, q) {
        return a;
    }
    let target = format!("projects/{project}/zones/{zone}/instances/{name}");
    let key = (project.to_string(), zone.to_string(), name.clone());
    if s.instances.contains_key(&key) {
        return already_exists(&target);
    }
    let mt = last_seg(body["machineType"].as_str().unwrap_or("")).to_string();
    if !s.opts().machine_types.contains(&mt) {
        return gerr(
            400,
            "invalid",
            format!("Invalid value for field 'resource.machineType': '{}'. Machine type with name '{mt}' does not exist in zone '{zone}'.", body["machineType"].as_str().unwrap_or("")),
        );
    }
    let Some(boot) = body["disks"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["boot"].as_bool() == Some(true)))
    else {
        return gerr(
            400,
            "required",
            "Required field 'resource.disks' not specified",
        );
    };
    let src = boot["initializeParams"]["sourceImage"]
        .as_str()
        .unwrap_or("");
    let Some((ip, iname)) = image_ref(src) else {
        return gerr(
            400,
            "invalid",
            format!(
                "Invalid value for field 'resource.disks[0].initializeParams.sourceImage': '{src}'"
            ),
        );
    };
    match s.images.get(&(ip.clone(), "global".into(), iname.clone())) {
        None => return not_found(&format!("projects/{ip}/global/images/{iname}")),
        Some(i) if i.json["status"] != "READY" => {
            return gerr(
                400,
                "resourceNotReady",
                format!("The resource 'projects/{ip}/global/images/{iname}' is not ready"),
            )
        }
        _ => {}
    }
    let disk_name = boot["deviceName"].as_str().unwrap_or(&name).to_string();
    let size = boot["initializeParams"]["diskSizeGb"]
        .as_str()
        .map(str::to_string)
        .or_else(|| {
            boot["initializeParams"]["diskSizeGb"]
                .as_i64()
                .map(|n| n.to_string())
        })
        .unwrap_or_else(|| "10".into());
    let labels = body["labels"].clone();
    s.next_ip = s.next_ip.wrapping_add(1).max(2);
    let n = s.next_ip;
    let mut nics = body["networkInterfaces"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if nics.is_empty() {
        nics.push(json!({"network": link(&format!("projects/{project}/global/networks/default"))}));
    }
    for (i, nic) in nics.iter_mut().enumerate() {
        nic["networkIP"] = json!(format!("192.0.2.{n}"));
        nic["name"] = json!(format!("nic{i}"));
        if let Some(acs) = nic["accessConfigs"].as_array_mut() {
            for ac in acs {
                ac["natIP"] = json!(format!("203.0.113.{n}"));
                ac["kind"] = json!("compute#accessConfig");
            }
        }
    }
    let disk_link = link(&format!(
        "projects/{project}/zones/{zone}/disks/{disk_name}"
    ));
    let inst_link = link(&target);
    let mut md = body["metadata"].clone();
    if !md.is_object() {
        md = json!({"items": []});
    }
    md["kind"] = json!("compute#metadata");
    md["fingerprint"] = json!(fingerprint(&md["items"]));
    let id = s.id();
    let inst = json!({
        "kind": "compute#instance",
        "id": id,
        "name": name,
        "zone": link(&format!("projects/{project}/zones/{zone}")),
        "machineType": link(&format!("projects/{project}/zones/{zone}/machineTypes/{mt}")),
        "status": "PROVISIONING",
        "disks": [{
            "kind": "compute#attachedDisk", "boot": true, "index": 0,
            "deviceName": disk_name, "source": disk_link,
            "autoDelete": boot["autoDelete"].as_bool().unwrap_or(true),
            "mode": "READ_WRITE", "type": "PERSISTENT", "diskSizeGb": size,
        }],
        "networkInterfaces": nics,
        "metadata": md,
        "labels": labels,
        "tags": body["tags"].clone(),
        "selfLink": inst_link,
    });
    let dkey = (project.to_string(), zone.to_string(), disk_name.clone());
    let mut dlabels = boot["initializeParams"]["labels"].clone();
    if !dlabels.is_object() {
        dlabels = labels.clone();
    }
    let did = s.id();
    s.disks.insert(
        dkey,
        json!({
            "kind": "compute#disk", "id": did, "name": disk_name,
            "sizeGb": size, "status": "READY", "sourceImage": link(&format!("projects/{ip}/global/images/{iname}")),
            "labels": dlabels, "users": [inst_link], "selfLink": disk_link,
            "zone": link(&format!("projects/{project}/zones/{zone}")),
        }),
    );
    s.instances.insert(key.clone(), inst);
    let op = s.op(
        project,
        zone,
        "insert",
        &target,
        Some(Effect::InstanceRunning { key }),
        op_error,
    );
    remember_request(s, project, q, &op);
    ok(op)
}

fn image_insert(
    s: &mut State,
    project: &str,
    q: &HashMap<String, String>,
    body: &Value,
    raw: Option<RawDisk>,
    op_error: Option<(String, String)>,
) -> Answer {
    let Some(name) = body["name"].as_str().map(str::to_string) else {
        return gerr(
            400,
            "required",
            "Required field 'resource.name' not specified",
        );
    };
    if let Some(a) = request_seen(s, project, q) {
        return a;
    }
    let target = format!("projects/{project}/global/images/{name}");
    let key = (project.to_string(), "global".to_string(), name.clone());
    if s.images.contains_key(&key) {
        return already_exists(&target);
    }
    let mut op_error = op_error;
    let mut image = Image {
        policy: json!({"version": 1, "etag": "BwY=", "bindings": []}),
        ..Image::default()
    };
    let mut size = "10".to_string();
    if let Some(src) = body["sourceDisk"].as_str() {
        let parts: Vec<&str> = src.split('/').collect();
        let zi = parts.iter().position(|p| *p == "zones");
        let (Some(zi), Some(dname)) = (zi, parts.last()) else {
            return gerr(
                400,
                "invalid",
                format!("Invalid value for field 'resource.sourceDisk': '{src}'"),
            );
        };
        let zone = parts.get(zi + 1).copied().unwrap_or("");
        let dkey = (project.to_string(), zone.to_string(), dname.to_string());
        let Some(d) = s.disks.get(&dkey) else {
            return not_found(&format!("projects/{project}/zones/{zone}/disks/{dname}"));
        };
        size = d["sizeGb"].as_str().unwrap_or("10").to_string();
        // GCE refuses an image of a disk in use by a running instance
        // unless forceCreate is set.
        let running = d["users"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .any(|u| {
                s.instances
                    .values()
                    .any(|i| i["selfLink"] == u && i["status"] != "TERMINATED")
            });
        if running && q.get("forceCreate").map(String::as_str) != Some("true") {
            return gerr(
                400,
                "resourceInUseByAnotherResource",
                format!("The disk resource 'projects/{project}/zones/{zone}/disks/{dname}' is already being used by a running instance"),
            );
        }
    } else if let Some(r) = raw {
        if let Some(p) = r.problem {
            op_error = op_error.or(Some(("INVALID_IMAGE_FILE".into(), p)));
        }
        image.raw_sha256 = Some(r.sha256);
        image.raw_len = Some(r.len);
    } else {
        return gerr(
            400,
            "required",
            "Required field 'resource.sourceDisk' or 'resource.rawDisk.source' not specified",
        );
    }
    let id = s.id();
    let mut j = body.clone();
    j["kind"] = json!("compute#image");
    j["id"] = json!(id);
    j["status"] = json!("PENDING");
    j["diskSizeGb"] = json!(size);
    if let Some(l) = image.raw_len {
        j["archiveSizeBytes"] = json!(l.to_string());
    }
    j["selfLink"] = json!(link(&target));
    image.json = j;
    s.images.insert(key.clone(), image);
    let op = s.op(
        project,
        "global",
        "insert",
        &target,
        Some(Effect::ImageReady { key }),
        op_error,
    );
    remember_request(s, project, q, &op);
    ok(op)
}

/// Read a `rawDisk.source` object (`https://storage.googleapis.com/B/O`
/// or `gs://B/O`) from fake-gcs-server and check it is a gzip'd tar
/// holding exactly `disk.raw`.
async fn read_raw_disk(gcs: Option<&str>, src: &str) -> RawDisk {
    let fail = |p: String| RawDisk {
        sha256: String::new(),
        len: 0,
        problem: Some(p),
    };
    let rest = src
        .strip_prefix("https://storage.googleapis.com/")
        .or_else(|| src.strip_prefix("gs://"));
    let Some((bucket, object)) = rest.and_then(|r| r.split_once('/')) else {
        return fail(format!("rawDisk.source {src} is not a Cloud Storage URL"));
    };
    let Some(gcs) = gcs else {
        return fail("the test server has no fake-gcs-server endpoint".into());
    };
    let Some(hostport) = gcs.strip_prefix("http://").map(|h| h.trim_end_matches('/')) else {
        return fail(format!("gcs endpoint {gcs} is not http://"));
    };
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    let hostport = hostport.as_str();
    let enc: String = object
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let path = format!("/storage/v1/b/{bucket}/o/{enc}?alt=media");
    let bytes = match http_get(hostport, &path).await {
        Ok((200, b)) => b,
        Ok((st, b)) => {
            return fail(format!(
                "reading {src}: HTTP {st}: {}",
                String::from_utf8_lossy(&b[..b.len().min(200)])
            ))
        }
        Err(e) => return fail(format!("reading {src}: {e}")),
    };
    let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
    let len = bytes.len() as u64;
    let problem = check_disk_tar(&bytes).err();
    RawDisk {
        sha256,
        len,
        problem,
    }
}

/// A gzip'd tar holding exactly one regular file, `disk.raw`.
pub fn check_disk_tar(bytes: &[u8]) -> Result<(), String> {
    let gz = flate2::read::GzDecoder::new(bytes);
    let mut ar = tar::Archive::new(gz);
    let entries = ar.entries().map_err(|e| format!("not a tar.gz: {e}"))?;
    let mut names = Vec::new();
    for e in entries {
        let mut e = e.map_err(|e| format!("not a tar.gz: {e}"))?;
        let p = e
            .path()
            .map_err(|e| format!("bad tar entry: {e}"))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        if p.is_empty() {
            continue;
        }
        let mut sink = [0u8; 64 * 1024];
        loop {
            match e.read(&mut sink) {
                Ok(0) => break,
                Ok(_) => {}
                Err(err) => return Err(format!("reading {p} in the tar.gz: {err}")),
            }
        }
        names.push(p);
    }
    if names != ["disk.raw"] {
        return Err(format!(
            "The tar archive must hold exactly one file named disk.raw; it holds {names:?}"
        ));
    }
    Ok(())
}

async fn http_get(hostport: &str, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let addr: SocketAddr = hostport
        .parse()
        .map_err(|e| std::io::Error::other(format!("{hostport}: {e}")))?;
    if !addr.ip().is_loopback() {
        return Err(std::io::Error::other(format!(
            "{hostport} is not on 127.0.0.0/8"
        )));
    }
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.0\r\nHost: {hostport}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header end"))?;
    let head = String::from_utf8_lossy(&buf[..end]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, buf[end + 4..].to_vec()))
}

/// An `AuthorizedKeysCommand` that prints `env.bosh.authorized_keys` of the
/// `bosh_settings` metadata of every RUNNING instance of `project`/`zone`
/// at the test server: a login then proves the key travelled through the
/// agent settings, as on GCE.
pub fn bosh_settings_keys_command(
    server: &GceServer,
    project: &str,
    zone: &str,
) -> Result<crate::sshd::AuthorizedKeysCommand, crate::sshd::SshdError> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = crate::sshd::private_script_dir("gce-bosh-settings")?;
    let script = dir.join(format!("keys-{}-{project}-{zone}", server.addr().port()));
    let text = format!(
        r#"#!/usr/bin/python3
# Prints env.bosh.authorized_keys of the bosh_settings metadata of every RUNNING instance.
import json, urllib.request
URL = "{ep}/compute/v1/projects/{project}/zones/{zone}/instances"
REQ = urllib.request.Request(URL, headers={{"Authorization": "Bearer opsbake-test-sshd"}})
with urllib.request.urlopen(REQ, timeout=5) as r:
    items = json.load(r).get("items", [])
for i in items:
    if i.get("status") != "RUNNING":
        continue
    for it in i.get("metadata", {{}}).get("items", []):
        if it.get("key") == "bosh_settings":
            for k in json.loads(it["value"])["env"]["bosh"]["authorized_keys"]:
                print(k)
"#,
        ep = server.endpoint(),
    );
    let io = |source| crate::sshd::SshdError::Io {
        path: script.clone(),
        source,
    };
    std::fs::write(&script, text).map_err(io)?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).map_err(
        |source| crate::sshd::SshdError::Io {
            path: script.clone(),
            source,
        },
    )?;
    Ok(crate::sshd::AuthorizedKeysCommand {
        command: script,
        args: "%u".into(),
        user: "nobody".into(),
    })
}

/// A hardened test sshd that plays the test server's instances of
/// `project`/`zone`: no authorized_keys, only
/// [`bosh_settings_keys_command`]; the server's instances print its host
/// keys on their serial console.
pub fn instance_sshd(
    server: &GceServer,
    project: &str,
    zone: &str,
) -> Result<crate::sshd::Sshd, crate::sshd::SshdError> {
    let sshd = crate::sshd::Sshd::start(crate::sshd::SshdOptions {
        authorized_keys_command: Some(bosh_settings_keys_command(server, project, zone)?),
        ..crate::sshd::SshdOptions::default()
    })?;
    server.set_serial_host_keys(sshd.host_public_keys().to_vec());
    Ok(sshd)
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
