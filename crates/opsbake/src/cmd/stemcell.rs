//! `opsbake stemcell inspect|verify|extract`: look into a BOSH stemcell
//! tarball without a build.
//!
//! Exit codes: 0 ok, 2 bad input (not a stemcell, unsafe member, SHA-1
//! mismatch, truncated, ...). Failures of this machine (cannot write the
//! destination) are returned as errors.

use std::path::{Path, PathBuf};

use anyhow::Context;
use opsbake_stemcell::reader::{self, Limits};
use opsbake_stemcell::{ExtractOptions, ReadError, StemcellName};
use serde_json::json;

const EXIT_OK: i32 = 0;
const EXIT_BAD_INPUT: i32 = 2;

/// `opsbake stemcell ...`
#[derive(clap::Args, Debug, Clone)]
pub struct StemcellArgs {
    #[command(subcommand)]
    cmd: StemcellCmd,
}

#[derive(clap::Subcommand, Debug, Clone)]
enum StemcellCmd {
    /// Name, version, OS, IaaS, formats, cloud properties, light or heavy,
    /// size, and whether the image's SHA-1 matches stemcell.MF (reads the
    /// whole file).
    Inspect {
        /// The stemcell .tgz.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Only read stemcell.MF (fast; no SHA-1 check).
        #[arg(long)]
        manifest_only: bool,
    },
    /// Stream the whole stemcell and check the image's SHA-1 against stemcell.MF.
    Verify {
        /// The stemcell .tgz.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Extract the inner image's files (root.img, disk.raw, root.vhd, or
    /// image.ovf + image.mf + VMDK) into DIR, which must not exist or be empty.
    Extract {
        /// The stemcell .tgz.
        file: PathBuf,
        /// Destination directory.
        dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Run the subcommand; returns the exit code.
pub async fn run(args: StemcellArgs) -> anyhow::Result<i32> {
    tokio::task::spawn_blocking(move || run_blocking(args))
        .await
        .context("stemcell task failed")?
}

/// A byte progress bar on stderr when it is a terminal (never with --json).
fn progress(json: bool, what: &str) -> Option<(reader::Progress, indicatif::ProgressBar)> {
    use std::io::IsTerminal;
    if json || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(0);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
    ) {
        bar.set_style(style);
    }
    bar.set_message(what.to_string());
    let b = bar.clone();
    let cb: reader::Progress = std::sync::Arc::new(move |done, total| {
        b.set_length(total);
        b.set_position(done);
    });
    Some((cb, bar))
}

fn fail(json: bool, file: &Path, e: &ReadError) -> anyhow::Result<i32> {
    if !e.is_bad_input() {
        return Err(anyhow::anyhow!("{e}"));
    }
    if json {
        println!(
            "{}",
            json!({"ok": false, "file": file, "error": e.kind(), "message": e.to_string()})
        );
    } else {
        eprintln!("error: {e}");
    }
    Ok(EXIT_BAD_INPUT)
}

fn missing(json: bool, file: &Path) -> Option<i32> {
    if file.is_file() {
        return None;
    }
    let msg = format!("{} does not exist or is not a file", file.display());
    if json {
        println!(
            "{}",
            json!({"ok": false, "file": file, "error": "not_found", "message": msg})
        );
    } else {
        eprintln!("error: {msg}");
    }
    Some(EXIT_BAD_INPUT)
}

fn run_blocking(args: StemcellArgs) -> anyhow::Result<i32> {
    match args.cmd {
        StemcellCmd::Inspect {
            file,
            json,
            manifest_only,
        } => {
            if let Some(code) = missing(json, &file) {
                return Ok(code);
            }
            inspect(&file, json, manifest_only)
        }
        StemcellCmd::Verify { file, json } => {
            if let Some(code) = missing(json, &file) {
                return Ok(code);
            }
            let bar = progress(json, "verify");
            let res = reader::scan_with_progress(
                &file,
                &Limits::default(),
                bar.as_ref().map(|b| b.0.clone()),
            )
            .and_then(|r| {
                if r.sha1_ok {
                    Ok(r)
                } else {
                    Err(ReadError::Sha1Mismatch {
                        path: file.clone(),
                        expected: r.manifest.sha1.clone(),
                        actual: r.image_sha1.clone(),
                    })
                }
            });
            if let Some((_, b)) = bar {
                b.finish_and_clear();
            }
            match res {
                Ok(r) => {
                    if json {
                        println!(
                            "{}",
                            json!({"ok": true, "file": file, "name": r.manifest.name, "version": r.manifest.version,
                                   "sha1": r.image_sha1, "image_size": r.image_size, "members": r.members})
                        );
                    } else {
                        println!(
                            "ok: {} {}: image SHA-1 {} matches stemcell.MF ({} bytes)",
                            r.manifest.name, r.manifest.version, r.image_sha1, r.image_size
                        );
                    }
                    Ok(EXIT_OK)
                }
                Err(e) => fail(json, &file, &e),
            }
        }
        StemcellCmd::Extract { file, dir, json } => {
            if let Some(code) = missing(json, &file) {
                return Ok(code);
            }
            let bar = progress(json, "extract");
            let opts = ExtractOptions {
                progress: bar.as_ref().map(|b| b.0.clone()),
                ..ExtractOptions::default()
            };
            let res = reader::extract(&file, &dir, &opts);
            if let Some((_, b)) = bar {
                b.finish_and_clear();
            }
            match res {
                Ok(r) => {
                    if json {
                        println!("{}", json!({"ok": true, "file": file, "report": r}));
                    } else {
                        println!(
                            "extracted {} {} into {} ({} bytes, {} written; sparse where zero):",
                            r.manifest.name,
                            r.manifest.version,
                            r.dest.display(),
                            r.logical_bytes,
                            r.written_bytes
                        );
                        for f in &r.files {
                            println!("  {:<8} {:>14}  {}", f.kind, f.size, f.path.display());
                        }
                    }
                    Ok(EXIT_OK)
                }
                Err(e) => fail(json, &file, &e),
            }
        }
    }
}

fn inspect(file: &Path, json: bool, manifest_only: bool) -> anyhow::Result<i32> {
    let parsed = file
        .file_name()
        .map(|n| StemcellName::parse(&n.to_string_lossy()));
    let (manifest, report) = if manifest_only {
        match reader::read_manifest(file) {
            Ok(m) => (m, None),
            Err(e) => return fail(json, file, &e),
        }
    } else {
        let bar = progress(json, "inspect");
        let res =
            reader::scan_with_progress(file, &Limits::default(), bar.as_ref().map(|b| b.0.clone()));
        if let Some((_, b)) = bar {
            b.finish_and_clear();
        }
        match res {
            Ok(r) => (r.manifest.clone(), Some(r)),
            Err(e) => return fail(json, file, &e),
        }
    };
    let light = manifest.is_light();
    let file_size = std::fs::metadata(file).map(|m| m.len()).ok();
    let light_refs = if light {
        let cp = &manifest.cloud_properties;
        match &cp.ami {
            Some(amis) => Some(json!({"aws_amis": amis})),
            None => manifest
                .light_image(None)
                .ok()
                .map(|r| serde_json::to_value(r).unwrap_or_default()),
        }
    } else {
        None
    };
    let sha1_ok = report.as_ref().map(|r| r.sha1_ok);
    if json {
        println!(
            "{}",
            json!({
                "ok": sha1_ok.unwrap_or(true),
                "file": file,
                "file_name": parsed.as_ref().and_then(|p| p.as_ref().ok()),
                "file_name_error": parsed.as_ref().and_then(|p| p.as_ref().err().map(|e| e.to_string())),
                "name": manifest.name,
                "version": manifest.version,
                "operating_system": manifest.operating_system,
                "iaas": manifest.iaas(),
                "stemcell_formats": manifest.stemcell_formats,
                "cloud_properties": manifest.cloud_properties,
                "api_version": manifest.api_version,
                "light": light,
                "light_image": light_refs,
                "size": file_size,
                "image_size": report.as_ref().map(|r| r.image_size),
                "sha1": manifest.sha1,
                "computed_sha1": report.as_ref().map(|r| r.image_sha1.clone()),
                "sha1_ok": sha1_ok,
                "members": report.as_ref().map(|r| r.members.clone()),
            })
        );
    } else {
        println!("name:             {}", manifest.name);
        println!("version:          {}", manifest.version);
        println!(
            "operating system: {}",
            manifest.operating_system.as_deref().unwrap_or("-")
        );
        println!("iaas:             {}", manifest.iaas());
        println!("formats:          {}", manifest.stemcell_formats.join(", "));
        println!(
            "kind:             {}",
            if light { "light" } else { "heavy" }
        );
        if let Some(s) = file_size {
            println!("size:             {s} bytes");
        }
        println!("disk:             {} MiB", manifest.disk_mib());
        match &parsed {
            Some(Ok(n)) => println!("file name:        ok ({})", n.stemcell_name()),
            Some(Err(e)) => println!("file name:        {e}"),
            None => {}
        }
        if let Some(r) = &light_refs {
            println!("cloud image:      {r}");
        }
        match &report {
            Some(r) if r.sha1_ok => println!("sha1:             {} ok", r.image_sha1),
            Some(r) => println!(
                "sha1:             MISMATCH: image is {}, stemcell.MF says {}",
                r.image_sha1, manifest.sha1
            ),
            None => println!("sha1:             {} (not checked)", manifest.sha1),
        }
        if let Ok(cp) = serde_yaml_ng::to_string(&manifest.cloud_properties) {
            println!("cloud properties:");
            for line in cp.lines() {
                println!("  {line}");
            }
        }
    }
    Ok(if sha1_ok == Some(false) {
        EXIT_BAD_INPUT
    } else {
        EXIT_OK
    })
}
