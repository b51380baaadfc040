//! opsbake-iaas-vsphere: the `vsphere` builder.
//!
//! One module per step: [`config`] (options, offline checks), [`inventory`]
//! (placement by inventory path, VM edits), [`import`] (the stemcell as a
//! base template), [`launch`] (clone, settings ISO, power on, the guest
//! address), [`capture`] (shutdown, template, OVA export), [`cleanup`]
//! (the deleter and sweep), on the vim25 SOAP client in [`vim`]. This file
//! only wires the [`Builder`] steps together. docs/vsphere.md is the user's
//! guide.

pub mod capture;
pub mod cleanup;
pub mod config;
pub mod custom;
pub mod error;
pub mod import;
pub mod inventory;
pub mod launch;
pub mod vim;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use opsbake_core::builder::{
    Access, Artifact, ArtifactFile, BaseImage, BuildContext, BuildError, Builder, ConnectTarget,
    Deleted, Deleter, Finding, SshAuth, SshTarget, LOCAL_FILE,
};
use opsbake_core::journal::Resource;
use opsbake_core::plan::BuildPlan;
use opsbake_core::template::{BuildSpec, Iaas};
use opsbake_core::Secret;
use tokio::sync::Mutex;

use crate::cleanup::{CleanupConfig, VsphereDeleter, FILE, VM};
use crate::config::Config;
use crate::error::VsphereError;
use crate::inventory::Place;
use crate::vim::tls::TlsMode;
use crate::vim::{MoRef, Vim};

/// The builder for one plan.
pub fn builder(plan: &BuildPlan) -> Result<Arc<dyn Builder>, BuildError> {
    let opts = BuildSpec::options_or_default(plan.template.builds.vsphere.as_ref());
    let (cfg, findings) = Config::resolve(plan, &opts);
    Ok(Arc::new(VsphereBuilder {
        plan: plan.clone(),
        cfg,
        findings,
        state: Mutex::new(State::default()),
    }))
}

/// A deleter for `opsbake cleanup` from a journal's `cleanup_config`.
pub fn deleter(cleanup_config: &serde_json::Value) -> Result<Arc<dyn Deleter>, BuildError> {
    let cfg: CleanupConfig = serde_json::from_value(cleanup_config.clone())
        .map_err(|e| BuildError::Other(format!("vsphere cleanup config in the journal: {e}")))?;
    Ok(Arc::new(VsphereDeleter::new(cfg)))
}

#[derive(Default)]
struct State {
    vim: Option<Arc<Vim>>,
    place: Option<Place>,
    deleter: Option<Arc<VsphereDeleter>>,
    stemcell_sha1: String,
    vm: Option<(u64, MoRef)>,
    iso: Option<(u64, String)>,
    cdrom_added: bool,
    work: Option<PathBuf>,
}

struct VsphereBuilder {
    plan: BuildPlan,
    cfg: Option<Config>,
    findings: Vec<Finding>,
    state: Mutex<State>,
}

fn tls_fields(t: &TlsMode) -> (bool, Option<String>, Option<String>) {
    match t {
        TlsMode::Insecure => (true, None, None),
        TlsMode::Thumbprint(b) => (false, Some(hex::encode(b)), None),
        TlsMode::CaFile(p) => (false, None, Some(p.display().to_string())),
        TlsMode::System => (false, None, None),
    }
}

/// A SHA-512 crypt hash (`openssl passwd -6`, password on stdin).
async fn password_hash(p: &Secret<String>) -> Result<Secret<String>, VsphereError> {
    use tokio::io::AsyncWriteExt as _;
    let mut c = tokio::process::Command::new("openssl")
        .args(["passwd", "-6", "-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| VsphereError::local("openssl", e))?;
    if let Some(mut i) = c.stdin.take() {
        let mut b = p.expose().as_bytes().to_vec();
        b.push(b'\n');
        i.write_all(&b)
            .await
            .map_err(|e| VsphereError::local("openssl", e))?;
    }
    let out = c
        .wait_with_output()
        .await
        .map_err(|e| VsphereError::local("openssl", e))?;
    let h = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || !h.starts_with("$6$") {
        return Err(VsphereError::local(
            "openssl",
            "`openssl passwd -6` did not print a SHA-512 crypt hash",
        ));
    }
    Ok(Secret::new(h))
}

impl VsphereBuilder {
    fn cfg(&self) -> Result<&Config, VsphereError> {
        self.cfg
            .as_ref()
            .ok_or_else(|| Config::findings_error(&self.findings))
    }

    fn cleanup_cfg(&self) -> Option<CleanupConfig> {
        let c = self.cfg.as_ref()?;
        let (insecure, thumbprint, ca_file) = tls_fields(&c.tls);
        Some(CleanupConfig {
            url: c.url.to_string(),
            username: c.username.clone(),
            datacenter: c.datacenter.clone(),
            folder_path: config::inventory_path(
                &c.datacenter,
                &["vm", c.folder.as_deref().unwrap_or("")],
            ),
            insecure,
            thumbprint,
            ca_file,
            name_prefix: c.prefix.clone(),
        })
    }

    async fn session(&self) -> Result<(Arc<Vim>, Place), VsphereError> {
        let st = self.state.lock().await;
        match (&st.vim, &st.place) {
            (Some(v), Some(p)) => Ok((v.clone(), p.clone())),
            _ => Err(VsphereError::Config(
                "no vCenter session (validate did not run)".into(),
            )),
        }
    }

    async fn login(&self) -> Result<Arc<Vim>, VsphereError> {
        if let Some(v) = self.state.lock().await.vim.clone() {
            return Ok(v);
        }
        let cfg = self.cfg()?;
        let vim = Vim::connect(&cfg.url, &cfg.tls, std::time::Duration::from_secs(300)).await?;
        vim.login(&cfg.username, &cfg.password).await?;
        let vim = Arc::new(vim);
        let mut st = self.state.lock().await;
        st.vim = Some(vim.clone());
        if let Some(cc) = self.cleanup_cfg() {
            st.deleter = Some(Arc::new(VsphereDeleter::with_session(cc, vim.clone())));
        }
        Ok(vim)
    }

    fn stemcell_path(&self) -> Result<PathBuf, VsphereError> {
        match self.plan.stemcell.as_ref().map(|s| (&s.path, &s.url)) {
            Some((Some(p), _)) => Ok(self.plan.template_dir.join(p)),
            Some((None, Some(u))) => Err(VsphereError::Config(format!(
                "stemcell URL {u}: download it first (`stemcells.vsphere.path`)"
            ))),
            _ => Err(VsphereError::Config(
                "no vSphere stemcell in the template".into(),
            )),
        }
    }

    /// A name in the folder is free, or `force` replaces it.
    async fn check_free(
        &self,
        ctx: &BuildContext,
        vim: &Vim,
        place: &Place,
        name: &str,
    ) -> Result<(), VsphereError> {
        let cfg = self.cfg()?;
        let path = format!("{}/{name}", place.folder_path);
        let Some(found) = vim.find_by_path(&path).await? else {
            return Ok(());
        };
        if !cfg.force {
            return Err(VsphereError::DuplicateName {
                op: "validate".into(),
                name: path,
                object: found.to_string(),
            });
        }
        ctx.events
            .warn(format!("force: destroying the existing {path} ({found})"));
        inventory::destroy(vim, &found, &path, &ctx.cancel).await?;
        Ok(())
    }
}

#[async_trait]
impl Deleter for VsphereBuilder {
    async fn delete(&self, res: &Resource) -> Result<Deleted, BuildError> {
        if let Some(r) = opsbake_core::builder::delete_local(res).await {
            return r;
        }
        let d = self.state.lock().await.deleter.clone();
        let d = match d {
            Some(d) => d,
            None => {
                self.login().await?;
                self.state
                    .lock()
                    .await
                    .deleter
                    .clone()
                    .ok_or_else(|| BuildError::from(Config::findings_error(&self.findings)))?
            }
        };
        d.delete(res).await
    }

    async fn sweep(&self, build_id: &str) -> Result<Vec<Resource>, BuildError> {
        self.login().await?;
        let d = self.state.lock().await.deleter.clone();
        match d {
            Some(d) => d.sweep(build_id).await,
            None => Ok(Vec::new()),
        }
    }
}

#[async_trait]
impl Builder for VsphereBuilder {
    fn iaas(&self) -> Iaas {
        Iaas::Vsphere
    }

    fn cleanup_config(&self) -> serde_json::Value {
        self.cleanup_cfg()
            .and_then(|c| serde_json::to_value(c).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    fn offline_checks(&self) -> Vec<Finding> {
        self.findings.clone()
    }

    async fn validate(&self, ctx: &BuildContext) -> Result<(), BuildError> {
        let cfg = self.cfg()?;
        if cfg.tls == TlsMode::Insecure {
            ctx.events.warn(format!(
                "builds.vsphere.options.insecure: the certificate of {} is NOT verified; pin it with `thumbprint` instead",
                cfg.url
            ));
        }
        if cfg.source_template.is_none() {
            let p = self.stemcell_path()?;
            if !p.is_file() {
                return Err(VsphereError::local(&p, "stemcell not found").into());
            }
        }
        let vim = self.login().await?;
        ctx.events.info(format!(
            "logged in to {} ({}) as {}",
            cfg.url, vim.sc.full_name, cfg.username
        ));
        let place = inventory::resolve(&vim, cfg).await?;
        let need_mib = self.plan.disk_mib.unwrap_or(0) + self.plan.memory_mib;
        let p = vim.props(&place.datastore, &["summary.freeSpace"]).await?;
        let free_mib = p
            .get("summary.freeSpace")
            .and_then(|n| n.text.parse::<u64>().ok())
            .unwrap_or(u64::MAX)
            >> 20;
        if free_mib < need_mib {
            return Err(VsphereError::DatastoreFull {
                datastore: place.ds_name.clone(),
                free_mib,
                need_mib,
            }
            .into());
        }
        self.check_free(ctx, &vim, &place, &cfg.vm_name).await?;
        if cfg.template {
            self.check_free(ctx, &vim, &place, &cfg.template_name)
                .await?;
        }
        self.state.lock().await.place = Some(place);
        Ok(())
    }

    async fn base_image(&self, ctx: &BuildContext) -> Result<BaseImage, BuildError> {
        let cfg = self.cfg()?;
        let (vim, place) = self.session().await?;
        let mut details = BTreeMap::new();
        if let Some(src) = &cfg.source_template {
            let found = match vim
                .find_by_path(&format!("{}/{src}", place.folder_path))
                .await?
            {
                Some(m) => Some(m),
                None => {
                    vim.find_by_path(&config::inventory_path(&place.dc_name, &["vm", src]))
                        .await?
                }
            };
            let m = found.ok_or_else(|| VsphereError::NotFound {
                what: "source_template".into(),
                path: src.clone(),
                scope: place.folder_path.clone(),
            })?;
            details.insert("source_template".into(), src.clone());
            return Ok(BaseImage {
                id: m.value,
                details,
            });
        }
        let stemcell = self.stemcell_path()?;
        let s2 = stemcell.clone();
        let manifest = tokio::task::spawn_blocking(move || opsbake_stemcell::read_manifest(&s2))
            .await
            .map_err(|j| BuildError::Other(format!("stemcell manifest task: {j}")))?
            .map_err(|e| VsphereError::local(&stemcell, e))?;
        let name = import::base_name(&cfg.prefix, &manifest.sha1);
        details.insert("stemcell_sha1".into(), manifest.sha1.clone());
        details.insert("stemcell_name".into(), manifest.name.clone());
        details.insert("stemcell_version".into(), manifest.version.clone());
        details.insert("base_template".into(), name.clone());
        self.state.lock().await.stemcell_sha1 = manifest.sha1.clone();
        match import::find_base(&vim, &place, &name, &manifest.sha1).await? {
            Some((m, true)) if !ctx.options.reimport => {
                ctx.events.info(format!(
                    "reusing base template {name} ({m}) of stemcell sha1 {}",
                    manifest.sha1
                ));
                details.insert("reused".into(), "true".into());
                return Ok(BaseImage {
                    id: m.value,
                    details,
                });
            }
            Some((m, complete)) => {
                ctx.events.warn(format!(
                    "{} base template {name} ({m}): destroying it before importing again",
                    if complete {
                        "--reimport:"
                    } else {
                        "incomplete"
                    }
                ));
                inventory::destroy(&vim, &m, &name, &ctx.cancel).await?;
            }
            None => {}
        }
        let work = ctx.state_dir().join("vsphere");
        tokio::fs::create_dir_all(&work)
            .await
            .map_err(BuildError::io(&work))?;
        let dest = work.join("stemcell");
        let _ = tokio::fs::remove_dir_all(&dest).await;
        let ex = import::extract(&stemcell, &dest).await?;
        let r = import::import(ctx, &vim, cfg, &place, &name, &manifest.sha1, &ex).await;
        let _ = tokio::fs::remove_dir_all(&dest).await;
        let m = r?;
        self.state.lock().await.work = Some(work);
        details.insert("reused".into(), "false".into());
        Ok(BaseImage {
            id: m.value,
            details,
        })
    }

    async fn launch(
        &self,
        ctx: &BuildContext,
        base: &BaseImage,
        access: &Access,
    ) -> Result<ConnectTarget, BuildError> {
        let cfg = self.cfg()?;
        let (vim, place) = self.session().await?;
        let src = MoRef::new("VirtualMachine", &base.id);
        let (seq, vm) = launch::clone_vm(ctx, &vim, cfg, &place, &src).await?;
        let what = format!("{}/{}", place.folder_path, cfg.vm_name);
        if let Err(e) = custom::tag(&vim, &vm, &what, ctx.build_id()).await {
            ctx.events.warn(format!(
                "custom attribute {} on {what}: {e} (the sweep still finds it by ExtraConfig and name)",
                custom::FIELD
            ));
        }
        self.state.lock().await.vm = Some((seq, vm.clone()));
        let what = format!("{}/{}", place.folder_path, cfg.vm_name);
        ctx.events
            .info(format!("cloned {} into {what} ({vm})", base.id));
        // the agent settings: the build's key, the password's hash
        let hash = match &self.plan.ssh.password {
            Some(p) => Some(password_hash(p).await?),
            None => None,
        };
        let keys = access
            .key
            .as_ref()
            .map(|k| vec![k.public_openssh.clone()])
            .unwrap_or_default();
        let agent_id = format!("opsbake-{}", ctx.build_id());
        let settings = opsbake_stemcell::AgentSettings::minimal(&agent_id, keys, hash);
        let json = settings
            .to_json()
            .map_err(|e| BuildError::Other(format!("agent settings: {e}")))?;
        let iso = opsbake_stemcell::agent_settings_iso(&settings, 0)
            .and_then(|w| w.to_bytes())
            .map_err(|e| BuildError::Other(format!("settings ISO: {e}")))?;
        let dir = launch::vm_dir(&vim, &vm).await?;
        let (iseq, iso_path) = launch::upload_iso(ctx, &vim, &place, &dir, iso).await?;
        ctx.events.info(format!(
            "agent settings ISO {iso_path} (file `env`; the build's key, {})",
            if self.plan.ssh.password.is_some() {
                "the ssh password's hash"
            } else {
                "no password"
            }
        ));
        let devices = inventory::devices(&vim, &vm).await?;
        let (spec, cd) = launch::hardware_spec(
            self.plan.cpus,
            self.plan.memory_mib,
            self.plan.disk_mib,
            &devices,
            place.network.as_ref(),
            &iso_path,
            &json,
        )?;
        {
            let mut st = self.state.lock().await;
            st.iso = Some((iseq, iso_path));
            st.cdrom_added = matches!(cd, launch::Cdrom::Added(_));
        }
        inventory::reconfigure(&vim, &vm, &what, &spec, &ctx.cancel).await?;
        launch::power_on(&vim, &vm, &what, &ctx.cancel).await?;
        let plan = &self.plan;
        let host = match plan.ssh.host.as_deref().map(str::trim) {
            Some(h) if !h.is_empty() => h.to_string(),
            _ => {
                let t0 = std::time::Instant::now();
                let ip =
                    launch::wait_ip(&vim, &vm, cfg.ip_wait, cfg.ip_settle, &ctx.cancel).await?;
                ctx.events.info(format!(
                    "{what}: VMware Tools reports {ip} (stable for {:?}; {:.1}s)",
                    cfg.ip_settle,
                    t0.elapsed().as_secs_f64()
                ));
                ip
            }
        };
        // vSphere has no key metadata: the key reaches the VM only through the
        // settings ISO, so the password follows a refused key.
        let auth = SshAuth::for_build(plan, access, true)
            .ok_or_else(|| VsphereError::Config(opsbake_core::builder::NO_LOGIN.into()))?;
        Ok(ConnectTarget::Ssh(SshTarget::from_plan(
            plan,
            auth,
            host,
            plan.ssh.port.unwrap_or(22),
        )))
    }

    async fn capture(&self, ctx: &BuildContext) -> Result<Artifact, BuildError> {
        let cfg = self.cfg()?;
        let (vim, place) = self.session().await?;
        let (vm, iso, added) = {
            let st = self.state.lock().await;
            let Some((_, v)) = st.vm.clone() else {
                return Err(BuildError::Other("capture: no VM was launched".into()));
            };
            (v, st.iso.clone(), st.cdrom_added)
        };
        let what = format!("{}/{}", place.folder_path, cfg.vm_name);
        let how = capture::shutdown(
            &vim,
            &vm,
            &what,
            cfg.shutdown_timeout,
            &ctx.cancel,
            &ctx.events,
        )
        .await?;
        ctx.events.info(format!("{what} stopped ({how})"));
        if let Some((iseq, path)) = &iso {
            capture::detach_settings(&vim, &vm, &what, path, added, &ctx.cancel).await?;
            vim.delete_datastore_file(path, &place.dc, &ctx.cancel)
                .await?;
            ctx.deleted(*iseq, FILE, path)?;
            self.state.lock().await.iso = None;
        }
        let mut custom = BTreeMap::new();
        custom.insert("shutdown".into(), how.to_string());
        custom.insert("datacenter".into(), place.dc_name.clone());
        custom.insert("vm".into(), vm.value.clone());
        let sha1 = self.state.lock().await.stemcell_sha1.clone();
        if !sha1.is_empty() {
            custom.insert("stemcell_sha1".into(), sha1);
        }
        let id = if cfg.template {
            // kept at the end of `export`: a build stopped before then
            // (a kill mid-export) unwinds the template too
            capture::make_template(&vim, &vm, &cfg.template_name, &ctx.cancel).await?;
            let path = format!("{}/{}", place.folder_path, cfg.template_name);
            ctx.events.info(format!("template {path} ({vm})"));
            custom.insert("template".into(), path.clone());
            path
        } else {
            what
        };
        Ok(Artifact {
            id,
            files: Vec::new(),
            custom_data: custom,
        })
    }

    async fn export(&self, ctx: &BuildContext, artifact: &mut Artifact) -> Result<(), BuildError> {
        let cfg = self.cfg()?;
        let (vim, _place) = self.session().await?;
        if cfg.export_ova {
            let vm = self
                .state
                .lock()
                .await
                .vm
                .clone()
                .map(|(_, v)| v)
                .ok_or_else(|| BuildError::Other("export: no VM".into()))?;
            let work = ctx.state_dir().join("vsphere-export");
            tokio::fs::create_dir_all(&work)
                .await
                .map_err(BuildError::io(&work))?;
            let (lease, urls) = capture::export_lease(&vim, &vm, &artifact.id, &ctx.cancel).await?;
            let disks = capture::download_lease(&vim, &lease, &urls, &work, &ctx.cancel).await?;
            vim.call(
                "HttpNfcLeaseComplete",
                &vim::this(&lease),
                &lease.to_string(),
            )
            .await?;
            let out_dir = std::path::absolute(&self.plan.output_dir)
                .map_err(BuildError::io(&self.plan.output_dir))?;
            tokio::fs::create_dir_all(&out_dir)
                .await
                .map_err(BuildError::io(&out_dir))?;
            let ova = out_dir.join(format!("{}.ova", cfg.template_name));
            let ova_name = ova.display().to_string();
            let seq = ctx.intent(LOCAL_FILE, &ova_name, serde_json::Value::Null)?;
            let spec = capture::OvaSpec {
                name: cfg.template_name.clone(),
                cpus: self.plan.cpus,
                memory_mib: self.plan.memory_mib,
                network: cfg.network.clone().unwrap_or_else(|| "VM Network".into()),
                os_id: 96,
                mtime: 0,
            };
            let (disk, o2) = (disks[0].1.clone(), ova.clone());
            let (size, digests) =
                tokio::task::spawn_blocking(move || capture::write_ova(&disk, &o2, &spec))
                    .await
                    .map_err(|j| BuildError::Other(format!("OVA task: {j}")))??;
            ctx.created(seq, LOCAL_FILE, &ova_name, serde_json::Value::Null)?;
            ctx.keep(seq, LOCAL_FILE, &ova_name)?;
            let _ = tokio::fs::remove_dir_all(&work).await;
            ctx.events.info(format!("OVA {ova_name} ({size} bytes)"));
            for d in digests {
                if let Some((f, h)) = d.split_once(':') {
                    artifact
                        .custom_data
                        .insert(format!("sha256:{f}"), h.to_string());
                }
            }
            if !cfg.template {
                artifact.id = ova_name.clone();
            }
            artifact.files.push(ArtifactFile {
                name: ova_name,
                size,
            });
        }
        // with nothing left to delete, end the session (else the unwind
        // still needs it)
        if cfg.template {
            if let Some((vm_seq, vm)) = self.state.lock().await.vm.clone() {
                ctx.keep(vm_seq, VM, &vm.value)?;
            }
            if let Err(e) = vim.logout().await {
                tracing::debug!("logout: {e}");
            }
        }
        Ok(())
    }
}
