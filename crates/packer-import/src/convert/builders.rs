//! Builders: the Packer builder types to opsbake IaaS sections (options, SSH keys, user data, stemcells, outputs).

#[allow(unused_imports)]
use super::*;

/// Packer builder type to opsbake IaaS.
pub fn iaas_of(builder_type: &str) -> Option<Iaas> {
    Some(match builder_type {
        "amazon-ebs" => Iaas::Aws,
        "googlecompute" => Iaas::Gcp,
        "azure-arm" => Iaas::Azure,
        "vsphere-iso" | "vsphere-clone" => Iaas::Vsphere,
        "virtualbox-ovf" | "virtualbox-iso" | "qemu" => Iaas::Vbox,
        "null" => Iaas::Ssh,
        _ => return None,
    })
}

pub(super) fn hint(k: &str) -> Option<(&'static str, String)> {
    let cred = (
        "not converted: credentials are never part of an opsbake template",
        "opsbake reads them from the IaaS's usual environment and configuration files (see the IaaS guide in docs/)".to_string(),
    );
    let stemcell = (
        "replaced by the stemcell: opsbake builds from a BOSH stemcell",
        "pass the stemcell's path in the `stemcell_<iaas>` variable (stemcells.<iaas>)".to_string(),
    );
    Some(match k {
        "access_key" | "secret_key" | "token" | "profile" | "shared_credentials_file"
        | "account_file" | "credentials_file" | "client_id" | "client_secret" | "tenant_id"
        | "client_cert_path" | "client_jwt" | "object_id" | "use_azure_cli_auth" => cred,
        "source_ami" | "source_ami_filter" | "source_image" | "source_image_family"
        | "source_image_project_id" | "image_publisher" | "image_offer" | "image_sku"
        | "image_version" | "image_url" | "template" | "iso_url" | "iso_urls" | "iso_checksum"
        | "iso_checksum_type" | "iso_paths" | "source_path" | "disk_image" | "guest_os_type"
        | "os_type" => stemcell,
        "ssh_keypair_name" | "ssh_clear_authorized_keys" | "temporary_key_pair_name"
        | "ssh_agent_auth" => (
            "not converted: opsbake makes an ephemeral key per build and hands it in through the agent settings",
            "nothing, unless the image relies on this key pair".to_string(),
        ),
        "ssh_pty" | "ssh_handshake_attempts" | "ssh_disable_agent_forwarding"
        | "ssh_file_transfer_method" | "ssh_keep_alive_interval" | "ssh_read_write_timeout"
        | "pause_before_connecting" | "ssh_skip_nat_mapping" | "ssh_host_port_min"
        | "ssh_host_port_max" | "ssh_proxy_host" | "ssh_proxy_port" => (
            "not converted: opsbake's SSH transport handles this itself",
            "docs/ssh.md".to_string(),
        ),
        "shutdown_command" => (
            "not converted: opsbake shuts the VM down itself (after the hand-off)",
            "nothing, unless the command did more than shut down".to_string(),
        ),
        "boot_command" | "boot_wait" | "http_directory" | "http_port_min" | "http_port_max"
        | "floppy_files" | "cd_files" => (
            "not converted: a stemcell boots without an installer",
            "nothing for a stemcell-based image".to_string(),
        ),
        "run_tags" | "run_volume_tags" | "snapshot_tags" | "labels" | "azure_tags" => (
            "not converted: opsbake tags its temporary resources with `opsbake:build-id` and the image with `options.tags` where the IaaS has them",
            "whether a policy needs these tags".to_string(),
        ),
        "headless" | "vboxmanage" | "vboxmanage_post" | "qemuargs" | "guest_additions_mode"
        | "virtualbox_version_file" => (
            "not converted: opsbake runs the VM itself",
            "docs/virtualbox.md".to_string(),
        ),
        "skip_region_validation" | "skip_metadata_api_check" | "skip_credential_validation" => (
            "not converted: opsbake has no such check to skip",
            "nothing".to_string(),
        ),
        _ => return None,
    })
}

pub(super) fn user_data_note(cx: &mut Cx, y: &mut Y, p: &str, v: &Value, file: bool) {
    let content = if file {
        let s = lossy(v);
        cx.local(&s).and_then(|f| std::fs::read_to_string(f).ok())
    } else {
        Some(lossy(v))
    };
    let hands_key = content.as_deref().is_some_and(|c| {
        let c = c.to_ascii_lowercase();
        c.contains("ssh-rsa")
            || c.contains("ssh-ed25519")
            || c.contains("authorized_keys")
            || c.contains("public_keys")
            || c.contains("public_key")
            || (c.contains("agent") && c.contains("settings"))
    });
    if hands_key {
        cx.drop_into(
            y,
            p,
            v,
            "not converted: opsbake hands the key in through the agent settings: this user data is no longer needed",
            "nothing, unless it does more than hand in a key",
        );
    } else {
        cx.drop_into(
            y,
            p,
            v,
            "not converted: opsbake writes the user data itself (the BOSH agent settings with the build's key)",
            "what else this user data does; do it in a provisioning step",
        );
    }
}

/// Map the communicator settings every builder has.
pub(super) fn ssh_keys(cx: &mut Cx, o: &mut Obj, b: &mut Y) {
    let ssh = b.child("ssh");
    str_into(cx, o, "ssh_username", ssh, "user");
    str_into(cx, o, "ssh_host", ssh, "host");
    num_into(cx, o, "ssh_port", ssh, "port", 1);
    str_into(cx, o, "ssh_password", ssh, "password");
    path_into(cx, o, "ssh_private_key_file", ssh, "private_key_file");
    for k in ["ssh_timeout", "ssh_wait_timeout"] {
        str_into(cx, o, k, ssh, "login_timeout");
    }
    if let Some((p, v)) = o.take("ssh_interface") {
        let s = lossy(&v);
        let m = match s.as_str() {
            "public_ip" | "public_dns" => Some("public"),
            "private_ip" | "private_dns" => Some("private"),
            _ => None,
        };
        match m {
            Some(m) => {
                ssh.set("interface", Y::s(m));
                cx.mapped(&p);
                if s.ends_with("_dns") {
                    cx.note(
                        &p,
                        format!("`{s}` became `{m}` (opsbake connects to the address)"),
                        "that the address is reachable",
                    );
                }
            }
            None => cx.drop_into(
                ssh,
                &p,
                &v,
                "not converted: opsbake knows `public` and `private`",
                "ssh.interface",
            ),
        }
    }
    if let Some((p, v)) = o.take("ssh_bastion_host") {
        let mut bast = Y::map();
        match cx.val_str(&p, &v, Ctx::Value) {
            Some(h) => {
                bast.set("host", Y::s(h));
                cx.mapped(&p);
            }
            None => cx.drop_into(ssh, &p, &v, "not a string", "the value"),
        }
        num_into(cx, o, "ssh_bastion_port", &mut bast, "port", 1);
        str_into(cx, o, "ssh_bastion_username", &mut bast, "user");
        path_into(
            cx,
            o,
            "ssh_bastion_private_key_file",
            &mut bast,
            "private_key_file",
        );
        if bast.get("user").is_none() {
            let u = ssh.get("user").cloned().unwrap_or(Y::s("vcap"));
            bast.set("user", u);
        }
        ssh.set("bastion", bast);
    }
    if let Some((p, v)) = o.take("communicator") {
        if lossy(&v) == "ssh" {
            cx.mapped(&p);
        } else {
            cx.drop_into(
                b,
                &p,
                &v,
                "not converted: opsbake talks SSH only",
                "the image must accept SSH logins",
            );
        }
    }
}

pub(super) fn add_stemcell(vars: &mut Y, stemcells: &mut Y, iaas: Iaas, from: &str) {
    let name = format!("stemcell_{iaas}");
    let mut d = Y::map();
    d.set(
        "description",
        Y::s(format!(
            "Path of the BOSH stemcell .tgz for {iaas} (the Packer template started from {from})"
        )),
    );
    vars.set(&name, d);
    let mut s = Y::map();
    s.set("path", Y::s(format!("${{var.{name}}}")));
    stemcells.set(iaas.as_str(), s);
}

/// Convert one builder into `b` (a build entry). Returns a description of
/// the image source for the stemcell variable.
pub(super) fn convert_builder(
    cx: &mut Cx,
    ty: &str,
    o: &mut Obj,
    b: &mut Y,
    outputs: &mut Y,
) -> String {
    let mut opts = Y::map();
    let mut net = Y::map();
    let from = [
        "source_ami",
        "source_image",
        "source_image_family",
        "image_sku",
        "image_url",
        "template",
        "source_path",
        "iso_url",
        "iso_urls",
        "disk_image",
        "iso_paths",
    ]
    .iter()
    .find_map(|k| o.map.get(*k).map(|v| format!("{k} {}", shown(k, v))))
    .unwrap_or_else(|| "an image".to_string());
    match ty {
        "amazon-ebs" => {
            str_into(cx, o, "region", &mut opts, "region");
            list_into(cx, o, "ami_regions", &mut opts, "copy_regions");
            str_into(cx, o, "instance_type", &mut opts, "instance_type");
            str_into(cx, o, "ami_name", &mut opts, "ami_name");
            str_into(cx, o, "ami_description", &mut opts, "ami_description");
            bool_into(
                cx,
                o,
                "force_deregister",
                &mut opts,
                "force_deregister",
                false,
            );
            if let Some((p, v)) = o.take("force_delete_snapshot") {
                cx.drop_into(&mut opts, &p, &v, "not converted: opsbake's force_deregister also deletes the old AMI's snapshots", "docs/aws.md");
            }
            list_into(cx, o, "ami_users", &mut opts, "ami_users");
            list_into(cx, o, "ami_groups", &mut opts, "ami_groups");
            list_into(cx, o, "snapshot_users", &mut opts, "snapshot_users");
            bool_into(cx, o, "encrypt_boot", &mut opts, "encrypt", false);
            if let Some((p, v)) = o.take("kms_key_id") {
                let mut region = match opts.get("region") {
                    Some(Y::Str(r)) => r.clone(),
                    _ => "us-east-1".to_string(),
                };
                if let Some(d) = region
                    .strip_prefix("${var.")
                    .and_then(|r| r.strip_suffix('}'))
                    .and_then(|n| cx.var_defaults.get(n).cloned())
                {
                    cx.note(&p, format!("the key of `options.kms_key_ids` is the region's default `{d}` (opsbake does not interpolate map keys)"), "the region the AMI is built in");
                    region = d.clone();
                }
                match cx.val_str(&p, &v, Ctx::Value) {
                    Some(k) => {
                        opts.child("kms_key_ids").set(&region, Y::s(k));
                        cx.mapped(&p);
                    }
                    None => cx.drop_into(&mut opts, &p, &v, "not a string", "the value"),
                }
            }
            map_into(cx, o, "region_kms_key_ids", &mut opts, "kms_key_ids");
            map_into(cx, o, "tags", &mut opts, "tags");
            str_into(cx, o, "deprecate_at", &mut opts, "deprecate_at");
            str_into(cx, o, "security_group_id", &mut opts, "security_group_id");
            if let Some((p, v)) = o.take("security_group_ids") {
                match str_list(cx, &p, &v) {
                    Some(l) if l.len() == 1 => {
                        opts.set("security_group_id", Y::s(l[0].clone()));
                        cx.mapped(&p);
                    }
                    _ => cx.drop_into(
                        &mut opts,
                        &p,
                        &v,
                        "not converted: opsbake takes one security group",
                        "options.security_group_id",
                    ),
                }
            }
            str_into(cx, o, "custom_endpoint_ec2", &mut opts, "endpoint");
            if let Some((p, v)) = o.take("spot_price") {
                let s = lossy(&v);
                if s.is_empty() || s == "0" {
                    cx.mapped(&p);
                } else {
                    opts.set("spot", Y::Bool(true));
                    cx.mapped(&p);
                    cx.note(&p, format!("spot_price `{s}` became `spot: true` (opsbake bids the on-demand price)"), "a maximum price, if one is required");
                }
            }
            str_into(cx, o, "vpc_id", &mut net, "network");
            str_into(cx, o, "subnet_id", &mut net, "subnet");
            bool_into(
                cx,
                o,
                "associate_public_ip_address",
                &mut net,
                "public_ip",
                false,
            );
            list_into(
                cx,
                o,
                "temporary_security_group_source_cidrs",
                &mut net,
                "ssh_cidrs",
            );
            list_into(
                cx,
                o,
                "temporary_security_group_source_cidr",
                &mut net,
                "ssh_cidrs",
            );
            if let Some((p, v)) = o.take("launch_block_device_mappings") {
                let root = v
                    .as_array()
                    .and_then(|a| a.first())
                    .and_then(Value::as_object)
                    .cloned();
                let mut rest = Y::map();
                match root {
                    Some(m) if v.as_array().map(Vec::len) == Some(1) => {
                        let mut ro = Obj::new(format!("{p}[0]"), m);
                        num_into(cx, &mut ro, "volume_size", b, "disk", 1024);
                        if let Some((dp, _)) = ro.take("device_name") {
                            cx.mapped(&dp);
                        }
                        if let Some((dp, _)) = ro.take("delete_on_termination") {
                            cx.mapped(&dp);
                        }
                        ro.rest(cx, &mut rest, &|_| {
                            Some((
                                "not converted: opsbake sizes the root disk only (`disk`)",
                                "volume type and IOPS: the IaaS defaults apply".to_string(),
                            ))
                        });
                        cx.mapped(&p);
                    }
                    _ => cx.drop_into(
                        &mut rest,
                        &p,
                        &v,
                        "not converted: opsbake sizes the root disk only (`disk`)",
                        "extra volumes: attach them in a provisioning step or the IaaS",
                    ),
                }
                if let Y::Map(e) = rest {
                    if let Y::Map(be) = b {
                        be.extend(e);
                    }
                }
            }
            for k in ["user_data_file", "user_data"] {
                if let Some((p, v)) = o.take(k) {
                    user_data_note(cx, b, &p, &v, k == "user_data_file");
                }
            }
        }
        "googlecompute" => {
            str_into(cx, o, "project_id", &mut opts, "project_id");
            str_into(cx, o, "zone", &mut opts, "zone");
            str_into(cx, o, "machine_type", &mut opts, "machine_type");
            str_into(cx, o, "image_name", &mut opts, "image_name");
            str_into(cx, o, "image_family", &mut opts, "image_family");
            num_into(cx, o, "disk_size", b, "disk", 1024);
            str_into(cx, o, "network", &mut net, "network");
            str_into(cx, o, "subnetwork", &mut net, "subnet");
            bool_into(cx, o, "omit_external_ip", &mut net, "public_ip", true);
            if let Some((p, v)) = o.take("use_internal_ip") {
                if v == Value::Bool(true) {
                    b.child("ssh").set("interface", Y::s("private"));
                }
                cx.mapped(&p);
            }
            for k in ["startup_script_file", "metadata_files", "metadata"] {
                if let Some((p, v)) = o.take(k) {
                    user_data_note(cx, b, &p, &v, k == "startup_script_file");
                }
            }
        }
        "azure-arm" => {
            str_into(cx, o, "subscription_id", &mut opts, "subscription_id");
            str_into(
                cx,
                o,
                "managed_image_resource_group_name",
                &mut opts,
                "resource_group",
            );
            str_into(cx, o, "location", &mut opts, "location");
            str_into(cx, o, "vm_size", &mut opts, "vm_size");
            str_into(cx, o, "storage_account", &mut opts, "storage_account");
            str_into(cx, o, "managed_image_name", &mut opts, "image_name");
            num_into(cx, o, "os_disk_size_gb", b, "disk", 1024);
            str_into(cx, o, "virtual_network_name", &mut net, "network");
            str_into(cx, o, "virtual_network_subnet_name", &mut net, "subnet");
            for k in ["custom_data_file", "custom_data", "user_data_file"] {
                if let Some((p, v)) = o.take(k) {
                    user_data_note(cx, b, &p, &v, k.ends_with("_file"));
                }
            }
        }
        "vsphere-iso" | "vsphere-clone" => {
            if let Some((p, v)) = o.take("vcenter_server") {
                match cx.val_str(&p, &v, Ctx::Value) {
                    Some(s) => {
                        let url = if s.contains("://") {
                            s
                        } else {
                            format!("https://{s}/sdk")
                        };
                        cx.note(
                            &p,
                            format!("became `options.url: {url}`"),
                            "the vCenter URL",
                        );
                        opts.set("url", Y::s(url));
                        cx.mapped(&p);
                    }
                    None => cx.drop_into(&mut opts, &p, &v, "not a string", "the value"),
                }
            }
            str_into(cx, o, "username", &mut opts, "username");
            str_into(cx, o, "password", &mut opts, "password");
            bool_into(cx, o, "insecure_connection", &mut opts, "insecure", false);
            for k in [
                "datacenter",
                "cluster",
                "datastore",
                "resource_pool",
                "folder",
            ] {
                str_into(cx, o, k, &mut opts, k);
            }
            str_into(cx, o, "network", &mut opts, "network");
            num_into(cx, o, "CPUs", b, "cpus", 1);
            num_into(cx, o, "RAM", b, "memory", 1);
            num_into(cx, o, "disk_size", b, "disk", 1);
            if let Some((p, v)) = o.take("storage") {
                match v.as_array().map(|a| a.as_slice()) {
                    Some([Value::Object(m)]) => {
                        let mut so = Obj::new(format!("{p}[0]"), m.clone());
                        num_into(cx, &mut so, "disk_size", b, "disk", 1);
                        so.rest(cx, b, &|_| {
                            Some((
                                "not converted: opsbake sizes the root disk only",
                                "the IaaS defaults apply (thin provisioning)".to_string(),
                            ))
                        });
                        cx.mapped(&p);
                    }
                    _ => cx.drop_into(
                        b,
                        &p,
                        &v,
                        "not converted: opsbake sizes the root disk only (`disk`)",
                        "extra disks",
                    ),
                }
            }
            if let Some((p, v)) = o.take("network_adapters") {
                match v.as_array().map(|a| a.as_slice()) {
                    Some([Value::Object(m)]) => {
                        let mut no = Obj::new(format!("{p}[0]"), m.clone());
                        str_into(cx, &mut no, "network", &mut opts, "network");
                        no.rest(cx, b, &|_| {
                            Some((
                                "not converted: opsbake keeps the stemcell's network card",
                                "nothing for a stemcell-based image".to_string(),
                            ))
                        });
                        cx.mapped(&p);
                    }
                    _ => cx.drop_into(
                        b,
                        &p,
                        &v,
                        "not converted: opsbake attaches one network (`options.network`)",
                        "extra networks",
                    ),
                }
            }
        }
        "virtualbox-ovf" | "virtualbox-iso" | "qemu" => {
            if ty == "qemu" {
                opts.set("engine", Y::s("qemu"));
                if let Some((p, v)) = o.take("accelerator") {
                    match lossy(&v).as_str() {
                        a @ ("kvm" | "tcg") => {
                            opts.set("accel", Y::s(a));
                            cx.mapped(&p);
                        }
                        "none" => cx.mapped(&p),
                        _ => cx.drop_into(
                            &mut opts,
                            &p,
                            &v,
                            "not converted: opsbake knows kvm and tcg",
                            "options.accel",
                        ),
                    }
                }
                if let Some((p, v)) = o.take("format") {
                    cx.drop_into(
                        &mut opts,
                        &p,
                        &v,
                        "not converted: opsbake's vbox build writes an OVA (outputs.formats)",
                        "the artifact format",
                    );
                }
            } else if let Some((p, v)) = o.take("format") {
                if lossy(&v) == "ova" {
                    outputs.set("formats", seq(vec![Y::s("ova")]));
                    cx.mapped(&p);
                } else {
                    cx.drop_into(
                        &mut opts,
                        &p,
                        &v,
                        "not converted: opsbake's vbox build writes an OVA",
                        "the artifact format",
                    );
                }
            }
            str_into(cx, o, "vm_name", &mut opts, "vm_name");
            num_into(cx, o, "cpus", b, "cpus", 1);
            num_into(cx, o, "memory", b, "memory", 1);
            num_into(cx, o, "disk_size", b, "disk", 1);
            str_into(cx, o, "shutdown_timeout", &mut opts, "shutdown_timeout");
            if let Some((p, v)) = o.take("output_directory") {
                match cx.path(&p, &v) {
                    Some(d) if outputs.get("directory").is_none() => {
                        outputs.set("directory", Y::s(d));
                        cx.mapped(&p);
                    }
                    _ => cx.drop_into(
                        &mut opts,
                        &p,
                        &v,
                        "not converted: one output directory per template",
                        "outputs.directory",
                    ),
                }
            }
        }
        "null" => {
            // The ssh builder refuses a loopback host unless allowed.
            if let Some(Value::String(h)) = o.map.get("ssh_host") {
                if h == "localhost" || h.starts_with("127.") || h == "::1" {
                    opts.set("allow_loopback", Y::Bool(true));
                }
            }
        }
        _ => {}
    }
    ssh_keys(cx, o, b);
    let mut entries = Y::map();
    for k in ["cpus", "memory", "disk"] {
        if let Some(v) = b.get(k) {
            entries.set(k, v.clone());
        }
    }
    if net != Y::map() {
        entries.set("network", net);
    }
    if let Some(s) = b.get("ssh") {
        if *s != Y::map() {
            entries.set("ssh", s.clone());
        }
    }
    if opts != Y::map() {
        entries.set("options", opts);
    }
    // Comments collected in `b` go after the entries.
    if let Y::Map(e) = b {
        let comments: Vec<_> = e.iter().filter(|x| x.kv.is_none()).cloned().collect();
        if let Y::Map(out) = &mut entries {
            out.extend(comments);
        }
    }
    *b = entries;
    from
}

pub(super) fn iaas_list(
    cx: &mut Cx,
    p: &str,
    v: &Value,
    names: &HashMap<String, Iaas>,
    y: &mut Y,
) -> Vec<Y> {
    let mut out: Vec<Y> = Vec::new();
    let list = match v {
        Value::Array(a) => a.clone(),
        other => vec![other.clone()],
    };
    for (i, n) in list.iter().enumerate() {
        let s = lossy(n);
        match names.get(&s) {
            Some(iaas) => {
                let y = Y::s(iaas.as_str());
                if !out.contains(&y) {
                    out.push(y);
                }
            }
            None => {
                let c = cx.note(
                    &format!("{p}[{i}]"),
                    format!("builder `{s}` was not converted: dropped from the list"),
                    "the step's builds",
                );
                y.comment(&[c]);
            }
        }
    }
    out
}

pub(super) fn looks_like_handoff(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    let vcap = t.contains("vcap");
    vcap && (t.contains("sudoers")
        || t.contains("deluser vcap")
        || t.contains("gpasswd -d vcap")
        || t.contains("passwd -l vcap")
        || t.contains("usermod -l vcap")
        || t.contains("usermod --lock vcap"))
}

/// Packer's `override: {BUILDER: {key: value}}` as opsbake steps: one step
/// per overridden builder (`only: [it]`, the settings merged) and the step
/// without overrides for the other builders (`except: [them]`).
pub(super) fn split_overrides(
    cx: &mut Cx,
    p: &str,
    v: &Value,
    names: &HashMap<String, Iaas>,
) -> Vec<(Value, Option<String>)> {
    let Some(Value::Object(ov)) = v.get("override") else {
        return vec![(v.clone(), None)];
    };
    let Some(base) = v.as_object() else {
        return vec![(v.clone(), None)];
    };
    let mut base = base.clone();
    base.remove("override");
    cx.mapped(&format!("{p}.override"));
    let list = |k: &str| -> Vec<String> {
        match base.get(k) {
            Some(Value::Array(a)) => a.iter().map(lossy).collect(),
            _ => Vec::new(),
        }
    };
    let (only, except) = (list("only"), list("except"));
    let mut out = Vec::new();
    let mut overridden = Vec::new();
    for (name, settings) in ov {
        let kp = format!("{p}.override.{name}");
        let applies = (only.is_empty() || only.contains(name)) && !except.contains(name);
        let (Some(_), Value::Object(settings), true) = (names.get(name), settings, applies) else {
            cx.note(&kp, "an override for a builder that was not converted or does not run this step: not converted", "nothing");
            continue;
        };
        let mut variant = base.clone();
        variant.remove("except");
        variant.insert(
            "only".into(),
            Value::Array(vec![Value::String(name.clone())]),
        );
        for (k, x) in settings {
            variant.insert(k.clone(), x.clone());
        }
        let c = cx.note(
            &kp,
            format!("the override became its own step with `only: [{name}]`"),
            "the step's settings for that build",
        );
        overridden.push(Value::String(name.clone()));
        out.push((Value::Object(variant), Some(c)));
    }
    if !overridden.is_empty() {
        let mut ex: Vec<Value> = except.iter().cloned().map(Value::String).collect();
        ex.extend(overridden);
        base.insert("except".into(), Value::Array(ex));
    }
    // The step for the other builders comes first, then the overridden
    // ones: each build runs exactly one of them, at this position.
    let rest_runs = only.is_empty()
        || only.iter().any(|n| {
            !out.iter()
                .any(|(v, _)| v.get("only").and_then(|o| o.get(0)).map(lossy).as_deref() == Some(n))
        });
    let mut all = Vec::new();
    if rest_runs {
        all.push((Value::Object(base), None));
    }
    all.extend(out);
    all
}
