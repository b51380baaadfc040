//! The offline vbox build end to end under QEMU (TCG here): the vSphere test
//! stemcell boots with the settings ISO, vcap logs in with the build's
//! ephemeral key, a shell step and the hand-off run, the VM powers off, the
//! disk is normalised and the OVA written. Then the OVA is checked (OVF,
//! `.mf`, `qemu-img check`/`compare`), its VMDK booted the way vSphere or
//! VirtualBox would deploy it (an ovf-env.xml CD-ROM with `public_ssh_key`),
//! and `ubuntu` logs in with that key while the build key is refused.
//!
//! The connector here adapts comms-ssh to core's `Connector` (the CLI's own
//! wiring belongs to the CLI).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use opsbake_comms_ssh as ssh;
use opsbake_core::builder::{Connector, KeyAlgorithm, KeyPair, SshAuth, SshTarget};
use opsbake_core::events::{Event, EventSink};
use opsbake_core::runner::{BuildJob, Runner};
use opsbake_core::template::Iaas;
use opsbake_core::transport::{Transport, TransportError};
use tokio_util::sync::CancellationToken;

const VSPHERE_TGZ: &str = "bosh-stemcell-1.0-vsphere-esxi-debian-bookworm-go_agent.tgz";

fn stemcell() -> Option<PathBuf> {
    match std::env::var_os("OPSBAKE_TEST_STEMCELL_DIR") {
        Some(d) => {
            let p = PathBuf::from(d).join(VSPHERE_TGZ);
            assert!(p.is_file(), "{} missing: rerun .ci/setup.d/20-test-stemcell.sh", p.display());
            Some(p)
        }
        None if std::env::var("OPSBAKE_SKIP_PEERS").is_ok_and(|v| v == "1") => None,
        None => panic!(
            "OPSBAKE_TEST_STEMCELL_DIR is unset: run scripts/setup.sh and export target/ci-env, or set OPSBAKE_SKIP_PEERS=1"
        ),
    }
}

fn oth(message: impl Into<String>) -> TransportError {
    TransportError::Other {
        target: "test connector".into(),
        message: message.into(),
    }
}

/// comms-ssh behind core's Connector.
struct SshConnector;

#[async_trait]
impl Connector for SshConnector {
    fn generate_key(&self, _a: KeyAlgorithm, comment: &str) -> Result<KeyPair, TransportError> {
        let k = ssh::KeyPair::generate(ssh::KeyKind::Ed25519, comment)
            .map_err(|e| oth(e.to_string()))?;
        Ok(KeyPair {
            public_openssh: k.public_openssh().to_string(),
            private_openssh: k.private_openssh().map_err(|e| oth(e.to_string()))?,
            algorithm: "ssh-ed25519".into(),
        })
    }

    async fn connect(
        &self,
        t: &SshTarget,
        cancel: CancellationToken,
    ) -> Result<Arc<dyn Transport>, TransportError> {
        let SshAuth::Key(k) = &t.auth else {
            return Err(oth("test connector: key auth only"));
        };
        let kp = ssh::KeyPair::from_openssh(&k.private_openssh).map_err(|e| oth(e.to_string()))?;
        let mut o = ssh::SshOptions::new(
            ssh::Target {
                host: t.host.clone(),
                port: t.port,
                user: t.user.clone(),
            },
            ssh::Auth::Key(kp),
            ssh::HostKeyVerifier::new(ssh::HostKeyPolicy::TrustOnFirstUse),
        );
        o.login_timeout = t.login_timeout;
        tokio::select! {
            _ = cancel.cancelled() => Err(TransportError::Cancelled),
            r = ssh::SshTransport::connect(o) => Ok(Arc::new(r?) as Arc<dyn Transport>),
        }
    }
}

/// Collects every event as a JSON line (and echoes it for the test log).
#[derive(Default)]
struct Log(std::sync::Mutex<Vec<String>>);

impl EventSink for Log {
    fn emit(&self, e: Event) {
        let line = serde_json::to_string(&e).unwrap();
        eprintln!("{line}");
        self.0.lock().unwrap().push(line);
    }
}

fn template(stemcell: &Path, out: &Path) -> String {
    format!(
        r#"name: appliance
version: "1.0"
stemcells:
  vbox: {{path: "{}"}}
builds:
  vbox:
    cpus: 2
    memory: 1024
    ssh: {{user: vcap, login_timeout: 10m}}
    options: {{vm_name: appliance, shutdown_timeout: 2m}}
provision:
  - type: shell
    inline:
      - echo "provisioned-by-opsbake on $(hostname)"
      - sudo mkdir -p /var/www
      - echo 'appliance ok' | sudo tee /var/www/status
      - printf '[Unit]\nDescription=appliance status page\nAfter=network.target\n[Service]\nExecStart=/bin/busybox httpd -f -p 8080 -h /var/www\n[Install]\nWantedBy=multi-user.target\n' | sudo tee /etc/systemd/system/appliance-status.service
      - sudo systemctl enable appliance-status.service
      - sudo rm -f /etc/systemd/network/10-bosh-agent.network
      - printf '[Match]\nName=eth0\n[Network]\nDHCP=ipv4\n' | sudo tee /etc/systemd/network/10-appliance.network
      - sudo systemctl enable systemd-networkd.service
  - type: handoff
outputs:
  directory: "{}"
"#,
        stemcell.display(),
        out.display()
    )
}

struct Built {
    ova: PathBuf,
    events: Vec<String>,
    seconds: f64,
}

async fn build(dir: &Path, build_id: &str, stemcell: &Path) -> Built {
    std::fs::create_dir_all(dir).unwrap();
    let tpl = dir.join("appliance.yml");
    std::fs::write(&tpl, template(stemcell, &dir.join("out"))).unwrap();
    let loaded = opsbake_core::template::load(&tpl).unwrap();
    let vars = opsbake_core::vars::resolve(&loaded, &Default::default()).unwrap();
    let plan = opsbake_core::plan::plan_build(&loaded, &vars, Iaas::Vbox, build_id).unwrap();
    let inputs = opsbake_core::manifest::input_digests(&plan, &vars).unwrap();
    let builder = opsbake_iaas_vbox::builder(&plan).unwrap();
    let log = Arc::new(Log::default());
    let mut runner = Runner::new(dir.join("state"), log.clone());
    runner.connector = Some(Arc::new(SshConnector));
    runner.provisioning = Some(Arc::new(opsbake_provision::Provision::default()));
    runner.options.offline = true;
    let r = runner
        .run_all(
            vec![BuildJob {
                plan,
                builder,
                inputs,
            }],
            CancellationToken::new(),
        )
        .await;
    let r = &r[0];
    let events = log.0.lock().unwrap().clone();
    assert!(
        r.error.is_none(),
        "build failed: {:?}\n{}",
        r.error,
        events.join("\n")
    );
    assert!(r.leftovers.is_empty(), "{:?}", r.leftovers);
    Built {
        ova: dir.join("out/appliance.ova"),
        events,
        seconds: r.seconds,
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ssh_cmd(key: &Path, port: u16, user: &str, script: &str) -> std::process::Output {
    Command::new("ssh")
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=10",
            "-i",
        ])
        .arg(key)
        .arg("-p")
        .arg(port.to_string())
        .arg(format!("{user}@127.0.0.1"))
        .arg(script)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[ignore = "issue 6 open: builds, same sha256 under faketime +3d and the ubuntu login pass; the status page through the hostfwd answered empty in the last run (run with --run-ignored only)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_build_exports_a_reproducible_ova_that_deploys() {
    let Some(stemcell) = stemcell() else { return };
    // the one-build mode for the second, time-shifted run (see below)
    if let Ok(dir) = std::env::var("OPSBAKE_VBOX_E2E_ONLY_BUILD") {
        let b = build(Path::new(&dir), "vbox-e2e-second", &stemcell).await;
        println!(
            "OVA_SHA256={}",
            opsbake_iaas_vbox::export::sha256_file(&b.ova).unwrap()
        );
        return;
    }
    let t = tempfile::tempdir().unwrap();
    // OPSBAKE_VBOX_E2E_KEEP=1 keeps the builds' directories (debugging a difference)
    let (_guard, root) = if std::env::var("OPSBAKE_VBOX_E2E_KEEP").is_ok_and(|v| v == "1") {
        let p = t.keep();
        eprintln!("keeping {}", p.display());
        (None, p)
    } else {
        let p = t.path().to_path_buf();
        (Some(t), p)
    };
    let started = Instant::now();
    let b = build(&root.as_path().join("one"), "vbox-e2e-first", &stemcell).await;
    eprintln!("first build: {:.1}s", b.seconds);
    let ev = b.events.join("\n");
    assert!(
        ev.contains("provisioned-by-opsbake on opsbake-build"),
        "provisioning output in the log"
    );
    assert!(ev.contains("passwordless sudo"), "{ev}");
    assert!(ev.contains("handoff"), "the hand-off ran");
    assert!(
        ev.contains("\"engine\"") || ev.contains("qemu"),
        "engine named"
    );
    // manifest names the engine and the stemcell
    let manifest = std::fs::read_to_string(root.as_path().join("one/out/manifest.json")).unwrap();
    assert!(manifest.contains("\"engine\": \"qemu\""), "{manifest}");
    assert!(manifest.contains("stemcell_sha1"), "{manifest}");
    assert!(!manifest.contains("\"shutdown\": \"killed\""), "{manifest}");

    // the OVA: members in order, OVF, .mf digests, the VMDK
    let x = root.as_path().join("x");
    std::fs::create_dir_all(&x).unwrap();
    let list = run(Command::new("tar").arg("-tvf").arg(&b.ova));
    let names: Vec<&str> = list
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(
        names,
        ["appliance.ovf", "appliance.mf", "appliance-disk1.vmdk"],
        "{list}"
    );
    assert!(
        list.lines().all(|l| l.starts_with("-rw-r--r-- root/root")),
        "{list}"
    );
    assert!(list.contains("2024-01-01"), "{list}");
    run(Command::new("tar").arg("-xf").arg(&b.ova).arg("-C").arg(&x));
    let ovf = opsbake_stemcell::Ovf::read(&x.join("appliance.ovf")).unwrap();
    let vmdk = x.join("appliance-disk1.vmdk");
    let info = opsbake_stemcell::QemuImg::default()
        .info(&vmdk, Some("vmdk"))
        .unwrap();
    assert_eq!(ovf.disks()[0].capacity_bytes, Some(info.virtual_size));
    assert_eq!(
        ovf.files()[0].size,
        Some(std::fs::metadata(&vmdk).unwrap().len())
    );
    let xml = std::fs::read_to_string(x.join("appliance.ovf")).unwrap();
    assert!(xml.contains("<vbox:Machine") && xml.contains("ovf:key=\"public_ssh_key\""));
    opsbake_stemcell::ovf::verify_mf(&x, "appliance.mf").unwrap();
    run(Command::new("qemu-img")
        .args(["check", "-f", "vmdk"])
        .arg(&vmdk));
    // equal to the normalised raw disk (read back by our own reader)
    let raw = root.as_path().join("back.raw");
    opsbake_stemcell::vmdk::stream_optimized_to_raw(&vmdk, &raw).unwrap();
    let cmp = run(Command::new("qemu-img")
        .args(["compare", "-f", "vmdk", "-F", "raw"])
        .arg(&vmdk)
        .arg(&raw));
    assert!(cmp.contains("identical"), "{cmp}");
    let sha1 = opsbake_iaas_vbox::export::sha256_file(&b.ova).unwrap();

    // a second build from another directory, three days later (libfaketime),
    // in its own process: the same bytes
    if Command::new("faketime").arg("--version").output().is_ok() {
        let exe = std::env::current_exe().unwrap();
        let out = run(Command::new("faketime")
            .arg("-f")
            .arg("+3d")
            .arg(&exe)
            .args([
                "--exact",
                "offline_build_exports_a_reproducible_ova_that_deploys",
                "--nocapture",
            ])
            .env("OPSBAKE_VBOX_E2E_ONLY_BUILD", root.as_path().join("two"))
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1"));
        let sha2 = out
            .lines()
            .find_map(|l| l.strip_prefix("OVA_SHA256="))
            .unwrap_or_else(|| panic!("no OVA_SHA256 in {out}"))
            .trim()
            .to_string();
        assert_eq!(
            sha1, sha2,
            "the second build (faketime +3d, another dir) differs"
        );
    } else {
        assert!(
            std::env::var("OPSBAKE_SKIP_PEERS").is_ok_and(|v| v == "1"),
            "faketime missing: apt-get install faketime"
        );
    }

    // deploy: boot the VMDK with an ovf-env.xml CD-ROM that gives public_ssh_key
    deploy_and_login(root.as_path(), &vmdk).await;
    eprintln!("whole test: {:.1}s", started.elapsed().as_secs_f64());
}

async fn deploy_and_login(dir: &Path, vmdk: &Path) {
    let key = dir.join("deploy_key");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "deployer", "-f"])
        .arg(&key));
    let public = std::fs::read_to_string(dir.join("deploy_key.pub")).unwrap();
    let env = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" xmlns:oe="http://schemas.dmtf.org/ovf/environment/1" oe:id="appliance">
  <PropertySection>
    <Property oe:key="public_ssh_key" oe:value="{}"/>
  </PropertySection>
</Environment>
"#,
        public.trim()
    );
    let iso = dir.join("ovf-env.iso");
    opsbake_stemcell::write_ovf_env_iso(&env, 1_704_067_200, &iso).unwrap();
    let overlay = dir.join("deploy.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "vmdk", "-b"])
        .arg(vmdk)
        .arg(&overlay));
    let accel = opsbake_iaas_vbox::qemu::choose_accel(None).await.unwrap();
    let cfg = opsbake_iaas_vbox::qemu::QemuConfig {
        name: "deploy".into(),
        disk: overlay,
        cdrom: Some(iso),
        memory_mib: 1024,
        cpus: 1,
        accel,
        ssh_port: opsbake_iaas_vbox::qemu::free_port().unwrap(),
        forwards: vec![(opsbake_iaas_vbox::qemu::free_port().unwrap(), 8080)],
        restrict: true,
        qmp: dir.join("deploy-qmp.sock"),
        serial_log: dir.join("deploy-serial.log"),
        rtc_base: None,
    };
    let mut vm = opsbake_iaas_vbox::qemu::spawn(cfg, &dir.join("deploy-qemu.log")).unwrap();
    vm.wait_ready(Duration::from_secs(30)).await.unwrap();
    let port = vm.config.ssh_port;
    let deadline = Instant::now() + Duration::from_secs(480);
    let mut last;
    let ok = loop {
        let out = ssh_cmd(&key, port, "ubuntu", "id -un; sudo -n true && echo SUDO_OK");
        last = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            break true;
        }
        if Instant::now() > deadline || vm.child.try_wait().unwrap().is_some() {
            break false;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    };
    if !ok {
        let serial = std::fs::read_to_string(&vm.config.serial_log).unwrap_or_default();
        let _ = vm.child.kill().await;
        panic!("no login as ubuntu with the OVF key: {last}\nserial:\n{serial}");
    }
    assert!(
        last.contains("ubuntu") && last.contains("SUDO_OK"),
        "{last}"
    );
    // the status page through the forward
    let http_port = vm.config.forwards[0].0;
    let page = {
        let mut got = String::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(o) = Command::new("sh").arg("-c").arg(format!(
                "exec 3<>/dev/tcp/127.0.0.1/{http_port} && printf 'GET /status HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
            )).output() {
                got = String::from_utf8_lossy(&o.stdout).into_owned();
                if got.contains("appliance ok") {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        got
    };
    assert!(page.contains("appliance ok"), "status page: {page:?}");
    // the build's key is gone and the passwords are locked
    let out = ssh_cmd(&key, port, "ubuntu", "sudo cat /home/vcap/.ssh/authorized_keys 2>/dev/null | grep -c opsbake- ; sudo passwd -S root; sudo passwd -S vcap");
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = s.lines();
    assert_eq!(
        lines.next().map(str::trim),
        Some("0"),
        "build key still there: {s}"
    );
    for l in lines {
        let f: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(f.get(1).copied(), Some("L"), "password not locked: {l}");
    }
    let _ = vm.shutdown(Duration::from_secs(60)).await;
}
