//! Time `verify` and `extract` on a stemcell (release build for real figures).
//!
//! ```text
//! cargo run --release -p opsbake-stemcell --example stemcell_read -- STEMCELL.tgz [SCRATCH_DIR]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let sc = PathBuf::from(
        args.next()
            .expect("usage: stemcell_read STEMCELL.tgz [SCRATCH_DIR]"),
    );
    let scratch = args.next().map_or_else(std::env::temp_dir, PathBuf::from);
    let size = std::fs::metadata(&sc).unwrap().len() as f64 / (1 << 20) as f64;
    let t = Instant::now();
    let m = opsbake_stemcell::read_manifest(&sc).unwrap();
    println!(
        "read_manifest: {:.3}s ({} {})",
        t.elapsed().as_secs_f64(),
        m.name,
        m.version
    );
    let t = Instant::now();
    let r = opsbake_stemcell::verify(&sc).unwrap();
    let s = t.elapsed().as_secs_f64();
    println!(
        "verify: {s:.2}s, {size:.0} MiB file, {:.0} MiB/s, sha1 {}",
        size / s,
        r.image_sha1
    );
    let tmp = tempfile::tempdir_in(scratch).unwrap();
    let out = tmp.path().join("x");
    let t = Instant::now();
    let r =
        opsbake_stemcell::extract(&sc, &out, &opsbake_stemcell::ExtractOptions::default()).unwrap();
    let s = t.elapsed().as_secs_f64();
    println!(
        "extract: {s:.2}s, {} MiB logical, {} MiB written, {:.0} MiB/s logical",
        r.logical_bytes >> 20,
        r.written_bytes >> 20,
        (r.logical_bytes >> 20) as f64 / s
    );
}
