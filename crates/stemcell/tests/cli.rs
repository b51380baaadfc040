//! The `opsbake stemcell` subcommand module (crates/opsbake/src/cmd/stemcell.rs),
//! compiled here against a stand-in top-level parser that has the real
//! CLI's global `--json` flag, so that its clap definition and exit codes
//! are tested while the module is owned and tested with this crate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

#[allow(dead_code)]
#[path = "../../opsbake/src/cmd/stemcell.rs"]
mod stemcell_cmd;

use std::process::Command;

use clap::{CommandFactory, Parser};
use common::{require_tool, run};
use serde_json::json;

#[derive(Parser, Debug)]
struct Cli {
    /// The real CLI has a global --json too.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Top,
}

#[derive(clap::Subcommand, Debug)]
enum Top {
    Stemcell(stemcell_cmd::StemcellArgs),
}

fn exit_code(args: &[&str]) -> i32 {
    let cli = Cli::try_parse_from(std::iter::once("opsbake").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let Top::Stemcell(a) = cli.cmd;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(stemcell_cmd::run(a)).unwrap()
}

#[test]
fn clap_definition_is_valid_next_to_a_global_json_flag() {
    Cli::command().debug_assert();
    let help = Cli::command()
        .find_subcommand_mut("stemcell")
        .unwrap()
        .render_long_help()
        .to_string();
    for sub in ["inspect", "verify", "extract"] {
        assert!(help.contains(sub), "{help}");
    }
}

#[test]
fn inspect_verify_extract_exit_codes() {
    if !require_tool("python3") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let craft = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/craft.py");
    let mf = "---\nname: bosh-aws-xen-hvm-ubuntu-jammy-go_agent\nversion: '1.406'\nbosh_protocol: 1\napi_version: 3\nsha1: {SHA1}\noperating_system: ubuntu-jammy\nstemcell_formats: [aws-raw]\ncloud_properties: {infrastructure: aws, hypervisor: xen, disk: 8, disk_format: raw}\n";
    let make = |name: &str, mf: &str| {
        let out = t.path().join(name);
        let spec = json!({"out": out, "members": [
            {"name": "stemcell.MF", "text": mf},
            {"name": "image", "inner": [{"name": "root.img", "text": "disk"}]}
        ]});
        let spec_path = t.path().join(format!("{name}.json"));
        std::fs::write(&spec_path, spec.to_string()).unwrap();
        run(Command::new("python3").arg(craft).arg(&spec_path));
        out
    };
    let good = make(
        "bosh-stemcell-1.406-aws-xen-hvm-ubuntu-jammy-go_agent.tgz",
        mf,
    );
    let bad = make("bad.tgz", &mf.replace("{SHA1}", &"a".repeat(40)));
    let g = good.to_str().unwrap();
    let b = bad.to_str().unwrap();

    assert_eq!(exit_code(&["stemcell", "inspect", g]), 0);
    assert_eq!(exit_code(&["stemcell", "inspect", g, "--json"]), 0);
    assert_eq!(
        exit_code(&["--json", "stemcell", "inspect", g, "--manifest-only"]),
        0
    );
    assert_eq!(
        exit_code(&["stemcell", "inspect", b]),
        2,
        "sha1 mismatch is bad input"
    );
    assert_eq!(exit_code(&["stemcell", "verify", g, "--json"]), 0);
    assert_eq!(exit_code(&["stemcell", "verify", b]), 2);
    assert_eq!(exit_code(&["stemcell", "verify", "/nonexistent/x.tgz"]), 2);
    let dest = t.path().join("out");
    let d = dest.to_str().unwrap();
    assert_eq!(exit_code(&["stemcell", "extract", g, d]), 0);
    assert_eq!(std::fs::read(dest.join("root.img")).unwrap(), b"disk");
    assert_eq!(
        exit_code(&["stemcell", "extract", g, d]),
        2,
        "non-empty destination"
    );
    let dest2 = t.path().join("out2");
    assert_eq!(
        exit_code(&["stemcell", "extract", b, dest2.to_str().unwrap(), "--json"]),
        2
    );
    assert!(!dest2.exists());
}
