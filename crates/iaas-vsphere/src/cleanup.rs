//! Deleting what a build made, in the build (unwind) or later from
//! `opsbake cleanup`: VMs and templates (power off, destroy: vCenter deletes
//! their files), datastore files (the settings ISO), and the sweep that
//! finds a build's VMs by their `opsbake.build-id` ExtraConfig key when the
//! journal lost them (a kill between the create call and its record).

use std::sync::Arc;

use async_trait::async_trait;
use opsbake_core::builder::{BuildError, Deleted, Deleter};
use opsbake_core::journal::Resource;
use opsbake_core::Secret;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use crate::custom;
use crate::error::VsphereError;
use crate::inventory::{self, KEY_BUILD_ID, KEY_ROLE, KEY_STEMCELL_SHA1};
use crate::vim::tls::{parse_thumbprint, TlsMode};
use crate::vim::{normalise_url, MoRef, Vim};

/// The build VM (later the template the build leaves).
pub const VM: &str = "vsphere_vm";
/// An imported stemcell (kept as the base template once complete).
pub const BASE: &str = "vsphere_base";
/// A datastore file (`[ds] path`).
pub const FILE: &str = "vsphere_file";

/// What `opsbake cleanup` needs (never a secret: the password comes from
/// `GOVC_PASSWORD` or the `GOVC_URL` user info at cleanup time).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CleanupConfig {
    /// `https://host/sdk`, without credentials.
    pub url: String,
    /// The user.
    pub username: String,
    /// The datacenter.
    pub datacenter: String,
    /// The VM folder's inventory path.
    pub folder_path: String,
    /// Accept any certificate.
    #[serde(default)]
    pub insecure: bool,
    /// Pinned thumbprint (hex).
    #[serde(default)]
    pub thumbprint: Option<String>,
    /// CA file.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// The VM name prefix (`name_prefix`): the sweep also takes VMs whose
    /// name starts with it and holds the build id.
    #[serde(default)]
    pub name_prefix: String,
}

impl CleanupConfig {
    /// The TLS mode.
    pub fn tls(&self) -> Result<TlsMode, VsphereError> {
        if self.insecure {
            return Ok(TlsMode::Insecure);
        }
        if let Some(t) = &self.thumbprint {
            return parse_thumbprint(t)
                .map(TlsMode::Thumbprint)
                .map_err(VsphereError::Config);
        }
        if let Some(c) = &self.ca_file {
            return Ok(TlsMode::CaFile(c.into()));
        }
        Ok(TlsMode::System)
    }
}

/// Credentials for cleanup: `GOVC_USERNAME`/`GOVC_PASSWORD`, else the user
/// info of `GOVC_URL`.
fn env_credentials(user: &str) -> Option<(String, Secret<String>)> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let from_url = env("GOVC_URL").and_then(|u| normalise_url(&u).ok());
    let (uu, up) = from_url.map(|(_, u, p)| (u, p)).unwrap_or_default();
    let name = env("GOVC_USERNAME")
        .or(uu)
        .unwrap_or_else(|| user.to_string());
    let pass = env("GOVC_PASSWORD").map(Secret::new).or(up)?;
    Some((name, pass))
}

/// Deletes vSphere resources with a session of its own or the builder's.
pub struct VsphereDeleter {
    cfg: CleanupConfig,
    vim: OnceCell<Arc<Vim>>,
    cancel: CancellationToken,
}

impl VsphereDeleter {
    /// From a journal's cleanup config.
    pub fn new(cfg: CleanupConfig) -> VsphereDeleter {
        VsphereDeleter {
            cfg,
            vim: OnceCell::new(),
            cancel: CancellationToken::new(),
        }
    }

    /// With the builder's logged-in session.
    pub fn with_session(cfg: CleanupConfig, vim: Arc<Vim>) -> VsphereDeleter {
        let d = VsphereDeleter::new(cfg);
        let _ = d.vim.set(vim);
        d
    }

    async fn vim(&self) -> Result<Arc<Vim>, VsphereError> {
        self.vim
            .get_or_try_init(|| async {
                let (url, _, _) = normalise_url(&self.cfg.url).map_err(VsphereError::Config)?;
                let vim = Vim::connect(&url, &self.cfg.tls()?, std::time::Duration::from_secs(300))
                    .await?;
                let (user, pass) = env_credentials(&self.cfg.username).ok_or_else(|| {
                    VsphereError::Config(format!(
                        "cleanup needs the password of {} at {}: set GOVC_PASSWORD (or GOVC_URL with user info)",
                        self.cfg.username, self.cfg.url
                    ))
                })?;
                vim.login(&user, &pass).await?;
                Ok(Arc::new(vim))
            })
            .await
            .cloned()
    }

    /// Delete one resource.
    pub async fn delete_resource(&self, res: &Resource) -> Result<Deleted, VsphereError> {
        let vim = self.vim().await?;
        match res.kind.as_str() {
            VM | BASE => {
                let vm = match &res.id {
                    Some(id) => Some(MoRef::new("VirtualMachine", id)),
                    // died between intent and record: by name in the folder
                    None => {
                        vim.find_by_path(&format!("{}/{}", self.cfg.folder_path, res.name))
                            .await?
                    }
                };
                let Some(vm) = vm else {
                    return Ok(Deleted::AlreadyGone);
                };
                if res.id.is_none() {
                    // only ours: a clone carries the build id from its
                    // creation; an import gets its marks after the upload,
                    // so a base without the sha1 mark is a half import
                    // (killed between ImportVApp and its record)
                    let p = vim.props(&vm, &["config.extraConfig"]).await?;
                    let ec = inventory::extra_config(&p);
                    let ours = res.token.is_empty()
                        || ec
                            .get(KEY_BUILD_ID)
                            .is_some_and(|b| res.token.starts_with(b.as_str()))
                        || (res.kind == BASE && !ec.contains_key(KEY_STEMCELL_SHA1));
                    if !ours {
                        return Ok(Deleted::AlreadyGone);
                    }
                }
                let what = format!("{} {} ({vm})", res.kind, res.name);
                if inventory::destroy(&vim, &vm, &what, &self.cancel).await? {
                    Ok(Deleted::Now)
                } else {
                    Ok(Deleted::AlreadyGone)
                }
            }
            FILE => {
                let dc = inventory::datacenter(&vim, &self.cfg.datacenter).await?;
                let path = res.id.clone().unwrap_or_else(|| res.name.clone());
                if vim.delete_datastore_file(&path, &dc, &self.cancel).await? {
                    Ok(Deleted::Now)
                } else {
                    Ok(Deleted::AlreadyGone)
                }
            }
            other => Err(VsphereError::Config(format!(
                "unknown resource kind `{other}` in a vsphere build"
            ))),
        }
    }

    /// VMs of this build that are not artifacts or complete bases: by the
    /// ExtraConfig key, by the custom attribute [`custom::FIELD`], or by
    /// the name prefix and the build id in the name.
    pub async fn sweep_vms(&self, build_id: &str) -> Result<Vec<Resource>, VsphereError> {
        let vim = self.vim().await?;
        let key = match custom::field_key(&vim).await {
            Ok(k) => k,
            Err(e) => {
                tracing::debug!("custom attribute {}: {e}", custom::FIELD);
                None
            }
        };
        let objs = vim
            .list(
                &vim.sc.root_folder,
                "VirtualMachine",
                &["name", "config.extraConfig", "customValue"],
            )
            .await?;
        let mut out = Vec::new();
        for o in objs {
            let ec = inventory::extra_config(&o.props);
            let name = o
                .props
                .get("name")
                .map(|n| n.text.clone())
                .unwrap_or_default();
            let by_extra_config = ec.get(KEY_BUILD_ID).map(String::as_str) == Some(build_id);
            let by_attribute =
                key.as_deref().and_then(|k| custom::value_of(&o.props, k)) == Some(build_id);
            let by_name = !self.cfg.name_prefix.is_empty()
                && !build_id.is_empty()
                && name.starts_with(&self.cfg.name_prefix)
                && name.contains(build_id);
            if !(by_extra_config || by_attribute || by_name) {
                continue;
            }
            let role = ec.get(KEY_ROLE).map(String::as_str).unwrap_or("build");
            if role == "artifact" || (role == "base" && ec.contains_key(KEY_STEMCELL_SHA1)) {
                continue;
            }
            out.push(Resource {
                seq: 0,
                kind: if role == "base" { BASE } else { VM }.to_string(),
                name,
                token: String::new(),
                id: Some(o.obj.value.clone()),
                data: serde_json::Value::Null,
                created_data: serde_json::Value::Null,
                last_error: None,
            });
        }
        Ok(out)
    }
}

#[async_trait]
impl Deleter for VsphereDeleter {
    async fn delete(&self, res: &Resource) -> Result<Deleted, BuildError> {
        if let Some(r) = opsbake_core::builder::delete_local(res).await {
            return r;
        }
        Ok(self.delete_resource(res).await?)
    }

    async fn sweep(&self, build_id: &str) -> Result<Vec<Resource>, BuildError> {
        Ok(self.sweep_vms(build_id).await?)
    }
}
