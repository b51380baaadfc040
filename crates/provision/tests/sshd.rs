//! Provisioning over SSH against the hardened OpenSSH sshd of the test
//! peers (a private mount namespace with user vcap). Never the hand-off: it
//! would change the host (a test below shows it refuses).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::Harness;
use opsbake_comms_ssh::{
    Auth, HostKeyPolicy, HostKeyVerifier, KeyKind, KeyPair, SshOptions, SshTransport, Target,
};
use opsbake_core::builder::{Provisioning, RunOptions};
use opsbake_core::template::Iaas;
use opsbake_core::transport::{Stream, Transport};
use opsbake_provision::{Provision, ProvisionOptions};
use opsbake_test_support::sshd::{skip_peers, Sshd, SshdError, SshdOptions, USER};

/// A directory vcap can read (and a world-writable log dir in it) holding
/// test doubles for `sudo` and `chef-solo`, put first on PATH by sshd's
/// `SetEnv` (the guest of these tests has neither root for vcap nor Chef).
struct Fakes {
    dir: tempfile::TempDir,
}

impl Fakes {
    fn new() -> Fakes {
        // sudo: records its arguments, drops -n, runs the rest as vcap.
        Fakes::with_sudo(
            "#!/bin/sh\nprintf '%s\\n' \"sudo $*\" >> {log}/sudo.log\n[ \"$1\" = -n ] && shift\nexec \"$@\"\n",
        )
    }

    /// With this `sudo` (`{log}` in it: the log dir).
    fn with_sudo(sudo: &str) -> Fakes {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = dir.path().join("bin");
        let log = dir.path().join("log");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&log).unwrap();
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let write = |name: &str, text: String| {
            let p = bin.join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        write("sudo", sudo.replace("{log}", &log.display().to_string()));
        // chef-solo: records argv, the files it was given and the cookbooks it sees.
        write(
            "chef-solo",
            format!(
                "#!/bin/sh\nL={log}\nprintf '%s\\n' \"$@\" > $L/chef.argv\nwhile [ $# -gt 0 ]; do case \"$1\" in -c) cp \"$2\" $L/solo.rb; shift;; -j) cp \"$2\" $L/node.json; shift;; esac; shift; done\nsed -n \"s/^cookbook_path \\['\\(.*\\)'\\]$/\\1/p\" $L/solo.rb | xargs -I{{}} find {{}} -type f | sort > $L/cookbooks.txt\necho 'Chef Infra Client (test double) finished'\n",
                log = log.display()
            ),
        );
        Fakes { dir }
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join("log").join(name)).unwrap_or_default()
    }
}

/// The sshd peer and a connection to it; None only when the peer is missing
/// and OPSBAKE_SKIP_PEERS=1 (otherwise a missing sshd fails the test).
async fn connect(fakes: Option<&Fakes>) -> Option<(Sshd, Arc<dyn Transport>)> {
    let key = KeyPair::generate(KeyKind::Ed25519, "opsbake-test").unwrap();
    let mut o = SshdOptions::default();
    o.authorized_keys.push(key.public_openssh().to_string());
    if let Some(f) = fakes {
        o.extra_config.push(format!(
            "SetEnv PATH={}:/usr/local/bin:/usr/bin:/bin",
            f.bin().display()
        ));
    }
    let sshd = match Sshd::start(o) {
        Ok(s) => s,
        Err(e @ SshdError::Missing { .. }) if skip_peers() => {
            eprintln!("skipped (OPSBAKE_SKIP_PEERS=1): {e}");
            return None;
        }
        Err(e) => panic!("test sshd: {e}"),
    };
    let hk = HostKeyVerifier::new(HostKeyPolicy::Pin(sshd.host_public_keys().to_vec()));
    let target = Target {
        host: sshd.addr().ip().to_string(),
        port: sshd.port(),
        user: USER.to_string(),
    };
    let mut opts = SshOptions::new(target, Auth::Key(key), hk);
    opts.login_timeout = Duration::from_secs(20);
    let t = SshTransport::connect(opts).await.unwrap();
    Some((sshd, Arc::new(t)))
}

/// [`connect`] with `fakes` on PATH, and a harness for `yaml` with
/// `files`; None only when the peer is missing and skipped.
async fn over_ssh(
    fakes: &Fakes,
    yaml: &str,
    files: &[(&str, &str, u32)],
) -> Option<(Sshd, Arc<dyn Transport>, Harness)> {
    let (sshd, t) = connect(Some(fakes)).await?;
    let h = Harness::new(yaml, Iaas::Ssh, files, RunOptions::default());
    Some((sshd, t, h))
}

/// The build error of provisioning `h` over `t` (it must fail), as text.
async fn run_err(h: &Harness, t: Arc<dyn Transport>) -> String {
    Provision::default()
        .run(&h.ctx, t)
        .await
        .unwrap_err()
        .to_string()
}

const HEAD: &str = "name: t\nbuilds:\n  ssh:\n    ssh: {host: 127.0.0.1, password: unused}\n    options: {allow_loopback: true}\n";

fn staging(h: &Harness) -> PathBuf {
    Path::new("/var/tmp/opsbake").join(h.ctx.build_id())
}

#[tokio::test]
async fn over_ssh_scripts_call_each_other_through_the_staging_dir_with_env_intact() {
    let fakes = Fakes::new();
    let yaml = format!(
        "{HEAD}provision:\n  - type: shell\n    scripts: [provisioning/setup.sh]\n    environment_vars:\n      GREETING: \"it's a \\\"quoted\\\" value  with  spaces $HOME `x` \\\\ end\"\n      EMPTY: \"\"\n  - type: shell\n    inline: [\"echo user=$(id -un) dir=$(basename $(pwd))\", \"common.sh inline\"]\n    sudo: false\n  - type: shell\n    script: provisioning/lib/common.sh\n    sudo: false\n"
    );
    let Some((_sshd, t, h)) = over_ssh(
        &fakes,
        &yaml,
        &[
            (
                "provisioning/setup.sh",
                "#!/bin/sh\nset -e\nprintf 'greeting=[%s] empty=[%s]\\n' \"$GREETING\" \"$EMPTY\"\ncommon.sh by-name\n\"$OPSBAKE_STAGING/scripts/common.sh\" by-path\nls \"$OPSBAKE_STAGING/scripts\" | tr '\\n' ' '\necho\necho err-line >&2\n",
                0o755,
            ),
            ("provisioning/lib/common.sh", "#!/bin/sh\necho \"common $1\"\n", 0o755),
        ],
    )
    .await
    else {
        return;
    };
    Provision::default().run(&h.ctx, t.clone()).await.unwrap();

    let out = h.output("shell setup.sh");
    let stdout: Vec<String> = out
        .iter()
        .filter(|(s, _)| *s == Stream::Stdout)
        .map(|(_, l)| l.clone())
        .collect();
    assert_eq!(
        stdout,
        [
            "greeting=[it's a \"quoted\" value  with  spaces $HOME `x` \\ end] empty=[]"
                .to_string(),
            "common by-name".to_string(),
            "common by-path".to_string(),
            "common.sh inline-02.sh setup.sh ".to_string(),
        ]
    );
    assert_eq!(
        out.iter()
            .filter(|(s, _)| *s == Stream::Stderr)
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>(),
        ["err-line"]
    );
    assert_eq!(
        h.output("shell"),
        [
            (Stream::Stdout, "user=vcap dir=scripts".to_string()),
            (Stream::Stdout, "common inline".to_string())
        ]
    );
    // The default command went through sudo (the double) with env and the wrapper.
    let sudo = fakes.log("sudo.log");
    let st = staging(&h).display().to_string();
    assert!(
        sudo.lines().any(|l| l.starts_with(&format!(
            "sudo -n env OPSBAKE_STAGING={st} EMPTY= GREETING=it's a"
        )) && l.ends_with(&format!("{st}/run {st}/scripts/setup.sh"))),
        "{sudo}"
    );
    assert!(!staging(&h).exists(), "staging dir removed at the end");
}

#[tokio::test]
async fn over_ssh_a_bad_exit_code_fails_with_the_output_tail() {
    let Some((_sshd, t)) = connect(None).await else {
        return;
    };
    let yaml = format!(
        "{HEAD}provision:\n  - type: shell\n    name: fails\n    sudo: false\n    inline: [\"seq 1 40\", \"echo boom >&2\", \"exit 42\"]\n    valid_exit_codes: [0, 1]\n"
    );
    let h = Harness::new(&yaml, Iaas::Ssh, &[], RunOptions::default());
    let e = run_err(&h, t).await;
    assert!(
        e.starts_with("step `fails` failed: exit code 42 (valid exit codes: [0, 1])"),
        "the step named once: {e}"
    );
    assert!(e.contains("last 20 line(s)"), "{e}");
    assert!(
        e.contains("stdout| 22\n") && e.contains("stdout| 40\n"),
        "{e}"
    );
    assert!(!e.contains("stdout| 21\n"), "{e}");
    assert!(e.ends_with("stderr| boom"), "{e}");
    assert!(!staging(&h).exists());
}

/// The login user's `sudo -n` wants a password (no NOPASSWD rule, as
/// sudo says it): the step's runner fails before its first script starts.
/// The error says so and carries sudo's words; it used to read as the
/// first script's failure ("exit code 1 (valid exit codes: [0])"), and the
/// build error said "step `x` failed: " twice.
#[tokio::test]
async fn over_ssh_a_sudo_that_wants_a_password_fails_the_step_not_its_first_script() {
    let fakes = Fakes::with_sudo("#!/bin/sh\necho 'sudo: a password is required' >&2\nexit 1\n");
    let yaml = format!(
        "{HEAD}provision:\n  - type: shell\n    scripts: [provisioning/a.sh, provisioning/b.sh]\n"
    );
    let files = [
        ("provisioning/a.sh", "#!/bin/sh\necho a\n", 0o755),
        ("provisioning/b.sh", "#!/bin/sh\necho b\n", 0o755),
    ];
    let Some((_sshd, t, h)) = over_ssh(&fakes, &yaml, &files).await else {
        return;
    };
    let e = run_err(&h, t).await;
    // The step is labelled after its first script (`shell a.sh`); the
    // error says the script never ran, and shows no script's exit code.
    assert!(
        e.starts_with(
            "step `shell a.sh` failed: exit code 1 before its first script started; last 1 line(s) of output:"
        ),
        "{e}"
    );
    assert!(e.ends_with("stderr| sudo: a password is required"), "{e}");
    assert!(!e.contains("valid exit codes"), "{e}");
    assert_eq!(
        h.output("shell a.sh"),
        [(Stream::Stderr, "sudo: a password is required".to_string())]
    );
    let m = h.messages();
    assert!(!m.iter().any(|l| l.contains("running a.sh")), "{m:?}");
}

#[tokio::test]
async fn over_ssh_chef_solo_is_staged_and_invoked_with_the_test_double() {
    let fakes = Fakes::new();
    let Some((_sshd, t)) = connect(Some(&fakes)).await else {
        return;
    };
    let yaml = format!(
        "{HEAD}provision:\n  - type: chef-solo\n    cookbook_paths: [recipes]\n    roles_path: roles\n    data_bags_path: data_bags\n    run_list: [\"recipe[appliance::default]\", \"role[web]\"]\n    json: {{appliance: {{port: 8080, name: \"it's\"}}}}\n"
    );
    let h = Harness::new(
        &yaml,
        Iaas::Ssh,
        &[
            (
                "recipes/appliance/recipes/default.rb",
                "log 'hello'\n",
                0o644,
            ),
            ("recipes/appliance/metadata.rb", "name 'appliance'\n", 0o644),
            ("roles/web.json", "{\"name\":\"web\"}\n", 0o644),
            ("data_bags/users/u.json", "{\"id\":\"u\"}\n", 0o644),
        ],
        RunOptions {
            debug: true,
            ..Default::default()
        },
    );
    Provision::default().run(&h.ctx, t).await.unwrap();
    let st = staging(&h).display().to_string();
    let argv: Vec<String> = fakes.log("chef.argv").lines().map(String::from).collect();
    assert_eq!(
        argv,
        [
            "--no-color",
            "-c",
            &format!("{st}/chef-01/solo.rb"),
            "-j",
            &format!("{st}/chef-01/node.json"),
            "-l",
            "debug"
        ]
    );
    assert!(fakes
        .log("sudo.log")
        .contains("sudo -n chef-solo --no-color"));
    let solo = fakes.log("solo.rb");
    assert!(
        solo.contains(&format!("cookbook_path ['{st}/chef-01/cookbooks-0']")),
        "{solo}"
    );
    assert!(
        solo.contains(&format!("role_path '{st}/chef-01/roles'")),
        "{solo}"
    );
    assert!(
        solo.contains(&format!("data_bag_path '{st}/chef-01/data_bags'")),
        "{solo}"
    );
    assert!(solo.contains("log_level :debug"), "{solo}");
    let node: serde_json::Value = serde_json::from_str(&fakes.log("node.json")).unwrap();
    assert_eq!(
        node["run_list"],
        serde_json::json!(["recipe[appliance::default]", "role[web]"])
    );
    assert_eq!(node["appliance"]["name"], "it's");
    assert_eq!(
        fakes
            .log("cookbooks.txt")
            .lines()
            .map(String::from)
            .collect::<Vec<_>>(),
        [
            format!("{st}/chef-01/cookbooks-0/appliance/metadata.rb"),
            format!("{st}/chef-01/cookbooks-0/appliance/recipes/default.rb"),
        ]
    );
    assert_eq!(
        h.output("chef-solo"),
        [(
            Stream::Stdout,
            "Chef Infra Client (test double) finished".to_string()
        )]
    );
}

#[tokio::test]
async fn over_ssh_file_trees_keep_modes() {
    let Some((sshd, t)) = connect(None).await else {
        return;
    };
    let dest = sshd.home().join("app");
    let yaml = format!(
        "{HEAD}provision:\n  - type: file\n    source: tree/\n    destination: {d}\n  - type: file\n    source: tree/etc/conf\n    destination: {d}/single/\n    mode: \"0600\"\n  - type: file\n    direction: download\n    source: {d}/bin/run\n    destination: back/run\n",
        d = dest.display()
    );
    let h = Harness::new(
        &yaml,
        Iaas::Ssh,
        &[
            ("tree/bin/run", "#!/bin/sh\necho run\n", 0o750),
            ("tree/etc/conf", "x=1\n", 0o640),
            ("tree/etc/deep/er/f", "f\n", 0o604),
        ],
        RunOptions::default(),
    );
    Provision::default().run(&h.ctx, t).await.unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&dest.join("bin/run")), 0o750);
    assert_eq!(mode(&dest.join("etc/conf")), 0o640);
    assert_eq!(mode(&dest.join("etc/deep/er/f")), 0o604);
    assert_eq!(mode(&dest.join("single/conf")), 0o600);
    assert_eq!(
        std::fs::read_to_string(h.path().join("back/run")).unwrap(),
        "#!/bin/sh\necho run\n"
    );
}

#[tokio::test]
async fn over_ssh_the_handoff_refuses_the_build_host_even_when_loopback_is_allowed() {
    let Some((_sshd, t)) = connect(None).await else {
        return;
    };
    let yaml = format!("{HEAD}provision:\n  - type: handoff\n");
    let h = Harness::new(&yaml, Iaas::Ssh, &[], RunOptions::default());
    let p = Provision::new(ProvisionOptions {
        allow_loopback_handoff: true,
        ..Default::default()
    });
    let e = p.run(&h.ctx, t).await.unwrap_err().to_string();
    assert!(e.contains("hand-off refused"), "{e}");
    assert!(e.contains("boot id"), "{e}");
    assert!(!staging(&h).exists());
}
