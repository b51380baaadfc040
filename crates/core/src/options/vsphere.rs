//! The `builds.vsphere.options` of a template (one file per IaaS, so that a builder
//! changes only its own). docs/vsphere.md explains each.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::secret::Secret;
use crate::template::{Dur, Tv};

/// vSphere options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct VsphereOptions {
    /// vCenter (or ESXi) URL: `https://vcenter.example.com/sdk`, or a host
    /// name. Credentials inside the URL (`GOVC_URL` style) are used when
    /// `username`/`password` are not set, and never printed.
    #[serde(default)]
    pub url: Option<String>,
    /// User (`administrator@vsphere.local`, a service account with the role
    /// of docs/vsphere.md).
    #[serde(default)]
    pub username: Option<String>,
    /// Password (a sensitive variable; never logged).
    #[serde(default)]
    pub password: Option<Secret<String>>,
    /// Accept any server certificate. For labs only: opsbake warns. Prefer
    /// `ca_file` or `thumbprint`.
    #[serde(default)]
    pub insecure: bool,
    /// PEM file with the CA that signed vCenter's certificate (the VMCA
    /// root); default: the system's roots.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Pin vCenter's certificate by its SHA-256 (or SHA-1, as
    /// `govc about.cert -thumbprint` prints it) fingerprint, hex with or
    /// without colons.
    #[serde(default)]
    pub thumbprint: Option<String>,
    /// Datacenter name.
    #[serde(default)]
    pub datacenter: Option<String>,
    /// Cluster name (in the datacenter's host folder). One of `cluster` or
    /// `host` is required.
    #[serde(default)]
    pub cluster: Option<String>,
    /// ESXi host name (in the datacenter's host folder, or a cluster's
    /// member when `cluster` is set too).
    #[serde(default)]
    pub host: Option<String>,
    /// Datastore name.
    #[serde(default)]
    pub datastore: Option<String>,
    /// Resource pool path below the cluster's or host's root pool
    /// (`pool1/child`); default the root pool.
    #[serde(default)]
    pub resource_pool: Option<String>,
    /// VM folder path below the datacenter's `vm` folder (`images/appliance`);
    /// default the `vm` folder itself. It must exist.
    #[serde(default)]
    pub folder: Option<String>,
    /// Port group (standard or distributed) of the build VM's first NIC.
    #[serde(default)]
    pub network: Option<String>,
    /// Name of the build VM. Default `opsbake-<build id>`.
    #[serde(default)]
    pub vm_name: Option<String>,
    /// Name of the template the build leaves (when `template` is true).
    /// Default `<template name>-<version>-<build id>`.
    #[serde(default)]
    pub template_name: Option<String>,
    /// Clone this existing template or VM (inventory path below the `vm`
    /// folder, or a name) instead of importing the stemcell.
    #[serde(default)]
    pub source_template: Option<String>,
    /// Linked clone from the base template's snapshot (faster, shares disks).
    #[serde(default)]
    pub linked_clone: bool,
    /// Replace an existing VM or template of the same name.
    #[serde(default)]
    pub force: bool,
    /// Leave the captured VM as a template (default true).
    #[serde(default)]
    pub template: Option<bool>,
    /// Also export the captured VM as an OVA (`ExportVm` + the lease's
    /// downloads through vCenter) into the outputs directory.
    #[serde(default)]
    pub export_ova: bool,
    /// How long to wait for VMware Tools to report an address (`5m`).
    /// Default 10 minutes.
    #[serde(default)]
    pub ip_wait_timeout: Option<Tv<Dur>>,
    /// How long the address must stay the same before it is used (`5s`).
    /// Default 5 seconds.
    #[serde(default)]
    pub ip_settle: Option<Tv<Dur>>,
    /// How long a guest shutdown may take before the VM is powered off.
    /// Default 5 minutes.
    #[serde(default)]
    pub shutdown_timeout: Option<Tv<Dur>>,
    /// Name prefix of the objects this builder creates, also what
    /// `opsbake cleanup` sweeps by (besides the build-id ExtraConfig key).
    /// Default `opsbake-`.
    #[serde(default)]
    pub name_prefix: Option<String>,
}
