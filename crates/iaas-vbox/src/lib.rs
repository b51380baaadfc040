//! opsbake-iaas-vbox: the `vbox` builder.
//!
//! It boots the vSphere-format stemcell (VirtualBox has no stemcell of its
//! own, STEMCELLS.md §2) under QEMU, the engine used wherever VirtualBox is
//! not installed (and always in CI), provisions it over SSH, powers it off,
//! normalises the disk so that two builds give the same bytes, and writes an
//! OVA that VirtualBox imports. Where VirtualBox is installed the VM runs
//! under it instead ([`vbox_engine`], through the typed [`vboxmanage`]
//! wrapper; never run against a real VirtualBox here, see
//! docs/virtualbox.md).
//!
//! Resources, all journaled before they exist: the work directory in the
//! build's state dir (`local_dir`: the extracted stemcell, the base disk, the
//! qcow2 overlay, the settings ISO, the QMP socket, the serial log), the
//! QEMU process (`local_process`, by PID and start time, so that cancel and
//! `opsbake cleanup` end it), or the VirtualBox VM (`vbox_vm`, by name), and
//! the OVA (`local_file`, kept on success).

mod engine;
pub mod error;
pub mod exec;
pub mod export;
pub mod qemu;
pub mod vbox_engine;
pub mod vboxmanage;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use opsbake_core::builder::{
    Access, Artifact, ArtifactFile, BaseImage, BuildContext, BuildError, Builder, ConnectTarget,
    Deleted, Deleter, Made, SshAuth, SshTarget, LOCAL_DIR, LOCAL_FILE,
};
use opsbake_core::journal::Resource;
use opsbake_core::plan::BuildPlan;
use opsbake_core::template::{BuildSpec, Iaas, VboxOptions};
use opsbake_core::transport::{shell_quote, ExecRequest, NullSink, Transport};
use opsbake_core::Secret;
use tokio::sync::Mutex;

pub use error::VboxError;

/// The guest clock and every file time when `SOURCE_DATE_EPOCH` is unset
/// (2024-01-01T00:00:00Z): a fixed value, so builds on different days match.
pub const DEFAULT_SOURCE_DATE_EPOCH: i64 = 1_704_067_200;

/// Default time the guest gets to power off after ACPI.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(120);

/// The agent id (and so the hostname) of the build VM: constant, because it
/// lands in the image.
pub const AGENT_ID: &str = "opsbake-build";

/// The sudoers file the hand-off also uses for the build's passwordless sudo.
pub const GRANT_FILE: &str = "/etc/sudoers.d/opsbake-build";

/// Set to `1` to keep the normalised raw disk (the bytes the VMDK encodes)
/// next to the OVA as `<vm_name>-disk1.raw` (sparse): for checking the
/// export with `qemu-img compare`, or for other raw-disk consumers.
pub const KEEP_RAW_ENV: &str = "OPSBAKE_VBOX_KEEP_RAW";

/// The OpenSSH SHA-256 fingerprint (`SHA256:...`, as `ssh-keygen -l` prints
/// it) of a public key line `type base64 [comment]`; `None` if it does not
/// parse.
pub fn public_key_fingerprint(public_openssh: &str) -> Option<String> {
    use base64::Engine as _;
    use sha2::Digest as _;
    let blob = public_openssh.split_whitespace().nth(1)?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .ok()?;
    let d = sha2::Sha256::digest(&raw);
    Some(format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(d)
    ))
}

/// The engine that runs the build VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// VirtualBox through VBoxManage.
    Vbox,
    /// QEMU (KVM or TCG).
    Qemu,
}

impl EngineKind {
    /// The name in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Vbox => "vbox",
            EngineKind::Qemu => "qemu",
        }
    }
}

/// Pick the engine: `--engine` over `options.engine`; `auto` is VirtualBox
/// when `VBoxManage` is on PATH, else QEMU.
pub fn pick_engine(
    cli: Option<&str>,
    option: Option<&str>,
    vbox_installed: bool,
) -> Result<EngineKind, VboxError> {
    match cli.or(option).unwrap_or("auto") {
        "auto" | "" => Ok(if vbox_installed {
            EngineKind::Vbox
        } else {
            EngineKind::Qemu
        }),
        "vbox" | "virtualbox" => Ok(EngineKind::Vbox),
        "qemu" => Ok(EngineKind::Qemu),
        other => Err(VboxError::Config(format!(
            "engine `{other}`: expected auto, vbox or qemu"
        ))),
    }
}

/// `SOURCE_DATE_EPOCH` from the environment, else [`DEFAULT_SOURCE_DATE_EPOCH`].
pub fn source_date_epoch() -> Result<i64, VboxError> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.trim().is_empty() => v.trim().parse::<i64>().map_err(|_| {
            VboxError::Config(format!(
                "SOURCE_DATE_EPOCH={v:?} is not a number of seconds"
            ))
        }),
        _ => Ok(DEFAULT_SOURCE_DATE_EPOCH),
    }
}

#[derive(Default)]
struct State {
    work: Option<PathBuf>,
    key_fingerprint: Option<String>,
    base_raw: Option<PathBuf>,
    overlay: Option<PathBuf>,
    vm: Option<qemu::QemuVm>,
    proc_seq: Option<u64>,
    password: Option<Secret<String>>,
    accel: Option<qemu::Accel>,
    stemcell_sha1: String,
    stemcell_name: String,
    stemcell_version: String,
    debian: bool,
    shutdown: &'static str,
    engine: Option<EngineKind>,
    /// VirtualBox engine: the prepared stemcell OVF.
    ovf: Option<PathBuf>,
    /// VirtualBox engine: the VM's name and journal sequence.
    vbox_vm: Option<(String, u64)>,
}

/// The `vbox` builder.
pub struct VboxBuilder {
    plan: BuildPlan,
    options: VboxOptions,
    state: Mutex<State>,
}

/// The builder for one plan.
pub fn builder(plan: &BuildPlan) -> Result<Arc<dyn Builder>, BuildError> {
    let options = BuildSpec::options_or_default(plan.template.builds.vbox.as_ref());
    Ok(Arc::new(VboxBuilder {
        plan: plan.clone(),
        options,
        state: Mutex::new(State::default()),
    }))
}

/// What a vbox journal keeps for `opsbake cleanup`: every resource is
/// local (files, directories, the QEMU process, a VirtualBox VM by name),
/// so nothing but a marker.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CleanupConfig {
    /// Always `local`.
    pub engine: String,
}

impl Default for CleanupConfig {
    fn default() -> Self {
        CleanupConfig {
            engine: "local".into(),
        }
    }
}

/// A deleter for `opsbake cleanup`: every resource of a vbox build is a
/// local one that core deletes (files, directories, the QEMU process by PID
/// and start time).
pub fn deleter(_cleanup_config: &serde_json::Value) -> Result<Arc<dyn Deleter>, BuildError> {
    Ok(Arc::new(VboxDeleter))
}

/// Deletes vbox resources (all local; core handles them).
pub struct VboxDeleter;

#[async_trait]
impl Deleter for VboxDeleter {
    async fn delete(&self, res: &Resource) -> Result<Deleted, BuildError> {
        if res.kind == vbox_engine::VBOX_VM {
            return delete_vbox_vm(res).await;
        }
        match opsbake_core::builder::delete_local(res).await {
            Some(r) => r,
            None => Err(BuildError::Other(format!(
                "unknown resource kind `{}` in a vbox build",
                res.kind
            ))),
        }
    }
}

/// Delete a VirtualBox VM of a build (power off, unregister, delete its
/// files) by the name in the journal.
async fn delete_vbox_vm(res: &Resource) -> Result<Deleted, BuildError> {
    let vbm = vboxmanage::VBoxManage::find().ok_or_else(|| {
        e(VboxError::Missing {
            program: "VBoxManage".into(),
            package: format!(
                "{} (needed to delete VirtualBox VM {})",
                exec::package_of("VBoxManage"),
                res.name
            ),
        })
    })?;
    match vbox_engine::destroy(&vbm, &res.name).await? {
        true => Ok(Deleted::Now),
        false => Ok(Deleted::AlreadyGone),
    }
}

/// opsbake's state dir (the build's is `<root>/builds/<id>`).
fn state_root(ctx: &BuildContext) -> Option<PathBuf> {
    let d = ctx.state_dir();
    let builds = d.parent()?;
    (builds.file_name()? == "builds").then(|| builds.parent().map(Path::to_path_buf))?
}

fn e(err: VboxError) -> BuildError {
    BuildError::iaas(Iaas::Vbox, err)
}

fn random_password() -> String {
    use rand::Rng as _;
    let mut rng = rand::thread_rng();
    (0..24)
        .map(|_| {
            let c = rng.gen_range(0..62u8);
            match c {
                0..=9 => (b'0' + c) as char,
                10..=35 => (b'a' + c - 10) as char,
                _ => (b'A' + c - 36) as char,
            }
        })
        .collect()
}

/// A SHA-512 crypt hash of `password` (`openssl passwd -6`, password on stdin).
pub async fn password_hash(password: &Secret<String>) -> Result<Secret<String>, VboxError> {
    let mut input = password.expose().as_bytes().to_vec();
    input.push(b'\n');
    let mut c = exec::Cmd::new("openssl").args(["passwd", "-6", "-stdin"]);
    c.stdin = Some(input);
    let out = c.run().await?;
    let h = out.trim().to_string();
    if !h.starts_with("$6$") {
        return Err(VboxError::Config(
            "openssl passwd -6 did not print a SHA-512 crypt hash".into(),
        ));
    }
    Ok(Secret::new(h))
}

impl VboxBuilder {
    fn engine(&self, ctx: &BuildContext) -> Result<EngineKind, VboxError> {
        let chosen = ctx
            .options
            .engine
            .as_deref()
            .or(self.options.engine.as_deref());
        let auto = matches!(chosen, None | Some("auto" | ""));
        // VirtualBox's NAT cannot be restricted to the SSH forward: an
        // offline build picks QEMU when it is installed.
        if auto && ctx.options.offline && exec::which(qemu::QEMU).is_some() {
            return Ok(EngineKind::Qemu);
        }
        pick_engine(
            ctx.options.engine.as_deref(),
            self.options.engine.as_deref(),
            vboxmanage::VBoxManage::find().is_some(),
        )
    }

    fn vbox(&self) -> Result<vboxmanage::VBoxManage, VboxError> {
        vboxmanage::VBoxManage::find().ok_or_else(|| VboxError::Missing {
            program: "VBoxManage".into(),
            package: exec::package_of("VBoxManage").into(),
        })
    }

    fn shutdown_timeout(&self) -> Duration {
        self.options
            .shutdown_timeout
            .as_ref()
            .and_then(|t| t.get().ok())
            .map(|d| d.0)
            .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT)
    }

    fn vm_name(&self) -> String {
        let raw = self
            .options
            .vm_name
            .clone()
            .unwrap_or_else(|| self.plan.template.name.clone());
        let n: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        if n.is_empty() || n.starts_with('.') {
            "appliance".into()
        } else {
            n
        }
    }

    fn stemcell_path(&self) -> Result<PathBuf, VboxError> {
        let Some(s) = &self.plan.stemcell else {
            return Err(VboxError::Config(
                "the template names no stemcell: the vbox builder boots the vSphere stemcell (`stemcell.path`)".into(),
            ));
        };
        match (&s.path, &s.url) {
            (Some(p), _) => Ok(self.plan.template_dir.join(p)),
            (None, Some(u)) => Err(VboxError::Config(format!(
                "stemcell URL {u}: download it first (`stemcell.path`); the vbox builder reads local stemcells"
            ))),
            (None, None) => Err(VboxError::Config("stemcell: give `path`".into())),
        }
    }

    async fn work_dir(&self, ctx: &BuildContext) -> Result<PathBuf, BuildError> {
        let mut st = self.state.lock().await;
        if let Some(w) = &st.work {
            return Ok(w.clone());
        }
        let w = ctx.state_dir().join("vbox");
        let name = w.display().to_string();
        ctx.create_resource(LOCAL_DIR, &name, serde_json::Value::Null, |_| async {
            tokio::fs::create_dir_all(&w)
                .await
                .map_err(BuildError::io(&w))?;
            Ok::<_, BuildError>(Made::new(name.clone(), ()))
        })
        .await?;
        st.work = Some(w.clone());
        Ok(w)
    }
}

impl VboxBuilder {
    /// The engine `validate` picked (picked again if it did not run).
    async fn engine_of(&self, ctx: &BuildContext) -> Result<EngineKind, VboxError> {
        if let Some(k) = self.state.lock().await.engine {
            return Ok(k);
        }
        let k = self.engine(ctx)?;
        self.state.lock().await.engine = Some(k);
        Ok(k)
    }

    /// `cpus`: the guest's vCPUs when they differ from the plan's (QEMU
    /// under TCG runs one).
    fn ssh_target(
        &self,
        port: u16,
        key: Arc<opsbake_core::builder::KeyPair>,
        cpus: Option<u32>,
    ) -> ConnectTarget {
        // The VM is this machine's: no jump host.
        let mut t = SshTarget::from_plan(&self.plan, SshAuth::Key(key), "127.0.0.1", port);
        t.bastion = None;
        if cpus.is_some() {
            t.cpus = cpus;
        }
        ConnectTarget::Ssh(t)
    }

    /// Keep the stemcell's identity for the manifest; its base-image details.
    async fn record_stemcell(
        &self,
        manifest: &opsbake_stemcell::Manifest,
    ) -> BTreeMap<String, String> {
        let mut st = self.state.lock().await;
        st.stemcell_sha1 = manifest.sha1.clone();
        st.stemcell_name = manifest.name.clone();
        st.stemcell_version = manifest.version.clone();
        st.debian = manifest
            .operating_system
            .as_deref()
            .is_some_and(|o| o.contains("debian"));
        let mut details = BTreeMap::new();
        details.insert("stemcell_name".into(), manifest.name.clone());
        details.insert("stemcell_version".into(), manifest.version.clone());
        details.insert("stemcell_sha1".into(), manifest.sha1.clone());
        details
    }
}

#[async_trait]
impl Deleter for VboxBuilder {
    async fn delete(&self, res: &Resource) -> Result<Deleted, BuildError> {
        VboxDeleter.delete(res).await
    }
}

#[async_trait]
impl Builder for VboxBuilder {
    fn iaas(&self) -> Iaas {
        Iaas::Vbox
    }

    fn cleanup_config(&self) -> serde_json::Value {
        serde_json::to_value(CleanupConfig::default()).unwrap_or(serde_json::Value::Null)
    }

    async fn validate(&self, ctx: &BuildContext) -> Result<(), BuildError> {
        let kind = self.engine(ctx)?;
        self.state.lock().await.engine = Some(kind);
        let engine = kind.engine();
        let runner = engine.check(self, ctx)?;
        let stemcell = self.stemcell_path()?;
        if !stemcell.is_file() {
            return Err(VboxError::Stemcell {
                path: stemcell,
                message: "not found".into(),
            }
            .into());
        }
        for p in [
            runner,
            "qemu-img",
            "openssl",
            "mkfs.ext4",
            "debugfs",
            "e2fsck",
            "unshare",
            "fallocate",
        ] {
            exec::require(p)?;
        }
        if self.plan.ssh.host.is_some() || self.plan.ssh.port.is_some() {
            return Err(VboxError::Config(
                "builds.vbox: ssh.host/ssh.port are chosen by the builder (a forward on 127.0.0.1)"
                    .into(),
            )
            .into());
        }
        engine.announce(self, ctx).await?;
        source_date_epoch()?;
        Ok(())
    }

    async fn base_image(&self, ctx: &BuildContext) -> Result<BaseImage, BuildError> {
        let work = self.work_dir(ctx).await?;
        let stemcell = self.stemcell_path()?;
        let dest = work.join("stemcell");
        let raw = work.join("base.raw");
        let (s2, d2) = (stemcell.clone(), dest.clone());
        let engine = self.engine_of(ctx).await?.engine();
        let (manifest, vmdk) = tokio::task::spawn_blocking(move || {
            let rep = opsbake_stemcell::extract(
                &s2,
                &d2,
                &opsbake_stemcell::ExtractOptions::default(),
            )?;
            let vmdk = rep
                .files
                .iter()
                .map(|f| d2.join(&f.path))
                .find(|p| p.extension().is_some_and(|x| x == "vmdk"))
                .ok_or_else(|| VboxError::Stemcell {
                    path: s2.clone(),
                    message: "no .vmdk in the image: the vbox builder needs a vSphere (vsphere-ova) stemcell".into(),
                })?;
            Ok::<_, VboxError>((rep.manifest, vmdk))
        })
        .await
        .map_err(|j| BuildError::Other(format!("stemcell extraction task: {j}")))??;
        engine.base_image(self, ctx, &manifest, &vmdk, &raw).await
    }

    async fn launch(
        &self,
        ctx: &BuildContext,
        base: &BaseImage,
        access: &Access,
    ) -> Result<ConnectTarget, BuildError> {
        let Some(key) = access.key.clone() else {
            return Err(BuildError::NotImplemented {
                what: "a vbox build without an ephemeral key (no SSH connector configured)".into(),
            });
        };
        let work = self.work_dir(ctx).await?;
        let epoch = source_date_epoch()?;
        // the password of root and vcap for this build: used once for sudo
        let password = self
            .plan
            .ssh
            .password
            .clone()
            .unwrap_or_else(|| Secret::new(random_password()));
        let hash = password_hash(&password).await?;
        let settings = opsbake_stemcell::AgentSettings::minimal(
            AGENT_ID,
            vec![key.public_openssh.clone()],
            Some(hash),
        );
        let iso = work.join("settings.iso");
        opsbake_stemcell::write_agent_settings_iso(&settings, epoch, &iso)
            .map_err(|x| e(x.into()))?;
        let fingerprint = public_key_fingerprint(&key.public_openssh);
        ctx.events.info(format!(
            "agent settings ISO: the build's ephemeral key {} ({}) for {}, a per-build password hash",
            fingerprint.as_deref().unwrap_or("(unparsed)"),
            key.public_openssh
                .split_whitespace()
                .nth(2)
                .unwrap_or("no comment"),
            self.plan.ssh.user
        ));
        self.state.lock().await.key_fingerprint = fingerprint;
        let engine = self.engine_of(ctx).await?.engine();
        let port = engine.launch(self, ctx, base, &work, &iso, epoch).await?;
        let mut st = self.state.lock().await;
        st.password = Some(password);
        let guest_cpus = st.vm.as_ref().map(|vm| vm.config.cpus);
        drop(st);
        Ok(self.ssh_target(port, key, guest_cpus))
    }

    async fn before_provision(
        &self,
        ctx: &BuildContext,
        transport: &dyn Transport,
    ) -> Result<(), BuildError> {
        // Who we are: the login the connector made with the build's key
        // (the only credential the target carries).
        let who = Arc::new(std::sync::Mutex::new(String::new()));
        let w2 = who.clone();
        let sink = move |stream: opsbake_core::transport::Stream, line: &str| {
            if stream == opsbake_core::transport::Stream::Stdout {
                if let Ok(mut w) = w2.lock() {
                    w.push_str(line.trim());
                }
            }
        };
        let st = transport
            .exec(ExecRequest::new("id -un"), Arc::new(sink))
            .await?;
        let who = who.lock().map(|w| w.clone()).unwrap_or_default();
        let user = &self.plan.ssh.user;
        if !st.success() || who != *user {
            return Err(BuildError::Step {
                step: "before_provision".into(),
                message: format!(
                    "`id -un` on the build VM printed {who:?} ({st}); the template's user is {user}"
                ),
            });
        }
        let fp = self.state.lock().await.key_fingerprint.clone();
        ctx.events.info(format!(
            "logged in as {who} with the build's ephemeral key {}",
            fp.as_deref().unwrap_or("(unparsed)")
        ));
        // Passwordless sudo for the build, with the password this build set
        // through the agent settings (sent once on stdin, never retried).
        let already = transport
            .exec(ExecRequest::new("sudo -n true"), Arc::new(NullSink))
            .await?;
        if already.success() {
            return Ok(());
        }
        let Some(pw) = self.state.lock().await.password.clone() else {
            return Ok(());
        };
        let line = format!("{user} ALL=(ALL) NOPASSWD: ALL");
        let body = format!(
            "set -e; f={GRANT_FILE}; umask 0337; printf '%s\\n' {} > \"$f.tmp\"; visudo -cf \"$f.tmp\" >/dev/null; mv \"$f.tmp\" \"$f\"",
            shell_quote(&line)
        );
        let mut req = ExecRequest::new(format!("sudo -S -k -p '' sh -c {}", shell_quote(&body)));
        let mut bytes = pw.expose().as_bytes().to_vec();
        bytes.push(b'\n');
        req.stdin = Some(Secret::new(bytes));
        let st = transport.exec(req, Arc::new(NullSink)).await?;
        if !st.success() {
            return Err(BuildError::Step {
                step: "before_provision".into(),
                message: format!(
                    "granting {user} passwordless sudo with the build's password ended with {st}"
                ),
            });
        }
        ctx.events.info(format!(
            "{user} has passwordless sudo for the build ({GRANT_FILE})"
        ));
        Ok(())
    }

    async fn capture(&self, ctx: &BuildContext) -> Result<Artifact, BuildError> {
        let timeout = self.shutdown_timeout();
        let engine = self.engine_of(ctx).await?.engine();
        engine.capture(self, ctx, timeout).await
    }

    async fn export(&self, ctx: &BuildContext, artifact: &mut Artifact) -> Result<(), BuildError> {
        let (work, sha1, name, version, debian) = {
            let st = self.state.lock().await;
            (
                st.work.clone(),
                st.stemcell_sha1.clone(),
                st.stemcell_name.clone(),
                st.stemcell_version.clone(),
                st.debian,
            )
        };
        let Some(work) = work else {
            return Err(BuildError::Other("export: nothing was captured".into()));
        };
        let epoch = source_date_epoch()?;
        let raw = work.join("disk.raw");
        let t0 = std::time::Instant::now();
        let engine = self.engine_of(ctx).await?.engine();
        engine.disk_to_raw(self, ctx, &raw).await?;
        let g = export::normalise(&raw, &work.join("normalise"), epoch).await?;
        ctx.events.info(format!(
            "root file system rebuilt (uuid {}, {} blocks of {}) in {:.1}s",
            g.uuid,
            g.blocks,
            g.block_size,
            t0.elapsed().as_secs_f64()
        ));
        let vm_name = self.vm_name();
        let out_dir = std::path::absolute(&self.plan.output_dir)
            .map_err(BuildError::io(&self.plan.output_dir))?;
        tokio::fs::create_dir_all(&out_dir)
            .await
            .map_err(BuildError::io(&out_dir))?;
        let ova = out_dir.join(format!("{vm_name}.ova"));
        let ova_name = ova.display().to_string();
        let spec = export::OvaSpec {
            name: vm_name.clone(),
            cpus: self.plan.cpus,
            memory_mib: self.plan.memory_mib,
            os_id: if debian { 96 } else { 94 },
            vbox_os: if debian { "Debian_64" } else { "Ubuntu_64" }.into(),
            product: self.plan.template.name.clone(),
            version: version.clone(),
            epoch,
        };
        let (raw2, ova2, w2) = (raw.clone(), ova.clone(), work.join("ova"));
        let t1 = std::time::Instant::now();
        let (seq, rep) = ctx
            .create_resource(LOCAL_FILE, &ova_name, serde_json::Value::Null, |_| async {
                let rep = tokio::task::spawn_blocking(move || {
                    export::write_ova(&raw2, &ova2, &w2, &spec)
                })
                .await
                .map_err(|j| BuildError::Other(format!("OVA task: {j}")))??;
                Ok::<_, BuildError>(Made::new(ova_name.clone(), rep))
            })
            .await?;
        ctx.keep(seq, LOCAL_FILE, &ova_name)?;
        let kept_raw = if std::env::var(KEEP_RAW_ENV).is_ok_and(|v| v == "1") {
            let dest = out_dir.join(format!("{vm_name}-disk1.raw"));
            let name = dest.display().to_string();
            let (seq, ()) = ctx
                .create_resource(LOCAL_FILE, &name, serde_json::Value::Null, |_| async {
                    tokio::fs::rename(&raw, &dest)
                        .await
                        .map_err(BuildError::io(&dest))?;
                    Ok::<_, BuildError>(Made::new(name.clone(), ()))
                })
                .await?;
            ctx.keep(seq, LOCAL_FILE, &name)?;
            ctx.events.info(format!(
                "{KEEP_RAW_ENV}=1: the normalised raw disk is {name}"
            ));
            Some(name)
        } else {
            let _ = tokio::fs::remove_file(&raw).await;
            None
        };
        ctx.events.info(format!(
            "OVA {} ({} bytes; VMDK {} bytes, {} grains, {} zero grains skipped) in {:.1}s",
            ova.display(),
            rep.size,
            rep.vmdk.file_size,
            rep.vmdk.grains,
            rep.vmdk.zero_grains,
            t1.elapsed().as_secs_f64()
        ));
        artifact.id = ova_name.clone();
        artifact.files.push(ArtifactFile {
            name: ova_name,
            size: rep.size,
        });
        let c = &mut artifact.custom_data;
        c.insert("stemcell_sha1".into(), sha1);
        c.insert("stemcell_name".into(), name);
        c.insert("stemcell_version".into(), version);
        c.insert("source_date_epoch".into(), epoch.to_string());
        c.insert("disk_capacity".into(), rep.vmdk.capacity.to_string());
        c.insert("disk_uuid".into(), rep.disk_uuid.clone());
        if let Some(r) = kept_raw {
            c.insert("raw_disk".into(), r);
        }
        for d in &rep.digests {
            c.insert(format!("sha256:{}", d.file), d.digest.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_choice() {
        assert_eq!(pick_engine(None, None, false).unwrap(), EngineKind::Qemu);
        assert_eq!(pick_engine(None, None, true).unwrap(), EngineKind::Vbox);
        assert_eq!(
            pick_engine(Some("qemu"), Some("vbox"), true).unwrap(),
            EngineKind::Qemu
        );
        assert_eq!(
            pick_engine(None, Some("vbox"), false).unwrap(),
            EngineKind::Vbox
        );
        assert!(pick_engine(Some("xen"), None, false).is_err());
    }

    #[test]
    fn fingerprints_match_ssh_keygen() {
        // `ssh-keygen -lf` of this key prints SHA256:1nYdTIVuw3+9+ZVOiJbRYI3qhCjHcmewPtb6UP0vtvo
        let k = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDsFbl/8jLKm3Vzo3vQzaAh33FWREevpFAkSxBcTmMLJ deployer";
        assert_eq!(
            public_key_fingerprint(k).as_deref(),
            Some("SHA256:1nYdTIVuw3+9+ZVOiJbRYI3qhCjHcmewPtb6UP0vtvo")
        );
        assert_eq!(public_key_fingerprint("ssh-ed25519 !!!"), None);
        assert_eq!(public_key_fingerprint("nothing"), None);
    }

    #[test]
    fn passwords_are_random_alphanumerics() {
        let a = random_password();
        assert_eq!(a.len(), 24);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, random_password());
    }
}
