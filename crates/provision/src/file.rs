//! `file`: uploads and downloads with one destination rule, whatever the
//! transport:
//!
//! - `source` is a **file**: it is written at exactly `destination`; when
//!   `destination` ends with `/` it goes into that directory under its own
//!   name. A missing destination directory is created either way.
//! - `source` is a **directory** (with or without a trailing `/`): its
//!   *contents* go into `destination`, which is created if missing (like
//!   `rsync -a src/ destination/`). Modes and symlinks are kept.
//! - `sources`: each goes into the directory `destination` under its own
//!   name (a directory source becomes `destination/<name>/`).
//! - `content`: written at exactly `destination`.
//! - `mode`: applied to every file written (directories keep theirs).
//! - `direction: download` mirrors the same rules (remote source, local
//!   destination relative to the template's directory).

use std::path::{Path, PathBuf};

use opsbake_core::template::FileProvisioner;
use opsbake_core::transport::{Download, Upload, UploadSource};

use crate::error::ProvisionError;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ProvisionError + '_ {
    move |source| ProvisionError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn base_name(p: &str) -> Option<String> {
    Path::new(p.trim_end_matches('/'))
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
}

fn join_remote(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

/// Parse a `mode` such as `0644` or `0o755`.
pub fn parse_mode(m: &str) -> Result<u32, String> {
    u32::from_str_radix(m.trim().trim_start_matches("0o"), 8)
        .map_err(|_| format!("`{m}` is not an octal mode"))
}

/// Every regular file and symlink under `dir`, as (local path, path relative
/// to `dir`), for trees uploaded with an explicit mode.
fn walk(dir: &Path) -> Result<Vec<(PathBuf, String)>, ProvisionError> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, rel)) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)
            .map_err(io(&d))?
            .collect::<Result<_, _>>()
            .map_err(io(&d))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let ft = e.file_type().map_err(io(&p))?;
            if ft.is_dir() {
                stack.push((p, r));
            } else {
                out.push((p, r));
            }
        }
    }
    Ok(out)
}

/// The uploads of one `file` step (`direction: upload`).
pub fn uploads(f: &FileProvisioner, template_dir: &Path) -> Result<Vec<Upload>, ProvisionError> {
    let mode = match &f.mode {
        Some(m) => Some(parse_mode(m).map_err(|message| ProvisionError::Config {
            step: "file".into(),
            message,
        })?),
        None => None,
    };
    let mut out = Vec::new();
    if let Some(c) = &f.content {
        out.push(Upload {
            source: UploadSource::Bytes(c.clone().into_bytes()),
            remote: f.destination.clone(),
            mode: Some(mode.unwrap_or(0o644)),
            verify_sha256: f.verify,
        });
        return Ok(out);
    }
    let mut add = |local: PathBuf, remote: String| -> Result<(), ProvisionError> {
        let meta = std::fs::metadata(&local).map_err(io(&local))?;
        if meta.is_dir() && mode.is_some() {
            for (p, rel) in walk(&local)? {
                let is_link = std::fs::symlink_metadata(&p)
                    .map_err(io(&p))?
                    .file_type()
                    .is_symlink();
                out.push(Upload {
                    source: UploadSource::Path(p),
                    remote: join_remote(&remote, &rel),
                    mode: if is_link { None } else { mode },
                    verify_sha256: f.verify,
                });
            }
        } else {
            out.push(Upload {
                source: UploadSource::Path(local),
                remote,
                mode,
                verify_sha256: f.verify,
            });
        }
        Ok(())
    };
    if let Some(s) = &f.source {
        let local = template_dir.join(s);
        let is_dir = std::fs::metadata(&local).map_err(io(&local))?.is_dir();
        let remote = if !is_dir && f.destination.ends_with('/') {
            let name = base_name(s).unwrap_or_else(|| s.clone());
            join_remote(&f.destination, &name)
        } else {
            f.destination.trim_end_matches('/').to_string()
        };
        add(local, remote)?;
    }
    for s in &f.sources {
        let local = template_dir.join(s);
        let name = base_name(s).ok_or_else(|| ProvisionError::Config {
            step: "file".into(),
            message: format!("source `{s}` has no name"),
        })?;
        add(local, join_remote(&f.destination, &name))?;
    }
    Ok(out)
}

/// The downloads of one `file` step (`direction: download`).
pub fn downloads(
    f: &FileProvisioner,
    template_dir: &Path,
) -> Result<Vec<Download>, ProvisionError> {
    let dest = template_dir.join(&f.destination);
    let mut out = Vec::new();
    if let Some(s) = &f.source {
        let local = if f.destination.ends_with('/') {
            dest.join(base_name(s).unwrap_or_else(|| s.clone()))
        } else {
            dest.clone()
        };
        out.push(Download {
            remote: s.clone(),
            local,
        });
    }
    for s in &f.sources {
        let name = base_name(s).ok_or_else(|| ProvisionError::Config {
            step: "file".into(),
            message: format!("source `{s}` has no name"),
        })?;
        out.push(Download {
            remote: s.clone(),
            local: dest.join(name),
        });
    }
    if f.content.is_some() {
        return Err(ProvisionError::Config {
            step: "file".into(),
            message: "`content` cannot be downloaded".into(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(
        source: Option<&str>,
        sources: &[&str],
        dest: &str,
        mode: Option<&str>,
    ) -> FileProvisioner {
        FileProvisioner {
            common: Default::default(),
            source: source.map(String::from),
            sources: sources.iter().map(|s| s.to_string()).collect(),
            content: None,
            destination: dest.to_string(),
            direction: None,
            mode: mode.map(String::from),
            verify: false,
        }
    }

    #[test]
    fn destination_rules() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.txt"), "a").unwrap();
        std::fs::create_dir_all(d.path().join("tree/sub")).unwrap();
        std::fs::write(d.path().join("tree/sub/x"), "x").unwrap();
        std::fs::write(d.path().join("tree/y"), "y").unwrap();

        let u = uploads(&fp(Some("a.txt"), &[], "/opt/b.txt", None), d.path()).unwrap();
        assert_eq!(u[0].remote, "/opt/b.txt");
        let u = uploads(&fp(Some("a.txt"), &[], "/opt/dir/", None), d.path()).unwrap();
        assert_eq!(u[0].remote, "/opt/dir/a.txt");
        // A directory's contents go into the destination, slash or not.
        for src in ["tree", "tree/"] {
            let u = uploads(&fp(Some(src), &[], "/srv/t/", None), d.path()).unwrap();
            assert_eq!(u.len(), 1);
            assert_eq!(u[0].remote, "/srv/t");
        }
        let u = uploads(&fp(None, &["a.txt", "tree"], "/srv/many", None), d.path()).unwrap();
        let r: Vec<&str> = u.iter().map(|x| x.remote.as_str()).collect();
        assert_eq!(r, ["/srv/many/a.txt", "/srv/many/tree"]);
        // With a mode, a tree is expanded so every file gets it.
        let u = uploads(&fp(Some("tree"), &[], "/srv/t", Some("0600")), d.path()).unwrap();
        let mut r: Vec<(String, Option<u32>)> =
            u.iter().map(|x| (x.remote.clone(), x.mode)).collect();
        r.sort();
        assert_eq!(
            r,
            [
                ("/srv/t/sub/x".to_string(), Some(0o600)),
                ("/srv/t/y".to_string(), Some(0o600))
            ]
        );
        assert!(parse_mode("9").is_err());
        assert_eq!(parse_mode("0o755").unwrap(), 0o755);
    }
}
