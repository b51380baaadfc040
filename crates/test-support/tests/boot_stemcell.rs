//! Boots the vSphere-format test stemcell (stemcells/build-test-stemcell.sh,
//! OPSBAKE_TEST_STEMCELL_DIR) under QEMU with a BOSH settings ISO, and logs in
//! as `vcap` with the key from the settings using the OpenSSH client.
//!
//! The settings ISO comes from the stemcell crate's ISO writer
//! (`opsbake_stemcell::IsoWriter`); `opsbake_test_support::qemu::settings_iso`
//! (genisoimage) is there for crates that do not depend on it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use opsbake_test_support::qemu::{self, Qemu, QemuOptions};

const VSPHERE_TGZ: &str = "bosh-stemcell-1.0-vsphere-esxi-debian-bookworm-go_agent.tgz";
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

/// The test stemcell directory, or None when peers may be skipped.
fn stemcell_dir() -> Option<PathBuf> {
    match std::env::var_os("OPSBAKE_TEST_STEMCELL_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            assert!(
                d.join(VSPHERE_TGZ).is_file(),
                "OPSBAKE_TEST_STEMCELL_DIR={} has no {VSPHERE_TGZ}: rerun .ci/setup.d/20-test-stemcell.sh",
                d.display()
            );
            Some(d)
        }
        None if qemu::skip_peers() => {
            eprintln!("OPSBAKE_SKIP_PEERS=1 and OPSBAKE_TEST_STEMCELL_DIR unset: skipped");
            None
        }
        None => panic!(
            "OPSBAKE_TEST_STEMCELL_DIR is unset: run scripts/setup.sh (or .ci/setup.d/20-test-stemcell.sh) \
             and export the variables in target/ci-env, or set OPSBAKE_SKIP_PEERS=1"
        ),
    }
}

fn check(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn sha1_of(path: &Path) -> String {
    let out = check(Command::new("sha1sum").arg(path));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Extract the vSphere stemcell with GNU tar: check the MF sha1 against the
/// `image` member and return the VMDK.
fn extract_vmdk(stemcell: &Path, into: &Path) -> PathBuf {
    check(
        Command::new("tar")
            .arg("-xzf")
            .arg(stemcell)
            .arg("-C")
            .arg(into)
            .args(["stemcell.MF", "image"]),
    );
    let mf = std::fs::read_to_string(into.join("stemcell.MF")).unwrap();
    let sha1 = mf
        .lines()
        .find_map(|l| l.strip_prefix("sha1: "))
        .expect("sha1 in stemcell.MF")
        .trim()
        .to_string();
    assert_eq!(
        sha1,
        sha1_of(&into.join("image")),
        "MF sha1 vs image member"
    );
    assert!(
        mf.contains("stemcell_formats: [vsphere-ova, vsphere-ovf]"),
        "{mf}"
    );
    let image_dir = into.join("image.d");
    std::fs::create_dir_all(&image_dir).unwrap();
    check(
        Command::new("tar")
            .arg("-xzf")
            .arg(into.join("image"))
            .arg("-C")
            .arg(&image_dir),
    );
    // image.mf holds the SHA1 of the OVF and the VMDK
    let imf = std::fs::read_to_string(image_dir.join("image.mf")).unwrap();
    let vmdk = image_dir.join("image-disk1.vmdk");
    assert!(
        imf.contains(&format!("SHA1(image-disk1.vmdk)= {}", sha1_of(&vmdk))),
        "{imf}"
    );
    vmdk
}

struct Guest {
    vm: Qemu,
    key: PathBuf,
}

impl Guest {
    fn ssh(&self, user: &str, script: &str) -> Output {
        opsbake_test_support::qemu::guest_ssh(&self.key, self.vm.ssh_port(), user, script, 20)
            .expect("ssh (openssh-client) runs")
    }

    fn vcap(&self, script: &str) -> (i32, String, String) {
        let out = self.ssh("vcap", script);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        )
    }
}

#[test]
fn boots_and_takes_settings_from_the_cdrom() {
    let Some(dir) = stemcell_dir() else { return };
    let work = tempfile::tempdir().unwrap();
    let vmdk = extract_vmdk(&dir.join(VSPHERE_TGZ), work.path());

    let key = qemu::ssh_keypair(work.path(), "id_ed25519").unwrap();
    let password = format!("pw-{}", std::process::id());
    let hash = qemu::password_hash(&password).unwrap();
    let agent_id = "builder-boot-test";
    // The settings CD-ROM exactly as the vsphere builder uploads it and the
    // vbox builder attaches it: `AgentSettings::minimal` (the build's key, the
    // password's hash) through the one writer, `agent_settings_iso` (files
    // `env` and `ENV`, Rock Ridge names). The vsphere builder's bytes are the
    // same function's with timestamp 0, as here.
    let settings = opsbake_stemcell::AgentSettings::minimal(
        agent_id,
        vec![key.public.clone()],
        Some(opsbake_core::Secret::new(hash.clone())),
    );
    let iso = work.path().join("settings.iso");
    let bytes = opsbake_stemcell::agent_settings_iso(&settings, 0)
        .unwrap()
        .to_bytes()
        .unwrap();
    std::fs::write(&iso, &bytes).unwrap();

    let mut opts = QemuOptions::new(&vmdk).cdrom(&iso);
    opts.work_dir = Some(work.path().join("vm"));
    let mut vm = Qemu::start(opts).unwrap();
    eprintln!(
        "QEMU pid {} ({}), ssh on 127.0.0.1:{}",
        vm.pid(),
        vm.accel(),
        vm.ssh_port()
    );
    let (banner, to_banner) = vm.wait_for_ssh_banner(BOOT_TIMEOUT).unwrap();
    assert!(banner.starts_with("SSH-2.0-OpenSSH"), "{banner}");
    let guest = Guest {
        vm,
        key: key.private.clone(),
    };

    // The first login (the agent runs before sshd, so it works at once; allow
    // a short retry for a slow host).
    let deadline = Instant::now() + Duration::from_secs(60);
    let (code, id, err) = loop {
        let r = guest.vcap("id");
        if r.0 == 0 || Instant::now() >= deadline {
            break r;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let to_login = guest.vm.started().elapsed();
    assert_eq!(
        code,
        0,
        "login as vcap: {err}\nserial:\n{}",
        guest.vm.serial_tail(40)
    );
    eprintln!(
        "boot figures ({}): SSH banner after {:.1} s, first vcap login done after {:.1} s",
        guest.vm.accel(),
        to_banner.as_secs_f64(),
        to_login.as_secs_f64()
    );

    // vcap: uid 1000, in bosh_sshers, admin, sudo
    assert!(id.starts_with("uid=1000(vcap)"), "{id}");
    for g in ["(bosh_sshers)", "(admin)", "(sudo)"] {
        assert!(id.contains(g), "{id} lacks {g}");
    }
    // sudo needs the password
    let (code, _, err) = guest.vcap("sudo -n true");
    assert_ne!(code, 0, "sudo -n true must fail");
    assert!(err.contains("password is required"), "{err}");
    // no ubuntu user
    let (code, out, _) = guest.vcap("getent passwd ubuntu");
    assert_eq!((code, out.as_str()), (2, ""), "getent passwd ubuntu");
    // hostname from the agent id, network from DHCP
    let (_, out, _) = guest.vcap("hostname; busybox ip -4 -o addr show dev eth0");
    assert!(out.starts_with(agent_id), "{out}");
    assert!(out.contains("10.0.2.15/24"), "{out}");
    // the image configures only lo; eth0 is the agent's (systemd-networkd file)
    let (_, out, _) = guest.vcap("grep -v '^#' /etc/network/interfaces; ls /etc/systemd/network");
    assert_eq!(
        out, "auto lo\niface lo inet loopback\n10-bosh-agent.network",
        "{out}"
    );

    // As root through sudo with the password from the settings (a wrong one
    // would count towards pam_faillock's deny=3).
    let sudo = |cmd: &str| {
        guest.vcap(&format!(
            "printf '%s\\n' '{password}' | sudo -S -p '' sh -c '{cmd}'"
        ))
    };
    // the agent's settings.json is the ISO's
    let (code, out, err) = sudo("jq -r .agent_id /var/vcap/bosh/settings.json");
    assert_eq!((code, out.as_str()), (0, agent_id), "{err}");
    // the password hash went to root and vcap
    let (code, out, err) = sudo("getent shadow root vcap | cut -d: -f2 | sort -u");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, hash, "root and vcap carry env.bosh.password");
    // authorized_keys replaced, owned by vcap, 0600
    let (_, out, _) =
        guest.vcap("stat -c '%U %a' ~/.ssh/authorized_keys ~/.ssh; cat ~/.ssh/authorized_keys");
    assert_eq!(out, format!("vcap 600\nvcap 700\n{}", key.public), "{out}");
    // hardened sshd
    let (code, out, err) = sudo("sshd -T");
    assert_eq!(code, 0, "{err}");
    for line in [
        "permitrootlogin no",
        "denyusers root",
        "allowgroups bosh_sshers",
        "passwordauthentication no",
        "maxauthtries 3",
        "clientaliveinterval 180",
        "clientalivecountmax 1",
        "ciphers aes256-gcm@openssh.com,aes128-gcm@openssh.com,aes256-ctr,aes192-ctr,aes128-ctr",
    ] {
        assert!(out.lines().any(|l| l == line), "sshd -T lacks {line:?}");
    }
    // sudoers and pam_faillock as on a stemcell
    let (_, out, _) = sudo("cat /etc/sudoers; grep -h pam_faillock /etc/pam.d/common-auth");
    assert!(out.contains("%admin ALL=(ALL) ALL"), "{out}");
    assert!(
        out.contains("%bosh_sudoers ALL=(ALL) NOPASSWD: ALL"),
        "{out}"
    );
    assert!(out.contains("deny=3 unlock_time=604800"), "{out}");
    // firstboot: the RSA host key comes after sshd starts, then the marker
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (code, out, _) = sudo("ls /root/firstboot_done /etc/ssh/ssh_host_rsa_key /etc/ssh/ssh_host_ecdsa_key /etc/ssh/ssh_host_ed25519_key");
        if code == 0 {
            assert_eq!(out.lines().count(), 4, "{out}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/root/firstboot_done missing after 120 s: {out}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    // root cannot log in over SSH, even with a key in its authorized_keys
    let (code, _, err) =
        sudo("install -d -m 700 /root/.ssh && cp /home/vcap/.ssh/authorized_keys /root/.ssh/");
    assert_eq!(code, 0, "{err}");
    let out = guest.ssh("root", "true");
    assert!(!out.status.success(), "root logged in over SSH");

    let mut vm = guest.vm;
    let t = Instant::now();
    vm.shutdown(Duration::from_secs(60)).unwrap();
    eprintln!("powered off in {:.1} s", t.elapsed().as_secs_f64());
}

#[test]
fn without_settings_there_is_no_network_and_no_login() {
    let Some(dir) = stemcell_dir() else { return };
    // the raw disk of the same stemcell (the packaging is checked above)
    let disk = dir.join("disk.raw");
    assert!(disk.is_file(), "{} missing", disk.display());
    let work = tempfile::tempdir().unwrap();
    let mut opts = QemuOptions::new(&disk);
    opts.work_dir = Some(work.path().join("vm"));
    let mut vm = Qemu::start(opts).unwrap();
    // readiness: the agent reports on the console that it has no settings
    let at = vm
        .wait_for_serial("bosh-agent: error: no settings", BOOT_TIMEOUT)
        .unwrap();
    // then sshd starts (ordered after the agent): wait for its start on the console
    vm.wait_for_serial("OpenBSD Secure Shell server", Duration::from_secs(60))
        .unwrap();
    eprintln!("agent gave up after {:.1} s", at.as_secs_f64());
    // no IPv4 on eth0, so the forward to port 22 gets no banner
    for _ in 0..3 {
        assert_eq!(
            vm.ssh_banner_now(Duration::from_secs(3)),
            None,
            "an SSH banner without settings"
        );
    }
    vm.shutdown(Duration::from_secs(30)).unwrap();
}

/// Every tarball the build made has the BOSH layout (STEMCELLS.md sections 1-2),
/// read with GNU tar and sha1sum.
#[test]
fn tarballs_have_the_bosh_layout() {
    let Some(dir) = stemcell_dir() else { return };
    let work = tempfile::tempdir().unwrap();
    let cases: [(&str, &str, &[&str]); 5] = [
        (
            VSPHERE_TGZ,
            "[vsphere-ova, vsphere-ovf]",
            &["image.ovf", "image.mf", "image-disk1.vmdk"],
        ),
        (
            "bosh-stemcell-1.0-aws-xen-hvm-debian-bookworm-go_agent.tgz",
            "[aws-raw]",
            &["root.img"],
        ),
        (
            "bosh-stemcell-1.0-google-kvm-debian-bookworm-go_agent.tgz",
            "[google-rawdisk]",
            &["disk.raw"],
        ),
        (
            "bosh-stemcell-1.0-azure-hyperv-debian-bookworm-go_agent.tgz",
            "[azure-vhd]",
            &["root.vhd"],
        ),
        (
            "light-bosh-stemcell-1.0-aws-xen-hvm-debian-bookworm-go_agent.tgz",
            "[aws-light]",
            &[],
        ),
    ];
    for (name, formats, inner) in cases {
        let tgz = dir.join(name);
        let list = check(Command::new("tar").arg("-tzf").arg(&tgz));
        assert_eq!(
            String::from_utf8_lossy(&list.stdout),
            "stemcell.MF\npackages.txt\ndev_tools_file_list.txt\nimage\n",
            "{name}: members and their order"
        );
        let d = work.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        check(Command::new("tar").arg("-xzf").arg(&tgz).arg("-C").arg(&d));
        let mf = std::fs::read_to_string(d.join("stemcell.MF")).unwrap();
        assert!(
            mf.contains(&format!("sha1: {}\n", sha1_of(&d.join("image")))),
            "{name}: sha1\n{mf}"
        );
        assert!(
            mf.contains(&format!("stemcell_formats: {formats}\n")),
            "{name}\n{mf}"
        );
        assert!(
            mf.contains("api_version: 3\n") && mf.contains("version: '1.0'\n"),
            "{name}\n{mf}"
        );
        for key in [
            "name",
            "version",
            "infrastructure",
            "hypervisor",
            "disk",
            "disk_format",
            "container_format",
            "os_type",
            "os_distro",
            "architecture",
        ] {
            assert!(
                mf.contains(&format!("\n  {key}: ")),
                "{name}: cloud_properties.{key}\n{mf}"
            );
        }
        if inner.is_empty() {
            assert_eq!(
                std::fs::metadata(d.join("image")).unwrap().len(),
                0,
                "{name}: light image"
            );
            assert!(
                mf.contains("sha1: da39a3ee5e6b4b0d3255bfef95601890afd80709\n"),
                "{mf}"
            );
            assert!(mf.contains("bosh_protocol: '1'\n"), "{mf}");
            assert!(mf.contains("  ami:\n    us-east-1: ami-"), "{mf}");
            continue;
        }
        assert!(mf.contains("bosh_protocol: 1\n"), "{name}\n{mf}");
        let list = check(Command::new("tar").arg("-tzf").arg(d.join("image")));
        let members: Vec<String> = String::from_utf8_lossy(&list.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(members, inner, "{name}: image members");
    }
    // the VHD: a fixed VHD footer, a whole number of MiB of disk before it
    let d = work.path().join("vhd");
    std::fs::create_dir_all(&d).unwrap();
    check(
        Command::new("tar")
            .arg("-xzf")
            .arg(
                work.path()
                    .join("bosh-stemcell-1.0-azure-hyperv-debian-bookworm-go_agent.tgz/image"),
            )
            .arg("-C")
            .arg(&d),
    );
    let mut vhd = std::fs::File::open(d.join("root.vhd")).unwrap();
    let len = vhd.metadata().unwrap().len();
    let mut footer = [0u8; 512];
    vhd.seek(SeekFrom::Start(len - 512)).unwrap();
    vhd.read_exact(&mut footer).unwrap();
    assert_eq!(&footer[..8], b"conectix");
    assert_eq!(
        u32::from_be_bytes(footer[60..64].try_into().unwrap()),
        2,
        "fixed disk type"
    );
    assert_eq!((len - 512) % (1024 * 1024), 0, "whole MiB");
}
