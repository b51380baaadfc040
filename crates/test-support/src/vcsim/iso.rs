//! Reading a file back from the settings ISO a build uploaded.

/// A file of an ISO9660 image's root directory, by its primary name
/// (`ENV.;1` for the agent's `env`): a small reader for the settings ISO the
/// builders write, independent of opsbake's writer.
pub fn iso_root_file(iso: &[u8], iso_name: &str) -> Option<Vec<u8>> {
    const SECTOR: usize = 2048;
    let pvd = iso.get(16 * SECTOR..17 * SECTOR)?;
    if pvd.first() != Some(&1) || pvd.get(1..6) != Some(b"CD001".as_slice()) {
        return None;
    }
    let root = pvd.get(156..190)?;
    let le32 = |b: &[u8], at: usize| -> Option<usize> {
        let x = b.get(at..at + 4)?;
        Some(u32::from_le_bytes([x[0], x[1], x[2], x[3]]) as usize)
    };
    let (lba, len) = (le32(root, 2)?, le32(root, 10)?);
    let dir = iso.get(lba * SECTOR..lba * SECTOR + len)?;
    let mut i = 0;
    while i < dir.len() {
        let rl = usize::from(*dir.get(i)?);
        if rl == 0 {
            // records do not cross sectors: skip to the next one
            i = (i / SECTOR + 1) * SECTOR;
            continue;
        }
        let rec = dir.get(i..i + rl)?;
        let nl = usize::from(*rec.get(32)?);
        let name = rec.get(33..33 + nl)?;
        if name.eq_ignore_ascii_case(iso_name.as_bytes()) {
            let (flba, flen) = (le32(rec, 2)?, le32(rec, 10)?);
            return iso
                .get(flba * SECTOR..flba * SECTOR + flen)
                .map(<[u8]>::to_vec);
        }
        i += rl;
    }
    None
}

#[cfg(test)]
mod iso_tests {
    #[test]
    fn reads_the_env_file_of_a_settings_iso() {
        let iso = opsbake_stemcell::IsoWriter::new("BOSH_ENV")
            .file("env", b"{\"agent_id\":\"x\"}".to_vec())
            .file("ENV", b"{\"agent_id\":\"x\"}".to_vec())
            .to_bytes()
            .unwrap();
        let names = ["ENV.;1", "ENV_1.;1"];
        let found: Vec<_> = names
            .iter()
            .filter_map(|n| super::iso_root_file(&iso, n))
            .collect();
        assert!(!found.is_empty(), "no ENV file in the ISO");
        assert_eq!(found[0], b"{\"agent_id\":\"x\"}");
        assert!(super::iso_root_file(&iso, "NOPE.;1").is_none());
        assert!(super::iso_root_file(b"short", "ENV.;1").is_none());
    }
}
