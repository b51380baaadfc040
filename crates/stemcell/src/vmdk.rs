//! streamOptimized VMDK (VMware Virtual Disk Format 1.1, §"Stream-Optimized
//! Compressed Sparse Extents"): the disk format inside OVAs and vSphere
//! stemcells.
//!
//! Layout written here:
//! ```text
//! sector 0        sparse extent header (gdOffset = GD_AT_END)
//! sector 1..21    embedded descriptor (createType="streamOptimized")
//! sector 128..    grains: [lba u64][size u32][zlib data], each padded to 512
//!                 (all-zero grains are not written; their table entry is 0)
//!                 then for each grain table: GT marker + 512 entries
//!                 grain directory marker + directory
//!                 footer marker + footer (the header with the real gdOffset)
//!                 end-of-stream marker
//! ```
//! Grains are compressed independently, so they are compressed in parallel
//! (one worker per core, bounded queues: memory stays at a few MiB per
//! worker) and written in order. Grains that deflate cannot shrink (already
//! compressed or encrypted data: a near-uniform byte histogram and no
//! repeats) go into stored deflate blocks, as zlib itself would emit them,
//! without the match search that costs most of the time on such data
//! ([`looks_incompressible`]). The output is a pure function of the input,
//! the compression level and that switch: the CID is derived from the grain
//! tables, there is no timestamp, and the thread count does not matter.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use sha1::{Digest, Sha1};

use crate::sparse::{data_ranges, is_zero, write_skipping_zeros};

const SECTOR: u64 = 512;
/// Grain size in sectors (64 KiB grains, as VMware and qemu write them).
pub const GRAIN_SECTORS: u64 = 128;
const GRAIN: usize = (GRAIN_SECTORS * SECTOR) as usize;
const GTES_PER_GT: u64 = 512;
const DESCRIPTOR_SECTORS: u64 = 20;
const OVERHEAD_SECTORS: u64 = 128;
const MAGIC: u32 = 0x564d_444b; // "KDMV"
const GD_AT_END: u64 = u64::MAX;
const FLAGS: u32 = 1 | (1 << 16) | (1 << 17); // newline test, compressed grains, markers
const MARKER_EOS: u32 = 0;
const MARKER_GT: u32 = 1;
const MARKER_GD: u32 = 2;
const MARKER_FOOTER: u32 = 3;

/// VMDK errors.
#[derive(Debug, thiserror::Error)]
pub enum VmdkError {
    /// I/O on a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Compression failed (should not happen with valid input).
    #[error("compressing grain at sector {lba} for {path}: {detail}")]
    Compress {
        /// The output file.
        path: PathBuf,
        /// Grain start sector.
        lba: u64,
        /// What zlib said.
        detail: String,
    },
    /// Not a streamOptimized VMDK this reader understands.
    #[error("{path} is not a streamOptimized VMDK: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A worker thread died.
    #[error("a VMDK compression worker failed for {0}")]
    Worker(PathBuf),
}

/// Options for [`write_stream_optimized`].
#[derive(Debug, Clone)]
pub struct VmdkOptions {
    /// zlib level 1..=9 (6 is what qemu-img uses).
    pub level: u32,
    /// Compression threads (0: one per core).
    pub threads: usize,
    /// `ddb.adapterType`: `lsilogic` (default), `ide`, `buslogic`, `lsisas1068`.
    pub adapter_type: String,
    /// Grains handed to a worker at a time.
    pub batch_grains: usize,
    /// Write grains that [`looks_incompressible`] accepts as stored deflate
    /// blocks instead of searching them for matches (default true).
    pub store_incompressible: bool,
}

impl Default for VmdkOptions {
    fn default() -> Self {
        VmdkOptions {
            level: 6,
            threads: 0,
            adapter_type: "lsilogic".to_string(),
            batch_grains: 64,
            store_incompressible: true,
        }
    }
}

/// What the writer produced.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VmdkReport {
    /// Virtual capacity in bytes.
    pub capacity: u64,
    /// Grains written (non-zero).
    pub grains: u64,
    /// Grains skipped because they were all zero.
    pub zero_grains: u64,
    /// Size of the VMDK file.
    pub file_size: u64,
    /// The descriptor's CID.
    pub cid: u32,
}

fn header(capacity_sectors: u64, gd_offset: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&3u32.to_le_bytes());
    h[8..12].copy_from_slice(&FLAGS.to_le_bytes());
    h[12..20].copy_from_slice(&capacity_sectors.to_le_bytes());
    h[20..28].copy_from_slice(&GRAIN_SECTORS.to_le_bytes());
    h[28..36].copy_from_slice(&1u64.to_le_bytes());
    h[36..44].copy_from_slice(&DESCRIPTOR_SECTORS.to_le_bytes());
    h[44..48].copy_from_slice(&(GTES_PER_GT as u32).to_le_bytes());
    h[48..56].copy_from_slice(&0u64.to_le_bytes());
    h[56..64].copy_from_slice(&gd_offset.to_le_bytes());
    h[64..72].copy_from_slice(&OVERHEAD_SECTORS.to_le_bytes());
    h[72] = 0;
    h[73] = b'\n';
    h[74] = b' ';
    h[75] = b'\r';
    h[76] = b'\n';
    h[77..79].copy_from_slice(&1u16.to_le_bytes()); // deflate
    h
}

fn marker(num_sectors: u64, kind: u32) -> [u8; 512] {
    let mut m = [0u8; 512];
    m[0..8].copy_from_slice(&num_sectors.to_le_bytes());
    m[12..16].copy_from_slice(&kind.to_le_bytes());
    m
}

/// The embedded descriptor, padded to its sectors.
fn descriptor(
    cid: u32,
    capacity_sectors: u64,
    file_name: &str,
    adapter: &str,
) -> Result<Vec<u8>, String> {
    let (heads, sectors) = if adapter == "ide" {
        (16, 63)
    } else {
        (255, 63)
    };
    let cylinders = (capacity_sectors / (heads * sectors)).clamp(1, 65535);
    let text = format!(
        "# Disk DescriptorFile\nversion=1\nCID={cid:08x}\nparentCID=ffffffff\ncreateType=\"streamOptimized\"\n\n\
         # Extent description\nRW {capacity_sectors} SPARSE \"{file_name}\"\n\n\
         # The Disk Data Base\n#DDB\n\n\
         ddb.virtualHWVersion = \"4\"\n\
         ddb.geometry.cylinders = \"{cylinders}\"\n\
         ddb.geometry.heads = \"{heads}\"\n\
         ddb.geometry.sectors = \"{sectors}\"\n\
         ddb.adapterType = \"{adapter}\"\n"
    );
    let cap = (DESCRIPTOR_SECTORS * SECTOR) as usize;
    if text.len() > cap {
        return Err(format!(
            "descriptor is {} bytes, more than {cap}",
            text.len()
        ));
    }
    let mut v = text.into_bytes();
    v.resize(cap, 0);
    Ok(v)
}

struct Job {
    seq: u64,
    first_grain: u64,
    data: Option<Vec<u8>>, // None: every grain in the batch is a hole
    grains: usize,
}

/// For each grain of a batch: `None` (all zero) or the grain record to write
/// (marker header + compressed data + padding).
type Done = (u64, Result<Vec<Option<Vec<u8>>>, (u64, String)>);

/// Order-0 entropy (bits per byte) below which a grain is always deflated:
/// at 7.95 Huffman coding alone could save at most 0.6%. A 64 KiB grain of
/// random bytes measures about 7.997.
const STORE_MIN_ENTROPY: f64 = 7.95;
/// Bytes in repeats (8 bytes or longer) above which a grain is always
/// deflated, as a fraction of the grain: 1/64.
const STORE_MAX_REPEAT_SHARE: usize = 64;
const PROBE_BITS: u32 = 13;

/// Whether deflate would gain (almost) nothing on `grain`: its byte
/// histogram is nearly uniform (order-0 entropy at least
/// [`STORE_MIN_ENTROPY`]) and a greedy probe for repeats of 8 bytes or more
/// (a one-slot hash table, deflate's match finder without its hash chains
/// and lazy matching) covers less than 1/64 of it. Such a grain is what
/// compressed or encrypted files leave on a disk; deflate at level 6 spends
/// most of its time searching it and then emits stored blocks anyway (about
/// 60 MiB/s per core here against 3 GiB/s for this test). The worst case
/// for a grain that passes is a result about 2% larger than deflate's.
/// `table` is scratch space (reused between calls).
pub fn looks_incompressible(grain: &[u8], table: &mut Vec<u32>) -> bool {
    if grain.len() < 4096 {
        return false;
    }
    let mut hist = [0u32; 256];
    for &b in grain {
        hist[b as usize] += 1;
    }
    let n = grain.len() as f64;
    let entropy: f64 = hist
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum();
    if entropy < STORE_MIN_ENTROPY {
        return false;
    }
    table.clear();
    table.resize(1 << PROBE_BITS, u32::MAX);
    let limit = grain.len() / STORE_MAX_REPEAT_SHARE;
    let mut repeated = 0usize;
    let end = grain.len() - 8;
    let mut i = 0usize;
    while i < end {
        let w = u32::from_le_bytes([grain[i], grain[i + 1], grain[i + 2], grain[i + 3]]);
        let key = (w.wrapping_mul(0x9e37_79b1) >> (32 - PROBE_BITS)) as usize;
        let cand = table[key];
        table[key] = i as u32;
        if cand != u32::MAX {
            let c = cand as usize;
            if grain[c..c + 8] == grain[i..i + 8] {
                let mut len = 8;
                while i + len < grain.len() && grain[c + len] == grain[i + len] {
                    len += 1;
                }
                repeated += len;
                if repeated > limit {
                    return false;
                }
                i += len;
                continue;
            }
        }
        i += 1;
    }
    true
}

fn compress_batch(
    c: &mut Compress,
    stored: Option<&mut Compress>,
    job: &Job,
) -> Result<Vec<Option<Vec<u8>>>, (u64, String)> {
    let Some(data) = &job.data else {
        return Ok(vec![None; job.grains]);
    };
    let mut out = Vec::with_capacity(job.grains);
    let mut table = Vec::new();
    let mut stored = stored;
    for (i, grain) in data.chunks(GRAIN).enumerate() {
        if is_zero(grain) {
            out.push(None);
            continue;
        }
        let lba = (job.first_grain + i as u64) * GRAIN_SECTORS;
        let c: &mut Compress = match stored.as_deref_mut() {
            Some(s) if looks_incompressible(grain, &mut table) => s,
            _ => &mut *c,
        };
        c.reset();
        let mut rec: Vec<u8> = Vec::with_capacity(GRAIN + GRAIN / 8 + 1024);
        rec.extend_from_slice(&lba.to_le_bytes());
        rec.extend_from_slice(&[0u8; 4]);
        loop {
            let before_in = c.total_in() as usize;
            if rec.len() == rec.capacity() {
                rec.reserve(GRAIN / 4);
            }
            let st = c
                .compress_vec(&grain[before_in..], &mut rec, FlushCompress::Finish)
                .map_err(|e| (lba, e.to_string()))?;
            if st == Status::StreamEnd {
                break;
            }
        }
        let size = (rec.len() - 12) as u32;
        rec[8..12].copy_from_slice(&size.to_le_bytes());
        let padded = rec.len().div_ceil(SECTOR as usize) * SECTOR as usize;
        rec.resize(padded, 0);
        out.push(Some(rec));
    }
    Ok(out)
}

fn worker(level: u32, store: bool, jobs: Arc<Mutex<Receiver<Job>>>, done: SyncSender<Done>) {
    let mut c = Compress::new(Compression::new(level), true);
    let mut stored = store.then(|| Compress::new(Compression::none(), true));
    loop {
        let job = match jobs.lock() {
            Ok(rx) => match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            },
            Err(_) => return,
        };
        let r = compress_batch(&mut c, stored.as_mut(), &job);
        if done.send((job.seq, r)).is_err() {
            return;
        }
    }
}

/// Write the raw disk `raw` as a streamOptimized VMDK at `dst`.
pub fn write_stream_optimized(
    raw: &Path,
    dst: &Path,
    opts: &VmdkOptions,
) -> Result<VmdkReport, VmdkError> {
    let io_in = |source| VmdkError::Io {
        path: raw.to_path_buf(),
        source,
    };
    let io_out = |source| VmdkError::Io {
        path: dst.to_path_buf(),
        source,
    };
    let src = File::open(raw).map_err(io_in)?;
    let len = src.metadata().map_err(io_in)?.len();
    let capacity_sectors = len.div_ceil(SECTOR);
    let num_grains = capacity_sectors.div_ceil(GRAIN_SECTORS);
    let num_gts = num_grains.div_ceil(GTES_PER_GT).max(1);
    let file_name = dst
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "disk.vmdk".to_string());
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        opts.threads
    };
    let batch = opts.batch_grains.max(1) as u64;
    let ranges = data_ranges(&src, len);

    let mut out = io::BufWriter::with_capacity(1 << 20, File::create(dst).map_err(io_out)?);
    out.write_all(&header(capacity_sectors, GD_AT_END))
        .map_err(io_out)?;
    let placeholder =
        descriptor(0, capacity_sectors, &file_name, &opts.adapter_type).map_err(|reason| {
            VmdkError::Format {
                path: dst.to_path_buf(),
                reason,
            }
        })?;
    out.write_all(&placeholder).map_err(io_out)?;
    let pad = (OVERHEAD_SECTORS - 1 - DESCRIPTOR_SECTORS) * SECTOR;
    out.write_all(&vec![0u8; pad as usize]).map_err(io_out)?;
    let mut sector = OVERHEAD_SECTORS;

    let mut gt = vec![0u32; (num_gts * GTES_PER_GT) as usize];
    let mut grains_written = 0u64;
    let num_batches = num_grains.div_ceil(batch);

    let (job_tx, job_rx) = sync_channel::<Job>(threads);
    let (done_tx, done_rx) = sync_channel::<Done>(threads * 2);
    let job_rx = Arc::new(Mutex::new(job_rx));

    let result: Result<(), VmdkError> = std::thread::scope(|s| {
        for _ in 0..threads {
            let rx = job_rx.clone();
            let tx = done_tx.clone();
            let (level, store) = (opts.level, opts.store_incompressible);
            s.spawn(move || worker(level, store, rx, tx));
        }
        drop(done_tx);
        drop(job_rx); // only the workers hold the queue: if they stop, the reader stops
                      // The reader feeds batches; holes are not read at all.
        let reader = s.spawn(|| -> Result<(), io::Error> {
            let job_tx = job_tx;
            let mut ri = 0usize;
            for b in 0..num_batches {
                let first = b * batch;
                let grains = batch.min(num_grains - first);
                let start = first * GRAIN as u64;
                let end = ((first + grains) * GRAIN as u64).min(len);
                while ri < ranges.len() && ranges[ri].1 <= start {
                    ri += 1;
                }
                let has_data = ri < ranges.len() && ranges[ri].0 < end;
                let data = if has_data {
                    let mut buf = vec![0u8; (grains as usize) * GRAIN];
                    src.read_exact_at(&mut buf[..(end - start) as usize], start)?;
                    Some(buf)
                } else {
                    None
                };
                let job = Job {
                    seq: b,
                    first_grain: first,
                    data,
                    grains: grains as usize,
                };
                if job_tx.send(job).is_err() {
                    break;
                }
            }
            Ok(())
        });
        let mut pending: BTreeMap<u64, Vec<Option<Vec<u8>>>> = BTreeMap::new();
        let mut next = 0u64;
        let mut failure: Option<VmdkError> = None;
        while next < num_batches {
            let Ok((seq, r)) = done_rx.recv() else {
                break;
            };
            match r {
                Ok(v) => {
                    pending.insert(seq, v);
                }
                Err((lba, detail)) => {
                    failure = Some(VmdkError::Compress {
                        path: dst.to_path_buf(),
                        lba,
                        detail,
                    });
                    break;
                }
            }
            while let Some(v) = pending.remove(&next) {
                for (i, rec) in v.into_iter().enumerate() {
                    if let Some(rec) = rec {
                        let g = (next * batch) as usize + i;
                        let Ok(at) = u32::try_from(sector) else {
                            failure = Some(VmdkError::Format {
                                path: dst.to_path_buf(),
                                reason: "the VMDK would exceed 2 TiB, beyond 32-bit grain offsets"
                                    .into(),
                            });
                            break;
                        };
                        gt[g] = at;
                        if let Err(e) = out.write_all(&rec) {
                            failure = Some(io_out(e));
                            break;
                        }
                        sector += rec.len() as u64 / SECTOR;
                        grains_written += 1;
                    }
                }
                if failure.is_some() {
                    break;
                }
                next += 1;
            }
            if failure.is_some() {
                break;
            }
        }
        drop(done_rx); // unblock workers if we stopped early
        let read = reader
            .join()
            .map_err(|_| VmdkError::Worker(dst.to_path_buf()))?;
        if let Some(f) = failure {
            return Err(f);
        }
        read.map_err(io_in)?;
        if next < num_batches {
            return Err(VmdkError::Worker(dst.to_path_buf()));
        }
        Ok(())
    });
    result?;

    // Grain tables, directory, footer, end of stream.
    let gt_sectors = GTES_PER_GT * 4 / SECTOR;
    let mut gd = Vec::with_capacity(num_gts as usize);
    for t in 0..num_gts as usize {
        out.write_all(&marker(gt_sectors, MARKER_GT))
            .map_err(io_out)?;
        sector += 1;
        gd.push(u32::try_from(sector).map_err(|_| VmdkError::Format {
            path: dst.to_path_buf(),
            reason: "the VMDK would exceed 2 TiB, beyond 32-bit grain offsets".into(),
        })?);
        let mut bytes = Vec::with_capacity((GTES_PER_GT * 4) as usize);
        for e in &gt[t * GTES_PER_GT as usize..(t + 1) * GTES_PER_GT as usize] {
            bytes.extend_from_slice(&e.to_le_bytes());
        }
        out.write_all(&bytes).map_err(io_out)?;
        sector += gt_sectors;
    }
    let gd_sectors = (num_gts * 4).div_ceil(SECTOR);
    out.write_all(&marker(gd_sectors, MARKER_GD))
        .map_err(io_out)?;
    sector += 1;
    let gd_offset = sector;
    let mut gd_bytes: Vec<u8> = gd.iter().flat_map(|e| e.to_le_bytes()).collect();
    gd_bytes.resize((gd_sectors * SECTOR) as usize, 0);
    out.write_all(&gd_bytes).map_err(io_out)?;
    out.write_all(&marker(1, MARKER_FOOTER)).map_err(io_out)?;
    out.write_all(&header(capacity_sectors, gd_offset))
        .map_err(io_out)?;
    out.write_all(&marker(0, MARKER_EOS)).map_err(io_out)?;

    // CID from the grain tables (which depend on every grain's compressed
    // size) and the capacity: content-derived, no clock.
    let mut h = Sha1::new();
    h.update(capacity_sectors.to_le_bytes());
    for e in &gt {
        h.update(e.to_le_bytes());
    }
    let d = h.finalize();
    let mut cid = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
    if cid == u32::MAX {
        cid = 0xfffffffe;
    }
    let desc =
        descriptor(cid, capacity_sectors, &file_name, &opts.adapter_type).map_err(|reason| {
            VmdkError::Format {
                path: dst.to_path_buf(),
                reason,
            }
        })?;
    let mut file = out.into_inner().map_err(|e| io_out(e.into_error()))?;
    file.seek(SeekFrom::Start(SECTOR)).map_err(io_out)?;
    file.write_all(&desc).map_err(io_out)?;
    file.sync_all().map_err(io_out)?;
    let file_size = file.metadata().map_err(io_out)?.len();
    Ok(VmdkReport {
        capacity: capacity_sectors * SECTOR,
        grains: grains_written,
        zero_grains: num_grains - grains_written,
        file_size,
        cid,
    })
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[o..o + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

/// The embedded descriptor text of a sparse VMDK.
pub fn read_descriptor(vmdk: &Path) -> Result<String, VmdkError> {
    let io_err = |source| VmdkError::Io {
        path: vmdk.to_path_buf(),
        source,
    };
    let f = File::open(vmdk).map_err(io_err)?;
    let mut h = [0u8; 512];
    f.read_exact_at(&mut h, 0).map_err(io_err)?;
    if u32_at(&h, 0) != MAGIC {
        return Err(VmdkError::Format {
            path: vmdk.to_path_buf(),
            reason: "no KDMV magic".into(),
        });
    }
    let off = u64_at(&h, 28);
    let size = u64_at(&h, 36).min(2048);
    let mut d = vec![0u8; (size * SECTOR) as usize];
    f.read_exact_at(&mut d, off * SECTOR).map_err(io_err)?;
    let end = d.iter().position(|b| *b == 0).unwrap_or(d.len());
    Ok(String::from_utf8_lossy(&d[..end]).into_owned())
}

/// Decompress a streamOptimized VMDK into a raw disk (sparse). Returns the capacity.
pub fn stream_optimized_to_raw(vmdk: &Path, raw: &Path) -> Result<u64, VmdkError> {
    let bad = |reason: String| VmdkError::Format {
        path: vmdk.to_path_buf(),
        reason,
    };
    let io_in = |source| VmdkError::Io {
        path: vmdk.to_path_buf(),
        source,
    };
    let io_out = |source| VmdkError::Io {
        path: raw.to_path_buf(),
        source,
    };
    let f = File::open(vmdk).map_err(io_in)?;
    let len = f.metadata().map_err(io_in)?.len();
    let mut h = [0u8; 512];
    f.read_exact_at(&mut h, 0).map_err(io_in)?;
    if u32_at(&h, 0) != MAGIC {
        return Err(bad("no KDMV magic".into()));
    }
    if u32_at(&h, 8) & (1 << 16) == 0 {
        return Err(bad("grains are not compressed (not streamOptimized)".into()));
    }
    if u64_at(&h, 56) == GD_AT_END {
        if len < 3 * SECTOR {
            return Err(bad("too short for a footer".into()));
        }
        f.read_exact_at(&mut h, len - 2 * SECTOR).map_err(io_in)?;
        if u32_at(&h, 0) != MAGIC {
            return Err(bad("no footer before the end-of-stream marker".into()));
        }
    }
    let capacity = u64_at(&h, 12) * SECTOR;
    let grain_sectors = u64_at(&h, 20);
    let gtes = u32_at(&h, 44) as u64;
    let gd_offset = u64_at(&h, 56);
    if grain_sectors == 0 || gtes == 0 || grain_sectors > 2048 {
        return Err(bad(format!(
            "grain size {grain_sectors}, {gtes} entries per table"
        )));
    }
    let grain = (grain_sectors * SECTOR) as usize;
    let num_grains = (capacity / SECTOR).div_ceil(grain_sectors);
    let num_gts = num_grains.div_ceil(gtes);
    let mut gd = vec![0u8; (num_gts * 4) as usize];
    f.read_exact_at(&mut gd, gd_offset * SECTOR)
        .map_err(io_in)?;
    let mut out = File::create(raw).map_err(io_out)?;
    let mut gt = vec![0u8; (gtes * 4) as usize];
    let mut comp = Vec::new();
    let mut plain = vec![0u8; grain];
    let mut d = Decompress::new(true);
    for t in 0..num_gts {
        let gt_off = u32_at(&gd, (t * 4) as usize) as u64;
        if gt_off == 0 {
            continue;
        }
        f.read_exact_at(&mut gt, gt_off * SECTOR).map_err(io_in)?;
        for e in 0..gtes {
            let g = t * gtes + e;
            if g >= num_grains {
                break;
            }
            let off = u32_at(&gt, (e * 4) as usize) as u64;
            if off == 0 {
                continue;
            }
            let mut mh = [0u8; 12];
            f.read_exact_at(&mut mh, off * SECTOR).map_err(io_in)?;
            let lba = u64_at(&mh, 0);
            let size = u32_at(&mh, 8) as usize;
            if lba != g * grain_sectors || size > 2 * grain + 1024 {
                return Err(bad(format!(
                    "grain {g}: marker says sector {lba}, {size} bytes"
                )));
            }
            comp.resize(size, 0);
            f.read_exact_at(&mut comp, off * SECTOR + 12)
                .map_err(io_in)?;
            d.reset(true);
            plain.iter_mut().for_each(|b| *b = 0);
            let st = d
                .decompress(&comp, &mut plain, FlushDecompress::Finish)
                .map_err(|e| bad(format!("grain {g}: {e}")))?;
            if st != Status::StreamEnd && (d.total_out() as usize) < grain {
                return Err(bad(format!("grain {g}: deflate stream incomplete")));
            }
            let start = g * grain as u64;
            let n = (grain as u64).min(capacity - start) as usize;
            write_skipping_zeros(&mut out, start, &plain[..n]).map_err(io_out)?;
        }
    }
    out.set_len(capacity).map_err(io_out)?;
    out.sync_all().map_err(io_out)?;
    Ok(capacity)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xorshift(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        let mut v = vec![0u8; n];
        for c in v.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        v
    }

    fn inflate(rec: &[u8]) -> Vec<u8> {
        let size = u32_at(rec, 8) as usize;
        let mut d = Decompress::new(true);
        let mut out = vec![0u8; GRAIN];
        let st = d
            .decompress(&rec[12..12 + size], &mut out, FlushDecompress::Finish)
            .unwrap();
        assert_eq!(st, Status::StreamEnd);
        assert_eq!(d.total_out() as usize, GRAIN);
        out
    }

    #[test]
    fn only_random_grains_look_incompressible() {
        let mut t = Vec::new();
        assert!(looks_incompressible(&xorshift(GRAIN, 7), &mut t));
        let text = "appliance log line, again and again\n".repeat(GRAIN / 36 + 1);
        assert!(!looks_incompressible(&text.as_bytes()[..GRAIN], &mut t));
        // random bytes repeated: a uniform histogram, but deflate halves it
        let mut twice = xorshift(GRAIN / 2, 9);
        twice.extend_from_within(..);
        assert!(!looks_incompressible(&twice, &mut t));
        // 4 KiB of random bytes sixteen times over
        let block = xorshift(4096, 11);
        let many: Vec<u8> = block.iter().copied().cycle().take(GRAIN).collect();
        assert!(!looks_incompressible(&many, &mut t));
        // random with a 2 KiB repeat at an odd distance: 3% repeated
        let mut r = xorshift(GRAIN, 13);
        r.copy_within(1000..3048, 40_001);
        assert!(!looks_incompressible(&r, &mut t));
        // half zeros
        let mut half = xorshift(GRAIN, 15);
        half[GRAIN / 2..].fill(0);
        assert!(!looks_incompressible(&half, &mut t));
    }

    #[test]
    fn stored_and_deflated_grains_round_trip() {
        let text = "appliance log line, again and again\n".repeat(GRAIN / 36 + 1);
        let mut data = xorshift(GRAIN, 3);
        data.extend_from_slice(&text.as_bytes()[..GRAIN]);
        data.extend_from_slice(&vec![0u8; GRAIN]);
        let job = Job {
            seq: 0,
            first_grain: 10,
            data: Some(data.clone()),
            grains: 3,
        };
        let mut c = Compress::new(Compression::new(6), true);
        let mut s = Compress::new(Compression::none(), true);
        let with = compress_batch(&mut c, Some(&mut s), &job).unwrap();
        let without = compress_batch(&mut c, None, &job).unwrap();
        for recs in [&with, &without] {
            assert!(recs[2].is_none(), "zero grain skipped");
            for (g, rec) in recs.iter().take(2).enumerate() {
                let rec = rec.as_ref().unwrap();
                assert_eq!(u64_at(rec, 0), (10 + g as u64) * GRAIN_SECTORS);
                assert_eq!(rec.len() % 512, 0);
                assert_eq!(inflate(rec), data[g * GRAIN..(g + 1) * GRAIN]);
            }
        }
        // the random grain: stored is no larger than deflate's own result
        let (a, b) = (
            with[0].as_ref().unwrap().len(),
            without[0].as_ref().unwrap().len(),
        );
        assert!(a <= b, "stored {a} vs deflated {b}");
        // the text grain is deflated either way
        assert_eq!(with[1], without[1]);
        assert!(with[1].as_ref().unwrap().len() < 2048);
    }

    #[test]
    fn header_fields_sit_where_the_spec_puts_them() {
        let h = header(2048, GD_AT_END);
        assert_eq!(&h[0..4], b"KDMV");
        assert_eq!(u32_at(&h, 4), 3);
        assert_eq!(u64_at(&h, 12), 2048);
        assert_eq!(u64_at(&h, 20), 128);
        assert_eq!(u64_at(&h, 56), u64::MAX);
        assert_eq!(&h[73..77], b"\n \r\n");
        assert_eq!(u16::from_le_bytes([h[77], h[78]]), 1);
    }

    #[test]
    fn descriptor_fits_and_names_the_capacity() {
        let d = descriptor(0x1234abcd, 16384, "disk.vmdk", "lsilogic").unwrap();
        let t = String::from_utf8_lossy(&d);
        assert!(t.contains("CID=1234abcd"));
        assert!(t.contains("RW 16384 SPARSE \"disk.vmdk\""));
        assert!(t.contains("createType=\"streamOptimized\""));
        assert_eq!(d.len(), 20 * 512);
    }
}
