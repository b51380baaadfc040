//! A typed wrapper around `VBoxManage`: every call is one argument list,
//! built by a function of this module and run by one exec helper that puts
//! VBoxManage's output into the error.
//!
//! VirtualBox cannot be installed on the machines this crate is developed
//! and tested on: the argument lists are covered by unit tests, but the
//! wrapper has not been run against a real VirtualBox (docs/virtualbox.md).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::VboxError;
use crate::exec::Cmd;

/// One VBoxManage invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The arguments after `VBoxManage`.
    pub args: Vec<OsString>,
}

fn call<I, S>(args: I) -> Call
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    Call {
        args: args.into_iter().map(Into::into).collect(),
    }
}

fn p(path: &Path) -> OsString {
    path.as_os_str().to_os_string()
}

/// `import <ovf> --vsys 0 --vmname <name> --basefolder <dir>`, keeping the
/// disk as it is (`--options keepallmacs` keeps the NIC's MAC).
pub fn import(ovf: &Path, vm: &str, basefolder: &Path) -> Call {
    let mut a = vec![OsString::from("import"), p(ovf)];
    a.extend(["--vsys", "0", "--vmname", vm].map(OsString::from));
    a.push("--basefolder".into());
    a.push(p(basefolder));
    a.extend(["--options", "keepallmacs"].map(OsString::from));
    call(a)
}

/// `modifyvm`: CPUs, memory, NAT on NIC 1 with a port forward of
/// 127.0.0.1:<host_port> to the guest's 22, serial console to a file,
/// RTC in UTC.
pub fn modifyvm(vm: &str, cpus: u32, memory_mib: u64, host_port: u16, serial_log: &Path) -> Call {
    let mut a: Vec<OsString> = ["modifyvm", vm, "--cpus"].map(OsString::from).to_vec();
    a.push(cpus.to_string().into());
    a.push("--memory".into());
    a.push(memory_mib.to_string().into());
    a.extend(["--nic1", "nat", "--cableconnected1", "on", "--natpf1"].map(OsString::from));
    a.push(format!("ssh,tcp,127.0.0.1,{host_port},,22").into());
    a.extend(
        [
            "--rtcuseutc",
            "on",
            "--uart1",
            "0x3F8",
            "4",
            "--uartmode1",
            "file",
        ]
        .map(OsString::from),
    );
    a.push(p(serial_log));
    call(a)
}

/// The controller fix of the VirtualBox CPI: vSphere OVFs declare an LSI
/// Logic SCSI controller; the stemcell's disk goes on an IDE (PIIX4) one.
pub fn storagectl_ide(vm: &str) -> Call {
    call([
        "storagectl",
        vm,
        "--name",
        "IDE",
        "--add",
        "ide",
        "--controller",
        "PIIX4",
        "--bootable",
        "on",
    ])
}

/// Attach a disk or the settings ISO to controller `ctl`.
pub fn storageattach(
    vm: &str,
    ctl: &str,
    port: u32,
    device: u32,
    kind: &str,
    medium: &Path,
) -> Call {
    let mut a: Vec<OsString> = ["storageattach", vm, "--storagectl", ctl, "--port"]
        .map(OsString::from)
        .to_vec();
    a.push(port.to_string().into());
    a.push("--device".into());
    a.push(device.to_string().into());
    a.push("--type".into());
    a.push(kind.into());
    a.push("--medium".into());
    a.push(p(medium));
    call(a)
}

/// `modifyvm <vm> --biossystemtimeoffset <ms>`: the guest's clock starts
/// `offset_ms` away from the host's (VirtualBox's way to start it at
/// `SOURCE_DATE_EPOCH`).
pub fn bios_time_offset(vm: &str, offset_ms: i64) -> Call {
    call([
        "modifyvm".to_string(),
        vm.to_string(),
        "--biossystemtimeoffset".to_string(),
        offset_ms.to_string(),
    ])
}

/// `closemedium disk <path>`: forget a medium `clonemedium` registered
/// (the file itself is left to the caller).
pub fn close_medium(path: &Path) -> Call {
    let mut a: Vec<OsString> = ["closemedium", "disk"].map(OsString::from).to_vec();
    a.push(p(path));
    call(a)
}

/// `startvm <vm> --type headless`.
pub fn start_headless(vm: &str) -> Call {
    call(["startvm", vm, "--type", "headless"])
}

/// `controlvm <vm> acpipowerbutton`.
pub fn acpi_shutdown(vm: &str) -> Call {
    call(["controlvm", vm, "acpipowerbutton"])
}

/// `controlvm <vm> poweroff`.
pub fn poweroff(vm: &str) -> Call {
    call(["controlvm", vm, "poweroff"])
}

/// `showvminfo <vm> --machinereadable` (for `VMState="poweroff"`).
pub fn showvminfo(vm: &str) -> Call {
    call(["showvminfo", vm, "--machinereadable"])
}

/// `unregistervm <vm> --delete`.
pub fn unregister_delete(vm: &str) -> Call {
    call(["unregistervm", vm, "--delete"])
}

/// `clonemedium disk <src> <dst> --format RAW` (the disk, for the export).
pub fn clone_to_raw(src: &Path, dst: &Path) -> Call {
    let mut a: Vec<OsString> = ["clonemedium", "disk"].map(OsString::from).to_vec();
    a.push(p(src));
    a.push(p(dst));
    a.extend(["--format", "RAW"].map(OsString::from));
    call(a)
}

/// The `VMState` of `showvminfo --machinereadable` output.
pub fn vm_state(showvminfo: &str) -> Option<String> {
    showvminfo.lines().find_map(|l| {
        l.strip_prefix("VMState=")
            .map(|v| v.trim().trim_matches('"').to_string())
    })
}

/// One storage controller of `showvminfo --machinereadable`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Controller {
    /// Its name (`storagecontrollernameN`).
    pub name: String,
    /// Its chipset (`storagecontrollertypeN`: PIIX3, PIIX4, ICH6, LsiLogic, IntelAhci, ...).
    pub kind: String,
}

impl Controller {
    /// An IDE controller (the bus the root disk and the CD-ROM go on).
    pub fn is_ide(&self) -> bool {
        matches!(self.kind.as_str(), "PIIX3" | "PIIX4" | "ICH6")
    }
}

fn machine_value(line: &str) -> Option<(String, String)> {
    let (k, v) = line.split_once('=')?;
    let k = k.trim().trim_matches('"').to_string();
    let v = v.trim().trim_matches('"').to_string();
    Some((k, v))
}

/// The storage controllers of `showvminfo --machinereadable` output, in order.
pub fn controllers(showvminfo: &str) -> Vec<Controller> {
    let mut names = std::collections::BTreeMap::new();
    let mut kinds = std::collections::BTreeMap::new();
    for (k, v) in showvminfo.lines().filter_map(machine_value) {
        if let Some(i) = k.strip_prefix("storagecontrollername") {
            if let Ok(i) = i.parse::<u32>() {
                names.insert(i, v);
            }
        } else if let Some(i) = k.strip_prefix("storagecontrollertype") {
            if let Ok(i) = i.parse::<u32>() {
                kinds.insert(i, v);
            }
        }
    }
    names
        .into_iter()
        .map(|(i, name)| Controller {
            name,
            kind: kinds.remove(&i).unwrap_or_default(),
        })
        .collect()
}

/// What is attached at `<ctl>-<port>-<device>` (a path, `emptydrive` or `none`).
pub fn attachment(showvminfo: &str, ctl: &str, port: u32, device: u32) -> Option<String> {
    let key = format!("{ctl}-{port}-{device}");
    showvminfo
        .lines()
        .filter_map(machine_value)
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// Runs calls with one VBoxManage binary.
#[derive(Debug, Clone)]
pub struct VBoxManage {
    /// The binary.
    pub program: PathBuf,
}

impl VBoxManage {
    /// `VBoxManage` from PATH.
    pub fn find() -> Option<VBoxManage> {
        crate::exec::which("VBoxManage").map(|program| VBoxManage { program })
    }

    /// Run one call; the error holds VBoxManage's output.
    pub async fn run(&self, c: &Call) -> Result<String, VboxError> {
        Cmd::new(self.program.as_os_str())
            .args(c.args.iter().cloned())
            .run()
            .await
            .map_err(VboxError::from)
    }

    /// ACPI shutdown, wait up to `timeout` for `poweroff`, then power off.
    pub async fn shutdown(&self, vm: &str, timeout: Duration) -> Result<&'static str, VboxError> {
        self.run(&acpi_shutdown(vm)).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            let info = self.run(&showvminfo(vm)).await?;
            if vm_state(&info).as_deref() == Some("poweroff") {
                return Ok("acpi");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        self.run(&poweroff(vm)).await?;
        Ok("poweroff")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(c: &Call) -> Vec<String> {
        c.args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn import_args() {
        assert_eq!(
            s(&import(
                Path::new("/s/image.ovf"),
                "opsbake-b1",
                Path::new("/s/vms")
            )),
            [
                "import",
                "/s/image.ovf",
                "--vsys",
                "0",
                "--vmname",
                "opsbake-b1",
                "--basefolder",
                "/s/vms",
                "--options",
                "keepallmacs"
            ]
        );
    }

    #[test]
    fn modifyvm_args() {
        assert_eq!(
            s(&modifyvm("vm", 2, 2048, 40022, Path::new("/s/serial.log"))),
            [
                "modifyvm",
                "vm",
                "--cpus",
                "2",
                "--memory",
                "2048",
                "--nic1",
                "nat",
                "--cableconnected1",
                "on",
                "--natpf1",
                "ssh,tcp,127.0.0.1,40022,,22",
                "--rtcuseutc",
                "on",
                "--uart1",
                "0x3F8",
                "4",
                "--uartmode1",
                "file",
                "/s/serial.log"
            ]
        );
    }

    #[test]
    fn storage_args() {
        assert_eq!(
            s(&storagectl_ide("vm")),
            [
                "storagectl",
                "vm",
                "--name",
                "IDE",
                "--add",
                "ide",
                "--controller",
                "PIIX4",
                "--bootable",
                "on"
            ]
        );
        assert_eq!(
            s(&storageattach(
                "vm",
                "IDE",
                1,
                0,
                "dvddrive",
                Path::new("/s/env.iso")
            )),
            [
                "storageattach",
                "vm",
                "--storagectl",
                "IDE",
                "--port",
                "1",
                "--device",
                "0",
                "--type",
                "dvddrive",
                "--medium",
                "/s/env.iso"
            ]
        );
    }

    #[test]
    fn lifecycle_args() {
        assert_eq!(
            s(&start_headless("vm")),
            ["startvm", "vm", "--type", "headless"]
        );
        assert_eq!(
            s(&acpi_shutdown("vm")),
            ["controlvm", "vm", "acpipowerbutton"]
        );
        assert_eq!(s(&poweroff("vm")), ["controlvm", "vm", "poweroff"]);
        assert_eq!(
            s(&unregister_delete("vm")),
            ["unregistervm", "vm", "--delete"]
        );
        assert_eq!(
            s(&clone_to_raw(Path::new("/a.vmdk"), Path::new("/b.raw"))),
            [
                "clonemedium",
                "disk",
                "/a.vmdk",
                "/b.raw",
                "--format",
                "RAW"
            ]
        );
        assert_eq!(
            s(&showvminfo("vm")),
            ["showvminfo", "vm", "--machinereadable"]
        );
    }

    #[test]
    fn time_and_medium_args() {
        assert_eq!(
            s(&bios_time_offset("vm", -86_400_000)),
            ["modifyvm", "vm", "--biossystemtimeoffset", "-86400000"]
        );
        assert_eq!(
            s(&close_medium(Path::new("/s/disk.raw"))),
            ["closemedium", "disk", "/s/disk.raw"]
        );
    }

    #[test]
    fn parses_storage() {
        // the shape of VirtualBox 7's `showvminfo --machinereadable`
        let info = "name=\"vm\"\nstoragecontrollername0=\"SCSI\"\nstoragecontrollertype0=\"LsiLogic\"\n\
                    storagecontrollername1=\"IDE\"\nstoragecontrollertype1=\"PIIX4\"\n\
                    \"IDE-0-0\"=\"/vms/vm/disk1.vmdk\"\n\"IDE-ImageUUID-0-0\"=\"x\"\n\"IDE-1-0\"=\"emptydrive\"\n";
        let c = controllers(info);
        assert_eq!(c.len(), 2);
        assert!(!c[0].is_ide());
        assert_eq!(c[1].name, "IDE");
        assert!(c[1].is_ide());
        assert_eq!(
            attachment(info, "IDE", 0, 0).as_deref(),
            Some("/vms/vm/disk1.vmdk")
        );
        assert_eq!(attachment(info, "IDE", 1, 0).as_deref(), Some("emptydrive"));
        assert_eq!(attachment(info, "SCSI", 0, 0), None);
    }

    #[test]
    fn parses_vm_state() {
        assert_eq!(
            vm_state("name=\"vm\"\nVMState=\"poweroff\"\nVMStateChangeTime=\"x\"\n").as_deref(),
            Some("poweroff")
        );
        assert_eq!(vm_state("name=\"vm\"\n"), None);
    }

    #[tokio::test]
    async fn errors_carry_the_output() {
        // a stand-in program that fails the way VBoxManage does
        let v = VBoxManage {
            program: PathBuf::from("sh"),
        };
        let e = v
            .run(&call([
                "-c",
                "echo 'VBoxManage: error: Could not find a registered machine' >&2; exit 1",
            ]))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("Could not find a registered machine"), "{e}");
    }
}
