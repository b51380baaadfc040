//! Shared by the multi-cloud CLI tests (`five_clouds.rs`,
//! `tmux_display.rs`): every IaaS's test peers at once (moto, the Compute
//! Engine test server + fake-gcs-server, the ARM test server + azurite,
//! vcsim, QEMU for vbox), each with the local sshd playing its VM, and one
//! `opsbake build images/appliance.yml --iaas ...` command combining the
//! var files images/{moto,gce,azure,vsphere}.vars.yml. A running build's
//! `--json` events are read as they come ([`Build`]) so that the test can
//! play vSphere's VMware Tools while the other builds run.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use opsbake_test_support::arm::{vm_sshd, ArmOptions, ArmServer};
use opsbake_test_support::azurite::Azurite;
use opsbake_test_support::gce::{GceOptions, GceServer, SeedImage};
use opsbake_test_support::gcs::FakeGcs;
use opsbake_test_support::moto::Moto;
use opsbake_test_support::sshd::{Sshd, SshdOptions};
use opsbake_test_support::vcsim::{iso_root_file, Vcsim};
use serde_json::Value;

use crate::{aws_support, gcp_support};

pub const VSPHERE_PASSWORD: &str = "vc-Secret-4711";

pub fn bin() -> &'static Path {
    opsbake_test_support::cli::opsbake_bin()
}

pub fn repo_root() -> PathBuf {
    opsbake_test_support::cli::workspace_root()
}

pub struct Azure {
    pub arm: ArmServer,
    pub az: Azurite,
    pub sshd: Sshd,
    pub path: String,
}

/// The peers of the IaaSes asked for.
pub struct Clouds {
    pub dir: tempfile::TempDir,
    pub stemcells: PathBuf,
    pub aws: Option<(Moto, Sshd)>,
    pub gcp: Option<gcp_support::Peers>,
    pub azure: Option<Azure>,
    pub vsphere: Option<(Vcsim, Sshd)>,
    pub vbox: bool,
    pub sa: Option<PathBuf>,
}

/// How the peers are started.
#[derive(Clone, Copy)]
pub struct PeerOptions {
    /// GET polls of each Compute Engine operation before it is DONE.
    pub gce_polls: u32,
}

impl Default for PeerOptions {
    fn default() -> Self {
        PeerOptions { gce_polls: 3 }
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// An `az` that prints the ARM test server's token, as `az account
/// get-access-token -o json` does (the Azure CLI credential of the chain).
fn fake_az(dir: &Path) -> PathBuf {
    opsbake_test_support::arm::fake_az(dir, None).unwrap()
}

impl Clouds {
    /// Start the peers of `iaases`; None when peers are skipped
    /// (`OPSBAKE_SKIP_PEERS=1` without the test stemcell).
    pub fn start(iaases: &[&str], o: PeerOptions) -> Option<Clouds> {
        aws_support::stemcell_dir()?;
        gcp_support::stemcell_dir()?;
        let dir = tempfile::tempdir().unwrap();
        let stemcells = gcp_support::stemcells_with_light(dir.path());
        let has = |i: &str| iaases.contains(&i);
        let aws = has("aws").then(|| {
            let moto = aws_support::moto().expect("moto_server");
            let sshd = opsbake_test_support::moto::instance_sshd(&moto, "us-east-1").unwrap();
            (moto, sshd)
        });
        let gcp = has("gcp").then(|| {
            let gcs = FakeGcs::start().unwrap_or_else(|e| panic!("{e}"));
            gcs.create_bucket(gcp_support::BUCKET).unwrap();
            let gce = GceServer::start(GceOptions {
                gcs_endpoint: Some(gcs.endpoint()),
                seed_images: vec![SeedImage {
                    project: gcp_support::LIGHT_PROJECT.into(),
                    name: gcp_support::LIGHT_IMAGE.into(),
                }],
                require_bearer: true,
                polls_to_done: o.gce_polls,
                ..GceOptions::default()
            })
            .unwrap();
            let sshd = opsbake_test_support::gce::instance_sshd(
                &gce,
                gcp_support::PROJECT,
                gcp_support::ZONE,
            )
            .unwrap();
            gcp_support::Peers { gce, gcs, sshd }
        });
        let sa = gcp
            .as_ref()
            .map(|_| gcp_support::service_account(dir.path()));
        let azure = has("azure").then(|| {
            let arm = ArmServer::start(ArmOptions::default()).unwrap();
            arm.seed_resource_group("opsbake-images", "westeurope");
            let az = Azurite::start().unwrap();
            let sas = opsbake_iaas_azure::sas::AccountSas::sign(
                opsbake_iaas_azure::sas::DEV_ACCOUNT,
                opsbake_iaas_azure::sas::DEV_KEY,
                time::OffsetDateTime::now_utc() + time::Duration::hours(1),
            )
            .unwrap();
            block_on(opsbake_iaas_azure::blob::create_public_container(
                &az.account_url(),
                "opsbake-vhds",
                &sas,
            ))
            .unwrap();
            let sshd = vm_sshd(&arm).unwrap();
            let bin = fake_az(dir.path());
            let path = format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            );
            Azure {
                arm,
                az,
                sshd,
                path,
            }
        });
        let vsphere = has("vsphere").then(|| {
            let v = Vcsim::start_with(&["-username", "builder", "-password", VSPHERE_PASSWORD])
                .unwrap_or_else(|e| panic!("{e}"));
            let sshd = Sshd::start(SshdOptions::default()).unwrap();
            (v, sshd)
        });
        Some(Clouds {
            dir,
            stemcells,
            aws,
            gcp,
            azure,
            vsphere,
            vbox: has("vbox"),
            sa,
        })
    }

    /// `opsbake [--json --no-progress] --state-dir DIR/state build
    /// images/appliance.yml --iaas LIST` with every started peer's var file
    /// and settings, `--skip-provision` for all but vbox (their sshd runs
    /// on this machine), `--offline` (loopback endpoints only; QEMU with a
    /// restricted network).
    pub fn command(&self, iaases: &[&str], json: bool, extra: &[&str]) -> Command {
        let root = repo_root();
        let mut c = Command::new(bin());
        c.current_dir(self.dir.path())
            .arg("--state-dir")
            .arg(self.dir.path().join("state"));
        if json {
            c.args(["--json", "--no-progress"]);
        }
        c.arg("build")
            .arg(root.join("images/appliance.yml"))
            .args(["--iaas", &iaases.join(","), "--offline"])
            .arg("--var")
            .arg(format!("stemcell_dir={}", self.stemcells.display()))
            .env(
                "OPSBAKE_VAR_output_dir",
                self.dir.path().join("out/appliance"),
            )
            .stdin(Stdio::null());
        let skip: Vec<&str> = iaases.iter().copied().filter(|i| *i != "vbox").collect();
        if !skip.is_empty() {
            c.args(["--skip-provision", &skip.join(",")]);
        }
        let mut path = std::env::var("PATH").unwrap_or_default();
        if let (true, Some((moto, sshd))) = (iaases.contains(&"aws"), &self.aws) {
            c.arg("--var-file")
                .arg(root.join("images/moto.vars.yml"))
                .args(["--var", &format!("aws_endpoint={}", moto.endpoint())])
                .args(["--var", &format!("aws_ssh_port={}", sshd.port())])
                .args(["--var", "aws_stemcell_prefix=light-"]);
            for (k, v) in [
                ("AWS_ACCESS_KEY_ID", "testing"),
                ("AWS_SECRET_ACCESS_KEY", "testing"),
                ("AWS_EC2_METADATA_DISABLED", "true"),
                ("AWS_CONFIG_FILE", "/nonexistent/opsbake-test"),
                ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/opsbake-test"),
            ] {
                c.env(k, v);
            }
            c.env_remove("AWS_SESSION_TOKEN")
                .env_remove("AWS_PROFILE")
                .env_remove("AWS_REGION")
                .env_remove("AWS_DEFAULT_REGION");
        }
        if let (true, Some(p)) = (iaases.contains(&"gcp"), &self.gcp) {
            c.arg("--var-file")
                .arg(root.join("images/gce.vars.yml"))
                .args(["--var", &format!("gcp_endpoint={}", p.gce.endpoint())])
                .args([
                    "--var",
                    &format!("gcp_storage_endpoint={}", p.gcs.endpoint()),
                ])
                .args(["--var", &format!("gcp_ssh_port={}", p.sshd.port())])
                .args([
                    "--var",
                    &format!(
                        "gcp_credentials_file={}",
                        self.sa.as_ref().unwrap().display()
                    ),
                ])
                .args(["--var", "gcp_stemcell_prefix=light-"])
                .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
                .env_remove("GOOGLE_PROJECT_ID")
                .env_remove("GOOGLE_CLOUD_PROJECT");
        }
        if let (true, Some(a)) = (iaases.contains(&"azure"), &self.azure) {
            c.arg("--var-file")
                .arg(root.join("images/azure.vars.yml"))
                .args(["--var", &format!("azure_endpoint={}", a.arm.endpoint())])
                .args([
                    "--var",
                    &format!("azure_storage_endpoint={}", a.az.account_url()),
                ])
                .args(["--var", &format!("azure_ssh_port={}", a.sshd.port())])
                .env_remove("AZURE_CLIENT_SECRET")
                .env_remove("AZURE_FEDERATED_TOKEN_FILE")
                .env_remove("AZURE_STORAGE_KEY")
                .env_remove("AZURE_SUBSCRIPTION_ID");
            path = a.path.clone();
        }
        if let (true, Some((v, sshd))) = (iaases.contains(&"vsphere"), &self.vsphere) {
            c.arg("--var-file")
                .arg(root.join("images/vsphere.vars.yml"))
                .args([
                    "--var",
                    &format!("vsphere_thumbprint={}", v.thumbprint().unwrap()),
                ])
                .args(["--var", &format!("vsphere_ssh_port={}", sshd.port())])
                .env("GOVC_URL", v.sdk_url())
                .env("GOVC_USERNAME", "builder")
                .env("GOVC_PASSWORD", VSPHERE_PASSWORD);
        }
        c.env("PATH", path).args(extra);
        c
    }

    /// `opsbake cleanup --all` with every peer's credentials.
    pub fn cleanup_all(&self) -> std::process::Output {
        let mut c = Command::new(bin());
        c.current_dir(self.dir.path())
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .args(["--no-progress", "cleanup", "--all"])
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/nonexistent/opsbake-test")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/opsbake-test");
        if let Some(a) = &self.azure {
            c.env("PATH", &a.path);
        }
        if let Some((v, _)) = &self.vsphere {
            c.env("GOVC_URL", v.sdk_url())
                .env("GOVC_USERNAME", "builder")
                .env("GOVC_PASSWORD", VSPHERE_PASSWORD);
        }
        c.output().unwrap()
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// What build `id` of `iaas` left at its peer (its artifacts excluded:
    /// `artifact` is the build's artifact id when it succeeded).
    pub fn leftovers(&self, iaas: &str, id: &str, artifact: Option<&str>) -> Vec<String> {
        match iaas {
            "aws" => {
                let (moto, _) = self.aws.as_ref().unwrap();
                aws_support::aws_env();
                let amis: Vec<String> = artifact
                    .map(|a| {
                        a.split(',')
                            .filter_map(|p| p.split_once(':').map(|(_, i)| i.to_string()))
                            .collect()
                    })
                    .unwrap_or_default();
                block_on(aws_support::leftovers(
                    &moto.endpoint(),
                    &["us-east-1", "eu-west-1"],
                    id,
                ))
                .into_iter()
                .filter(|l| !amis.iter().any(|a| l.contains(a.as_str())))
                .filter(|l| !(artifact.is_some() && l.contains("snap")))
                .collect()
            }
            "gcp" => gcp_support::left(self.gcp.as_ref().unwrap(), id)
                .into_iter()
                .filter(|l| artifact.is_none_or(|a| *l != format!("image {a}")))
                .collect(),
            "azure" => {
                let a = self.azure.as_ref().unwrap();
                a.arm
                    .resources()
                    .iter()
                    .filter(|r| r.body["tags"]["opsbake-build-id"] == id || r.id.contains(id))
                    .filter(|r| r.kind != "Microsoft.Compute/images")
                    .map(|r| format!("{} {}", r.kind, r.id))
                    .collect()
            }
            "vsphere" => {
                let (v, _) = self.vsphere.as_ref().unwrap();
                let mut out: Vec<String> = Vec::new();
                for p in v.vm_paths().unwrap() {
                    if p.contains("/opsbake-stemcell-")
                        || artifact.is_some_and(|a| p.trim_start_matches('/') == a)
                    {
                        continue;
                    }
                    let info = v.vm_info(&p).unwrap();
                    if p.contains(&format!("opsbake-{id}"))
                        || info
                            .extra_config
                            .get("opsbake.build-id")
                            .map(String::as_str)
                            == Some(id)
                    {
                        out.push(p);
                    }
                }
                out.extend(
                    v.datastore_files_named("opsbake-env.iso")
                        .into_iter()
                        .map(|p| p.display().to_string()),
                );
                out
            }
            // QEMU's processes and files are the journal's; it is checked
            _ => Vec::new(),
        }
    }
}

/// The journal of a build lists nothing live and has its outcome.
pub fn check_journal(state: &Path, build_id: &str) -> opsbake_core::journal::Outcome {
    let j = opsbake_core::journal::Journal::open(state, build_id).unwrap();
    let st = j.state();
    assert!(
        st.live.is_empty(),
        "{build_id}: journal lists {:?}",
        st.live
    );
    st.outcome
        .unwrap_or_else(|| panic!("{build_id}: no outcome"))
}

/// A running `opsbake --json build`, its events read as they come.
pub struct Build {
    pub child: Child,
    rx: mpsc::Receiver<Value>,
    pub seen: Vec<Value>,
    pub stderr: PathBuf,
    pub started: Instant,
}

impl Build {
    pub fn start(mut c: Command, dir: &Path, name: &str) -> Build {
        let stderr = dir.join(format!("{name}.stderr"));
        let started = Instant::now();
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let rx = opsbake_test_support::cli::event_stream(out);
        Build {
            child,
            rx,
            seen: Vec::new(),
            stderr,
            started,
        }
    }

    /// Read events until one matches (panics after `secs`).
    pub fn wait_for(&mut self, what: &str, secs: u64, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(_) => panic!(
                    "no `{what}` event; last events: {:#?}\nstderr:\n{}",
                    self.seen.iter().rev().take(30).collect::<Vec<_>>(),
                    self.stderr()
                ),
            }
        }
    }

    /// Wait for the exit (at most `secs`): its code (128 + signal), every
    /// remaining event read, and the wall time since the start.
    pub fn finish(&mut self, secs: u64) -> (i32, f64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                let wall = self.started.elapsed().as_secs_f64();
                while let Ok(v) = self.rx.recv_timeout(Duration::from_secs(5)) {
                    self.seen.push(v);
                }
                use std::os::unix::process::ExitStatusExt;
                return (
                    s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
                    wall,
                );
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("opsbake did not exit in {secs} s\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn sigint(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
    }

    /// The `build_finished` event of one IaaS.
    pub fn finished(&self, iaas: &str) -> &Value {
        self.seen
            .iter()
            .find(|e| e["event"] == "build_finished" && e["build"] == iaas)
            .unwrap_or_else(|| panic!("no build_finished for {iaas}\n{}", self.stderr()))
    }

    pub fn started_event(&self, iaas: &str) -> &Value {
        self.seen
            .iter()
            .find(|e| e["event"] == "build_started" && e["build"] == iaas)
            .unwrap_or_else(|| panic!("no build_started for {iaas}"))
    }

    pub fn build_id(&self, iaas: &str) -> String {
        self.seen
            .iter()
            .find(|e| e["build"] == iaas && e["build_id"].is_string())
            .and_then(|e| e["build_id"].as_str())
            .unwrap_or_else(|| panic!("no event of {iaas}"))
            .to_string()
    }
}

pub fn created(iaas: &'static str, kind: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["event"] == "resource_created" && v["build"] == iaas && v["kind"] == kind
}

/// What VMware Tools and the BOSH agent would do for the vsphere build:
/// read the settings ISO it uploaded, authorize its keys at the sshd,
/// report 127.0.0.1 once the clone is powered on.
pub fn play_vsphere(b: &mut Build, c: &Clouds) {
    let (v, sshd) = c.vsphere.as_ref().unwrap();
    let vm = b.wait_for("the build VM's intent", 600, |e| {
        e["event"] == "resource_intent" && e["build"] == "vsphere" && e["kind"] == "vsphere_vm"
    })["name"]
        .as_str()
        .unwrap()
        .to_string();
    b.wait_for(
        "the settings ISO upload",
        600,
        created("vsphere", "vsphere_file"),
    );
    let isos = v.datastore_files_named("opsbake-env.iso");
    assert_eq!(isos.len(), 1, "{isos:?}");
    let iso = std::fs::read(&isos[0]).unwrap();
    let env = ["ENV.;1", "ENV_1.;1"]
        .iter()
        .find_map(|n| iso_root_file(&iso, n))
        .expect("no env file in the settings ISO");
    let settings: Value = serde_json::from_slice(&env).unwrap();
    let keys: Vec<String> = settings["env"]["bosh"]["authorized_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    sshd.set_authorized_keys(&keys).unwrap();
    let path = format!("/DC0/vm/{vm}");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let o = v
            .govc_raw(["object.collect", "-s", &path, "runtime.powerState"])
            .unwrap();
        if o.success() && o.stdout.trim() == "poweredOn" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{vm} never powered on: {}\n{}",
            o.stderr,
            b.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    v.set_guest_ip(&path, "127.0.0.1").unwrap();
}

pub fn ts(e: &Value) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(
        e["ts"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
}
