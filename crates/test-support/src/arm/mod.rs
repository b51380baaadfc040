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
use std::sync::{Arc, Mutex};

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
    /// The result an operation hands out when it succeeded (`Location`
    /// answers it with 200; `Azure-AsyncOperation` in `properties.output`).
    output: Option<Value>,
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
    /// Disk read SASes granted by `beginGetAccess` (signature → disk id).
    disk_sas: BTreeMap<String, String>,
    /// Bytes served through disk SAS URLs.
    disk_bytes_served: u64,
    /// Disk SAS reads still to fail (500).
    fail_disk_reads: u32,
    /// The images' copies of the VHD blobs they were made from (by image
    /// id, lowercase), in `store`.
    image_copies: BTreeMap<String, std::path::PathBuf>,
    /// Where the server keeps them (removed with the server).
    store: Store,
}

/// The server's temporary directory.
struct Store(Option<tempfile::TempDir>);

impl Default for Store {
    fn default() -> Self {
        Store(
            tempfile::Builder::new()
                .prefix("opsbake-arm-")
                .tempdir()
                .ok(),
        )
    }
}

impl Store {
    fn path(&self) -> std::path::PathBuf {
        self.0
            .as_ref()
            .map(|d| d.path().to_path_buf())
            .unwrap_or_else(std::env::temp_dir)
    }
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

    /// Disk read SASes active now (granted by `beginGetAccess`, not yet
    /// revoked by `endGetAccess`), by disk id.
    pub fn disk_sas_active(&self) -> Vec<String> {
        lock(&self.state).disk_sas.values().cloned().collect()
    }

    /// The next `n` reads of a disk SAS answer 500 `InternalError`.
    pub fn fail_disk_reads(&self, n: u32) {
        lock(&self.state).fail_disk_reads = n;
    }

    /// Bytes served through disk SAS URLs.
    pub fn disk_bytes_served(&self) -> u64 {
        lock(&self.state).disk_bytes_served
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

mod ops;
mod put;
mod vhd;

use ops::Ctx;

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
    if path.starts_with("/_test/disks/") {
        // A disk's read SAS (beginGetAccess): the signature is the access.
        return ops::serve_disk(&st, &query).await;
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
                (Method::POST, Some(a)) => ctx.action(&id, a, &body),
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

/// A directory (`dir/bin`) with an `az` that prints the ARM test server's
/// token, as `az account get-access-token -o json` does (the Azure CLI
/// credential of opsbake's chain); with `call_log`, it appends its
/// arguments there first.
pub fn fake_az(
    dir: &std::path::Path,
    call_log: Option<&std::path::Path>,
) -> std::io::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
        + 3600;
    let log = call_log
        .map(|l| format!("echo \"$@\" >> '{}'\n", l.display()))
        .unwrap_or_default();
    let az = bin.join("az");
    std::fs::write(
        &az,
        format!(
            "#!/bin/sh\n{log}cat <<EOF\n{{\"accessToken\": \"{TOKEN}\", \"expiresOn\": \"2099-01-01 00:00:00.000000\", \"expires_on\": {exp}, \"subscription\": \"x\", \"tenant\": \"t\", \"tokenType\": \"Bearer\"}}\nEOF\n"
        ),
    )?;
    std::fs::set_permissions(&az, std::fs::Permissions::from_mode(0o755))?;
    Ok(bin)
}
