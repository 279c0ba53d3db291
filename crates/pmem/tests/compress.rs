//! `--compress`: AVML compressed LiME (snappy) and zstd streams, end to end
//! through the `pmem` binary. Readers here are independent of pmem's: LiME
//! parsed by hand, zstd decoded by the `zstd` tool.

use assert_cmd::Command;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn pmem() -> Command {
    Command::cargo_bin("pmem").unwrap()
}

fn manifest(image: &Path) -> Value {
    let mut path = image.as_os_str().to_owned();
    path.push(".json");
    serde_json::from_slice(&std::fs::read(PathBuf::from(path)).unwrap()).unwrap()
}

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
    assert_eq!(manifest(&back)["memory_sha256"], man["memory_sha256"]);
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
