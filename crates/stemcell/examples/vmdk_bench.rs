//! Benchmark: opsbake's streamOptimized VMDK writer against
//! `qemu-img convert -O vmdk -o subformat=streamOptimized`.
//!
//! The disk (issue 6, "Speed"): 5 GiB sparse, 1 GiB of data in 16 runs of
//! 64 MiB spread over the disk, half random bytes, half repetitive text.
//!
//! ```text
//! # everything in one process (disk, both writers, compare):
//! cargo run --release -p opsbake-stemcell --example vmdk_bench -- [DIR] [--size-gib N] [--runs N] [--level L] [--threads N] [--always-deflate]
//! # the pieces crates/iaas-vbox/bench/run.sh times one by one (each its own process,
//! # so /usr/bin/time -v reports the writer's own peak RSS):
//! vmdk_bench make-disk PATH [--size-gib N] [--runs N]
//! vmdk_bench write RAW OUT [--level L] [--threads N] [--batch GRAINS] [--always-deflate]
//! ```
//! `write` prints one JSON line: seconds, file_size, grains, zero_grains, level, threads.
//! `--always-deflate` turns off the stored blocks for incompressible grains
//! (`VmdkOptions::store_incompressible`): every grain goes through deflate, as in qemu-img.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use opsbake_stemcell::vmdk::{write_stream_optimized, VmdkOptions};
use opsbake_stemcell::QemuImg;

const RUN_LEN: u64 = 64 << 20;

/// The test disk: `size` bytes sparse, `runs` runs of 64 MiB spread evenly,
/// even runs xorshift random bytes, odd runs a repeated log line. Deterministic.
fn make_disk(raw: &Path, size: u64, runs: u64) {
    let mut f = File::create(raw).unwrap();
    f.set_len(size).unwrap();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut random = vec![0u8; RUN_LEN as usize];
    let text: Vec<u8> =
        "BOSH stemcell appliance log line: opsbake baked this image reproducibly.\n"
            .repeat((RUN_LEN as usize) / 72 + 1)
            .into_bytes()[..RUN_LEN as usize]
            .to_vec();
    let stride = size / runs;
    for i in 0..runs {
        let data = if i % 2 == 0 {
            for c in random.chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_le_bytes());
            }
            &random
        } else {
            &text
        };
        f.seek(SeekFrom::Start(i * stride)).unwrap();
        f.write_all(data).unwrap();
    }
    f.sync_all().unwrap();
}

fn num<T: std::str::FromStr>(v: Option<String>, flag: &str) -> T {
    v.and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{flag} needs a number"))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut positional: Vec<String> = Vec::new();
    let mut size_gib = 5u64;
    let mut runs = 16u64;
    let mut level = 6u32;
    let mut threads = 0usize;
    let mut batch = VmdkOptions::default().batch_grains;
    let mut store = true;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--size-gib" => size_gib = num(args.next(), "--size-gib"),
            "--runs" => runs = num(args.next(), "--runs"),
            "--level" => level = num(args.next(), "--level"),
            "--threads" => threads = num(args.next(), "--threads"),
            "--batch" => batch = num(args.next(), "--batch"),
            "--always-deflate" => store = false,
            _ => positional.push(a),
        }
    }
    let opts = VmdkOptions {
        level,
        threads,
        batch_grains: batch,
        store_incompressible: store,
        ..VmdkOptions::default()
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    match positional.first().map(String::as_str) {
        Some("make-disk") => {
            let raw = PathBuf::from(positional.get(1).expect("make-disk PATH"));
            let t = Instant::now();
            make_disk(&raw, size_gib << 30, runs);
            eprintln!(
                "disk {}: {size_gib} GiB sparse, {runs} runs of 64 MiB, made in {:.1}s",
                raw.display(),
                t.elapsed().as_secs_f64()
            );
        }
        Some("write") => {
            let raw = PathBuf::from(positional.get(1).expect("write RAW OUT"));
            let out = PathBuf::from(positional.get(2).expect("write RAW OUT"));
            let t = Instant::now();
            let r = write_stream_optimized(&raw, &out, &opts).unwrap();
            let s = t.elapsed().as_secs_f64();
            println!(
                "{}",
                serde_json::json!({
                    "seconds": s,
                    "file_size": r.file_size,
                    "grains": r.grains,
                    "zero_grains": r.zero_grains,
                    "level": level,
                    "threads": if threads == 0 { cores } else { threads },
                    "batch_grains": batch,
                    "store_incompressible": store,
                })
            );
        }
        dir => legacy(dir.map(PathBuf::from), size_gib, runs, &opts, cores),
    }
}

/// The original all-in-one run.
fn legacy(dir: Option<PathBuf>, size_gib: u64, runs: u64, opts: &VmdkOptions, cores: usize) {
    let tmp = tempfile::tempdir_in(dir.unwrap_or_else(std::env::temp_dir)).unwrap();
    let raw = tmp.path().join("disk.raw");
    let size = size_gib << 30;
    let t = Instant::now();
    make_disk(&raw, size, runs);
    println!(
        "disk: {size_gib} GiB sparse, {runs} runs of 64 MiB ({} MiB data, half random, half text), made in {:.1}s",
        runs * 64,
        t.elapsed().as_secs_f64()
    );
    let data_mib = (runs * 64) as f64;

    let ours = tmp.path().join("ours.vmdk");
    let t = Instant::now();
    let report = write_stream_optimized(&raw, &ours, opts).unwrap();
    let ours_s = t.elapsed().as_secs_f64();
    println!(
        "opsbake (level {}, {} threads): {ours_s:.2}s, {} bytes, {:.0} MiB/s of data, {:.0} MiB/s of disk",
        opts.level,
        if opts.threads == 0 { cores } else { opts.threads },
        report.file_size,
        data_mib / ours_s,
        (size >> 20) as f64 / ours_s
    );

    let q = QemuImg::default();
    let theirs = tmp.path().join("qemu.vmdk");
    let t = Instant::now();
    q.convert(
        &raw,
        "raw",
        &theirs,
        "vmdk",
        Some("subformat=streamOptimized"),
    )
    .unwrap();
    let q_s = t.elapsed().as_secs_f64();
    let q_size = std::fs::metadata(&theirs).unwrap().len();
    println!(
        "qemu-img convert: {q_s:.2}s, {q_size} bytes, {:.0} MiB/s of data, {:.0} MiB/s of disk",
        data_mib / q_s,
        (size >> 20) as f64 / q_s
    );
    println!(
        "speed-up: {:.2}x; size ratio ours/qemu: {:.3}",
        q_s / ours_s,
        report.file_size as f64 / q_size as f64
    );
    let t = Instant::now();
    assert!(
        q.compare(&raw, "raw", &ours, "vmdk").unwrap(),
        "our VMDK differs from the raw disk"
    );
    println!(
        "qemu-img compare raw vs ours: identical ({:.1}s)",
        t.elapsed().as_secs_f64()
    );
    assert!(q.compare(&ours, "vmdk", &theirs, "vmdk").unwrap());
    println!("qemu-img compare ours vs qemu's: identical");
}
