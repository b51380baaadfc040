//! `opsbake import-packer` through the binary: exit codes, the report, a
//! converted template that `opsbake validate` accepts, and the equivalence
//! test: Debian's Packer 1.6.6 (null builder) runs a Packer template
//! against the test sshd, `opsbake build --iaas ssh` runs its conversion
//! against the same sshd, and both leave the same files (paths, contents,
//! modes) and print the same script output lines.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use opsbake_test_support::sshd::{skip_peers, Sshd, SshdError, SshdOptions};

const BIN: &str = env!("CARGO_BIN_EXE_opsbake");

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packer-import/tests/fixtures")
}

fn opsbake(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .current_dir(dir)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--no-progress")
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn converts_reports_and_validates() {
    let d = tempfile::tempdir().unwrap();
    let src = fixtures().join("amazon-ebs.json");
    let o = opsbake(
        d.path(),
        &["import-packer", src.to_str().unwrap(), "-o", "app.yml"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("aws-appliance -> aws"), "{err}");
    assert!(
        err.contains("amazon-ebs.json:19:5: builders[0].source_ami: replaced by the stemcell"),
        "{err}"
    );
    // Refuses to overwrite without --force.
    let o2 = opsbake(
        d.path(),
        &["import-packer", src.to_str().unwrap(), "-o", "app.yml"],
    );
    assert_eq!(o2.status.code(), Some(2), "{}", text(&o2));
    assert!(String::from_utf8_lossy(&o2.stderr).contains("--force"));
    // The result validates once the stemcell and the required variable are given.
    std::fs::write(d.path().join("sc.tgz"), "x").unwrap();
    let v = opsbake(
        d.path(),
        &[
            "validate",
            "app.yml",
            "--var",
            "stemcell_aws=sc.tgz",
            "--var",
            "kms_key=k",
        ],
    );
    assert_eq!(v.status.code(), Some(0), "{}", text(&v));
    // Without -o the template goes to stdout; --json gives the report as JSON.
    let j = opsbake(
        d.path(),
        &["--json", "import-packer", src.to_str().unwrap()],
    );
    assert_eq!(j.status.code(), Some(0), "{}", text(&j));
    let ev: serde_json::Value = serde_json::from_slice(&j.stdout).unwrap();
    assert_eq!(ev["event"], "imported");
    assert_eq!(ev["builds"][0]["iaas"], "aws");
    assert!(ev["yaml"]
        .as_str()
        .unwrap()
        .contains("ami_name: \"appliance-${var.version}-${build.id}\""));
    assert!(ev["notes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["key"] == "builders[0].user_data_file"));
}

#[test]
fn not_packer_and_broken_input_exit_2() {
    let d = tempfile::tempdir().unwrap();
    for (name, body, expect) in [
        (
            "package.json",
            "{\"name\": \"x\"}",
            "not a Packer template: no `builders`",
        ),
        ("t.yml", "name: x\nbuilds: {}\n", "not a Packer template"),
        (
            "broken.json",
            "{\"builders\": [\n  {\"type\": }\n]}",
            "broken.json:2:12:",
        ),
    ] {
        std::fs::write(d.path().join(name), body).unwrap();
        let o = opsbake(d.path(), &["import-packer", name]);
        assert_eq!(o.status.code(), Some(2), "{name}: {}", text(&o));
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains(expect), "{name}: {e}");
        assert!(o.stdout.is_empty(), "{name}: wrote a template");
    }
    let o = opsbake(d.path(), &["import-packer", "missing.json"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing.json"));
}

/// Every file under `root`: relative path -> (mode, contents).
fn tree(root: &Path) -> BTreeMap<String, (u32, String)> {
    fn walk(base: &Path, d: &Path, out: &mut BTreeMap<String, (u32, String)>) {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                out.insert(
                    format!("{rel}/"),
                    (md.permissions().mode() & 0o7777, String::new()),
                );
                walk(base, &p, out);
            } else {
                out.insert(
                    rel,
                    (
                        md.permissions().mode() & 0o7777,
                        std::fs::read_to_string(&p).unwrap(),
                    ),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// The `EQV:` lines a tool printed, in order, without the tool's prefixes.
fn eqv_lines(o: &Output) -> Vec<String> {
    let all = format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let mut v: Vec<String> = all
        .lines()
        .filter_map(|l| l.find("EQV:").map(|i| l[i..].trim_end().to_string()))
        .collect();
    // stdout and stderr are read separately: compare as a set of lines, and
    // the stdout order separately below.
    v.sort();
    v
}

fn stdout_eqv_order(o: &Output, stream_stdout: bool) -> Vec<String> {
    let s = if stream_stdout { &o.stdout } else { &o.stderr };
    String::from_utf8_lossy(s)
        .lines()
        .filter_map(|l| l.find("EQV:").map(|i| l[i..].trim_end().to_string()))
        .filter(|l| !l.contains("(stderr)"))
        .collect()
}

#[test]
fn converted_template_has_the_same_effect_as_packer_null_builder() {
    let d = tempfile::tempdir().unwrap();
    let key = d.path().join("id_ed25519");
    let kg = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "eqv", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(kg.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let sshd = match Sshd::start(SshdOptions {
        authorized_keys: vec![public.trim().to_string()],
        ..SshdOptions::default()
    }) {
        Ok(s) => s,
        Err(e @ SshdError::Missing { .. }) if skip_peers() => {
            eprintln!("skipped: {e}");
            return;
        }
        Err(e) => panic!("test sshd: {e}"),
    };
    let fx = fixtures().join("equivalence");
    let port = sshd.port().to_string();
    let out_packer = sshd.home().join("out-packer");
    let out_opsbake = sshd.home().join("out-opsbake");
    let local_packer = d.path().join("local-packer.txt");
    let local_opsbake = d.path().join("local-opsbake.txt");

    // 1. Packer 1.6.6, null builder, run from the template's directory.
    let home = d.path().join("packer-home");
    std::fs::create_dir_all(&home).unwrap();
    let pk = Command::new("packer")
        .current_dir(&fx)
        .args(["build", "-color=false"])
        .args(["-var", "host=127.0.0.1", "-var"])
        .arg(format!("port={port}"))
        .arg("-var")
        .arg(format!("key={}", key.display()))
        .arg("-var")
        .arg(format!("out={}", out_packer.display()))
        .arg("-var")
        .arg(format!("local_out={}", local_packer.display()))
        .arg("packer.json")
        .env("CHECKPOINT_DISABLE", "1")
        .env("PACKER_CACHE_DIR", home.join("cache"))
        .env("HOME", &home)
        .output()
        .expect("packer (Debian's 1.6.6) is needed: .ci/setup.d/10-sshd.sh installs it");
    assert!(pk.status.success(), "packer: {}", text(&pk));

    // 2. The conversion, in another directory (paths are rebased), as an
    //    ssh build: the test sshd is on loopback, which the ssh builder
    //    refuses unless allowed.
    let conv_dir = d.path().join("converted");
    std::fs::create_dir_all(&conv_dir).unwrap();
    let o = opsbake(
        &conv_dir,
        &[
            "import-packer",
            fx.join("packer.json").to_str().unwrap(),
            "-o",
            "eqv.yml",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let yml = conv_dir.join("eqv.yml");
    let mut doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&yml).unwrap()).unwrap();
    doc["builds"]["ssh"]["options"] = serde_yaml_ng::from_str("{allow_loopback: true}").unwrap();
    std::fs::write(&yml, serde_yaml_ng::to_string(&doc).unwrap()).unwrap();
    let ob = opsbake(
        &conv_dir,
        &[
            "build",
            "eqv.yml",
            "--iaas",
            "ssh",
            "--var",
            "host=127.0.0.1",
            "--var",
            &format!("port={port}"),
            "--var",
            &format!("key={}", key.display()),
            "--var",
            &format!("out={}", out_opsbake.display()),
            "--var",
            &format!("local_out={}", local_opsbake.display()),
        ],
    );
    assert_eq!(ob.status.code(), Some(0), "opsbake: {}", text(&ob));

    // Same files, contents and modes on the host.
    let tp = tree(&out_packer);
    let to = tree(&out_opsbake);
    assert!(tp.contains_key("files/tree/sub/b.txt"), "{tp:?}");
    assert_eq!(tp["args.txt"].1, "from-exec\n");
    assert_eq!(tp["sequence.txt"].1, "one\ntwo\n");
    assert_eq!(
        tp["greeting.txt"].1,
        "hello \"world\", it's $HOME and `backticks`\n"
    );
    assert_eq!(to, tp, "opsbake's files differ from Packer's");
    // The same shell-local effect.
    assert_eq!(
        std::fs::read_to_string(&local_opsbake).unwrap(),
        std::fs::read_to_string(&local_packer).unwrap()
    );
    // The same script output lines (stdout in the same order).
    let (lp, lo) = (eqv_lines(&pk), eqv_lines(&ob));
    assert_eq!(lp.len(), 7, "{lp:?}\n{}", text(&pk));
    assert_eq!(
        lo,
        lp,
        "opsbake printed other lines than Packer:\n{}",
        text(&ob)
    );
    // Packer prints everything on stdout; opsbake's human output is stderr.
    assert_eq!(stdout_eqv_order(&ob, false), stdout_eqv_order(&pk, true));
}
