//! `opsbake import-packer FILE [-o OUT]`: convert a Packer template (1.x
//! JSON or HCL2) into an opsbake template, with a report of everything that
//! was not mapped one to one (docs/migrating-from-packer.md).
//!
//! Exit codes: 0 converted (the report may list things to check), 2 bad
//! input (not a Packer template, a syntax error, nothing opsbake can build,
//! the output exists without `--force`), 1 the output could not be written.

use std::path::{Path, PathBuf};

use opsbake_packer_import::{convert_file, ImportError};

const EXIT_OK: i32 = 0;
const EXIT_FAILED: i32 = 1;
const EXIT_BAD_INPUT: i32 = 2;

/// `opsbake import-packer ...`
#[derive(clap::Args, Debug, Clone)]
pub struct ImportPackerArgs {
    /// The Packer template: a `.json` file, a `.pkr.hcl` file, or a
    /// directory of `*.pkr.hcl` files.
    pub packer: PathBuf,
    /// Write the opsbake template here [default: stdout]. Relative paths in
    /// it are relative to this file's directory.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Overwrite the output file if it exists.
    #[arg(long)]
    pub force: bool,
}

/// Run the command; `Err` is (exit code, message).
pub fn run(a: &ImportPackerArgs, json: bool) -> Result<i32, (i32, String)> {
    let out_dir = match &a.output {
        Some(o) => o
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
        None => PathBuf::from("."),
    };
    if let Some(o) = &a.output {
        if o.exists() && !a.force {
            return Err((
                EXIT_BAD_INPUT,
                format!("{}: exists (use --force to overwrite)", o.display()),
            ));
        }
        if !out_dir.is_dir() {
            return Err((
                EXIT_BAD_INPUT,
                format!("{}: no such directory", out_dir.display()),
            ));
        }
    }
    // Every import error is bad input, a file that cannot be read too.
    let conv = convert_file(&a.packer, &out_dir)
        .map_err(|e: ImportError| (EXIT_BAD_INPUT, e.to_string()))?;
    match &a.output {
        Some(o) => std::fs::write(o, &conv.yaml)
            .map_err(|e| (EXIT_FAILED, format!("{}: {e}", o.display())))?,
        None if !json => print!("{}", conv.yaml),
        None => {}
    }
    let target = a
        .output
        .as_ref()
        .map(|o| o.display().to_string())
        .unwrap_or_else(|| "stdout".into());
    if json {
        let notes: Vec<serde_json::Value> = conv
            .notes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "key": n.key, "place": n.place, "action": n.action, "check": n.check
                })
            })
            .collect();
        let builds: Vec<serde_json::Value> = conv
            .builds
            .iter()
            .map(|(name, iaas)| serde_json::json!({"packer": name, "iaas": iaas.to_string()}))
            .collect();
        let mut v = serde_json::json!({
            "event": "imported",
            "packer": a.packer.display().to_string(),
            "output": target,
            "builds": builds,
            "mapped": conv.mapped.len(),
            "notes": notes,
        });
        if a.output.is_none() {
            v["yaml"] = serde_json::Value::String(conv.yaml.clone());
        }
        println!("{v}");
    } else {
        let builds: Vec<String> = conv
            .builds
            .iter()
            .map(|(n, i)| format!("{n} -> {i}"))
            .collect();
        eprintln!(
            "{} -> {target}: builds {}; {} setting(s) mapped, {} line(s) to check:",
            a.packer.display(),
            builds.join(", "),
            conv.mapped.len(),
            conv.notes.len()
        );
        for n in &conv.notes {
            eprintln!("  {n}");
        }
        if let Some(o) = &a.output {
            eprintln!(
                "next: opsbake validate {} --var stemcell_<iaas>=PATH ...",
                o.display()
            );
        }
    }
    Ok(EXIT_OK)
}
