//! PUT of each resource type the ARM test server holds: the checks ARM
//! makes (references exist, NICs not in use, images and sizes known,
//! customData is base64, VHD blobs are fixed VHDs) and the operation that
//! finishes the create.

use super::ops::{kind_of, location_of, obj_of, obj_props, set_pointer, vm_nics};
use super::*;

impl Ctx {
    #[allow(clippy::too_many_lines)]
    pub(super) fn put(&self, id: &str, kind: &str, name: &str, rg: &str, body: Value) -> Resp {
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
                        "creationData": {"createOption": "FromImage", "imageReference": img.clone()},
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
                    let copy = s
                        .store
                        .path()
                        .join(format!("image-{}.vhd", s.image_copies.len()));
                    drop(s);
                    let checked = super::vhd::check_vhd_blob(uri, &copy);
                    s = lock(&self.st);
                    if checked.is_ok() {
                        s.image_copies.insert(key.clone(), copy);
                    }
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
}
