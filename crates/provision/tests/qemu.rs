//! The hand-off, the sudo grant and a reboot with `expect_disconnect` on the
//! test stemcell booted under QEMU (test-support's boot helper), together
//! with the example appliance's real provisioning. After the hand-off the
//! guest is reset and logged into as `ubuntu` with the key from the OVF
//! environment on the CD-ROM, which only the first-boot unit can have put
//! there.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Harness;
use opsbake_comms_ssh::{
    Auth, HostKeyPolicy, HostKeyVerifier, KeyKind, KeyPair, SshOptions, SshTransport, Target,
};
use opsbake_core::builder::{Provisioning, RunOptions};
use opsbake_core::template::Iaas;
use opsbake_core::transport::{ExecRequest, Stream, Transport};
use opsbake_provision::{Provision, ProvisionOptions};
use opsbake_test_support::qemu::{self, Qemu, QemuOptions};

const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

fn stemcell_disk() -> Option<PathBuf> {
    match std::env::var_os("OPSBAKE_TEST_STEMCELL_DIR") {
        Some(d) => {
            let disk = PathBuf::from(d).join("disk.raw");
            assert!(
                disk.is_file(),
                "{} is missing: rerun .ci/setup.d/20-test-stemcell.sh",
                disk.display()
            );
            Some(disk)
        }
        None if qemu::skip_peers() => {
            eprintln!("OPSBAKE_SKIP_PEERS=1 and OPSBAKE_TEST_STEMCELL_DIR unset: skipped");
            None
        }
        None => panic!(
            "OPSBAKE_TEST_STEMCELL_DIR is unset: run scripts/setup.sh (or .ci/setup.d/20-test-stemcell.sh) \
             and export it, or set OPSBAKE_SKIP_PEERS=1"
        ),
    }
}

/// The settings ISO with both the agent's `env` and an OVF environment
/// (`ovf-env.xml`) whose `public_ssh_key` is the appliance user's key.
fn cdrom(dir: &Path, settings: &str, ovf_key: &str) -> PathBuf {
    let src = dir.join("iso");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("env"), settings).unwrap();
    std::fs::write(
        src.join("ovf-env.xml"),
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Environment xmlns=\"http://schemas.dmtf.org/ovf/environment/1\"\n  xmlns:oe=\"http://schemas.dmtf.org/ovf/environment/1\" oe:id=\"appliance\">\n  <PropertySection>\n    <Property oe:key=\"hostname\" oe:value=\"appliance\"/>\n    <Property oe:key=\"public_ssh_key\" oe:value=\"{ovf_key}\"/>\n  </PropertySection>\n</Environment>\n"
        ),
    )
    .unwrap();
    let iso = dir.join("cdrom.iso");
    let out = Command::new("genisoimage")
        .args(["-quiet", "-r", "-J", "-V", "config-2", "-o"])
        .arg(&iso)
        .arg(&src)
        .output()
        .expect("genisoimage (Debian genisoimage) runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    iso
}

async fn login(
    addr: std::net::SocketAddr,
    user: &str,
    key: &KeyPair,
    timeout: Duration,
) -> SshTransport {
    let target = Target {
        host: addr.ip().to_string(),
        port: addr.port(),
        user: user.to_string(),
    };
    let mut o = SshOptions::new(
        target,
        Auth::Key(key.clone()),
        HostKeyVerifier::new(HostKeyPolicy::TrustOnFirstUse),
    );
    o.login_timeout = timeout;
    o.attempt_timeout = Duration::from_secs(30);
    SshTransport::connect(o).await.unwrap()
}

async fn run(t: &dyn Transport, cmd: &str) -> (u32, String) {
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let l2 = lines.clone();
    let sink = Arc::new(move |_s: Stream, l: &str| l2.lock().unwrap().push(l.to_string()));
    let st = t.exec(ExecRequest::new(cmd), sink).await.unwrap();
    let out = lines.lock().unwrap().join("\n");
    (st.code().unwrap_or(255), out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_reboot_and_the_appliance_on_the_test_stemcell() {
    let Some(disk) = stemcell_disk() else { return };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap();
    let prov = repo.join("provisioning");
    let yaml = format!(
        "name: t\nbuilds:\n  ssh:\n    ssh: {{host: 127.0.0.1, password: unused}}\n    options: {{allow_loopback: true}}\nprovision:\n  - type: shell\n    name: before\n    inline: [\"cat /proc/sys/kernel/random/boot_id > /var/tmp/boot-before\", \"echo before $(id -un)\"]\n  - type: shell\n    name: reboot\n    inline: [\"systemctl reboot\"]\n    expect_disconnect: true\n    start_retry_timeout: 5m\n  - type: shell\n    name: after\n    inline: [\"echo after $(cat /proc/sys/kernel/random/boot_id) $(cat /var/tmp/boot-before)\"]\n  - type: file\n    source: {prov}/files/appliance-status/\n    destination: \"/var/tmp/opsbake/${{build.id}}/files/appliance-status\"\n  - type: shell\n    scripts: [{prov}/scripts/setup.sh, {prov}/scripts/iaas.sh]\n    environment_vars:\n      APPLIANCE_FILES: \"/var/tmp/opsbake/${{build.id}}/files/appliance-status\"\n      APPLIANCE_NAME: appliance\n      APPLIANCE_VERSION: \"1.0.0\"\n      APPLIANCE_IAAS: vbox\n  - type: shell\n    name: check-status\n    script: {prov}/scripts/check-status.sh\n  - type: handoff\n    sudo_password: SUDO_PASSWORD\n    ovf_ssh_key: true\n",
        prov = prov.display()
    );
    let password = format!("pw-{}-{}", std::process::id(), rand_tag());
    let yaml = yaml.replace("SUDO_PASSWORD", &password);
    let h = Harness::new(&yaml, Iaas::Ssh, &[], RunOptions::default());
    let build_key =
        KeyPair::generate(KeyKind::Ed25519, &format!("opsbake-{}", h.ctx.build_id())).unwrap();
    let ubuntu_key = KeyPair::generate(KeyKind::Ed25519, "deploy-time-key").unwrap();

    let work = tempfile::tempdir().unwrap();
    let hash = qemu::password_hash(&password).unwrap();
    let settings = qemu::settings_json(
        "builder-handoff",
        &[build_key.public_openssh().to_string()],
        Some(&hash),
    );
    let iso = cdrom(work.path(), &settings, ubuntu_key.public_openssh());
    let mut opts = QemuOptions::new(&disk).cdrom(&iso);
    opts.work_dir = Some(work.path().join("vm"));
    let mut vm = Qemu::start(opts).unwrap();
    let started = Instant::now();
    vm.wait_for_ssh_banner(BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\nserial:\n{}", vm.serial_tail(40)));
    let t: Arc<dyn Transport> =
        Arc::new(login(vm.ssh_addr(), "vcap", &build_key, Duration::from_secs(120)).await);
    eprintln!(
        "[qemu] {} vcap login after {:.1}s",
        vm.accel(),
        started.elapsed().as_secs_f64()
    );

    // Before: sudo needs the password.
    let (code, _) = run(t.as_ref(), "sudo -n true").await;
    assert_ne!(code, 0, "vcap must need a password before the grant");

    let p = Provision::new(ProvisionOptions {
        allow_loopback_handoff: true,
        ..Default::default()
    });
    let t0 = Instant::now();
    let r = p.run(&h.ctx, t.clone()).await;
    if let Err(e) = &r {
        panic!(
            "{e}\nmessages: {:#?}\nserial:\n{}",
            h.messages(),
            vm.serial_tail(40)
        );
    }
    eprintln!(
        "[qemu] provisioning with a reboot took {:.1}s",
        t0.elapsed().as_secs_f64()
    );

    assert_eq!(
        h.output("before"),
        [(Stream::Stdout, "before root".to_string())]
    );
    let after = h.output("after");
    assert_eq!(after.len(), 1, "{after:?}");
    let words: Vec<&str> = after[0].1.split_whitespace().collect();
    assert_eq!(words.len(), 3, "{after:?}");
    assert_ne!(
        words[1], words[2],
        "the step after the reboot ran in a new boot"
    );
    assert!(
        h.output("shell setup.sh")
            .iter()
            .any(|(_, l)| l.starts_with("check-status: ok:")),
        "{:?}",
        h.output("shell setup.sh")
    );
    let ho: Vec<String> = h.output("handoff").into_iter().map(|(_, l)| l).collect();
    assert!(ho.iter().any(|l| l == "handoff: done"), "{ho:#?}");
    // vcap lost its passwordless sudo (also checked by the provisioner).
    let (code, _) = run(t.as_ref(), "sudo -n true").await;
    assert_ne!(code, 0);
    // Only vcap may run sync here; then a hard reset: host keys come back at
    // first boot, the agent stays off, the appliance's network and service come up.
    let (code, _) = run(t.as_ref(), "sync").await;
    assert_eq!(code, 0);
    vm.qmp(r#"{"execute":"system_reset"}"#).unwrap();
    let t1 = Instant::now();
    vm.wait_for_ssh_banner(BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\nserial:\n{}", vm.serial_tail(60)));
    // The build's key no longer gets in; ubuntu's key from the OVF environment does.
    let u = login(
        vm.ssh_addr(),
        "ubuntu",
        &ubuntu_key,
        Duration::from_secs(180),
    )
    .await;
    eprintln!(
        "[qemu] ubuntu login {:.1}s after the reset",
        t1.elapsed().as_secs_f64()
    );
    let checks = [
        ("sudo -n true && echo ok", "ok"),
        ("id -nG | tr ' ' '\\n' | grep -x bosh_sshers", "bosh_sshers"),
        ("sudo -n systemctl is-enabled bosh-agent.service || true", "disabled"),
        ("sudo -n systemctl is-active bosh-agent.service || true", "inactive"),
        ("sudo -n systemctl is-enabled opsbake-ovf-ssh-key.service", "enabled"),
        ("sudo -n sh -c 'test -e /home/vcap/.ssh/authorized_keys && echo present || echo absent'", "absent"),
        ("sudo -n getent shadow root vcap | cut -d: -f2 | sort -u", "!"),
        ("sudo -n sh -c 'ls /var/vcap/bosh/settings.json 2>&1 >/dev/null | wc -l'", "1"),
        ("sudo -n -l -U vcap | grep -c NOPASSWD || true", "0"),
        ("sudo -n -l -U ubuntu | grep -c NOPASSWD", "1"),
        ("cat /home/ubuntu/.ssh/authorized_keys", ubuntu_key.public_openssh()),
        ("busybox wget -q -O - http://127.0.0.1:8080/cgi-bin/status | grep -o '\"name\": \"appliance\"'", "\"name\": \"appliance\""),
        ("sudo -n systemctl is-enabled appliance-status.service", "enabled"),
    ];
    for (cmd, want) in checks {
        let (code, out) = run(&u, cmd).await;
        assert_eq!((code, out.trim()), (0, want), "{cmd}");
    }
    let id = h.ctx.build_id().to_string();
    let (_, out) = run(&u, &format!("sudo -n grep -rlF opsbake-{id} /home /root /etc/ssh 2>/dev/null; sudo -n ls -d /var/tmp/opsbake/{id} 2>&1")).await;
    assert!(
        out.contains("No such file"),
        "build key or staging left: {out}"
    );
    assert!(!out.contains("authorized_keys"), "build key left: {out}");
    // The password went to sudo once and was right: no failure in the tally.
    let (code, out) = run(&u, "sudo -n faillock --user vcap | tail -n +3 | wc -l").await;
    assert_eq!((code, out.trim()), (0, "0"), "pam_faillock tally of vcap");
    let _ = u.close().await;
    vm.shutdown(Duration::from_secs(60)).unwrap();
    eprintln!("[qemu] whole test {:.1}s", started.elapsed().as_secs_f64());
}

fn rand_tag() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}
