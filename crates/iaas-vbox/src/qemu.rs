//! The QEMU engine: `qemu-system-x86_64` on a copy-on-write qcow2 overlay of
//! the stemcell disk, user-mode networking with one SSH port forward on
//! 127.0.0.1 (`restrict=on` under `--offline`), the agent settings ISO as
//! CD-ROM, a QMP socket for a clean power-off, the serial console in a log
//! file, and the guest clock started at `SOURCE_DATE_EPOCH`.
//!
//! KVM is used only when a short probe shows it works: a firmware image of
//! our own that must print two lines with a real-mode count between them
//! within a fraction of a second ([`probe_firmware`]); where KVM emulates
//! real mode (nested virtualisation) guests crawl through BIOS and GRUB, so
//! anything but a fast count means TCG.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;

use crate::error::{io_err, tail, VboxError};

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";

/// How long the KVM probe guest may take to print its first line (QEMU
/// start-up; its count then has [`PROBE_LOOP_BUDGET`]).
pub const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// Binary translation.
    Tcg,
}

impl Accel {
    /// The `-accel` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `accel` option: `auto` probes KVM; `OPSBAKE_QEMU_ACCEL` overrides `auto`.
pub async fn choose_accel(option: Option<&str>) -> Result<Accel, VboxError> {
    let env = std::env::var("OPSBAKE_QEMU_ACCEL").ok();
    let want = match option {
        Some(o) if o != "auto" => o.to_string(),
        _ => env
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "auto".into()),
    };
    match want.as_str() {
        "tcg" => Ok(Accel::Tcg),
        "kvm" => Ok(Accel::Kvm),
        "auto" => Ok(if KVM_BROKEN.load(std::sync::atomic::Ordering::SeqCst) {
            Accel::Tcg
        } else if *KVM_WORKS
            .get_or_try_init(|| probe_kvm(KVM_PROBE_TIMEOUT))
            .await?
        {
            Accel::Kvm
        } else {
            Accel::Tcg
        }),
        other => Err(VboxError::Config(format!(
            "builds.vbox.options.accel `{other}`: expected auto, kvm or tcg"
        ))),
    }
}

/// Set when a real guest failed under a probed KVM: TCG from then on.
pub static KVM_BROKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The file (in opsbake's state dir) that remembers, for one boot of this
/// host, that a real guest hung under KVM although the probe passed: later
/// builds go straight to TCG instead of losing [`KVM_BOOT_CHECK`] each.
pub const KVM_VERDICT_FILE: &str = "qemu-kvm-broken";

fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Where the verdict is kept: the state dir, and the user's cache dir
/// (`$XDG_CACHE_HOME/opsbake` or `~/.cache/opsbake`) so that builds with
/// other state dirs on the same host know it too.
fn verdict_paths(state_root: &Path) -> Vec<PathBuf> {
    let mut v = vec![state_root.join(KVM_VERDICT_FILE)];
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|c| !c.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    if let Some(c) = cache {
        v.push(c.join("opsbake").join(KVM_VERDICT_FILE));
    }
    v
}

/// Record that KVM guests hang on this host (until reboot), and switch
/// this process to TCG. Best effort: a failed write only costs the next
/// build the boot check again.
pub fn remember_kvm_broken(state_root: &Path) {
    KVM_BROKEN.store(true, std::sync::atomic::Ordering::SeqCst);
    if let Some(id) = boot_id() {
        for p in verdict_paths(state_root) {
            if let Some(d) = p.parent() {
                let _ = std::fs::create_dir_all(d);
            }
            if let Err(e) = std::fs::write(&p, format!("{id}\n")) {
                tracing::warn!(path = %p.display(), error = %e, "cannot record the KVM verdict");
            }
        }
    }
}

/// Whether the state dir or the user's cache dir records that KVM guests
/// hang on this host since its last boot; if so this process uses TCG for
/// `auto`.
pub fn kvm_known_broken(state_root: &Path) -> bool {
    let known = match boot_id() {
        Some(id) => verdict_paths(state_root)
            .iter()
            .any(|p| std::fs::read_to_string(p).is_ok_and(|s| s.trim() == id)),
        None => false,
    };
    if known {
        KVM_BROKEN.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    known
}

/// How long a guest under a probed KVM may take to show the kernel's
/// `Freeing unused kernel` line on its serial console before it is restarted
/// under TCG (KVM guests hang or abort on some hosts even when the probe runs).
pub const KVM_BOOT_CHECK: Duration = Duration::from_secs(30);

/// The KVM probe's result, once per process.
static KVM_WORKS: tokio::sync::OnceCell<bool> = tokio::sync::OnceCell::const_new();

/// The KVM probe's guest: a 64 KiB firmware image for `-bios` (no SeaBIOS:
/// the guest runs from the reset vector in a few ms). In real mode it
/// prints [`PROBE_START`] on the serial port, counts [`PROBE_LOOP`] times
/// down, prints [`PROBE_OK`] and exits through `isa-debug-exit`.
///
/// The count is the test: where KVM cannot run real-mode code natively
/// (nested virtualisation without "unrestricted guest"), KVM emulates it one
/// instruction at a time, about 0.5 µs each: the count takes about a second
/// there instead of a few milliseconds, and so do the BIOS and GRUB of a real
/// guest, which then looks hung for minutes. A boot sector that only writes
/// one port passes on such hosts (the probe before this one did).
///
/// ```text
/// 0000  8c c8              mov ax, cs
/// 0002  8e d8              mov ds, ax
/// 0004  ba f8 03           mov dx, 0x3f8        ; COM1
/// 0007  be 2f 00           mov si, start_line
/// 000a  e8 19 00           call puts
/// 000d  66 b9 nn nn nn nn  mov ecx, PROBE_LOOP
/// 0013  66 49              dec ecx
/// 0015  75 fc              jnz 0013
/// 0017  be ll 00           mov si, ok_line
/// 001a  e8 09 00           call puts
/// 001d  ba f4 00           mov dx, 0xf4         ; isa-debug-exit
/// 0020  b0 21              mov al, 0x21
/// 0022  ee                 out dx, al
/// 0023  f4                 hlt
/// 0024  eb fd              jmp 0023
/// 0026  ac                 puts: lodsb
/// 0027  84 c0              test al, al
/// 0029  74 03              jz 002e
/// 002b  ee                 out dx, al
/// 002c  eb f8              jmp 0026
/// 002e  c3                 ret
/// 002f  start_line, 0, ok_line, 0
/// fff0  ea 00 00 00 f0     jmp f000:0000        ; the reset vector
/// ```
pub fn probe_firmware() -> Vec<u8> {
    let start_at = 0x2f_u8;
    let ok_at = start_at + u8::try_from(PROBE_START.len() + 2).unwrap_or(0);
    let n = PROBE_LOOP.to_le_bytes();
    let mut code = vec![
        0x8c, 0xc8, 0x8e, 0xd8, 0xba, 0xf8, 0x03, 0xbe, start_at, 0x00, 0xe8, 0x19, 0x00, 0x66,
        0xb9, n[0], n[1], n[2], n[3], 0x66, 0x49, 0x75, 0xfc, 0xbe, ok_at, 0x00, 0xe8, 0x09, 0x00,
        0xba, 0xf4, 0x00, 0xb0, 0x21, 0xee, 0xf4, 0xeb, 0xfd, 0xac, 0x84, 0xc0, 0x74, 0x03, 0xee,
        0xeb, 0xf8, 0xc3,
    ];
    for line in [PROBE_START, PROBE_OK] {
        code.extend_from_slice(line.as_bytes());
        code.extend_from_slice(b"\n\0");
    }
    let mut rom = vec![0u8; 0x10000];
    rom[..code.len()].copy_from_slice(&code);
    rom[0xfff0..0xfff5].copy_from_slice(&[0xea, 0x00, 0x00, 0x00, 0xf0]);
    rom
}

/// The probe guest's first line.
pub const PROBE_START: &str = "opsbake-kvm-probe start";
/// The probe guest's last line, after its count.
pub const PROBE_OK: &str = "opsbake-kvm-probe ok";
/// The probe guest's count: a few ms where KVM runs real mode natively,
/// about a second where KVM emulates it.
pub const PROBE_LOOP: u32 = 2_000_000;
/// How long the count may take, from the start line to the ok line.
pub const PROBE_LOOP_BUDGET: Duration = Duration::from_millis(250);

/// QEMU's exit code when the probe guest writes 0x21 to `isa-debug-exit`.
pub const PROBE_EXIT_CODE: i32 = (0x21 << 1) | 1;

/// What the KVM probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmProbe {
    /// Whether KVM guests run here at native speed.
    pub works: bool,
    /// Why (for logs and the build's events).
    pub reason: String,
    /// How long the probe took.
    pub took: Duration,
}

/// Whether KVM guests run here (blocking; see [`probe_firmware`]): under
/// `-accel kvm` the probe guest must print its start line within `timeout`
/// and its ok line within [`PROBE_LOOP_BUDGET`] after it; anything else
/// (no `/dev/kvm`, QEMU failing, a hang, a slow count) means TCG. QEMU is
/// killed by its PID and reaped before this returns.
pub fn probe_kvm_blocking(timeout: Duration) -> Result<KvmProbe, VboxError> {
    use std::io::BufRead as _;
    let began = Instant::now();
    let verdict = |works: bool, reason: String| KvmProbe {
        works,
        reason,
        took: began.elapsed(),
    };
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return Ok(verdict(false, format!("/dev/kvm: {e}")));
    }
    let qemu = crate::exec::require(QEMU)?;
    let dir = tempfile::tempdir().map_err(io_err("tempdir"))?;
    let rom = dir.path().join("probe.rom");
    std::fs::write(&rom, probe_firmware()).map_err(io_err(&rom))?;
    let mut child = std::process::Command::new(qemu)
        .args(["-accel", "kvm", "-nodefaults", "-no-user-config"])
        .args(["-display", "none", "-machine", "pc", "-m", "16"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .args(["-serial", "stdio", "-bios"])
        .arg(&rom)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(io_err(QEMU))?;
    let (tx, rx) = std::sync::mpsc::channel::<(String, Instant)>();
    if let Some(out) = child.stdout.take() {
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send((line, Instant::now())).is_err() {
                    break;
                }
            }
        });
    }
    let wait_line = |want: &str, until: Instant| -> Option<Instant> {
        loop {
            let left = until.checked_duration_since(Instant::now())?;
            match rx.recv_timeout(left) {
                Ok((l, at)) if l.trim_end() == want => return Some(at),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    };
    let result = match wait_line(PROBE_START, began + timeout) {
        None => verdict(
            false,
            format!("the probe guest printed nothing in {timeout:?}"),
        ),
        Some(started) => match wait_line(PROBE_OK, started + PROBE_LOOP_BUDGET) {
            Some(done) => verdict(
                true,
                format!(
                    "the probe guest counted in {:?}",
                    done.duration_since(started)
                ),
            ),
            None => verdict(
                false,
                format!(
                    "the probe guest's real-mode count took over {PROBE_LOOP_BUDGET:?} \
                     (KVM emulates real mode here: guests boot slower than under TCG)"
                ),
            ),
        },
    };
    let _ = child.kill();
    let _ = child.wait();
    tracing::info!(works = result.works, took = ?result.took, reason = %result.reason, "KVM probe");
    Ok(result)
}

/// Whether KVM guests run here: [`probe_kvm_blocking`] on a blocking thread.
pub async fn probe_kvm(timeout: Duration) -> Result<bool, VboxError> {
    tokio::task::spawn_blocking(move || probe_kvm_blocking(timeout))
        .await
        .map_err(|e| VboxError::Config(format!("the KVM probe's thread failed: {e}")))?
        .map(|p| p.works)
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
    /// The settings ISO.
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
        drive.push(",format=qcow2,if=virtio,cache=writeback,discard=unmap");
        a.push("-drive".into());
        a.push(drive);
        if let Some(iso) = &self.cdrom {
            let mut cd = OsString::from("file=");
            cd.push(iso.as_os_str());
            cd.push(",format=raw,if=ide,media=cdrom,readonly=on");
            a.push("-drive".into());
            a.push(cd);
        }
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

/// A started QEMU process.
#[derive(Debug)]
pub struct QemuVm {
    /// The child.
    pub child: tokio::process::Child,
    /// Its PID.
    pub pid: u32,
    /// Its config.
    pub config: QemuConfig,
    /// QEMU's stdout/stderr file.
    pub log: PathBuf,
}

/// Start QEMU with `config`; `log` receives QEMU's own output. The child is
/// in its own process group (a terminal's Ctrl-C goes to opsbake, which
/// shuts the VM down through the journal).
pub fn spawn(config: QemuConfig, log: &Path) -> Result<QemuVm, VboxError> {
    let qemu = crate::exec::require(QEMU)?;
    let out = std::fs::File::create(log).map_err(io_err(log))?;
    let err = out.try_clone().map_err(io_err(log))?;
    let child = tokio::process::Command::new(qemu)
        .args(config.args())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(false)
        .spawn()
        .map_err(io_err(QEMU))?;
    let pid = child
        .id()
        .ok_or_else(|| VboxError::Config("QEMU exited at once".into()))?;
    Ok(QemuVm {
        child,
        pid,
        config,
        log: log.to_path_buf(),
    })
}

impl QemuVm {
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
    pub async fn wait_ready(&mut self, deadline: Duration) -> Result<(), VboxError> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().map_err(io_err(QEMU))? {
                return Err(self.exited_error(st.to_string()));
            }
            if self.config.qmp.exists() && qmp(&self.config.qmp, "query-status").await.is_ok() {
                return Ok(());
            }
            if start.elapsed() > deadline {
                return Err(VboxError::Qmp {
                    command: "query-status".into(),
                    socket: self.config.qmp.clone(),
                    message: format!("no answer after {deadline:?}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether the guest's kernel came up within `within`: the serial
    /// console shows `Freeing unused kernel` (the line before init starts).
    /// False when QEMU exits or the time runs out (a KVM guest that hangs).
    pub async fn kernel_booted(&mut self, within: Duration) -> Result<bool, VboxError> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.serial_contains("Freeing unused kernel") {
                return Ok(true);
            }
            if self.child.try_wait().map_err(io_err(QEMU))?.is_some() {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(self.serial_contains("Freeing unused kernel"))
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
    pub async fn shutdown(&mut self, timeout: Duration) -> Result<&'static str, VboxError> {
        if self.child.try_wait().map_err(io_err(QEMU))?.is_some() {
            return Ok("already stopped");
        }
        let serial_len = || {
            std::fs::metadata(&self.config.serial_log)
                .map(|m| m.len())
                .unwrap_or(0)
        };
        let before = serial_len();
        if let Err(e) = qmp(&self.config.qmp, "system_powerdown").await {
            tracing::warn!(pid = self.pid, error = %e, "system_powerdown failed");
        }
        if tokio::time::timeout(ACPI_GRACE.min(timeout), self.child.wait())
            .await
            .is_ok()
        {
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
        if reacting
            && tokio::time::timeout(timeout.saturating_sub(ACPI_GRACE), self.child.wait())
                .await
                .is_ok()
        {
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
            if let Err(e) = qmp_args(&self.config.qmp, "send-key", Some(&args)).await {
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
                if self.child.try_wait().map_err(io_err(QEMU))?.is_some() {
                    return Ok("sysrq");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        if tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .is_ok()
        {
            return Ok("sysrq");
        }
        tracing::warn!(pid = self.pid, "the guest did not power off: QMP quit");
        let _ = qmp(&self.config.qmp, "quit").await;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_ok()
        {
            return Ok("quit");
        }
        let _ = self.child.kill().await;
        Ok("killed")
    }
}

/// How long a guest has to show that it handles the ACPI power button.
pub const ACPI_GRACE: Duration = Duration::from_secs(15);

/// Run one QMP command without arguments and return the reply line.
pub async fn qmp(socket: &Path, command: &str) -> Result<String, VboxError> {
    qmp_args(socket, command, None).await
}

/// Run one QMP command (`execute` name, `arguments` as a JSON object) and
/// return the reply line.
pub async fn qmp_args(
    socket: &Path,
    command: &str,
    arguments: Option<&str>,
) -> Result<String, VboxError> {
    let qerr = |message: String| VboxError::Qmp {
        command: command.to_string(),
        socket: socket.to_path_buf(),
        message,
    };
    let exchange = async {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|e| qerr(e.to_string()))?;
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        let mut line = String::new();
        r.read_line(&mut line)
            .await
            .map_err(|e| qerr(e.to_string()))?;
        if !line.contains("\"QMP\"") {
            return Err(qerr(format!("unexpected greeting {line:?}")));
        }
        let mut reply = String::new();
        for (cmd, args) in [("qmp_capabilities", None), (command, arguments)] {
            let line = match args {
                Some(a) => format!("{{\"execute\":\"{cmd}\",\"arguments\":{a}}}\n"),
                None => format!("{{\"execute\":\"{cmd}\"}}\n"),
            };
            w.write_all(line.as_bytes())
                .await
                .map_err(|e| qerr(e.to_string()))?;
            loop {
                let mut l = String::new();
                let n = r.read_line(&mut l).await.map_err(|e| qerr(e.to_string()))?;
                if n == 0 {
                    // `quit` may close before replying
                    if cmd == "quit" {
                        return Ok(String::new());
                    }
                    return Err(qerr("connection closed".into()));
                }
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
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| qerr("no reply in 10 s".into()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> QemuConfig {
        QemuConfig {
            name: "b1".into(),
            disk: "/s/overlay.qcow2".into(),
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
        let joined: String = open
            .args()
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(!joined.contains("restrict=on"));
        assert!(joined.contains("-accel kvm"));
    }

    #[test]
    fn rtc_dates() {
        assert_eq!(rtc_datetime(0), "1970-01-01T00:00:00");
        assert_eq!(rtc_datetime(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(rtc_datetime(1_704_067_199), "2023-12-31T23:59:59");
        assert_eq!(rtc_datetime(1_735_689_600 + 3661), "2025-01-01T01:01:01");
    }

    #[test]
    fn kvm_verdict_is_kept_per_boot() {
        // nextest runs each test in its own process: the env var is ours
        let cache = tempfile::tempdir().unwrap();
        std::env::set_var("XDG_CACHE_HOME", cache.path());
        let d = tempfile::tempdir().unwrap();
        assert!(!kvm_known_broken(d.path()));
        std::fs::write(d.path().join(KVM_VERDICT_FILE), "another-boot\n").unwrap();
        assert!(!kvm_known_broken(d.path()));
        remember_kvm_broken(d.path());
        assert!(kvm_known_broken(d.path()));
        // another state dir on this host knows it through the cache dir
        let other = tempfile::tempdir().unwrap();
        assert!(kvm_known_broken(other.path()));
        assert!(cache
            .path()
            .join("opsbake")
            .join(KVM_VERDICT_FILE)
            .is_file());
    }

    #[test]
    fn probe_firmware_jumps_from_the_reset_vector_to_its_code() {
        let rom = probe_firmware();
        assert_eq!(rom.len(), 0x10000);
        assert_eq!(&rom[0xfff0..0xfff5], &[0xea, 0x00, 0x00, 0x00, 0xf0]);
        assert_eq!(&rom[..4], &[0x8c, 0xc8, 0x8e, 0xd8]);
        // the count and both lines, where the code points
        assert_eq!(&rom[0x0f..0x13], &PROBE_LOOP.to_le_bytes());
        let at = |i: usize| usize::from(rom[i]);
        assert!(rom[at(0x08)..].starts_with(PROBE_START.as_bytes()));
        assert!(rom[at(0x18)..].starts_with(PROBE_OK.as_bytes()));
        assert_eq!(PROBE_EXIT_CODE, 0x43);
    }

    /// The probe on this host: a verdict with a reason, and QEMU gone
    /// (killed and reaped) when it returns, hang or not.
    #[test]
    fn probe_kvm_gives_a_verdict_and_reaps_qemu() {
        let p = probe_kvm_blocking(KVM_PROBE_TIMEOUT).unwrap();
        eprintln!("KVM probe: works={} in {:?}: {}", p.works, p.took, p.reason);
        assert!(!p.reason.is_empty());
        assert!(
            p.took < KVM_PROBE_TIMEOUT + PROBE_LOOP_BUDGET + Duration::from_secs(5),
            "{p:?}"
        );
    }

    /// The probe under TCG (always available): the guest's lines arrive and
    /// it exits through isa-debug-exit, so the protocol works; under KVM
    /// only the speed differs.
    #[test]
    fn probe_guest_runs_under_tcg() {
        let Some(qemu) = crate::exec::which(QEMU) else {
            eprintln!("no {QEMU}: skipped");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let rom = dir.path().join("probe.rom");
        std::fs::write(&rom, probe_firmware()).unwrap();
        let out = std::process::Command::new(qemu)
            .args(["-accel", "tcg", "-nodefaults", "-no-user-config"])
            .args(["-display", "none", "-machine", "pc", "-m", "16"])
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
            .args(["-serial", "stdio", "-bios"])
            .arg(&rom)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(PROBE_EXIT_CODE), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{PROBE_START}\n{PROBE_OK}\n")
        );
    }
}
