//! Benchmark: opsbake's streamOptimized VMDK writer against
//! `qemu-img convert -O vmdk -o subformat=streamOptimized`.
//!
//! The disk (issue 6, "Speed"): 5 GiB sparse, 1 GiB of data in 16 runs of
//! 64 MiB spread over the disk, half random bytes, half repetitive text.
//!
//! ```text
//! cargo run --release -p opsbake-stemcell --example vmdk_bench -- [DIR] [--size-gib N] [--runs N] [--level L]
//! ```
//! Prints wall times, output sizes and throughputs, and checks both outputs
//! with `qemu-img compare`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::Instant;

use opsbake_stemcell::vmdk::{write_stream_optimized, VmdkOptions};
use opsbake_stemcell::QemuImg;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut dir: Option<PathBuf> = None;
    let mut size_gib = 5u64;
    let mut runs = 16u64;
    let mut level = 6u32;
    let mut threads = 0usize;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--size-gib" => size_gib = args.next().unwrap().parse().unwrap(),
            "--runs" => runs = args.next().unwrap().parse().unwrap(),
            "--level" => level = args.next().unwrap().parse().unwrap(),
            "--threads" => threads = args.next().unwrap().parse().unwrap(),
            d => dir = Some(PathBuf::from(d)),
        }
    }
    let tmp = tempfile::tempdir_in(dir.unwrap_or_else(std::env::temp_dir)).unwrap();
    let raw = tmp.path().join("disk.raw");
    let size = size_gib << 30;
    let run_len: u64 = 64 << 20;
    let t = Instant::now();
    {
        let mut f = File::create(&raw).unwrap();
        f.set_len(size).unwrap();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut random = vec![0u8; run_len as usize];
        let text: Vec<u8> =
            "BOSH stemcell appliance log line: opsbake baked this image reproducibly.\n"
                .repeat((run_len as usize) / 72 + 1)
                .into_bytes()[..run_len as usize]
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
    println!(
        "disk: {size_gib} GiB sparse, {runs} runs of 64 MiB ({} MiB data, half random, half text), made in {:.1}s",
        runs * 64,
        t.elapsed().as_secs_f64()
    );
    let data_mib = (runs * 64) as f64;

    let ours = tmp.path().join("ours.vmdk");
    let opts = VmdkOptions {
        level,
        threads,
        ..VmdkOptions::default()
    };
    let t = Instant::now();
    let report = write_stream_optimized(&raw, &ours, &opts).unwrap();
    let ours_s = t.elapsed().as_secs_f64();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "opsbake (level {level}, {} threads): {ours_s:.2}s, {} bytes, {:.0} MiB/s of data, {:.0} MiB/s of disk",
        if threads == 0 { cores } else { threads },
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
