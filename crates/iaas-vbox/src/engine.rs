//! The two engines that run the build VM, behind one internal trait: QEMU
//! (KVM, or TCG; the default and CI's) and VirtualBox (through
//! [`crate::vboxmanage`]). The builder's steps call the engine `validate`
//! picked; everything else (stemcell, agent settings ISO, sudo grant,
//! normalisation, OVA) is shared.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use opsbake_core::builder::{Artifact, BaseImage, BuildContext, BuildError, Made, LOCAL_PROCESS};
use opsbake_core::journal::ProcessIdentity;

use crate::error::VboxError;
use crate::{exec, qemu, source_date_epoch, state_root, vbox_engine, EngineKind, VboxBuilder};

/// What differs between QEMU and VirtualBox.
#[async_trait]
pub(crate) trait Engine: Send + Sync {
    /// `validate`: refuse what this engine cannot do; the program that runs
    /// the VM (checked with the other required programs).
    fn check(&self, b: &VboxBuilder, ctx: &BuildContext) -> Result<&'static str, VboxError>;

    /// `validate`, last: say which engine (and accelerator) runs the VM.
    async fn announce(&self, b: &VboxBuilder, ctx: &BuildContext) -> Result<(), VboxError>;

    /// The base image from the stemcell's extracted VMDK (`raw` is where a
    /// raw copy goes if the engine wants one).
    async fn base_image(
        &self,
        b: &VboxBuilder,
        ctx: &BuildContext,
        manifest: &opsbake_stemcell::Manifest,
        vmdk: &Path,
        raw: &Path,
    ) -> Result<BaseImage, BuildError>;

    /// Start the VM with the agent settings ISO; the SSH forward's port.
    async fn launch(
        &self,
        b: &VboxBuilder,
        ctx: &BuildContext,
        base: &BaseImage,
        work: &Path,
        iso: &Path,
        epoch: i64,
    ) -> Result<u16, BuildError>;

    /// Power the VM off (ACPI, then hard after `timeout`).
    async fn capture(
        &self,
        b: &VboxBuilder,
        ctx: &BuildContext,
        timeout: Duration,
    ) -> Result<Artifact, BuildError>;

    /// The captured root disk as raw at `raw`.
    async fn disk_to_raw(
        &self,
        b: &VboxBuilder,
        ctx: &BuildContext,
        raw: &Path,
    ) -> Result<(), BuildError>;
}

impl EngineKind {
    /// The engine of this kind.
    pub(crate) fn engine(self) -> &'static dyn Engine {
        match self {
            EngineKind::Vbox => &VirtualBox,
            EngineKind::Qemu => &Qemu,
        }
    }
}

/// QEMU: a qcow2 overlay over the raw base disk.
pub(crate) struct Qemu;

/// VirtualBox: the stemcell's OVF imported.
pub(crate) struct VirtualBox;

#[async_trait]
impl Engine for Qemu {
    fn check(&self, _b: &VboxBuilder, _ctx: &BuildContext) -> Result<&'static str, VboxError> {
        Ok(qemu::QEMU)
    }

    async fn announce(&self, b: &VboxBuilder, ctx: &BuildContext) -> Result<(), VboxError> {
        if state_root(ctx).is_some_and(|r| qemu::kvm_known_broken(&r)) {
            ctx.events.info(format!(
                "a guest hung under KVM on this host since its last boot ({}): TCG",
                qemu::KVM_VERDICT_FILE
            ));
        }
        let a = qemu::choose_accel(b.options.accel.as_deref()).await?;
        ctx.events.info(format!("vbox engine: qemu ({a})"));
        Ok(())
    }

    async fn base_image(
        &self,
        b: &VboxBuilder,
        ctx: &BuildContext,
        manifest: &opsbake_stemcell::Manifest,
        vmdk: &Path,
        raw: &Path,
    ) -> Result<BaseImage, BuildError> {
        // qemu-img expands the VMDK (sparse raw); the guest writes an overlay over it
        exec::Cmd::new("qemu-img")
            .args(["convert", "-q", "-f", "vmdk", "-O", "raw"])
            .arg(vmdk)
            .arg(raw)
            .run()
            .await
            .map_err(VboxError::from)?;
        let _ = tokio::fs::remove_file(vmdk).await;
        let vmdk_cap = tokio::fs::metadata(raw)
            .await
            .map_err(BuildError::io(raw))?
            .len();
        b.state.lock().await.base_raw = Some(raw.to_path_buf());
        let mut details = b.record_stemcell(manifest).await;
        details.insert("disk_bytes".into(), vmdk_cap.to_string());
        ctx.events.info(format!(
            "stemcell {} {} (sha1 {}): {} MiB disk",
            manifest.name,
            manifest.version,
            manifest.sha1,
            vmdk_cap >> 20
        ));
        Ok(BaseImage {
            id: raw.display().to_string(),
            details,
        })
    }

    async fn launch(
        &self,
        b: &VboxBuilder,
        ctx: &BuildContext,
        base: &BaseImage,
        work: &Path,
        iso: &Path,
        _epoch: i64,
    ) -> Result<u16, BuildError> {
        // copy-on-write overlay over the base disk
        let overlay = work.join("overlay.qcow2");
        exec::Cmd::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&base.id)
            .arg(&overlay)
            .run()
            .await
            .map_err(VboxError::from)?;
        let accel = qemu::choose_accel(b.options.accel.as_deref()).await?;
        let forced = b.options.accel.as_deref().is_some_and(|a| a != "auto")
            || std::env::var("OPSBAKE_QEMU_ACCEL").is_ok_and(|v| !v.is_empty());
        let (vm, accel) = if accel == qemu::Accel::Kvm && !forced {
            match start_qemu(b, ctx, work, &overlay, iso, accel).await {
                Ok(vm) => {
                    if vm.kernel_booted(qemu::KVM_BOOT_CHECK).await? {
                        (vm, accel)
                    } else {
                        stop_failed_kvm(b, ctx, vm).await?;
                        restart_tcg(b, ctx, work, &overlay, iso).await?
                    }
                }
                Err(err) => {
                    ctx.events
                        .warn(format!("the guest did not start under KVM ({err}): TCG"));
                    restart_tcg(b, ctx, work, &overlay, iso).await?
                }
            }
        } else {
            (start_qemu(b, ctx, work, &overlay, iso, accel).await?, accel)
        };
        let port = vm.config.ssh_port;
        let mut st = b.state.lock().await;
        st.overlay = Some(overlay);
        st.accel = Some(accel);
        st.vm = Some(vm);
        Ok(port)
    }

    async fn capture(
        &self,
        b: &VboxBuilder,
        ctx: &BuildContext,
        timeout: Duration,
    ) -> Result<Artifact, BuildError> {
        let mut st = b.state.lock().await;
        let Some(vm) = st.vm.take() else {
            return Err(BuildError::Other("capture: no VM is running".into()));
        };
        let how = vm.shutdown(timeout).await?;
        ctx.events
            .info(format!("QEMU pid {} stopped ({how})", vm.pid));
        if let Some(seq) = st.proc_seq.take() {
            ctx.deleted(seq, LOCAL_PROCESS, &vm.pid.to_string())?;
        }
        st.shutdown = how;
        let overlay = st
            .overlay
            .clone()
            .ok_or_else(|| BuildError::Other("capture: no overlay".into()))?;
        let mut custom = BTreeMap::new();
        custom.insert("engine".into(), EngineKind::Qemu.as_str().into());
        if let Some(a) = st.accel {
            custom.insert("accel".into(), a.as_str().into());
        }
        custom.insert("shutdown".into(), how.into());
        Ok(Artifact {
            id: overlay.display().to_string(),
            files: Vec::new(),
            custom_data: custom,
        })
    }

    async fn disk_to_raw(
        &self,
        b: &VboxBuilder,
        _ctx: &BuildContext,
        raw: &Path,
    ) -> Result<(), BuildError> {
        let Some(overlay) = b.state.lock().await.overlay.clone() else {
            return Err(BuildError::Other("export: nothing was captured".into()));
        };
        exec::Cmd::new("qemu-img")
            .args(["convert", "-q", "-f", "qcow2", "-O", "raw"])
            .arg(&overlay)
            .arg(raw)
            .run()
            .await
            .map_err(VboxError::from)?;
        Ok(())
    }
}

/// Start QEMU (journaled as a `local_process` by PID and start time) and
/// wait for its QMP socket; another port when the forward's was taken.
async fn start_qemu(
    b: &VboxBuilder,
    ctx: &BuildContext,
    work: &Path,
    overlay: &Path,
    iso: &Path,
    accel: qemu::Accel,
) -> Result<qemu::QemuVm, BuildError> {
    let mut last = None;
    for attempt in 0..3 {
        let port = qemu::free_port()?;
        let qmp = work.join("qmp.sock");
        let _ = std::fs::remove_file(&qmp);
        let cpus = if accel == qemu::Accel::Tcg {
            1
        } else {
            b.plan.cpus.max(1)
        };
        let cfg = qemu::QemuConfig {
            name: format!("opsbake-{}", b.plan.build_id),
            disk: overlay.to_path_buf(),
            disk_bus: qemu::DiskBus::Virtio,
            cdrom: Some(iso.to_path_buf()),
            memory_mib: b.plan.memory_mib.clamp(512, 4096),
            cpus,
            accel,
            ssh_port: port,
            forwards: Vec::new(),
            restrict: ctx.options.offline,
            qmp,
            serial_log: work.join("serial.log"),
            rtc_base: Some(source_date_epoch()?),
        };
        let (seq, vm) = ctx
            .create_resource(
                LOCAL_PROCESS,
                &format!("qemu opsbake-{}", b.plan.build_id),
                serde_json::json!({ "accel": accel.as_str(), "ssh_port": port }),
                |_| async {
                    let vm = qemu::spawn(cfg, &work.join("qemu.log"))?;
                    let pid = i32::try_from(vm.pid).unwrap_or(i32::MAX);
                    let Some(ident) = ProcessIdentity::of(pid) else {
                        vm.kill();
                        return Err(BuildError::Other(format!(
                            "process {pid} vanished right after start"
                        )));
                    };
                    Ok::<_, BuildError>(
                        Made::new(pid.to_string(), vm)
                            .with_data(serde_json::json!({ "start_time": ident.start_time })),
                    )
                },
            )
            .await?;
        ctx.events.info(format!(
            "QEMU pid {} ({accel}), SSH forward 127.0.0.1:{port}, serial console {}",
            vm.pid,
            vm.config.serial_log.display()
        ));
        match vm.wait_ready(Duration::from_secs(30)).await {
            Ok(()) => {
                b.state.lock().await.proc_seq = Some(seq);
                return Ok(vm);
            }
            Err(err) => {
                vm.kill();
                ctx.deleted(seq, LOCAL_PROCESS, &vm.pid.to_string())?;
                let log = std::fs::read_to_string(&vm.log).unwrap_or_default();
                // a port taken between our probe and QEMU's bind: try another
                if log.contains("host forwarding") && attempt < 2 {
                    last = Some(err);
                    continue;
                }
                return Err(err.into());
            }
        }
    }
    Err(last
        .unwrap_or_else(|| VboxError::Config("QEMU did not start".into()))
        .into())
}

async fn stop_failed_kvm(
    b: &VboxBuilder,
    ctx: &BuildContext,
    vm: qemu::QemuVm,
) -> Result<(), BuildError> {
    ctx.events.warn(format!(
        "the guest did not boot under KVM in {:?}: TCG from now on",
        qemu::KVM_BOOT_CHECK
    ));
    vm.kill();
    if let Some(seq) = b.state.lock().await.proc_seq.take() {
        ctx.deleted(seq, LOCAL_PROCESS, &vm.pid.to_string())?;
    }
    Ok(())
}

async fn restart_tcg(
    b: &VboxBuilder,
    ctx: &BuildContext,
    work: &Path,
    overlay: &Path,
    iso: &Path,
) -> Result<(qemu::QemuVm, qemu::Accel), BuildError> {
    match state_root(ctx) {
        Some(root) => qemu::remember_kvm_broken(&root),
        None => qemu::KVM_BROKEN.store(true, std::sync::atomic::Ordering::Relaxed),
    }
    // a fresh overlay: the failed guest may have written to it
    let _ = tokio::fs::remove_file(overlay).await;
    let base = b
        .state
        .lock()
        .await
        .base_raw
        .clone()
        .ok_or_else(|| BuildError::Other("no base disk".into()))?;
    exec::Cmd::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base)
        .arg(overlay)
        .run()
        .await
        .map_err(VboxError::from)?;
    let vm = start_qemu(b, ctx, work, overlay, iso, qemu::Accel::Tcg).await?;
    Ok((vm, qemu::Accel::Tcg))
}

#[async_trait]
impl Engine for VirtualBox {
    fn check(&self, b: &VboxBuilder, ctx: &BuildContext) -> Result<&'static str, VboxError> {
        if ctx.options.offline {
            return Err(VboxError::Offline(
                "VirtualBox's NAT cannot be limited to the SSH port forward; use `--engine qemu`"
                    .into(),
            ));
        }
        b.vbox()?;
        Ok("VBoxManage")
    }

    async fn announce(&self, _b: &VboxBuilder, ctx: &BuildContext) -> Result<(), VboxError> {
        ctx.events
            .info("vbox engine: VirtualBox (VBoxManage)".to_string());
        Ok(())
    }

    /// The stemcell's OVF with the CPI's controller fix; the VMDK stays as
    /// it is (VirtualBox imports it).
    async fn base_image(
        &self,
        b: &VboxBuilder,
        ctx: &BuildContext,
        manifest: &opsbake_stemcell::Manifest,
        vmdk: &Path,
        _raw: &Path,
    ) -> Result<BaseImage, BuildError> {
        let dir = vmdk
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| BuildError::Other(format!("{}: no parent", vmdk.display())))?;
        let ovf = tokio::task::spawn_blocking(move || vbox_engine::prepare_ovf(&dir))
            .await
            .map_err(|j| BuildError::Other(format!("OVF task: {j}")))??;
        b.state.lock().await.ovf = Some(ovf.clone());
        let mut details = b.record_stemcell(manifest).await;
        details.insert("ovf".into(), ovf.display().to_string());
        ctx.events.info(format!(
            "stemcell {} {} (sha1 {}): {} for VirtualBox",
            manifest.name,
            manifest.version,
            manifest.sha1,
            ovf.display()
        ));
        Ok(BaseImage {
            id: ovf.display().to_string(),
            details,
        })
    }

    /// Import, configure and start the VM (journaled by name before the
    /// import: the unwinding deletes it by name).
    async fn launch(
        &self,
        b: &VboxBuilder,
        ctx: &BuildContext,
        _base: &BaseImage,
        work: &Path,
        iso: &Path,
        epoch: i64,
    ) -> Result<u16, BuildError> {
        let vbm = b.vbox()?;
        let ovf = b
            .state
            .lock()
            .await
            .ovf
            .clone()
            .ok_or_else(|| BuildError::Other("launch: no prepared OVF".into()))?;
        let name = format!("opsbake-{}", b.plan.build_id);
        let basefolder = work.join("vms");
        let port = qemu::free_port()?;
        let spec = vbox_engine::VmSpec {
            name: name.clone(),
            ovf,
            basefolder: basefolder.clone(),
            cpus: b.plan.cpus.max(1),
            memory_mib: b.plan.memory_mib.max(512),
            ssh_port: port,
            iso: iso.to_path_buf(),
            serial_log: work.join("serial.log"),
            epoch,
        };
        let (seq, ()) = ctx
            .create_resource(
                vbox_engine::VBOX_VM,
                &name,
                serde_json::json!({ "basefolder": basefolder.display().to_string(), "ssh_port": port }),
                |_| async {
                    vbox_engine::create_and_start(&vbm, &spec).await?;
                    Ok::<_, VboxError>(
                        Made::new(name.clone(), ())
                            .with_data(serde_json::json!({ "ssh_port": port })),
                    )
                },
            )
            .await?;
        b.state.lock().await.vbox_vm = Some((name.clone(), seq));
        ctx.events.info(format!(
            "VirtualBox VM {name} started headless, SSH forward 127.0.0.1:{port}, serial console {}",
            spec.serial_log.display()
        ));
        Ok(port)
    }

    /// ACPI power-off, then `poweroff` after the timeout.
    async fn capture(
        &self,
        b: &VboxBuilder,
        ctx: &BuildContext,
        timeout: Duration,
    ) -> Result<Artifact, BuildError> {
        let vbm = b.vbox()?;
        let mut st = b.state.lock().await;
        let Some((name, _)) = st.vbox_vm.clone() else {
            return Err(BuildError::Other("capture: no VM is running".into()));
        };
        let how = vbm.shutdown(&name, timeout).await?;
        ctx.events
            .info(format!("VirtualBox VM {name} powered off ({how})"));
        st.shutdown = how;
        let mut custom = BTreeMap::new();
        custom.insert("engine".into(), EngineKind::Vbox.as_str().into());
        custom.insert("shutdown".into(), how.into());
        Ok(Artifact {
            id: name,
            files: Vec::new(),
            custom_data: custom,
        })
    }

    /// The root disk as raw (for the normalisation and the OVA), then the
    /// VM is deleted with its files.
    async fn disk_to_raw(
        &self,
        b: &VboxBuilder,
        ctx: &BuildContext,
        raw: &Path,
    ) -> Result<(), BuildError> {
        let vbm = b.vbox()?;
        let Some((name, seq)) = b.state.lock().await.vbox_vm.clone() else {
            return Err(BuildError::Other("export: no VirtualBox VM".into()));
        };
        vbox_engine::disk_to_raw(&vbm, &name, raw).await?;
        vbox_engine::destroy(&vbm, &name).await?;
        ctx.deleted(seq, vbox_engine::VBOX_VM, &name)?;
        b.state.lock().await.vbox_vm = None;
        Ok(())
    }
}
