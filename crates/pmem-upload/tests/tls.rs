//! One acquisition's objects through `tls::serve` on 127.0.0.1 with a test
//! CA made by `openssl`: the order a sender with symbols uses (image,
//! symbols, manifest), the order of senders from before the symbols (image,
//! manifest), and an image that is the only object. Each object must land
//! complete, byte for byte, under its own name, readable by its owner only.

use pmem_core::HashAlgorithm;
use pmem_upload::tls::{self, Follows, Kind, Received, Trust};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

#[path = "../../pmem/tests/common/pki.rs"]
mod pki;

/// A receiver serving one acquisition into `out` on a thread.
struct Receiver {
    address: String,
    trust: Trust,
    serving: JoinHandle<Result<Vec<Received>, pmem_upload::UploadError>>,
}

impl Receiver {
    fn start(dir: &Path, out: &Path) -> Receiver {
        let (ca, cert, key) = pki::pki(dir);
        let config = tls::server_config(&cert, &key).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let out = out.to_path_buf();
        let serving =
            std::thread::spawn(move || tls::serve(&listener, config, &out, false, |_| {}));
        Receiver {
            address,
            trust: Trust::CaFile(ca),
            serving,
        }
    }

    fn send(&self, kind: Kind, follows: Follows, data: &[u8]) {
        self.send_hashed(kind, follows, data, HashAlgorithm::Blake3);
    }

    fn send_hashed(&self, kind: Kind, follows: Follows, data: &[u8], hash: HashAlgorithm) {
        tls::TlsSender::connect(&self.address, &self.trust, kind, follows, hash)
            .and_then(|sender| sender.send_all(data))
            .unwrap_or_else(|err| panic!("sending {kind:?}: {err}"));
    }

    /// What was received once the receiver stopped by itself.
    fn finish(self) -> Vec<Received> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !self.serving.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "the receiver is still waiting for an object"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.serving.join().unwrap().unwrap()
    }
}

fn with_suffix(out: &Path, suffix: &str) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// `path` holds `data` and only its owner may read it.
fn assert_stored(path: &Path, data: &[u8]) {
    assert_eq!(std::fs::read(path).unwrap(), data, "{}", path.display());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", path.display());
    }
    assert!(!with_suffix(path, ".partial").exists());
}

/// Two MiB and a bit: several frames, the last one short.
fn image_bytes() -> Vec<u8> {
    (0..(2u32 << 20) + 12_345)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect()
}

#[test]
fn image_symbols_and_manifest_land_beside_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("memory.lime");
    let receiver = Receiver::start(dir.path(), &out);
    let image = image_bytes();
    let symbols: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let manifest = br#"{"complete":true}"#;
    receiver.send(Kind::Image, Follows::More, &image);
    receiver.send_hashed(
        Kind::Symbols,
        Follows::More,
        &symbols,
        HashAlgorithm::Sha256,
    );
    receiver.send(Kind::Manifest, Follows::Nothing, manifest);
    let received = receiver.finish();

    // Each object's trailer in the algorithm its header named, checked
    // here with the reference crates.
    assert_eq!(received[0].version, 2);
    assert_eq!(received[0].hash.algorithm, HashAlgorithm::Blake3);
    assert_eq!(received[0].hash.bytes, *blake3::hash(&image).as_bytes());
    assert_eq!(received[1].hash.algorithm, HashAlgorithm::Sha256);
    assert_eq!(
        received[1].hash.bytes,
        <[u8; 32]>::from(<sha2::Sha256 as sha2::Digest>::digest(&symbols))
    );

    let kinds: Vec<Kind> = received.iter().map(|r| r.kind).collect();
    assert_eq!(kinds, [Kind::Image, Kind::Symbols, Kind::Manifest]);
    let symbols_path = with_suffix(&out, ".symbols");
    assert_eq!(received[1].path, symbols_path);
    assert_eq!(received[1].bytes, symbols.len() as u64);
    assert_stored(&out, &image);
    assert_stored(&symbols_path, &symbols);
    assert_stored(&with_suffix(&out, ".json"), manifest);
}

#[test]
fn the_image_and_manifest_of_a_sender_without_symbols_end_the_acquisition() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("memory.raw");
    let receiver = Receiver::start(dir.path(), &out);
    let image = image_bytes();
    // The bytes senders from before the symbols put in the header: flag
    // bit 0 on the image ("a manifest follows"), clear on the manifest.
    receiver.send(Kind::Image, Follows::More, &image);
    receiver.send(Kind::Manifest, Follows::Nothing, b"{}");
    let received = receiver.finish();
    assert_eq!(received.len(), 2);
    assert_stored(&out, &image);
    assert_stored(&with_suffix(&out, ".json"), b"{}");
    assert!(!with_suffix(&out, ".symbols").exists());
}

#[test]
fn an_image_that_says_nothing_follows_is_the_whole_acquisition() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("alone.raw");
    let receiver = Receiver::start(dir.path(), &out);
    receiver.send(Kind::Image, Follows::Nothing, b"only the image");
    let received = receiver.finish();
    assert_eq!(received.len(), 1);
    assert_stored(&out, b"only the image");
}
