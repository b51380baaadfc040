//! `opsbake validate` (and the validate step of `build`) against templates
//! a newcomer or a hostile input writes: builder offline checks at
//! file:line:col, every error in one run, parser positions (not a text
//! search), empty files, invalid UTF-8, host key pins.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Output;

const BIN: &str = env!("CARGO_BIN_EXE_opsbake");

struct T {
    dir: tempfile::TempDir,
}

impl T {
    fn new() -> T {
        let t = T {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::write(t.path().join("sc.tgz"), "not read by validate").unwrap();
        std::fs::write(t.path().join("s.sh"), "true\n").unwrap();
        t
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn write(&self, text: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path().join("t.yml");
        std::fs::write(&p, text).unwrap();
        p
    }
    /// `opsbake <args>` with no AWS region anywhere (no env, no config file).
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
        let mut c = opsbake_test_support::cli::isolated(BIN, self.path());
        c.args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        let out: Output = c.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    }
    fn validate(&self, env: &[(&str, &str)]) -> (i32, String) {
        self.run(&["validate", "t.yml"], env)
    }
}

const AWS: &str = "name: demo\nvariables:\n  v: {default: \"1.0\"}\n  key: {default: \"s3cr3t-name-part\", sensitive: true}\nstemcells:\n  aws: {path: sc.tgz}\nbuilds:\n  aws:\n    options: {ami_name: \"app:${var.v}\"}\n";

#[test]
fn an_aws_build_without_a_region_fails_validate_at_its_place() {
    let t = T::new();
    t.write(AWS);
    let (code, out) = t.validate(&[]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("t.yml:9:5: builds.aws.options.region: no region"),
        "{out}"
    );
    assert!(!out.contains("valid ("), "{out}");
    // `build` refuses the same way, before anything is created.
    let (code, out) = t.run(&["build", "t.yml"], &[]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("t.yml:9:5: builds.aws.options.region: no region"),
        "{out}"
    );
    let journals = std::fs::read_dir(t.path().join("state/builds"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(journals, 0, "a journal was started: {out}");
    // An empty AWS_REGION counts as unset; a config file's profile counts.
    let (code, out) = t.validate(&[("AWS_REGION", "")]);
    assert!(code == 2 && out.contains("no region"), "{out}");
    std::fs::write(t.path().join("cfg"), "[profile ops]\nregion = eu-west-1\n").unwrap();
    let cfg = t.path().join("cfg").display().to_string();
    let (code, out) = t.validate(&[("AWS_CONFIG_FILE", &cfg), ("AWS_PROFILE", "ops")]);
    assert_eq!(code, 2, "{out}");
    assert!(!out.contains("no region"), "{out}");
}

#[test]
fn ami_names_are_checked_after_interpolation_with_the_rule() {
    let t = T::new();
    t.write(AWS);
    let (code, out) = t.validate(&[("AWS_REGION", "us-east-1")]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("t.yml:9:15: builds.aws.options.ami_name: the AMI name `app:1.0` holds `:`"),
        "{out}"
    );
    assert!(out.contains("3 to 128 characters"), "{out}");
    // A sensitive variable is named, its value never shown.
    t.write(AWS.replace("app:${var.v}", "app:${var.key}"));
    let (code, out) = t.validate(&[("AWS_REGION", "us-east-1")]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("`app:${var.key}`"), "{out}");
    assert!(!out.contains("s3cr3t-name-part"), "{out}");
    // A key id without its secret (an empty secret counts as unset).
    t.write(AWS.replace("app:${var.v}", "app-${var.v}"));
    let (code, out) = t.validate(&[
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE"),
        ("AWS_SECRET_ACCESS_KEY", ""),
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("t.yml:8:3: builds.aws: AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is unset or empty"), "{out}");
    let (code, out) = t.validate(&[("AWS_REGION", "us-east-1")]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn copy_regions_duplicates_are_warned_with_their_place() {
    let t = T::new();
    t.write("name: demo\nstemcells:\n  aws: {path: sc.tgz}\nbuilds:\n  aws:\n    options:\n      region: us-east-1\n      copy_regions: [eu-west-1, us-east-1, eu-west-1]\n");
    let (code, out) = t.validate(&[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("warning: "), "{out}");
    assert!(
        out.contains(
            "t.yml:8:33: builds.aws.options.copy_regions[1]: `us-east-1` is the build's own region"
        ),
        "{out}"
    );
    assert!(
        out.contains("t.yml:8:44: builds.aws.options.copy_regions[2]: `eu-west-1` is listed twice"),
        "{out}"
    );
    assert!(out.contains("valid (aws)"), "{out}");
}

#[test]
fn every_error_of_a_template_is_reported_in_one_run() {
    let t = T::new();
    t.write("name: demo\n# provision:\n#   - {type: shell, scripts: [missing.sh]}\nvariables:\n  a: {default: \"${var.b}\"}\n  b: {default: \"${var.a}\"}\n  c: {default: \"${var.d}\"}\n  d: {default: \"${var.c}\"}\nbuilds:\n  localtest:\n    cpus: two\n    memory: lots\nprovision:\n  - type: shell\n    scripts: [s.sh, missing.sh]\n");
    let (code, out) = t.validate(&[]);
    assert_eq!(code, 2, "{out}");
    for want in [
        "t.yml:5:3: variables.a: circular reference: a -> b -> a",
        "t.yml:7:3: variables.c: circular reference: c -> d -> c",
        "t.yml:11:11: builds.localtest.cpus: `two` is not a valid value",
        "t.yml:12:13: builds.localtest.memory: `lots` is not a valid value",
        // the step's own entry, not the comment on line 3
        "t.yml:15:21: provision[0].scripts[1]:",
        "5 errors",
    ] {
        assert!(out.contains(want), "missing `{want}` in:\n{out}");
    }
    assert_eq!(out.matches("circular reference").count(), 2, "{out}");
}

#[test]
fn empty_comment_only_and_invalid_utf8_files() {
    let t = T::new();
    for text in ["", "# a template will go here\n\n# later\n"] {
        t.write(text);
        let (code, out) = t.validate(&[]);
        assert_eq!(code, 2, "{out}");
        assert!(out.contains("empty template"), "{out}");
        assert!(!out.contains("missing field"), "{out}");
    }
    t.write(b"name: demo\nbuilds:\n  localtest: {}\ndescription: \"caf\xe9\"\n".as_slice());
    let (code, out) = t.validate(&[]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("t.yml:4:18: (file): invalid UTF-8 at byte offset 52"),
        "{out}"
    );
}

#[test]
fn host_key_pins_are_checked_by_validate() {
    let t = T::new();
    t.write("name: demo\nbuilds:\n  localtest:\n    ssh:\n      host_key: {pin: [not-a-key]}\n");
    let (code, out) = t.validate(&[]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(
            "t.yml:5:24: builds.localtest.ssh.host_key.pin[0]: `not-a-key` is not a host key"
        ),
        "{out}"
    );
    // A whole known_hosts line is a pin; so is a known_hosts file's entry.
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f";
    t.write(format!("name: demo\nbuilds:\n  localtest:\n    ssh:\n      host_key: {{pin: [\"vm,[127.0.0.1]:2222 {key} root@vm\"]}}\n"));
    let (code, out) = t.validate(&[]);
    assert_eq!(code, 0, "{out}");
    std::fs::write(
        t.path().join("known_hosts"),
        format!("[127.0.0.1]:2222 {key}\n"),
    )
    .unwrap();
    t.write("name: demo\nbuilds:\n  localtest:\n    ssh:\n      host: 127.0.0.1\n      port: 2222\n      host_key: {known_hosts: known_hosts}\n");
    let (code, out) = t.validate(&[]);
    assert_eq!(code, 0, "{out}");
    t.write("name: demo\nbuilds:\n  localtest:\n    ssh:\n      host_key: {known_hosts: known_hosts, host: other}\n");
    let (code, out) = t.validate(&[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("holds no key for other"), "{out}");
}
