//! A small, deterministic ISO9660 writer with Rock Ridge names.
//!
//! Enough for the CD-ROMs that hand a build VM its settings: a handful of
//! files in the root directory (the BOSH agent's `env`/`ENV`, an OVF
//! environment's `ovf-env.xml`). The primary ISO9660 tree carries mangled
//! 8.3 upper-case names (`ENV.;1`, `ENV_1.;1`, `OVF_ENV.XML;1`); Rock Ridge `NM`
//! entries carry the exact names, so Linux (which prefers Rock Ridge and
//! matches its names case-sensitively) sees `env`, `ENV` and `ovf-env.xml`.
//!
//! Output is a pure function of the inputs: entries are sorted, every date
//! is the timestamp given to [`IsoWriter::timestamp`] (the Unix epoch when
//! none is given), and nothing else varies.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use crate::settings::AgentSettings;

const SECTOR: usize = 2048;
/// Rock Ridge `ER` identifier of RRIP 1.09 / IEEE P1282 (what Linux and isoinfo look for).
const RRIP_ID: &[u8] = b"RRIP_1991A";
const RRIP_DES: &[u8] = b"ROCK RIDGE INTERCHANGE PROTOCOL";
const RRIP_SRC: &[u8] = b"IEEE P1282";

/// Errors from writing an ISO image.
#[derive(Debug, thiserror::Error)]
pub enum IsoError {
    /// A file name is empty, too long for Rock Ridge in one record, or holds `/` or NUL.
    #[error("ISO file name {name:?} is not usable: {reason}")]
    BadName {
        /// The name given.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The same name was added twice.
    #[error("ISO file name {0:?} was added twice")]
    Duplicate(String),
    /// A file is larger than ISO9660 allows in one extent (4 GiB - 1).
    #[error("ISO file {name:?} is {size} bytes, more than one ISO9660 extent holds")]
    TooLarge {
        /// The file name.
        name: String,
        /// Its size in bytes.
        size: usize,
    },
    /// The timestamp is out of range.
    #[error("ISO timestamp {0} is out of range")]
    BadTimestamp(i64),
    /// Serializing the settings failed.
    #[error("cannot serialize the agent settings: {0}")]
    Settings(#[from] serde_json::Error),
    /// Writing the image failed.
    #[error("cannot write ISO image {path}: {source}")]
    Io {
        /// The image path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Builds an ISO9660 image in memory (the files it is meant for are small).
#[derive(Debug, Clone)]
pub struct IsoWriter {
    volume_id: String,
    timestamp: i64,
    files: Vec<(String, Vec<u8>)>,
}

impl IsoWriter {
    /// A writer for a volume labelled `volume_id` (upper-cased and cut to 32
    /// ISO d-characters; cloud-init's NoCloud wants `CIDATA`, the BOSH agent
    /// does not care).
    pub fn new(volume_id: &str) -> Self {
        IsoWriter {
            volume_id: volume_id.to_string(),
            timestamp: 0,
            files: Vec::new(),
        }
    }

    /// Use this Unix time (e.g. `SOURCE_DATE_EPOCH`) for every date in the image.
    pub fn timestamp(mut self, unix_seconds: i64) -> Self {
        self.timestamp = unix_seconds;
        self
    }

    /// Add a file to the root directory.
    pub fn file(mut self, name: &str, contents: impl Into<Vec<u8>>) -> Self {
        self.files.push((name.to_string(), contents.into()));
        self
    }

    /// The image's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, IsoError> {
        build(self)
    }

    /// Write the image to `path` (via a temporary file in the same directory, then a rename).
    pub fn write_to(&self, path: &Path) -> Result<(), IsoError> {
        let bytes = self.to_bytes()?;
        let io = |source| IsoError::Io {
            path: path.to_path_buf(),
            source,
        };
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        tmp.write_all(&bytes).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        // Temp files are 0600; an ISO is handed to a hypervisor that may run as another user.
        std::fs::set_permissions(
            tmp.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        Ok(())
    }
}

/// The BOSH agent settings CD-ROM: files `env` (what the agent reads on
/// vSphere) and `ENV` (the VirtualBox CPI's name), both holding the settings
/// JSON. The one writer of it: the vbox builder writes it to a file, the
/// vsphere builder uploads these bytes to the datastore, and the QEMU boot test
/// of the test stemcell boots with it.
pub fn agent_settings_iso(settings: &AgentSettings, timestamp: i64) -> Result<IsoWriter, IsoError> {
    let json = settings.to_json()?;
    Ok(IsoWriter::new("BOSH_ENV")
        .timestamp(timestamp)
        .file("env", json.clone())
        .file("ENV", json))
}

/// Write [`agent_settings_iso`] to `path`.
pub fn write_agent_settings_iso(
    settings: &AgentSettings,
    timestamp: i64,
    path: &Path,
) -> Result<(), IsoError> {
    agent_settings_iso(settings, timestamp)?.write_to(path)
}

/// Write an OVF environment CD-ROM (file `ovf-env.xml`, as vSphere attaches it).
pub fn write_ovf_env_iso(ovf_env_xml: &str, timestamp: i64, path: &Path) -> Result<(), IsoError> {
    IsoWriter::new("OVF_ENV")
        .timestamp(timestamp)
        .file("ovf-env.xml", ovf_env_xml.as_bytes().to_vec())
        .write_to(path)
}

struct Entry<'a> {
    iso_name: Vec<u8>,
    rr_name: &'a str,
    data: &'a [u8],
    extent: u32,
}

fn d_chars(s: &str, max: usize) -> String {
    s.chars()
        .map(|c| c.to_ascii_uppercase())
        .map(|c| {
            if c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(max)
        .collect()
}

/// An 8.3 name (ISO9660 level 1) for `name`, unique among `taken`.
fn mangle(name: &str, taken: &mut BTreeSet<Vec<u8>>) -> Vec<u8> {
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i + 1..]),
        _ => (name, ""),
    };
    let stem = d_chars(stem, 8);
    let ext = d_chars(ext, 3);
    let mut n = 0u32;
    loop {
        let s = if n == 0 {
            stem.clone()
        } else {
            let suffix = format!("_{n}");
            let keep = 8usize.saturating_sub(suffix.len()).min(stem.len());
            format!("{}{}", &stem[..keep], suffix)
        };
        let candidate = format!("{s}.{ext};1").into_bytes();
        if taken.insert(candidate.clone()) {
            return candidate;
        }
        n += 1;
    }
}

fn both16(v: u16) -> [u8; 4] {
    let l = v.to_le_bytes();
    let b = v.to_be_bytes();
    [l[0], l[1], b[0], b[1]]
}

fn both32(v: u32) -> [u8; 8] {
    let l = v.to_le_bytes();
    let b = v.to_be_bytes();
    [l[0], l[1], l[2], l[3], b[0], b[1], b[2], b[3]]
}

fn dir_date(t: &OffsetDateTime) -> [u8; 7] {
    [
        (t.year() - 1900).clamp(0, 255) as u8,
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        0,
    ]
}

fn vol_date(t: &OffsetDateTime) -> [u8; 17] {
    let s = format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}00",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    let mut out = [0u8; 17];
    out[..16].copy_from_slice(&s.as_bytes()[..16]);
    out
}

fn px(mode: u32, nlink: u32) -> Vec<u8> {
    let mut v = vec![b'P', b'X', 36, 1];
    v.extend_from_slice(&both32(mode));
    v.extend_from_slice(&both32(nlink));
    v.extend_from_slice(&both32(0));
    v.extend_from_slice(&both32(0));
    v
}

fn dir_record(
    ident: &[u8],
    extent: u32,
    size: u32,
    is_dir: bool,
    date: &[u8; 7],
    system_use: &[u8],
) -> Vec<u8> {
    let mut r = vec![0u8; 33];
    r[2..10].copy_from_slice(&both32(extent));
    r[10..18].copy_from_slice(&both32(size));
    r[18..25].copy_from_slice(date);
    r[25] = if is_dir { 2 } else { 0 };
    r[28..32].copy_from_slice(&both16(1));
    r[32] = ident.len() as u8;
    r.extend_from_slice(ident);
    if ident.len().is_multiple_of(2) {
        r.push(0);
    }
    r.extend_from_slice(system_use);
    if r.len() % 2 == 1 {
        r.push(0);
    }
    r[0] = r.len() as u8;
    r
}

fn pad_str(field: &mut [u8], s: &str) {
    for (i, b) in field.iter_mut().enumerate() {
        *b = s.as_bytes().get(i).copied().unwrap_or(b' ');
    }
}

fn sectors(len: usize) -> usize {
    len.div_ceil(SECTOR)
}

fn build(w: &IsoWriter) -> Result<Vec<u8>, IsoError> {
    let t = OffsetDateTime::from_unix_timestamp(w.timestamp)
        .map_err(|_| IsoError::BadTimestamp(w.timestamp))?;
    if !(1900..=2155).contains(&t.year()) {
        return Err(IsoError::BadTimestamp(w.timestamp));
    }
    let ddate = dir_date(&t);

    // Validate and sort by the real name; then mangle in that order so the
    // ISO names are stable, and sort the records by ISO name as ECMA-119 wants.
    let mut files: Vec<&(String, Vec<u8>)> = w.files.iter().collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut seen = BTreeSet::new();
    for (name, data) in &files {
        let bad = |reason| IsoError::BadName {
            name: name.clone(),
            reason,
        };
        if name.is_empty() {
            return Err(bad("empty"));
        }
        if name.len() > 200 {
            return Err(bad("longer than 200 bytes"));
        }
        if name.contains('/') || name.contains('\0') || name == "." || name == ".." {
            return Err(bad("contains '/' or NUL, or is . or .."));
        }
        if !seen.insert(name.as_str()) {
            return Err(IsoError::Duplicate(name.clone()));
        }
        if data.len() > u32::MAX as usize {
            return Err(IsoError::TooLarge {
                name: name.clone(),
                size: data.len(),
            });
        }
    }
    let mut taken = BTreeSet::new();
    let mut entries: Vec<Entry<'_>> = files
        .iter()
        .map(|(name, data)| Entry {
            iso_name: mangle(name, &mut taken),
            rr_name: name,
            data,
            extent: 0,
        })
        .collect();
    entries.sort_by(|a, b| a.iso_name.cmp(&b.iso_name));

    // Root directory records (without extents yet, to size the directory).
    let mut root_dot_su = Vec::new();
    root_dot_su.extend_from_slice(&[b'S', b'P', 7, 1, 0xBE, 0xEF, 0]);
    root_dot_su.extend_from_slice(&px(0o040555, 2));
    let er_len = 8 + RRIP_ID.len() + RRIP_DES.len() + RRIP_SRC.len();
    root_dot_su.extend_from_slice(&[
        b'E',
        b'R',
        er_len as u8,
        1,
        RRIP_ID.len() as u8,
        RRIP_DES.len() as u8,
        RRIP_SRC.len() as u8,
        1,
    ]);
    root_dot_su.extend_from_slice(RRIP_ID);
    root_dot_su.extend_from_slice(RRIP_DES);
    root_dot_su.extend_from_slice(RRIP_SRC);
    let root_dotdot_su = px(0o040555, 2);
    let file_su = |e: &Entry<'_>| {
        let mut su = px(0o100444, 1);
        su.extend_from_slice(&[b'N', b'M', (5 + e.rr_name.len()) as u8, 1, 0]);
        su.extend_from_slice(e.rr_name.as_bytes());
        su
    };

    let lay_out = |records: &[Vec<u8>]| -> usize {
        // Records never cross a sector boundary.
        let mut used = 0usize;
        for r in records {
            let in_sector = used % SECTOR;
            if in_sector + r.len() > SECTOR {
                used += SECTOR - in_sector;
            }
            used += r.len();
        }
        used
    };

    let root_lba: u32 = 20; // 16 PVD, 17 terminator, 18 L path table, 19 M path table
    let sizing: Vec<Vec<u8>> = [
        dir_record(&[0], 0, 0, true, &ddate, &root_dot_su),
        dir_record(&[1], 0, 0, true, &ddate, &root_dotdot_su),
    ]
    .into_iter()
    .chain(
        entries
            .iter()
            .map(|e| dir_record(&e.iso_name, 0, 0, false, &ddate, &file_su(e))),
    )
    .collect();
    let root_sectors = sectors(lay_out(&sizing)).max(1);
    let root_size = (root_sectors * SECTOR) as u32;
    let mut next = root_lba as usize + root_sectors;
    for e in entries.iter_mut() {
        e.extent = next as u32;
        next += sectors(e.data.len());
    }
    let total_sectors = next;

    let mut img = vec![0u8; total_sectors * SECTOR];

    // Root directory.
    let records: Vec<Vec<u8>> = [
        dir_record(&[0], root_lba, root_size, true, &ddate, &root_dot_su),
        dir_record(&[1], root_lba, root_size, true, &ddate, &root_dotdot_su),
    ]
    .into_iter()
    .chain(entries.iter().map(|e| {
        dir_record(
            &e.iso_name,
            e.extent,
            e.data.len() as u32,
            false,
            &ddate,
            &file_su(e),
        )
    }))
    .collect();
    let mut pos = root_lba as usize * SECTOR;
    for r in &records {
        let in_sector = pos % SECTOR;
        if in_sector + r.len() > SECTOR {
            pos += SECTOR - in_sector;
        }
        img[pos..pos + r.len()].copy_from_slice(r);
        pos += r.len();
    }

    // File data.
    for e in &entries {
        let start = e.extent as usize * SECTOR;
        img[start..start + e.data.len()].copy_from_slice(e.data);
    }

    // Path tables: only the root.
    let l = 18 * SECTOR;
    img[l] = 1;
    img[l + 2..l + 6].copy_from_slice(&root_lba.to_le_bytes());
    img[l + 6..l + 8].copy_from_slice(&1u16.to_le_bytes());
    let m = 19 * SECTOR;
    img[m] = 1;
    img[m + 2..m + 6].copy_from_slice(&root_lba.to_be_bytes());
    img[m + 6..m + 8].copy_from_slice(&1u16.to_be_bytes());

    // Primary volume descriptor.
    let p = 16 * SECTOR;
    let pvd = &mut img[p..p + SECTOR];
    pvd[0] = 1;
    pvd[1..6].copy_from_slice(b"CD001");
    pvd[6] = 1;
    pad_str(&mut pvd[8..40], "LINUX");
    pad_str(&mut pvd[40..72], &d_chars(&w.volume_id, 32));
    pvd[80..88].copy_from_slice(&both32(total_sectors as u32));
    pvd[120..124].copy_from_slice(&both16(1));
    pvd[124..128].copy_from_slice(&both16(1));
    pvd[128..132].copy_from_slice(&both16(SECTOR as u16));
    pvd[132..140].copy_from_slice(&both32(10));
    pvd[140..144].copy_from_slice(&18u32.to_le_bytes());
    pvd[148..152].copy_from_slice(&19u32.to_be_bytes());
    let root_rec = dir_record(&[0], root_lba, root_size, true, &ddate, &[]);
    pvd[156..190].copy_from_slice(&root_rec);
    pad_str(&mut pvd[190..318], "");
    pad_str(&mut pvd[318..446], "");
    pad_str(&mut pvd[446..574], "");
    pad_str(&mut pvd[574..702], "OPSBAKE");
    pad_str(&mut pvd[702..813], "");
    let vd = vol_date(&t);
    pvd[813..830].copy_from_slice(&vd);
    pvd[830..847].copy_from_slice(&vd);
    pvd[847..863].copy_from_slice(b"0000000000000000");
    pvd[864..881].copy_from_slice(&vd);
    pvd[881] = 1;

    // Volume descriptor set terminator.
    let term = 17 * SECTOR;
    img[term] = 255;
    img[term + 1..term + 6].copy_from_slice(b"CD001");
    img[term + 6] = 1;

    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mangled_names_are_unique_and_8_3() {
        let mut taken = BTreeSet::new();
        assert_eq!(mangle("ENV", &mut taken), b"ENV.;1".to_vec());
        assert_eq!(mangle("env", &mut taken), b"ENV_1.;1".to_vec());
        assert_eq!(mangle("ovf-env.xml", &mut taken), b"OVF_ENV.XML;1".to_vec());
        assert_eq!(
            mangle("a-very-long-name.json", &mut taken),
            b"A_VERY_L.JSO;1".to_vec()
        );
    }

    #[test]
    fn duplicate_and_bad_names_are_refused() {
        let e = IsoWriter::new("X").file("a", "1").file("a", "2").to_bytes();
        assert!(matches!(e, Err(IsoError::Duplicate(n)) if n == "a"));
        let e = IsoWriter::new("X").file("a/b", "1").to_bytes();
        assert!(matches!(e, Err(IsoError::BadName { .. })));
    }

    #[test]
    fn output_is_deterministic_and_order_independent() {
        let a = IsoWriter::new("V")
            .timestamp(1_700_000_000)
            .file("b", "2")
            .file("a", "1")
            .to_bytes()
            .unwrap();
        let b = IsoWriter::new("V")
            .timestamp(1_700_000_000)
            .file("a", "1")
            .file("b", "2")
            .to_bytes()
            .unwrap();
        assert_eq!(a, b);
        let c = IsoWriter::new("V")
            .timestamp(1_700_000_001)
            .file("a", "1")
            .file("b", "2")
            .to_bytes()
            .unwrap();
        assert_ne!(a, c);
        assert_eq!(&a[16 * SECTOR + 1..16 * SECTOR + 6], b"CD001");
    }
}
