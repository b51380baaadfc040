//! The REST routes of the Compute Engine v1 API the builder calls.

#[allow(unused_imports)]
use super::*;

pub(super) fn lock(st: &Arc<Mutex<State>>) -> std::sync::MutexGuard<'_, State> {
    match st.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// `instances.insert`, `zoneOperations.get`... from the route.
pub(super) fn route_name(method: &str, segs: &[String]) -> String {
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
pub(super) fn route(
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
