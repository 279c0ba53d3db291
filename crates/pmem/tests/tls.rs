//! `tls://` end to end on 127.0.0.1 with a test CA made by `openssl`:
//! pmem to `pmem receive` (pinned fingerprint), pmem to an independent
//! Python ssl receiver (CA file), a receiver that drops the connection, a
//! sender cut before its trailer, and a wrong pin. Every received image is
//! hashed and compared with the manifest that travelled with it.

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::*;

const PEER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testing/upload/tls_peer.py"
);

/// A CA and a certificate for localhost/127.0.0.1 signed by it.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ossl = || {
            let mut c = std::process::Command::new("openssl");
            c.current_dir(d);
            c
        };
        run(ossl().args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=pmem test CA",
        ]));
        run(ossl().args([
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "srv.key",
            "-out",
            "srv.csr",
            "-subj",
            "/CN=localhost",
        ]));
        std::fs::write(d.join("ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
        run(ossl().args([
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "srv.pem",
            "-days",
            "2",
            "-extfile",
            "ext",
        ]));
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A server child that prints its port first; killed on drop.
struct Server {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Server {
    /// Waits (at most 30 s) for a line containing `marker`; returns it.
    fn wait_for(&self, marker: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                if line.contains(marker) {
                    return line;
                }
            }
        }
        panic!("server never printed {marker:?}");
    }

    fn wait(mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            assert!(Instant::now() < deadline, "server did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cmd`, forwarding the lines of stdout (`stdout`) or stderr.
fn spawn(mut cmd: std::process::Command, stdout: bool) -> Server {
    cmd.stdin(Stdio::null());
    if stdout {
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    } else {
        cmd.stderr(Stdio::piped()).stdout(Stdio::inherit());
    }
    let mut child = cmd.spawn().unwrap();
    let pipe: Box<dyn std::io::Read + Send> = if stdout {
        Box::new(child.stdout.take().unwrap())
    } else {
        Box::new(child.stderr.take().unwrap())
    };
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            eprintln!("[server] {line}");
            let _ = tx.send(line);
        }
    });
    Server { child, lines }
}

fn python(args: &[&str]) -> Server {
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(PEER).args(args);
    spawn(cmd, true)
}

fn port_of_python(server: &Server) -> String {
    server
        .wait_for("PORT")
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

/// 12 MiB of varied content as a raw image.
fn input(dir: &Path) -> PathBuf {
    let path = dir.join("in.raw");
    let data: Vec<u8> = (0..12u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(&path, data).unwrap();
    path
}

fn convert_to(input: &Path, dest: &str, trust: &[&str]) -> std::process::Output {
    pmem()
        .args(["convert", "--quiet", "--arch", "x86_64", "--format", "lime"])
        .args(trust)
        .arg(input)
        .arg(dest)
        .timeout(Duration::from_secs(120))
        .output()
        .unwrap()
}

fn check_against_manifest(image: &Path) {
    let bytes = std::fs::read(image).unwrap();
    let mut manifest_path = image.as_os_str().to_owned();
    manifest_path.push(".json");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(PathBuf::from(manifest_path)).unwrap()).unwrap();
    assert_eq!(manifest["complete"], true);
    assert_eq!(manifest["bytes"]["image"], bytes.len() as u64);
    assert_eq!(
        manifest["image_sha256"],
        hex::encode(Sha256::digest(&bytes))
    );
}

#[test]
fn pmem_to_pmem_receive_with_a_pinned_fingerprint() {
    let pki = Pki::new();
    let input = input(pki.dir.path());
    let out = pki.path("received.lime");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pmem"));
    cmd.args(["receive", "--listen", "127.0.0.1:0", "--cert"])
        .arg(pki.path("srv.pem"))
        .arg("--key")
        .arg(pki.path("srv.key"))
        .arg(&out);
    let server = spawn(cmd, false);
    let line = server.wait_for("listening on");
    let port = line
        .split("127.0.0.1:")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    let fingerprint = line
        .rsplit(' ')
        .next()
        .unwrap()
        .trim_end_matches(')')
        .to_string();

    // A wrong pin is refused at the handshake, before anything is read.
    let wrong = convert_to(
        &input,
        &format!("tls://127.0.0.1:{port}"),
        &["--tls-fingerprint", &"00".repeat(32)],
    );
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("fingerprint"));

    let ok = convert_to(
        &input,
        &format!("tls://127.0.0.1:{port}"),
        &["--tls-fingerprint", &fingerprint],
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(server.wait(), "pmem receive failed");
    check_against_manifest(&out);
    // The same bytes as a local file.
    let local = pki.path("local.lime");
    let _ = convert_to(&input, local.to_str().unwrap(), &[]);
    assert_eq!(std::fs::read(&local).unwrap(), std::fs::read(&out).unwrap());
}

#[test]
fn pmem_to_a_python_ssl_receiver_with_a_ca_file() {
    let pki = Pki::new();
    let input = input(pki.dir.path());
    let out = pki.path("py.lime");
    let server = python(&[
        "receive",
        pki.path("srv.pem").to_str().unwrap(),
        pki.path("srv.key").to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    let port = port_of_python(&server);
    let ca = pki.path("ca.pem");
    let ok = convert_to(
        &input,
        &format!("tls://localhost:{port}"),
        &["--tls-ca", ca.to_str().unwrap()],
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(server.wait(), "python receiver failed");
    check_against_manifest(&out);
}

#[test]
fn a_dropped_connection_fails_the_acquisition() {
    let pki = Pki::new();
    let input = input(pki.dir.path());
    let server = python(&[
        "cut-receiver",
        pki.path("srv.pem").to_str().unwrap(),
        pki.path("srv.key").to_str().unwrap(),
        "3000000",
    ]);
    let port = port_of_python(&server);
    let manifest = pki.path("local-manifest.json");
    let out = pmem()
        .args([
            "convert", "--quiet", "--arch", "x86_64", "--format", "lime", "--tls-ca",
        ])
        .arg(pki.path("ca.pem"))
        .arg("--manifest")
        .arg(&manifest)
        .arg(&input)
        .arg(format!("tls://localhost:{port}"))
        .timeout(Duration::from_secs(120))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let m: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    assert_eq!(m["complete"], false);
    assert!(m["error"].as_str().unwrap().contains("tls://localhost"));
}

#[test]
fn a_cut_sender_leaves_only_a_partial_file() {
    let pki = Pki::new();
    let out = pki.path("cut.lime");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pmem"));
    cmd.args(["receive", "--listen", "127.0.0.1:0", "--cert"])
        .arg(pki.path("srv.pem"))
        .arg("--key")
        .arg(pki.path("srv.key"))
        .arg(&out);
    let server = spawn(cmd, false);
    let line = server.wait_for("listening on");
    let port = line
        .split("127.0.0.1:")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    run(std::process::Command::new("python3").args([
        PEER,
        "cut-sender",
        "127.0.0.1",
        &port,
        "100000",
    ]));
    assert!(!server.wait(), "pmem receive must fail on a cut stream");
    assert!(!out.exists(), "a cut stream must not look complete");
    assert!(pki.path("cut.lime.partial").exists());
}
