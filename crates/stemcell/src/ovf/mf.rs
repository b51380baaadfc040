//! `.mf` digest files: parse, format, write, verify, and the OVF edit that
//! rewrites its `.mf`.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::{Ovf, OvfError};

/// A digest algorithm of `.mf` files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum DigestAlgo {
    /// `SHA1(file)= hex` (vSphere stemcells, OVF 1.0).
    Sha1,
    /// `SHA256(file)= hex` (OVF 2.0 / newer ovftool).
    Sha256,
}

impl DigestAlgo {
    /// The tag in `.mf` lines.
    pub fn tag(self) -> &'static str {
        match self {
            DigestAlgo::Sha1 => "SHA1",
            DigestAlgo::Sha256 => "SHA256",
        }
    }
}

/// One `.mf` line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MfEntry {
    /// Algorithm.
    pub algo: DigestAlgo,
    /// File name (relative to the `.mf`).
    pub file: String,
    /// Lower-case hex digest.
    pub digest: String,
}

/// Parse `.mf` text (`path` only names the file in errors).
pub fn parse_mf(text: &str, path: &Path) -> Result<Vec<MfEntry>, OvfError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() {
            continue;
        }
        let bad = || OvfError::MfSyntax {
            path: path.to_path_buf(),
            line: i + 1,
            text: line.to_string(),
        };
        let open = l.find('(').ok_or_else(bad)?;
        let close = l.rfind(")=").ok_or_else(bad)?;
        if close < open {
            return Err(bad());
        }
        let algo = match &l[..open] {
            "SHA1" => DigestAlgo::Sha1,
            "SHA256" => DigestAlgo::Sha256,
            _ => return Err(bad()),
        };
        let digest = l[close + 2..].trim().to_ascii_lowercase();
        let want = if algo == DigestAlgo::Sha1 { 40 } else { 64 };
        if digest.len() != want || !digest.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad());
        }
        out.push(MfEntry {
            algo,
            file: l[open + 1..close].to_string(),
            digest,
        });
    }
    Ok(out)
}

/// `.mf` text for these entries.
pub fn format_mf(entries: &[MfEntry]) -> String {
    entries
        .iter()
        .map(|e| format!("{}({})= {}\n", e.algo.tag(), e.file, e.digest))
        .collect()
}

/// Digest of a file, streamed.
pub fn digest_file(path: &Path, algo: DigestAlgo) -> Result<String, OvfError> {
    let io_err = |source| OvfError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(io_err)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut s1 = Sha1::new();
    let mut s256 = Sha256::new();
    loop {
        let n = f.read(&mut buf).map_err(io_err)?;
        if n == 0 {
            break;
        }
        match algo {
            DigestAlgo::Sha1 => s1.update(&buf[..n]),
            DigestAlgo::Sha256 => s256.update(&buf[..n]),
        }
    }
    Ok(match algo {
        DigestAlgo::Sha1 => hex::encode(s1.finalize()),
        DigestAlgo::Sha256 => hex::encode(s256.finalize()),
    })
}

fn plain_name(dir: &Path, name: &str) -> Result<PathBuf, OvfError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(OvfError::BadMfName(name.to_string()));
    }
    Ok(dir.join(name))
}

/// Write `dir/mf_name` with digests of `files` (names inside `dir`).
pub fn write_mf(
    dir: &Path,
    mf_name: &str,
    files: &[&str],
    algo: DigestAlgo,
) -> Result<Vec<MfEntry>, OvfError> {
    let mut entries = Vec::new();
    for f in files {
        entries.push(MfEntry {
            algo,
            file: f.to_string(),
            digest: digest_file(&plain_name(dir, f)?, algo)?,
        });
    }
    let mf = plain_name(dir, mf_name)?;
    std::fs::write(&mf, format_mf(&entries)).map_err(|source| OvfError::Io { path: mf, source })?;
    Ok(entries)
}

/// Check every digest in `dir/mf_name`.
pub fn verify_mf(dir: &Path, mf_name: &str) -> Result<Vec<MfEntry>, OvfError> {
    let mf = plain_name(dir, mf_name)?;
    let text = std::fs::read_to_string(&mf).map_err(|source| OvfError::Io {
        path: mf.clone(),
        source,
    })?;
    let entries = parse_mf(&text, &mf)?;
    for e in &entries {
        let actual = digest_file(&plain_name(dir, &e.file)?, e.algo)?;
        if actual != e.digest {
            return Err(OvfError::DigestMismatch {
                file: e.file.clone(),
                algo: e.algo.tag(),
                expected: e.digest.clone(),
                actual,
            });
        }
    }
    Ok(entries)
}

/// Recompute every digest listed in `dir/mf_name`, keeping order and algorithms.
pub fn refresh_mf(dir: &Path, mf_name: &str) -> Result<Vec<MfEntry>, OvfError> {
    let mf = plain_name(dir, mf_name)?;
    let text = std::fs::read_to_string(&mf).map_err(|source| OvfError::Io {
        path: mf.clone(),
        source,
    })?;
    let mut entries = parse_mf(&text, &mf)?;
    for e in &mut entries {
        e.digest = digest_file(&plain_name(dir, &e.file)?, e.algo)?;
    }
    std::fs::write(&mf, format_mf(&entries)).map_err(|source| OvfError::Io { path: mf, source })?;
    Ok(entries)
}

/// Edit `dir/ovf_name` with `edit`, write it back, and rewrite the digests
/// in `dir/mf_name` (when given) so that the package stays valid.
pub fn edit_ovf_in_dir(
    dir: &Path,
    ovf_name: &str,
    mf_name: Option<&str>,
    edit: impl FnOnce(&mut Ovf) -> Result<(), OvfError>,
) -> Result<(), OvfError> {
    let path = plain_name(dir, ovf_name)?;
    let mut ovf = Ovf::read(&path)?;
    edit(&mut ovf)?;
    std::fs::write(&path, ovf.to_xml()).map_err(|source| OvfError::Io { path, source })?;
    if let Some(mf) = mf_name {
        refresh_mf(dir, mf)?;
    }
    Ok(())
}
