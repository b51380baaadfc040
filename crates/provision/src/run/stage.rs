//! Making the staging dir on the target and uploading its batch.
//!
//! A small batch (scripts and wrapper: text files, a few KiB) travels inside
//! the command that makes the staging dir: one exec instead of an exec and
//! an upload, one round trip less per build (and after a reboot that lost
//! the dir). Anything else (a tree, a binary or big file, a file to verify)
//! goes up as one upload after it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use opsbake_core::transport::{shell_quote, ExecRequest, Upload, UploadSource};

use super::Session;
use crate::error::ProvisionError;
use crate::handoff::Identity;
use crate::output::StepSink;
use crate::staging::Staging;

/// At most this many bytes of file content go inline in the mkdir command
/// (a command line is one argument of `sh -c`: Linux takes 128 KiB).
const INLINE_MAX: usize = 48 << 10;

/// Shell lines that write every file of `batch` into the staging dir, with
/// its mode, and the number of bytes; `None` when the batch cannot go
/// inline (a directory, a file outside the staging dir, a NUL byte, a file
/// to verify, too many bytes, an unreadable file: the upload reports that).
pub(super) fn inline_batch(staging: &Staging, batch: &[Upload]) -> Option<(String, u64)> {
    use std::os::unix::fs::PermissionsExt as _;
    let prefix = format!("{}/", staging.dir);
    let mut dirs = BTreeSet::new();
    let mut writes = String::new();
    let mut modes: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let mut total = 0usize;
    for u in batch {
        let rel = u.remote.strip_prefix(&prefix)?;
        if u.verify_sha256 || rel.is_empty() || rel.split('/').any(|c| c.is_empty() || c == "..") {
            return None;
        }
        let (data, mode) = match &u.source {
            UploadSource::Bytes(b) => (b.clone(), u.mode.unwrap_or(0o644)),
            UploadSource::Path(p) => {
                let md = std::fs::metadata(p).ok()?;
                if !md.is_file() || md.len() > INLINE_MAX as u64 {
                    return None;
                }
                let mode = u.mode.unwrap_or(md.permissions().mode() & 0o7777);
                (std::fs::read(p).ok()?, mode)
            }
        };
        total += data.len();
        if total > INLINE_MAX || data.contains(&0) {
            return None;
        }
        let text = String::from_utf8(data).ok()?;
        if let Some((d, _)) = rel.rsplit_once('/') {
            dirs.insert(staging.cpath(d));
        }
        let path = shell_quote(&staging.cpath(rel));
        writes.push_str(&format!("printf '%s' {} > {path}; ", shell_quote(&text)));
        modes.entry(mode).or_default().push(path);
    }
    // One chmod per mode (a process each: 20 scripts are one chmod).
    for (mode, paths) in &modes {
        writes.push_str(&format!("chmod {mode:o} {}; ", paths.join(" ")));
    }
    let mut c = String::new();
    if !dirs.is_empty() {
        c.push_str("mkdir -p");
        for d in &dirs {
            c.push(' ');
            c.push_str(&shell_quote(d));
        }
        c.push_str("; ");
    }
    c.push_str(&writes);
    Some((c, total as u64))
}

impl Session<'_> {
    /// Create the staging dir (with the batch in it when it fits inline:
    /// [`inline_batch`]) and learn who and where we are.
    pub(super) async fn prepare(&mut self) -> Result<Identity, ProvisionError> {
        let sink = Arc::new(StepSink::new(None, "staging"));
        let started = Instant::now();
        // With a hand-off, nothing lands before its guard checked the target.
        let inline = if self.batch.is_empty() || self.handoff.is_some() {
            None
        } else {
            inline_batch(&self.staging, &self.batch)
        };
        let cmd = match &inline {
            Some((writes, _)) => self.staging.mkdir_command_with(writes),
            None => self.staging.mkdir_command(),
        };
        let st = self
            .transport
            .exec(ExecRequest::new(cmd), sink.clone())
            .await
            .map_err(Self::tr("staging"))?;
        if !st.success() {
            return Err(ProvisionError::Command {
                step: format!("staging (mkdir {})", self.staging.cdir),
                status: Box::new(st),
                valid: vec![0],
                tail: sink.tail_message(),
            });
        }
        self.staged_inline = inline.is_some();
        if let Some((_, bytes)) = inline {
            self.ctx.events.info(format!(
                "staged {} file(s) ({bytes} byte(s)) to {} with the mkdir, took {:.2}s",
                self.batch.len(),
                self.staging.cdir,
                started.elapsed().as_secs_f64()
            ));
        }
        let ident = Identity::parse(&sink.stdout_text());
        self.root = ident.uid == Some(0);
        self.boot_id = ident.boot_id.clone();
        Ok(ident)
    }

    /// Every script, cookbook and hand-off file in one batch (unless
    /// [`Self::prepare`] staged them inline).
    pub(super) async fn upload_batch(&self) -> Result<(), ProvisionError> {
        if self.batch.is_empty() || self.staged_inline {
            return Ok(());
        }
        let started = Instant::now();
        let rep = self
            .transport
            .upload(self.batch.clone())
            .await
            .map_err(Self::tr("staging"))?;
        self.ctx.events.info(format!(
            "staged {} file(s) ({} byte(s)) to {}, took {:.2}s",
            rep.files,
            rep.bytes,
            self.staging.cdir,
            started.elapsed().as_secs_f64()
        ));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn bytes(st: &Staging, rel: &str, b: &[u8], mode: Option<u32>) -> Upload {
        Upload {
            source: UploadSource::Bytes(b.to_vec()),
            remote: st.remote(rel),
            mode,
            verify_sha256: false,
        }
    }

    #[test]
    fn an_inline_batch_writes_every_byte_and_mode_with_the_mkdir() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("stage root");
        let st = Staging::new(root.to_str().unwrap(), "b-1", |p| p.to_string());
        let local = tmp.path().join("local.sh");
        std::fs::write(&local, "#!/bin/sh\necho from disk\n").unwrap();
        std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o750)).unwrap();
        let tricky: &[u8] =
            b"-n 'quoted' \"dq\" $(echo no) `x` \\ \\n %s %%\n\n\tno newline at the end";
        let batch = vec![
            bytes(&st, "run", b"#!/bin/sh\nexec \"$@\"\n", Some(0o755)),
            bytes(&st, "scripts/a b.sh", tricky, Some(0o700)),
            bytes(&st, "chef-01/solo.rb", b"x\n", None),
            bytes(&st, "scripts/empty", b"", Some(0o644)),
            Upload {
                source: UploadSource::Path(local.clone()),
                remote: st.remote("scripts/local.sh"),
                mode: None,
                verify_sha256: false,
            },
        ];
        let (writes, n) = inline_batch(&st, &batch).expect("inline");
        let want: usize = batch
            .iter()
            .map(|u| match &u.source {
                UploadSource::Bytes(b) => b.len(),
                UploadSource::Path(p) => std::fs::read(p).unwrap().len(),
            })
            .sum();
        assert_eq!(n as usize, want);
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(st.mkdir_command_with(&writes))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let check = |rel: &str, want: &[u8], mode: u32| {
            let p = std::path::Path::new(&st.dir).join(rel);
            assert_eq!(std::fs::read(&p).unwrap(), want, "{rel}");
            let m = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
            assert_eq!(m, mode, "{rel}");
        };
        check("run", b"#!/bin/sh\nexec \"$@\"\n", 0o755);
        check("scripts/a b.sh", tricky, 0o700);
        check("chef-01/solo.rb", b"x\n", 0o644);
        check("scripts/empty", b"", 0o644);
        check("scripts/local.sh", b"#!/bin/sh\necho from disk\n", 0o750);
        // The identity lines still come last.
        assert!(!String::from_utf8_lossy(&out.stdout).trim().is_empty());
        // The dir existed already: the mkdir fails and writes nothing.
        let again = std::process::Command::new("sh")
            .arg("-c")
            .arg(st.mkdir_command_with(&writes))
            .output()
            .unwrap();
        assert!(!again.status.success());
    }

    #[test]
    fn what_cannot_go_inline_goes_up_as_an_upload() {
        let st = Staging::new("/var/tmp/opsbake", "b-2", |p| p.to_string());
        let ok = bytes(&st, "run", b"#!/bin/sh\n", Some(0o755));
        assert!(inline_batch(&st, std::slice::from_ref(&ok)).is_some());
        let nul = bytes(&st, "scripts/bin", b"a\0b", None);
        assert!(
            inline_batch(&st, &[ok.clone(), nul]).is_none(),
            "a NUL byte"
        );
        let big = bytes(&st, "scripts/big", &vec![b'x'; INLINE_MAX + 1], None);
        assert!(inline_batch(&st, &[ok.clone(), big]).is_none(), "too big");
        let mut verify = ok.clone();
        verify.verify_sha256 = true;
        assert!(inline_batch(&st, &[verify]).is_none(), "verified");
        let mut outside = ok.clone();
        outside.remote = "/etc/x".into();
        assert!(inline_batch(&st, &[outside]).is_none(), "outside the dir");
        let mut up = ok.clone();
        up.remote = st.remote("scripts/../../x");
        assert!(inline_batch(&st, &[up]).is_none(), "..");
        let tree = Upload {
            source: UploadSource::Path(std::env::temp_dir()),
            remote: st.remote("chef-01/cookbooks"),
            mode: None,
            verify_sha256: false,
        };
        assert!(inline_batch(&st, &[ok, tree]).is_none(), "a directory");
    }
}
