//! `info`, `verify` and `convert` read an image made with `--encrypt-to`
//! in place, given the age identity (`--identity`): the same answers as on
//! the unencrypted image of the same memory, and clear errors for a wrong
//! or missing identity. The source is a synthetic /proc/kcore.

use pmem_core::{Arch, Range};
use pmem_sources::testing::{KcoreBuilder, Segment};
use serde_json::Value;
use std::path::{Path, PathBuf};

mod common;
use common::*;

const IOMEM: &str = "\
00001000-0009efff : System RAM
000a0000-000bffff : PCI Bus 0000:00
00100000-004fffff : System RAM
";

struct Machine {
    dir: tempfile::TempDir,
    kcore: PathBuf,
    iomem: PathBuf,
}

fn machine() -> Machine {
    let dir = tempfile::tempdir().unwrap();
    let kcore = dir.path().join("kcore");
    let iomem = dir.path().join("iomem");
    std::fs::write(&iomem, IOMEM).unwrap();
    let mut builder = KcoreBuilder::new(Arch::X86_64).vmcoreinfo(b"OSRELEASE=6.1.0-test\n");
    for range in [
        Range::new(0x1000, 0x9f000).unwrap(),
        Range::new(0x100000, 0x500000).unwrap(),
    ] {
        builder = builder.segment(Segment::ram(range.start, range.len()));
    }
    builder.write(&kcore).unwrap();
    Machine { dir, kcore, iomem }
}

impl Machine {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn acquire(&self, format: &str, output: &Path, extra: &[&str]) {
        pmem()
            .args(["acquire", "--quiet", "--format", format])
            .args(extra)
            .arg(format!("--source=kcore:{}", self.kcore.display()))
            .arg("--iomem")
            .arg(&self.iomem)
            .arg(output)
            .assert()
            .success();
    }
}

fn json(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn info(image: &Path, identity: Option<&Path>) -> std::process::Output {
    let mut cmd = pmem();
    cmd.args(["info", "--json"]);
    if let Some(id) = identity {
        cmd.arg("--identity").arg(id);
    }
    cmd.arg(image).output().unwrap()
}

#[test]
fn info_verify_convert_read_encrypted_images_in_place() {
    if !have_age() {
        return;
    }
    let m = machine();
    let (identity, public) = keygen(m.dir.path(), "id.key");
    for format in ["lime", "raw", "elf", "macho", "aff4"] {
        let plain = m.path(&format!("plain.{format}"));
        let sealed = m.path(&format!("sealed.{format}.age"));
        m.acquire(format, &plain, &[]);
        m.acquire(format, &sealed, &["--encrypt-to", &public]);
        assert!(std::fs::read(&sealed)
            .unwrap()
            .starts_with(b"age-encryption.org/v1\n"));

        // info: the same format, ranges and lengths.
        let a = json(&info(&plain, None));
        let b = json(&info(&sealed, Some(&identity)));
        for key in ["format", "ranges", "total_bytes", "ranges_from"] {
            assert_eq!(a[key], b[key], "{format}: {key}");
        }
        // AFF4's Turtle states the time map, whose millisecond figures
        // differ in length between two acquisitions; the rest is equal.
        let (la, lb) = (a["image_bytes"].as_i64(), b["image_bytes"].as_i64());
        let slack = if format == "aff4" { 64 } else { 0 };
        assert!(
            (la.unwrap() - lb.unwrap()).abs() <= slack,
            "{format}: image_bytes {la:?} {lb:?}"
        );
        assert_eq!(b["ranges"].as_array().unwrap().len(), 2, "{format}");

        // verify: against the encrypted manifest beside it.
        let out = pmem()
            .arg("verify")
            .arg("--identity")
            .arg(&identity)
            .arg(&sealed)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{format}: {stdout}");
        assert!(stdout.contains("ok   image blake3"), "{stdout}");
        assert!(stdout.contains("ok   ciphertext blake3"), "{stdout}");
        assert!(!stdout.contains("FAIL"), "{stdout}");

        // convert: the same LiME image (byte for byte) as from the plain one.
        let from_plain = m.path(&format!("{format}-plain.lime"));
        let from_sealed = m.path(&format!("{format}-sealed.lime"));
        pmem()
            .args(["convert", "--quiet", "--format", "lime"])
            .arg(&plain)
            .arg(&from_plain)
            .assert()
            .success();
        pmem()
            .args(["convert", "--quiet", "--format", "lime", "--identity"])
            .arg(&identity)
            .arg(&sealed)
            .arg(&from_sealed)
            .assert()
            .success();
        assert_eq!(
            std::fs::read(&from_plain).unwrap(),
            std::fs::read(&from_sealed).unwrap(),
            "{format}"
        );
    }
}

#[test]
fn a_wrong_or_missing_identity_is_a_clear_error() {
    if !have_age() {
        return;
    }
    let m = machine();
    let (_, public) = keygen(m.dir.path(), "id.key");
    let (other, _) = keygen(m.dir.path(), "other.key");
    let sealed = m.path("sealed.lime.age");
    m.acquire("lime", &sealed, &["--encrypt-to", &public]);

    let out = info(&sealed, Some(&other));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("not one it was encrypted to") && stderr.contains("other.key"),
        "{stderr}"
    );

    let out = info(&sealed, None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("age-encrypted") && stderr.contains("--identity"),
        "{stderr}"
    );

    // A cut ciphertext is an error, never a short image.
    let bytes = std::fs::read(&sealed).unwrap();
    let cut = m.path("cut.lime.age");
    std::fs::write(&cut, &bytes[..bytes.len() - 1000]).unwrap();
    let out = pmem()
        .args(["convert", "--quiet", "--format", "raw", "--identity"])
        .arg(m.path("id.key"))
        .arg(&cut)
        .arg(m.path("cut.raw"))
        .output()
        .unwrap();
    assert!(!out.status.success());
}
