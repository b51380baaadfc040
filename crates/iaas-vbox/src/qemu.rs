//! The one QEMU launcher (the product's offline engine, and the test
//! guests of `opsbake-test-support`): `qemu-system-x86_64` on a copy-on-write
//! qcow2 overlay, user-mode networking with one SSH port forward on
//! 127.0.0.1 (`restrict=on` under `--offline`), the agent settings ISO as
//! CD-ROM, a QMP socket for a clean power-off, the serial console in a log
//! file, and the guest clock started at `SOURCE_DATE_EPOCH`.
//!
//! [`QemuConfig::args`] is the one command-line builder, [`spawn`] the one
//! start, [`QemuVm`] waits and stops QEMU by its PID, [`qmp_line`] is the
//! one QMP client. Each wait has a blocking form (`*_blocking`, for the
//! synchronous test launcher) and an async one that runs it on a blocking
//! thread. The accelerator choice and the KVM probe are in [`accel`].

use std::ffi::OsString;
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{io_err, tail, VboxError};

mod accel;
pub use accel::*;

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";

/// The bus the guest sees its disk on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskBus {
    /// virtio-blk (`/dev/vda`): fastest under TCG.
    #[default]
    Virtio,
    /// IDE (`/dev/sda`), as VirtualBox and the vSphere OVF present it.
    Ide,
}

/// A free TCP port on 127.0.0.1 (bound, then released for QEMU).
pub fn free_port() -> Result<u16, VboxError> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(io_err("127.0.0.1:0"))?;
    Ok(l.local_addr().map_err(io_err("127.0.0.1:0"))?.port())
}

/// Everything one QEMU guest is started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuConfig {
    /// VM name (`-name`).
    pub name: String,
    /// The qcow2 overlay the guest writes.
    pub disk: PathBuf,
    /// The bus of that disk.
    pub disk_bus: DiskBus,
    /// The settings ISO; `None`: an empty CD-ROM drive.
    pub cdrom: Option<PathBuf>,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub cpus: u32,
    /// Accelerator.
    pub accel: Accel,
    /// Host port forwarded to the guest's 22.
    pub ssh_port: u16,
    /// Extra forwards (host port, guest port).
    pub forwards: Vec<(u16, u16)>,
    /// `restrict=on`: the guest reaches nothing but the forwards.
    pub restrict: bool,
    /// QMP socket.
    pub qmp: PathBuf,
    /// Serial console log.
    pub serial_log: PathBuf,
    /// Guest clock start (Unix seconds), `-rtc base=...,clock=vm`.
    pub rtc_base: Option<i64>,
}

/// `2024-01-01T00:00:00` for `-rtc base=`.
pub fn rtc_datetime(epoch: i64) -> String {
    let days = epoch.div_euclid(86_400);
    let secs = epoch.rem_euclid(86_400);
    // civil_from_days (Howard Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

impl QemuConfig {
    /// The command line (without the program).
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |s: &str| a.push(s.into());
        push("-name");
        push(&format!("{},process=opsbake-{}", self.name, self.name));
        push("-nodefaults");
        push("-no-user-config");
        push("-display");
        push("none");
        push("-machine");
        push("pc");
        push("-accel");
        push(self.accel.as_str());
        push("-m");
        push(&self.memory_mib.to_string());
        push("-smp");
        push(&self.cpus.to_string());
        let mut drive = OsString::from("file=");
        drive.push(self.disk.as_os_str());
        drive.push(match self.disk_bus {
            DiskBus::Virtio => ",format=qcow2,if=virtio,cache=writeback,discard=unmap",
            DiskBus::Ide => ",format=qcow2,if=ide,index=0,cache=writeback,discard=unmap",
        });
        a.push("-drive".into());
        a.push(drive);
        // without an ISO an empty drive: the guest has its /dev/sr0 either
        // way (as under QEMU's defaults and VirtualBox), and an agent looking
        // for settings finds no disc at once instead of waiting for a device
        let cd = match &self.cdrom {
            Some(iso) => {
                let mut cd = OsString::from("file=");
                cd.push(iso.as_os_str());
                cd.push(",format=raw,if=ide,media=cdrom,readonly=on");
                cd
            }
            None => OsString::from("if=ide,index=2,media=cdrom"),
        };
        a.push("-drive".into());
        a.push(cd);
        let mut net = String::from("user,id=net0");
        if self.restrict {
            net.push_str(",restrict=on");
        }
        net.push_str(&format!(",hostfwd=tcp:127.0.0.1:{}-:22", self.ssh_port));
        for (h, g) in &self.forwards {
            net.push_str(&format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}"));
        }
        a.push("-netdev".into());
        a.push(net.into());
        a.push("-device".into());
        a.push("virtio-net-pci,netdev=net0".into());
        a.push("-device".into());
        a.push("virtio-rng-pci".into());
        let mut serial = OsString::from("file:");
        serial.push(self.serial_log.as_os_str());
        a.push("-serial".into());
        a.push(serial);
        let mut qmp = OsString::from("unix:");
        qmp.push(self.qmp.as_os_str());
        qmp.push(",server=on,wait=off");
        a.push("-qmp".into());
        a.push(qmp);
        if let Some(e) = self.rtc_base {
            a.push("-rtc".into());
            a.push(format!("base={},clock=vm", rtc_datetime(e)).into());
        }
        a
    }
}

/// A started QEMU process. Clones share the one child (the async waits
/// run the blocking ones on a blocking thread with a clone).
#[derive(Debug, Clone)]
pub struct QemuVm {
    child: Arc<Mutex<Child>>,
    /// Its PID.
    pub pid: u32,
    /// Its config.
    pub config: QemuConfig,
    /// QEMU's stdout/stderr file.
    pub log: PathBuf,
}

/// Start QEMU with `config`; `log` receives QEMU's own output. The child is
/// in its own process group when `own_group` (the product: a terminal's
/// Ctrl-C goes to opsbake, which shuts the VM down through the journal).
pub fn spawn_with(config: QemuConfig, log: &Path, own_group: bool) -> Result<QemuVm, VboxError> {
    let qemu = crate::exec::require(QEMU)?;
    let out = std::fs::File::create(log).map_err(io_err(log))?;
    let err = out.try_clone().map_err(io_err(log))?;
    let mut cmd = std::process::Command::new(qemu);
    cmd.args(config.args())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    if own_group {
        cmd.process_group(0);
    }
    let child = cmd.spawn().map_err(io_err(QEMU))?;
    let pid = child.id();
    tracing::info!(pid, accel = %config.accel, ssh_port = config.ssh_port, disk = %config.disk.display(), "QEMU started");
    Ok(QemuVm {
        child: Arc::new(Mutex::new(child)),
        pid,
        config,
        log: log.to_path_buf(),
    })
}

/// [`spawn_with`] in its own process group (the product's engine).
pub fn spawn(config: QemuConfig, log: &Path) -> Result<QemuVm, VboxError> {
    spawn_with(config, log, true)
}

/// Run `f` on a blocking thread (the async forms of the waits).
async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, VboxError> + Send + 'static,
) -> Result<T, VboxError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| VboxError::Config(format!("{what}: its thread failed: {e}")))?
}

impl QemuVm {
    fn child(&self) -> MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Some(status)` once QEMU has exited (reaped; asked again, the same).
    pub fn try_wait(&self) -> Result<Option<ExitStatus>, VboxError> {
        self.child().try_wait().map_err(io_err(QEMU))
    }

    /// Whether QEMU is still running.
    pub fn running(&self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// SIGKILL QEMU by its PID (unless it has exited) and reap it.
    pub fn kill(&self) {
        let mut c = self.child();
        if matches!(c.try_wait(), Ok(None)) {
            let _ = c.kill();
        }
        let _ = c.wait();
    }

    /// Wait up to `within` for QEMU to exit; whether it did.
    pub fn wait_exit_blocking(&self, within: Duration) -> Result<bool, VboxError> {
        let deadline = Instant::now() + within;
        loop {
            if self.try_wait()?.is_some() {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The error for an early exit.
    pub fn exited_error(&self, status: String) -> VboxError {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        VboxError::QemuExited {
            pid: self.pid,
            status,
            log: self.log.clone(),
            log_tail: tail(&read(&self.log), 20),
            serial: self.config.serial_log.clone(),
            serial_tail: tail(&read(&self.config.serial_log), 30),
        }
    }

    /// Wait until QMP answers `query-status` (QEMU has set up its devices
    /// and port forwards), or QEMU exits (an error with its output).
    pub fn wait_ready_blocking(&self, deadline: Duration) -> Result<(), VboxError> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.try_wait()? {
                return Err(self.exited_error(st.to_string()));
            }
            if self.config.qmp.exists() && qmp(&self.config.qmp, "query-status").is_ok() {
                return Ok(());
            }
            if start.elapsed() > deadline {
                return Err(VboxError::Qmp {
                    command: "query-status".into(),
                    socket: self.config.qmp.clone(),
                    message: format!("no answer after {deadline:?}"),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// [`QemuVm::wait_ready_blocking`] on a blocking thread.
    pub async fn wait_ready(&self, deadline: Duration) -> Result<(), VboxError> {
        let vm = self.clone();
        blocking("wait for QMP", move || vm.wait_ready_blocking(deadline)).await
    }

    /// Whether the guest's kernel came up within `within`: the serial
    /// console shows `Freeing unused kernel` (the line before init starts).
    /// False when QEMU exits or the time runs out (a KVM guest that hangs).
    pub fn kernel_booted_blocking(&self, within: Duration) -> Result<bool, VboxError> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.serial_contains(KERNEL_UP) {
                return Ok(true);
            }
            if self.try_wait()?.is_some() {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Ok(self.serial_contains(KERNEL_UP))
    }

    /// [`QemuVm::kernel_booted_blocking`] on a blocking thread.
    pub async fn kernel_booted(&self, within: Duration) -> Result<bool, VboxError> {
        let vm = self.clone();
        blocking("wait for the kernel", move || {
            vm.kernel_booted_blocking(within)
        })
        .await
    }

    /// Whether the serial log contains `needle`.
    pub fn serial_contains(&self, needle: &str) -> bool {
        std::fs::read(&self.config.serial_log)
            .map(|b| String::from_utf8_lossy(&b).contains(needle))
            .unwrap_or(false)
    }

    /// Power off: ACPI `system_powerdown`; when the guest shows no sign of
    /// handling it within [`ACPI_GRACE`] (a stemcell without logind or
    /// acpid ignores the power button), the magic SysRq keys through QMP:
    /// `s` (sync), `u` (remount read-only), `o` (power off): from the file
    /// system's view a clean stop. Then QMP `quit`, then SIGKILL. `timeout`
    /// bounds the wait of a guest that does handle ACPI. Returns how it ended.
    pub fn shutdown_blocking(&self, timeout: Duration) -> Result<&'static str, VboxError> {
        if self.try_wait()?.is_some() {
            return Ok("already stopped");
        }
        let serial_len = || {
            std::fs::metadata(&self.config.serial_log)
                .map(|m| m.len())
                .unwrap_or(0)
        };
        let before = serial_len();
        if let Err(e) = qmp(&self.config.qmp, "system_powerdown") {
            tracing::warn!(pid = self.pid, error = %e, "system_powerdown failed");
        }
        if self.wait_exit_blocking(ACPI_GRACE.min(timeout))? {
            return Ok("acpi");
        }
        let reacting = {
            let text = std::fs::read(&self.config.serial_log).unwrap_or_default();
            let new = String::from_utf8_lossy(
                text.get(usize::try_from(before).unwrap_or(0)..)
                    .unwrap_or_default(),
            )
            .into_owned();
            new.contains("Stopping") || new.contains("Stopped") || new.contains("reboot:")
        };
        if reacting && self.wait_exit_blocking(timeout.saturating_sub(ACPI_GRACE))? {
            return Ok("acpi");
        }
        tracing::info!(
            pid = self.pid,
            serial_bytes = serial_len(),
            "the guest ignores the ACPI power button: SysRq sync, remount read-only, power off"
        );
        for key in ["s", "u", "o"] {
            let args = format!(
                r#"{{"keys":[{{"type":"qcode","data":"alt"}},{{"type":"qcode","data":"sysrq"}},{{"type":"qcode","data":"{key}"}}]}}"#
            );
            if let Err(e) = qmp_args(&self.config.qmp, "send-key", Some(&args)) {
                tracing::warn!(pid = self.pid, error = %e, "SysRq {key} failed");
            }
            // each SysRq action runs in the guest; wait for its console line
            let want = match key {
                "s" => "Emergency Sync complete",
                "u" => "Emergency Remount complete",
                _ => "reboot: Power down",
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && !self.serial_contains(want) {
                if self.try_wait()?.is_some() {
                    return Ok("sysrq");
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        if self.wait_exit_blocking(Duration::from_secs(20))? {
            return Ok("sysrq");
        }
        tracing::warn!(pid = self.pid, "the guest did not power off: QMP quit");
        let _ = qmp(&self.config.qmp, "quit");
        if self.wait_exit_blocking(Duration::from_secs(10))? {
            return Ok("quit");
        }
        self.kill();
        Ok("killed")
    }

    /// [`QemuVm::shutdown_blocking`] on a blocking thread.
    pub async fn shutdown(&self, timeout: Duration) -> Result<&'static str, VboxError> {
        let vm = self.clone();
        blocking("QEMU shutdown", move || vm.shutdown_blocking(timeout)).await
    }
}

/// The kernel's serial console line just before init starts.
pub const KERNEL_UP: &str = "Freeing unused kernel";

/// How long a guest has to show that it handles the ACPI power button.
pub const ACPI_GRACE: Duration = Duration::from_secs(15);

/// Run one QMP command without arguments and return the reply line.
pub fn qmp(socket: &Path, command: &str) -> Result<String, VboxError> {
    qmp_args(socket, command, None)
}

/// Run one QMP command (`execute` name, `arguments` as a JSON object) and
/// return the reply line.
pub fn qmp_args(
    socket: &Path,
    command: &str,
    arguments: Option<&str>,
) -> Result<String, VboxError> {
    let line = match arguments {
        Some(a) => format!("{{\"execute\":\"{command}\",\"arguments\":{a}}}"),
        None => format!("{{\"execute\":\"{command}\"}}"),
    };
    qmp_line(socket, command, &line)
}

/// The one QMP client: greet, `qmp_capabilities`, then send `line` (one
/// JSON command) and return its reply line (events before it are
/// skipped); an `"error"` reply is an error naming `command`. `quit` may
/// close the socket before replying: then the reply is empty. Each read
/// waits at most 10 s.
pub fn qmp_line(socket: &Path, command: &str, line: &str) -> Result<String, VboxError> {
    let qerr = |message: String| VboxError::Qmp {
        command: command.to_string(),
        socket: socket.to_path_buf(),
        message,
    };
    let stream = UnixStream::connect(socket).map_err(|e| qerr(e.to_string()))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| qerr(e.to_string()))?;
    let mut w = stream.try_clone().map_err(|e| qerr(e.to_string()))?;
    let mut r = BufReader::new(stream);
    let mut greeting = String::new();
    r.read_line(&mut greeting)
        .map_err(|e| qerr(e.to_string()))?;
    if !greeting.contains("\"QMP\"") {
        return Err(qerr(format!("unexpected greeting {greeting:?}")));
    }
    let quit = line.contains("\"quit\"");
    let mut reply = String::new();
    for (cmd, is_last) in [(r#"{"execute":"qmp_capabilities"}"#, false), (line, true)] {
        w.write_all(cmd.as_bytes())
            .and_then(|()| w.write_all(b"\n"))
            .map_err(|e| qerr(e.to_string()))?;
        loop {
            let mut l = String::new();
            let n = r.read_line(&mut l).map_err(|e| qerr(e.to_string()))?;
            if n == 0 {
                if is_last && quit {
                    return Ok(String::new());
                }
                return Err(qerr("connection closed".into()));
            }
            // events ({"event": ...}) may come before the reply
            if l.contains("\"return\"") || l.contains("\"error\"") {
                reply = l.trim().to_string();
                break;
            }
        }
        if reply.contains("\"error\"") {
            return Err(qerr(reply));
        }
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> QemuConfig {
        QemuConfig {
            name: "b1".into(),
            disk: "/s/overlay.qcow2".into(),
            disk_bus: DiskBus::Virtio,
            cdrom: Some("/s/settings.iso".into()),
            memory_mib: 1024,
            cpus: 1,
            accel: Accel::Tcg,
            ssh_port: 40022,
            forwards: vec![(40080, 80)],
            restrict: true,
            qmp: "/s/qmp.sock".into(),
            serial_log: "/s/serial.log".into(),
            rtc_base: Some(1_704_067_200),
        }
    }

    /// The command line as one string.
    fn line(c: &QemuConfig) -> String {
        c.args()
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn command_line_has_overlay_forward_restrict_qmp_serial_rtc() {
        let a: Vec<String> = cfg()
            .args()
            .into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        let joined = a.join(" ");
        assert!(joined.contains("-accel tcg"), "{joined}");
        assert!(joined.contains(
            "-drive file=/s/overlay.qcow2,format=qcow2,if=virtio,cache=writeback,discard=unmap"
        ));
        assert!(joined.contains("file=/s/settings.iso,format=raw,if=ide,media=cdrom,readonly=on"));
        assert!(joined.contains(
            "-netdev user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=tcp:127.0.0.1:40080-:80"
        ));
        assert!(joined.contains("-serial file:/s/serial.log"));
        assert!(joined.contains("-qmp unix:/s/qmp.sock,server=on,wait=off"));
        assert!(joined.contains("-rtc base=2024-01-01T00:00:00,clock=vm"));
        let mut open = cfg();
        open.restrict = false;
        open.accel = Accel::Kvm;
        let joined = line(&open);
        assert!(!joined.contains("restrict=on"));
        assert!(joined.contains("-accel kvm"));
        // no ISO: still a CD-ROM drive, empty
        open.cdrom = None;
        open.disk_bus = DiskBus::Ide;
        let joined = line(&open);
        assert!(
            joined.contains("-drive if=ide,index=2,media=cdrom "),
            "{joined}"
        );
        assert!(!joined.contains("settings.iso"), "{joined}");
        assert!(
            joined.contains("file=/s/overlay.qcow2,format=qcow2,if=ide,index=0,"),
            "{joined}"
        );
    }

    #[test]
    fn rtc_dates() {
        assert_eq!(rtc_datetime(0), "1970-01-01T00:00:00");
        assert_eq!(rtc_datetime(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(rtc_datetime(1_704_067_199), "2023-12-31T23:59:59");
        assert_eq!(rtc_datetime(1_735_689_600 + 3661), "2025-01-01T01:01:01");
    }
}
