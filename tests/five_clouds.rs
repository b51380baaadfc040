//! Five clouds at once (issue 16): `opsbake build images/appliance.yml
//! --iaas aws,gcp,azure,vsphere,vbox` against every test peer in one run
//! (moto, the Compute Engine test server + fake-gcs-server, the ARM test
//! server + azurite, vcsim, QEMU), then the partial results: a failing
//! build leaves the others running (without `--fail-fast`) or cancels and
//! unwinds them (with it), and Ctrl-C (once: every build unwinds and the
//! process says what it deleted; twice: it stops at once and says to run
//! `opsbake cleanup`) leaves nothing on any peer.
//!
//! The peers, the one command combining images/{moto,gce,azure,vsphere}.vars.yml
//! and the streaming of `--json` events are in clouds_support/. Needs the
//! test peers of scripts/setup.sh (fails without them unless
//! `OPSBAKE_SKIP_PEERS=1`); the five-way test boots a QEMU guest and runs in
//! nextest's qemu group (.config/nextest.toml).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod aws_support;
mod clouds_support;
mod gcp_support;

use std::time::Duration;

use clouds_support::*;
use opsbake_core::journal::Outcome;
use serde_json::Value;

const FIVE: [&str; 5] = ["aws", "gcp", "azure", "vsphere", "vbox"];

fn manifest(c: &Clouds) -> Value {
    let p = c.dir.path().join("out/appliance/manifest.json");
    serde_json::from_str(
        &std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    )
    .unwrap()
}

fn sha256(path: &std::path::Path) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

fn qemu_present() -> bool {
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .any(|d| d.join("qemu-system-x86_64").is_file() && d.join("qemu-img").is_file())
        })
        .unwrap_or(false)
}

/// Run `iaases` to the end, playing vSphere's VM when it is one of them.
fn run(c: &Clouds, iaases: &[&str], extra: &[&str], name: &str) -> (Build, i32, f64) {
    let mut b = Build::start(c.command(iaases, true, extra), c.dir.path(), name);
    if iaases.contains(&"vsphere") {
        play_vsphere(&mut b, c);
    }
    let (code, wall) = b.finish(1800);
    (b, code, wall)
}

#[test]
fn qemu_all_five_clouds_at_once_one_manifest_then_the_slowest_alone() {
    if !qemu_present() {
        assert!(
            opsbake_test_support::skip_peers(),
            "qemu-system-x86_64 and qemu-img missing: run scripts/setup.sh"
        );
        return;
    }
    let Some(c) = Clouds::start(&FIVE, PeerOptions::default()) else {
        return;
    };
    bin(); // found (or built) before the clock starts
    let (b, code, wall) = run(&c, &FIVE, &[], "five");
    assert_eq!(
        code,
        0,
        "stderr:\n{}\nlast events:\n{:#?}",
        b.stderr(),
        b.seen.iter().rev().take(40).collect::<Vec<_>>()
    );
    // all succeeded; all five ran at the same time: the last start comes
    // before the first end
    let mut spans = Vec::new();
    for i in FIVE {
        let f = b.finished(i);
        assert_eq!(f["outcome"], "succeeded", "{i}: {f}");
        spans.push((
            i,
            ts(b.started_event(i)),
            ts(f),
            f["seconds"].as_f64().unwrap(),
        ));
    }
    let last_start = spans.iter().map(|s| s.1).max().unwrap();
    let first_end = spans.iter().map(|s| s.2).min().unwrap();
    assert!(
        last_start < first_end,
        "the five builds did not overlap: {spans:?}"
    );
    // one manifest: every artifact, with the digests of its inputs
    let m = manifest(&c);
    let template_sha = sha256(&repo_root().join("images/appliance.yml"));
    let builds = m["builds"].as_array().unwrap();
    assert_eq!(builds.len(), 5, "{m:#}");
    for i in FIVE {
        let f = b.finished(i);
        let e = builds
            .iter()
            .find(|e| e["builder_type"] == format!("opsbake-{i}"))
            .unwrap_or_else(|| panic!("no {i} build in the manifest: {m:#}"));
        assert_eq!(e["artifact_id"], f["artifact_id"], "{i}");
        assert_eq!(e["packer_run_uuid"], f["build_id"], "{i}");
        assert_eq!(e["inputs"]["template"], template_sha.as_str(), "{i}");
        assert_eq!(e["inputs"]["variables"].as_str().unwrap().len(), 64, "{i}");
        let stemcell = e["inputs"]["stemcell"].as_str().unwrap_or("");
        assert_eq!(stemcell.len(), 64, "{i}: {e:#}");
        assert!(e["build_seconds"].as_f64().unwrap() > 0.0, "{i}");
    }
    // the vbox build ran the appliance's steps: their files are digested
    let vbox = builds
        .iter()
        .find(|e| e["builder_type"] == "opsbake-vbox")
        .unwrap();
    assert!(
        vbox["inputs"]["provisioning"]
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.contains("provisioning/")),
        "{vbox:#}"
    );
    let last: Vec<(&str, &str)> = m["last_run"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["iaas"].as_str().unwrap(), r["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(last.len(), 5, "{m:#}");
    assert!(last.iter().all(|(_, o)| *o == "succeeded"), "{last:?}");
    // every journal clean, nothing but the artifacts left on the peers
    for i in FIVE {
        let f = b.finished(i);
        let id = f["build_id"].as_str().unwrap();
        assert_eq!(check_journal(&c.state(), id), Outcome::Succeeded, "{i}");
        let left = c.leftovers(i, id, f["artifact_id"].as_str());
        assert!(left.is_empty(), "{i} left {left:?}");
    }
    // the slowest build alone, in the same run, on the same peers
    let (slowest, _, _, secs) = spans
        .iter()
        .copied()
        .max_by(|a, b| a.3.total_cmp(&b.3))
        .unwrap();
    let (alone, code, alone_wall) = run(&c, &[slowest], &[], "alone");
    assert_eq!(code, 0, "{slowest} alone:\n{}", alone.stderr());
    let alone_build = alone.finished(slowest)["seconds"].as_f64().unwrap();
    eprintln!(
        "FIVE-WAY: wall {wall:.1} s for aws,gcp,azure,vsphere,vbox (builds: {}); slowest ({slowest}) in the five-way run {secs:.1} s; {slowest} alone: wall {alone_wall:.1} s (build {alone_build:.1} s); ratio five-way wall / slowest alone wall = {:.2}",
        spans
            .iter()
            .map(|s| format!("{} {:.1} s", s.0, s.3))
            .collect::<Vec<_>>()
            .join(", "),
        wall / alone_wall
    );
}

/// The vsphere build is never given its VM's address: with a short
/// `ip_wait_timeout` it fails after creating its clone and ISO.
const VSPHERE_FAILS: [&str; 2] = ["--var", "vsphere_ip_wait_timeout=2s"];

#[test]
fn a_failing_build_leaves_the_others_running_and_fail_fast_cancels_them() {
    // Without --fail-fast: aws and gcp end with their images, vsphere fails.
    let Some(c) = Clouds::start(&["aws", "gcp", "vsphere"], PeerOptions::default()) else {
        return;
    };
    let three = ["aws", "gcp", "vsphere"];
    let mut b = Build::start(
        c.command(&three, true, &VSPHERE_FAILS),
        c.dir.path(),
        "partial",
    );
    let (code, _) = b.finish(600);
    assert_eq!(code, 1, "{}", b.stderr());
    for i in ["aws", "gcp"] {
        assert_eq!(b.finished(i)["outcome"], "succeeded", "{i}\n{}", b.stderr());
    }
    let v = b.finished("vsphere");
    assert_eq!(v["outcome"], "failed", "{v}");
    let vid = v["build_id"].as_str().unwrap();
    assert!(
        b.seen.iter().any(|e| e["build"] == "vsphere"
            && e["event"] == "resource_created"
            && e["kind"] == "vsphere_vm"),
        "the vsphere build failed before creating its VM"
    );
    let m = manifest(&c);
    let types: Vec<&str> = m["builds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["builder_type"].as_str().unwrap())
        .collect();
    assert_eq!(types.len(), 2, "{m:#}");
    assert!(types.contains(&"opsbake-aws") && types.contains(&"opsbake-gcp"));
    let vs = m["last_run"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["iaas"] == "vsphere")
        .unwrap();
    assert_eq!(vs["outcome"], "failed", "{m:#}");
    assert!(vs["error"].as_str().unwrap_or("").contains("2s") || vs["error"].is_string());
    assert_eq!(check_journal(&c.state(), vid), Outcome::Failed);
    assert!(c.leftovers("vsphere", vid, None).is_empty());
    for i in ["aws", "gcp"] {
        let f = b.finished(i);
        let id = f["build_id"].as_str().unwrap();
        assert_eq!(check_journal(&c.state(), id), Outcome::Succeeded);
        assert!(c.leftovers(i, id, f["artifact_id"].as_str()).is_empty());
    }

    // With --fail-fast: the gcp build (slow operations) is still running
    // when vsphere fails; it is cancelled and unwound.
    // (12 polls from 20 ms, backing off by 1.5: about 5 s per operation)
    let Some(c) = Clouds::start(&["gcp", "vsphere"], PeerOptions { gce_polls: 12 }) else {
        return;
    };
    let two = ["gcp", "vsphere"];
    let mut extra = VSPHERE_FAILS.to_vec();
    extra.push("--fail-fast");
    let mut b = Build::start(c.command(&two, true, &extra), c.dir.path(), "fail-fast");
    let (code, _) = b.finish(600);
    assert_eq!(code, 1, "{}", b.stderr());
    assert_eq!(b.finished("vsphere")["outcome"], "failed");
    let g = b.finished("gcp");
    assert_eq!(g["outcome"], "cancelled", "{g}\n{}", b.stderr());
    let gid = g["build_id"].as_str().unwrap();
    assert!(
        b.seen
            .iter()
            .any(|e| e["build"] == "gcp" && e["event"] == "resource_created"),
        "gcp had created nothing when it was cancelled"
    );
    assert_eq!(check_journal(&c.state(), gid), Outcome::Cancelled);
    let left = c.leftovers("gcp", gid, None);
    assert!(left.is_empty(), "gcp left {left:?}");
    let vid = b.finished("vsphere")["build_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(c.leftovers("vsphere", &vid, None).is_empty());
}

#[test]
fn sigint_during_a_four_cloud_build_unwinds_every_build_and_says_what_it_deleted() {
    let four = ["aws", "gcp", "azure", "vsphere"];
    let Some(c) = Clouds::start(&four, PeerOptions { gce_polls: 10 }) else {
        return;
    };
    // human output on stderr (the deleted report), events on stdout
    let mut b = Build::start(c.command(&four, true, &[]), c.dir.path(), "sigint");
    // vsphere waits for its VM's address (the test never gives it)
    b.wait_for("vsphere's ISO", 600, created("vsphere", "vsphere_file"));
    for i in ["aws", "gcp", "azure"] {
        b.wait_for(i, 600, move |e| {
            e["build"] == i && (e["event"] == "resource_created" || e["event"] == "build_finished")
        });
    }
    b.sigint();
    let (code, _) = b.finish(600);
    let stderr = b.stderr();
    assert_eq!(code, 130, "{stderr}");
    assert!(
        stderr.contains("interrupted: cancelling every build"),
        "{stderr}"
    );
    assert_eq!(b.finished("vsphere")["outcome"], "cancelled");
    let mut deleted_somewhere = 0;
    for i in four {
        let f = b.finished(i).clone();
        let id = f["build_id"].as_str().unwrap();
        let outcome = check_journal(&c.state(), id);
        assert!(
            matches!(outcome, Outcome::Succeeded | Outcome::Cancelled),
            "{i}: {outcome:?}: {f}\n{stderr}"
        );
        let art = (outcome == Outcome::Succeeded)
            .then(|| f["artifact_id"].as_str())
            .flatten();
        let left = c.leftovers(i, id, art);
        assert!(left.is_empty(), "{i} left {left:?}\n{stderr}");
        let deleted = b
            .seen
            .iter()
            .filter(|e| e["build"] == i && e["event"] == "resource_deleted")
            .count();
        if outcome == Outcome::Cancelled {
            assert!(
                stderr.contains(&format!("[{i}] deleted {deleted} resource(s)")),
                "{i}: {deleted} deleted, not reported:\n{stderr}"
            );
            deleted_somewhere += deleted;
        }
    }
    assert!(deleted_somewhere > 0, "{stderr}");
    let m = manifest(&c);
    let vs = m["last_run"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["iaas"] == "vsphere")
        .unwrap();
    assert_eq!(vs["outcome"], "cancelled");
}

#[test]
fn a_second_sigint_stops_at_once_and_cleanup_deletes_the_rest() {
    let Some(c) = Clouds::start(&["gcp"], PeerOptions { gce_polls: 12 }) else {
        return;
    };
    let mut b = Build::start(c.command(&["gcp"], true, &[]), c.dir.path(), "twice");
    b.wait_for("gcp's first resource", 600, |e| {
        e["build"] == "gcp" && e["event"] == "resource_created"
    });
    let id = b.build_id("gcp");
    b.sigint();
    // the unwinding waits on operations of 12 polls (about 5 s): under way
    b.wait_for("the unwinding", 120, |e| {
        e["event"] == "step_failed" && e["build"] == "gcp"
    });
    std::thread::sleep(Duration::from_millis(300));
    b.sigint();
    let (code, _) = b.finish(60);
    let stderr = b.stderr();
    assert_eq!(code, 130, "{stderr}");
    assert!(stderr.contains("stopped at once"), "{stderr}");
    assert!(stderr.contains("opsbake cleanup --all"), "{stderr}");
    // the journal still lists what the unwinding had not recorded deleted
    let live = opsbake_core::journal::Journal::open(&c.state(), &id)
        .unwrap()
        .state()
        .live;
    assert!(
        !live.is_empty(),
        "the unwinding had finished before the second SIGINT"
    );
    let out = c.cleanup_all();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left = c.leftovers("gcp", &id, None);
    assert!(left.is_empty(), "after cleanup: {left:?}");
    assert_eq!(check_journal(&c.state(), &id), Outcome::Cancelled);
}
