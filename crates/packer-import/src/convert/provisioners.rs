//! Provisioners and post-processors: each to its opsbake item, with notes for what does not convert.

#[allow(unused_imports)]
use super::*;

/// Convert one provisioner; the item it becomes.
pub(super) fn convert_provisioner(
    cx: &mut Cx,
    p: &str,
    v: &Value,
    names: &HashMap<String, Iaas>,
) -> Item {
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

pub(super) fn post_processor(
    cx: &mut Cx,
    p: &str,
    v: &Value,
    outputs: &mut Y,
    top: &mut Vec<String>,
) {
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

pub(super) fn sanitize_name(s: &str) -> String {
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
