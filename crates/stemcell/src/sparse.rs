//! Sparse-aware copying: holes in the source are found with
//! `SEEK_DATA`/`SEEK_HOLE` and never read; zero blocks in the data are
//! seeked over in the destination, so it stays sparse.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;

use nix::unistd::{lseek, Whence};

/// Blocks of this size that are all zero become holes.
pub const ZERO_BLOCK: usize = 4096;
const BUF: usize = 4 << 20;

/// A copy failed while reading or while writing.
#[derive(Debug)]
pub enum SparseCopyError {
    /// Reading the source.
    Read(io::Error),
    /// Writing the destination.
    Write(io::Error),
}

/// True when every byte is zero.
pub fn is_zero(buf: &[u8]) -> bool {
    let mut chunks = buf.chunks_exact(16);
    for c in &mut chunks {
        let mut a = [0u8; 16];
        a.copy_from_slice(c);
        if u128::from_ne_bytes(a) != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|b| *b == 0)
}

/// The byte ranges of `file` (up to `len`) that may hold data. Falls back to
/// the whole file where the filesystem cannot say.
pub fn data_ranges(file: &File, len: u64) -> Vec<(u64, u64)> {
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: u64 = 0;
    while pos < len {
        let start = match lseek(fd, pos as i64, Whence::SeekData) {
            Ok(s) => s as u64,
            Err(nix::errno::Errno::ENXIO) => break, // no data after pos
            Err(_) => return vec![(0, len)],
        };
        if start >= len {
            break;
        }
        let end = match lseek(fd, start as i64, Whence::SeekHole) {
            Ok(e) => (e as u64).min(len),
            Err(_) => return vec![(0, len)],
        };
        if end <= start {
            return vec![(0, len)];
        }
        out.push((start, end));
        pos = end;
    }
    out
}

/// Write `data` at `offset` of `dst`, leaving all-zero blocks as holes.
/// Returns the bytes actually written.
pub fn write_skipping_zeros(dst: &mut File, offset: u64, data: &[u8]) -> io::Result<u64> {
    let mut written = 0u64;
    let mut i = 0;
    while i < data.len() {
        let end = (i + ZERO_BLOCK).min(data.len());
        if is_zero(&data[i..end]) {
            i = end;
            continue;
        }
        let mut j = end;
        while j < data.len() {
            let e2 = (j + ZERO_BLOCK).min(data.len());
            if is_zero(&data[j..e2]) {
                break;
            }
            j = e2;
        }
        dst.seek(SeekFrom::Start(offset + i as u64))?;
        dst.write_all(&data[i..j])?;
        written += (j - i) as u64;
        i = j;
    }
    Ok(written)
}

/// Copy the first `len` bytes of `src` into `dst` at the same offsets,
/// sparse on both sides. The caller sets `dst`'s final length.
pub fn copy_sparse(src: &mut File, dst: &mut File, len: u64) -> Result<u64, SparseCopyError> {
    let mut buf = vec![0u8; BUF];
    let mut written = 0u64;
    for (start, end) in data_ranges(src, len) {
        src.seek(SeekFrom::Start(start))
            .map_err(SparseCopyError::Read)?;
        let mut pos = start;
        while pos < end {
            let want = ((end - pos) as usize).min(BUF);
            src.read_exact(&mut buf[..want])
                .map_err(SparseCopyError::Read)?;
            written +=
                write_skipping_zeros(dst, pos, &buf[..want]).map_err(SparseCopyError::Write)?;
            pos += want as u64;
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_are_found_and_copies_stay_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("src");
        let mut f = File::create(&p).unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(SeekFrom::Start(10 << 20)).unwrap();
        f.write_all(&[7u8; 8192]).unwrap();
        f.sync_all().unwrap();
        drop(f);
        let mut src = File::open(&p).unwrap();
        let ranges = data_ranges(&src, 64 << 20);
        let covered: u64 = ranges.iter().map(|(s, e)| e - s).sum();
        assert!(covered < 64 << 20, "{ranges:?}");
        let q = dir.path().join("dst");
        let mut dst = File::create(&q).unwrap();
        let w = copy_sparse(&mut src, &mut dst, 64 << 20).unwrap();
        dst.set_len(64 << 20).unwrap();
        assert_eq!(w, 8192);
        assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(&q).unwrap());
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0u8; 4097]));
        let mut b = [0u8; 4097];
        b[4096] = 1;
        assert!(!is_zero(&b));
        b[4096] = 0;
        b[3] = 1;
        assert!(!is_zero(&b));
    }
}
