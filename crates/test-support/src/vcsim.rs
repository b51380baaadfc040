//! vcsim (govmomi's vSphere API simulator) and govc: a third-party reader of
//! the OVAs opsbake writes.
//!
//! The binaries come from `OPSBAKE_VCSIM` and `OPSBAKE_GOVC` (set by
//! `.ci/setup.d/50-vcsim.sh`, which builds govmomi 0.24 from Debian's source
//! package) or `PATH`. [`Vcsim::start`] runs `vcsim -l 127.0.0.1:0` with its
//! own `TMPDIR`, reads the `export GOVC_URL=...` line it prints once it
//! listens, and polls `govc about` until it answers (no sleeps standing in for
//! readiness). The simulator is stopped by its PID on [`Vcsim::stop`] or drop.
//!
//! [`Vcsim::import_ova`] runs `govc import.ova` into vcsim's default
//! inventory (resource pool [`RESOURCE_POOL`] of cluster `DC0_C0`, folder
//! [`FOLDER`]), then reads the new VM back with `govc vm.info -json` and
//! `govc device.info -json` and checks it against what the OVF descriptor
//! inside the OVA declares (read here with a small independent parser, not
//! opsbake's): vCPUs, memory, each disk's capacity and each NIC's type.
//!
//! What vcsim 0.24 does and does not check (found by running it):
//! - `vssd:VirtualSystemType` becomes the VM's hardware version and must be
//!   `vmx-<number>`; anything else (VirtualBox's `virtualbox-2.2`) is refused
//!   with `NotSupported` and the log line `unsupported hardware version`.
//!   Real vSphere refuses unknown hardware families too.
//! - `ovf:capacity` without `ovf:capacityAllocationUnits` is read as KiB, not
//!   bytes as the OVF specification says (`ovfDiskCapacity` in
//!   `simulator/ovf_manager.go`), so such a disk shows 1024 times its size;
//!   [`vcsim_capacity_kb`] reproduces that reading for the comparison.
//! - govc does not read the `.mf`: an OVA with a wrong digest imports.
//! - The disk bytes are uploaded and discarded; only the descriptor counts.
//! - ProductSection properties show in `govc import.spec` as
//!   `PropertyMapping`; values given at import land in the VM's ExtraConfig
//!   (real vSphere puts them in the vApp config).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// vcsim's default resource pool for imports (cluster `DC0_C0`).
pub const RESOURCE_POOL: &str = "/DC0/host/DC0_C0/Resources";
/// vcsim's default VM folder.
pub const FOLDER: &str = "/DC0/vm";
/// How long one govc command may take.
pub const GOVC_TIMEOUT: Duration = Duration::from_secs(300);

/// Errors starting vcsim or reading an import back.
#[derive(Debug, thiserror::Error)]
pub enum VcsimError {
    /// A binary is missing.
    #[error("{binary} not found ({looked}): run .ci/setup.d/50-vcsim.sh and export {var}=<path> (scripts/setup.sh writes it to target/ci-env), or set OPSBAKE_SKIP_PEERS=1 to skip peer tests")]
    Missing {
        /// `vcsim` or `govc`.
        binary: &'static str,
        /// The variable that names it.
        var: &'static str,
        /// Where we looked.
        looked: String,
    },
    /// A file or process operation failed.
    #[error("vcsim {what}: {source}")]
    Io {
        /// What was done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// vcsim did not become ready.
    #[error("vcsim (pid {pid}) not ready after {after:?}: {why}; log {log}:\n{tail}")]
    NotReady {
        /// Its PID.
        pid: u32,
        /// The deadline.
        after: Duration,
        /// What was missing.
        why: String,
        /// The log file.
        log: PathBuf,
        /// The end of the log.
        tail: String,
    },
    /// A govc command failed or timed out.
    #[error("govc {args} failed ({status}):\n{stderr}\nvcsim log (end):\n{vcsim_log}")]
    Govc {
        /// The arguments.
        args: String,
        /// Exit status or timeout.
        status: String,
        /// Its stderr (and stdout when stderr is empty).
        stderr: String,
        /// The end of vcsim's log (it names the reason of faults).
        vcsim_log: String,
    },
    /// govc printed something this module cannot read.
    #[error("govc {args}: cannot read its output: {message}")]
    Output {
        /// The arguments.
        args: String,
        /// What is wrong.
        message: String,
    },
    /// The OVA or its descriptor cannot be read.
    #[error("OVA {path}: {message}")]
    Ova {
        /// The OVA.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The imported VM differs from what the OVF declares.
    #[error("VM {vm} imported from {ova}: {what}: the OVF declares {declared}, vcsim has {found}")]
    Mismatch {
        /// The VM name.
        vm: String,
        /// The OVA.
        ova: PathBuf,
        /// What differs.
        what: String,
        /// The declared value.
        declared: String,
        /// The value vcsim reports.
        found: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VcsimError {
    let what = what.into();
    move |source| VcsimError::Io { what, source }
}

/// True when peer tests may be skipped (`OPSBAKE_SKIP_PEERS=1`).
pub fn skip_peers() -> bool {
    std::env::var("OPSBAKE_SKIP_PEERS").is_ok_and(|v| v == "1")
}

fn find_binary(binary: &'static str, var: &'static str) -> Result<PathBuf, VcsimError> {
    if let Some(p) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(VcsimError::Missing {
            binary,
            var,
            looked: format!("{var}={}", p.display()),
        });
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let c = d.join(binary);
            if c.is_file() {
                return Ok(c);
            }
        }
    }
    Err(VcsimError::Missing {
        binary,
        var,
        looked: format!("{var} unset, not on PATH"),
    })
}

/// The vcsim binary, or why it is missing.
pub fn vcsim_binary() -> Result<PathBuf, VcsimError> {
    find_binary("vcsim", "OPSBAKE_VCSIM")
}

/// The govc binary, or why it is missing.
pub fn govc_binary() -> Result<PathBuf, VcsimError> {
    find_binary("govc", "OPSBAKE_GOVC")
}

/// What one govc command printed.
#[derive(Debug, Clone)]
pub struct GovcOutput {
    /// Exit code (`None`: killed by a signal or the timeout).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl GovcOutput {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// What an OVF descriptor declares (the parts checked after an import).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OvfDeclared {
    /// `vssd:VirtualSystemType`.
    pub hardware_family: Option<String>,
    /// vCPUs (ResourceType 3).
    pub cpus: Option<u32>,
    /// Memory in MiB (ResourceType 4, with its AllocationUnits).
    pub memory_mib: Option<u64>,
    /// Disks in hardware-item order (ResourceType 17).
    pub disks: Vec<DeclaredDisk>,
    /// NICs in hardware-item order (ResourceType 10).
    pub nics: Vec<DeclaredNic>,
    /// CD/DVD drives (ResourceType 15).
    pub cdroms: usize,
    /// ProductSection property keys.
    pub properties: Vec<String>,
}

/// A disk of the DiskSection, as a hardware item uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredDisk {
    /// `ovf:diskId`.
    pub disk_id: String,
    /// `ovf:capacity` as written.
    pub capacity: u64,
    /// `ovf:capacityAllocationUnits`, when given.
    pub units: Option<String>,
    /// The capacity in bytes as the OVF specification reads it.
    pub capacity_bytes: Option<u64>,
}

/// A NIC hardware item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredNic {
    /// `rasd:ResourceSubType` (`E1000`, `VmxNet3`, ...).
    pub subtype: Option<String>,
    /// `rasd:Connection` (the OVF network name).
    pub connection: Option<String>,
}

/// A VM as govc reads it back after the import.
#[derive(Debug, Clone)]
pub struct ImportedVm {
    /// The name given to the import.
    pub name: String,
    /// Its inventory path.
    pub path: String,
    /// vCPUs.
    pub cpus: u32,
    /// Memory MiB.
    pub memory_mib: u64,
    /// Guest id (`otherGuest` unless the OVF gives a `vmw:osType`).
    pub guest_id: String,
    /// Hardware version (`vmx-NN`, from the OVF's VirtualSystemType).
    pub hardware_version: String,
    /// Disks, in device-key order.
    pub disks: Vec<VmDisk>,
    /// NICs, in device-key order.
    pub nics: Vec<VmNic>,
    /// CD/DVD drives.
    pub cdroms: usize,
    /// ExtraConfig (vcsim stores ProductSection property values given at
    /// import here).
    pub extra_config: BTreeMap<String, String>,
    /// What the OVF declares.
    pub declared: OvfDeclared,
    /// govc's output of the import.
    pub import_output: String,
}

/// A virtual disk of the imported VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDisk {
    /// Its label (the OVF item's ElementName).
    pub label: String,
    /// `CapacityInKB`.
    pub capacity_kb: i64,
    /// The datastore path of its backing file.
    pub file: String,
}

/// A network adapter of the imported VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmNic {
    /// Device type (`VirtualE1000`, `VirtualVmxnet3`, ...).
    pub kind: String,
    /// The network it is connected to.
    pub network: String,
    /// Its MAC address.
    pub mac: String,
}

/// Options of an import.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// ProductSection property values (`PropertyMapping`).
    pub properties: Vec<(String, String)>,
}

/// A running vcsim.
pub struct Vcsim {
    child: Option<Child>,
    pid: u32,
    url: String,
    govc: PathBuf,
    dir: tempfile::TempDir,
    seq: AtomicU64,
}

impl std::fmt::Debug for Vcsim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vcsim")
            .field("pid", &self.pid)
            .field("url", &self.url)
            .field("dir", &self.dir.path())
            .finish()
    }
}

fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// The URL in vcsim's `export GOVC_URL=... GOVC_SIM_PID=...` line.
pub fn parse_govc_url(stdout: &str) -> Option<String> {
    stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("export "))
        .flat_map(str::split_whitespace)
        .find_map(|kv| kv.strip_prefix("GOVC_URL="))
        .map(|u| u.trim_matches(|c| c == '"' || c == '\'').to_string())
}

/// Only loopback: the safety rules allow nothing else.
fn url_is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host_port = rest.split('/').next().unwrap_or("");
    let host_port = host_port.rsplit_once('@').map_or(host_port, |(_, h)| h);
    host_port.starts_with("127.") || host_port.starts_with("[::1]")
}

impl Vcsim {
    /// Start vcsim on 127.0.0.1 with a free port, in its own temporary
    /// directory, and wait (30 s deadline) until `govc about` answers.
    pub fn start() -> Result<Vcsim, VcsimError> {
        Vcsim::start_with(&[])
    }

    /// [`Vcsim::start`] with extra vcsim arguments (`-username u -password
    /// p` makes it check the login: by default it accepts any non-empty
    /// user and password).
    pub fn start_with(extra: &[&str]) -> Result<Vcsim, VcsimError> {
        let bin = vcsim_binary()?;
        let govc = govc_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("opsbake-vcsim-")
            .tempdir()
            .map_err(io("temporary directory"))?;
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp).map_err(io(format!("create {}", tmp.display())))?;
        std::fs::create_dir_all(dir.path().join("govmomi"))
            .map_err(io("create the govmomi home"))?;
        let out = dir.path().join("vcsim.out");
        let log = dir.path().join("vcsim.log");
        let outf = std::fs::File::create(&out).map_err(io(format!("create {}", out.display())))?;
        let logf = std::fs::File::create(&log).map_err(io(format!("create {}", log.display())))?;
        let child = Command::new(&bin)
            .args(["-l", "127.0.0.1:0"])
            .args(extra)
            .env("TMPDIR", &tmp)
            .stdin(Stdio::null())
            .stdout(Stdio::from(outf))
            .stderr(Stdio::from(logf))
            .spawn()
            .map_err(io(format!("spawn {}", bin.display())))?;
        let pid = child.id();
        tracing::debug!(pid, "vcsim started");
        let mut v = Vcsim {
            child: Some(child),
            pid,
            url: String::new(),
            govc,
            dir,
            seq: AtomicU64::new(0),
        };
        v.wait_ready(Duration::from_secs(30))?;
        Ok(v)
    }

    fn wait_ready(&mut self, after: Duration) -> Result<(), VcsimError> {
        let deadline = Instant::now() + after;
        let mut delay = Duration::from_millis(10);
        let out = self.dir.path().join("vcsim.out");
        let why = loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    self.child = None;
                    break format!("vcsim exited with {st}");
                }
            }
            if self.url.is_empty() {
                let text = std::fs::read_to_string(&out).unwrap_or_default();
                if let Some(u) = parse_govc_url(&text) {
                    if !url_is_loopback(&u) {
                        self.stop();
                        break format!("vcsim printed a URL that is not on 127.0.0.1: {u}");
                    }
                    self.url = u;
                }
            }
            if !self.url.is_empty() {
                if let Ok(o) = self.govc_output(["about"], Duration::from_secs(10)) {
                    if o.success() {
                        return Ok(());
                    }
                }
            }
            if Instant::now() >= deadline {
                break if self.url.is_empty() {
                    "no `export GOVC_URL=` line on its stdout".to_string()
                } else {
                    format!("`govc about` against {} does not answer", self.url)
                };
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(250));
        };
        let log = self.log_path();
        Err(VcsimError::NotReady {
            pid: self.pid,
            after,
            why,
            tail: tail(&self.log(), 20),
            log,
        })
    }

    /// `GOVC_URL` (https on 127.0.0.1, user:pass, self-signed TLS).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// vcsim's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|_| self.pid)
    }

    /// Its working directory (its `TMPDIR` is `tmp/` inside).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// vcsim's log file (its stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("vcsim.log")
    }

    /// vcsim's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The govc binary used.
    pub fn govc_path(&self) -> &Path {
        &self.govc
    }

    fn govc_output<I, S>(&self, args: I, timeout: Duration) -> Result<GovcOutput, VcsimError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let out_path = self.dir.path().join(format!("govc-{n}.out"));
        let err_path = self.dir.path().join(format!("govc-{n}.err"));
        let outf = std::fs::File::create(&out_path)
            .map_err(io(format!("create {}", out_path.display())))?;
        let errf = std::fs::File::create(&err_path)
            .map_err(io(format!("create {}", err_path.display())))?;
        let mut cmd = Command::new(&self.govc);
        cmd.args(args);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("GOVC_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("GOVC_URL", &self.url)
            .env("GOVC_INSECURE", "1")
            .env("GOVC_PERSIST_SESSION", "false")
            .env("GOVMOMI_HOME", self.dir.path().join("govmomi"))
            .env("TMPDIR", self.dir.path().join("tmp"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(outf))
            .stderr(Stdio::from(errf));
        let mut child = cmd
            .spawn()
            .map_err(io(format!("spawn {}", self.govc.display())))?;
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(5);
        let code = loop {
            match child.try_wait().map_err(io("wait for govc"))? {
                Some(st) => break st.code(),
                None if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                None => {
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_millis(100));
                }
            }
        };
        let read = |p: &Path| {
            let mut s = String::new();
            std::fs::File::open(p)
                .and_then(|mut f| f.read_to_string(&mut s))
                .map(|_| s)
                .map_err(io(format!("read {}", p.display())))
        };
        let stdout = read(&out_path)?;
        let stderr = read(&err_path)?;
        let _ = std::fs::remove_file(&out_path);
        let _ = std::fs::remove_file(&err_path);
        Ok(GovcOutput {
            code,
            stdout,
            stderr,
        })
    }

    /// Run govc against this vcsim (GOVC_URL, GOVC_INSECURE=1, no session
    /// files outside the temporary directory) and capture its output,
    /// whatever its exit status.
    pub fn govc_raw<I, S>(&self, args: I) -> Result<GovcOutput, VcsimError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.govc_output(args, GOVC_TIMEOUT)
    }

    /// Run govc; an error (with govc's stderr and the end of vcsim's log)
    /// unless it exits 0.
    pub fn govc<I, S>(&self, args: I) -> Result<GovcOutput, VcsimError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<std::ffi::OsString> = args
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        let o = self.govc_output(&args, GOVC_TIMEOUT)?;
        if o.success() {
            return Ok(o);
        }
        let stderr = if o.stderr.trim().is_empty() {
            o.stdout.clone()
        } else {
            o.stderr.clone()
        };
        Err(VcsimError::Govc {
            args: args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" "),
            status: o
                .code
                .map_or("killed or timed out".into(), |c| format!("exit {c}")),
            stderr: last_line_of_progress(&stderr),
            vcsim_log: tail(&self.log(), 10),
        })
    }

    /// `govc import.spec OVA`: the import options govc derives from the
    /// descriptor (PropertyMapping, NetworkMapping, ...).
    pub fn import_spec(&self, ova: &Path) -> Result<serde_json::Value, VcsimError> {
        let o = self.govc([OsStr::new("import.spec"), ova.as_os_str()])?;
        serde_json::from_str(&o.stdout).map_err(|e| VcsimError::Output {
            args: format!("import.spec {}", ova.display()),
            message: e.to_string(),
        })
    }

    /// `govc import.ova` into [`RESOURCE_POOL`] / [`FOLDER`], then check the
    /// VM against the descriptor: see [`Vcsim::import_ova_with`].
    pub fn import_ova(&self, ova: &Path, name: &str) -> Result<ImportedVm, VcsimError> {
        self.import_ova_with(ova, name, &ImportOptions::default())
    }

    /// `govc import.ova -pool=... -folder=... -name=NAME [-options=...] OVA`,
    /// then `govc vm.info -json` and `govc device.info -json`: the VM must
    /// have the vCPUs, memory, disks (count and capacity) and NICs (count and
    /// type) the OVF declares, else [`VcsimError::Mismatch`].
    pub fn import_ova_with(
        &self,
        ova: &Path,
        name: &str,
        opts: &ImportOptions,
    ) -> Result<ImportedVm, VcsimError> {
        let declared = read_ova_descriptor(ova).and_then(|xml| {
            declared_from_ovf(&xml).map_err(|message| VcsimError::Ova {
                path: ova.to_path_buf(),
                message,
            })
        })?;
        let mut args: Vec<std::ffi::OsString> = vec![
            "import.ova".into(),
            format!("-pool={RESOURCE_POOL}").into(),
            format!("-folder={FOLDER}").into(),
            format!("-name={name}").into(),
        ];
        if !opts.properties.is_empty() {
            let mut spec = self.import_spec(ova)?;
            spec["PropertyMapping"] = serde_json::Value::Array(
                opts.properties
                    .iter()
                    .map(|(k, v)| serde_json::json!({ "Key": k, "Value": v }))
                    .collect(),
            );
            let n = self.seq.fetch_add(1, Ordering::Relaxed);
            let path = self.dir.path().join(format!("import-options-{n}.json"));
            std::fs::write(&path, spec.to_string())
                .map_err(io(format!("write {}", path.display())))?;
            let mut a = std::ffi::OsString::from("-options=");
            a.push(&path);
            args.push(a);
        }
        args.push(ova.as_os_str().to_os_string());
        let imported = self.govc(&args)?;
        let import_output =
            last_line_of_progress(&format!("{}{}", imported.stdout, imported.stderr));
        let path = format!("{FOLDER}/{name}");
        let mut vm = self.vm_info(&path)?;
        vm.name = name.to_string();
        vm.declared = declared;
        vm.import_output = import_output;
        check_against_ovf(&vm, ova)?;
        Ok(vm)
    }

    /// Read a VM back (`govc vm.info -json` and `govc device.info -json`);
    /// `declared` stays empty.
    pub fn vm_info(&self, path: &str) -> Result<ImportedVm, VcsimError> {
        let info = self.govc(["vm.info", "-json", path])?;
        let v: serde_json::Value =
            serde_json::from_str(&info.stdout).map_err(|e| VcsimError::Output {
                args: format!("vm.info -json {path}"),
                message: e.to_string(),
            })?;
        let bad = |m: &str| VcsimError::Output {
            args: format!("vm.info -json {path}"),
            message: m.to_string(),
        };
        let vm = v["VirtualMachines"]
            .as_array()
            .and_then(|a| a.first())
            .ok_or_else(|| bad("no VM by that path"))?;
        let config = &vm["Config"];
        let hw = &config["Hardware"];
        let cpus = hw["NumCPU"]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| bad("no Config.Hardware.NumCPU"))?;
        let memory_mib = hw["MemoryMB"]
            .as_u64()
            .ok_or_else(|| bad("no Config.Hardware.MemoryMB"))?;
        let mut extra_config = BTreeMap::new();
        for kv in config["ExtraConfig"].as_array().into_iter().flatten() {
            if let Some(k) = kv["Key"].as_str() {
                let v = match &kv["Value"] {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                extra_config.insert(k.to_string(), v);
            }
        }
        let dev = self.govc(["device.info", "-json", "-vm", path])?;
        let d: serde_json::Value =
            serde_json::from_str(&dev.stdout).map_err(|e| VcsimError::Output {
                args: format!("device.info -json -vm {path}"),
                message: e.to_string(),
            })?;
        let mut devices: Vec<&serde_json::Value> =
            d["Devices"].as_array().into_iter().flatten().collect();
        devices.sort_by_key(|x| x["Key"].as_i64().unwrap_or(0));
        let mut disks = Vec::new();
        let mut nics = Vec::new();
        let mut cdroms = 0;
        for x in devices {
            let kind = x["Type"].as_str().unwrap_or_default();
            if kind == "VirtualDisk" {
                disks.push(VmDisk {
                    label: x["DeviceInfo"]["Label"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    capacity_kb: x["CapacityInKB"].as_i64().unwrap_or(-1),
                    file: x["Backing"]["FileName"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                });
            } else if kind == "VirtualCdrom" {
                cdroms += 1;
            } else if x.get("MacAddress").is_some() {
                nics.push(VmNic {
                    kind: kind.to_string(),
                    network: x["DeviceInfo"]["Summary"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    mac: x["MacAddress"].as_str().unwrap_or_default().to_string(),
                });
            }
        }
        Ok(ImportedVm {
            name: config["Name"].as_str().unwrap_or_default().to_string(),
            path: path.to_string(),
            cpus,
            memory_mib,
            guest_id: config["GuestId"].as_str().unwrap_or_default().to_string(),
            hardware_version: config["Version"].as_str().unwrap_or_default().to_string(),
            disks,
            nics,
            cdroms,
            extra_config,
            declared: OvfDeclared::default(),
            import_output: String::new(),
        })
    }

    /// The SHA-1 thumbprint of vcsim's certificate as govc prints it
    /// (`govc about.cert -k -thumbprint`: `host:port AA:BB:...`); builds pin
    /// it instead of `insecure`.
    pub fn thumbprint(&self) -> Result<String, VcsimError> {
        let args = ["about.cert", "-k", "-thumbprint"];
        let o = self.govc(args)?;
        o.stdout
            .split_whitespace()
            .last()
            .filter(|t| t.len() == 59 && t.contains(':'))
            .map(str::to_string)
            .ok_or_else(|| VcsimError::Output {
                args: args.join(" "),
                message: format!("no thumbprint in {:?}", o.stdout),
            })
    }

    /// The URL without `user:pass@` (what a template's `url` holds).
    pub fn sdk_url(&self) -> String {
        match self.url.split_once("://") {
            Some((scheme, rest)) => {
                let rest = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
                format!("{scheme}://{rest}")
            }
            None => self.url.clone(),
        }
    }

    /// Inventory paths of every VM and template (`govc find / -type m`).
    pub fn vm_paths(&self) -> Result<Vec<String>, VcsimError> {
        Ok(self
            .govc(["find", "/", "-type", "m"])?
            .stdout
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// What VMware Tools would report: `guest.ipAddress` of a VM, through
    /// vcsim's `SET.guest.ipAddress` ExtraConfig.
    pub fn set_guest_ip(&self, vm_path: &str, ip: &str) -> Result<(), VcsimError> {
        self.govc([
            "vm.change",
            "-vm",
            vm_path,
            "-e",
            &format!("SET.guest.ipAddress={ip}"),
        ])
        .map(|_| ())
    }

    /// Files named `name` anywhere on vcsim's datastores (their directories
    /// live in its `TMPDIR`), found on disk.
    pub fn datastore_files_named(&self, name: &str) -> Vec<PathBuf> {
        fn walk(d: &Path, name: &str, out: &mut Vec<PathBuf>) {
            let Ok(rd) = std::fs::read_dir(d) else { return };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, name, out);
                } else if p.file_name().is_some_and(|n| n == name) {
                    out.push(p);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.dir.path().join("tmp"), name, &mut out);
        out
    }

    /// Stop vcsim by its PID (SIGTERM, then SIGKILL after 5 s).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            crate::process::terminate(&mut c, Duration::from_secs(5));
        }
    }
}

impl Drop for Vcsim {
    fn drop(&mut self) {
        self.stop();
    }
}

/// govc's progress lines end in `\r`/ANSI erase codes: keep what follows the
/// last of them on each line.
fn last_line_of_progress(text: &str) -> String {
    text.lines()
        .map(|l| {
            let l = l.rsplit('\r').next().unwrap_or(l);
            l.rsplit("\u{1b}[K").next().unwrap_or(l).to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `.ovf` member of an OVA (the first one).
pub fn read_ova_descriptor(ova: &Path) -> Result<String, VcsimError> {
    let err = |message: String| VcsimError::Ova {
        path: ova.to_path_buf(),
        message,
    };
    let f = std::fs::File::open(ova).map_err(|e| err(e.to_string()))?;
    let mut a = tar::Archive::new(f);
    for entry in a.entries().map_err(|e| err(e.to_string()))? {
        let mut entry = entry.map_err(|e| err(e.to_string()))?;
        let name = entry
            .path()
            .map_err(|e| err(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".ovf") {
            let mut s = String::new();
            entry
                .read_to_string(&mut s)
                .map_err(|e| err(format!("{name}: {e}")))?;
            return Ok(s);
        }
    }
    Err(err("no .ovf member".into()))
}

/// A parsed XML element, names without their namespace prefix.
#[derive(Debug, Default)]
struct Node {
    name: String,
    attrs: Vec<(String, String)>,
    children: Vec<Node>,
    text: String,
}

impl Node {
    fn attr(&self, local: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == local)
            .map(|(_, v)| v.as_str())
    }

    fn child(&self, local: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == local)
    }

    fn children<'a>(&'a self, local: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.children.iter().filter(move |c| c.name == local)
    }

    fn child_text(&self, local: &str) -> Option<String> {
        self.child(local).map(|c| c.text.trim().to_string())
    }

    fn descendants<'a>(&'a self, local: &'a str, out: &mut Vec<&'a Node>) {
        for c in &self.children {
            if c.name == local {
                out.push(c);
            }
            c.descendants(local, out);
        }
    }
}

fn local(name: &[u8]) -> String {
    let s = String::from_utf8_lossy(name);
    s.rsplit(':').next().unwrap_or(&s).to_string()
}

fn parse_xml(text: &str) -> Result<Node, String> {
    use quick_xml::events::Event;
    let mut r = quick_xml::Reader::from_str(text);
    let mut stack: Vec<Node> = vec![Node::default()];
    let start = |s: &quick_xml::events::BytesStart<'_>| -> Result<Node, String> {
        let mut n = Node {
            name: local(s.name().as_ref()),
            ..Node::default()
        };
        for a in s.attributes() {
            let a = a.map_err(|e| e.to_string())?;
            let v = a.unescape_value().map_err(|e| e.to_string())?;
            n.attrs.push((local(a.key.as_ref()), v.into_owned()));
        }
        Ok(n)
    };
    loop {
        match r.read_event().map_err(|e| e.to_string())? {
            Event::Start(s) => stack.push(start(&s)?),
            Event::Empty(s) => {
                let n = start(&s)?;
                if let Some(top) = stack.last_mut() {
                    top.children.push(n);
                }
            }
            Event::End(_) => {
                let n = stack.pop().ok_or("unbalanced end tag")?;
                match stack.last_mut() {
                    Some(top) => top.children.push(n),
                    None => return Err("unbalanced end tag".into()),
                }
            }
            Event::Text(t) => {
                let t = t.unescape().map_err(|e| e.to_string())?;
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&t);
                }
            }
            Event::CData(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&String::from_utf8_lossy(&t));
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if stack.len() != 1 {
        return Err("an element is never closed".into());
    }
    stack
        .pop()
        .and_then(|d| d.children.into_iter().next())
        .ok_or_else(|| "no root element".into())
}

/// `byte * 2^20` and the like: the multiplier in bytes.
pub fn allocation_units(units: &str) -> Option<u64> {
    let u: String = units.chars().filter(|c| !c.is_whitespace()).collect();
    let rest = u.strip_prefix("byte")?;
    if rest.is_empty() {
        return Some(1);
    }
    let f = rest.strip_prefix('*')?;
    match f.split_once('^') {
        Some((b, e)) => b.parse::<u64>().ok()?.checked_pow(e.parse().ok()?),
        None => f.parse().ok(),
    }
}

/// The `CapacityInKB` vcsim 0.24 gives a disk (`ovfDiskCapacity`): the
/// number without units as is (a simulator bug: the OVF default unit is the
/// byte), else `capacity * units / 1024` when the units read as
/// `byte * B^E` or `byte`.
pub fn vcsim_capacity_kb(capacity: u64, units: Option<&str>) -> Option<u64> {
    let Some(u) = units else {
        return Some(capacity);
    };
    let f: Vec<&str> = u.split_whitespace().collect();
    let mult = if f.len() == 3 && f[0] == "byte" && f[1] == "*" {
        allocation_units(u)?
    } else {
        1
    };
    Some(capacity.checked_mul(mult)? / 1024)
}

/// What an OVF descriptor declares (first VirtualSystem, first
/// VirtualHardwareSection).
pub fn declared_from_ovf(xml: &str) -> Result<OvfDeclared, String> {
    let root = parse_xml(xml)?;
    if root.name != "Envelope" {
        return Err(format!("root element is <{}>, not <Envelope>", root.name));
    }
    let mut disks: BTreeMap<String, (u64, Option<String>)> = BTreeMap::new();
    if let Some(ds) = root.child("DiskSection") {
        for d in ds.children("Disk") {
            let id = d.attr("diskId").unwrap_or_default().to_string();
            let cap = d
                .attr("capacity")
                .ok_or_else(|| format!("disk {id} has no ovf:capacity"))?;
            let cap: u64 = cap
                .trim()
                .parse()
                .map_err(|_| format!("disk {id}: ovf:capacity {cap:?} is not a number"))?;
            disks.insert(
                id,
                (cap, d.attr("capacityAllocationUnits").map(str::to_string)),
            );
        }
    }
    let vs = root
        .child("VirtualSystem")
        .ok_or("no VirtualSystem (a VirtualSystemCollection is not handled)")?;
    let mut out = OvfDeclared::default();
    let mut props = Vec::new();
    vs.descendants("Property", &mut props);
    out.properties = props
        .iter()
        .filter_map(|p| p.attr("key").map(str::to_string))
        .collect();
    let hw = vs
        .child("VirtualHardwareSection")
        .ok_or("no VirtualHardwareSection")?;
    out.hardware_family = hw
        .child("System")
        .and_then(|s| s.child_text("VirtualSystemType"));
    for item in hw.children("Item") {
        let rt = item.child_text("ResourceType").unwrap_or_default();
        let qty = item
            .child_text("VirtualQuantity")
            .and_then(|q| q.parse::<u64>().ok());
        match rt.as_str() {
            "3" => out.cpus = qty.and_then(|q| u32::try_from(q).ok()),
            "4" => {
                let units = item
                    .child_text("AllocationUnits")
                    .unwrap_or_else(|| "byte * 2^20".into());
                let mult = allocation_units(&units)
                    .ok_or_else(|| format!("memory AllocationUnits {units:?}"))?;
                out.memory_mib = qty.and_then(|q| q.checked_mul(mult)).map(|b| b >> 20);
            }
            "10" => out.nics.push(DeclaredNic {
                subtype: item.child_text("ResourceSubType"),
                connection: item.child_text("Connection"),
            }),
            "15" | "16" => out.cdroms += 1,
            "17" => {
                let host = item.child_text("HostResource").unwrap_or_default();
                let (id, (cap, units)) = disks
                    .iter()
                    .find(|(id, _)| host.ends_with(&format!("/{id}")))
                    .ok_or_else(|| format!("disk item refers to {host:?}, not in DiskSection"))?;
                out.disks.push(DeclaredDisk {
                    disk_id: id.clone(),
                    capacity: *cap,
                    units: units.clone(),
                    capacity_bytes: match units {
                        None => Some(*cap),
                        Some(u) => allocation_units(u).and_then(|m| cap.checked_mul(m)),
                    },
                });
            }
            _ => {}
        }
    }
    Ok(out)
}

fn check_against_ovf(vm: &ImportedVm, ova: &Path) -> Result<(), VcsimError> {
    let d = &vm.declared;
    let mismatch = |what: &str, declared: String, found: String| VcsimError::Mismatch {
        vm: vm.name.clone(),
        ova: ova.to_path_buf(),
        what: what.to_string(),
        declared,
        found,
    };
    if let Some(c) = d.cpus {
        if c != vm.cpus {
            return Err(mismatch("vCPUs", c.to_string(), vm.cpus.to_string()));
        }
    }
    if let Some(m) = d.memory_mib {
        if m != vm.memory_mib {
            return Err(mismatch(
                "memory MiB",
                m.to_string(),
                vm.memory_mib.to_string(),
            ));
        }
    }
    if d.disks.len() != vm.disks.len() {
        return Err(mismatch(
            "disk count",
            d.disks.len().to_string(),
            vm.disks.len().to_string(),
        ));
    }
    for (i, (dd, vd)) in d.disks.iter().zip(&vm.disks).enumerate() {
        let want = vcsim_capacity_kb(dd.capacity, dd.units.as_deref());
        if want.and_then(|w| i64::try_from(w).ok()) != Some(vd.capacity_kb) {
            let mut declared = format!("ovf:capacity={}", dd.capacity);
            if let Some(u) = &dd.units {
                let _ = write!(declared, " units {u:?}");
            }
            let _ = write!(declared, " (vcsim reads {want:?} KiB)");
            return Err(mismatch(
                &format!("disk {i} ({}) capacity", dd.disk_id),
                declared,
                format!("{} KiB", vd.capacity_kb),
            ));
        }
    }
    if d.nics.len() != vm.nics.len() {
        return Err(mismatch(
            "NIC count",
            d.nics.len().to_string(),
            vm.nics.len().to_string(),
        ));
    }
    for (i, (dn, vn)) in d.nics.iter().zip(&vm.nics).enumerate() {
        if let Some(sub) = &dn.subtype {
            let want = format!("virtual{}", sub.to_ascii_lowercase());
            if vn.kind.to_ascii_lowercase() != want {
                return Err(mismatch(
                    &format!("NIC {i} type"),
                    sub.clone(),
                    vn.kind.clone(),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_line_is_parsed_and_must_be_loopback() {
        let out = "export GOVC_URL=https://user:pass@127.0.0.1:44767/sdk GOVC_SIM_PID=8156\n";
        let u = parse_govc_url(out).unwrap();
        assert_eq!(u, "https://user:pass@127.0.0.1:44767/sdk");
        assert!(url_is_loopback(&u));
        assert!(!url_is_loopback("https://user:pass@10.0.0.1:443/sdk"));
        assert!(parse_govc_url("starting\n").is_none());
    }

    #[test]
    fn units_and_vcsim_capacity() {
        assert_eq!(allocation_units("byte"), Some(1));
        assert_eq!(allocation_units("byte * 2^20"), Some(1 << 20));
        assert_eq!(allocation_units("byte*1024"), Some(1024));
        assert_eq!(allocation_units("MegaBytes"), None);
        assert_eq!(vcsim_capacity_kb(8 << 20, None), Some(8 << 20));
        assert_eq!(vcsim_capacity_kb(8 << 20, Some("byte")), Some(8 << 10));
        assert_eq!(vcsim_capacity_kb(8, Some("byte * 2^20")), Some(8 << 10));
    }

    #[test]
    fn descriptor_declarations() {
        let xml = r#"<?xml version="1.0"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="r" xmlns:vssd="v">
 <DiskSection><Disk ovf:diskId="d1" ovf:capacity="4" ovf:capacityAllocationUnits="byte * 2^30"/></DiskSection>
 <VirtualSystem ovf:id="x">
  <ProductSection><Property ovf:key="public_ssh_key" ovf:type="string"/></ProductSection>
  <VirtualHardwareSection>
   <System><vssd:VirtualSystemType>vmx-13</vssd:VirtualSystemType></System>
   <Item><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item>
   <Item><rasd:AllocationUnits>byte * 2^30</rasd:AllocationUnits><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item>
   <Item><rasd:HostResource>ovf:/disk/d1</rasd:HostResource><rasd:ResourceType>17</rasd:ResourceType></Item>
   <Item><rasd:Connection>VM Network</rasd:Connection><rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType><rasd:ResourceType>10</rasd:ResourceType></Item>
   <Item><rasd:ResourceType>15</rasd:ResourceType></Item>
  </VirtualHardwareSection>
 </VirtualSystem>
</Envelope>"#;
        let d = declared_from_ovf(xml).unwrap();
        assert_eq!(d.hardware_family.as_deref(), Some("vmx-13"));
        assert_eq!(d.cpus, Some(2));
        assert_eq!(d.memory_mib, Some(2048));
        assert_eq!(d.disks.len(), 1);
        assert_eq!(d.disks[0].capacity_bytes, Some(4 << 30));
        assert_eq!(d.nics[0].subtype.as_deref(), Some("VmxNet3"));
        assert_eq!(d.cdroms, 1);
        assert_eq!(d.properties, vec!["public_ssh_key".to_string()]);
        assert!(declared_from_ovf("<a><b></a>").is_err());
        assert!(declared_from_ovf("<Other/>").is_err());
    }

    #[test]
    fn the_check_names_what_differs() {
        let declared = OvfDeclared {
            hardware_family: Some("vmx-13".into()),
            cpus: Some(2),
            memory_mib: Some(1536),
            disks: vec![DeclaredDisk {
                disk_id: "vmdisk1".into(),
                capacity: 8 << 20,
                units: None,
                capacity_bytes: Some(8 << 20),
            }],
            nics: vec![DeclaredNic {
                subtype: Some("E1000".into()),
                connection: Some("NAT".into()),
            }],
            cdroms: 1,
            properties: vec![],
        };
        let good = ImportedVm {
            name: "x".into(),
            path: "/DC0/vm/x".into(),
            cpus: 2,
            memory_mib: 1536,
            guest_id: "otherGuest".into(),
            hardware_version: "vmx-13".into(),
            disks: vec![VmDisk {
                label: "disk1".into(),
                capacity_kb: 8 << 20,
                file: "[LocalDS_0] x/disk-0.vmdk".into(),
            }],
            nics: vec![VmNic {
                kind: "VirtualE1000".into(),
                network: "VM Network".into(),
                mac: "00:0c:29:00:00:01".into(),
            }],
            cdroms: 1,
            extra_config: BTreeMap::new(),
            declared,
            import_output: String::new(),
        };
        let ova = Path::new("x.ova");
        check_against_ovf(&good, ova).unwrap();
        let what = |vm: &ImportedVm| match check_against_ovf(vm, ova) {
            Err(VcsimError::Mismatch { what, .. }) => what,
            other => panic!("{other:?}"),
        };
        let mut vm = good.clone();
        vm.cpus = 1;
        assert_eq!(what(&vm), "vCPUs");
        let mut vm = good.clone();
        vm.memory_mib = 1024;
        assert_eq!(what(&vm), "memory MiB");
        let mut vm = good.clone();
        vm.disks[0].capacity_kb = 8 << 10;
        assert_eq!(what(&vm), "disk 0 (vmdisk1) capacity");
        let mut vm = good.clone();
        vm.disks.clear();
        assert_eq!(what(&vm), "disk count");
        let mut vm = good.clone();
        vm.nics[0].kind = "VirtualVmxnet3".into();
        assert_eq!(what(&vm), "NIC 0 type");
    }

    #[test]
    fn progress_lines_keep_the_last_state() {
        let t = "\u{1b}[K[x] Uploading a... (38%)\u{1b}[K[x] Uploading a... OK\nnext";
        assert_eq!(last_line_of_progress(t), "[x] Uploading a... OK\nnext");
    }
}

/// A file of an ISO9660 image's root directory, by its primary name
/// (`ENV.;1` for the agent's `env`): a small reader for the settings ISO the
/// builders write, independent of opsbake's writer.
pub fn iso_root_file(iso: &[u8], iso_name: &str) -> Option<Vec<u8>> {
    const SECTOR: usize = 2048;
    let pvd = iso.get(16 * SECTOR..17 * SECTOR)?;
    if pvd.first() != Some(&1) || pvd.get(1..6) != Some(b"CD001".as_slice()) {
        return None;
    }
    let root = pvd.get(156..190)?;
    let le32 = |b: &[u8], at: usize| -> Option<usize> {
        let x = b.get(at..at + 4)?;
        Some(u32::from_le_bytes([x[0], x[1], x[2], x[3]]) as usize)
    };
    let (lba, len) = (le32(root, 2)?, le32(root, 10)?);
    let dir = iso.get(lba * SECTOR..lba * SECTOR + len)?;
    let mut i = 0;
    while i < dir.len() {
        let rl = usize::from(*dir.get(i)?);
        if rl == 0 {
            // records do not cross sectors: skip to the next one
            i = (i / SECTOR + 1) * SECTOR;
            continue;
        }
        let rec = dir.get(i..i + rl)?;
        let nl = usize::from(*rec.get(32)?);
        let name = rec.get(33..33 + nl)?;
        if name.eq_ignore_ascii_case(iso_name.as_bytes()) {
            let (flba, flen) = (le32(rec, 2)?, le32(rec, 10)?);
            return iso
                .get(flba * SECTOR..flba * SECTOR + flen)
                .map(<[u8]>::to_vec);
        }
        i += rl;
    }
    None
}

#[cfg(test)]
mod iso_tests {
    #[test]
    fn reads_the_env_file_of_a_settings_iso() {
        let iso = opsbake_stemcell::IsoWriter::new("BOSH_ENV")
            .file("env", b"{\"agent_id\":\"x\"}".to_vec())
            .file("ENV", b"{\"agent_id\":\"x\"}".to_vec())
            .to_bytes()
            .unwrap();
        let names = ["ENV.;1", "ENV_1.;1"];
        let found: Vec<_> = names
            .iter()
            .filter_map(|n| super::iso_root_file(&iso, n))
            .collect();
        assert!(!found.is_empty(), "no ENV file in the ISO");
        assert_eq!(found[0], b"{\"agent_id\":\"x\"}");
        assert!(super::iso_root_file(&iso, "NOPE.;1").is_none());
        assert!(super::iso_root_file(b"short", "ENV.;1").is_none());
    }
}
