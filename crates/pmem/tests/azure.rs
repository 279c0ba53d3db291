//! Azure Blob with a SAS URL against Azurite (npm azurite 3.37.0, installed
//! by scripts/test.sh) on 127.0.0.1: the image goes up as blocks and is
//! committed with Put Block List; it is read back with an independent
//! client (testing/upload/azure_sas.py) and compared with the manifest
//! uploaded beside it. The SAS signature never appears on stderr or in the
//! manifest. A block failing with 500 is retried, then nothing is
//! committed: no blob.
//!
//! Without Azurite these tests fail, unless PMEM_SKIP_AZURE=1 (local runs).

use assert_cmd::Command;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

mod common;
use common::*;

const HELPER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testing/upload/azure_sas.py"
);
const PROXY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testing/upload/fault_proxy.py"
);

/// azurite-blob from PMEM_AZURITE, PATH, or scripts/test.sh's install.
fn azurite() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("PMEM_AZURITE").map(PathBuf::from),
        std::env::var_os("PMEM_CACHE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/pmem")))
            .map(|cache| cache.join("azurite/node_modules/.bin/azurite-blob")),
    ];
    let found = candidates
        .into_iter()
        .flatten()
        .find(|p| p.exists())
        .or_else(|| {
            std::process::Command::new("azurite-blob")
                .arg("--version")
                .output()
                .ok()
                .map(|_| PathBuf::from("azurite-blob"))
        });
    if found.is_none() && std::env::var_os("PMEM_SKIP_AZURE").is_none() {
        panic!("Azurite is not installed (scripts/test.sh installs it); PMEM_SKIP_AZURE=1 skips locally");
    }
    found
}

fn helper(args: &[&str]) -> std::process::Output {
    std::process::Command::new("python3")
        .arg(HELPER)
        .args(args)
        .output()
        .unwrap()
}

fn start_azurite(bin: &Path, dir: &Path) -> (Proc, u16) {
    let port = free_port();
    let child = std::process::Command::new(bin)
        .args([
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            &port.to_string(),
            "--location",
        ])
        .arg(dir.join("azurite"))
        .args(["--silent", "--disableTelemetry", "--skipApiVersionCheck"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let proc = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !helper(&["mkcontainer", &port.to_string(), "pmem"])
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "Azurite did not start");
        std::thread::sleep(Duration::from_millis(300));
    }
    (proc, port)
}

fn input(dir: &Path, mib: u32) -> PathBuf {
    let path = dir.join("in.raw");
    let data: Vec<u8> = (0..mib << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    std::fs::write(&path, data).unwrap();
    path
}

fn sas() -> String {
    let out = helper(&["sas"]);
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn upload(input: &Path, port: u16, blob: &str, sas: &str) -> std::process::Output {
    Command::cargo_bin("pmem")
        .unwrap()
        .args(["convert", "--arch", "x86_64", "--format", "lime"])
        .args(["--part-size", "4", "--parallel", "3"])
        .arg(input)
        .arg(format!(
            "http://127.0.0.1:{port}/devstoreaccount1/pmem/{blob}?{sas}"
        ))
        .timeout(Duration::from_secs(300))
        .output()
        .unwrap()
}

fn get(port: u16, blob: &str, out: &Path) -> bool {
    let status = helper(&[
        "get",
        &port.to_string(),
        "pmem",
        blob,
        out.to_str().unwrap(),
    ])
    .status;
    match status.code() {
        Some(0) => true,
        Some(3) => false,
        _ => panic!("reading {blob} back failed"),
    }
}

#[test]
fn azurite_block_upload_round_trip_without_leaking_the_sas() {
    let Some(bin) = azurite() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (_azurite, port) = start_azurite(&bin, dir.path());
    let input = input(dir.path(), 64);
    let sas = sas();
    let started = Instant::now();
    let out = upload(&input, port, "mem.lime", &sas);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    eprintln!(
        "azurite: 64 MiB in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let signature = sas.split('&').find(|p| p.starts_with("sig=")).unwrap();
    assert!(
        !stderr.contains(signature) && !stderr.contains("sig="),
        "{stderr}"
    );
    assert!(stderr.contains("?REDACTED"), "{stderr}");

    let back = dir.path().join("back.lime");
    assert!(get(port, "mem.lime", &back));
    let manifest_path = dir.path().join("back.json");
    assert!(get(port, "mem.lime.json", &manifest_path));
    let manifest_text = std::fs::read_to_string(&manifest_path).unwrap();
    assert!(!manifest_text.contains("sig="));
    let manifest: Value = serde_json::from_str(&manifest_text).unwrap();
    let bytes = std::fs::read(&back).unwrap();
    assert_eq!(manifest["complete"], true);
    assert_eq!(manifest["bytes"]["image"], bytes.len() as u64);
    assert_eq!(
        manifest["image_sha256"],
        hex::encode(Sha256::digest(&bytes))
    );
}

#[test]
fn a_failing_block_leaves_no_blob() {
    let Some(bin) = azurite() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (_azurite, port) = start_azurite(&bin, dir.path());
    let input = input(dir.path(), 16);
    // Block 2's id, base64 of "pmem-block-00000002", as it appears in the URL.
    let mut proxy = std::process::Command::new("python3")
        .args([
            PROXY,
            &port.to_string(),
            "fail-match=blockid=cG1lbS1ibG9jay0wMDAwMDAwMg",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(proxy.stdout.take().unwrap()).lines();
    let proxy_port: u16 = lines.next().unwrap().unwrap()["PORT ".len()..]
        .parse()
        .unwrap();
    let _proxy = Proc(proxy);
    std::thread::spawn(move || for _ in lines {});
    let started = Instant::now();
    let out = upload(&input, proxy_port, "fail.lime", &sas());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("block 2") && stderr.contains("500"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(
        !get(port, "fail.lime", &dir.path().join("x")),
        "a failed upload left a blob"
    );
}
