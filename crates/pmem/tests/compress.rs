//! `--compress`: AVML compressed LiME (snappy) and zstd streams, end to end
//! through the `pmem` binary. Readers here are independent of pmem's: LiME
//! parsed by hand, zstd decoded by the `zstd` tool.

use serde_json::Value;
use std::path::Path;

mod common;
use common::*;

fn lime_record(start: u64, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&0x4C69_4D45u32.to_le_bytes());
    v.extend_from_slice(&1u32.to_le_bytes());
    v.extend_from_slice(&start.to_le_bytes());
    v.extend_from_slice(&(start + data.len() as u64 - 1).to_le_bytes());
    v.extend_from_slice(&[0; 8]);
    v.extend_from_slice(data);
    v
}

fn random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// Kernel-like memory: text, zero pages, a stretch of incompressible data.
fn mixed() -> Vec<u8> {
    let mut v: Vec<u8> = (0..3 << 20).map(|i| b"pmem acquisition "[i % 17]).collect();
    v.extend(vec![0u8; 2 << 20]);
    v.extend(random(3, 3 << 20));
    v.extend((0..1 << 20).map(|i| (i / 4096) as u8 | 1));
    v
}

fn convert(input: &Path, output: &Path, args: &[&str]) -> assert_cmd::assert::Assert {
    pmem()
        .args(["convert", "--quiet", "--arch", "x86_64"])
        .args(args)
        .arg(input)
        .arg(output)
        .assert()
}

#[test]
fn avml_round_trip_keeps_every_byte_and_leaves_zeros_out() {
    let dir = tempfile::tempdir().unwrap();
    let lime = dir.path().join("in.lime");
    let mut bytes = lime_record(0x10_0000, &mixed());
    bytes.extend(lime_record(1 << 32, &mixed()[..1 << 20]));
    std::fs::write(&lime, &bytes).unwrap();
    let avml = dir.path().join("out.avml");
    convert(&lime, &avml, &["--format", "lime", "--compress", "snappy"]).success();
    let image = std::fs::read(&avml).unwrap();
    assert_eq!(&image[..4], b"AVML");
    assert!(image.len() < bytes.len() * 3 / 4, "{} bytes", image.len());
    let man = manifest(&avml);
    assert_eq!(man["format"], "avml");
    assert_eq!(man["compression"], "snappy");
    assert_eq!(man["bytes"]["zero"], 2 << 20);
    // The zero MiBs are not in the file: the image is smaller than the
    // non-zero memory, and the manifest keeps the full ranges.
    assert_eq!(man["ranges"][0]["bytes"], mixed().len());
    pmem().arg("verify").arg(&avml).assert().success();
    // Back to LiME: the original bytes.
    let back = dir.path().join("back.lime");
    convert(&avml, &back, &["--format", "lime"]).success();
    assert!(std::fs::read(&back).unwrap() == bytes);
    assert_eq!(manifest(&back)["memory_hash"], man["memory_hash"]);
    assert_eq!(man["memory_hash"]["algorithm"], "blake3");
}

#[test]
fn incompressible_memory_falls_back_to_lime_on_files_and_fails_on_streams() {
    let dir = tempfile::tempdir().unwrap();
    let lime = dir.path().join("random.lime");
    let bytes = lime_record(0, &random(1, 20 << 20));
    std::fs::write(&lime, &bytes).unwrap();
    let out = dir.path().join("out.img");
    convert(&lime, &out, &["--format", "lime", "--compress", "snappy"])
        .success()
        .stderr(predicates::str::contains(
            "wrote plain (uncompressed) LiME instead",
        ));
    assert!(std::fs::read(&out).unwrap() == bytes);
    let man = manifest(&out);
    assert_eq!(man["format"], "lime");
    assert!(man.get("compression").is_none());
    assert!(man["warnings"][0]
        .as_str()
        .unwrap()
        .contains("Volatility 3"));
    pmem().arg("verify").arg(&out).assert().success();
    convert(
        &lime,
        Path::new("-"),
        &["--format", "lime", "--compress", "snappy"],
    )
    .failure()
    .stderr(predicates::str::contains("write to a file"));
}

#[test]
fn snappy_needs_lime() {
    let dir = tempfile::tempdir().unwrap();
    let lime = dir.path().join("in.lime");
    std::fs::write(&lime, lime_record(0, &[1; 4096])).unwrap();
    convert(
        &lime,
        &dir.path().join("x"),
        &["--format", "raw", "--compress", "snappy"],
    )
    .failure()
    .stderr(predicates::str::contains("--format lime"));
}

#[test]
fn zstd_streams_restore_with_the_zstd_tool() {
    let dir = tempfile::tempdir().unwrap();
    let lime = dir.path().join("in.lime");
    std::fs::write(&lime, lime_record(0x1000, &mixed())).unwrap();
    for format in ["raw", "elf", "lime"] {
        let plain = dir.path().join(format!("plain.{format}"));
        convert(&lime, &plain, &["--format", format]).success();
        let zst = dir.path().join(format!("c.{format}.zst"));
        convert(&lime, &zst, &["--format", format, "--compress", "zstd"]).success();
        let man = manifest(&zst);
        assert_eq!(man["compression"], "zstd");
        assert_eq!(man["format"], format);
        let compressed = std::fs::read(&zst).unwrap();
        assert_eq!(man["bytes"]["image"], compressed.len());
        assert!(compressed.len() < std::fs::metadata(&plain).unwrap().len() as usize / 2);
        let out = std::process::Command::new("zstd")
            .args(["-d", "-q", "-c"])
            .arg(&zst)
            .output()
            .expect("the zstd tool (scripts/test.sh installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout == std::fs::read(&plain).unwrap(), "{format}");
    }
}

/// pmem reads `.zst` images in place: its own (seek table: one frame
/// decompressed per read) and those of the `zstd` tool (no seek table: the
/// frames are indexed when opened). `info`, `verify` and `convert` give what
/// they give for the uncompressed image; a cut file is an error.
#[test]
fn zstd_images_are_read_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let lime = dir.path().join("in.lime");
    // Two ranges, 10 MiB in a 33 MiB raw image: several 4 MiB frames.
    let mut bytes = lime_record(0x1000, &mixed());
    bytes.extend(lime_record(0x200_0000, &random(9, 1 << 20)));
    std::fs::write(&lime, bytes).unwrap();
    let info = |image: &Path| -> Value {
        let out = pmem().args(["info", "--json"]).arg(image).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    for format in ["lime", "elf", "raw"] {
        let plain = dir.path().join(format!("plain.{format}"));
        convert(&lime, &plain, &["--format", format]).success();
        let ours = dir.path().join(format!("ours.{format}.zst"));
        convert(&lime, &ours, &["--format", format, "--compress", "zstd"]).success();
        // The zstd tool's own file of the same image, beside a copy of the
        // manifest (a raw image's ranges come from it). From a file its
        // frame header has the content size; from a pipe (elf) it has not,
        // and pmem learns it by decompressing the frame once.
        let theirs = dir.path().join(format!("theirs.{format}.zst"));
        let mut zstd = std::process::Command::new("zstd");
        if format == "elf" {
            zstd.args(["-q", "-c"])
                .stdin(std::fs::File::open(&plain).unwrap())
                .stdout(std::fs::File::create(&theirs).unwrap());
        } else {
            zstd.args(["-q", "-f", "-o"]).arg(&theirs).arg(&plain);
        }
        assert!(zstd.status().expect("the zstd tool").success());
        std::fs::copy(
            dir.path().join(format!("plain.{format}.json")),
            dir.path().join(format!("theirs.{format}.zst.json")),
        )
        .unwrap();
        let want = info(&plain);
        for zst in [&ours, &theirs] {
            let got = info(zst);
            for key in ["format", "ranges", "total_bytes", "arch"] {
                assert_eq!(got[key], want[key], "{}: {key}", zst.display());
            }
            let back = dir.path().join("back.lime");
            convert(zst, &back, &["--format", "lime", "--force"]).success();
            assert!(
                std::fs::read(&back).unwrap() == std::fs::read(&lime).unwrap(),
                "{} -> lime",
                zst.display()
            );
        }
        pmem().arg("verify").arg(&ours).assert().success();
        // A cut file: an error naming it, not a short image.
        let cut = dir.path().join(format!("cut.{format}.zst"));
        let full = std::fs::read(&ours).unwrap();
        std::fs::write(&cut, &full[..full.len() / 2]).unwrap();
        pmem()
            .args(["info"])
            .arg(&cut)
            .assert()
            .failure()
            .stderr(predicates::str::contains(cut.display().to_string()));
    }
}
