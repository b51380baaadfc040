//! How a build logs in: SSH settings, host key policy, network placement.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Dur, Tv};
use crate::secret::Secret;

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
