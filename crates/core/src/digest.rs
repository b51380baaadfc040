//! SHA-256 of local files, each read once per process.
//!
//! A build hashes its inputs for the manifest (every provisioning file, the
//! stemcell), and a `file` step with `verify` hashes what it uploads; a
//! five-IaaS build names the same files five times. A digest is kept for a
//! file as long as its identity and times are unchanged (device, inode,
//! size, mtime and ctime to the nanosecond): a file written since is read
//! again. Two threads asking for the same file wait for one read.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use sha2::{Digest, Sha256};

/// Why a digest was not made.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    /// Opening or reading the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The caller's stop flag was raised during the read.
    #[error("{path}: digest stopped")]
    Stopped {
        /// The file.
        path: String,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Key {
    fn of(m: &std::fs::Metadata) -> Key {
        Key {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

type Slot = Arc<Mutex<Option<String>>>;

fn cache() -> &'static Mutex<HashMap<Key, Slot>> {
    static CACHE: OnceLock<Mutex<HashMap<Key, Slot>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Hex SHA-256 of the file at `path` (symlinks followed), from the cache
/// when the file is unchanged since it was last read.
pub fn sha256_file(path: &Path) -> Result<String, DigestError> {
    sha256_file_until(path, &AtomicBool::new(false))
}

/// [`sha256_file`] that gives up (with [`DigestError::Stopped`]) when `stop`
/// is raised: a digest made in the background for a build that ended.
pub fn sha256_file_until(path: &Path, stop: &AtomicBool) -> Result<String, DigestError> {
    let io = |source| DigestError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let before = f.metadata().map_err(io)?;
    let key = Key::of(&before);
    let slot = {
        let mut c = cache().lock().unwrap_or_else(|p| p.into_inner());
        c.entry(key).or_default().clone()
    };
    // Held while reading: a second caller for the same file waits for
    // this read instead of making its own.
    let mut held = slot.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(d) = held.as_ref() {
        return Ok(d.clone());
    }
    let Some(d) = hex_digest::<Sha256>(&mut f, stop).map_err(io)? else {
        return Err(DigestError::Stopped {
            path: path.display().to_string(),
        });
    };
    // Written while it was read: the digest is of no one version; it is
    // returned but not kept.
    let after = f.metadata().map_err(io)?;
    if Key::of(&after) == key {
        *held = Some(d.clone());
    }
    Ok(d)
}

/// Hex digest `D` of all that `r` yields, read 1 MiB at a time; `None` if
/// `stop` was raised before the end.
pub(crate) fn hex_digest<D: Digest>(
    r: &mut impl Read,
    stop: &AtomicBool,
) -> std::io::Result<Option<String>> {
    let mut h = D::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(Some(hex::encode(h.finalize())));
        }
        h.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex_of(b: &[u8]) -> String {
        hex::encode(Sha256::digest(b))
    }

    #[test]
    fn a_file_changed_since_is_read_again() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"one").unwrap();
        assert_eq!(sha256_file(&p).unwrap(), hex_of(b"one"));
        assert_eq!(sha256_file(&p).unwrap(), hex_of(b"one"));
        // Written again in place (same inode).
        std::fs::write(&p, b"second").unwrap();
        assert_eq!(sha256_file(&p).unwrap(), hex_of(b"second"));
        // Replaced by another file under the same name (another inode).
        let q = d.path().join("g");
        std::fs::write(&q, b"three").unwrap();
        std::fs::rename(&q, &p).unwrap();
        assert_eq!(sha256_file(&p).unwrap(), hex_of(b"three"));
    }

    #[test]
    fn a_raised_stop_gives_up_and_keeps_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, vec![7u8; 3 << 20]).unwrap();
        let stop = AtomicBool::new(true);
        assert!(matches!(
            sha256_file_until(&p, &stop),
            Err(DigestError::Stopped { .. })
        ));
        assert_eq!(sha256_file(&p).unwrap(), hex_of(&vec![7u8; 3 << 20]));
    }

    #[test]
    fn a_missing_file_names_its_path() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("absent");
        let e = sha256_file(&p).unwrap_err().to_string();
        assert!(e.contains(&p.display().to_string()), "{e}");
    }
}
