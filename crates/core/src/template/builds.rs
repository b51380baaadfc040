//! The `builds` section: one entry per IaaS.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::*;

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

impl<O: Default> BuildSpec<O> {
    /// The part every IaaS has, without the options.
    pub fn common(&self) -> CommonSpec {
        CommonSpec {
            cpus: self.cpus.clone(),
            memory: self.memory.clone(),
            disk: self.disk.clone(),
            network: self.network.clone(),
            ssh: self.ssh.clone(),
        }
    }
}

impl<O: Default + Clone> BuildSpec<O> {
    /// The options of an IaaS's entry (`builds.<iaas>.options`), the
    /// defaults when the template has no entry for it.
    pub fn options_or_default(spec: Option<&BuildSpec<O>>) -> O {
        spec.map(|b| b.options.clone()).unwrap_or_default()
    }
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
}
