//! Packer 1.x JSON (as a `serde_json::Value`) to an opsbake template.
//! HCL2 templates are first turned into the same JSON shape (see `hcl.rs`).
//!
//! Every key is either mapped (recorded in [`Conversion::mapped`]) or left
//! as a YAML comment at its place plus a [`Note`]: keys are taken out of
//! each Packer object as they are mapped, and whatever is left at the end is
//! reported.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use opsbake_core::template::Iaas;
use serde_json::{Map, Value};

use crate::expr::{translate, Ctx};
use crate::yaml::{Item, Y};

/// One line of the report: something that was not mapped one to one.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    /// The key path in the Packer file (`builders[0].source_ami`).
    pub key: String,
    /// `file:line:column` (or `file:line`) where the parser gives it.
    pub place: Option<String>,
    /// What the importer did.
    pub action: String,
    /// What the user should check.
    pub check: String,
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(p) = &self.place {
            write!(f, "{p}: ")?;
        }
        write!(f, "{}: {}; check: {}", self.key, self.action, self.check)
    }
}

/// A converted template.
#[derive(Debug, Clone)]
pub struct Conversion {
    /// The opsbake template (YAML, with comments).
    pub yaml: String,
    /// Everything that was not mapped one to one.
    pub notes: Vec<Note>,
    /// Packer key paths mapped into the template.
    pub mapped: Vec<String>,
    /// Packer builder name to opsbake IaaS, for the builders converted.
    pub builds: Vec<(String, Iaas)>,
}

/// Conversion state.
pub(crate) struct Cx {
    /// Display name of the Packer file.
    pub file: String,
    /// The Packer template's directory.
    pub packer_dir: PathBuf,
    /// That directory relative to the new template's (`.` if the same).
    pub rel: String,
    /// Key path to `file:line:col`.
    pub places: HashMap<String, String>,
    pub notes: Vec<Note>,
    pub mapped: Vec<String>,
    env_vars: BTreeSet<String>,
    used_vars: BTreeSet<String>,
    /// Variables used whole as a local path (their defaults are rebased).
    path_vars: BTreeSet<String>,
    /// Literal variable defaults (for map keys, which opsbake does not
    /// interpolate).
    var_defaults: HashMap<String, String>,
}

fn lossy(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn is_secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "access_key",
        "private_key",
        "account_file",
        "credential",
    ]
    .iter()
    .any(|s| k.contains(s))
}

fn shown(key: &str, v: &Value) -> String {
    let last = key.rsplit('.').next().unwrap_or(key);
    if is_secret_key(last) {
        return "not shown".to_string();
    }
    let s = v.to_string();
    if s.chars().count() > 100 {
        let cut: String = s.chars().take(100).collect();
        format!("{cut}...")
    } else {
        s
    }
}

impl Cx {
    pub fn new(
        file: String,
        packer_dir: PathBuf,
        rel: String,
        places: HashMap<String, String>,
    ) -> Cx {
        Cx {
            file,
            packer_dir,
            rel,
            places,
            notes: Vec::new(),
            mapped: Vec::new(),
            env_vars: BTreeSet::new(),
            used_vars: BTreeSet::new(),
            path_vars: BTreeSet::new(),
            var_defaults: HashMap::new(),
        }
    }

    fn place(&self, key: &str) -> Option<String> {
        // The place of the key, else of its closest parent.
        let mut k = key;
        loop {
            if let Some(p) = self.places.get(k) {
                return Some(p.clone());
            }
            let cut = k.rfind(['.', '[']);
            match cut {
                Some(i) => k = &k[..i],
                None => return None,
            }
        }
    }

    /// Record a report line; returns the comment text for the YAML.
    pub fn note(
        &mut self,
        key: &str,
        action: impl Into<String>,
        check: impl Into<String>,
    ) -> String {
        let n = Note {
            key: key.to_string(),
            place: self.place(key),
            action: action.into(),
            check: check.into(),
        };
        let c = format!("packer {}: {}. Check: {}", n.key, n.action, n.check);
        self.notes.push(n);
        c
    }

    fn mapped(&mut self, key: &str) {
        self.mapped.push(key.to_string());
    }

    /// Report `key = value` as not converted, with a comment in `y`.
    fn drop_into(&mut self, y: &mut Y, key: &str, v: &Value, action: &str, check: &str) {
        let shown = shown(key, v);
        let action = if shown == "not shown" {
            format!("{action} (value not shown)")
        } else {
            format!("{action} (value {shown})")
        };
        let c = self.note(key, action, check);
        y.comment(&[c]);
    }

    fn tr(&mut self, key: &str, s: &str, cx: Ctx) -> String {
        let t = translate(s, cx, &self.rel);
        for (a, c) in t.notes {
            self.note(key, a, c);
        }
        for e in t.env_outside_default {
            self.env_vars.insert(e);
        }
        for v in t.vars {
            self.used_vars.insert(v);
        }
        t.text
    }

    /// A scalar as a translated string.
    fn val_str(&mut self, key: &str, v: &Value, cx: Ctx) -> Option<String> {
        match v {
            Value::String(s) => Some(self.tr(key, s, cx)),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// A local path, relative to the new template's directory.
    fn path(&mut self, key: &str, v: &Value) -> Option<String> {
        let s = self.val_str(key, v, Ctx::Value)?;
        if let Some(name) = s.strip_prefix("${var.").and_then(|r| r.strip_suffix('}')) {
            if !name.contains('}') {
                self.path_vars.insert(name.to_string());
            }
        }
        Some(self.rebase(&s))
    }

    pub fn rebase(&self, s: &str) -> String {
        if s.is_empty()
            || s.starts_with('/')
            || s.starts_with("${")
            || s.starts_with('~')
            || self.rel == "."
        {
            return s.to_string();
        }
        let mut parts: Vec<&str> = self.rel.split('/').filter(|p| !p.is_empty()).collect();
        for p in s.split('/') {
            match p {
                "." | "" => {}
                ".." if parts.last().is_some_and(|l| *l != "..") => {
                    parts.pop();
                }
                other => parts.push(other),
            }
        }
        let mut out = parts.join("/");
        if out.is_empty() {
            out = ".".to_string();
        }
        if s.ends_with('/') {
            out.push('/');
        }
        out
    }

    /// The local file a Packer path names, when it is a literal.
    fn local(&self, s: &str) -> Option<PathBuf> {
        if s.contains("{{") || s.contains("${") {
            return None;
        }
        let p = Path::new(s);
        Some(if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.packer_dir.join(p)
        })
    }
}

/// A Packer object whose keys are taken out as they are mapped.
struct Obj {
    path: String,
    map: Map<String, Value>,
}

impl Obj {
    fn new(path: String, map: Map<String, Value>) -> Obj {
        Obj { path, map }
    }

    fn key(&self, k: &str) -> String {
        if self.path.is_empty() {
            k.to_string()
        } else {
            format!("{}.{k}", self.path)
        }
    }

    fn take(&mut self, k: &str) -> Option<(String, Value)> {
        let v = self.map.remove(k)?;
        Some((self.key(k), v))
    }

    /// Comments (`_comment`, `_x`): Packer ignores keys starting with `_`.
    fn take_comments(&mut self, cx: &mut Cx, y: &mut Y) {
        let keys: Vec<String> = self
            .map
            .keys()
            .filter(|k| k.starts_with('_'))
            .cloned()
            .collect();
        for k in keys {
            if let Some((p, v)) = self.take(&k) {
                cx.mapped(&p);
                y.comment(&[format!("{k}: {}", lossy(&v))]);
            }
        }
    }

    /// Report every key left.
    fn rest(self, cx: &mut Cx, y: &mut Y, hint: &dyn Fn(&str) -> Option<(&'static str, String)>) {
        let path = self.path.clone();
        for (k, v) in self.map {
            let key = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            let (action, check) = hint(&k).unwrap_or((
                "not converted: opsbake has no equivalent",
                "whether the image needs it; docs/migrating-from-packer.md".to_string(),
            ));
            cx.drop_into(y, &key, &v, action, &check);
        }
    }
}

fn str_into(cx: &mut Cx, o: &mut Obj, k: &str, y: &mut Y, tk: &str) {
    if let Some((p, v)) = o.take(k) {
        match cx.val_str(&p, &v, Ctx::Value) {
            Some(s) => {
                y.set(tk, Y::s(s));
                cx.mapped(&p);
            }
            None => cx.drop_into(y, &p, &v, "not a string: not converted", "the value"),
        }
    }
}

fn path_into(cx: &mut Cx, o: &mut Obj, k: &str, y: &mut Y, tk: &str) {
    if let Some((p, v)) = o.take(k) {
        match cx.path(&p, &v) {
            Some(s) => {
                y.set(tk, Y::s(s));
                cx.mapped(&p);
            }
            None => cx.drop_into(y, &p, &v, "not a string: not converted", "the path"),
        }
    }
}

fn bool_into(cx: &mut Cx, o: &mut Obj, k: &str, y: &mut Y, tk: &str, invert: bool) {
    if let Some((p, v)) = o.take(k) {
        let b = match &v {
            Value::Bool(b) => Some(*b),
            Value::String(s) if s == "true" || s == "false" => Some(s == "true"),
            _ => None,
        };
        match b {
            Some(b) => {
                y.set(tk, Y::Bool(b != invert));
                cx.mapped(&p);
            }
            None => cx.drop_into(
                y,
                &p,
                &v,
                "not a literal true/false (opsbake takes only literal booleans here): not converted",
                "set it in the template",
            ),
        }
    }
}

/// A number, or a string with references (opsbake reads both).
fn num_into(cx: &mut Cx, o: &mut Obj, k: &str, y: &mut Y, tk: &str, factor: i64) {
    if let Some((p, v)) = o.take(k) {
        let n = match &v {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => {
                let s = s.trim();
                if let Ok(n) = s.parse::<i64>() {
                    Some(n)
                } else if let Some(g) = s.strip_suffix('G').or(s.strip_suffix("GB")) {
                    g.parse::<i64>().ok().map(|g| g * 1024 / factor.max(1))
                } else if let Some(m) = s.strip_suffix('M').or(s.strip_suffix("MB")) {
                    m.parse::<i64>().ok().map(|m| m / factor.max(1))
                } else {
                    None
                }
            }
            _ => None,
        };
        match (n, &v) {
            (Some(n), _) => {
                y.set(tk, Y::Int(n * factor));
                cx.mapped(&p);
            }
            (None, Value::String(s)) if factor == 1 => {
                let t = cx.tr(&p, s, Ctx::Value);
                y.set(tk, Y::s(t));
                cx.mapped(&p);
            }
            _ => cx.drop_into(
                y,
                &p,
                &v,
                "not a number opsbake can convert (GiB to MiB needs a literal): not converted",
                &format!("set `{tk}` (MiB) in the template"),
            ),
        }
    }
}

fn str_list(cx: &mut Cx, p: &str, v: &Value) -> Option<Vec<String>> {
    match v {
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, x)| cx.val_str(&format!("{p}[{i}]"), x, Ctx::Value))
            .collect(),
        Value::String(_) | Value::Number(_) => cx.val_str(p, v, Ctx::Value).map(|s| vec![s]),
        _ => None,
    }
}

fn list_into(cx: &mut Cx, o: &mut Obj, k: &str, y: &mut Y, tk: &str) {
    if let Some((p, v)) = o.take(k) {
        match str_list(cx, &p, &v) {
            Some(l) => {
                let mut items: Vec<Y> = match y.get(tk) {
                    Some(Y::Seq(existing)) => {
                        existing.iter().filter_map(|i| i.value.clone()).collect()
                    }
                    _ => Vec::new(),
                };
                items.extend(l.into_iter().map(Y::Str));
                y.set(tk, seq(items));
                cx.mapped(&p);
            }
            None => cx.drop_into(
                y,
                &p,
                &v,
                "not a list of strings: not converted",
                "the value",
            ),
        }
    }
}

fn map_into(cx: &mut Cx, o: &mut Obj, k: &str, y: &mut Y, tk: &str) {
    if let Some((p, v)) = o.take(k) {
        match &v {
            Value::Object(m) => {
                let t = y.child(tk);
                for (mk, mv) in m {
                    let kp = format!("{p}.{mk}");
                    match cx.val_str(&kp, mv, Ctx::Value) {
                        Some(s) => t.set(mk, Y::s(s)),
                        None => {
                            cx.drop_into(t, &kp, mv, "not a string: not converted", "the value")
                        }
                    }
                }
                cx.mapped(&p);
            }
            _ => cx.drop_into(y, &p, &v, "not a map: not converted", "the value"),
        }
    }
}

pub(crate) fn seq(items: Vec<Y>) -> Y {
    Y::Seq(
        items
            .into_iter()
            .map(|v| Item {
                comments: Vec::new(),
                value: Some(v),
            })
            .collect(),
    )
}

fn json_to_y(cx: &mut Cx, p: &str, v: &Value) -> Y {
    match v {
        Value::Null => Y::Null,
        Value::Bool(b) => Y::Bool(*b),
        Value::Number(n) => Y::Num(n.to_string()),
        Value::String(s) => Y::Str(cx.tr(p, s, Ctx::Value)),
        Value::Array(a) => seq(a
            .iter()
            .enumerate()
            .map(|(i, x)| json_to_y(cx, &format!("{p}[{i}]"), x))
            .collect()),
        Value::Object(m) => {
            let mut y = Y::map();
            for (k, x) in m {
                let c = json_to_y(cx, &format!("{p}.{k}"), x);
                y.set(k, c);
            }
            y
        }
    }
}

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

fn hint(k: &str) -> Option<(&'static str, String)> {
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

fn user_data_note(cx: &mut Cx, y: &mut Y, p: &str, v: &Value, file: bool) {
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
fn ssh_keys(cx: &mut Cx, o: &mut Obj, b: &mut Y) {
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

fn add_stemcell(vars: &mut Y, stemcells: &mut Y, iaas: Iaas, from: &str) {
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
fn convert_builder(cx: &mut Cx, ty: &str, o: &mut Obj, b: &mut Y, outputs: &mut Y) -> String {
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

fn iaas_list(cx: &mut Cx, p: &str, v: &Value, names: &HashMap<String, Iaas>, y: &mut Y) -> Vec<Y> {
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

fn looks_like_handoff(text: &str) -> bool {
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
fn split_overrides(
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

/// Convert one provisioner; the item it becomes.
fn convert_provisioner(cx: &mut Cx, p: &str, v: &Value, names: &HashMap<String, Iaas>) -> Item {
    let Some(m) = v.as_object() else {
        let c = cx.note(p, "not an object: not converted", "the provisioner");
        return Item {
            comments: vec![c],
            value: None,
        };
    };
    let mut o = Obj::new(p.to_string(), m.clone());
    let ty = o.take("type").map(|(tp, t)| {
        cx.mapped(&tp);
        lossy(&t)
    });
    let Some(ty) = ty else {
        let c = cx.note(p, "no `type`: not converted", "the provisioner");
        return Item {
            comments: vec![c],
            value: None,
        };
    };
    let mut y = Y::map();
    o.take_comments(cx, &mut y);
    let supported = matches!(
        ty.as_str(),
        "file" | "shell" | "shell-local" | "chef-solo" | "breakpoint"
    );
    if !supported {
        let c = cx.note(
            p,
            format!("provisioner type `{ty}` has no opsbake equivalent: not converted"),
            "run it from a `shell` step (opsbake has file, shell, shell-local, chef-solo, breakpoint, handoff)",
        );
        for k in o.map.keys() {
            cx.mapped.push(format!("{p}.{k}"));
        }
        return Item {
            comments: vec![c],
            value: None,
        };
    }
    y.set("type", Y::s(ty.clone()));
    str_into(cx, &mut o, "name", &mut y, "name");
    for k in ["only", "except"] {
        if let Some((kp, kv)) = o.take(k) {
            let l = iaas_list(cx, &kp, &kv, names, &mut y);
            if l.is_empty() && k == "only" {
                let mut c: Vec<String> = match &y {
                    Y::Map(e) => e.iter().flat_map(|e| e.comments.clone()).collect(),
                    _ => Vec::new(),
                };
                c.push(cx.note(
                    &kp,
                    "the step runs only for builders that were not converted: not converted",
                    "the step",
                ));
                for k in o.map.keys() {
                    cx.mapped.push(format!("{p}.{k}"));
                }
                return Item {
                    comments: c,
                    value: None,
                };
            }
            if !l.is_empty() {
                y.set(k, seq(l));
            }
            cx.mapped(&kp);
        }
    }
    str_into(cx, &mut o, "pause_before", &mut y, "pause_before");
    str_into(cx, &mut o, "timeout", &mut y, "timeout");
    num_into(cx, &mut o, "max_retries", &mut y, "max_retries", 1);
    if let Some((kp, kv)) = o.take("override") {
        cx.drop_into(
            &mut y,
            &kp,
            &kv,
            "not converted: opsbake has no per-builder overrides of a step",
            "write one step per IaaS with `only:`",
        );
    }
    let mut scan = String::new();
    match ty.as_str() {
        "file" => {
            let dir_down = o
                .map
                .get("direction")
                .map(lossy)
                .unwrap_or_else(|| "upload".into());
            str_into(cx, &mut o, "direction", &mut y, "direction");
            let mut dest_suffix: Option<String> = None;
            if let Some((kp, kv)) = o.take("source") {
                if dir_down == "upload" {
                    match cx.path(&kp, &kv) {
                        Some(s) => {
                            let raw = lossy(&kv);
                            if !raw.ends_with('/') && cx.local(&raw).is_some_and(|l| l.is_dir()) {
                                let base = Path::new(raw.trim_end_matches('/'))
                                    .file_name()
                                    .map(|b| b.to_string_lossy().into_owned())
                                    .unwrap_or_default();
                                dest_suffix = Some(base);
                            }
                            y.set("source", Y::s(s));
                            cx.mapped(&kp);
                        }
                        None => cx.drop_into(&mut y, &kp, &kv, "not a string", "the source"),
                    }
                } else {
                    match cx.val_str(&kp, &kv, Ctx::Value) {
                        Some(s) => {
                            y.set("source", Y::s(s));
                            cx.mapped(&kp);
                        }
                        None => cx.drop_into(&mut y, &kp, &kv, "not a string", "the source"),
                    }
                }
            }
            if let Some((kp, kv)) = o.take("sources") {
                match str_list(cx, &kp, &kv) {
                    Some(l) => {
                        y.set(
                            "sources",
                            seq(l.iter().map(|s| Y::s(cx.rebase(s))).collect()),
                        );
                        cx.mapped(&kp);
                    }
                    None => cx.drop_into(&mut y, &kp, &kv, "not a list", "the sources"),
                }
            }
            str_into(cx, &mut o, "content", &mut y, "content");
            if let Some((kp, kv)) = o.take("destination") {
                let d = if dir_down == "download" {
                    cx.path(&kp, &kv)
                } else {
                    cx.val_str(&kp, &kv, Ctx::Value)
                };
                match d {
                    Some(mut d) => {
                        if let Some(base) = dest_suffix {
                            d = format!("{}/{base}", d.trim_end_matches('/'));
                            cx.note(&kp, format!("destination became `{d}`: Packer uploads a directory named without a trailing `/` into the destination, opsbake uploads a directory's contents"), "the files land where they did");
                        }
                        y.set("destination", Y::s(d));
                        cx.mapped(&kp);
                    }
                    None => cx.drop_into(&mut y, &kp, &kv, "not a string", "the destination"),
                }
            }
            if let Some((kp, kv)) = o.take("generated") {
                cx.mapped(&kp);
                if kv == Value::Bool(true) {
                    let exists = m
                        .get("source")
                        .map(lossy)
                        .and_then(|s| cx.local(&s))
                        .is_some_and(|l| l.exists());
                    if !exists {
                        let c = cx.note(&kp, "a generated source: the step was not converted (opsbake checks every source at validate time)", "make the file before `opsbake build` and add the step back");
                        for k in o.map.keys() {
                            cx.mapped.push(format!("{p}.{k}"));
                        }
                        return Item {
                            comments: vec![c],
                            value: None,
                        };
                    }
                    cx.note(
                        &kp,
                        "a generated source: opsbake checks every source at validate time",
                        "the file must exist before `opsbake build`",
                    );
                }
            }
        }
        "shell" | "shell-local" => {
            let local = ty == "shell-local";
            if let Some((kp, kv)) = o.take("command") {
                match cx.val_str(&kp, &kv, Ctx::Value) {
                    Some(c) => {
                        scan.push_str(&c);
                        y.set("inline", seq(vec![Y::s(c)]));
                        cx.mapped(&kp);
                    }
                    None => cx.drop_into(&mut y, &kp, &kv, "not a string", "the command"),
                }
            }
            if let Some((kp, kv)) = o.take("inline") {
                match str_list(cx, &kp, &kv) {
                    Some(l) => {
                        for c in &l {
                            scan.push_str(c);
                            scan.push('\n');
                        }
                        y.set("inline", seq(l.into_iter().map(Y::Str).collect()));
                        cx.mapped(&kp);
                    }
                    None => cx.drop_into(&mut y, &kp, &kv, "not a list of strings", "the commands"),
                }
            }
            for k in ["script", "scripts"] {
                if let Some((kp, kv)) = o.take(k) {
                    match str_list(cx, &kp, &kv) {
                        Some(l) => {
                            for s in &l {
                                if let Some(t) =
                                    cx.local(s).and_then(|f| std::fs::read_to_string(f).ok())
                                {
                                    scan.push_str(&t);
                                }
                            }
                            let l: Vec<Y> = l.iter().map(|s| Y::s(cx.rebase(s))).collect();
                            match (k, l.len()) {
                                ("script", 1) => {
                                    y.set("script", l.into_iter().next().unwrap_or(Y::s("")))
                                }
                                _ => y.set("scripts", seq(l)),
                            }
                            cx.mapped(&kp);
                        }
                        None => cx.drop_into(
                            &mut y,
                            &kp,
                            &kv,
                            "not a path or list of paths",
                            "the scripts",
                        ),
                    }
                }
            }
            if let Some((kp, kv)) = o.take("environment_vars") {
                let mut env = Y::map();
                let list: Vec<(String, Value)> = match &kv {
                    Value::Array(a) => a
                        .iter()
                        .enumerate()
                        .map(|(i, x)| (format!("{kp}[{i}]"), x.clone()))
                        .collect(),
                    Value::Object(m) => m
                        .iter()
                        .map(|(k, x)| {
                            (
                                format!("{kp}.{k}"),
                                Value::String(format!("{k}={}", lossy(x))),
                            )
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                for (ip, x) in list {
                    let s = cx.val_str(&ip, &x, Ctx::Value).unwrap_or_default();
                    match s.split_once('=') {
                        Some((k, val)) => env.set(k, Y::s(val)),
                        None => {
                            let c = cx.note(
                                &ip,
                                format!("`{s}` is not NAME=VALUE: not converted"),
                                "the variable",
                            );
                            env.comment(&[c]);
                        }
                    }
                }
                y.set("environment_vars", env);
                cx.mapped(&kp);
            }
            if scan.contains("PACKER_BUILD_NAME") || scan.contains("PACKER_BUILDER_TYPE") {
                let env = y.child("environment_vars");
                for k in ["PACKER_BUILD_NAME", "PACKER_BUILDER_TYPE"] {
                    if env.get(k).is_none() {
                        env.set(k, Y::s("${build.iaas}"));
                    }
                }
                cx.note(p, "the commands read PACKER_BUILD_NAME/PACKER_BUILDER_TYPE, which Packer sets: set to `${build.iaas}` (aws, gcp, azure, vsphere, vbox, ssh)", "what the commands compare these with");
            }
            if let Some((kp, kv)) = o.take("execute_command") {
                match (&kv, local) {
                    (Value::String(s), false) => {
                        let c = cx.tr(&kp, s, Ctx::ExecuteCommand);
                        if c.contains("sudo -S") || c.contains("| sudo") {
                            cx.note(&kp, "kept: it pipes a password into sudo", "on a stemcell opsbake's hand-off grants passwordless sudo at the start of the build; `sudo: true` with the default command is simpler");
                        }
                        y.set("execute_command", Y::s(c));
                        cx.mapped(&kp);
                    }
                    _ => cx.drop_into(
                        &mut y,
                        &kp,
                        &kv,
                        "not converted: opsbake's shell-local runs `env {{vars}} {{path}}`",
                        "execute_command (a string) if the default does not fit",
                    ),
                }
            }
            if !local {
                y.set("sudo", Y::Bool(false));
            }
            bool_into(
                cx,
                &mut o,
                "expect_disconnect",
                &mut y,
                "expect_disconnect",
                false,
            );
            str_into(
                cx,
                &mut o,
                "start_retry_timeout",
                &mut y,
                "start_retry_timeout",
            );
            if let Some((kp, kv)) = o.take("valid_exit_codes") {
                match kv
                    .as_array()
                    .map(|a| a.iter().map(Value::as_i64).collect::<Option<Vec<i64>>>())
                {
                    Some(Some(l)) => {
                        y.set("valid_exit_codes", seq(l.into_iter().map(Y::Int).collect()));
                        cx.mapped(&kp);
                    }
                    _ => cx.drop_into(&mut y, &kp, &kv, "not a list of numbers", "the exit codes"),
                }
            }
            if let Some((kp, kv)) = o.take("inline_shebang") {
                let s = lossy(&kv);
                if s == "/bin/sh -e" {
                    cx.mapped(&kp);
                } else {
                    cx.drop_into(
                        &mut y,
                        &kp,
                        &kv,
                        "not converted: opsbake runs inline commands with `#!/bin/sh -e`",
                        "move the commands into a script with its own `#!` line",
                    );
                }
            }
            if looks_like_handoff(&scan) {
                let c = cx.note(p, "this step looks like a hand-off (it revokes vcap's sudo or locks vcap): kept as it is", "opsbake's `type: handoff` step does this itself (docs/handoff.md): replace this step with it");
                y.comment(&[c]);
            }
        }
        "chef-solo" => {
            list_into(cx, &mut o, "cookbook_paths", &mut y, "cookbook_paths");
            if let Some(Y::Seq(items)) = y.get("cookbook_paths").cloned() {
                let rebased: Vec<Y> = items
                    .into_iter()
                    .filter_map(|i| i.value)
                    .map(|v| match v {
                        Y::Str(s) => Y::s(cx.rebase(&s)),
                        other => other,
                    })
                    .collect();
                y.set("cookbook_paths", seq(rebased));
            }
            path_into(cx, &mut o, "roles_path", &mut y, "roles_path");
            path_into(cx, &mut o, "data_bags_path", &mut y, "data_bags_path");
            path_into(cx, &mut o, "environments_path", &mut y, "environments_path");
            str_into(cx, &mut o, "chef_environment", &mut y, "environment");
            list_into(cx, &mut o, "run_list", &mut y, "run_list");
            if let Some((kp, kv)) = o.take("json") {
                let j = json_to_y(cx, &kp, &kv);
                y.set("json", j);
                cx.mapped(&kp);
            }
            match o.take("skip_install") {
                Some((kp, Value::Bool(true))) => {
                    y.set("install", Y::s("skip"));
                    cx.mapped(&kp);
                }
                other => {
                    y.set("install", Y::s("omnitruck"));
                    let key = other
                        .map(|(kp, _)| kp)
                        .unwrap_or_else(|| format!("{p}.skip_install"));
                    cx.mapped(&key);
                    cx.note(&key, "Packer installs Chef unless skip_install: became `install: omnitruck`", "`install: package` or `skip` if the image has Chef; omnitruck needs the internet");
                }
            }
            if let Some((kp, kv)) = o.take("version") {
                cx.drop_into(
                    &mut y,
                    &kp,
                    &kv,
                    "not converted: omnitruck installs the latest Chef",
                    "install the version in an earlier step and use `install: skip`",
                );
            }
            if let Some((kp, kv)) = o.take("prevent_sudo") {
                cx.drop_into(
                    &mut y,
                    &kp,
                    &kv,
                    "not converted: opsbake runs chef-solo through sudo",
                    "that the login user has sudo",
                );
            }
        }
        "breakpoint" => {
            str_into(cx, &mut o, "note", &mut y, "note");
            if let Some((kp, kv)) = o.take("disable") {
                cx.mapped(&kp);
                if kv == Value::Bool(true) {
                    let c = cx.note(
                        &kp,
                        "a disabled breakpoint: not converted",
                        "nothing (`opsbake build --debug` pauses after every step)",
                    );
                    o.rest(cx, &mut y, &|_| None);
                    return Item {
                        comments: vec![c],
                        value: None,
                    };
                }
            }
        }
        _ => {}
    }
    let hint_local = move |k: &str| -> Option<(&'static str, String)> {
        match k {
            "remote_folder" | "remote_file" | "remote_path" | "staging_directory" | "skip_clean" => Some((
                "not converted: opsbake stages scripts in /var/tmp/opsbake/<build-id>/scripts and removes them afterwards",
                "scripts that look for themselves in /tmp (docs/provisioners.md, Script staging)".to_string(),
            )),
            "binary" | "env_var_format" | "use_env_var_file" | "only_on" | "use_linux_pathing" => Some((
                "not converted: opsbake has no equivalent",
                "the step's behaviour".to_string(),
            )),
            _ => None,
        }
    };
    o.rest(cx, &mut y, &hint_local);
    Item {
        comments: Vec::new(),
        value: Some(y),
    }
}

fn post_processor(cx: &mut Cx, p: &str, v: &Value, outputs: &mut Y, top: &mut Vec<String>) {
    match v {
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                post_processor(cx, &format!("{p}[{i}]"), x, outputs, top);
            }
        }
        Value::String(s) => top.push(cx.note(
            p,
            format!("post-processor `{s}` has no opsbake equivalent: not converted"),
            "do it after `opsbake build` (the manifest lists the artifacts)",
        )),
        Value::Object(m) => {
            let mut o = Obj::new(p.to_string(), m.clone());
            let ty = o.take("type").map(|(tp, t)| {
                cx.mapped(&tp);
                lossy(&t)
            });
            let mut here = Y::map();
            match ty.as_deref() {
                Some("manifest") => {
                    if let Some((kp, kv)) = o.take("output") {
                        match cx.path(&kp, &kv) {
                            Some(s) => {
                                outputs.set("manifest", Y::s(s));
                                cx.mapped(&kp);
                            }
                            None => cx.drop_into(
                                &mut here,
                                &kp,
                                &kv,
                                "not a string",
                                "outputs.manifest",
                            ),
                        }
                    } else {
                        outputs.set("manifest", Y::s(cx.rebase("packer-manifest.json")));
                        cx.note(p, "Packer's default manifest file `packer-manifest.json` became `outputs.manifest` (opsbake's manifest has its own format)", "tools that read the manifest (docs/architecture.md)");
                    }
                    for k in [
                        "strip_path",
                        "strip_time",
                        "custom_data",
                        "keep_input_artifact",
                    ] {
                        if let Some((kp, kv)) = o.take(k) {
                            cx.drop_into(
                                &mut here,
                                &kp,
                                &kv,
                                "not converted: opsbake's manifest has a fixed format",
                                "tools that read the manifest",
                            );
                        }
                    }
                }
                Some("checksum") => {
                    let types = match o.take("checksum_types") {
                        Some((kp, kv)) => {
                            cx.mapped(&kp);
                            (
                                kp,
                                kv.as_array()
                                    .map(|a| a.iter().map(lossy).collect())
                                    .unwrap_or_else(|| vec![lossy(&kv)]),
                            )
                        }
                        None => (format!("{p}.checksum_types"), vec!["md5".to_string()]),
                    };
                    let mut have = Vec::new();
                    for t in types.1 {
                        match t.as_str() {
                            "sha256" | "sha512" | "sha1" => have.push(Y::s(t)),
                            other => {
                                let c = cx.note(
                                    &types.0,
                                    format!(
                                        "checksum type `{other}` is not supported: not converted"
                                    ),
                                    "opsbake writes sha256, sha512 and sha1",
                                );
                                here.comment(&[c]);
                            }
                        }
                    }
                    if !have.is_empty() {
                        outputs.set("checksums", seq(have));
                    }
                    if let Some((kp, kv)) = o.take("output") {
                        cx.drop_into(
                            &mut here,
                            &kp,
                            &kv,
                            "not converted: opsbake writes the checksums next to each artifact",
                            "tools that read the checksum files",
                        );
                    }
                }
                Some(other) => {
                    let c = cx.note(
                        p,
                        format!(
                            "post-processor `{other}` has no opsbake equivalent: not converted"
                        ),
                        "do it after `opsbake build` (the manifest lists the artifacts)",
                    );
                    for k in o.map.keys() {
                        cx.mapped.push(format!("{p}.{k}"));
                    }
                    top.push(c);
                    return;
                }
                None => top.push(cx.note(p, "no `type`: not converted", "the post-processor")),
            }
            o.rest(cx, &mut here, &|_| None);
            if let Y::Map(e) = here {
                top.extend(e.into_iter().flat_map(|e| e.comments));
            }
        }
        _ => top.push(cx.note(p, "not a post-processor: not converted", "the value")),
    }
}

fn sanitize_name(s: &str) -> String {
    let n: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if n.is_empty() {
        "image".into()
    } else {
        n
    }
}

/// Convert a parsed Packer document (1.x JSON shape).
pub(crate) fn convert_value(
    cx: &mut Cx,
    doc: &Value,
    name: &str,
) -> Result<Conversion, (String, String)> {
    let Some(top) = doc.as_object() else {
        return Err((String::new(), "the document is not an object".into()));
    };
    let mut o = Obj::new(String::new(), top.clone());
    let mut head = Y::map();
    o.take_comments(cx, &mut head);
    let mut vars = Y::map();
    let mut top_comments: Vec<String> = Vec::new();
    let mut builds = Y::map();
    let mut stemcells = Y::map();
    let mut outputs = Y::map();
    let mut description: Option<String> = None;
    if let Some((p, v)) = o.take("description") {
        description = cx.val_str(&p, &v, Ctx::Value);
        cx.mapped(&p);
    }
    if let Some((p, v)) = o.take("min_packer_version") {
        top_comments.push(cx.note(
            &p,
            format!("not converted (value {})", shown(&p, &v)),
            "nothing",
        ));
    }

    // Variables.
    let sensitive: BTreeSet<String> = match o.take("sensitive-variables") {
        Some((p, Value::Array(a))) => {
            cx.mapped(&p);
            a.iter().map(lossy).collect()
        }
        Some((p, v)) => {
            top_comments.push(cx.note(
                &p,
                format!("not a list: not converted (value {})", shown(&p, &v)),
                "mark the variables `sensitive: true`",
            ));
            BTreeSet::new()
        }
        None => BTreeSet::new(),
    };
    let mut declared = BTreeSet::new();
    if let Some((p, v)) = o.take("variables") {
        cx.mapped(&p);
        if let Value::Object(m) = &v {
            for (k, d) in m {
                let kp = format!("{p}.{k}");
                declared.insert(k.clone());
                let mut decl = Y::map();
                let mut comments = Vec::new();
                // HCL variables come as {default, description, sensitive, type}.
                let (def, desc, sens) = match d {
                    Value::Object(dm) if dm.contains_key("__hcl_variable") => (
                        dm.get("default").cloned().unwrap_or(Value::Null),
                        dm.get("description").map(lossy),
                        dm.get("sensitive") == Some(&Value::Bool(true)),
                    ),
                    other => (other.clone(), None, false),
                };
                match &def {
                    Value::Null => {}
                    Value::String(_) | Value::Number(_) | Value::Bool(_) => {
                        let s = cx.val_str(&kp, &def, Ctx::Default).unwrap_or_default();
                        if !s.contains("${") {
                            cx.var_defaults.insert(k.clone(), s.clone());
                        }
                        decl.set("default", Y::s(s));
                    }
                    other => {
                        decl.set("default", Y::s(other.to_string()));
                        comments.push(cx.note(&kp, "a list or map default became its JSON text (opsbake variables are strings)", "where the variable is used"));
                    }
                }
                if let Some(d) = desc {
                    decl.set("description", Y::s(d));
                }
                if sensitive.contains(k) || sens {
                    decl.set("sensitive", Y::Bool(true));
                }
                if !comments.is_empty() {
                    decl.comment(&comments);
                }
                cx.mapped(&kp);
                vars.set(k, decl);
            }
        } else {
            top_comments.push(cx.note(&p, "not an object: not converted", "the variables"));
        }
    }
    for s in &sensitive {
        if !declared.contains(s) {
            top_comments.push(cx.note(
                "sensitive-variables",
                format!("`{s}` is not a declared variable: ignored"),
                "the list",
            ));
        }
    }

    // Builders.
    let mut names: HashMap<String, Iaas> = HashMap::new();
    let mut converted: Vec<(String, Iaas)> = Vec::new();
    let mut seen_types: Vec<String> = Vec::new();
    match o.take("builders") {
        Some((p, Value::Array(list))) => {
            cx.mapped(&p);
            for (i, bv) in list.iter().enumerate() {
                let bp = format!("{p}[{i}]");
                let Some(bm) = bv.as_object() else {
                    top_comments.push(cx.note(&bp, "not an object: not converted", "the builder"));
                    continue;
                };
                let mut bo = Obj::new(bp.clone(), bm.clone());
                let Some((tp, tv)) = bo.take("type") else {
                    return Err((bp, "a builder without `type`".into()));
                };
                let ty = lossy(&tv);
                seen_types.push(ty.clone());
                let bname = match bo.take("name") {
                    Some((np, nv)) => {
                        cx.mapped(&np);
                        lossy(&nv)
                    }
                    None => ty.clone(),
                };
                let Some(iaas) = iaas_of(&ty) else {
                    cx.mapped(&tp);
                    top_comments.push(cx.note(&bp, format!("builder type `{ty}` has no opsbake equivalent: not converted"), "opsbake builds amazon-ebs, googlecompute, azure-arm, vsphere, virtualbox/qemu and null (ssh) images"));
                    for k in bo.map.keys() {
                        cx.mapped.push(format!("{bp}.{k}"));
                    }
                    continue;
                };
                if builds.get(iaas.as_str()).is_some() {
                    cx.mapped(&tp);
                    top_comments.push(cx.note(&bp, format!("a second builder for {iaas} (`{bname}`): not converted (opsbake has one build per IaaS)"), "make a second template for it, or use variables"));
                    for k in bo.map.keys() {
                        cx.mapped.push(format!("{bp}.{k}"));
                    }
                    continue;
                }
                cx.mapped(&tp);
                names.insert(bname.clone(), iaas);
                names.insert(ty.clone(), iaas);
                let mut b = Y::map();
                bo.take_comments(cx, &mut b);
                let from = convert_builder(cx, &ty, &mut bo, &mut b, &mut outputs);
                bo.rest(cx, &mut b, &hint);
                if !matches!(iaas, Iaas::Ssh) {
                    add_stemcell(&mut vars, &mut stemcells, iaas, &from);
                }
                builds.set(iaas.as_str(), b);
                converted.push((bname, iaas));
            }
        }
        Some((p, _)) => return Err((p, "`builders` must be a list".into())),
        None => {}
    }
    if converted.is_empty() {
        return Err((
            "builders".to_string(),
            if seen_types.is_empty() {
                "no builders: a Packer template needs at least one".to_string()
            } else {
                format!(
                "no builder opsbake can build (types: {}); opsbake builds amazon-ebs, googlecompute, azure-arm, vsphere-iso/-clone, virtualbox-ovf/-iso, qemu and null",
                seen_types.join(", ")
            )
            },
        ));
    }

    // Provisioners.
    let mut steps: Vec<Item> = Vec::new();
    if let Some((p, v)) = o.take("provisioners") {
        cx.mapped(&p);
        match &v {
            Value::Array(a) => {
                for (i, pv) in a.iter().enumerate() {
                    let pp = format!("{p}[{i}]");
                    for (variant, comment) in split_overrides(cx, &pp, pv, &names) {
                        let mut item = convert_provisioner(cx, &pp, &variant, &names);
                        if let Some(c) = comment {
                            item.comments.insert(0, c);
                        }
                        steps.push(item);
                    }
                }
            }
            _ => return Err((p, "`provisioners` must be a list".into())),
        }
    }
    let mut pp_comments = Vec::new();
    if let Some((p, v)) = o.take("post-processors") {
        cx.mapped(&p);
        post_processor(cx, &p, &v, &mut outputs, &mut pp_comments);
    }
    let mut rest = Y::map();
    o.rest(cx, &mut rest, &|_| None);
    if let Y::Map(e) = rest {
        top_comments.extend(e.into_iter().flat_map(|e| e.comments));
    }

    // Variables referenced that are not declared, and environment reads.
    let env_vars = std::mem::take(&mut cx.env_vars);
    for e in env_vars {
        let mut d = Y::map();
        d.set("default", Y::s(format!("${{env.{e}}}")));
        d.set("description", Y::s(format!("The environment variable {e} (read by the Packer template outside a variable default)")));
        vars.set(&format!("env_{e}"), d);
    }
    let used: Vec<String> = cx.used_vars.iter().cloned().collect();
    for u in used {
        if vars.get(&u).is_none() {
            let c = cx.note(
                "variables",
                format!("`{u}` is used but not declared: declared without a default"),
                format!("set it with --var {u}=..."),
            );
            let mut d = Y::map();
            d.comment(&[c]);
            vars.set(&u, d);
        }
    }

    let path_vars: Vec<String> = cx.path_vars.iter().cloned().collect();
    for n in path_vars {
        let rebased = match vars.get(&n).and_then(|d| d.get("default")) {
            Some(Y::Str(d)) => {
                let r = cx.rebase(d);
                (r != *d).then_some(r)
            }
            _ => None,
        };
        if let Some(r) = rebased {
            cx.note(
                &format!("variables.{n}"),
                format!("the default is a path: became `{r}` (relative to the new template)"),
                "values given with --var are relative to the template's directory too",
            );
            vars.child(&n).set("default", Y::s(r));
        }
    }

    // The document.
    let mut doc = Y::map();
    let mut header = vec![
        format!("Converted from {} by `opsbake import-packer`.", cx.file),
        "Every Packer setting without an opsbake equivalent is a comment at its place".to_string(),
        "(\"packer <key path>: ...\"), listed in the report the command printed too.".to_string(),
    ];
    if let Y::Map(e) = head {
        header.extend(e.into_iter().flat_map(|e| e.comments));
    }
    header.extend(top_comments);
    doc.comment(&header);
    doc.set("name", Y::s(sanitize_name(name)));
    if let Some(d) = description {
        doc.set("description", Y::s(d));
    }
    if vars != Y::map() {
        doc.set("variables", vars);
    }
    if stemcells != Y::map() {
        doc.set("stemcells", stemcells);
    }
    doc.set("builds", builds);
    if !steps.is_empty() {
        doc.set("provision", Y::Seq(steps));
    }
    if !pp_comments.is_empty() {
        outputs.comment(&pp_comments);
    }
    if outputs != Y::map() {
        doc.set("outputs", outputs);
    }
    Ok(Conversion {
        yaml: crate::yaml::to_string(&doc),
        notes: std::mem::take(&mut cx.notes),
        mapped: std::mem::take(&mut cx.mapped),
        builds: converted,
    })
}
