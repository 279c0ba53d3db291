//! Helpers shared by the `pmem` binary's integration tests (each test file
//! uses the part it needs).
#![allow(dead_code)]

use assert_cmd::Command;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

mod pki;
mod weed;
// Each test file uses the part it needs (see dead_code above).
#[allow(unused_imports)]
pub use pki::pki;
#[allow(unused_imports)]
pub use weed::start_weed_mini;

/// The `pmem` binary under test.
pub fn pmem() -> Command {
    Command::cargo_bin("pmem").unwrap()
}

/// The manifest beside `image` (IMAGE.json).
pub fn manifest(image: &Path) -> Value {
    let mut path = image.as_os_str().to_owned();
    path.push(".json");
    serde_json::from_slice(&std::fs::read(PathBuf::from(path)).unwrap()).unwrap()
}

/// `pmem info --json IMAGE`, which must succeed, parsed.
pub fn info_json(image: &Path) -> Value {
    let assert = pmem()
        .args(["info", "--json"])
        .arg(image)
        .assert()
        .success();
    serde_json::from_slice(&assert.get_output().stdout).unwrap()
}

/// A raw image `in.raw` in `dir`: `mib` MiB of varied content (each byte
/// a multiplicative hash of its offset, not zeros).
pub fn varied_input(dir: &Path, mib: u32) -> PathBuf {
    let path = dir.join("in.raw");
    let data: Vec<u8> = (0..mib << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 9) as u8)
        .collect();
    std::fs::write(&path, data).unwrap();
    path
}

/// BLAKE3 of `data` in hex, by the `blake3` crate.
pub fn blake3_hex(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

/// A manifest's hash record (`image_hash`, `memory_hash`,
/// `encryption.ciphertext_hash`): BLAKE3 (the default) of `data`.
pub fn assert_blake3(record: &Value, data: &[u8]) {
    assert_eq!(record["algorithm"], "blake3", "{record}");
    assert_eq!(record["hex"], blake3_hex(data), "{record}");
}

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs `cmd`, which must succeed.
pub fn run(cmd: &mut std::process::Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether `tool` runs (`tool version`). In CI its absence is a failure;
/// a local run may skip the object-store tests with PMEM_SKIP_S3=1.
pub fn have_server_tool(tool: &str) -> bool {
    let found = std::process::Command::new(tool)
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found && std::env::var_os("PMEM_SKIP_S3").is_none() {
        panic!(
            "{tool} is not installed (scripts/test.sh installs it); PMEM_SKIP_S3=1 skips locally"
        );
    }
    found
}

/// `age`/`age-keygen` on PATH. In CI their absence is a failure; a local
/// run may skip with PMEM_SKIP_AGE=1.
pub fn have_age() -> bool {
    let found = std::process::Command::new("age-keygen")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found && std::env::var_os("PMEM_SKIP_AGE").is_none() {
        panic!("age is not installed (apt-get install age); PMEM_SKIP_AGE=1 skips locally");
    }
    found
}

/// A new age identity file `dir/name` and its public key.
pub fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let identity = dir.join(name);
    let out = std::process::Command::new("age-keygen")
        .arg("-o")
        .arg(&identity)
        .output()
        .unwrap();
    assert!(out.status.success());
    let public = std::fs::read_to_string(&identity)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("# public key: ").map(str::to_string))
        .unwrap();
    (identity, public)
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed (and reaped) on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A symbol bundle as a capture makes it (made-up members; a BTF of 1.5
/// MiB, so that it spans several TLS frames), written beside `image` as
/// IMAGE.symbols, where `pmem convert` takes it from: the bundle's bytes.
pub fn symbols_beside(image: &Path) -> Vec<u8> {
    use pmem_symbols::bundle::{Bundle, BTF, BUNDLE_KIND, BUNDLE_VERSION, KALLSYMS};
    let mut bundle = Bundle::default();
    bundle.record.kind = BUNDLE_KIND.into();
    bundle.record.version = BUNDLE_VERSION;
    bundle
        .members
        .insert(KALLSYMS.into(), b"ffffffff81000000 T _text\n".to_vec());
    bundle.members.insert(
        BTF.into(),
        (0..1_500_000u32).map(|i| (i % 239) as u8).collect(),
    );
    let tar = bundle.into_tar();
    let mut sidecar = image.as_os_str().to_owned();
    sidecar.push(".symbols");
    std::fs::write(PathBuf::from(sidecar), &tar).unwrap();
    tar
}
