//! `tls://` end to end on 127.0.0.1 with a test CA made by `openssl`:
//! pmem to `pmem receive` (pinned fingerprint), pmem to an independent
//! Python ssl receiver (CA file), a receiver that drops the connection, a
//! sender cut before its trailer, a wrong pin, and `pmem receive` taking
//! the symbols as a third object, and both sides of the version change
//! (a new sender refused by a version-1 receiver, a version-1 sender taken
//! by `pmem receive`). Every received image is hashed and compared with
//! the manifest that travelled with it.

use serde_json::Value;
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
        pki(dir.path());
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

/// `pmem receive` into `out` with the test certificate: the server, its
/// port and the certificate's fingerprint, as it prints them.
fn pmem_receive(pki: &Pki, out: &Path) -> (Server, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pmem"));
    cmd.args(["receive", "--listen", "127.0.0.1:0", "--cert"])
        .arg(pki.path("srv.pem"))
        .arg("--key")
        .arg(pki.path("srv.key"))
        .arg(out);
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
    let fingerprint = line
        .rsplit(' ')
        .next()
        .unwrap()
        .trim_end_matches(')')
        .to_string();
    (server, port, fingerprint)
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
    assert_blake3(&manifest["image_hash"], &bytes);
}

#[test]
fn pmem_to_pmem_receive_with_a_pinned_fingerprint() {
    let pki = Pki::new();
    let input = varied_input(pki.dir.path(), 12);
    let out = pki.path("received.lime");
    let (server, port, fingerprint) = pmem_receive(&pki, &out);

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
    let input = varied_input(pki.dir.path(), 12);
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
    let input = varied_input(pki.dir.path(), 12);
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
    let (server, port, _) = pmem_receive(&pki, &out);
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

/// `pmem receive` takes the three objects of an acquisition whose image
/// format has no room for the symbols (image, symbols, manifest, sent here
/// with pmem-upload's sender), stores the symbols at OUT.symbols, owner
/// only, says so, and exits once the manifest is in.
#[test]
fn pmem_receive_stores_the_symbols_beside_the_image() {
    use pmem_core::HashAlgorithm;
    use pmem_upload::tls::{parse_fingerprint, Follows, Kind, TlsSender, Trust};
    let pki = Pki::new();
    let out = pki.path("with-symbols.lime");
    let (server, port, fingerprint) = pmem_receive(&pki, &out);
    let trust = Trust::Fingerprint(parse_fingerprint(&fingerprint).unwrap());
    let address = format!("127.0.0.1:{port}");
    let image: Vec<u8> = (0..1_500_000u32).map(|i| (i >> 5) as u8).collect();
    let symbols: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
    let manifest = br#"{"complete":true}"#;
    for (kind, follows, data) in [
        (Kind::Image, Follows::More, &image[..]),
        (Kind::Symbols, Follows::More, &symbols[..]),
        (Kind::Manifest, Follows::Nothing, &manifest[..]),
    ] {
        // The symbols' trailer in SHA-256, the others in BLAKE3: the
        // receiver checks and logs each in the algorithm its header names.
        let hash = match kind {
            Kind::Symbols => HashAlgorithm::Sha256,
            _ => HashAlgorithm::Blake3,
        };
        TlsSender::connect(&address, &trust, kind, follows, hash)
            .and_then(|sender| sender.send_all(data))
            .unwrap_or_else(|err| panic!("sending {kind:?}: {err}"));
    }
    let sidecar = pki.path("with-symbols.lime.symbols");
    let logged = server.wait_for(".symbols");
    assert!(
        logged.contains(&format!(
            "received {} bytes into {}, sha256 {}",
            symbols.len(),
            sidecar.display(),
            sha256_hex(&symbols)
        )),
        "{logged}"
    );
    let logged = server.wait_for(".json");
    assert!(
        logged.contains(&format!("blake3 {}", blake3_hex(manifest))),
        "{logged}"
    );
    assert!(server.wait(), "pmem receive failed");
    for (path, data) in [
        (out.clone(), &image[..]),
        (sidecar, &symbols[..]),
        (pki.path("with-symbols.lime.json"), &manifest[..]),
    ] {
        assert_eq!(std::fs::read(&path).unwrap(), data, "{}", path.display());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", path.display());
        }
    }
}

/// `pmem convert` of an image with an IMAGE.symbols sidecar to `pmem
/// receive`: LiME has no room for the symbols, so they travel as their own
/// object and arrive at OUT.symbols byte for byte, with the SHA-256 the
/// manifest (which arrives last) records.
#[test]
fn convert_sends_the_symbols_to_pmem_receive() {
    let pki = Pki::new();
    let input = varied_input(pki.dir.path(), 3);
    let tar = symbols_beside(&input);
    let out = pki.path("carried.lime");
    let (server, port, fingerprint) = pmem_receive(&pki, &out);
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
    assert_eq!(
        std::fs::read(pki.path("carried.lime.symbols")).unwrap(),
        tar
    );
    let manifest = manifest(&out);
    assert_eq!(manifest["symbols"]["sha256"], sha256_hex(&tar));
    assert_eq!(manifest["symbols"]["bytes"], tar.len() as u64);
}

/// A new sender refuses to go on with a receiver of version 1 (the peer's
/// `receive-v1`, which refuses the version-2 header as pmem's receivers of
/// that time did): it fails before reading any memory, leaves nothing
/// behind, and says to upgrade the receiver.
#[test]
fn a_version_1_receiver_stops_a_new_sender_before_any_memory_is_read() {
    let pki = Pki::new();
    let input = varied_input(pki.dir.path(), 12);
    let server = python(&[
        "receive-v1",
        pki.path("srv.pem").to_str().unwrap(),
        pki.path("srv.key").to_str().unwrap(),
    ]);
    let port = port_of_python(&server);
    let manifest = pki.path("local-manifest.json");
    let out = pmem()
        .args(["convert", "--quiet", "--arch", "x86_64", "--format", "lime"])
        .arg("--tls-ca")
        .arg(pki.path("ca.pem"))
        .arg("--manifest")
        .arg(&manifest)
        .arg(&input)
        .arg(format!("tls://localhost:{port}"))
        .timeout(Duration::from_secs(120))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("upgrade pmem on the receiving machine"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was written"), "{stderr}");
    assert!(
        !manifest.exists(),
        "no manifest of a copy that never started"
    );
    server.wait_for("REJECTED");
    assert!(server.wait(), "the version-1 receiver failed");
}

/// `pmem receive` still takes a version-1 sender's stream (the peer's
/// `send-v1`: no hash byte, no ready token, a SHA-256 trailer) and says so.
#[test]
fn pmem_receive_takes_a_version_1_sender() {
    let pki = Pki::new();
    let input = varied_input(pki.dir.path(), 3);
    let out = pki.path("from-v1.raw");
    let (server, port, _) = pmem_receive(&pki, &out);
    let sent = python(&["send-v1", "127.0.0.1", &port, input.to_str().unwrap()]);
    let line = sent.wait_for("SENT");
    let data = std::fs::read(&input).unwrap();
    assert!(line.contains(&sha256_hex(&data)), "{line}");
    assert!(sent.wait(), "the version-1 sender failed");
    let logged = server.wait_for("received");
    assert!(
        logged.contains(&format!(
            "sha256 {} (a version-1 sender)",
            sha256_hex(&data)
        )),
        "{logged}"
    );
    assert!(server.wait(), "pmem receive failed");
    assert_eq!(std::fs::read(&out).unwrap(), data);
}
