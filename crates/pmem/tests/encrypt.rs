//! `--encrypt-to` end to end, checked with the standard `age` tool (Debian
//! package `age`, installed by scripts/test.sh): the ciphertext decrypts to
//! exactly the image an unencrypted run writes, the manifest is encrypted
//! too and records the hashes of both.

use predicates::prelude::*;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

mod common;
use common::*;

struct Keys {
    identity: PathBuf,
    public: String,
}

fn keygen(dir: &Path, name: &str) -> Keys {
    let identity = dir.join(name);
    let out = std::process::Command::new("age-keygen")
        .arg("-o")
        .arg(&identity)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = std::fs::read_to_string(&identity).unwrap();
    let public = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .unwrap()
        .to_string();
    Keys { identity, public }
}

fn age_decrypt(identity: &Path, input: &Path) -> Vec<u8> {
    let out = std::process::Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(identity)
        .arg(input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "age -d: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[test]
fn encrypted_file_and_manifest_decrypt_with_age() {
    if !have_age() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = keygen(dir.path(), "a.key");
    let b = keygen(dir.path(), "b.key");
    let input = varied_input(dir.path(), 6);
    let plain = dir.path().join("plain.lime");
    pmem()
        .args(["convert", "--quiet", "--arch", "x86_64", "--format", "lime"])
        .arg(&input)
        .arg(&plain)
        .assert()
        .success();
    let sealed = dir.path().join("sealed.lime");
    pmem()
        .args(["convert", "--quiet", "--arch", "x86_64", "--format", "lime"])
        .args(["--encrypt-to", &a.public, "--encrypt-to", &b.public])
        .arg(&input)
        .arg(&sealed)
        .assert()
        .success();
    let plain_bytes = std::fs::read(&plain).unwrap();
    let stored = std::fs::read(&sealed).unwrap();
    assert!(stored.starts_with(b"age-encryption.org/v1\n"));
    // Either recipient can decrypt, with the standard tool.
    assert_eq!(age_decrypt(&a.identity, &sealed), plain_bytes);
    assert_eq!(age_decrypt(&b.identity, &sealed), plain_bytes);

    let manifest_path = dir.path().join("sealed.lime.json");
    let raw_manifest = std::fs::read(&manifest_path).unwrap();
    assert!(raw_manifest.starts_with(b"age-encryption.org/v1\n"));
    let manifest: Value =
        serde_json::from_slice(&age_decrypt(&b.identity, &manifest_path)).unwrap();
    assert_eq!(manifest["complete"], true);
    assert_blake3(&manifest["image_hash"], &plain_bytes);
    assert_eq!(manifest["bytes"]["image"], plain_bytes.len() as u64);
    let enc = &manifest["encryption"];
    assert_eq!(enc["scheme"], "age");
    assert_blake3(&enc["ciphertext_hash"], &stored);
    assert_eq!(enc["ciphertext_bytes"], stored.len() as u64);
    assert_eq!(enc["recipients"].as_array().unwrap().len(), 2);

    // pmem decrypt does what age -d does.
    let back = dir.path().join("back.lime");
    pmem()
        .args(["decrypt", "--identity"])
        .arg(&a.identity)
        .arg(&sealed)
        .arg(&back)
        .assert()
        .success();
    assert_eq!(std::fs::read(&back).unwrap(), plain_bytes);
}

#[test]
fn encrypted_stdout_and_truncation_is_an_error() {
    if !have_age() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = keygen(dir.path(), "a.key");
    let other = keygen(dir.path(), "other.key");
    let input = varied_input(dir.path(), 6);
    let manifest_path = dir.path().join("m.json");
    let out = pmem()
        .args(["convert", "--quiet", "--arch", "x86_64", "--format", "raw"])
        .args(["--encrypt-to", &a.public, "--manifest"])
        .arg(&manifest_path)
        .arg(&input)
        .arg("-")
        .output()
        .unwrap();
    assert!(out.status.success());
    let sealed = dir.path().join("stdout.age");
    std::fs::write(&sealed, &out.stdout).unwrap();
    let plain = age_decrypt(&a.identity, &sealed);
    assert_eq!(plain, std::fs::read(&input).unwrap());
    let manifest: Value =
        serde_json::from_slice(&age_decrypt(&a.identity, &manifest_path)).unwrap();
    assert_blake3(&manifest["encryption"]["ciphertext_hash"], &out.stdout);

    // A cut ciphertext never decrypts to a shorter "complete" image.
    let cut = dir.path().join("cut.age");
    std::fs::write(&cut, &out.stdout[..out.stdout.len() - 1000]).unwrap();
    pmem()
        .args(["decrypt", "-i"])
        .arg(&a.identity)
        .arg(&cut)
        .arg(dir.path().join("cut.raw"))
        .assert()
        .failure();
    // The wrong key is refused.
    pmem()
        .args(["decrypt", "-i"])
        .arg(&other.identity)
        .arg(&sealed)
        .arg(dir.path().join("x.raw"))
        .assert()
        .failure();
    // A malformed recipient stops pmem before it writes anything.
    pmem()
        .args([
            "convert",
            "--quiet",
            "--format",
            "raw",
            "--encrypt-to",
            "age1nope",
        ])
        .arg(&input)
        .arg(dir.path().join("never.raw"))
        .assert()
        .failure();
    assert!(!dir.path().join("never.raw").exists());
}

/// A symbol bundle made from the committed BTF sample (real pahole output)
/// and a kallsyms and banner of the kernel it names.
fn sample_bundle() -> Vec<u8> {
    use pmem_symbols::bundle::{Bundle, KallsymsAddresses, BUNDLE_KIND, BUNDLE_VERSION};
    let btf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pmem-symbols/tests/data/sample.btf");
    let mut bundle = Bundle::default();
    bundle.record.kind = BUNDLE_KIND.into();
    bundle.record.version = BUNDLE_VERSION;
    bundle.record.kallsyms_addresses = KallsymsAddresses::Real;
    bundle
        .members
        .insert("btf/vmlinux".into(), std::fs::read(btf).unwrap());
    bundle.members.insert(
        "kallsyms".into(),
        b"ffffffff9d000000 T _text\nffffffff9e60a940 D init_task\nffffffff9e2001a0 R linux_banner\n"
            .to_vec(),
    );
    bundle.members.insert(
        "version".into(),
        b"Linux version 6.1.0-28-amd64 (debian-kernel@lists.debian.org) #1 SMP Debian\n".to_vec(),
    );
    bundle.members.insert(
        "vmcoreinfo".into(),
        b"OSRELEASE=6.1.0-28-amd64\nKERNELOFFSET=1c000000\n".to_vec(),
    );
    bundle.into_tar()
}

/// --encrypt-to seals the symbols beside the image as it seals the
/// manifest (kallsyms addresses defeat KASLR); `pmem symbols --identity`
/// reads them in place.
#[test]
fn encrypted_images_seal_their_symbols_too() {
    if !have_age() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = keygen(dir.path(), "a.key");
    let input = varied_input(dir.path(), 2);
    let tar = sample_bundle();
    std::fs::write(dir.path().join("in.raw.symbols"), &tar).unwrap();
    let sealed = dir.path().join("sealed.lime");
    pmem()
        .args(["convert", "--quiet", "--arch", "x86_64", "--format", "lime"])
        .args(["--encrypt-to", &a.public])
        .arg(&input)
        .arg(&sealed)
        .assert()
        .success();
    let sidecar = dir.path().join("sealed.lime.symbols");
    assert!(std::fs::read(&sidecar)
        .unwrap()
        .starts_with(b"age-encryption.org/v1\n"));
    assert_eq!(age_decrypt(&a.identity, &sidecar), tar);
    let manifest: Value = serde_json::from_slice(&age_decrypt(
        &a.identity,
        &dir.path().join("sealed.lime.json"),
    ))
    .unwrap();
    assert_eq!(manifest["symbols"]["carried"], "sidecar");
    assert_eq!(manifest["symbols"]["sha256"], sha(&tar));

    let out = dir.path().join("isf");
    pmem()
        .args(["symbols", "--identity"])
        .arg(&a.identity)
        .arg(&sealed)
        .arg("-o")
        .arg(&out)
        .assert()
        .success()
        .stderr(predicates::str::contains("KASLR").not());
    assert!(out.join("linux/6.1.0-28-amd64.json.xz").is_file());
    pmem()
        .args(["symbols"])
        .arg(&sealed)
        .arg("-o")
        .arg(&out)
        .assert()
        .failure()
        .stderr(predicates::str::contains("--identity"));
}
