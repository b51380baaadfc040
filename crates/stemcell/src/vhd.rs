//! Fixed VHD: the raw disk, padded to a whole MiB, followed by a 512-byte
//! footer (Microsoft VHD specification 1.0). This is what Azure imports.
//!
//! The writer is deterministic: the footer's timestamp is the one given
//! (seconds since the Unix epoch; 0 by default) and its unique id is derived
//! from the disk size and that timestamp.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use sha1::{Digest, Sha1};

use crate::sparse::{copy_sparse, SparseCopyError};

/// Footer size.
pub const FOOTER_LEN: usize = 512;
const MIB: u64 = 1 << 20;
/// Seconds from 1970-01-01 to 2000-01-01 (the VHD epoch).
const VHD_EPOCH: i64 = 946_684_800;

/// VHD errors.
#[derive(Debug, thiserror::Error)]
pub enum VhdError {
    /// I/O on a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Not a fixed VHD.
    #[error("{path} is not a fixed VHD: {reason}")]
    NotFixedVhd {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> VhdError + '_ {
    move |source| VhdError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// CHS geometry as the VHD specification (appendix) computes it.
pub fn chs_geometry(size: u64) -> (u16, u8, u8) {
    let mut total = size / 512;
    if total > 65535 * 16 * 255 {
        total = 65535 * 16 * 255;
    }
    let (spt, heads, cth);
    if total >= 65535 * 16 * 63 {
        spt = 255u64;
        heads = 16u64;
        cth = total / spt;
    } else {
        let mut s = 17u64;
        let mut c = total / s;
        let mut h = c.div_ceil(1024).max(4);
        if c >= h * 1024 || h > 16 {
            s = 31;
            h = 16;
            c = total / s;
        }
        if c >= h * 1024 {
            s = 63;
            h = 16;
            c = total / s;
        }
        spt = s;
        heads = h;
        cth = c;
    }
    ((cth / heads) as u16, heads as u8, spt as u8)
}

/// The 512-byte footer of a fixed VHD of `size` bytes (a multiple of 512).
pub fn footer(size: u64, unix_time: i64) -> [u8; FOOTER_LEN] {
    let mut f = [0u8; FOOTER_LEN];
    f[0..8].copy_from_slice(b"conectix");
    f[8..12].copy_from_slice(&2u32.to_be_bytes()); // features: reserved bit
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes()); // format version 1.0
    f[16..24].copy_from_slice(&u64::MAX.to_be_bytes()); // data offset: none (fixed)
    let ts = (unix_time - VHD_EPOCH).clamp(0, u32::MAX as i64) as u32;
    f[24..28].copy_from_slice(&ts.to_be_bytes());
    // Creator "qem2" is what `qemu-img -o force_size=on` writes: it tells
    // readers that go by creator (qemu among them) that the current-size
    // field, not the CHS geometry, is the disk size. Without it qemu reads
    // the CHS-rounded size (6 MiB becomes 6266880 bytes). Hyper-V and Azure
    // use the current size whatever the creator.
    f[28..32].copy_from_slice(b"qem2");
    f[32..36].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[36..40].copy_from_slice(b"Wi2k");
    f[40..48].copy_from_slice(&size.to_be_bytes());
    f[48..56].copy_from_slice(&size.to_be_bytes());
    let (c, h, s) = chs_geometry(size);
    f[56..58].copy_from_slice(&c.to_be_bytes());
    f[58] = h;
    f[59] = s;
    f[60..64].copy_from_slice(&2u32.to_be_bytes()); // disk type: fixed
    let mut id = Sha1::new();
    id.update(b"opsbake-vhd");
    id.update(size.to_be_bytes());
    id.update(unix_time.to_be_bytes());
    f[68..84].copy_from_slice(&id.finalize()[..16]);
    let sum = checksum(&f);
    f[64..68].copy_from_slice(&sum.to_be_bytes());
    f
}

fn checksum(f: &[u8; FOOTER_LEN]) -> u32 {
    let mut sum = 0u32;
    for (i, b) in f.iter().enumerate() {
        if !(64..68).contains(&i) {
            sum = sum.wrapping_add(*b as u32);
        }
    }
    !sum
}

/// What a fixed VHD's footer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhdInfo {
    /// Virtual size (bytes before the footer).
    pub size: u64,
    /// CHS geometry.
    pub geometry: (u16, u8, u8),
}

/// Read and check the footer of a fixed VHD.
pub fn read_footer(path: &Path) -> Result<VhdInfo, VhdError> {
    let mut file = File::open(path).map_err(io(path))?;
    let len = file.metadata().map_err(io(path))?.len();
    let bad = |reason: &str| VhdError::NotFixedVhd {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if len < FOOTER_LEN as u64 {
        return Err(bad("shorter than a footer"));
    }
    file.seek(SeekFrom::Start(len - FOOTER_LEN as u64))
        .map_err(io(path))?;
    let mut f = [0u8; FOOTER_LEN];
    file.read_exact(&mut f).map_err(io(path))?;
    if &f[0..8] != b"conectix" {
        return Err(bad("no conectix cookie at the end"));
    }
    let stored = u32::from_be_bytes([f[64], f[65], f[66], f[67]]);
    if stored != checksum(&f) {
        return Err(bad("footer checksum does not match"));
    }
    let disk_type = u32::from_be_bytes([f[60], f[61], f[62], f[63]]);
    if disk_type != 2 {
        return Err(bad(&format!("disk type {disk_type}, not 2 (fixed)")));
    }
    let mut cur = [0u8; 8];
    cur.copy_from_slice(&f[48..56]);
    let size = u64::from_be_bytes(cur);
    if size != len - FOOTER_LEN as u64 {
        return Err(bad(&format!(
            "footer says {size} bytes but the file holds {} before the footer",
            len - FOOTER_LEN as u64
        )));
    }
    Ok(VhdInfo {
        size,
        geometry: (u16::from_be_bytes([f[56], f[57]]), f[58], f[59]),
    })
}

/// Write `raw` as a fixed VHD at `dst`: the data (zero blocks left as
/// holes), zero padding up to a whole MiB, and the footer.
pub fn write_fixed_vhd(raw: &Path, dst: &Path, unix_time: i64) -> Result<VhdInfo, VhdError> {
    let mut src = File::open(raw).map_err(io(raw))?;
    let len = src.metadata().map_err(io(raw))?.len();
    let size = len.div_ceil(MIB) * MIB;
    let mut out = File::create(dst).map_err(io(dst))?;
    copy_sparse(&mut src, &mut out, len).map_err(|e| match e {
        SparseCopyError::Read(e) => io(raw)(e),
        SparseCopyError::Write(e) => io(dst)(e),
    })?;
    out.set_len(size).map_err(io(dst))?;
    out.seek(SeekFrom::Start(size)).map_err(io(dst))?;
    out.write_all(&footer(size, unix_time)).map_err(io(dst))?;
    out.sync_all().map_err(io(dst))?;
    Ok(VhdInfo {
        size,
        geometry: chs_geometry(size),
    })
}

/// Write the data of the fixed VHD `vhd` as a raw disk at `dst` (sparse).
pub fn fixed_vhd_to_raw(vhd: &Path, dst: &Path) -> Result<VhdInfo, VhdError> {
    let info = read_footer(vhd)?;
    let mut src = File::open(vhd).map_err(io(vhd))?;
    let mut out = File::create(dst).map_err(io(dst))?;
    copy_sparse(&mut src, &mut out, info.size).map_err(|e| match e {
        SparseCopyError::Read(e) => io(vhd)(e),
        SparseCopyError::Write(e) => io(dst)(e),
    })?;
    out.set_len(info.size).map_err(io(dst))?;
    out.sync_all().map_err(io(dst))?;
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_matches_the_specification_examples() {
        // 1 GiB: 2080 cylinders, 16 heads, 63 sectors (as qemu and Hyper-V compute it).
        assert_eq!(chs_geometry(1 << 30), (2080, 16, 63));
        // Large disks saturate at 65535/16/255.
        assert_eq!(chs_geometry(200 << 30), (65535, 16, 255));
        // 8 MiB: 16384 sectors: 17 spt, 963 cth, heads 4 → 240 cylinders.
        assert_eq!(chs_geometry(8 << 20), (240, 4, 17));
    }

    #[test]
    fn footer_checksum_and_determinism() {
        let a = footer(8 << 20, 0);
        assert_eq!(a, footer(8 << 20, 0));
        assert_ne!(a, footer(8 << 20, 1_700_000_000));
        assert_eq!(
            u32::from_be_bytes([a[64], a[65], a[66], a[67]]),
            checksum(&a)
        );
    }
}
