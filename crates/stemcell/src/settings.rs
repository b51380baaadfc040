//! The BOSH agent settings (STEMCELLS.md §3): one definition for every builder.
//!
//! The JSON shape follows bosh-agent's `settings.Settings`. Fields opsbake
//! does not model are kept in `extra` maps so that a settings document read
//! from elsewhere round-trips.
//!
//! `env.bosh.password` is a crypt hash held in a [`Secret`]: `Debug` shows
//! `[REDACTED]`, but [`AgentSettings::to_json`] writes the real value, since
//! that JSON is what the agent reads. Never log that JSON.

use std::collections::BTreeMap;

use opsbake_core::Secret;
use serde::{Deserialize, Serialize, Serializer};

/// The settings document the BOSH agent reads.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentSettings {
    /// Must be non-empty: the agent refuses settings without it.
    pub agent_id: String,
    /// The VM's name.
    #[serde(default)]
    pub vm: Vm,
    /// Networks by name.
    #[serde(default)]
    pub networks: BTreeMap<String, Network>,
    /// Disks.
    #[serde(default)]
    pub disks: Disks,
    /// `env`: `env.bosh` holds keys and password.
    #[serde(default)]
    pub env: Env,
    /// Other top-level keys (`mbus`, `blobstore`, `ntp`, ...), kept as given.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// `vm`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Vm {
    /// The VM's name.
    #[serde(default)]
    pub name: String,
}

/// One network.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Network {
    /// `dynamic` (DHCP) or `manual`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Static address (manual networks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Netmask (manual networks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netmask: Option<String>,
    /// Gateway (manual networks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// DNS servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// Which defaults this network provides (`dns`, `gateway`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub default: Vec<String>,
    /// MAC address the agent matches the interface by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Other keys, kept.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// `disks`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Disks {
    /// The system disk's device path.
    #[serde(default)]
    pub system: String,
    /// The ephemeral disk, if any (a device path or an object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral: Option<serde_json::Value>,
    /// Persistent disks by id.
    #[serde(default)]
    pub persistent: BTreeMap<String, serde_json::Value>,
    /// Other keys, kept.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Default for Disks {
    fn default() -> Self {
        Disks {
            system: "/dev/sda".to_string(),
            ephemeral: None,
            persistent: BTreeMap::new(),
            extra: BTreeMap::new(),
        }
    }
}

/// `env`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Env {
    /// `env.bosh`.
    #[serde(default)]
    pub bosh: BoshEnv,
    /// Other keys, kept.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// `env.bosh`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BoshEnv {
    /// Written to `/home/vcap/.ssh/authorized_keys` (replacing the file).
    #[serde(default)]
    pub authorized_keys: Vec<String>,
    /// A crypt(3) hash that becomes the password of root and vcap; empty locks them.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "expose_password"
    )]
    pub password: Option<Secret<String>>,
    /// Other keys, kept.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

fn expose_password<S: Serializer>(p: &Option<Secret<String>>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => s.serialize_str(p.expose()),
        None => s.serialize_none(),
    }
}

impl AgentSettings {
    /// The minimal settings of STEMCELLS.md §3: one dynamic network that
    /// provides DNS and the gateway, system disk `/dev/sda`, the given keys
    /// and password hash.
    pub fn minimal(
        agent_id: &str,
        authorized_keys: Vec<String>,
        password_hash: Option<Secret<String>>,
    ) -> Self {
        let mut networks = BTreeMap::new();
        networks.insert(
            "default".to_string(),
            Network {
                kind: Some("dynamic".to_string()),
                default: vec!["dns".to_string(), "gateway".to_string()],
                ..Network::default()
            },
        );
        AgentSettings {
            agent_id: agent_id.to_string(),
            vm: Vm {
                name: agent_id.to_string(),
            },
            networks,
            disks: Disks::default(),
            env: Env {
                bosh: BoshEnv {
                    authorized_keys,
                    password: password_hash,
                    extra: BTreeMap::new(),
                },
                extra: BTreeMap::new(),
            },
            extra: BTreeMap::new(),
        }
    }

    /// The JSON the agent reads, password included. Do not log it.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    /// Parse settings JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_settings_have_the_documented_shape() {
        let s = AgentSettings::minimal(
            "builder-1",
            vec!["ssh-ed25519 AAAA opsbake".into()],
            Some(Secret::new("$6$salt$hash".into())),
        );
        let v: serde_json::Value = serde_json::from_slice(&s.to_json().unwrap()).unwrap();
        assert_eq!(v["agent_id"], "builder-1");
        assert_eq!(v["vm"]["name"], "builder-1");
        assert_eq!(v["networks"]["default"]["type"], "dynamic");
        assert_eq!(
            v["networks"]["default"]["default"],
            serde_json::json!(["dns", "gateway"])
        );
        assert_eq!(v["disks"]["system"], "/dev/sda");
        assert_eq!(v["disks"]["persistent"], serde_json::json!({}));
        assert_eq!(v["env"]["bosh"]["password"], "$6$salt$hash");
        assert_eq!(
            v["env"]["bosh"]["authorized_keys"][0],
            "ssh-ed25519 AAAA opsbake"
        );
    }

    #[test]
    fn debug_hides_the_password_and_unknown_keys_round_trip() {
        let json = br#"{"agent_id":"a","mbus":"https://x","env":{"bosh":{"password":"$6$secret-hash","keep_root_password":true}},"networks":{"n":{"type":"manual","ip":"10.0.0.5","cloud_properties":{"name":"VM Network"}}}}"#;
        let s = AgentSettings::from_json(json).unwrap();
        assert!(!format!("{s:?}").contains("secret-hash"));
        let back: serde_json::Value = serde_json::from_slice(&s.to_json().unwrap()).unwrap();
        assert_eq!(back["mbus"], "https://x");
        assert_eq!(back["env"]["bosh"]["keep_root_password"], true);
        assert_eq!(back["env"]["bosh"]["password"], "$6$secret-hash");
        assert_eq!(
            back["networks"]["n"]["cloud_properties"]["name"],
            "VM Network"
        );
    }
}
