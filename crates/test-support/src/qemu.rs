//! Boot a disk image under QEMU for tests: the test stemcell, and later the
//! images the provision and VirtualBox builders make. A thin layer over the
//! product's launcher ([`opsbake_iaas_vbox::qemu`]): its command line, its
//! accelerator choice and KVM probe, its start, QMP client, waits and
//! power-off; this module adds the overlay of any disk format, free ports
//! and the test's waits (SSH banner, serial text).
//!
//! - Acceleration: `OPSBAKE_QEMU_ACCEL=tcg|kvm` forces it; otherwise KVM is
//!   probed once per process with the builder's probe guest (a firmware image
//!   that prints a line, counts in real mode and prints another: a few ms
//!   where KVM works, about a second where KVM emulates real mode and real
//!   guests crawl), so anything but a fast count means TCG.
//! - The disk (raw, VMDK, qcow2 or VHD) is never written: QEMU runs on a
//!   copy-on-write qcow2 overlay in the VM's own temporary directory.
//! - The settings ISO (BOSH agent settings, STEMCELLS.md section 3) goes in as
//!   the CD-ROM (`/dev/sr0` in the guest). [`settings_iso`] builds one with
//!   Debian's `genisoimage`.
//! - User-mode networking (`restrict=on` by default: the guest reaches nothing
//!   but the host forwards) with `hostfwd=tcp:127.0.0.1:<free port>-:22` and
//!   optional extra forwards; serial console to a log file; a QMP socket.
//! - Readiness is the SSH banner arriving through the forward
//!   ([`Qemu::wait_for_ssh_banner`]), never a sleep. [`Qemu::shutdown`] is the
//!   builder's power-off (ACPI, SysRq, QMP `quit`, kill); `Drop` kills QEMU
//!   by its PID.

use std::fs;
use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use opsbake_iaas_vbox::qemu::{self as launcher, QemuConfig, QemuVm};
use opsbake_iaas_vbox::VboxError;

/// The QEMU binary (the builder's constant).
pub use opsbake_iaas_vbox::qemu::QEMU;

/// Errors starting or driving a QEMU guest.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// A binary the helper needs is missing.
    #[error("{binary} not found: install Debian's {package} (.ci/setup.d/20-test-stemcell.sh does) or set OPSBAKE_SKIP_PEERS=1 to skip peer tests")]
    Missing {
        /// The binary.
        binary: String,
        /// The Debian package that has it.
        package: String,
    },
    /// A helper command failed.
    #[error("{command} failed: {message}")]
    Command {
        /// The command.
        command: String,
        /// Its output.
        message: String,
    },
    /// The launcher failed (QEMU exited early, a QMP exchange failed, a
    /// file operation failed...).
    #[error(transparent)]
    Launcher(Box<VboxError>),
    /// The guest did not answer in time.
    #[error("{what} not seen after {after:?} (QEMU pid {pid}, {accel}); serial {serial}:\n{serial_tail}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The deadline.
        after: Duration,
        /// QEMU's PID.
        pid: u32,
        /// The accelerator.
        accel: Accel,
        /// The serial console log.
        serial: PathBuf,
        /// The end of it.
        serial_tail: String,
    },
    /// An option cannot be honoured.
    #[error("invalid QEMU option: {0}")]
    Invalid(String),
}

/// The launcher's errors: a missing program and a wrong option keep their
/// own variants; everything else is the launcher's error as it is.
impl From<VboxError> for QemuError {
    fn from(e: VboxError) -> Self {
        match e {
            VboxError::Missing { program, package } => QemuError::Missing {
                binary: program,
                package,
            },
            VboxError::Config(m) => QemuError::Invalid(m),
            e => QemuError::Launcher(Box::new(e)),
        }
    }
}

/// A file operation on `path` failed: the launcher's I/O error.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> QemuError + '_ {
    move |source| {
        QemuError::from(VboxError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// True when peer tests may be skipped (`OPSBAKE_SKIP_PEERS=1`).
pub use crate::skip_peers;

/// Find a binary on PATH (core's lookup).
pub fn which(binary: &str) -> Option<PathBuf> {
    opsbake_iaas_vbox::exec::which(binary)
}

pub(crate) fn require(binary: &str, package: &str) -> Result<PathBuf, QemuError> {
    which(binary).ok_or_else(|| QemuError::Missing {
        binary: binary.to_string(),
        package: package.to_string(),
    })
}

/// The accelerator QEMU runs with (the builder's type: one definition).
pub use opsbake_iaas_vbox::qemu::Accel;

/// The disk bus the guest sees its disk on (the builder's type).
pub use opsbake_iaas_vbox::qemu::DiskBus;

/// How long a guest started with a probed (not forced) KVM may take to reach
/// the kernel's `Freeing unused kernel` line on the serial console before it
/// is restarted under TCG.
pub const KVM_BOOT_CHECK: Duration = Duration::from_secs(20);

/// How long the KVM probe may take before KVM counts as broken (the
/// builder's constant).
pub use opsbake_iaas_vbox::qemu::KVM_PROBE_TIMEOUT;

/// The accelerator to use: `OPSBAKE_QEMU_ACCEL` (`tcg` or `kvm`) when set,
/// else the result of the builder's KVM probe (once per process, shared with
/// the builder: [`opsbake_iaas_vbox::qemu::choose_accel_blocking`]).
pub fn accel() -> Result<Accel, QemuError> {
    Ok(launcher::choose_accel_blocking(None)?)
}

/// Whether a KVM guest runs here at native speed: the builder's probe
/// ([`opsbake_iaas_vbox::qemu::probe_kvm_blocking`], one definition), whose
/// guest must print a line, count in real mode and print another within
/// [`opsbake_iaas_vbox::qemu::PROBE_LOOP_BUDGET`]. `false` when `/dev/kvm`
/// cannot be opened, QEMU fails, or the guest hangs or crawls (then QEMU is
/// killed by its PID).
pub fn probe_kvm(timeout: Duration) -> Result<bool, QemuError> {
    Ok(launcher::probe_kvm_blocking(timeout)?.works)
}

/// A free TCP port on 127.0.0.1 (bound and released; QEMU binds it next).
pub fn free_port() -> Result<u16, QemuError> {
    Ok(launcher::free_port()?)
}

/// What to boot and how.
#[derive(Debug, Clone)]
pub struct QemuOptions {
    /// The disk image (raw, VMDK, qcow2 or VHD; never written).
    pub disk: PathBuf,
    /// Its format (`raw`, `vmdk`, `qcow2`, `vpc`); `None`: from its first bytes.
    pub disk_format: Option<String>,
    /// The CD-ROM (e.g. the BOSH settings ISO).
    pub cdrom: Option<PathBuf>,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs. Under TCG, 1 is the robust choice on a loaded host (two
    /// vCPUs have shown RCU stalls when the host's cores are busy).
    pub cpus: u32,
    /// The disk bus.
    pub disk_bus: DiskBus,
    /// Guest TCP ports forwarded besides 22 (each to a free 127.0.0.1 port).
    pub extra_forwards: Vec<u16>,
    /// `restrict=on`: the guest reaches nothing outside (only the forwards).
    pub restrict: bool,
    /// The accelerator; `None`: [`accel()`].
    pub accel: Option<Accel>,
    /// Where the overlay, logs and the QMP socket go; `None`: a new temporary directory.
    pub work_dir: Option<PathBuf>,
}

impl QemuOptions {
    /// Defaults for booting `disk`: 1 GiB, 1 vCPU, virtio disk, restricted
    /// networking, no CD-ROM.
    pub fn new(disk: impl Into<PathBuf>) -> QemuOptions {
        QemuOptions {
            disk: disk.into(),
            disk_format: None,
            cdrom: None,
            memory_mib: 1024,
            cpus: 1,
            disk_bus: DiskBus::Virtio,
            extra_forwards: Vec::new(),
            restrict: true,
            accel: None,
            work_dir: None,
        }
    }

    /// With a CD-ROM.
    pub fn cdrom(mut self, iso: impl Into<PathBuf>) -> QemuOptions {
        self.cdrom = Some(iso.into());
        self
    }
}

/// The format of a disk image from its first bytes (and the VHD footer).
pub fn detect_format(path: &Path) -> Result<String, QemuError> {
    let mut f = fs::File::open(path).map_err(io_err(path))?;
    let mut head = [0u8; 512];
    let n = f.read(&mut head).map_err(io_err(path))?;
    let head = &head[..n];
    if head.starts_with(b"QFI\xfb") {
        return Ok("qcow2".into());
    }
    if head.starts_with(b"KDMV") || head.starts_with(b"# Disk DescriptorFile") {
        return Ok("vmdk".into());
    }
    if head.starts_with(b"conectix") {
        return Ok("vpc".into());
    }
    let len = f.metadata().map_err(io_err(path))?.len();
    if len >= 512 && len % 512 == 0 {
        use std::io::Seek as _;
        f.seek(std::io::SeekFrom::Start(len - 512))
            .map_err(io_err(path))?;
        let mut foot = [0u8; 8];
        if f.read_exact(&mut foot).is_ok() && &foot == b"conectix" {
            return Ok("vpc".into());
        }
    }
    Ok("raw".into())
}

/// A running QEMU guest (the builder's [`QemuVm`]). Dropping it kills QEMU
/// by its PID.
#[derive(Debug)]
pub struct Qemu {
    vm: QemuVm,
    started: Instant,
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Qemu {
    /// Start QEMU on a copy-on-write overlay of `opts.disk`.
    ///
    /// When the accelerator was not forced (`opts.accel` and
    /// `OPSBAKE_QEMU_ACCEL` unset) and the probe chose KVM, the guest must
    /// reach the kernel's `Freeing unused kernel` line on its serial console
    /// within [`KVM_BOOT_CHECK`] (KVM guests hang or abort on some hosts even
    /// when a boot sector runs); otherwise QEMU is killed and the guest is
    /// started again under TCG, and TCG is used for the rest of the process.
    /// Images that do not log the kernel to the serial console should force
    /// the accelerator.
    pub fn start(opts: QemuOptions) -> Result<Qemu, QemuError> {
        let forced = opts.accel.is_some()
            || std::env::var("OPSBAKE_QEMU_ACCEL").is_ok_and(|v| !v.is_empty());
        let chosen = match opts.accel {
            Some(a) => a,
            None => accel()?,
        };
        if forced || chosen == Accel::Tcg {
            return Qemu::start_with(opts, chosen);
        }
        let kvm = Qemu::start_with(opts.clone(), Accel::Kvm).and_then(|vm| {
            if vm.vm.kernel_booted_blocking(KVM_BOOT_CHECK)? {
                Ok(vm)
            } else {
                Err(vm.timeout_error(
                    &format!("serial text {:?}", launcher::KERNEL_UP),
                    KVM_BOOT_CHECK,
                ))
            }
        });
        match kvm {
            Ok(vm) => Ok(vm),
            Err(e) => {
                tracing::warn!(error = %e, "the guest did not boot under KVM: TCG from now on");
                launcher::KVM_BROKEN.store(true, std::sync::atomic::Ordering::SeqCst);
                Qemu::start_with(opts, Accel::Tcg)
            }
        }
    }

    fn start_with(opts: QemuOptions, accel: Accel) -> Result<Qemu, QemuError> {
        let qemu_img = require("qemu-img", "qemu-utils")?;
        if opts.memory_mib < 128 || opts.cpus == 0 {
            return Err(QemuError::Invalid(format!(
                "memory {} MiB, {} CPUs",
                opts.memory_mib, opts.cpus
            )));
        }
        let disk = fs::canonicalize(&opts.disk).map_err(io_err(&opts.disk))?;
        let format = match &opts.disk_format {
            Some(f) => f.clone(),
            None => detect_format(&disk)?,
        };
        let cdrom = match &opts.cdrom {
            Some(iso) => Some(fs::canonicalize(iso).map_err(io_err(iso))?),
            None => None,
        };
        let (tmp, dir) = match &opts.work_dir {
            Some(d) => {
                fs::create_dir_all(d).map_err(io_err(d))?;
                (None, d.clone())
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("opsbake-qemu-")
                    .tempdir()
                    .map_err(io_err(Path::new("tempdir")))?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let overlay = dir.join("overlay.qcow2");
        let _ = fs::remove_file(&overlay);
        run(Command::new(&qemu_img)
            .args(["create", "-q", "-f", "qcow2", "-F", &format, "-b"])
            .arg(&disk)
            .arg(&overlay))?;
        let serial = dir.join("serial.log");
        let qmp = dir.join("qmp.sock");
        let log = dir.join("qemu.log");

        // A freed port can be taken again before QEMU binds it: retry a few times.
        let mut last_err = None;
        for _ in 0..3 {
            let ssh_port = free_port()?;
            let mut forwards = Vec::new();
            for g in &opts.extra_forwards {
                forwards.push((free_port()?, *g));
            }
            let _ = fs::remove_file(&qmp);
            let _ = fs::remove_file(&serial);
            let config = QemuConfig {
                name: "test".into(),
                disk: overlay.clone(),
                disk_bus: opts.disk_bus,
                cdrom: cdrom.clone(),
                memory_mib: u64::from(opts.memory_mib),
                cpus: opts.cpus,
                accel,
                ssh_port,
                forwards,
                restrict: opts.restrict,
                qmp: qmp.clone(),
                serial_log: serial.clone(),
                rtc_base: None,
            };
            let vm = launcher::spawn_with(config, &log, false)?;
            let started = Instant::now();
            match vm.wait_ready_blocking(Duration::from_secs(30)) {
                Ok(()) => {
                    return Ok(Qemu {
                        vm,
                        started,
                        dir,
                        _tmp: tmp,
                    })
                }
                Err(err) => {
                    vm.kill();
                    let text = fs::read_to_string(&log).unwrap_or_default();
                    let port_taken = matches!(err, VboxError::QemuExited { .. })
                        && (text.contains("hostfwd") || text.contains("host forwarding"));
                    if !port_taken {
                        return Err(err.into());
                    }
                    last_err = Some(err.into());
                }
            }
        }
        Err(last_err.unwrap_or_else(|| QemuError::Invalid("QEMU did not start".into())))
    }

    /// The builder's handle on this QEMU process.
    pub fn launcher(&self) -> &QemuVm {
        &self.vm
    }

    /// QEMU's PID.
    pub fn pid(&self) -> u32 {
        self.vm.pid
    }

    /// The 127.0.0.1 port forwarded to the guest's port 22.
    pub fn ssh_port(&self) -> u16 {
        self.vm.config.ssh_port
    }

    /// The 127.0.0.1 address forwarded to the guest's port 22.
    pub fn ssh_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.ssh_port()))
    }

    /// The host port forwarded to guest port `guest` (from `extra_forwards`).
    pub fn forwarded(&self, guest: u16) -> Option<u16> {
        self.vm
            .config
            .forwards
            .iter()
            .find(|(_, g)| *g == guest)
            .map(|(h, _)| *h)
    }

    /// The accelerator in use.
    pub fn accel(&self) -> Accel {
        self.vm.config.accel
    }

    /// When QEMU was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The VM's work directory (overlay, logs, QMP socket).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The serial console log.
    pub fn serial_log(&self) -> PathBuf {
        self.vm.config.serial_log.clone()
    }

    /// The serial console so far.
    pub fn serial(&self) -> String {
        fs::read(self.serial_log())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of the serial console.
    pub fn serial_tail(&self, lines: usize) -> String {
        tail(&self.serial(), lines)
    }

    /// `Some(status)` once QEMU has exited.
    pub fn exited(&mut self) -> Result<Option<String>, QemuError> {
        Ok(self.vm.try_wait()?.map(|s| s.to_string()))
    }

    fn timeout_error(&self, what: &str, after: Duration) -> QemuError {
        QemuError::Timeout {
            what: what.to_string(),
            after,
            pid: self.pid(),
            accel: self.accel(),
            serial: self.serial_log(),
            serial_tail: self.serial_tail(40),
        }
    }

    /// Wait until the guest's sshd sends its banner through the forward.
    /// Returns the banner line and the time since QEMU started.
    ///
    /// With user-mode networking QEMU accepts the host connection itself and
    /// closes it when the guest does not answer, so only a banner counts.
    pub fn wait_for_ssh_banner(
        &mut self,
        timeout: Duration,
    ) -> Result<(String, Duration), QemuError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited()? {
                return Err(self.vm.exited_error(status).into());
            }
            if let Some(banner) = read_banner(self.ssh_addr(), Duration::from_secs(2)) {
                let since = self.started.elapsed();
                tracing::info!(pid = self.pid(), ?since, %banner, "SSH banner");
                return Ok((banner, since));
            }
            if Instant::now() >= deadline {
                return Err(self.timeout_error("SSH banner", timeout));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Whether an SSH banner arrives within `timeout` (one attempt).
    pub fn ssh_banner_now(&self, timeout: Duration) -> Option<String> {
        read_banner(self.ssh_addr(), timeout)
    }

    /// Wait until the serial console contains `needle`.
    pub fn wait_for_serial(
        &mut self,
        needle: &str,
        timeout: Duration,
    ) -> Result<Duration, QemuError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.vm.serial_contains(needle) {
                return Ok(self.started.elapsed());
            }
            if let Some(status) = self.exited()? {
                return Err(self.vm.exited_error(status).into());
            }
            if Instant::now() >= deadline {
                return Err(self.timeout_error(&format!("serial text {needle:?}"), timeout));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Send one QMP command (e.g. `{"execute":"system_powerdown"}`) and return
    /// the reply line (the builder's QMP client).
    pub fn qmp(&self, command: &str) -> Result<String, QemuError> {
        Ok(launcher::qmp_line(&self.vm.config.qmp, command, command)?)
    }

    /// Power the guest off the builder's way: ACPI `system_powerdown`
    /// (`timeout` bounds a guest that handles it), else SysRq sync, remount
    /// and power-off, then QMP `quit`, then kill by PID.
    pub fn shutdown(&mut self, timeout: Duration) -> Result<(), QemuError> {
        let how = self.vm.shutdown_blocking(timeout)?;
        tracing::info!(pid = self.pid(), how, "QEMU stopped");
        Ok(())
    }

    /// Kill QEMU by its PID and reap it.
    pub fn kill(&mut self) {
        self.vm.kill();
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill();
    }
}

fn read_banner(addr: SocketAddr, timeout: Duration) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline && buf.len() < 256 {
        match s.read(&mut byte) {
            Ok(1) => {
                if byte[0] == b'\n' {
                    break;
                }
                buf.push(byte[0]);
            }
            _ => break,
        }
    }
    let line = String::from_utf8_lossy(&buf).trim().to_string();
    line.starts_with("SSH-").then_some(line)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub(crate) fn run(cmd: &mut Command) -> Result<String, QemuError> {
    let name = format!("{:?}", cmd);
    let out = cmd.output().map_err(|e| QemuError::Command {
        command: name.clone(),
        message: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(QemuError::Command {
            command: name,
            message: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

// The guest's side (keys, agent settings, ISO, ssh): see `crate::guest`.
pub use crate::guest::{
    guest_ssh, password_hash, settings_iso, settings_json, ssh_keypair, TestKey,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_guest_is_the_builders() {
        use opsbake_iaas_vbox::qemu::{probe_firmware, PROBE_EXIT_CODE};
        let s = probe_firmware();
        assert_eq!(s.len(), 0x10000);
        assert_eq!(&s[0xfff0..0xfff5], &[0xea, 0x00, 0x00, 0x00, 0xf0]);
        assert_eq!(PROBE_EXIT_CODE, (0x21 << 1) | 1);
    }

    #[test]
    fn settings_have_agent_id_keys_and_password() {
        let s = settings_json(
            "builder-1",
            &["ssh-ed25519 AAAA k".to_string()],
            Some("$6$x$y"),
        );
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["agent_id"], "builder-1");
        assert_eq!(v["env"]["bosh"]["authorized_keys"][0], "ssh-ed25519 AAAA k");
        assert_eq!(v["env"]["bosh"]["password"], "$6$x$y");
        assert_eq!(v["networks"]["default"]["type"], "dynamic");
        let s = settings_json("b", &[], None);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert!(v["env"]["bosh"].get("password").is_none());
    }

    #[test]
    fn detects_formats() {
        let d = tempfile::tempdir().unwrap();
        let raw = d.path().join("raw");
        fs::write(&raw, vec![0u8; 4096]).unwrap();
        assert_eq!(detect_format(&raw).unwrap(), "raw");
        let q = d.path().join("q");
        fs::write(&q, b"QFI\xfb\0\0\0\x03").unwrap();
        assert_eq!(detect_format(&q).unwrap(), "qcow2");
        let v = d.path().join("v");
        fs::write(&v, b"KDMV\x03\0\0\0").unwrap();
        assert_eq!(detect_format(&v).unwrap(), "vmdk");
        let mut vhd = vec![0u8; 1024];
        vhd[512..520].copy_from_slice(b"conectix");
        let h = d.path().join("h");
        fs::write(&h, vhd).unwrap();
        assert_eq!(detect_format(&h).unwrap(), "vpc");
    }

    #[test]
    fn accel_env_forces_or_refuses() {
        // nextest runs each test in its own process: setting the variable is safe here
        std::env::set_var("OPSBAKE_QEMU_ACCEL", "tcg");
        assert_eq!(accel().unwrap(), Accel::Tcg);
        std::env::set_var("OPSBAKE_QEMU_ACCEL", "kvm");
        assert_eq!(accel().unwrap(), Accel::Kvm);
        std::env::set_var("OPSBAKE_QEMU_ACCEL", "hvf");
        assert!(matches!(accel(), Err(QemuError::Invalid(_))));
        std::env::remove_var("OPSBAKE_QEMU_ACCEL");
    }

    #[test]
    fn kvm_probe_answers_within_its_deadline() {
        if which(QEMU).is_none() {
            assert!(
                skip_peers(),
                "{QEMU} missing: run .ci/setup.d/20-test-stemcell.sh"
            );
            return;
        }
        let t = Instant::now();
        let kvm = probe_kvm(Duration::from_secs(3)).unwrap();
        assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
        eprintln!("KVM probe: {kvm} in {:?}", t.elapsed());
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
