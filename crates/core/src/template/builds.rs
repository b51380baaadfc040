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
