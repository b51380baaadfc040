//! Where the build happens: the datacenter, its `vm` folder (or a subfolder),
//! the cluster or host and its resource pool, the datastore and the network,
//! each found by inventory path; a missing one is an error naming the path.
//! Also the VM-level reads and edits the steps share (devices, extraConfig,
//! power).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{inventory_path, Config, TASK_TIMEOUT};
use crate::error::VsphereError;
use crate::vim::xml::{el, esc, moref_el, Node};
use crate::vim::{this, MoRef, Vim};

/// ExtraConfig key carrying the build id on every VM the builder makes.
pub const KEY_BUILD_ID: &str = "opsbake.build-id";
/// ExtraConfig key carrying the stemcell's sha1 on an imported base.
pub const KEY_STEMCELL_SHA1: &str = "opsbake.stemcell-sha1";
/// ExtraConfig key: `base` (imported stemcell), `build` (the build VM),
/// `artifact` (the template the build leaves).
pub const KEY_ROLE: &str = "opsbake.role";

/// A network and how a NIC is attached to it.
#[derive(Debug, Clone)]
pub struct Net {
    /// The network object.
    pub moref: MoRef,
    /// Its name.
    pub name: String,
    /// For a distributed port group: (switch uuid, port group key).
    pub dvs: Option<(String, String)>,
}

impl Net {
    /// The NIC backing for this network.
    pub fn backing(&self) -> String {
        match &self.dvs {
            None => format!(
                "<backing xsi:type=\"VirtualEthernetCardNetworkBackingInfo\">{}{}</backing>",
                el("deviceName", &self.name),
                moref_el("network", &self.moref)
            ),
            Some((uuid, key)) => format!(
                "<backing xsi:type=\"VirtualEthernetCardDistributedVirtualPortBackingInfo\"><port>{}{}</port></backing>",
                el("switchUuid", uuid),
                el("portgroupKey", key)
            ),
        }
    }
}

/// The resolved placement.
#[derive(Debug, Clone)]
pub struct Place {
    /// The datacenter.
    pub dc: MoRef,
    /// Its name.
    pub dc_name: String,
    /// The VM folder.
    pub folder: MoRef,
    /// Its inventory path.
    pub folder_path: String,
    /// The resource pool.
    pub pool: MoRef,
    /// The host, when one was named.
    pub host: Option<MoRef>,
    /// The datastore.
    pub datastore: MoRef,
    /// Its name.
    pub ds_name: String,
    /// The network, when one was named.
    pub network: Option<Net>,
}

async fn need(vim: &Vim, what: &str, path: &str) -> Result<MoRef, VsphereError> {
    vim.find_by_path(path)
        .await?
        .ok_or_else(|| VsphereError::NotFound {
            what: what.to_string(),
            path: path.to_string(),
            scope: vim.url().to_string(),
        })
}

/// The datacenter alone (the deleter needs only it).
pub async fn datacenter(vim: &Vim, name: &str) -> Result<MoRef, VsphereError> {
    need(vim, "datacenter", name).await
}

/// Resolve every object of the placement.
pub async fn resolve(vim: &Vim, cfg: &Config) -> Result<Place, VsphereError> {
    let dc_name = cfg.datacenter.clone();
    let dc = datacenter(vim, &dc_name).await?;
    let folder_path = inventory_path(&dc_name, &["vm", cfg.folder.as_deref().unwrap_or("")]);
    let folder = need(vim, "VM folder", &folder_path).await?;
    let (compute_path, host) = match (&cfg.cluster, &cfg.host) {
        (Some(c), h) => {
            let cp = inventory_path(&dc_name, &["host", c]);
            let host = match h {
                Some(h) => Some(need(vim, "host", &inventory_path(&cp, &[h])).await?),
                None => None,
            };
            (cp, host)
        }
        (None, Some(h)) => {
            // a standalone host: its ComputeResource has the host's name
            let cp = inventory_path(&dc_name, &["host", h]);
            let host = need(vim, "host", &inventory_path(&cp, &[h])).await?;
            (cp, Some(host))
        }
        (None, None) => {
            return Err(VsphereError::Config("set `cluster` or `host`".into()));
        }
    };
    let compute = need(
        vim,
        if cfg.cluster.is_some() {
            "cluster"
        } else {
            "host"
        },
        &compute_path,
    )
    .await?;
    let pool = match &cfg.resource_pool {
        Some(rp) => {
            need(
                vim,
                "resource pool",
                &inventory_path(&compute_path, &["Resources", rp]),
            )
            .await?
        }
        None => vim
            .props(&compute, &["resourcePool"])
            .await?
            .get("resourcePool")
            .and_then(MoRef::from_node)
            .ok_or_else(|| VsphereError::NotFound {
                what: "root resource pool of".into(),
                path: compute_path.clone(),
                scope: vim.url().to_string(),
            })?,
    };
    let ds_name = cfg.datastore.clone();
    let datastore = need(
        vim,
        "datastore",
        &inventory_path(&dc_name, &["datastore", &ds_name]),
    )
    .await?;
    let network = match &cfg.network {
        None => None,
        Some(n) => {
            let m = need(vim, "network", &inventory_path(&dc_name, &["network", n])).await?;
            let dvs = if m.kind == "DistributedVirtualPortgroup" {
                let p = vim
                    .props(&m, &["key", "config.distributedVirtualSwitch"])
                    .await?;
                let key = p.get("key").map(|k| k.text.clone()).unwrap_or_default();
                let sw = p
                    .get("config.distributedVirtualSwitch")
                    .and_then(MoRef::from_node)
                    .ok_or_else(|| VsphereError::Protocol {
                        op: "RetrievePropertiesEx".into(),
                        message: format!("port group {n} has no switch"),
                    })?;
                let uuid = vim.prop_text(&sw, "uuid").await?;
                Some((uuid, key))
            } else {
                None
            };
            Some(Net {
                moref: m,
                name: n.clone(),
                dvs,
            })
        }
    };
    Ok(Place {
        dc,
        dc_name,
        folder,
        folder_path,
        pool,
        host,
        datastore,
        ds_name,
        network,
    })
}

/// `[ds] path`.
pub fn ds_path(ds: &str, path: &str) -> String {
    format!("[{ds}] {path}")
}

/// A VM's extraConfig as a map.
pub fn extra_config(props: &crate::vim::Props) -> std::collections::BTreeMap<String, String> {
    props
        .get("config.extraConfig")
        .map(|n| {
            n.children
                .iter()
                .filter_map(|o| {
                    Some((
                        o.text_of("key")?.to_string(),
                        o.text_of("value")?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `<extraConfig>` entries; an empty value removes the key.
pub fn extra_config_xml(kv: &[(&str, &str)]) -> String {
    kv.iter()
        .map(|(k, v)| {
            format!(
                "<extraConfig xsi:type=\"OptionValue\">{}<value xsi:type=\"xsd:string\">{}</value></extraConfig>",
                el("key", k),
                esc(v)
            )
        })
        .collect()
}

/// `ReconfigVM_Task` with a config spec body.
pub async fn reconfigure(
    vim: &Vim,
    vm: &MoRef,
    what: &str,
    spec: &str,
    cancel: &CancellationToken,
) -> Result<(), VsphereError> {
    let body = format!("{}<spec>{spec}</spec>", this(vm));
    vim.run_task("ReconfigVM_Task", &body, what, TASK_TIMEOUT, cancel)
        .await
        .map(|_| ())
}

/// The VM's devices.
pub async fn devices(vim: &Vim, vm: &MoRef) -> Result<Vec<Node>, VsphereError> {
    Ok(vim
        .props(vm, &["config.hardware.device"])
        .await?
        .get("config.hardware.device")
        .map(|n| n.children.clone())
        .unwrap_or_default())
}

/// The power state (`poweredOn`, `poweredOff`, `suspended`).
pub async fn power_state(vim: &Vim, vm: &MoRef) -> Result<String, VsphereError> {
    vim.prop_text(vm, "runtime.powerState").await
}

/// Power off (a no-op when already off).
pub async fn power_off(
    vim: &Vim,
    vm: &MoRef,
    what: &str,
    cancel: &CancellationToken,
) -> Result<(), VsphereError> {
    if power_state(vim, vm).await? == "poweredOff" {
        return Ok(());
    }
    match vim
        .run_task(
            "PowerOffVM_Task",
            &this(vm),
            what,
            Duration::from_secs(600),
            cancel,
        )
        .await
    {
        Ok(_) | Err(VsphereError::InvalidPowerState { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Power off and destroy a VM or template; gone already is `Ok(false)`.
pub async fn destroy(
    vim: &Vim,
    vm: &MoRef,
    what: &str,
    cancel: &CancellationToken,
) -> Result<bool, VsphereError> {
    let r = async {
        let is_template = vim.prop_text(vm, "config.template").await? == "true";
        if !is_template {
            power_off(vim, vm, what, cancel).await?;
        }
        vim.run_task("Destroy_Task", &this(vm), what, TASK_TIMEOUT, cancel)
            .await
    }
    .await;
    match r {
        Ok(_) => Ok(true),
        Err(VsphereError::ManagedObjectNotFound { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}
