//! Pre-signed `https://` PUT URLs (one PUT with a Content-Length) and
//! HTTPS S3 endpoints, against real servers on 127.0.0.1: SeaweedFS
//! (`weed mini`, plain and with HTTPS from a test CA made by openssl) and
//! `rclone serve s3` (refuses chunked PUTs like AWS). The URLs are
//! pre-signed here with pmem's SigV4 code (query-string authentication);
//! the servers check the signatures. Every object is read back with rclone
//! and compared with the uploaded manifest; the signature must appear
//! nowhere in pmem's output or manifest. Fault test: the server killed
//! mid-upload leaves no object.
//!
//! scripts/test.sh installs the servers; without them these tests fail,
//! unless PMEM_SKIP_S3=1 (local runs only).

use assert_cmd::Command;
use pmem_upload::sigv4::{presign, Credentials};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

mod common;
use common::*;

const KEY: &str = "PMEMTESTKEY";
const SECRET: &str = "pmem-test-secret-0123456789";

/// rclone as an S3 client of `endpoint` (trusting `ca` for https).
fn rclone(endpoint: &str, ca: Option<&Path>, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new("rclone");
    cmd.env("RCLONE_CONFIG", "/dev/null")
        .env("RCLONE_CONFIG_T_TYPE", "s3")
        .env("RCLONE_CONFIG_T_PROVIDER", "Other")
        .env("RCLONE_CONFIG_T_ACCESS_KEY_ID", KEY)
        .env("RCLONE_CONFIG_T_SECRET_ACCESS_KEY", SECRET)
        .env("RCLONE_CONFIG_T_ENDPOINT", endpoint)
        .env("RCLONE_CONFIG_T_REGION", "us-east-1")
        .args(["--retries", "1", "--low-level-retries", "1"])
        .args(["--contimeout", "5s"]);
    if let Some(ca) = ca {
        cmd.arg("--ca-cert").arg(ca);
    }
    cmd.args(args).output().unwrap()
}

/// An S3 server on 127.0.0.1 with bucket `pmem`.
struct Server {
    proc: Option<Proc>,
    dir: PathBuf,
    port: u16,
    /// (CA, certificate, key) when the server speaks HTTPS.
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
    rclone_server: bool,
}

impl Server {
    fn weed(dir: &Path, https: bool) -> Server {
        Server::start(dir, https, false)
    }

    fn rclone_serve(dir: &Path) -> Server {
        Server::start(dir, false, true)
    }

    fn start(dir: &Path, https: bool, rclone_server: bool) -> Server {
        std::fs::create_dir_all(dir).unwrap();
        let tls = https.then(|| pki(dir));
        let mut server = Server {
            proc: None,
            dir: dir.to_path_buf(),
            port: free_port(),
            tls,
            rclone_server,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        std::fs::create_dir_all(self.dir.join("data/pmem")).unwrap();
        if !self.rclone_server {
            let s3_args = match &self.tls {
                // HTTPS on its own port; the plain port is another free one.
                Some((_, cert, key)) => vec![
                    format!("-s3.port={}", free_port()),
                    format!("-s3.port.https={}", self.port),
                    format!("-s3.cert.file={}", cert.display()),
                    format!("-s3.key.file={}", key.display()),
                ],
                None => vec![format!("-s3.port={}", self.port)],
            };
            let ready = || self.rclone(&["mkdir", "t:pmem"]).status.success();
            let proc = start_weed_mini(&self.dir, KEY, SECRET, &s3_args, ready);
            self.proc = Some(proc);
            return;
        }
        let child = std::process::Command::new("rclone")
            .env("RCLONE_CONFIG", "/dev/null")
            .args(["serve", "s3", "--addr", &format!("127.0.0.1:{}", self.port)])
            .args(["--auth-key", &format!("{KEY},{SECRET}")])
            .arg(self.dir.join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.proc = Some(Proc(child));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.rclone(&["lsf", "t:pmem"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "rclone serve s3 did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    fn ca(&self) -> Option<&Path> {
        self.tls.as_ref().map(|(ca, _, _)| ca.as_path())
    }

    fn rclone(&self, args: &[&str]) -> std::process::Output {
        rclone(&self.endpoint(), self.ca(), args)
    }

    /// A pre-signed PUT URL for pmem/KEY, valid for an hour.
    fn presign_put(&self, key: &str) -> String {
        presign(
            "PUT",
            &self.endpoint(),
            &format!("/pmem/{key}"),
            &Credentials {
                access_key: KEY.into(),
                secret_key: SECRET.into(),
                session_token: None,
            },
            "us-east-1",
            SystemTime::now(),
            3600,
        )
    }

    fn cat(&self, key: &str) -> Option<Vec<u8>> {
        let out = self.rclone(&["cat", &format!("t:pmem/{key}")]);
        out.status.success().then_some(out.stdout)
    }

    fn assert_absent(&self, key: &str) {
        let out = self.rclone(&["lsf", "t:pmem"]);
        assert!(out.status.success());
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(
            !listing.lines().any(|l| l == key),
            "a failed upload left {key}: {listing}"
        );
    }
}

fn convert(input: &Path, url: &str, extra: &[&str]) -> std::process::Output {
    Command::cargo_bin("pmem")
        .unwrap()
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .args(["convert", "--quiet", "--arch", "x86_64"])
        .args(extra)
        .arg(input)
        .arg(url)
        .timeout(Duration::from_secs(240))
        .output()
        .unwrap()
}

fn signature(url: &str) -> &str {
    url.split("X-Amz-Signature=").nth(1).unwrap()
}

/// Uploads `input` as `key` (+ `key.json` through --manifest-url), reads
/// both back and checks length and hash; returns the manifest.
fn put_and_check(server: &Server, input: &Path, key: &str, format: &str) -> Value {
    let url = server.presign_put(key);
    let manifest_url = server.presign_put(&format!("{key}.json"));
    let mut args = vec!["--format", format, "--manifest-url", &manifest_url];
    let ca;
    if let Some(path) = server.ca() {
        ca = path.display().to_string();
        args.extend(["--tls-ca", &ca]);
    }
    let out = convert(input, &url, &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for secret in [signature(&url), signature(&manifest_url)] {
        assert!(!stderr.contains(secret), "signature on stderr: {stderr}");
    }
    let object = server.cat(key).expect("reading the object back");
    let manifest_text = server.cat(&format!("{key}.json")).expect("the manifest");
    assert!(!String::from_utf8_lossy(&manifest_text).contains(signature(&url)));
    let manifest: Value = serde_json::from_slice(&manifest_text).unwrap();
    assert_eq!(manifest["complete"], true);
    assert_eq!(manifest["bytes"]["image"], object.len() as u64);
    assert_blake3(&manifest["image_hash"], &object);
    manifest
}

#[test]
fn presigned_put_to_seaweedfs_and_rclone_serve_s3() {
    if !have_server_tool("weed") || !have_server_tool("rclone") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let input = varied_input(dir.path(), 24);
    let weed = Server::weed(&dir.path().join("weed"), false);
    for format in ["lime", "raw", "elf"] {
        let key = format!("cases/mem.{format}");
        put_and_check(&weed, &input, &key, format);
    }
    let rclone_dir = dir.path().join("rclone");
    let served = Server::rclone_serve(&rclone_dir);
    let manifest = put_and_check(&served, &input, "mem.lime", "lime");
    assert_eq!(manifest["bytes"]["image"], (24u64 << 20) + 32);
    // rclone stores the object as a plain file: exactly the image.
    let on_disk = std::fs::read(rclone_dir.join("data/pmem/mem.lime")).unwrap();
    assert_eq!(on_disk.len() as u64, (24 << 20) + 32);
}

#[test]
fn https_endpoints_with_a_private_ca() {
    if !have_server_tool("weed") || !have_server_tool("rclone") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let input = varied_input(dir.path(), 12);
    let weed = Server::weed(&dir.path().join("weed"), true);
    // A pre-signed https:// URL, the CA trusted with --tls-ca.
    put_and_check(&weed, &input, "signed.lime", "lime");
    // Without the CA the certificate is refused and nothing is stored.
    let url = weed.presign_put("untrusted.lime");
    let out = convert(&input, &url, &["--format", "lime"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.to_lowercase().contains("certificate") && !stderr.contains(signature(&url)),
        "{stderr}"
    );
    weed.assert_absent("untrusted.lime");

    // s3:// multipart through --endpoint https://..., the same CA.
    let ca = weed.ca().unwrap().display().to_string();
    let out = Command::cargo_bin("pmem")
        .unwrap()
        .env("AWS_ACCESS_KEY_ID", KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .args(["convert", "--quiet", "--arch", "x86_64", "--format", "lime"])
        .args(["--endpoint", &weed.endpoint(), "--tls-ca", &ca])
        .args(["--part-size", "5"])
        .arg(&input)
        .arg("s3://pmem/multi.lime")
        .timeout(Duration::from_secs(240))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let object = weed.cat("multi.lime").unwrap();
    let manifest: Value = serde_json::from_slice(&weed.cat("multi.lime.json").unwrap()).unwrap();
    assert_blake3(&manifest["image_hash"], &object);
}

#[test]
fn lengths_not_known_up_front_and_plain_http_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = varied_input(dir.path(), 1);
    // Nothing listens on port 9: refusals must come before any connection.
    let url = "http://127.0.0.1:9/pmem/k?X-Amz-Signature=0123456789abcdef";
    for extra in [
        &["--format", "aff4"][..],
        &["--format", "lime", "--compress", "snappy"],
        &["--format", "raw", "--compress", "zstd"],
    ] {
        let out = convert(&input, url, extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains("Content-Length") && stderr.contains("s3://"),
            "{extra:?}: {stderr}"
        );
        assert!(!stderr.contains("0123456789abcdef"), "{stderr}");
    }
    let out = convert(
        &input,
        "http://192.0.2.1/pmem/k?X-Amz-Signature=0123456789abcdef",
        &["--format", "lime"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("https://"), "{stderr}");
    assert!(!stderr.contains("0123456789abcdef"), "{stderr}");
}

#[test]
fn killing_the_server_mid_put_fails_and_leaves_no_object() {
    if !have_server_tool("weed") || !have_server_tool("rclone") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut weed = Server::weed(&dir.path().join("weed"), false);
    let input = varied_input(dir.path(), 96);
    let url = weed.presign_put("killed.lime");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_pmem"))
        .args(["convert", "--quiet", "--arch", "x86_64", "--format", "lime"])
        .args(["--net-timeout", "5"])
        .arg(&input)
        .arg(&url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    weed.proc = None;
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the upload cannot have succeeded");
    assert!(!stderr.contains(signature(&url)), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(60));
    // Back up on the same data: the object must not exist.
    weed.launch();
    weed.assert_absent("killed.lime");
}

/// `age -d -i IDENTITY` of `data`.
fn age_decrypt(identity: &Path, data: &[u8], dir: &Path) -> Vec<u8> {
    let path = dir.join("sealed.tmp");
    std::fs::write(&path, data).unwrap();
    let out = std::process::Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(identity)
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn encrypted_presigned_put_declares_the_ciphertext_length() {
    if !have_server_tool("rclone") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let identity = dir.path().join("id.key");
    run(std::process::Command::new("age-keygen")
        .arg("-o")
        .arg(&identity));
    let public = std::fs::read_to_string(&identity)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("# public key: ").map(str::to_string))
        .unwrap();
    // Not a multiple of age's 64 KiB chunks: 5 MiB + 4 KiB of memory.
    let input = dir.path().join("in.raw");
    let data: Vec<u8> = (0..(5u32 << 20) + 4096)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(&input, &data).unwrap();
    let server = Server::rclone_serve(&dir.path().join("rclone"));
    let url = server.presign_put("sealed.elf");
    let manifest_url = server.presign_put("sealed.elf.json");
    let out = convert(
        &input,
        &url,
        &[
            "--format",
            "elf",
            "--encrypt-to",
            &public,
            "--manifest-url",
            &manifest_url,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored = server.cat("sealed.elf").unwrap();
    assert!(stored.starts_with(b"age-encryption.org/v1\n"));
    let manifest: Value = serde_json::from_slice(&age_decrypt(
        &identity,
        &server.cat("sealed.elf.json").unwrap(),
        dir.path(),
    ))
    .unwrap();
    let plain = age_decrypt(&identity, &stored, dir.path());
    assert_eq!(manifest["complete"], true);
    assert_eq!(manifest["bytes"]["image"], plain.len() as u64);
    assert_blake3(&manifest["image_hash"], &plain);
    assert_blake3(&manifest["encryption"]["ciphertext_hash"], &stored);
    assert_eq!(
        manifest["encryption"]["ciphertext_bytes"],
        stored.len() as u64
    );
}

/// `pmem convert` of an image with an IMAGE.symbols sidecar to a pre-signed
/// URL: LiME has no room for the symbols, so they need a pre-signed URL of
/// their own. With --symbols-url they arrive byte for byte, with the
/// SHA-256 the manifest records, and neither signature is printed; without
/// it pmem says they are not uploaded and how to keep them, and succeeds.
#[test]
fn the_symbols_go_to_their_own_presigned_url() {
    if !have_server_tool("weed") || !have_server_tool("rclone") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let input = varied_input(dir.path(), 4);
    let tar = symbols_beside(&input);
    let weed = Server::weed(&dir.path().join("weed"), false);
    let url = weed.presign_put("sym.lime");
    let manifest_url = weed.presign_put("sym.lime.json");
    let symbols_url = weed.presign_put("sym.lime.symbols");
    let out = convert(
        &input,
        &url,
        &[
            "--format",
            "lime",
            "--manifest-url",
            &manifest_url,
            "--symbols-url",
            &symbols_url,
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for secret in [
        signature(&url),
        signature(&manifest_url),
        signature(&symbols_url),
    ] {
        assert!(!stderr.contains(secret), "signature on stderr: {stderr}");
    }
    assert_eq!(weed.cat("sym.lime.symbols").expect("the symbols"), tar);
    let manifest: Value =
        serde_json::from_slice(&weed.cat("sym.lime.json").expect("the manifest")).unwrap();
    assert_eq!(manifest["symbols"]["sha256"], sha256_hex(&tar));
    assert!(!manifest.to_string().contains(signature(&symbols_url)));

    let url = weed.presign_put("nosym.lime");
    let out = convert(&input, &url, &["--format", "lime"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("symbols are not kept")
            && stderr.contains("--symbols-url")
            && stderr.contains("--symbols-file"),
        "{stderr}"
    );
    assert!(weed.cat("nosym.lime").is_some());
    weed.assert_absent("nosym.lime.symbols");
}

/// --symbols-url gets the checks --manifest-url gets, before anything is
/// uploaded: plain http:// to another machine is refused, unprinted.
#[test]
fn a_plain_http_symbols_url_is_refused_before_the_upload() {
    let dir = tempfile::tempdir().unwrap();
    let input = varied_input(dir.path(), 1);
    // Nothing listens on port 9: the refusal must come before any connection.
    let out = convert(
        &input,
        "http://127.0.0.1:9/pmem/k?X-Amz-Signature=0123456789abcdef",
        &[
            "--format",
            "lime",
            "--symbols-url",
            "http://192.0.2.1/pmem/k.symbols?X-Amz-Signature=fedcba9876543210",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--symbols-url") && stderr.contains("https://"),
        "{stderr}"
    );
    assert!(!stderr.contains("fedcba9876543210"), "{stderr}");
}
