//! instances.insert and images.insert: request ids, the operations, the raw disk read from fake-gcs-server.

#[allow(unused_imports)]
use super::*;

pub(super) fn fingerprint(v: &Value) -> String {
    let h = sha2::Sha256::digest(v.to_string().as_bytes());
    hex::encode(&h[..8])
}

/// An insert with a `requestId` seen before answers the same operation.
pub(super) fn request_seen(
    s: &mut State,
    project: &str,
    q: &HashMap<String, String>,
) -> Option<Answer> {
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

pub(super) fn remember_request(
    s: &mut State,
    project: &str,
    q: &HashMap<String, String>,
    op: &Value,
) {
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

pub(super) fn instance_insert(
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

pub(super) fn image_insert(
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
pub(super) async fn read_raw_disk(gcs: Option<&str>, src: &str) -> RawDisk {
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
