//! Every YAML/type-level error of a template in one run (`validate`,
//! `build`, `inspect`), `validate --json` as one event per error, and
//! `inspect` showing the builders' offline checks.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

const BIN: &str = env!("CARGO_BIN_EXE_opsbake");

struct T {
    dir: tempfile::TempDir,
}

impl T {
    fn new(template: &str) -> T {
        let t = T {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::write(t.path().join("sc.tgz"), "not read by validate").unwrap();
        std::fs::write(t.path().join("s.sh"), "true\n").unwrap();
        std::fs::write(t.path().join("t.yml"), template).unwrap();
        t
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    /// `opsbake <args>` with no AWS region anywhere unless `env` sets one:
    /// (exit code, stdout, stderr).
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
        let mut c = opsbake_test_support::cli::isolated(BIN, self.path());
        c.args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
    fn journals(&self) -> usize {
        std::fs::read_dir(self.path().join("state/builds"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

/// Two errors in one build: an unknown key and a wrong type.
const TWO: &str = "name: demo\nbuilds:\n  localtest:\n    cpu: 2\n    memory: [1]\n";

/// Three errors in three places: an unknown key in one build's options, a
/// wrong type in another build, an unknown key in the second step.
const THREE: &str = "name: demo\nstemcells:\n  vbox: {path: sc.tgz}\nbuilds:\n  localtest:\n    options: {bogus: 1}\n  vbox:\n    disk: {a: 1}\nprovision:\n  - type: shell\n    script: s.sh\n  - type: shell\n    scirpts: [s.sh]\n";

#[test]
fn two_errors_in_one_build_are_reported_in_one_run() {
    let t = T::new(TWO);
    let (code, _, err) = t.run(&["validate", "t.yml"], &[]);
    assert_eq!(code, 2, "{err}");
    for want in [
        "t.yml:4:5: builds.localtest.cpu: unknown field `cpu`",
        "t.yml:5:5: builds.localtest.memory: expected a number",
        "2 errors",
    ] {
        assert!(err.contains(want), "missing `{want}` in:\n{err}");
    }
    assert!(!err.contains("missing field"), "{err}");
    assert!(!err.contains("untagged"), "{err}");
}

#[test]
fn three_errors_in_builds_and_steps_are_reported_in_line_order() {
    let t = T::new(THREE);
    let (code, _, err) = t.run(&["validate", "t.yml"], &[]);
    assert_eq!(code, 2, "{err}");
    let wants = [
        "t.yml:6:15: builds.localtest.options.bogus: unknown field `bogus`",
        "t.yml:8:5: builds.vbox.disk: expected a number",
        "t.yml:13:5: provision[1].scirpts: unknown field `scirpts`",
        "3 errors",
    ];
    let mut at = 0;
    for want in wants {
        let found = err[at..].find(want);
        assert!(found.is_some(), "missing `{want}` (in order) in:\n{err}");
        at += found.unwrap_or(0);
    }
    // `build` reports the same three before anything is created.
    let (code, _, err) = t.run(&["build", "t.yml"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("3 errors"), "{err}");
    assert!(err.contains("provision[1].scirpts"), "{err}");
    assert_eq!(t.journals(), 0, "a journal was started: {err}");
}

#[test]
fn validate_json_is_one_event_per_error() {
    let t = T::new(THREE);
    let (code, out, _) = t.run(&["--json", "validate", "t.yml"], &[]);
    assert_eq!(code, 2, "{out}");
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let errors: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["event"] == "template_error")
        .collect();
    assert_eq!(errors.len(), 3, "{out}");
    assert_eq!(errors[0]["key"], "builds.localtest.options.bogus");
    assert_eq!(errors[0]["line"], 6);
    assert_eq!(errors[0]["column"], 15);
    assert!(errors[0]["file"].as_str().unwrap().ends_with("t.yml"));
    assert!(errors[0]["message"]
        .as_str()
        .unwrap()
        .starts_with("unknown field `bogus`"));
    assert_eq!(errors[2]["key"], "provision[1].scirpts");
    assert_eq!(errors[2]["line"], 13);
    // The last event is the summary with the exit code.
    let last = events.last().unwrap();
    assert_eq!(last["event"], "error", "{out}");
    assert_eq!(last["code"], 2, "{out}");
    assert_eq!(last["error"], "3 errors in the template", "{out}");

    // The plan-level errors (after the YAML level) are events too.
    let t = T::new("name: demo\nbuilds:\n  localtest:\n    cpus: two\n    memory: lots\n");
    let (code, out, _) = t.run(&["--json", "validate", "t.yml"], &[]);
    assert_eq!(code, 2, "{out}");
    let keys: Vec<String> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "template_error")
        .map(|e| e["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        keys,
        ["builds.localtest.cpus", "builds.localtest.memory"],
        "{out}"
    );
}

const AWS: &str = "name: demo\nstemcells:\n  aws: {path: sc.tgz}\nbuilds:\n  aws:\n    options: {copy_regions: [eu-west-1, eu-west-1]}\n";

#[test]
fn inspect_shows_the_builders_offline_checks() {
    let t = T::new(AWS);
    // No region: the plan is shown with the builder's error, exit 2.
    let (code, out, err) = t.run(&["inspect", "t.yml"], &[]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.contains("[aws] cpus="), "{out}");
    assert!(
        out.contains("error: ") && out.contains("t.yml:6:5: builds.aws.options.region: no region"),
        "{out}"
    );
    // With a region: the duplicate copy region is a warning, exit 0.
    let (code, out, err) = t.run(&["inspect", "t.yml"], &[("AWS_REGION", "us-east-1")]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("warning: ")
            && out.contains("builds.aws.options.copy_regions[1]: `eu-west-1` is listed twice"),
        "{out}"
    );
    let (code, out, err) = t.run(
        &["--json", "inspect", "t.yml"],
        &[("AWS_REGION", "us-east-1")],
    );
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let checks = v["builds"][0]["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 1, "{out}");
    assert_eq!(checks[0]["event"], "template_warning");
    assert_eq!(checks[0]["key"], "builds.aws.options.copy_regions[1]");
    assert_eq!(checks[0]["line"], 6);
    // A template error still stops inspect, every one of them.
    let t = T::new(TWO);
    let (code, _, err) = t.run(&["inspect", "t.yml"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("2 errors"), "{err}");
}
