//! The example CI workflows of docs/ci/ work with the CLI they call: each
//! is parsed (YAML), the `opsbake inspect ... --matrix` command it runs is
//! run with this build's binary, and every field the workflow reads from a
//! matrix entry (`${{ matrix.X }}`, `((.:build.X))`) is in every entry; the
//! matrix's shape is what GitHub Actions (`iaas` axis + `include`) and
//! Concourse (`across` over `include`) take. The `opsbake manifest merge`
//! the workflows end with is run on two workers' manifests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use serde_yaml_ng::Value as Yaml;

fn root() -> std::path::PathBuf {
    opsbake_test_support::cli::workspace_root()
}

fn bin() -> &'static Path {
    opsbake_test_support::cli::opsbake_bin()
}

fn load(name: &str) -> (String, Yaml) {
    let text = std::fs::read_to_string(root().join("docs/ci").join(name)).unwrap();
    let y: Yaml = serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    (text, y)
}

/// Every `run`/`args` script line of a workflow.
fn scripts(y: &Yaml, out: &mut Vec<String>) {
    match y {
        Yaml::Mapping(m) => {
            for (k, v) in m {
                if let (Some("run"), Some(s)) = (k.as_str(), v.as_str()) {
                    out.push(s.to_string());
                }
                scripts(v, out);
            }
        }
        Yaml::Sequence(s) => {
            for v in s {
                if let Some(t) = v.as_str() {
                    out.push(t.to_string());
                }
                scripts(v, out);
            }
        }
        _ => {}
    }
}

/// The `opsbake inspect ... --matrix` command of a workflow, run from the
/// repository's root with this build's CLI (the real cloud credentials
/// are absent: the matrix needs none).
fn run_matrix(y: &Yaml) -> Value {
    let mut s = Vec::new();
    scripts(y, &mut s);
    let line = s
        .iter()
        .flat_map(|s| s.lines())
        .find_map(|l| {
            let i = l.find("opsbake inspect")?;
            let rest = &l[i..];
            let end = rest.find([')', '>']).unwrap_or(rest.len());
            Some(rest[..end].trim().to_string())
        })
        .expect("no `opsbake inspect` command");
    assert!(line.ends_with("--matrix"), "{line}");
    let args: Vec<&str> = line.split_whitespace().skip(1).collect();
    let out = Command::new(bin())
        .current_dir(root())
        .args(&args)
        .env_remove("OPSBAKE_TEST_STEMCELL_DIR")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.trim().lines().count(),
        1,
        "one line for $GITHUB_OUTPUT"
    );
    serde_json::from_str(&text).unwrap()
}

fn check_matrix_shape(m: &Value) {
    let obj = m.as_object().unwrap();
    // GitHub Actions makes every top-level key an axis: arrays only
    for (k, v) in obj {
        assert!(v.is_array(), "matrix key {k} is not an array");
    }
    let axis: Vec<&str> = m["iaas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(axis, ["aws", "gcp", "azure", "vsphere", "vbox"]);
    let include = m["include"].as_array().unwrap();
    assert_eq!(include.len(), axis.len());
    for (e, i) in include.iter().zip(&axis) {
        assert_eq!(e["iaas"], *i);
        assert_eq!(e["implemented"], true, "{e}");
        assert_eq!(
            e["command"],
            format!("opsbake build images/appliance.yml --iaas {i}"),
            "{e}"
        );
        assert!(e.get("expected_seconds").is_some(), "{e}");
        let creds = e["credentials_env"].as_array().unwrap();
        if *i == "vbox" {
            assert!(creds.is_empty());
        } else {
            assert!(!creds.is_empty(), "{i}");
            assert!(!e["test_peers"].as_array().unwrap().is_empty(), "{i}");
        }
    }
    let by = |i: &str| include.iter().find(|e| e["iaas"] == i).unwrap().clone();
    assert!(by("aws")["credentials_env"]
        .as_array()
        .unwrap()
        .contains(&"AWS_ACCESS_KEY_ID".into()));
    assert!(by("vsphere")["credentials_env"]
        .as_array()
        .unwrap()
        .contains(&"GOVC_PASSWORD".into()));
    assert_eq!(by("gcp")["test_var_file"], "images/gce.vars.yml");
}

/// `needle` followed by `field` (identifier chars), for every occurrence.
fn fields_after<'a>(text: &'a str, needle: &str) -> Vec<&'a str> {
    text.match_indices(needle)
        .map(|(i, _)| {
            let rest = &text[i + needle.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect()
}

#[test]
fn github_actions_example_runs_one_job_per_iaas_from_the_matrix() {
    let (text, y) = load("github-actions.yml");
    let jobs = &y["jobs"];
    assert_eq!(
        jobs["build"]["strategy"]["matrix"].as_str(),
        Some("${{ fromJSON(needs.plan.outputs.matrix) }}")
    );
    assert_eq!(
        jobs["build"]["strategy"]["fail-fast"].as_bool(),
        Some(false)
    );
    assert_eq!(
        jobs["plan"]["outputs"]["matrix"].as_str(),
        Some("${{ steps.matrix.outputs.matrix }}")
    );
    let m = run_matrix(&y);
    check_matrix_shape(&m);
    let fields = fields_after(&text, "matrix.");
    assert!(fields.contains(&"command") && fields.contains(&"iaas"));
    for f in fields {
        if f == "outputs" {
            continue; // needs.plan.outputs.matrix / steps.matrix.outputs
        }
        for e in m["include"].as_array().unwrap() {
            assert!(e.get(f).is_some(), "matrix.{f} is not in {e}");
        }
    }
    // every credentials env var of a cloud is set on the build job
    let env = jobs["build"]["env"].as_mapping().unwrap();
    for e in m["include"].as_array().unwrap() {
        for v in e["credentials_env"].as_array().unwrap() {
            let v = v.as_str().unwrap();
            if [
                "AWS_SESSION_TOKEN",
                "AWS_PROFILE",
                "GOOGLE_CLOUD_PROJECT",
                "AZURE_FEDERATED_TOKEN_FILE",
            ]
            .contains(&v)
            {
                continue; // alternatives
            }
            let set = env.contains_key(v) || text.contains(&format!("{v}=$"));
            assert!(set, "{v} is not given to the build job");
        }
    }
    assert_eq!(
        jobs["release-manifest"]["if"].as_str(),
        Some("always()"),
        "the release manifest is merged when some builds failed too"
    );
    assert!(
        text.contains("opsbake manifest merge manifests/*/manifest.json -o release-manifest.json")
    );
}

#[test]
fn concourse_example_runs_one_build_per_matrix_entry() {
    let (text, y) = load("concourse.yml");
    let plan = y["jobs"][0]["plan"].as_sequence().unwrap();
    let load_var = plan
        .iter()
        .find(|s| s.get("load_var").is_some())
        .expect("no load_var");
    assert_eq!(load_var["load_var"].as_str(), Some("matrix"));
    assert_eq!(load_var["format"].as_str(), Some("json"));
    let across = plan
        .iter()
        .find(|s| s.get("across").is_some())
        .expect("no across step");
    let a = &across["across"][0];
    assert_eq!(a["var"].as_str(), Some("build"));
    assert_eq!(a["values"].as_str(), Some("((.:matrix.include))"));
    assert_eq!(across["fail_fast"].as_bool(), Some(false));
    assert!(
        across["ensure"]["task"].as_str().is_some(),
        "merge in an ensure hook"
    );
    let m = run_matrix(&y);
    check_matrix_shape(&m);
    let fields = fields_after(&text, "((.:build.");
    assert!(fields.contains(&"command"));
    for f in fields {
        for e in m["include"].as_array().unwrap() {
            assert!(e.get(f).is_some(), "build.{f} is not in {e}");
        }
    }
    assert!(text.contains("opsbake manifest merge /tmp/manifests/manifest-*.json -o"));
}

fn manifest(id: &str, iaas: &str, t: i64) -> Value {
    serde_json::json!({
        "builds": [{
            "name": "appliance", "builder_type": format!("opsbake-{iaas}"),
            "build_time": t, "files": [], "artifact_id": format!("art-{iaas}"),
            "packer_run_uuid": id, "custom_data": {},
            "inputs": {"template": "a".repeat(64), "variables": "b".repeat(64), "provisioning": {}},
            "build_seconds": 42.5
        }],
        "last_run_uuid": id,
        "last_run": [{"iaas": iaas, "build_id": id, "outcome": "succeeded", "artifact_id": format!("art-{iaas}")}]
    })
}

#[test]
fn manifest_merge_joins_the_workers_manifests() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("manifest-aws.json");
    let g = d.path().join("manifest-gcp.json");
    std::fs::write(
        &a,
        manifest("ob-20261206-020000-aws-000001", "aws", 20).to_string(),
    )
    .unwrap();
    std::fs::write(
        &g,
        manifest("ob-20261206-010000-gcp-000002", "gcp", 10).to_string(),
    )
    .unwrap();
    let out = d.path().join("release/release-manifest.json");
    let o = Command::new(bin())
        .args(["manifest", "merge"])
        .arg(&a)
        .arg(&g)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let ids: Vec<&str> = m["builds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["packer_run_uuid"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "ob-20261206-010000-gcp-000002",
            "ob-20261206-020000-aws-000001"
        ]
    );
    assert_eq!(m["last_run_uuid"], "ob-20261206-020000-aws-000001");
    assert_eq!(m["last_run"].as_array().unwrap().len(), 2);
    assert_eq!(m["builds"][1]["build_seconds"], 42.5);
    // stdout without -o; a file that is not a manifest: exit 2, named
    let o = Command::new(bin())
        .args(["manifest", "merge"])
        .arg(&a)
        .output()
        .unwrap();
    assert!(o.status.success());
    let m: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(m["builds"].as_array().unwrap().len(), 1);
    let bad = d.path().join("bad.json");
    std::fs::write(&bad, "[1,2]").unwrap();
    let o = Command::new(bin())
        .args(["manifest", "merge"])
        .arg(&a)
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad.json") && err.contains("not a manifest"),
        "{err}"
    );
}
