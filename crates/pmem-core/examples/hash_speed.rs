//! Measures the image hash on this machine: each algorithm alone on one
//! thread, and the file sink writing (and hashing) an image of `GIB` GiB in
//! 1 MiB slices as the writer thread does, to a readable file (as pmem's
//! images are made) and to a write-only one. Figures: docs/benchmarks.md.
//!
//! ```text
//! cargo run --release -p pmem-core --example hash_speed -- [GIB] [DIR]
//! ```

use pmem_core::sink::{create_image_file, HashingSink, ImageDigest};
use pmem_core::{ByteSink, HashAlgorithm};
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let gib: u64 = args.next().map_or(1, |a| a.parse().expect("GiB"));
    let dir = args
        .next()
        .unwrap_or_else(|| std::env::temp_dir().display().to_string());
    // 64 MiB of varied bytes, hashed or written over and over.
    let block: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let total = gib << 30;
    let rounds = total / block.len() as u64;
    for algorithm in HashAlgorithm::ALL {
        let started = Instant::now();
        let mut digest = ImageDigest::new(algorithm);
        for _ in 0..rounds {
            digest.update(&block);
        }
        let hash = digest.finish().expect("hashed");
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{algorithm:>7} alone, one thread: {:.2} s/GiB ({:.0} MiB/s) {}",
            secs / gib as f64,
            (total >> 20) as f64 / secs,
            &hash.hex()[..16]
        );
    }
    // The sink as the writer thread drives it: 1 MiB slices.
    for (mode, readable) in [("readable", true), ("write-only", false)] {
        for algorithm in [
            Some(HashAlgorithm::Blake3),
            Some(HashAlgorithm::Sha256),
            None,
        ] {
            let path = std::path::Path::new(&dir).join("pmem-hash-speed.img");
            let _ = std::fs::remove_file(&path);
            let file = if readable {
                create_image_file(&path, false).expect("image file")
            } else {
                std::fs::File::create(&path).expect("image file")
            };
            let started = Instant::now();
            let mut sink = Box::new(HashingSink::file(file).with_hash(algorithm));
            for _ in 0..rounds {
                for slice in block.chunks(1 << 20) {
                    sink.write_all(slice).expect("write");
                }
            }
            let summary = sink.finish().expect("finish");
            let secs = started.elapsed().as_secs_f64();
            assert_eq!(summary.bytes, total);
            println!(
                "file sink, {mode:>10}, {:>6}: {:.2} s/GiB ({:.0} MiB/s)",
                algorithm.map_or("none", HashAlgorithm::name),
                secs / gib as f64,
                (total >> 20) as f64 / secs
            );
            let _ = std::fs::remove_file(&path);
        }
    }
}
