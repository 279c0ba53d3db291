//! Azure Blob with a SAS URL against Azurite (npm azurite 3.37.0, installed
//! by scripts/test.sh) on 127.0.0.1: the image goes up as blocks and is
//! committed with Put Block List; it is read back with an independent
//! client (testing/upload/azure_sas.py) and compared with the manifest
//! uploaded beside it. The SAS signature never appears on stderr or in the
//! manifest. A block failing with 500 is retried, then nothing is
//! committed: no blob. The symbols sidecar goes to BLOB.symbols; when that
//! blob fails, a warning says so and the image stands.
//!
//! Without Azurite these tests fail, unless PMEM_SKIP_AZURE=1 (local runs).

use assert_cmd::Command;
use serde_json::Value;
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
    let input = varied_input(dir.path(), 64);
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
    assert_blake3(&manifest["image_hash"], &bytes);
}

#[test]
fn a_failing_block_leaves_no_blob() {
    let Some(bin) = azurite() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (_azurite, port) = start_azurite(&bin, dir.path());
    let input = varied_input(dir.path(), 16);
    // Block 2's id, base64 of "pmem-block-00000002", as it appears in the URL.
    let (_proxy, proxy_port) = failing_proxy(port, "blockid=cG1lbS1ibG9jay0wMDAwMDAwMg");
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

/// The proxy in front of Azurite, answering 500 to every PUT whose path
/// contains `pattern`: its port.
fn failing_proxy(port: u16, pattern: &str) -> (Proc, u16) {
    let mut proxy = std::process::Command::new("python3")
        .args([PROXY, &port.to_string(), &format!("fail-match={pattern}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(proxy.stdout.take().unwrap()).lines();
    let proxy_port: u16 = lines.next().unwrap().unwrap()["PORT ".len()..]
        .parse()
        .unwrap();
    std::thread::spawn(move || for _ in lines {});
    (Proc(proxy), proxy_port)
}

/// `pmem convert` of an image with an IMAGE.symbols sidecar to a blob:
/// LiME has no room for the symbols, so they go to BLOB.symbols with the
/// same SAS, byte for byte, with the SHA-256 the manifest records. When
/// that blob cannot be written (here: the service fails it; in the field,
/// a SAS scoped to the image's blob), pmem warns, the image and the
/// manifest still arrive, and the manifest says the symbols were not kept.
#[test]
fn the_symbols_go_to_blob_symbols_or_a_warning_says_why_not() {
    let Some(bin) = azurite() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (_azurite, port) = start_azurite(&bin, dir.path());
    let input = varied_input(dir.path(), 6);
    let tar = symbols_beside(&input);
    let sas = sas();
    let out = upload(&input, port, "sym.lime", &sas);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("sig="), "{stderr}");
    let symbols = dir.path().join("back.symbols");
    assert!(get(port, "sym.lime.symbols", &symbols));
    assert_eq!(std::fs::read(&symbols).unwrap(), tar);
    let manifest_path = dir.path().join("back.json");
    assert!(get(port, "sym.lime.json", &manifest_path));
    let manifest: Value = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    assert_eq!(manifest["symbols"]["sha256"], sha256_hex(&tar));
    let file = manifest["symbols"]["file"].as_str().unwrap();
    assert!(file.ends_with("/pmem/sym.lime.symbols"), "{file}");

    let (_proxy, proxy_port) = failing_proxy(port, "nosym.lime.symbols");
    let out = upload(&input, proxy_port, "nosym.lime", &sas);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: the kernel's symbols were not uploaded")
            && stderr.contains("container SAS")
            && stderr.contains("--symbols-file"),
        "{stderr}"
    );
    assert!(!stderr.contains("sig="), "{stderr}");
    assert!(get(port, "nosym.lime", &dir.path().join("nosym.lime")));
    assert!(!get(port, "nosym.lime.symbols", &dir.path().join("x")));
    // The manifest names no blob that is not there, and says why.
    let manifest_path = dir.path().join("nosym.json");
    assert!(get(port, "nosym.lime.json", &manifest_path));
    let manifest: Value = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    assert_eq!(manifest["symbols"]["carried"], "not_kept");
    assert!(manifest["symbols"].get("file").is_none(), "{manifest}");
    assert!(
        manifest["warnings"]
            .to_string()
            .contains("symbols were not uploaded"),
        "{manifest}"
    );
}
