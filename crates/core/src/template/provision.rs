//! Provisioning steps and outputs.

use std::collections::BTreeMap;
use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Dur, Iaas, Tv};
use crate::secret::Secret;

/// Settings every provisioner has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct Common {
    /// A name for logs (default: type and first script/source).
    #[serde(default)]
    pub name: Option<String>,
    /// Run only for these IaaSes.
    #[serde(default)]
    pub only: Vec<Iaas>,
    /// Skip for these IaaSes.
    #[serde(default)]
    pub except: Vec<Iaas>,
    /// Wait this long before the step.
    #[serde(default)]
    pub pause_before: Option<Tv<Dur>>,
    /// Fail the step after this long.
    #[serde(default)]
    pub timeout: Option<Tv<Dur>>,
    /// Retry a failed step this many times.
    #[serde(default)]
    pub max_retries: Option<Tv<u32>>,
}

/// `file`: upload (or download) files and trees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileProvisioner {
    /// Common settings.
    #[serde(flatten)]
    pub common: Common,
    /// Local path (upload) or remote path (download). A directory's contents
    /// go into `destination`.
    #[serde(default)]
    pub source: Option<String>,
    /// Several sources into one destination directory.
    #[serde(default)]
    pub sources: Vec<String>,
    /// Inline content instead of a source file.
    #[serde(default)]
    pub content: Option<String>,
    /// Remote path (upload) or local path (download).
    pub destination: String,
    /// `upload` (default) or `download`.
    #[serde(default)]
    pub direction: Option<String>,
    /// Mode of the uploaded file(s), e.g. `0755`.
    #[serde(default)]
    pub mode: Option<String>,
    /// Verify the SHA-256 of what arrived.
    #[serde(default)]
    pub verify: bool,
}

/// `shell` and `shell-local`: run commands or scripts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ShellProvisioner {
    /// Common settings.
    #[serde(flatten)]
    pub common: Common,
    /// Commands, run as one script.
    #[serde(default)]
    pub inline: Vec<String>,
    /// One script.
    #[serde(default)]
    pub script: Option<String>,
    /// Scripts, each its own step.
    #[serde(default)]
    pub scripts: Vec<String>,
    /// Environment variables.
    #[serde(default)]
    pub environment_vars: BTreeMap<String, String>,
    /// How to run a staged script: `{{path}}` is replaced by the script's
    /// path, `{{vars}}` by the exported variables (default: run through sudo
    /// where the login user needs it).
    #[serde(default)]
    pub execute_command: Option<String>,
    /// Run with sudo (default true for `shell`, ignored for `shell-local`).
    #[serde(default)]
    pub sudo: Option<bool>,
    /// Exit codes that count as success (default [0]).
    #[serde(default)]
    pub valid_exit_codes: Vec<u32>,
    /// The command reboots the machine: a dropped connection is success, and
    /// the next step waits for a new login.
    #[serde(default)]
    pub expect_disconnect: bool,
    /// How long to wait for the login after a disconnect.
    #[serde(default)]
    pub start_retry_timeout: Option<Tv<Dur>>,
}

/// `chef-solo`: run Chef recipes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ChefSoloProvisioner {
    /// Common settings.
    #[serde(flatten)]
    pub common: Common,
    /// Local cookbook directories.
    #[serde(default)]
    pub cookbook_paths: Vec<String>,
    /// Roles directory.
    #[serde(default)]
    pub roles_path: Option<String>,
    /// Data bags directory.
    #[serde(default)]
    pub data_bags_path: Option<String>,
    /// Environments directory.
    #[serde(default)]
    pub environments_path: Option<String>,
    /// Chef environment.
    #[serde(default)]
    pub environment: Option<String>,
    /// Run list.
    #[serde(default)]
    pub run_list: Vec<String>,
    /// Node attributes (node.json).
    #[serde(default)]
    #[schemars(with = "serde_json::Value")]
    pub json: Option<serde_json::Value>,
    /// chef-solo log level (`--debug` raises it to `debug`).
    #[serde(default)]
    pub log_level: Option<String>,
    /// `skip` (default), `omnitruck` or `package`.
    #[serde(default)]
    pub install: Option<String>,
}

/// `breakpoint`: wait for Enter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct BreakpointProvisioner {
    /// Common settings.
    #[serde(flatten)]
    pub common: Common,
    /// Shown while waiting.
    #[serde(default)]
    pub note: Option<String>,
}

/// `handoff`: the stemcell sudo and agent dance (see docs/handoff.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct HandoffProvisioner {
    /// Common settings.
    #[serde(flatten)]
    pub common: Common,
    /// The appliance's login user (default `ubuntu`).
    #[serde(default)]
    pub user: Option<String>,
    /// Keep the BOSH agent enabled.
    #[serde(default)]
    pub keep_agent: bool,
    /// A fixed crypt hash for root and vcap (default: locked).
    #[serde(default)]
    pub password_hash: Option<Secret<String>>,
    /// The login user's password for `sudo`, used once at the start to grant
    /// passwordless sudo for the build (default: `ssh.password`). Never
    /// retried (pam_faillock).
    #[serde(default)]
    pub sudo_password: Option<Secret<String>>,
    /// Install the first-boot unit that reads `public_ssh_key` from the OVF
    /// environment (default: on for vsphere and vbox, off elsewhere).
    #[serde(default)]
    pub ovf_ssh_key: Option<bool>,
}

/// One provisioning step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Provisioner {
    /// Upload or download files.
    File(FileProvisioner),
    /// Run commands on the build VM.
    Shell(ShellProvisioner),
    /// Run commands on the build host.
    ShellLocal(ShellProvisioner),
    /// Run chef-solo.
    ChefSolo(ChefSoloProvisioner),
    /// Wait for Enter.
    Breakpoint(BreakpointProvisioner),
    /// The stemcell hand-off.
    Handoff(HandoffProvisioner),
}

impl Provisioner {
    /// The settings every provisioner has.
    pub fn common(&self) -> &Common {
        match self {
            Provisioner::File(p) => &p.common,
            Provisioner::Shell(p) | Provisioner::ShellLocal(p) => &p.common,
            Provisioner::ChefSolo(p) => &p.common,
            Provisioner::Breakpoint(p) => &p.common,
            Provisioner::Handoff(p) => &p.common,
        }
    }

    /// The type name as written in templates.
    pub fn type_name(&self) -> &'static str {
        match self {
            Provisioner::File(_) => "file",
            Provisioner::Shell(_) => "shell",
            Provisioner::ShellLocal(_) => "shell-local",
            Provisioner::ChefSolo(_) => "chef-solo",
            Provisioner::Breakpoint(_) => "breakpoint",
            Provisioner::Handoff(_) => "handoff",
        }
    }

    /// A short label for logs: the name, or type and first script/source.
    pub fn label(&self) -> String {
        if let Some(n) = &self.common().name {
            return n.clone();
        }
        let detail = match self {
            Provisioner::File(p) => p.source.clone().or_else(|| p.sources.first().cloned()),
            Provisioner::Shell(p) | Provisioner::ShellLocal(p) => p
                .script
                .clone()
                .or_else(|| p.scripts.first().cloned())
                .map(|s| {
                    Path::new(&s)
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                        .unwrap_or(s)
                }),
            _ => None,
        };
        match detail {
            Some(d) => format!("{} {d}", self.type_name()),
            None => self.type_name().to_string(),
        }
    }

    /// Whether this step runs for `iaas`.
    pub fn applies_to(&self, iaas: Iaas) -> bool {
        let c = self.common();
        (c.only.is_empty() || c.only.contains(&iaas)) && !c.except.contains(&iaas)
    }
}

/// Checksum types for artifacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChecksumType {
    /// SHA-256.
    Sha256,
    /// SHA-512.
    Sha512,
    /// SHA-1 (for BOSH tooling).
    Sha1,
}

/// Where artifacts and the manifest go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct Outputs {
    /// Output directory (default `out/`), relative to the template's directory
    /// like every other path of a template.
    #[serde(default)]
    pub directory: Option<String>,
    /// Manifest path (default `<directory>/manifest.json`; relative to the
    /// template's directory).
    #[serde(default)]
    pub manifest: Option<String>,
    /// Checksums to write next to artifacts (default sha256).
    #[serde(default)]
    pub checksums: Vec<ChecksumType>,
    /// Export formats (`ova`, `vhd`, `raw.tar.gz`), where the IaaS has a local
    /// artifact.
    #[serde(default)]
    pub formats: Vec<String>,
}
