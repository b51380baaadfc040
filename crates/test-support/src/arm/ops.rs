//! The ARM test server's resource handlers: operations, lists, resource
//! groups, and PUT/GET/DELETE/actions of each resource type.

use super::*;

pub(super) struct Ctx {
    pub(super) st: Arc<Mutex<State>>,
    pub(super) base: String,
    pub(super) opts: Arc<ArmOptions>,
    pub(super) api: String,
}

pub(super) fn location_of(v: &Value) -> String {
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
    pub(super) fn start_op(
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
                output: None,
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

    pub(super) fn poll(&self, op: &str, results: bool) -> Resp {
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
            (true, None, false) => {
                let mut b = json!({"name": op, "status": "Succeeded", "startTime": "2026-01-01T00:00:00Z", "endTime": "2026-01-01T00:00:01Z"});
                if let Some(out) = &o.output {
                    b["properties"] = json!({ "output": out });
                }
                reply(200, b, &[])
            }
            (true, None, true) => match &o.output {
                Some(out) => reply(200, out.clone(), &[]),
                None => reply(204, Value::Null, &[]),
            },
            (true, Some((c, m)), false) => reply(
                200,
                json!({"name": op, "status": "Failed", "error": {"code": c, "message": m}}),
                &[],
            ),
            (true, Some((c, m)), true) => err(400, c, m),
        }
    }

    pub(super) fn list(&self, kind: Option<&str>, query: &str) -> Resp {
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

    pub(super) fn resource_group(
        &self,
        method: &Method,
        id: &str,
        name: &str,
        body: Value,
    ) -> Resp {
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

    pub(super) fn get(&self, id: &str, query: &str) -> Resp {
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

    pub(super) fn instance_view(&self, id: &str) -> Resp {
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

    pub(super) fn exists(s: &State, id: Option<&str>) -> bool {
        id.is_some_and(|i| s.res.contains_key(&i.to_lowercase()))
    }

    pub(super) fn next_ip(s: &mut State, public: bool) -> String {
        s.next_ip += 1;
        if public {
            format!("203.0.113.{}", 10 + s.next_ip % 240)
        } else {
            format!("192.0.2.{}", 10 + s.next_ip % 240)
        }
    }

    pub(super) fn delete(&self, id: &str) -> Resp {
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
        let refuse = refuse.or_else(|| {
            (kind == "microsoft.compute/disks"
                && s.disk_sas.values().any(|d| d.eq_ignore_ascii_case(id)))
            .then(|| (409, "OperationNotAllowed", format!("Disk {id} has an active SAS (beginGetAccess); revoke it (endGetAccess) before deleting the disk.")))
        });
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

    pub(super) fn action(&self, id: &str, action: &str, body: &Value) -> Resp {
        let key = id.to_lowercase();
        let mut s = lock(&self.st);
        let Some(r) = s.res.get(&key).cloned() else {
            return err(
                404,
                "ResourceNotFound",
                &format!("The Resource '{id}' was not found."),
            );
        };
        if r.kind == "Microsoft.Compute/disks" {
            return self.disk_action(&mut s, &r, action, body);
        }
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

impl Ctx {
    /// `beginGetAccess` (a read SAS of the disk's VHD, once the VM using it
    /// is stopped or deallocated) and `endGetAccess` (revokes it), both
    /// long-running; the SAS comes in the operation's result.
    fn disk_action(&self, s: &mut State, r: &ArmResource, action: &str, body: &Value) -> Resp {
        let id = r.id.clone();
        let key = id.to_lowercase();
        let loc = location_of(&r.body);
        match action.to_lowercase().as_str() {
            "begingetaccess" => {
                if body.get("access").and_then(Value::as_str) != Some("Read") {
                    return err(
                        400,
                        "InvalidParameter",
                        "The value of parameter access is invalid (Read).",
                    );
                }
                if body
                    .get("durationInSeconds")
                    .and_then(Value::as_u64)
                    .unwrap_or(0)
                    == 0
                {
                    return err(
                        400,
                        "InvalidParameter",
                        "Required parameter 'durationInSeconds' is missing or zero.",
                    );
                }
                let running = s.res.values().find(|x| {
                    x.kind == "Microsoft.Compute/virtualMachines"
                        && x.body
                            .pointer("/properties/storageProfile/osDisk/managedDisk/id")
                            .and_then(Value::as_str)
                            .is_some_and(|d| d.eq_ignore_ascii_case(&id))
                        && !matches!(
                            x.body
                                .pointer("/properties/instanceView/statuses/1/code")
                                .and_then(Value::as_str),
                            Some("PowerState/deallocated")
                        )
                });
                if let Some(vm) = running {
                    return err(409, "OperationNotAllowed", &format!("Disk {id} is attached to VM {} which is not deallocated; deallocate it before granting access.", vm.id));
                }
                let sig = format!(
                    "{:016x}{:08x}",
                    (s.next_op + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                    s.disk_sas.len()
                );
                let name = r
                    .body
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("disk")
                    .to_string();
                let sas = format!(
                    "{}/_test/disks/{name}.vhd?sv=2018-03-28&sr=b&sp=r&sig={sig}",
                    self.base
                );
                let (k2, id2) = (key.clone(), id.clone());
                let h = self.start_op(
                    s,
                    &id,
                    &loc,
                    Box::new(move |s: &mut State| {
                        s.disk_sas.insert(sig, id2);
                        if let Some(x) = s.res.get_mut(&k2) {
                            set_pointer(&mut x.body, "/properties/diskState", json!("ActiveSAS"));
                        }
                    }),
                    None,
                );
                if let Some(op) = s.ops.get_mut(&format!("op-{:06}", s.next_op)) {
                    op.output = Some(json!({ "accessSAS": sas }));
                }
                reply(202, Value::Null, &h)
            }
            "endgetaccess" => {
                let (k2, id2) = (key.clone(), id.clone());
                let h = self.start_op(
                    s,
                    &id,
                    &loc,
                    Box::new(move |s: &mut State| {
                        s.disk_sas.retain(|_, d| !d.eq_ignore_ascii_case(&id2));
                        if let Some(x) = s.res.get_mut(&k2) {
                            set_pointer(&mut x.body, "/properties/diskState", json!("Reserved"));
                        }
                    }),
                    None,
                );
                reply(202, Value::Null, &h)
            }
            other => err(
                400,
                "InvalidRequestUri",
                &format!("unknown disk action {other}"),
            ),
        }
    }
}

/// GET of a disk's read SAS: the disk's VHD. A disk made from an image made
/// from a VHD blob holds the image's copy of that blob; others hold a small
/// fixed VHD of their own (a marker naming the disk, zeros, the footer).
pub(super) async fn serve_disk(st: &Arc<Mutex<State>>, query: &str) -> Resp {
    let Some(sig) = query_param(query, "sig") else {
        return err(403, "AuthenticationFailed", "no signature");
    };
    let (disk, blob) = {
        let mut s = lock(st);
        if s.fail_disk_reads > 0 {
            s.fail_disk_reads -= 1;
            return err(
                500,
                "InternalError",
                "The server encountered an internal error reading the disk.",
            );
        }
        let Some(disk_id) = s.disk_sas.get(&sig).cloned() else {
            return err(403, "AuthenticationFailed", "Server failed to authenticate the request: the signature is not (or no longer) valid.");
        };
        let Some(d) = s.res.get(&disk_id.to_lowercase()).cloned() else {
            return err(404, "BlobNotFound", "The specified blob does not exist.");
        };
        let copy = d
            .body
            .pointer("/properties/creationData/imageReference/id")
            .and_then(Value::as_str)
            .and_then(|i| s.image_copies.get(&i.to_lowercase()))
            .cloned();
        (d, copy)
    };
    let bytes = match blob {
        Some(p) => {
            match tokio::task::spawn_blocking(move || std::fs::read(&p).map_err(|e| e.to_string()))
                .await
            {
                Ok(Ok(b)) => b,
                Ok(Err(m)) => {
                    return err(
                        500,
                        "InternalError",
                        &format!("reading the disk's source blob: {m}"),
                    )
                }
                Err(e) => return err(500, "InternalError", &e.to_string()),
            }
        }
        None => super::vhd::synthetic_vhd(
            disk.body
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("disk"),
        ),
    };
    lock(st).disk_bytes_served += bytes.len() as u64;
    let n = bytes.len();
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    let h = r.headers_mut();
    if let Ok(v) = "application/octet-stream".parse() {
        h.insert("content-type", v);
    }
    if let Ok(v) = n.to_string().parse() {
        h.insert("content-length", v);
    }
    if let Ok(v) = "PageBlob".parse() {
        h.insert("x-ms-blob-type", v);
    }
    r
}

pub(super) fn obj_of(v: &mut Value) -> Option<&mut serde_json::Map<String, Value>> {
    v.as_object_mut()
}

pub(super) fn obj_props(
    o: Option<&mut serde_json::Map<String, Value>>,
) -> Option<&mut serde_json::Map<String, Value>> {
    o?.get_mut("properties")?.as_object_mut()
}

pub(super) fn kind_of(k: &str) -> String {
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

pub(super) fn vm_nics(vm: &Value) -> Vec<String> {
    vm.pointer("/properties/networkProfile/networkInterfaces")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|n| n.get("id").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn set_pointer(v: &mut Value, pointer: &str, val: Value) {
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
