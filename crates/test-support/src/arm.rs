//! An Azure Resource Manager test server, written from the ARM REST
//! reference (no ARM emulator exists): real HTTP on 127.0.0.1, bearer-token
//! check, `api-version` required, and the resources an image build touches:
//! resource groups, virtual networks, network security groups, public IPs,
//! network interfaces, virtual machines (PUT with `osProfile.customData`,
//! GET with `$expand=instanceView`, powerOff, deallocate, generalize,
//! DELETE), managed disks, images (from a VHD blob in azurite: the server
//! reads the blob and checks its footer, or from a generalized VM),
//! compute galleries, image definitions and image versions with per-region
//! replication states.
//!
//! Like ARM: PUTs answer `201` with `Azure-AsyncOperation` (and the body in
//! `provisioningState: Creating`), DELETEs and actions answer `202` with
//! `Location` and `Azure-AsyncOperation`; each operation takes
//! [`ArmOptions::polls`] polls before it succeeds (or fails with the error
//! planted by [`ArmServer::fail_next`]). Error bodies are ARM's
//! (`{"error":{"code":"ResourceGroupNotFound","message":...}}`), deletes of
//! resources in use are refused as ARM refuses them (`NicInUse`, a disk
//! attached to a VM, an NSG or public IP in use), and [`ArmServer::throttle`]
//! answers `429` with `Retry-After`.
//!
//! Addresses are invented from TEST-NET ranges (private 192.0.2.x, public
//! 203.0.113.x) and are never contacted. Its VMs do not run: a test's sshd
//! plays the VM, taking its keys from the customData that
//! [`ArmServer::custom_data`] (and `GET /_test/customdata`, for an
//! `AuthorizedKeysCommand`) hand out. URLs in answers are built from the
//! server's own address, never from `Host`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

/// Subscription the server answers for.
pub const SUBSCRIPTION: &str = "00000000-0000-4000-8000-000000000001";
/// The bearer token it accepts.
pub const TOKEN: &str = "opsbake-test-arm-token";

/// How the server behaves.
#[derive(Debug, Clone)]
pub struct ArmOptions {
    /// Polls each long-running operation takes (>= 1).
    pub polls: u32,
    /// `Retry-After` seconds on operation polls (0: none sent).
    pub poll_retry_after: u32,
    /// Locations that exist.
    pub locations: Vec<String>,
    /// VM sizes offered in every location.
    pub vm_sizes: Vec<String>,
    /// Marketplace images (publisher, offer, sku) that exist.
    pub marketplace: Vec<(String, String, String)>,
    /// Polls a gallery image version's replication takes (default: `polls`).
    pub replication_polls: Option<u32>,
}

impl Default for ArmOptions {
    fn default() -> Self {
        ArmOptions {
            polls: 3,
            poll_retry_after: 0,
            locations: vec!["westeurope".into(), "northeurope".into(), "eastus".into()],
            vm_sizes: vec![
                "Standard_B1s".into(),
                "Standard_D2s_v3".into(),
                "Standard_D4s_v3".into(),
            ],
            marketplace: vec![(
                "pivotal".into(),
                "bosh-debian-bookworm".into(),
                "debian-bookworm".into(),
            )],
            replication_polls: None,
        }
    }
}

/// One resource the server holds.
#[derive(Debug, Clone)]
pub struct ArmResource {
    /// Its id, as created.
    pub id: String,
    /// `Microsoft.Compute/virtualMachines`, `Microsoft.Resources/resourceGroups`...
    pub kind: String,
    /// The full JSON (name, location, tags, properties).
    pub body: Value,
}

type Done = Box<dyn FnOnce(&mut State) + Send>;
type Tick = Box<dyn FnMut(&mut State, u32) + Send>;

struct Op {
    left: u32,
    polls: u32,
    failure: Option<(String, String)>,
    done: Option<Done>,
    finished: bool,
    tick: Option<Tick>,
}

#[derive(Default)]
struct State {
    res: BTreeMap<String, ArmResource>,
    ops: BTreeMap<String, Op>,
    next_op: u64,
    next_ip: u32,
    throttle: u32,
    fail_next: Vec<(String, String, String)>,
    log: Vec<String>,
    custom: BTreeMap<String, String>,
    blobs_read: Vec<BlobRead>,
    serial_log: Option<String>,
}

/// A VHD blob the server read to make an image.
#[derive(Debug, Clone)]
pub struct BlobRead {
    /// Its URI.
    pub uri: String,
    /// Its length.
    pub len: u64,
    /// SHA-256 of the whole blob (hex).
    pub sha256: String,
}

/// A running ARM test server.
pub struct ArmServer {
    base: String,
    state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Errors starting it.
#[derive(Debug, thiserror::Error)]
#[error("arm test server: {0}")]
pub struct ArmError(String);

fn lock(s: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    match s.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl ArmServer {
    /// Start on a random port of 127.0.0.1 (ready when this returns: the
    /// socket is bound before the thread starts serving).
    pub fn start(opts: ArmOptions) -> Result<ArmServer, ArmError> {
        let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| ArmError(e.to_string()))?;
        l.set_nonblocking(true)
            .map_err(|e| ArmError(e.to_string()))?;
        let addr = l.local_addr().map_err(|e| ArmError(e.to_string()))?;
        let base = format!("http://{addr}");
        let state = Arc::new(Mutex::new(State::default()));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let b = base.clone();
        let opts = Arc::new(opts);
        let thread = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(l) = tokio::net::TcpListener::from_std(l) else {
                    return;
                };
                let serve = async {
                    loop {
                        let Ok((s, _)) = l.accept().await else {
                            continue;
                        };
                        let (st, b, o) = (st.clone(), b.clone(), opts.clone());
                        tokio::spawn(async move {
                            let svc = hyper::service::service_fn(move |req| {
                                let (st, b, o) = (st.clone(), b.clone(), o.clone());
                                async move { Ok::<_, Infallible>(handle(req, st, b, o).await) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                                .await;
                        });
                    }
                };
                tokio::select! {
                    _ = serve => {}
                    _ = stop_rx => {}
                }
            });
        });
        Ok(ArmServer {
            base,
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT` (the `endpoint` option of a template).
    pub fn endpoint(&self) -> &str {
        &self.base
    }

    /// The next `n` requests answer 429 with `Retry-After: 1`.
    pub fn throttle(&self, n: u32) {
        lock(&self.state).throttle = n;
    }

    /// The next PUT (or action) whose path contains `path_part` starts an
    /// operation that ends `Failed` with this error code and message.
    pub fn fail_next(&self, path_part: &str, code: &str, message: &str) {
        lock(&self.state)
            .fail_next
            .push((path_part.to_lowercase(), code.into(), message.into()));
    }

    /// The serial console log every VM shows through boot diagnostics
    /// (`retrieveBootDiagnosticsData` answers a URL of it on this server,
    /// readable without a token, as a SAS URL is). `None`: no log (404).
    pub fn set_serial_log(&self, text: Option<String>) {
        lock(&self.state).serial_log = text;
    }

    /// Every resource held now.
    pub fn resources(&self) -> Vec<ArmResource> {
        lock(&self.state).res.values().cloned().collect()
    }

    /// Resources of one kind (`Microsoft.Compute/images`).
    pub fn of_kind(&self, kind: &str) -> Vec<ArmResource> {
        self.resources()
            .into_iter()
            .filter(|r| r.kind.eq_ignore_ascii_case(kind))
            .collect()
    }

    /// Add a resource group directly (test set-up).
    pub fn seed_resource_group(&self, name: &str, location: &str) {
        let id = format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/{name}");
        lock(&self.state).res.insert(
            id.to_lowercase(),
            ArmResource {
                id: id.clone(),
                kind: RG.into(),
                body: json!({"id": id, "name": name, "location": location, "tags": {},
                    "properties": {"provisioningState": "Succeeded"}}),
            },
        );
    }

    /// The decoded customData of each VM (by VM id).
    pub fn custom_data(&self) -> BTreeMap<String, String> {
        lock(&self.state).custom.clone()
    }

    /// Requests seen (`METHOD /path?query`), in order.
    pub fn log(&self) -> Vec<String> {
        lock(&self.state).log.clone()
    }

    /// The VHD blobs the server read (whole, hashed) to make images.
    pub fn blobs_read(&self) -> Vec<BlobRead> {
        lock(&self.state).blobs_read.clone()
    }
}

impl Drop for ArmServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const RG: &str = "Microsoft.Resources/resourceGroups";

type Resp = Response<Full<Bytes>>;

fn reply(status: u16, body: Value, headers: &[(&str, String)]) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    if let Ok(v) = "application/json; charset=utf-8".parse() {
        h.insert("content-type", v);
    }
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(k.as_bytes()),
            v.parse(),
        ) {
            h.insert(k, v);
        }
    }
    r
}

fn err(status: u16, code: &str, message: &str) -> Resp {
    reply(
        status,
        json!({"error": {"code": code, "message": message}}),
        &[],
    )
}

fn query_param(q: &str, key: &str) -> Option<String> {
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        if k.replace("%24", "$").eq_ignore_ascii_case(key) {
            Some(
                v.replace("%20", " ")
                    .replace("%27", "'")
                    .replace("%24", "$")
                    .replace('+', " "),
            )
        } else {
            None
        }
    })
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    st: Arc<Mutex<State>>,
    base: String,
    opts: Arc<ArmOptions>,
) -> Resp {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    {
        let mut s = lock(&st);
        s.log.push(format!("{method} {path}?{query}"));
        if s.throttle > 0 {
            s.throttle -= 1;
            let mut r = err(429, "TooManyRequests", "The request is being throttled.");
            if let Ok(v) = "1".parse() {
                r.headers_mut().insert("retry-after", v);
            }
            return r;
        }
    }
    if path.starts_with("/_test/serial/") {
        // A "SAS URL": no bearer token, the signature in the query.
        if !query.contains("sig=") {
            return err(403, "AuthenticationFailed", "no signature");
        }
        return match lock(&st).serial_log.clone() {
            Some(t) => {
                let mut r = Response::new(Full::new(Bytes::from(t)));
                if let Ok(v) = "text/plain".parse() {
                    r.headers_mut().insert("content-type", v);
                }
                r
            }
            None => err(404, "BlobNotFound", "The specified blob does not exist."),
        };
    }
    if auth != format!("Bearer {TOKEN}") {
        return err(
            401,
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing or invalid.",
        );
    }
    if path == "/_test/customdata" {
        let s = lock(&st);
        let vms: Vec<Value> = s
            .custom
            .iter()
            .filter_map(|(id, data)| {
                let vm = s.res.get(&id.to_lowercase())?;
                Some(json!({"id": id, "customData": data,
                    "powerState": vm.body.pointer("/properties/instanceView/statuses/1/code")}))
            })
            .collect();
        return reply(200, json!({ "value": vms }), &[]);
    }
    let Some(api) = query_param(&query, "api-version") else {
        return err(
            400,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        );
    };
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    if segs.len() < 2 || !segs[0].eq_ignore_ascii_case("subscriptions") {
        return err(404, "InvalidResourceType", &format!("no route {path}"));
    }
    if segs[1] != SUBSCRIPTION {
        return err(
            404,
            "SubscriptionNotFound",
            &format!("The subscription '{}' could not be found.", segs[1]),
        );
    }
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return err(400, "InvalidRequestContent", &format!("bad JSON: {e}")),
        }
    };
    let lower: Vec<String> = segs.iter().map(|s| s.to_lowercase()).collect();
    let ctx = Ctx {
        st: st.clone(),
        base,
        opts,
        api,
    };
    // /subscriptions/{s}/providers/{ns}/locations/{loc}/...
    if lower.len() >= 4 && lower[2] == "providers" {
        if lower.len() == 7 && lower[6] == "vmsizes" && method == Method::GET {
            let loc = &lower[5];
            if !ctx.opts.locations.iter().any(|l| l == loc) {
                return err(
                    404,
                    "NoRegisteredProviderFound",
                    &format!("No registered resource provider found for location '{loc}'."),
                );
            }
            let v: Vec<Value> = ctx
                .opts
                .vm_sizes
                .iter()
                .map(|n| json!({"name": n, "numberOfCores": 2, "memoryInMB": 8192}))
                .collect();
            return reply(200, json!({ "value": v }), &[]);
        }
        if lower.len() == 8 && (lower[6] == "operations" || lower[6] == "operationresults") {
            return ctx.poll(&lower[7], lower[6] == "operationresults");
        }
        if lower.len() == 4 && lower[3] == "microsoft.compute" {
            return err(404, "InvalidResourceType", "no route");
        }
        // /subscriptions/{s}/providers/Microsoft.Compute/virtualMachines (list)
        return err(404, "InvalidResourceType", &format!("no route {path}"));
    }
    if lower.len() == 3 && lower[2] == "resources" && method == Method::GET {
        return ctx.list(None, &query);
    }
    if lower.len() == 3 && lower[2] == "resourcegroups" && method == Method::GET {
        return ctx.list(Some(RG), &query);
    }
    if lower.len() >= 4 && lower[2] == "resourcegroups" {
        let rg_id = format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/{}", segs[3]);
        if lower.len() == 4 {
            return ctx.resource_group(&method, &rg_id, segs[3], body);
        }
        if lower.len() == 5 && lower[4] == "resources" && method == Method::GET {
            return ctx.list(None, &format!("{query}&rg={}", lower[3]));
        }
        if lower.len() >= 8 && lower[4] == "providers" {
            if !lock(&st).res.contains_key(&rg_id.to_lowercase()) {
                return err(
                    404,
                    "ResourceGroupNotFound",
                    &format!("Resource group '{}' could not be found.", segs[3]),
                );
            }
            // providers/{ns}/{type}/{name}[/{type}/{name}]*[/{action}]
            let rest = &segs[6..];
            let (pairs, action) = if rest.len().is_multiple_of(2) {
                (rest, None)
            } else {
                (&rest[..rest.len() - 1], rest.last().copied())
            };
            let type_segs: Vec<&str> = std::iter::once(segs[5])
                .chain(pairs.iter().copied())
                .collect();
            let type_segs = type_segs.as_slice();
            let ns = type_segs[0];
            let mut kind = ns.to_string();
            for (i, s) in type_segs[1..].iter().enumerate() {
                if i % 2 == 0 {
                    kind.push('/');
                    kind.push_str(s);
                }
            }
            let id = format!(
                "/subscriptions/{SUBSCRIPTION}/resourceGroups/{}/providers/{}",
                segs[3],
                type_segs.join("/")
            );
            let name = type_segs.last().copied().unwrap_or_default().to_string();
            return match (method.clone(), action) {
                (Method::GET, None) => ctx.get(&id, &query),
                (Method::PUT, None) => ctx.put(&id, &kind, &name, segs[3], body),
                (Method::DELETE, None) => ctx.delete(&id),
                (Method::POST, Some(a)) => ctx.action(&id, a),
                (Method::GET, Some("instanceView")) => ctx.instance_view(&id),
                _ => err(405, "MethodNotAllowed", &format!("{method} {path}")),
            };
        }
    }
    err(
        404,
        "InvalidResourceType",
        &format!("no route {method} {path}"),
    )
}

struct Ctx {
    st: Arc<Mutex<State>>,
    base: String,
    opts: Arc<ArmOptions>,
    api: String,
}

fn location_of(v: &Value) -> String {
    v.get("location")
        .and_then(Value::as_str)
        .unwrap_or("westeurope")
        .to_string()
}

fn tag_filter(query: &str) -> Option<(String, String)> {
    let f = query_param(query, "$filter")?;
    // tagName eq 'k' and tagValue eq 'v'
    let parts: Vec<&str> = f.split('\'').collect();
    if parts.len() >= 4 {
        Some((parts[1].to_string(), parts[3].to_string()))
    } else {
        None
    }
}

impl Ctx {
    fn start_op(
        &self,
        s: &mut State,
        id: &str,
        location: &str,
        done: Done,
        tick: Option<Tick>,
    ) -> Vec<(&'static str, String)> {
        s.next_op += 1;
        let op = format!("op-{:06}", s.next_op);
        let lower = id.to_lowercase();
        let failure = s
            .fail_next
            .iter()
            .position(|(p, _, _)| lower.contains(p.as_str()))
            .map(|i| {
                let (_, c, m) = s.fail_next.remove(i);
                (c, m)
            });
        let polls = if lower.contains("/versions/") {
            self.opts
                .replication_polls
                .unwrap_or(self.opts.polls)
                .max(1)
        } else {
            self.opts.polls.max(1)
        };
        s.ops.insert(
            op.clone(),
            Op {
                left: polls,
                polls,
                failure,
                done: Some(done),
                finished: false,
                tick,
            },
        );
        let ns = id
            .split("/providers/")
            .nth(1)
            .and_then(|p| p.split('/').next())
            .unwrap_or("Microsoft.Resources");
        let api = &self.api;
        let base = &self.base;
        vec![
            (
                "azure-asyncoperation",
                format!("{base}/subscriptions/{SUBSCRIPTION}/providers/{ns}/locations/{location}/operations/{op}?api-version={api}"),
            ),
            (
                "location",
                format!("{base}/subscriptions/{SUBSCRIPTION}/providers/{ns}/locations/{location}/operationResults/{op}?api-version={api}"),
            ),
            ("retry-after", self.opts.poll_retry_after.to_string()),
        ]
    }

    fn poll(&self, op: &str, results: bool) -> Resp {
        let mut s = lock(&self.st);
        let Some(o) = s.ops.get_mut(op) else {
            return err(
                404,
                "OperationNotFound",
                &format!("operation {op} not found"),
            );
        };
        if !o.finished {
            o.left = o.left.saturating_sub(1);
            let n = o.polls - o.left;
            let tick = o.tick.take();
            let finished = o.left == 0;
            if let Some(mut t) = tick {
                t(&mut s, n);
                if let Some(o) = s.ops.get_mut(op) {
                    o.tick = Some(t);
                }
            }
            if finished {
                let (done, failed) = match s.ops.get_mut(op) {
                    Some(o) => {
                        o.finished = true;
                        (o.done.take(), o.failure.is_some())
                    }
                    None => (None, false),
                };
                if let Some(d) = done {
                    if !failed {
                        d(&mut s);
                    }
                }
            }
        }
        let Some(o) = s.ops.get(op) else {
            return err(404, "OperationNotFound", op);
        };
        let ra = self.opts.poll_retry_after.to_string();
        match (o.finished, &o.failure, results) {
            (false, _, false) => reply(
                200,
                json!({"name": op, "status": "InProgress", "startTime": "2026-01-01T00:00:00Z"}),
                &[("retry-after", ra)],
            ),
            (false, _, true) => reply(202, Value::Null, &[("retry-after", ra)]),
            (true, None, false) => reply(
                200,
                json!({"name": op, "status": "Succeeded", "startTime": "2026-01-01T00:00:00Z", "endTime": "2026-01-01T00:00:01Z"}),
                &[],
            ),
            (true, None, true) => reply(204, Value::Null, &[]),
            (true, Some((c, m)), false) => reply(
                200,
                json!({"name": op, "status": "Failed", "error": {"code": c, "message": m}}),
                &[],
            ),
            (true, Some((c, m)), true) => err(400, c, m),
        }
    }

    fn list(&self, kind: Option<&str>, query: &str) -> Resp {
        let s = lock(&self.st);
        let tag = tag_filter(query);
        let rg = query_param(query, "rg");
        let v: Vec<Value> = s
            .res
            .values()
            .filter(|r| match kind {
                Some(k) => r.kind == k,
                None => r.kind != RG,
            })
            .filter(|r| {
                rg.as_ref().is_none_or(|g| {
                    r.id.to_lowercase().starts_with(&format!(
                        "/subscriptions/{SUBSCRIPTION}/resourcegroups/{g}/"
                    ))
                })
            })
            .filter(|r| {
                tag.as_ref().is_none_or(|(k, val)| {
                    r.body
                        .pointer(&format!(
                            "/tags/{}",
                            k.replace('~', "~0").replace('/', "~1")
                        ))
                        .and_then(Value::as_str)
                        == Some(val.as_str())
                })
            })
            .map(|r| {
                json!({"id": r.id, "name": r.body.get("name"), "type": r.kind,
                    "location": r.body.get("location"), "tags": r.body.get("tags")})
            })
            .collect();
        reply(200, json!({ "value": v }), &[])
    }

    fn resource_group(&self, method: &Method, id: &str, name: &str, body: Value) -> Resp {
        let key = id.to_lowercase();
        let mut s = lock(&self.st);
        match *method {
            Method::GET => match s.res.get(&key) {
                Some(r) => reply(200, r.body.clone(), &[]),
                None => err(
                    404,
                    "ResourceGroupNotFound",
                    &format!("Resource group '{name}' could not be found."),
                ),
            },
            Method::PUT => {
                let loc = location_of(&body);
                if let Some(r) = s.res.get(&key) {
                    if location_of(&r.body) != loc {
                        return err(409, "InvalidResourceGroupLocation", &format!("Invalid resource group location '{loc}'. The Resource group already exists in location '{}'.", location_of(&r.body)));
                    }
                }
                if !self.opts.locations.contains(&loc) {
                    return err(
                        400,
                        "LocationNotAvailableForResourceGroup",
                        &format!(
                            "The provided location '{loc}' is not available for resource group."
                        ),
                    );
                }
                let existed = s.res.contains_key(&key);
                let v = json!({"id": id, "name": name, "type": RG, "location": loc,
                    "tags": body.get("tags").cloned().unwrap_or(json!({})),
                    "properties": {"provisioningState": "Succeeded"}});
                s.res.insert(
                    key,
                    ArmResource {
                        id: id.into(),
                        kind: RG.into(),
                        body: v.clone(),
                    },
                );
                reply(if existed { 200 } else { 201 }, v, &[])
            }
            Method::DELETE => {
                let Some(r) = s.res.get_mut(&key) else {
                    return reply(204, Value::Null, &[]);
                };
                if let Some(p) = r.body.pointer_mut("/properties/provisioningState") {
                    *p = json!("Deleting");
                }
                let loc = location_of(&r.body);
                let prefix = format!("{key}/");
                let k2 = key.clone();
                let h = self.start_op(
                    &mut s,
                    id,
                    &loc,
                    Box::new(move |s: &mut State| {
                        s.res.retain(|k, _| *k != k2 && !k.starts_with(&prefix));
                        s.custom
                            .retain(|k, _| !k.to_lowercase().starts_with(&prefix));
                    }),
                    None,
                );
                reply(
                    202,
                    Value::Null,
                    &h.iter().map(|(a, b)| (*a, b.clone())).collect::<Vec<_>>(),
                )
            }
            _ => err(405, "MethodNotAllowed", "resource groups: GET, PUT, DELETE"),
        }
    }

    fn get(&self, id: &str, query: &str) -> Resp {
        let s = lock(&self.st);
        match s.res.get(&id.to_lowercase()) {
            Some(r) => {
                let mut b = r.body.clone();
                let expand = query_param(query, "$expand").unwrap_or_default();
                if !expand.eq_ignore_ascii_case("instanceView") {
                    if let Some(p) = b.get_mut("properties").and_then(Value::as_object_mut) {
                        p.remove("instanceView");
                    }
                }
                if !expand.eq_ignore_ascii_case("ReplicationStatus") {
                    if let Some(p) = b.get_mut("properties").and_then(Value::as_object_mut) {
                        p.remove("replicationStatus");
                    }
                }
                reply(200, b, &[])
            }
            None => err(
                404,
                "ResourceNotFound",
                &format!("The Resource '{id}' was not found."),
            ),
        }
    }

    fn instance_view(&self, id: &str) -> Resp {
        let s = lock(&self.st);
        match s
            .res
            .get(&id.to_lowercase())
            .and_then(|r| r.body.pointer("/properties/instanceView"))
        {
            Some(v) => reply(200, v.clone(), &[]),
            None => err(404, "ResourceNotFound", id),
        }
    }

    fn exists(s: &State, id: Option<&str>) -> bool {
        id.is_some_and(|i| s.res.contains_key(&i.to_lowercase()))
    }

    fn next_ip(s: &mut State, public: bool) -> String {
        s.next_ip += 1;
        if public {
            format!("203.0.113.{}", 10 + s.next_ip % 240)
        } else {
            format!("192.0.2.{}", 10 + s.next_ip % 240)
        }
    }

    #[allow(clippy::too_many_lines)]
    fn put(&self, id: &str, kind: &str, name: &str, rg: &str, body: Value) -> Resp {
        let key = id.to_lowercase();
        let mut s = lock(&self.st);
        let loc = location_of(&body);
        if !self.opts.locations.contains(&loc) {
            return err(
                400,
                "LocationNotAvailableForResourceType",
                &format!(
                    "The provided location '{loc}' is not available for resource type '{kind}'."
                ),
            );
        }
        if let Some(old) = s.res.get(&key) {
            let st = old
                .body
                .pointer("/properties/provisioningState")
                .and_then(Value::as_str)
                .unwrap_or("");
            if st == "Deleting" || st == "Creating" {
                return err(
                    409,
                    "OperationNotAllowed",
                    &format!(
                        "Resource '{name}' is being {}; try later.",
                        st.to_lowercase()
                    ),
                );
            }
        }
        let mut v = body.clone();
        let Some(obj) = v.as_object_mut() else {
            return err(400, "InvalidRequestContent", "the body is not an object");
        };
        obj.insert("id".into(), json!(id));
        obj.insert("name".into(), json!(name));
        obj.insert("type".into(), json!(kind));
        obj.entry("tags").or_insert(json!({}));
        let props = obj
            .entry("properties")
            .or_insert(json!({}))
            .as_object_mut()
            .map(|p| {
                p.insert("provisioningState".into(), json!("Creating"));
                Value::Object(p.clone())
            })
            .unwrap_or(json!({}));
        let mut extra: Vec<(String, Value)> = Vec::new();
        match kind.to_lowercase().as_str() {
            "microsoft.network/virtualnetworks" => {}
            "microsoft.network/networksecuritygroups" => {}
            "microsoft.network/publicipaddresses" => {
                extra.push((
                    "/properties/ipAddress".into(),
                    json!(Self::next_ip(&mut s, true)),
                ));
            }
            "microsoft.network/networkinterfaces" => {
                let cfgs = props
                    .get("ipConfigurations")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                if cfgs.is_empty() {
                    return err(400, "InvalidRequestFormat", "ipConfigurations is required");
                }
                for c in &cfgs {
                    let subnet = c.pointer("/properties/subnet/id").and_then(Value::as_str);
                    let Some(subnet) = subnet else {
                        return err(
                            400,
                            "InvalidRequestFormat",
                            "ipConfiguration without subnet.id",
                        );
                    };
                    let (vnet, sub) = match subnet.rsplit_once("/subnets/") {
                        Some(x) => x,
                        None => return err(400, "InvalidResourceReference", subnet),
                    };
                    let ok = s.res.get(&vnet.to_lowercase()).is_some_and(|r| {
                        r.body
                            .pointer("/properties/subnets")
                            .and_then(Value::as_array)
                            .is_some_and(|a| {
                                a.iter()
                                    .any(|x| x.get("name").and_then(Value::as_str) == Some(sub))
                            })
                    });
                    if !ok {
                        return err(
                            400,
                            "InvalidResourceReference",
                            &format!(
                                "Resource {subnet} referenced by resource {id} was not found."
                            ),
                        );
                    }
                    let pip = c
                        .pointer("/properties/publicIPAddress/id")
                        .and_then(Value::as_str);
                    if pip.is_some() && !Self::exists(&s, pip) {
                        return err(
                            400,
                            "InvalidResourceReference",
                            &format!(
                                "Resource {} referenced by resource {id} was not found.",
                                pip.unwrap_or("")
                            ),
                        );
                    }
                }
                let nsg = props
                    .get("networkSecurityGroup")
                    .and_then(|n| n.get("id"))
                    .and_then(Value::as_str);
                if nsg.is_some() && !Self::exists(&s, nsg) {
                    return err(
                        400,
                        "InvalidResourceReference",
                        &format!(
                            "Resource {} referenced by resource {id} was not found.",
                            nsg.unwrap_or("")
                        ),
                    );
                }
                extra.push((
                    "/properties/ipConfigurations/0/properties/privateIPAddress".into(),
                    json!(Self::next_ip(&mut s, false)),
                ));
            }
            "microsoft.compute/virtualmachines" => {
                let nics: Vec<String> = props
                    .pointer("/networkProfile/networkInterfaces")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|n| n.get("id").and_then(Value::as_str).map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                if nics.is_empty() {
                    return err(
                        400,
                        "InvalidParameter",
                        "Required parameter 'networkProfile' is missing (null).",
                    );
                }
                for n in &nics {
                    if !Self::exists(&s, Some(n)) {
                        return err(
                            400,
                            "InvalidResourceReference",
                            &format!("Resource {n} referenced by resource {id} was not found."),
                        );
                    }
                    let other = s.res.values().find(|r| {
                        r.kind == "Microsoft.Compute/virtualMachines"
                            && r.id.to_lowercase() != key
                            && vm_nics(&r.body).iter().any(|x| x.eq_ignore_ascii_case(n))
                    });
                    if let Some(o) = other {
                        return err(
                            400,
                            "NicInUse",
                            &format!("Network interface {n} is used by existing VM {}.", o.id),
                        );
                    }
                }
                let img = props
                    .pointer("/storageProfile/imageReference")
                    .cloned()
                    .unwrap_or(Value::Null);
                if let Some(iid) = img.get("id").and_then(Value::as_str) {
                    if !Self::exists(&s, Some(iid)) {
                        return err(
                            404,
                            "NotFound",
                            &format!("The Image '{iid}' cannot be found in '{loc}' region."),
                        );
                    }
                } else {
                    let f = |k: &str| img.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                    let known = self.opts.marketplace.iter().any(|(p, o, k)| {
                        p.eq_ignore_ascii_case(&f("publisher"))
                            && o.eq_ignore_ascii_case(&f("offer"))
                            && k.eq_ignore_ascii_case(&f("sku"))
                    });
                    if !known {
                        return err(
                            404,
                            "PlatformImageNotFound",
                            &format!(
                                "The platform image '{}:{}:{}:{}' is not available.",
                                f("publisher"),
                                f("offer"),
                                f("sku"),
                                f("version")
                            ),
                        );
                    }
                }
                let size = props
                    .pointer("/hardwareProfile/vmSize")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if !self.opts.vm_sizes.iter().any(|x| x == size) {
                    return err(
                        400,
                        "InvalidParameter",
                        &format!(
                            "The requested VM size {size} is not available in the current region."
                        ),
                    );
                }
                if let Some(cd) = props
                    .pointer("/osProfile/customData")
                    .and_then(Value::as_str)
                {
                    match base64::engine::general_purpose::STANDARD.decode(cd) {
                        Ok(b) => {
                            s.custom
                                .insert(id.to_string(), String::from_utf8_lossy(&b).to_string());
                        }
                        Err(_) => {
                            return err(400, "InvalidParameter", "customData must be base64.")
                        }
                    }
                }
                let disk_name = props
                    .pointer("/storageProfile/osDisk/name")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{name}_OsDisk_1"));
                let disk_id = format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/{rg}/providers/Microsoft.Compute/disks/{disk_name}");
                extra.push((
                    "/properties/storageProfile/osDisk/name".into(),
                    json!(disk_name),
                ));
                extra.push((
                    "/properties/storageProfile/osDisk/managedDisk/id".into(),
                    json!(disk_id),
                ));
                extra.push((
                    "/properties/vmId".into(),
                    json!(format!("{:08x}-0000-4000-8000-000000000000", s.next_op + 1)),
                ));
                if let Some(p) = obj_props(obj_of(&mut v)) {
                    if let Some(o) = p.get_mut("osProfile").and_then(Value::as_object_mut) {
                        o.remove("customData");
                        o.remove("adminPassword");
                    }
                }
                let tags = v.get("tags").cloned().unwrap_or(json!({}));
                let d = json!({"id": disk_id, "name": disk_name, "type": "Microsoft.Compute/disks",
                    "location": loc, "tags": tags,
                    "properties": {"provisioningState": "Succeeded", "diskState": "Attached",
                        "diskSizeGB": props.pointer("/storageProfile/osDisk/diskSizeGB").cloned().unwrap_or(json!(30))}});
                s.res.insert(
                    disk_id.to_lowercase(),
                    ArmResource {
                        id: disk_id,
                        kind: "Microsoft.Compute/disks".into(),
                        body: d,
                    },
                );
                extra.push((
                    "/properties/instanceView".into(),
                    json!({"statuses": [
                    {"code": "ProvisioningState/creating"}, {"code": "PowerState/starting"}]}),
                ));
            }
            "microsoft.compute/disks" => {}
            "microsoft.compute/images" => {
                let os = props
                    .pointer("/storageProfile/osDisk")
                    .cloned()
                    .unwrap_or(Value::Null);
                let src_vm = props
                    .pointer("/sourceVirtualMachine/id")
                    .and_then(Value::as_str);
                if let Some(vm) = src_vm {
                    let Some(r) = s.res.get(&vm.to_lowercase()) else {
                        return err(404, "NotFound", &format!("The entity {vm} was not found."));
                    };
                    if r.body.pointer("/properties/generalized") != Some(&json!(true)) {
                        return err(409, "OperationNotAllowed", &format!("The source virtual machine '{vm}' must be generalized to create an image."));
                    }
                } else if let Some(uri) = os.get("blobUri").and_then(Value::as_str) {
                    drop(s);
                    let checked = check_vhd_blob(uri);
                    s = lock(&self.st);
                    match checked {
                        Ok((size, sha256)) => {
                            s.blobs_read.push(BlobRead {
                                uri: uri.to_string(),
                                len: size,
                                sha256,
                            });
                            extra.push((
                                "/properties/storageProfile/osDisk/diskSizeGB".into(),
                                json!(size.div_ceil(1 << 30)),
                            ));
                        }
                        Err(m) => {
                            return err(
                                400,
                                "InvalidParameter",
                                &format!("The blob {uri} is not a valid fixed VHD: {m}"),
                            )
                        }
                    }
                } else if os.get("managedDisk").is_none() {
                    return err(
                        400,
                        "InvalidParameter",
                        "Required parameter 'osDisk.blobUri' or 'sourceVirtualMachine' is missing.",
                    );
                }
                if let Some(old) = s.res.get(&key) {
                    if old
                        .body
                        .pointer("/properties/storageProfile/osDisk/blobUri")
                        != os.get("blobUri")
                        && os.get("blobUri").is_some()
                    {
                        return err(
                            409,
                            "PropertyChangeNotAllowed",
                            "Changing property 'osDisk.blobUri' is not allowed.",
                        );
                    }
                }
            }
            "microsoft.compute/galleries" => {
                if !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
                {
                    return err(400, "InvalidParameter", &format!("The gallery name '{name}' is invalid (letters, digits, underscores and periods)."));
                }
            }
            "microsoft.compute/galleries/images" => {
                let gal = id.rsplit_once("/images/").map(|x| x.0).unwrap_or("");
                if !Self::exists(&s, Some(gal)) {
                    return err(404, "ParentResourceNotFound", &format!("Can not perform requested operation on nested resource. Parent resource '{gal}' not found."));
                }
            }
            "microsoft.compute/galleries/images/versions" => {
                let def = id.rsplit_once("/versions/").map(|x| x.0).unwrap_or("");
                if !Self::exists(&s, Some(def)) {
                    return err(404, "ParentResourceNotFound", &format!("Can not perform requested operation on nested resource. Parent resource '{def}' not found."));
                }
                let src = props
                    .pointer("/storageProfile/source/id")
                    .and_then(Value::as_str);
                if !Self::exists(&s, src) {
                    return err(
                        400,
                        "InvalidParameter",
                        &format!("The source '{}' was not found.", src.unwrap_or("")),
                    );
                }
                let regions: Vec<String> = props
                    .pointer("/publishingProfile/targetRegions")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|r| {
                                r.get("name").and_then(Value::as_str).map(str::to_string)
                            })
                            .collect()
                    })
                    .unwrap_or_else(|| vec![loc.clone()]);
                let summary: Vec<Value> = regions
                    .iter()
                    .map(|r| json!({"region": r, "state": "Replicating", "progress": 0}))
                    .collect();
                extra.push((
                    "/properties/replicationStatus".into(),
                    json!({"aggregatedState": "InProgress", "summary": summary}),
                ));
            }
            other => {
                return err(
                    400,
                    "InvalidResourceType",
                    &format!("The resource type '{other}' is not served by this test server."),
                )
            }
        }
        for (p, val) in extra {
            set_pointer(&mut v, &p, val);
        }
        let existed = s.res.contains_key(&key);
        s.res.insert(
            key.clone(),
            ArmResource {
                id: id.to_string(),
                kind: kind_of(kind),
                body: v.clone(),
            },
        );
        let k2 = key.clone();
        let is_vm = kind.eq_ignore_ascii_case("Microsoft.Compute/virtualMachines");
        let is_version = kind.eq_ignore_ascii_case("Microsoft.Compute/galleries/images/versions");
        let polls = if is_version {
            self.opts
                .replication_polls
                .unwrap_or(self.opts.polls)
                .max(1)
        } else {
            self.opts.polls.max(1)
        };
        let tick: Option<Tick> = if is_version {
            let k3 = key.clone();
            Some(Box::new(move |s: &mut State, n: u32| {
                if let Some(r) = s.res.get_mut(&k3) {
                    if let Some(arr) = r
                        .body
                        .pointer_mut("/properties/replicationStatus/summary")
                        .and_then(Value::as_array_mut)
                    {
                        let count = arr.len() as u32;
                        for (i, x) in arr.iter_mut().enumerate() {
                            // Region i lags i polls behind; all done at the last poll.
                            let p = (n * 100 / polls)
                                .saturating_sub(i as u32 * 100 / (polls * count.max(1)));
                            let p = if n >= polls { 100 } else { p.min(99) };
                            x["progress"] = json!(p);
                            x["state"] = json!(if p >= 100 { "Completed" } else { "Replicating" });
                        }
                    }
                }
            }))
        } else {
            None
        };
        let h = self.start_op(
            &mut s,
            id,
            &loc,
            Box::new(move |s: &mut State| {
                if let Some(r) = s.res.get_mut(&k2) {
                    set_pointer(&mut r.body, "/properties/provisioningState", json!("Succeeded"));
                    if is_vm {
                        set_pointer(&mut r.body, "/properties/instanceView", json!({"statuses": [
                            {"code": "ProvisioningState/succeeded"}, {"code": "PowerState/running"}]}));
                    }
                    if is_version {
                        set_pointer(&mut r.body, "/properties/replicationStatus/aggregatedState", json!("Completed"));
                    }
                }
            }),
            tick,
        );
        let hs: Vec<(&str, String)> = h.into_iter().filter(|(k, _)| *k != "location").collect();
        let mut shown = v.clone();
        if let Some(p) = shown.get_mut("properties").and_then(Value::as_object_mut) {
            p.remove("instanceView");
            p.remove("replicationStatus");
        }
        reply(if existed { 200 } else { 201 }, shown, &hs)
    }

    fn delete(&self, id: &str) -> Resp {
        let key = id.to_lowercase();
        let mut s = lock(&self.st);
        let Some(r) = s.res.get(&key).cloned() else {
            return reply(204, Value::Null, &[]);
        };
        let users = |s: &State, pred: &dyn Fn(&ArmResource) -> bool| -> Option<String> {
            s.res.values().find(|x| pred(x)).map(|x| x.id.clone())
        };
        let kind = r.kind.to_lowercase();
        let refuse = match kind.as_str() {
            "microsoft.network/networkinterfaces" => users(&s, &|x| {
                x.kind == "Microsoft.Compute/virtualMachines"
                    && vm_nics(&x.body).iter().any(|n| n.eq_ignore_ascii_case(id))
            })
            .map(|vm| (400, "NicInUse", format!("Network Interface {id} is used by existing resource {vm}. In order to delete the network interface, it must be dissociated from the resource."))),
            "microsoft.compute/disks" => users(&s, &|x| {
                x.kind == "Microsoft.Compute/virtualMachines"
                    && x.body.pointer("/properties/storageProfile/osDisk/managedDisk/id").and_then(Value::as_str).is_some_and(|d| d.eq_ignore_ascii_case(id))
            })
            .map(|vm| (409, "OperationNotAllowed", format!("Disk {id} is attached to VM {vm}."))),
            "microsoft.network/networksecuritygroups" => users(&s, &|x| {
                x.kind == "Microsoft.Network/networkInterfaces"
                    && x.body.pointer("/properties/networkSecurityGroup/id").and_then(Value::as_str).is_some_and(|d| d.eq_ignore_ascii_case(id))
            })
            .map(|nic| (400, "InUseNetworkSecurityGroupCannotBeDeleted", format!("Network security group {id} cannot be deleted because it is in use by the following resources: {nic}."))),
            "microsoft.network/publicipaddresses" => users(&s, &|x| {
                x.kind == "Microsoft.Network/networkInterfaces"
                    && x.body.to_string().to_lowercase().contains(&format!("\"{}\"", id.to_lowercase()))
            })
            .map(|nic| (400, "PublicIPAddressCannotBeDeleted", format!("Public IP address {id} can not be deleted since it is still allocated to resource {nic}."))),
            "microsoft.network/virtualnetworks" => users(&s, &|x| {
                x.kind == "Microsoft.Network/networkInterfaces"
                    && x.body.to_string().to_lowercase().contains(&id.to_lowercase())
            })
            .map(|nic| (400, "InUseSubnetCannotBeDeleted", format!("Subnet of {id} is in use by {nic} and cannot be deleted."))),
            "microsoft.compute/galleries" | "microsoft.compute/galleries/images" => users(&s, &|x| {
                x.id.to_lowercase().starts_with(&format!("{key}/"))
            })
            .map(|child| (409, "CannotDeleteResource", format!("Can not delete resource before nested resources are deleted: {child}."))),
            _ => None,
        };
        if let Some((st, code, msg)) = refuse {
            return err(st, code, &msg);
        }
        let loc = location_of(&r.body);
        if let Some(x) = s.res.get_mut(&key) {
            set_pointer(
                &mut x.body,
                "/properties/provisioningState",
                json!("Deleting"),
            );
        }
        // A VM takes the disk and NICs whose deleteOption is Delete with it.
        let mut also: Vec<String> = Vec::new();
        if kind == "microsoft.compute/virtualmachines" {
            if r.body
                .pointer("/properties/storageProfile/osDisk/deleteOption")
                .and_then(Value::as_str)
                == Some("Delete")
            {
                if let Some(d) = r
                    .body
                    .pointer("/properties/storageProfile/osDisk/managedDisk/id")
                    .and_then(Value::as_str)
                {
                    also.push(d.to_lowercase());
                }
            }
            if let Some(a) = r
                .body
                .pointer("/properties/networkProfile/networkInterfaces")
                .and_then(Value::as_array)
            {
                for n in a {
                    if n.pointer("/properties/deleteOption")
                        .and_then(Value::as_str)
                        == Some("Delete")
                    {
                        if let Some(i) = n.get("id").and_then(Value::as_str) {
                            also.push(i.to_lowercase());
                        }
                    }
                }
            }
        }
        let k2 = key.clone();
        let id2 = id.to_string();
        let h = self.start_op(
            &mut s,
            id,
            &loc,
            Box::new(move |s: &mut State| {
                s.res.remove(&k2);
                s.custom.remove(&id2);
                for a in also {
                    s.res.remove(&a);
                }
            }),
            None,
        );
        reply(202, Value::Null, &h)
    }

    fn action(&self, id: &str, action: &str) -> Resp {
        let key = id.to_lowercase();
        let mut s = lock(&self.st);
        let Some(r) = s.res.get(&key).cloned() else {
            return err(
                404,
                "ResourceNotFound",
                &format!("The Resource '{id}' was not found."),
            );
        };
        if r.kind != "Microsoft.Compute/virtualMachines" {
            return err(400, "InvalidResourceType", action);
        }
        let power = r
            .body
            .pointer("/properties/instanceView/statuses/1/code")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let loc = location_of(&r.body);
        let set_power = |code: &'static str| -> Done {
            let k = key.clone();
            Box::new(move |s: &mut State| {
                if let Some(x) = s.res.get_mut(&k) {
                    set_pointer(
                        &mut x.body,
                        "/properties/instanceView/statuses/1/code",
                        json!(code),
                    );
                }
            })
        };
        match action.to_lowercase().as_str() {
            "poweroff" => {
                let h = self.start_op(&mut s, id, &loc, set_power("PowerState/stopped"), None);
                reply(202, Value::Null, &h)
            }
            "deallocate" => {
                let h = self.start_op(&mut s, id, &loc, set_power("PowerState/deallocated"), None);
                reply(202, Value::Null, &h)
            }
            "start" => {
                let h = self.start_op(&mut s, id, &loc, set_power("PowerState/running"), None);
                reply(202, Value::Null, &h)
            }
            "generalize" => {
                if power != "PowerState/deallocated" && power != "PowerState/stopped" {
                    return err(409, "OperationNotAllowed", &format!("Operation 'generalize' is not allowed on VM '{}' since the VM is running. Please stop the VM and retry.", r.body.get("name").and_then(Value::as_str).unwrap_or("")));
                }
                if let Some(x) = s.res.get_mut(&key) {
                    set_pointer(&mut x.body, "/properties/generalized", json!(true));
                }
                reply(200, Value::Null, &[])
            }
            "retrievebootdiagnosticsdata" => {
                if s.serial_log.is_none() {
                    return err(
                        404,
                        "BootDiagnosticsNotFound",
                        "Boot diagnostics data is not available for this VM.",
                    );
                }
                let name = r
                    .body
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("vm")
                    .to_string();
                reply(
                    200,
                    json!({
                        "consoleScreenshotBlobUri": format!("{}/_test/serial/{name}.bmp?sig=test", self.base),
                        "serialConsoleLogBlobUri": format!("{}/_test/serial/{name}.log?sig=test", self.base)
                    }),
                    &[],
                )
            }
            other => err(400, "InvalidRequestUri", &format!("unknown action {other}")),
        }
    }
}

fn obj_of(v: &mut Value) -> Option<&mut serde_json::Map<String, Value>> {
    v.as_object_mut()
}

fn obj_props(
    o: Option<&mut serde_json::Map<String, Value>>,
) -> Option<&mut serde_json::Map<String, Value>> {
    o?.get_mut("properties")?.as_object_mut()
}

fn kind_of(k: &str) -> String {
    // Canonical casing for the kinds the tests look up.
    for c in [
        "Microsoft.Compute/virtualMachines",
        "Microsoft.Compute/disks",
        "Microsoft.Compute/images",
        "Microsoft.Compute/galleries",
        "Microsoft.Compute/galleries/images",
        "Microsoft.Compute/galleries/images/versions",
        "Microsoft.Network/networkInterfaces",
        "Microsoft.Network/networkSecurityGroups",
        "Microsoft.Network/publicIPAddresses",
        "Microsoft.Network/virtualNetworks",
    ] {
        if c.eq_ignore_ascii_case(k) {
            return c.to_string();
        }
    }
    k.to_string()
}

fn vm_nics(vm: &Value) -> Vec<String> {
    vm.pointer("/properties/networkProfile/networkInterfaces")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|n| n.get("id").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn set_pointer(v: &mut Value, pointer: &str, val: Value) {
    let mut cur = v;
    let parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    for (i, p) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if let Ok(idx) = p.parse::<usize>() {
            let Some(a) = cur.as_array_mut() else { return };
            while a.len() <= idx {
                a.push(json!({}));
            }
            if last {
                a[idx] = val;
                return;
            }
            cur = &mut a[idx];
        } else {
            if !cur.is_object() {
                *cur = json!({});
            }
            let Some(o) = cur.as_object_mut() else { return };
            if last {
                o.insert((*p).to_string(), val);
                return;
            }
            cur = o.entry((*p).to_string()).or_insert(json!({}));
        }
    }
}

/// Read the blob's length (HEAD) and last 512 bytes (Range) anonymously from
/// a loopback blob endpoint and check the fixed VHD footer: cookie
/// `conectix`, disk type 2 (fixed), current size = blob length - 512; then
/// read it whole and hash it (what Azure copies into the image).
fn check_vhd_blob(uri: &str) -> Result<(u64, String), String> {
    let rest = uri
        .strip_prefix("http://")
        .ok_or("only http:// blob URIs (azurite) are read by the test server")?;
    let (hostport, path) = rest.split_once('/').ok_or("no path")?;
    let addr: SocketAddr = hostport
        .parse()
        .map_err(|_| format!("{hostport} is not ip:port"))?;
    if !addr.ip().is_loopback() {
        return Err(format!("{addr} is not loopback: never contacted"));
    }
    let path = format!("/{path}");
    let (st, head, _) = raw(addr, "HEAD", &path, None)?;
    if st != 200 {
        return Err(format!("HEAD answered {st}"));
    }
    let len: u64 = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .ok_or("no content-length")?;
    if len < 1024 || !len.is_multiple_of(512) {
        return Err(format!("length {len} is not a multiple of 512"));
    }
    let (st, _, body) = raw(
        addr,
        "GET",
        &path,
        Some(format!("bytes={}-{}", len - 512, len - 1)),
    )?;
    if st != 206 && st != 200 {
        return Err(format!("range read answered {st}"));
    }
    let f = if body.len() == 512 {
        body
    } else {
        body[body.len().saturating_sub(512)..].to_vec()
    };
    if &f[..8] != b"conectix" {
        return Err("no `conectix` cookie in the last 512 bytes".into());
    }
    let disk_type = u32::from_be_bytes([f[60], f[61], f[62], f[63]]);
    if disk_type != 2 {
        return Err(format!("disk type {disk_type} is not 2 (fixed)"));
    }
    let current = u64::from_be_bytes([f[48], f[49], f[50], f[51], f[52], f[53], f[54], f[55]]);
    if current != len - 512 {
        return Err(format!("footer size {current} != blob length {len} - 512"));
    }
    Ok((len, hash_blob(addr, &path)?))
}

fn hash_blob(addr: SocketAddr, path: &str) -> Result<String, String> {
    use sha2::Digest as _;
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(120)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nx-ms-version: 2021-12-02\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut r = std::io::BufReader::with_capacity(1 << 20, s);
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        r.read_exact(&mut byte).map_err(|e| e.to_string())?;
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).to_lowercase();
    if text.contains("transfer-encoding: chunked") {
        return Err("chunked blob answer not handled".into());
    }
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    range: Option<String>,
) -> Result<(u16, String, Vec<u8>), String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nx-ms-version: 2021-12-02\r\nConnection: close\r\n");
    if let Some(r) = range {
        req.push_str(&format!("Range: {r}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| e.to_string())?;
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP head")?;
    let head = String::from_utf8_lossy(&out[..end]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .ok_or("bad status line")?;
    Ok((status, head, out[end + 4..].to_vec()))
}

/// An `AuthorizedKeysCommand` for the test sshd that plays the server's VMs:
/// it asks the server (`GET /_test/customdata`) for every running VM's
/// customData and prints `env.bosh.authorized_keys` of the agent settings
/// found there, so that a login proves the key travelled through customData.
pub fn custom_data_keys_command(
    arm: &ArmServer,
) -> Result<crate::sshd::AuthorizedKeysCommand, crate::sshd::SshdError> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = crate::sshd::private_script_dir("azure-custom-data")?;
    let port = arm.endpoint().rsplit(':').next().unwrap_or("0").to_string();
    let script = dir.join(format!("keys-{port}"));
    let text = format!(
        r#"#!/usr/bin/python3
# Prints env.bosh.authorized_keys of every running VM's customData.
import json, urllib.request
req = urllib.request.Request("{ep}/_test/customdata", headers={{"Authorization": "Bearer {TOKEN}"}})
with urllib.request.urlopen(req, timeout=5) as r:
    for vm in json.loads(r.read())["value"]:
        if vm.get("powerState") != "PowerState/running":
            continue
        try:
            s = json.loads(vm["customData"])
        except ValueError:
            continue
        for k in s.get("env", {{}}).get("bosh", {{}}).get("authorized_keys", []):
            print(k)
"#,
        ep = arm.endpoint(),
    );
    std::fs::write(&script, text).map_err(|source| crate::sshd::SshdError::Io {
        path: script.clone(),
        source,
    })?;
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

/// A hardened test sshd that plays the server's VMs (keys from customData only).
pub fn vm_sshd(arm: &ArmServer) -> Result<crate::sshd::Sshd, crate::sshd::SshdError> {
    crate::sshd::Sshd::start(crate::sshd::SshdOptions {
        authorized_keys_command: Some(custom_data_keys_command(arm)?),
        ..crate::sshd::SshdOptions::default()
    })
}
