//! Which accelerator a QEMU guest gets: KVM only when a short probe shows
//! it works (a firmware image of our own that must print two lines with a
//! real-mode count between them within a fraction of a second, see
//! [`probe_firmware`]), else TCG; the probe's result is cached per process
//! and a KVM guest that hangs is remembered per host boot.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::QEMU;
use crate::error::{io_err, VboxError};

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

/// The accelerator wanted: the `accel` option unless `auto`/unset, else
/// `OPSBAKE_QEMU_ACCEL` when set, else `auto`; `None` for `auto`.
fn wanted_accel(option: Option<&str>) -> Result<Option<Accel>, VboxError> {
    let (want, from) = match option {
        Some(o) if o != "auto" => (o.to_string(), "builds.vbox.options.accel"),
        _ => match std::env::var("OPSBAKE_QEMU_ACCEL").ok() {
            Some(v) if !v.is_empty() => (v, "OPSBAKE_QEMU_ACCEL"),
            _ => ("auto".to_string(), "builds.vbox.options.accel"),
        },
    };
    match want.as_str() {
        "tcg" => Ok(Some(Accel::Tcg)),
        "kvm" => Ok(Some(Accel::Kvm)),
        "auto" => Ok(None),
        other => Err(VboxError::Config(format!(
            "{from} `{other}`: expected auto, kvm or tcg"
        ))),
    }
}

/// The probed accelerator: TCG once [`KVM_BROKEN`] is set, else the
/// cached probe result.
fn probed(works: bool) -> Accel {
    if works && !KVM_BROKEN.load(std::sync::atomic::Ordering::SeqCst) {
        Accel::Kvm
    } else {
        Accel::Tcg
    }
}

/// The choice when no probe has to run: the option or `OPSBAKE_QEMU_ACCEL`,
/// TCG once [`KVM_BROKEN`] is set, or the cached probe; None: probe.
fn chosen_without_probe(option: Option<&str>) -> Result<Option<Accel>, VboxError> {
    if let Some(a) = wanted_accel(option)? {
        return Ok(Some(a));
    }
    if KVM_BROKEN.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(Some(Accel::Tcg));
    }
    Ok(KVM_WORKS.get().map(|w| probed(*w)))
}

/// The `accel` option: `auto` probes KVM (once per process, on a blocking
/// thread); `OPSBAKE_QEMU_ACCEL` overrides `auto`.
pub async fn choose_accel(option: Option<&str>) -> Result<Accel, VboxError> {
    if let Some(a) = chosen_without_probe(option)? {
        return Ok(a);
    }
    let works = probe_kvm(KVM_PROBE_TIMEOUT).await?;
    Ok(probed(*KVM_WORKS.get_or_init(|| works)))
}

/// [`choose_accel`] for synchronous callers (the test launcher): the same
/// choice and the same cached probe, run on the calling thread.
pub fn choose_accel_blocking(option: Option<&str>) -> Result<Accel, VboxError> {
    if let Some(a) = chosen_without_probe(option)? {
        return Ok(a);
    }
    let works = probe_kvm_blocking(KVM_PROBE_TIMEOUT)?.works;
    Ok(probed(*KVM_WORKS.get_or_init(|| works)))
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

/// The KVM probe's result, once per process (shared by [`choose_accel`]
/// and [`choose_accel_blocking`]).
static KVM_WORKS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

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

#[cfg(test)]
mod tests {
    use super::*;

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
