//! Script staging: every script of a build goes up once, in one batch at the
//! start, under its own name into one per-build directory on the target
//! (`/var/tmp/opsbake/<build-id>/scripts/`), next to a small wrapper (`run`)
//! that changes into that directory, exports `OPSBAKE_STAGING` and puts the
//! scripts on `PATH`. Scripts can therefore call each other by name, and each
//! step then costs one exec.
//!
//! Layout of the staging dir:
//!
//! ```text
//! /var/tmp/opsbake/<build-id>/
//!   run                      the wrapper: run SCRIPT [ARGS]
//!   scripts/<name>           every script (0755), inline steps as inline-NN.sh
//!   chef-NN/                 cookbooks, roles, data bags, solo.rb, node.json
//!   handoff/                 the hand-off script and the first-boot unit
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use opsbake_core::template::Provisioner;
use opsbake_core::transport::{shell_quote, Upload, UploadSource};

use crate::error::ProvisionError;

/// Default parent of the per-build staging dirs.
pub const DEFAULT_STAGING_ROOT: &str = "/var/tmp/opsbake";

/// Where one build's files live on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staging {
    /// The parent (`/var/tmp/opsbake`), as uploads see it.
    pub root: String,
    /// This build's dir, as uploads see it.
    pub dir: String,
    /// This build's dir, as commands on the target see it (differs only for
    /// transports that root remote paths in a directory).
    pub cdir: String,
    /// The parent, as commands see it.
    pub croot: String,
}

impl Staging {
    /// The staging dir of `build_id` under `root`; `command_path` maps a
    /// remote path to the path commands see (`Transport::command_path`).
    pub fn new(root: &str, build_id: &str, command_path: impl Fn(&str) -> String) -> Staging {
        let root = root.trim_end_matches('/').to_string();
        let dir = format!("{root}/{build_id}");
        Staging {
            cdir: command_path(&dir),
            croot: command_path(&root),
            root,
            dir,
        }
    }

    /// Remote path (uploads) of a file in the staging dir.
    pub fn remote(&self, rel: &str) -> String {
        format!("{}/{rel}", self.dir)
    }

    /// Path of a file in the staging dir as commands see it.
    pub fn cpath(&self, rel: &str) -> String {
        format!("{}/{rel}", self.cdir)
    }

    /// The wrapper, as commands see it.
    pub fn run_path(&self) -> String {
        self.cpath("run")
    }

    /// The wrapper's text.
    pub fn wrapper(&self) -> String {
        format!(
            "#!/bin/sh\n\
             # opsbake staging wrapper: run SCRIPT [ARGS] with the staging dir as context.\n\
             # Scripts find each other by name: they are on PATH and in the working directory.\n\
             OPSBAKE_STAGING={q}\n\
             export OPSBAKE_STAGING\n\
             PATH=\"$OPSBAKE_STAGING/scripts:$PATH\"\n\
             export PATH\n\
             cd \"$OPSBAKE_STAGING/scripts\" || exit 125\n\
             if [ $# -eq 0 ]; then echo \"usage: $0 SCRIPT [ARGS]\" >&2; exit 125; fi\n\
             script=$1\n\
             shift\n\
             exec \"$script\" \"$@\"\n",
            q = shell_quote(&self.cdir)
        )
    }

    /// The command that creates the staging dir (and its 1777 parent, like
    /// /tmp, so that several users can stage side by side). Fails if the
    /// build's dir already exists: nobody else may have prepared it.
    pub fn mkdir_command(&self) -> String {
        self.mkdir_command_with("")
    }

    /// [`Self::mkdir_command`] running `extra` (shell lines writing the
    /// staged files) once the dir exists, before it reports the identity.
    pub fn mkdir_command_with(&self, extra: &str) -> String {
        let root = shell_quote(&self.croot);
        let dir = shell_quote(&self.cdir);
        format!(
            "set -e; if [ ! -d {root} ]; then mkdir -p {root} && chmod 1777 {root} 2>/dev/null || true; fi; \
             umask 022; mkdir {dir}; mkdir {dir}/scripts; {extra}\
             printf '%s\\n' \"$(id -u)\" \"$(cat /etc/machine-id 2>/dev/null)\" \"$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)\""
        )
    }

    /// The command that removes the staging dir (with sudo when files in it
    /// may belong to root), then the shared parent when it is empty (it
    /// stays while other builds stage there; `rmdir` never removes a
    /// non-empty one).
    pub fn remove_command(&self, sudo: bool) -> String {
        let dir = shell_quote(&self.cdir);
        let root = shell_quote(&self.croot);
        let rm = if sudo {
            format!("rm -rf {dir} 2>/dev/null || sudo -n rm -rf {dir}")
        } else {
            format!("rm -rf {dir}")
        };
        format!("{rm}; test ! -e {dir} || exit 1; rmdir {root} 2>/dev/null || true")
    }
}

/// One staged script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedScript {
    /// Its name in `scripts/` (and in logs).
    pub name: String,
    /// Where it came from (a local path, or `inline (step N)`).
    pub origin: String,
}

/// The staged scripts of each step (index = step index in the plan).
#[derive(Debug, Clone, Default)]
pub struct StagedScripts {
    /// Per step: the scripts it runs, in order (empty for other steps).
    pub per_step: Vec<Vec<StagedScript>>,
    /// The uploads: the wrapper and every script.
    pub uploads: Vec<Upload>,
}

enum Content {
    File(PathBuf),
    Bytes(Vec<u8>),
}

fn read(path: &Path) -> Result<Vec<u8>, ProvisionError> {
    std::fs::read(path).map_err(|source| ProvisionError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The inline commands of a step as a script.
pub fn inline_script(lines: &[String]) -> Vec<u8> {
    let mut s = String::from("#!/bin/sh -e\n");
    for l in lines {
        s.push_str(l);
        s.push('\n');
    }
    s.into_bytes()
}

/// The name of a step's inline script.
pub fn inline_name(step_index: usize) -> String {
    format!("inline-{:02}.sh", step_index + 1)
}

/// Collect the scripts of every `shell` step (not `shell-local`: those run
/// where they are) under their own names. The same file used by two steps is
/// staged once; two different files with one name are an error.
pub fn stage_scripts(
    steps: &[Provisioner],
    template_dir: &Path,
    staging: &Staging,
) -> Result<StagedScripts, ProvisionError> {
    let mut by_name: BTreeMap<String, (String, Content)> = BTreeMap::new();
    let mut out = StagedScripts {
        per_step: vec![Vec::new(); steps.len()],
        uploads: Vec::new(),
    };
    for (i, step) in steps.iter().enumerate() {
        let Provisioner::Shell(s) = step else {
            continue;
        };
        let mut list: Vec<(String, String, Content)> = Vec::new();
        if !s.inline.is_empty() {
            list.push((
                inline_name(i),
                format!("inline (step {})", i + 1),
                Content::Bytes(inline_script(&s.inline)),
            ));
        }
        for sc in s.script.iter().chain(s.scripts.iter()) {
            let path = template_dir.join(sc);
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| ProvisionError::Config {
                    step: step.label(),
                    message: format!("script `{sc}` has no file name"),
                })?;
            list.push((name, path.display().to_string(), Content::File(path)));
        }
        for (name, origin, content) in list {
            if let Some((first, existing)) = by_name.get(&name) {
                let same = match (existing, &content) {
                    (Content::File(a), Content::File(b)) => a == b || read(a)? == read(b)?,
                    (Content::File(a), Content::Bytes(b))
                    | (Content::Bytes(b), Content::File(a)) => read(a)? == *b,
                    (Content::Bytes(a), Content::Bytes(b)) => a == b,
                };
                if !same {
                    return Err(ProvisionError::NameClash {
                        name,
                        first: first.clone(),
                        second: origin,
                    });
                }
            } else {
                let source = match &content {
                    Content::File(p) => UploadSource::Path(p.clone()),
                    Content::Bytes(b) => UploadSource::Bytes(b.clone()),
                };
                out.uploads.push(Upload {
                    source,
                    remote: staging.remote(&format!("scripts/{name}")),
                    mode: Some(0o755),
                    verify_sha256: false,
                });
                by_name.insert(name.clone(), (origin.clone(), content));
            }
            out.per_step[i].push(StagedScript { name, origin });
        }
    }
    if !out.uploads.is_empty() {
        out.uploads.insert(
            0,
            Upload {
                source: UploadSource::Bytes(staging.wrapper().into_bytes()),
                remote: staging.remote("run"),
                mode: Some(0o755),
                verify_sha256: false,
            },
        );
    }
    Ok(out)
}
