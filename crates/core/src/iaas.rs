//! The IaaSes opsbake builds for, and what each one needs core to know.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
