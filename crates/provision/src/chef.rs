//! `chef-solo`: cookbooks, roles, data bags and environments staged with the
//! scripts, `solo.rb` and `node.json` written from the template, and one
//! `chef-solo` run at a readable log level.

use std::path::Path;

use opsbake_core::template::ChefSoloProvisioner;
use opsbake_core::transport::{shell_quote, Upload, UploadSource};

use crate::staging::Staging;

/// The chef-solo log level when the template does not set one (the seed:
/// failures were hard to read at chef's default).
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// The Omnitruck installer (`install: omnitruck`).
pub const OMNITRUCK_URL: &str = "https://omnitruck.chef.io/install.sh";

/// A staged chef-solo step.
#[derive(Debug, Clone)]
pub struct ChefStage {
    /// Files to upload (in the build's first batch).
    pub uploads: Vec<Upload>,
    /// `solo.rb`, as commands see it.
    pub solo_rb: String,
    /// `node.json`, as commands see it.
    pub node_json: String,
    /// The text of solo.rb.
    pub solo_rb_text: String,
    /// The text of node.json.
    pub node_json_text: String,
}

fn ruby_str(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The staging subdirectory of chef step `index`.
pub fn dir_name(index: usize) -> String {
    format!("chef-{:02}", index + 1)
}

/// Stage one chef-solo step.
pub fn stage(
    c: &ChefSoloProvisioner,
    index: usize,
    template_dir: &Path,
    staging: &Staging,
    log_level: &str,
) -> ChefStage {
    let rel = dir_name(index);
    let mut uploads = Vec::new();
    let mut cookbook_paths = Vec::new();
    for (i, cp) in c.cookbook_paths.iter().enumerate() {
        let sub = format!("{rel}/cookbooks-{i}");
        uploads.push(Upload {
            source: UploadSource::Path(template_dir.join(cp)),
            remote: staging.remote(&sub),
            mode: None,
            verify_sha256: false,
        });
        cookbook_paths.push(staging.cpath(&sub));
    }
    let mut solo = String::from("# written by opsbake\n");
    solo.push_str(&format!(
        "file_cache_path {}\n",
        ruby_str(&staging.cpath(&format!("{rel}/cache")))
    ));
    let list: Vec<String> = cookbook_paths.iter().map(|p| ruby_str(p)).collect();
    solo.push_str(&format!("cookbook_path [{}]\n", list.join(", ")));
    for (key, dir, val) in [
        ("role_path", "roles", &c.roles_path),
        ("data_bag_path", "data_bags", &c.data_bags_path),
        ("environment_path", "environments", &c.environments_path),
    ] {
        if let Some(p) = val {
            let sub = format!("{rel}/{dir}");
            uploads.push(Upload {
                source: UploadSource::Path(template_dir.join(p)),
                remote: staging.remote(&sub),
                mode: None,
                verify_sha256: false,
            });
            solo.push_str(&format!("{key} {}\n", ruby_str(&staging.cpath(&sub))));
        }
    }
    if let Some(env) = &c.environment {
        solo.push_str(&format!("environment {}\n", ruby_str(env)));
    }
    solo.push_str(&format!("log_level :{log_level}\n"));
    let mut node = match &c.json {
        Some(serde_json::Value::Object(m)) => m.clone(),
        _ => serde_json::Map::new(),
    };
    if !c.run_list.is_empty() {
        node.insert(
            "run_list".to_string(),
            serde_json::Value::Array(
                c.run_list
                    .iter()
                    .map(|r| serde_json::Value::String(r.clone()))
                    .collect(),
            ),
        );
    }
    let node_text = serde_json::to_string_pretty(&serde_json::Value::Object(node))
        .unwrap_or_else(|_| "{}".to_string());
    uploads.push(Upload {
        source: UploadSource::Bytes(solo.clone().into_bytes()),
        remote: staging.remote(&format!("{rel}/solo.rb")),
        mode: Some(0o644),
        verify_sha256: false,
    });
    uploads.push(Upload {
        source: UploadSource::Bytes(format!("{node_text}\n").into_bytes()),
        remote: staging.remote(&format!("{rel}/node.json")),
        mode: Some(0o644),
        verify_sha256: false,
    });
    ChefStage {
        uploads,
        solo_rb: staging.cpath(&format!("{rel}/solo.rb")),
        node_json: staging.cpath(&format!("{rel}/node.json")),
        solo_rb_text: solo,
        node_json_text: node_text,
    }
}

/// The chef-solo command line.
pub fn command(stage: &ChefStage, sudo: &str, log_level: &str) -> String {
    format!(
        "{sudo}chef-solo --no-color -c {} -j {} -l {log_level}",
        shell_quote(&stage.solo_rb),
        shell_quote(&stage.node_json)
    )
}

/// The command that makes sure chef-solo is there (`install`).
pub fn install_command(install: &str, sudo: &str) -> Option<String> {
    match install {
        "omnitruck" => Some(format!(
            "command -v chef-solo >/dev/null 2>&1 || {{ curl -fsSL {OMNITRUCK_URL} -o /tmp/opsbake-chef-install.sh && {sudo}sh /tmp/opsbake-chef-install.sh; }}"
        )),
        "package" => Some(format!(
            "command -v chef-solo >/dev/null 2>&1 || {{ if command -v apt-get >/dev/null 2>&1; then {sudo}env DEBIAN_FRONTEND=noninteractive apt-get install -y chef; elif command -v dnf >/dev/null 2>&1; then {sudo}dnf install -y chef; else {sudo}yum install -y chef; fi; }}"
        )),
        _ => None,
    }
}

/// The check that chef-solo exists (`install: skip`).
pub const CHECK_COMMAND: &str = "command -v chef-solo >/dev/null 2>&1 || { echo 'chef-solo is not installed on the build VM: set install: omnitruck or package, or install it in an earlier step' >&2; exit 127; }";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solo_rb_and_node_json() {
        let d = tempfile::tempdir().unwrap();
        let st = Staging::new("/var/tmp/opsbake", "b9", |p| p.to_string());
        let c = ChefSoloProvisioner {
            cookbook_paths: vec!["cookbooks".into(), "site".into()],
            roles_path: Some("roles".into()),
            environment: Some("prod's".into()),
            run_list: vec!["recipe[appliance::default]".into()],
            json: Some(serde_json::json!({"appliance": {"port": 8080}})),
            ..Default::default()
        };
        let s = stage(&c, 1, d.path(), &st, "debug");
        assert!(s.solo_rb_text.contains(
            "cookbook_path ['/var/tmp/opsbake/b9/chef-02/cookbooks-0', '/var/tmp/opsbake/b9/chef-02/cookbooks-1']"
        ));
        assert!(s
            .solo_rb_text
            .contains("role_path '/var/tmp/opsbake/b9/chef-02/roles'"));
        assert!(s.solo_rb_text.contains("environment 'prod\\'s'"));
        assert!(s.solo_rb_text.contains("log_level :debug"));
        let v: serde_json::Value = serde_json::from_str(&s.node_json_text).unwrap();
        assert_eq!(v["appliance"]["port"], 8080);
        assert_eq!(v["run_list"][0], "recipe[appliance::default]");
        assert_eq!(
            command(&s, "sudo -n ", "debug"),
            "sudo -n chef-solo --no-color -c /var/tmp/opsbake/b9/chef-02/solo.rb -j /var/tmp/opsbake/b9/chef-02/node.json -l debug"
        );
        assert_eq!(s.uploads.len(), 5);
    }
}
