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
        self.datastore_paths(|p| p.file_name().is_some_and(|n| n == name) && !p.is_dir())
    }

    /// Files and directories on vcsim's datastores whose name contains
    /// `part` (a build id: the build VM's folder and files).
    pub fn datastore_paths_containing(&self, part: &str) -> Vec<PathBuf> {
        self.datastore_paths(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().contains(part))
        })
    }

    fn datastore_paths(&self, keep: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
        fn walk(d: &Path, keep: &dyn Fn(&Path) -> bool, out: &mut Vec<PathBuf>) {
            let Ok(rd) = std::fs::read_dir(d) else { return };
            for e in rd.flatten() {
                let p = e.path();
                if keep(&p) {
                    out.push(p.clone());
                }
                if p.is_dir() {
                    walk(&p, keep, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.dir.path().join("tmp"), &keep, &mut out);
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

mod iso;
mod ovf_check;

pub use iso::iso_root_file;
use ovf_check::check_against_ovf;
pub use ovf_check::{allocation_units, declared_from_ovf, read_ova_descriptor, vcsim_capacity_kb};

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
    fn progress_lines_keep_the_last_state() {
        let t = "\u{1b}[K[x] Uploading a... (38%)\u{1b}[K[x] Uploading a... OK\nnext";
        assert_eq!(last_line_of_progress(t), "[x] Uploading a... OK\nnext");
    }
}
