//! The IaaSes opsbake builds for, and everything core needs to know about
//! each one, in one table: [`IAAS_TABLE`] below.
//!
//! A row gives the IaaS's enum variant, its key under `builds:` (also its
//! name in templates and on the command line), its options struct (in
//! `crate::options`, so that the template's JSON Schema holds its fields) and
//! its [`IaasFacts`]. From that one row the macro makes the [`Iaas`] variant,
//! [`Iaas::ALL`], the names, the `builds.<name>` field of
//! [`crate::template::Builds`] and its common part. Core, the hand-off and
//! the stemcell crate ask [`Iaas::facts`] instead of matching on IaaSes.
//! Adding an IaaS: a row here, its options file, its crate, and one line in
//! the CLI's dispatch (docs/architecture.md, "How to add an IaaS").

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::options::{
    AwsOptions, AzureOptions, GcpOptions, LocaltestOptions, SshHostOptions, VboxOptions,
    VsphereOptions,
};
use crate::template::{BuildSpec, CommonSpec};

/// How the BOSH agent of a stemcell on this IaaS takes its settings
/// (STEMCELLS.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SettingsChannel {
    /// An HTTP metadata service (the path or key that holds the settings).
    Metadata(&'static str),
    /// A file the IaaS's guest tooling writes (cloud-init's user data).
    File(&'static str),
    /// A CD-ROM ISO with the settings JSON in this file.
    EnvIso(&'static str),
    /// None: the target is not booted from a stemcell by opsbake.
    None,
}

/// What core needs to know about one IaaS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct IaasFacts {
    /// Where the agent's settings come from.
    pub settings: SettingsChannel,
    /// The IaaS hands the instance a public key of its own (instance key
    /// metadata), which the agent installs before reading its settings.
    pub key_metadata: bool,
    /// The build boots a stemcell (`stemcells.<iaas>` is required).
    pub needs_stemcell: bool,
    /// `cloud_properties.infrastructure` values (and the second word of
    /// `bosh-<infrastructure>-...` names) of this IaaS's stemcells.
    pub stemcell_infrastructures: &'static [&'static str],
    /// The hand-off installs the first-boot unit that reads
    /// `public_ssh_key` from the OVF environment unless a template says.
    pub ovf_ssh_key: bool,
    /// The user names the target host (no VM is created): the hand-off
    /// refuses a loopback target unless a test allows it.
    pub user_named_target: bool,
    /// The target is the build host itself unless `ssh.host` says
    /// otherwise (the hand-off refuses it).
    pub on_build_host: bool,
}

impl IaasFacts {
    /// The facts of an IaaS whose builds create a VM from a stemcell.
    const fn cloud(settings: SettingsChannel, infrastructures: &'static [&'static str]) -> Self {
        IaasFacts {
            settings,
            key_metadata: false,
            needs_stemcell: true,
            stemcell_infrastructures: infrastructures,
            ovf_ssh_key: false,
            user_named_target: false,
            on_build_host: false,
        }
    }

    /// The facts of a target the user names (no stemcell, no VM made).
    const fn named_target() -> Self {
        IaasFacts {
            settings: SettingsChannel::None,
            key_metadata: false,
            needs_stemcell: false,
            stemcell_infrastructures: &[],
            ovf_ssh_key: false,
            user_named_target: true,
            on_build_host: false,
        }
    }
}

/// Makes [`Iaas`], its names and list, and [`Builds`] from the table.
macro_rules! iaas_table {
    ($(
        $(#[doc = $doc:literal])*
        $variant:ident {
            key: $key:ident,
            options: $opts:ty,
            builds_doc: $bdoc:literal,
            facts: $facts:expr $(,)?
        }
    )*) => {
        /// The IaaSes opsbake builds for.
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
            JsonSchema,
        )]
        #[serde(rename_all = "lowercase")]
        pub enum Iaas {
            $( $(#[doc = $doc])* $variant, )*
        }

        const COUNT: usize = [$(stringify!($key)),*].len();

        impl Iaas {
            /// Every IaaS, in a stable order.
            pub const ALL: [Iaas; COUNT] = [$(Iaas::$variant),*];

            /// The lowercase name used in templates and on the command line.
            pub fn as_str(&self) -> &'static str {
                match self {
                    $( Iaas::$variant => stringify!($key), )*
                }
            }

            /// What core needs to know about this IaaS.
            pub fn facts(&self) -> IaasFacts {
                match self {
                    $( Iaas::$variant => $facts, )*
                }
            }
        }

        /// The `builds` section: one entry per IaaS.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
        #[serde(deny_unknown_fields)]
        pub struct Builds {
            $(
                #[doc = $bdoc]
                #[serde(default)]
                pub $key: Option<BuildSpec<$opts>>,
            )*
        }

        impl Builds {
            /// The common part of one IaaS's entry.
            pub fn common(&self, iaas: Iaas) -> Option<CommonSpec> {
                match iaas {
                    $( Iaas::$variant => self.$key.as_ref().map(BuildSpec::common), )*
                }
            }
        }
    };
}

// The table. One row per IaaS; the order is the order of `Iaas::ALL`.
iaas_table! {
    /// Amazon EC2.
    Aws {
        key: aws,
        options: AwsOptions,
        builds_doc: "AWS.",
        facts: IaasFacts {
            key_metadata: true,
            ..IaasFacts::cloud(SettingsChannel::Metadata("/latest/user-data"), &["aws"])
        },
    }
    /// Google Compute Engine.
    Gcp {
        key: gcp,
        options: GcpOptions,
        builds_doc: "GCP.",
        facts: IaasFacts::cloud(
            SettingsChannel::Metadata("instance/attributes/bosh_settings"),
            &["google", "gcp", "gce"],
        ),
    }
    /// Microsoft Azure.
    Azure {
        key: azure,
        options: AzureOptions,
        builds_doc: "Azure.",
        facts: IaasFacts::cloud(
            SettingsChannel::File("/var/lib/cloud/instance/user-data.txt"),
            &["azure"],
        ),
    }
    /// VMware vSphere.
    Vsphere {
        key: vsphere,
        options: VsphereOptions,
        builds_doc: "vSphere.",
        facts: IaasFacts {
            ovf_ssh_key: true,
            ..IaasFacts::cloud(SettingsChannel::EnvIso("env"), &["vsphere"])
        },
    }
    /// VirtualBox (QEMU where VirtualBox is absent).
    Vbox {
        key: vbox,
        options: VboxOptions,
        builds_doc: "VirtualBox / QEMU.",
        facts: IaasFacts {
            ovf_ssh_key: true,
            ..IaasFacts::cloud(SettingsChannel::EnvIso("ENV"), &["vsphere", "vbox"])
        },
    }
    /// An existing host reached over SSH (Packer's `null` builder).
    Ssh {
        key: ssh,
        options: SshHostOptions,
        builds_doc: "An existing host.",
        facts: IaasFacts::named_target(),
    }
    /// A local test builder whose resources are files (for tests and demos
    /// of the runner; not an image builder).
    Localtest {
        key: localtest,
        options: LocaltestOptions,
        builds_doc: "The local test builder.",
        facts: IaasFacts {
            on_build_host: true,
            ..IaasFacts::named_target()
        },
    }
}

impl Iaas {
    /// The IaaS whose stemcells have this `infrastructure` (`google` is
    /// gcp), if any.
    pub fn for_stemcell_infrastructure(infrastructure: &str) -> Option<Iaas> {
        Iaas::ALL
            .into_iter()
            .find(|i| i.facts().stemcell_infrastructures.contains(&infrastructure))
    }

    /// `Ok` if a stemcell of this `infrastructure` (its manifest's
    /// `cloud_properties.infrastructure`) is one for this IaaS; else the
    /// message saying whose it is (`stemcell` names it).
    pub fn check_stemcell_infrastructure(
        self,
        infrastructure: &str,
        stemcell: &str,
    ) -> Result<(), String> {
        if Iaas::for_stemcell_infrastructure(infrastructure) == Some(self) {
            return Ok(());
        }
        let ours = self.facts().stemcell_infrastructures.first().copied();
        Err(format!(
            "is a stemcell for `{infrastructure}`, not {} ({stemcell})",
            ours.unwrap_or(self.as_str())
        ))
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_round_trip_and_facts_are_consistent() {
        for i in Iaas::ALL {
            assert_eq!(i.as_str().parse::<Iaas>().unwrap(), i);
            let f = i.facts();
            // A stemcell build knows its stemcells; a named target has none.
            assert_eq!(f.needs_stemcell, !f.stemcell_infrastructures.is_empty());
            assert!(!(f.user_named_target && f.needs_stemcell), "{i}");
        }
        assert_eq!(Iaas::for_stemcell_infrastructure("google"), Some(Iaas::Gcp));
        assert_eq!(Iaas::for_stemcell_infrastructure("aws"), Some(Iaas::Aws));
        assert_eq!(Iaas::for_stemcell_infrastructure("openstack"), None);
        assert!("openstack".parse::<Iaas>().is_err());
    }
}
