//! A build's input digests made in the background (`manifest::Inputs`):
//! the same digests as made at once, inside a runtime or outside one.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use opsbake_core::manifest::{input_digests, sha256_file, Inputs};
use opsbake_core::plan::plan_build;
use opsbake_core::template::{parse, Iaas};
use opsbake_core::vars::{resolve, VarSources};

fn plan(dir: &std::path::Path) -> (opsbake_core::plan::BuildPlan, opsbake_core::vars::Vars) {
    std::fs::create_dir_all(dir.join("files")).unwrap();
    std::fs::write(dir.join("files/a.txt"), "alpha\n").unwrap();
    std::fs::write(dir.join("files/b.bin"), vec![9u8; 3 << 20]).unwrap();
    std::fs::write(dir.join("setup.sh"), "#!/bin/sh\ntrue\n").unwrap();
    let src = "name: t\nbuilds:\n  localtest: {}\nprovision:\n  - type: file\n    source: files/\n    destination: /tmp/files\n  - type: shell\n    script: setup.sh\n";
    let tpath = dir.join("t.yml");
    std::fs::write(&tpath, src).unwrap();
    let loaded = parse(&tpath, src.to_string()).unwrap();
    let vars = resolve(&loaded, &VarSources::default()).unwrap();
    let plan = plan_build(&loaded, &vars, Iaas::Localtest, "b-1").unwrap();
    (plan, vars)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_digests_equal_the_ones_made_at_once() {
    let d = tempfile::tempdir().unwrap();
    let (plan, vars) = plan(d.path());
    let now = input_digests(&plan, &vars).unwrap();
    let later = Inputs::start(&plan, &vars).get().await.unwrap();
    assert_eq!(later, now);
    assert_eq!(
        later.template,
        sha256_file(&d.path().join("t.yml")).unwrap()
    );
    assert_eq!(later.provisioning.len(), 3, "{:?}", later.provisioning);
    assert_eq!(
        later.provisioning.get("files/b.bin").map(String::as_str),
        Some(sha256_file(&d.path().join("files/b.bin")).unwrap().as_str())
    );
}

#[test]
fn outside_a_runtime_they_are_made_at_once() {
    let d = tempfile::tempdir().unwrap();
    let (plan, vars) = plan(d.path());
    let inputs = Inputs::start(&plan, &vars);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let got = rt.block_on(inputs.get()).unwrap();
    assert_eq!(got, input_digests(&plan, &vars).unwrap());
}

#[tokio::test]
async fn a_file_gone_before_the_read_fails_the_digests_naming_it() {
    let d = tempfile::tempdir().unwrap();
    let (plan, vars) = plan(d.path());
    std::fs::remove_file(d.path().join("setup.sh")).unwrap();
    let e = Inputs::start(&plan, &vars)
        .get()
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("setup.sh"), "{e}");
}
