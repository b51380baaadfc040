//! `opsbake manifest merge A.json B.json ... [-o OUT]`: join the manifests
//! of per-IaaS CI workers into one release manifest.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use opsbake_core::manifest;

/// `opsbake manifest ...`
#[derive(Args, Debug)]
pub struct ManifestArgs {
    #[command(subcommand)]
    pub cmd: ManifestCmd,
}

#[derive(Subcommand, Debug)]
pub enum ManifestCmd {
    /// Join manifests (one per CI worker) into one: every build once, by
    /// build time; `last_run` one line per IaaS (the newest).
    Merge {
        /// The manifests to join.
        #[arg(required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        /// Write the result here (atomically) instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

/// Run it: Ok(summary line) or Err(message) for bad input (exit 2).
pub fn run(a: &ManifestArgs) -> Result<Option<String>, String> {
    match &a.cmd {
        ManifestCmd::Merge { files, output } => {
            let mut parts = Vec::new();
            for f in files {
                parts.push(manifest::read(f).map_err(|e| e.to_string())?);
            }
            let m = manifest::merge(parts);
            let n = m.builds.len();
            match output {
                Some(o) => {
                    manifest::write(o, &m).map_err(|e| e.to_string())?;
                    Ok(Some(format!(
                        "{}: {n} build(s) from {} manifest(s)",
                        o.display(),
                        files.len()
                    )))
                }
                None => {
                    let text = serde_json::to_string_pretty(&m).map_err(|e| e.to_string())?;
                    println!("{}", opsbake_core::redactor().scrub(&text));
                    Ok(None)
                }
            }
        }
    }
}
