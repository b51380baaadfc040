//! The image template: one YAML file describes one image for every IaaS.
//!
//! Every struct denies unknown fields (also inside one provisioner), so a typo
//! is an error that names file, line, column and key path instead of a
//! silently ignored setting. String values may hold `${var.NAME}`,
//! `${build.iaas}`, `${build.id}` and `${template.dir}` references; numbers
//! may be given as such a string too (see [`Tv`]). See docs/template.md.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::located::Positions;
use crate::secret::Secret;

pub use crate::options::{
    AwsOptions, AzureOptions, GcpOptions, LocaltestOptions, SshHostOptions, VboxOptions,
    VsphereOptions,
};

/// The IaaSes opsbake builds for.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Iaas {
    /// Amazon EC2.
    Aws,
    /// Google Compute Engine.
    Gcp,
    /// Microsoft Azure.
    Azure,
    /// VMware vSphere.
    Vsphere,
    /// VirtualBox (QEMU where VirtualBox is absent).
    Vbox,
    /// An existing host reached over SSH (Packer's `null` builder).
    Ssh,
    /// A local test builder whose resources are files (for tests and demos
    /// of the runner; not an image builder).
    Localtest,
}

impl Iaas {
    /// Every IaaS, in a stable order.
    pub const ALL: [Iaas; 7] = [
        Iaas::Aws,
        Iaas::Gcp,
        Iaas::Azure,
        Iaas::Vsphere,
        Iaas::Vbox,
        Iaas::Ssh,
        Iaas::Localtest,
    ];

    /// The lowercase name used in templates and on the command line.
    pub fn as_str(&self) -> &'static str {
        match self {
            Iaas::Aws => "aws",
            Iaas::Gcp => "gcp",
            Iaas::Azure => "azure",
            Iaas::Vsphere => "vsphere",
            Iaas::Vbox => "vbox",
            Iaas::Ssh => "ssh",
            Iaas::Localtest => "localtest",
        }
    }
}

impl fmt::Display for Iaas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Iaas {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Iaas::ALL
            .iter()
            .find(|i| i.as_str() == s.trim())
            .copied()
            .ok_or_else(|| {
                let names: Vec<&str> = Iaas::ALL.iter().map(Iaas::as_str).collect();
                format!("unknown IaaS `{s}` (expected one of {})", names.join(", "))
            })
    }
}

/// A value that is either given literally or as a string with `${...}`
/// references, resolved when the plan is made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Tv<T> {
    /// A literal value.
    Lit(T),
    /// A string to interpolate, then parse.
    Expr(String),
}

impl<T: FromStr + Clone> Tv<T>
where
    T::Err: fmt::Display,
{
    /// The value, parsing an (already interpolated) string form.
    pub fn get(&self) -> Result<T, String> {
        match self {
            Tv::Lit(v) => Ok(v.clone()),
            Tv::Expr(s) => s
                .trim()
                .parse::<T>()
                .map_err(|e| format!("`{s}` is not a valid value: {e}")),
        }
    }
}

/// A duration written as `90s`, `5m`, `1h30m`, `250ms` or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub std::time::Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty duration".to_string());
        }
        if let Ok(secs) = s.parse::<u64>() {
            return Ok(Dur(std::time::Duration::from_secs(secs)));
        }
        let mut total = std::time::Duration::ZERO;
        let mut num = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            if c.is_ascii_digit() || c == '.' {
                num.push(c);
                continue;
            }
            let mut unit = String::from(c);
            while let Some(n) = chars.peek() {
                if n.is_ascii_alphabetic() {
                    unit.push(*n);
                    chars.next();
                } else {
                    break;
                }
            }
            let v: f64 = num
                .parse()
                .map_err(|_| format!("bad duration `{s}`: missing number before `{unit}`"))?;
            num.clear();
            let secs = match unit.as_str() {
                "ms" => v / 1000.0,
                "s" => v,
                "m" => v * 60.0,
                "h" => v * 3600.0,
                "d" => v * 86400.0,
                _ => {
                    return Err(format!(
                        "bad duration `{s}`: unknown unit `{unit}` (ms, s, m, h, d)"
                    ))
                }
            };
            total += std::time::Duration::from_secs_f64(secs);
        }
        if !num.is_empty() {
            return Err(format!("bad duration `{s}`: number `{num}` has no unit"));
        }
        Ok(Dur(total))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", self.0.as_millis()))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 90s, 5m, 1h30m or a number of seconds")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Dur, E> {
                Ok(Dur(std::time::Duration::from_secs(v)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Dur, E> {
                u64::try_from(v)
                    .map(|v| Dur(std::time::Duration::from_secs(v)))
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Dur, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Dur {
    fn schema_name() -> String {
        "Duration".to_string()
    }
    fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        schemars::schema::SchemaObject {
            instance_type: Some(schemars::schema::SingleOrVec::Vec(vec![
                schemars::schema::InstanceType::String,
                schemars::schema::InstanceType::Integer,
            ])),
            metadata: Some(Box::new(schemars::schema::Metadata {
                description: Some("A duration: 90s, 5m, 1h30m, 250ms or seconds".to_string()),
                ..Default::default()
            })),
            ..Default::default()
        }
        .into()
    }
}

/// A template variable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct VariableDecl {
    /// Default value (may reference other variables and `${env.NAME}`).
    /// Without a default the variable must be set (`--var`, `--var-file`,
    /// `OPSBAKE_VAR_<NAME>`).
    #[serde(default)]
    pub default: Option<String>,
    /// What it is for.
    #[serde(default)]
    pub description: Option<String>,
    /// A secret: redacted from every output.
    #[serde(default)]
    pub sensitive: bool,
}

/// Where a build's stemcell comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct StemcellRef {
    /// A local `.tgz` (relative to the template's directory).
    #[serde(default)]
    pub path: Option<String>,
    /// A URL to download (requires `sha1`).
    #[serde(default)]
    pub url: Option<String>,
    /// The SHA-1 of the whole `.tgz` (as bosh.io publishes it).
    #[serde(default)]
    pub sha1: Option<String>,
}

/// Host key policy of a build's SSH connection: `tofu` (default),
/// `insecure`, or `{pin: [KEY, ...]}`.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum HostKeySpec {
    /// Trust the first key seen, then require it for the rest of the build
    /// (reconnects after a reboot must present the same key). The default
    /// where the IaaS does not tell the key.
    #[default]
    Tofu,
    /// Accept any key (a loud warning is printed).
    Insecure,
    /// Require one of these keys (`ssh-ed25519 AAAA...`, a whole
    /// known_hosts line, or `SHA256:...`). In a template, `{known_hosts:
    /// FILE, host: HOST}` adds the keys an OpenSSH known_hosts file holds
    /// for HOST (an entry starting with `@known_hosts` until the plan reads
    /// the file; a plan's pins are keys and fingerprints only).
    Pin(Vec<String>),
}

#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
enum HostKeyRepr {
    Name(HostKeyName),
    Pin(HostKeyPin),
}

#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum HostKeyName {
    Tofu,
    Insecure,
}

#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct HostKeyPin {
    /// Public keys (`ssh-ed25519 AAAA...`), known_hosts lines or
    /// `SHA256:...` fingerprints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pin: Vec<String>,
    /// An OpenSSH known_hosts file (relative to the template's directory):
    /// its keys for `host` are pinned (plain, `[host]:port` and hashed
    /// entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    known_hosts: Option<String>,
    /// The host to look up in `known_hosts` (`host` or `[host]:port`;
    /// default: `ssh.host` and `ssh.port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    host: Option<String>,
}

impl Serialize for HostKeySpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            HostKeySpec::Tofu => HostKeyRepr::Name(HostKeyName::Tofu),
            HostKeySpec::Insecure => HostKeyRepr::Name(HostKeyName::Insecure),
            HostKeySpec::Pin(p) => HostKeyRepr::Pin(HostKeyPin {
                pin: p.clone(),
                known_hosts: None,
                host: None,
            }),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for HostKeySpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match HostKeyRepr::deserialize(d) {
            Ok(HostKeyRepr::Name(HostKeyName::Tofu)) => Ok(HostKeySpec::Tofu),
            Ok(HostKeyRepr::Name(HostKeyName::Insecure)) => Ok(HostKeySpec::Insecure),
            Ok(HostKeyRepr::Pin(p)) => {
                let mut pins = p.pin;
                if let Some(file) = p.known_hosts {
                    let host = p.host.unwrap_or_else(|| "-".to_string());
                    pins.push(format!(
                        "{} {host} {file}",
                        crate::hostkeys::KNOWN_HOSTS_MARK
                    ));
                } else if p.host.is_some() {
                    return Err(serde::de::Error::custom(
                        "`host` goes with `known_hosts: FILE`",
                    ));
                }
                Ok(HostKeySpec::Pin(pins))
            }
            Err(_) => Err(serde::de::Error::custom(
                "expected `tofu`, `insecure`, `{pin: [KEY, ...]}` or `{known_hosts: FILE, host: HOST}`",
            )),
        }
    }
}

impl JsonSchema for HostKeySpec {
    fn schema_name() -> String {
        "HostKeySpec".to_string()
    }
    fn json_schema(g: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        HostKeyRepr::json_schema(g)
    }
}

/// How the build logs in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SshSpec {
    /// Login user (stemcells: `vcap`).
    #[serde(default = "default_ssh_user")]
    pub user: String,
    /// Override the address to connect to (e.g. 127.0.0.1 for a forwarded
    /// port or a test peer).
    #[serde(default)]
    pub host: Option<String>,
    /// Override the port.
    #[serde(default)]
    pub port: Option<Tv<u16>>,
    /// Password (vSphere, where no key can be injected). Tried at most once.
    #[serde(default)]
    pub password: Option<Secret<String>>,
    /// A private key file instead of an ephemeral key (the `ssh` builder).
    #[serde(default)]
    pub private_key_file: Option<String>,
    /// Host key policy.
    #[serde(default)]
    pub host_key: HostKeySpec,
    /// How long to wait for a login (default 5m).
    #[serde(default)]
    pub login_timeout: Option<Tv<Dur>>,
    /// Connect through this jump host first.
    #[serde(default)]
    pub bastion: Option<BastionSpec>,
    /// `public` or `private` address of the instance (clouds).
    #[serde(default)]
    pub interface: Option<String>,
}

fn default_ssh_user() -> String {
    "vcap".to_string()
}

impl Default for SshSpec {
    fn default() -> Self {
        SshSpec {
            user: default_ssh_user(),
            host: None,
            port: None,
            password: None,
            private_key_file: None,
            host_key: HostKeySpec::default(),
            login_timeout: None,
            bastion: None,
            interface: None,
        }
    }
}

/// A jump host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BastionSpec {
    /// Address.
    pub host: String,
    /// Port (22).
    #[serde(default)]
    pub port: Option<Tv<u16>>,
    /// User.
    pub user: String,
    /// Private key file.
    #[serde(default)]
    pub private_key_file: Option<String>,
    /// Host key policy of the jump host.
    #[serde(default)]
    pub host_key: HostKeySpec,
}

/// Network placement of the build VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// VPC / network name.
    #[serde(default)]
    pub network: Option<String>,
    /// Subnet.
    #[serde(default)]
    pub subnet: Option<String>,
    /// Give the build VM a public address.
    #[serde(default)]
    pub public_ip: Option<bool>,
    /// CIDRs allowed to reach SSH on the build VM (temporary firewall rule).
    #[serde(default)]
    pub ssh_cidrs: Vec<String>,
}

/// One IaaS's build: specs, network, login and IaaS-specific options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    bound(
        deserialize = "O: Deserialize<'de> + Default",
        serialize = "O: Serialize"
    )
)]
pub struct BuildSpec<O: Default> {
    /// Virtual CPUs of the build VM.
    #[serde(default)]
    pub cpus: Option<Tv<u32>>,
    /// Memory in MiB.
    #[serde(default)]
    pub memory: Option<Tv<u64>>,
    /// Root disk in MiB (at least the stemcell's).
    #[serde(default)]
    pub disk: Option<Tv<u64>>,
    /// Network placement.
    #[serde(default)]
    pub network: NetworkSpec,
    /// Login.
    #[serde(default)]
    pub ssh: SshSpec,
    /// IaaS-specific options.
    #[serde(default)]
    pub options: O,
}

/// The `builds` section: one entry per IaaS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct Builds {
    /// AWS.
    #[serde(default)]
    pub aws: Option<BuildSpec<AwsOptions>>,
    /// GCP.
    #[serde(default)]
    pub gcp: Option<BuildSpec<GcpOptions>>,
    /// Azure.
    #[serde(default)]
    pub azure: Option<BuildSpec<AzureOptions>>,
    /// vSphere.
    #[serde(default)]
    pub vsphere: Option<BuildSpec<VsphereOptions>>,
    /// VirtualBox / QEMU.
    #[serde(default)]
    pub vbox: Option<BuildSpec<VboxOptions>>,
    /// An existing host.
    #[serde(default)]
    pub ssh: Option<BuildSpec<SshHostOptions>>,
    /// The local test builder.
    #[serde(default)]
    pub localtest: Option<BuildSpec<LocaltestOptions>>,
}

/// The parts of a build entry every IaaS has, without its options.
#[derive(Debug, Clone, PartialEq)]
pub struct CommonSpec {
    /// CPUs.
    pub cpus: Option<Tv<u32>>,
    /// Memory MiB.
    pub memory: Option<Tv<u64>>,
    /// Disk MiB.
    pub disk: Option<Tv<u64>>,
    /// Network.
    pub network: NetworkSpec,
    /// Login.
    pub ssh: SshSpec,
}

impl Builds {
    /// The IaaSes that have an entry, in a stable order.
    pub fn iaases(&self) -> Vec<Iaas> {
        Iaas::ALL
            .iter()
            .copied()
            .filter(|i| self.common(*i).is_some())
            .collect()
    }

    /// The common part of one IaaS's entry.
    pub fn common(&self, iaas: Iaas) -> Option<CommonSpec> {
        fn c<O: Default>(b: &Option<BuildSpec<O>>) -> Option<CommonSpec> {
            b.as_ref().map(|b| CommonSpec {
                cpus: b.cpus.clone(),
                memory: b.memory.clone(),
                disk: b.disk.clone(),
                network: b.network.clone(),
                ssh: b.ssh.clone(),
            })
        }
        match iaas {
            Iaas::Aws => c(&self.aws),
            Iaas::Gcp => c(&self.gcp),
            Iaas::Azure => c(&self.azure),
            Iaas::Vsphere => c(&self.vsphere),
            Iaas::Vbox => c(&self.vbox),
            Iaas::Ssh => c(&self.ssh),
            Iaas::Localtest => c(&self.localtest),
        }
    }
}

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

/// A whole template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// Image name.
    pub name: String,
    /// Image version.
    #[serde(default)]
    pub version: Option<String>,
    /// What the image is.
    #[serde(default)]
    pub description: Option<String>,
    /// Variables.
    #[serde(default)]
    pub variables: BTreeMap<String, VariableDecl>,
    /// The stemcell of each IaaS.
    #[serde(default)]
    pub stemcells: BTreeMap<Iaas, StemcellRef>,
    /// One entry per IaaS.
    pub builds: Builds,
    /// Ordered provisioning steps.
    #[serde(default)]
    pub provision: Vec<Provisioner>,
    /// Outputs.
    #[serde(default)]
    pub outputs: Outputs,
}

/// A template error, with the place it points at.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A parse or validation error at a place in the file.
    #[error("{path}:{line}:{column}: {key}: {message}")]
    At {
        /// The file.
        path: PathBuf,
        /// Line (1-based).
        line: usize,
        /// Column (1-based).
        column: usize,
        /// Key path (`builds.aws.options.region`, `provision[2]`).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// An error without a known place.
    #[error("{path}: {key}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Key path.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Templates larger than this are refused before parsing.
pub const MAX_TEMPLATE_BYTES: u64 = 4 * 1024 * 1024;

/// A template with the source it was read from (for error locations).
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The parsed template.
    pub template: Template,
    /// Its path.
    pub path: PathBuf,
    /// Its text.
    pub source: String,
    /// Where each node is (from the YAML parser), for error locations.
    pub positions: Positions,
}

impl Loaded {
    /// The template's directory (relative paths in it resolve from here).
    pub fn dir(&self) -> PathBuf {
        let dir = self
            .path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        std::fs::canonicalize(&dir).unwrap_or(dir)
    }

    /// An error about the node at key path `key` (`provision[0].scripts[1]`,
    /// `builds.aws.options.region`), placed where the YAML parser saw that
    /// node (or its nearest written ancestor). `needle` only refines the
    /// column inside that node's own line (the `${var.x}` inside a string);
    /// it is never searched for elsewhere in the file.
    pub fn error_at(&self, needle: &str, key: &str, message: impl Into<String>) -> TemplateError {
        match self.place(key, needle) {
            Some((line, column)) => TemplateError::At {
                path: self.path.clone(),
                line,
                column,
                key: key.to_string(),
                message: message.into(),
            },
            None => TemplateError::Invalid {
                path: self.path.clone(),
                key: key.to_string(),
                message: message.into(),
            },
        }
    }

    /// Line and column of the node at `key`, refined to `needle` when it
    /// occurs in the node's value on the value's first line.
    pub fn place(&self, key: &str, needle: &str) -> Option<(usize, usize)> {
        if let Some(v) = self.positions.value(key) {
            if !needle.is_empty() {
                if let Some(line) = self.source.lines().nth(v.line.saturating_sub(1)) {
                    let start: usize = line.chars().take(v.column - 1).map(char::len_utf8).sum();
                    if let Some(off) = line.get(start..).and_then(|rest| rest.find(needle)) {
                        let col = line[..start + off].chars().count() + 1;
                        return Some((v.line, col));
                    }
                }
            }
        }
        self.positions.locate(key).map(|p| (p.line, p.column))
    }
}

/// Read and parse a template file.
pub fn load(path: &Path) -> Result<Loaded, TemplateError> {
    let io = |source| TemplateError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.len() > MAX_TEMPLATE_BYTES {
        return Err(TemplateError::Invalid {
            path: path.to_path_buf(),
            key: "(file)".to_string(),
            message: format!(
                "template is {} bytes, more than the limit of {MAX_TEMPLATE_BYTES}",
                meta.len()
            ),
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    let source = match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => {
            let bytes = e.as_bytes();
            let off = e.utf8_error().valid_up_to();
            let before = &bytes[..off];
            let line = before.iter().filter(|b| **b == b'\n').count() + 1;
            let line_start = before
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |i| i + 1);
            let column = String::from_utf8_lossy(&before[line_start..])
                .chars()
                .count()
                + 1;
            return Err(TemplateError::At {
                path: path.to_path_buf(),
                line,
                column,
                key: "(file)".to_string(),
                message: format!(
                    "invalid UTF-8 at byte offset {off} (0x{:02x}): a template is UTF-8 text",
                    bytes.get(off).copied().unwrap_or(0)
                ),
            });
        }
    };
    parse(path, source)
}

/// Parse template text (`path` is used for errors and relative paths).
pub fn parse(path: &Path, source: String) -> Result<Loaded, TemplateError> {
    let positions = Positions::from_source(&source);
    if let Some(p) = positions.too_deep() {
        return Err(TemplateError::At {
            path: path.to_path_buf(),
            line: p.line,
            column: p.column,
            key: "(file)".to_string(),
            message: format!(
                "nesting deeper than {} levels: not a template",
                Positions::MAX_DEPTH
            ),
        });
    }
    if !positions.has_content() && serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&source).is_ok()
    {
        return Err(TemplateError::Invalid {
            path: path.to_path_buf(),
            key: "(file)".to_string(),
            message: "empty template: the file holds only comments or blank lines \
                      (a template needs at least `name` and `builds`)"
                .to_string(),
        });
    }
    match serde_yaml_ng::from_str::<Template>(&source) {
        Ok(template) => Ok(Loaded {
            template,
            path: path.to_path_buf(),
            source,
            positions,
        }),
        Err(e) => Err(yaml_error(path, &positions, &e)),
    }
}

/// Turn a YAML error into a [`TemplateError`] with file, line, column and
/// key path. For errors inside one provisioner (an internally tagged entry,
/// which the YAML library reports at the entry's start), the entry's index
/// and the offending key's place come from the parser's positions.
fn yaml_error(path: &Path, positions: &Positions, e: &serde_yaml_ng::Error) -> TemplateError {
    let full = e.to_string();
    // serde_yaml_ng formats "<path>: <message> at line L column C".
    let without_loc = match full.rfind(" at line ") {
        Some(i) => full[..i].to_string(),
        None => full.clone(),
    };
    let (key, message) = match without_loc.split_once(": ") {
        Some((k, m)) if !k.contains(' ') || k.starts_with('.') => (k.to_string(), m.to_string()),
        _ => ("(top)".to_string(), without_loc.clone()),
    };
    let (mut line, mut column) = match e.location() {
        Some(l) => (l.line(), l.column()),
        None => (0, 0),
    };
    let at = crate::located::Pos { line, column };
    let field = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("missing field `"))
        .and_then(|r| r.split('`').next());
    let mut key = match (key.as_str(), field) {
        // serde reports an unknown key of an internally tagged entry at
        // the start of an earlier entry: the first entry from there on that
        // has the key (by the parser's index) is the one.
        ("provision", Some(f)) if message.starts_with("unknown") => {
            let from = positions.item_at("provision", at).unwrap_or(0);
            (from..)
                .take_while(|i| positions.value(&format!("provision[{i}]")).is_some())
                .find(|i| positions.key(&format!("provision[{i}].{f}")).is_some())
                .map_or_else(
                    || provision_key(&key, positions, at),
                    |i| format!("provision[{i}]"),
                )
        }
        _ => provision_key(&key, positions, at),
    };
    if let Some(field) = field {
        key = if key == "(top)" {
            field.to_string()
        } else {
            format!("{key}.{field}")
        };
        if let Some(p) = positions.key(&key) {
            line = p.line;
            column = p.column;
        }
    }
    if line == 0 {
        return TemplateError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        };
    }
    TemplateError::At {
        path: path.to_path_buf(),
        line,
        column,
        key,
        message,
    }
}

/// Entries of `provision` are internally tagged: the YAML library reports
/// errors inside one at the entry's start, without its index. Add it.
fn provision_key(key: &str, positions: &Positions, at: crate::located::Pos) -> String {
    if key == "provision" && at.line > 0 {
        if let Some(idx) = positions.item_at("provision", at) {
            return format!("provision[{idx}]");
        }
    }
    key.to_string()
}

/// The JSON Schema of the template format.
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(Template);
    serde_json::to_value(schema).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<Loaded, TemplateError> {
        parse(Path::new("images/t.yml"), s.to_string())
    }

    #[test]
    fn a_full_template_parses() {
        let t = parse_str(
            r#"
name: appliance
variables:
  region: {default: us-east-1}
stemcells:
  aws: {path: stemcells/x.tgz, sha1: abc}
builds:
  aws:
    cpus: 2
    memory: "${var.mem}"
    ssh: {user: vcap, host_key: {pin: ["ssh-ed25519 AAAA"]}}
    options: {region: "${var.region}", copy_regions: [eu-west-1]}
provision:
  - type: file
    source: provisioning/files/
    destination: /var/tmp/x
  - type: shell
    scripts: [a.sh, b.sh]
    only: [aws]
    timeout: 5m
outputs: {checksums: [sha256]}
"#,
        )
        .unwrap();
        let b = t.template.builds.aws.unwrap();
        assert_eq!(b.cpus, Some(Tv::Lit(2)));
        assert_eq!(b.memory, Some(Tv::Expr("${var.mem}".into())));
        assert_eq!(
            b.ssh.host_key,
            HostKeySpec::Pin(vec!["ssh-ed25519 AAAA".into()])
        );
        assert_eq!(t.template.provision.len(), 2);
        assert!(t.template.provision[1].applies_to(Iaas::Aws));
        assert!(!t.template.provision[1].applies_to(Iaas::Vbox));
    }

    #[test]
    fn unknown_key_in_a_nested_build_names_line_column_and_path() {
        let err = parse_str("name: x\nbuilds:\n  vbox:\n    cpu: 2\n").unwrap_err();
        let s = err.to_string();
        assert!(s.starts_with("images/t.yml:4:5: builds.vbox"), "{s}");
        assert!(s.contains("unknown field `cpu`"), "{s}");
    }

    #[test]
    fn unknown_key_inside_one_provisioner_points_at_the_key() {
        let src = "name: x\nbuilds: {}\nprovision:\n  - type: shell\n    inline: [\"true\"]\n  - type: shell\n    scirpts: [a.sh]\n";
        let s = parse_str(src).unwrap_err().to_string();
        assert!(s.starts_with("images/t.yml:7:5: "), "{s}");
        assert!(s.contains("provision[1]"), "{s}");
        assert!(s.contains("scirpts"), "{s}");
    }

    #[test]
    fn unknown_provisioner_type_and_iaas_are_errors() {
        let s = parse_str("name: x\nbuilds: {}\nprovision:\n  - type: ansible\n")
            .unwrap_err()
            .to_string();
        assert!(s.contains("images/t.yml:4:"), "{s}");
        assert!(s.contains("ansible"), "{s}");
        let s = parse_str("name: x\nbuilds:\n  openstack: {}\n")
            .unwrap_err()
            .to_string();
        assert!(s.contains("images/t.yml:3:"), "{s}");
    }

    #[test]
    fn alias_bombs_are_refused_quickly() {
        let mut src = String::from("name: x\nbuilds: {}\nvariables:\n  a: &a {description: lol}\n");
        let mut prev = "a".to_string();
        for i in 0..30 {
            let name = format!("b{i}");
            src.push_str(&format!(
                "  {name}: &{name} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
            ));
            prev = name;
        }
        let started = std::time::Instant::now();
        let r = parse_str(&src);
        assert!(r.is_err());
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn durations_parse() {
        assert_eq!("90s".parse::<Dur>().unwrap().0.as_secs(), 90);
        assert_eq!("1h30m".parse::<Dur>().unwrap().0.as_secs(), 5400);
        assert_eq!("250ms".parse::<Dur>().unwrap().0.as_millis(), 250);
        assert_eq!("12".parse::<Dur>().unwrap().0.as_secs(), 12);
        assert!("5x".parse::<Dur>().is_err());
        assert!("m".parse::<Dur>().is_err());
    }

    #[test]
    fn schema_is_generated() {
        let s = json_schema();
        assert!(s["definitions"]["Provisioner"].is_object(), "{s}");
    }

    #[test]
    fn empty_and_comment_only_files_say_empty_template() {
        for src in ["", "# just a comment\n\n   # another\n", "---\n"] {
            let e = parse_str(src).unwrap_err().to_string();
            assert!(e.contains("empty template"), "{src:?}: {e}");
            assert!(!e.contains("missing field"), "{e}");
        }
    }

    #[test]
    fn invalid_utf8_names_line_and_byte_offset() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.yml");
        std::fs::write(&p, b"name: x\nbuilds:\n  vbox: {cpus: \"\xff\"}\n").unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(
            e.contains("t.yml:3:17: (file): invalid UTF-8 at byte offset 32"),
            "{e}"
        );
    }
}
