//! `tls://host:port`: the image as a TLS stream to a listener the
//! responder runs (`pmem receive`), and that listener.
//!
//! An acquisition is several objects, one per connection, in this order:
//! the image, then the symbols when the image format has no room for them
//! (`IMAGE.symbols`), then the manifest, which is always last. Wire format
//! of each, inside TLS (all integers big-endian):
//!
//! ```text
//! header   "PMEMTLS2" kind:u8 flags:u8 hash:u8
//!          kind: 'I' image, 'S' symbols, 'M' manifest
//!          flags bit 0: another object of this acquisition follows
//!          hash: 'b' BLAKE3, 's' SHA-256 (the trailer's algorithm)
//! ready    "PMEMRDY2"                     (receiver -> sender)
//! frames   len:u32 (1..=1 MiB) bytes[len] ... then len = 0
//! trailer  total:u64 hash[32]             (of the payload bytes)
//! ack      "PMEMACK1" hash[32]            (receiver -> sender, after fsync)
//! ```
//!
//! Version 2 added the hash byte and the ready token. A version-1 sender
//! sends `"PMEMTLS1" kind flags` and no hash byte, waits for no ready
//! token, and its trailer is SHA-256: the receiver still takes it. A
//! version-1 receiver refuses the version-2 magic ("not a pmem stream")
//! and closes the connection: the sender waits for the ready token in
//! [`TlsSender::connect`], so it fails there, before any memory is read,
//! and says to upgrade the receiver.
//!
//! The receiver ([`serve`]) stops after the first object whose flag says
//! nothing follows. Until the symbols existed, bit 0 meant "a manifest
//! follows" and only the image set it; the senders of that time send the
//! image (bit 0 set) then the manifest (clear), which ends an acquisition
//! the same way under either meaning, so the magic stayed `PMEMTLS1`. A
//! receiver of that time refuses kind `'S'` ("unknown object kind") and
//! stops: a new sender's symbols, and the manifest after them, do not
//! reach it, and the sender fails at the symbols.
//!
//! The image and the symbols always say that something follows: the
//! manifest is what closes an acquisition. A sender that stops before the
//! manifest (its acquisition failed, it was killed) leaves the receiver
//! waiting for it, with the objects already received complete on disk,
//! just as an image whose manifest never comes always has; whoever runs
//! the receiver stops it.
//!
//! A cut stream (connection lost, sender killed) never has a valid trailer,
//! so the receiver can always tell complete from incomplete: it writes to
//! `OUT.partial` and renames to `OUT` only after the trailer matches. The
//! sender, after the trailer, sends TLS close_notify, shuts down its write
//! side and waits for the acknowledgement: dropping the socket right after
//! close_notify can lose the tail in the kernel's buffers without either
//! side noticing, and only the ack proves the receiver has everything.

use crate::remote::Upload;
use crate::{Companion, UploadError};
use pmem_core::sink::fill_buffer;
use pmem_core::sink::ImageDigest;
use pmem_core::{HashAlgorithm, ImageHash, SinkSummary};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const MAGIC: &[u8; 8] = b"PMEMTLS2";
/// The magic of version 1 (SHA-256 trailers, no ready token).
const MAGIC_V1: &[u8; 8] = b"PMEMTLS1";
const READY: &[u8; 8] = b"PMEMRDY2";
const ACK: &[u8; 8] = b"PMEMACK1";

/// The header's byte for a trailer algorithm.
fn hash_byte(algorithm: HashAlgorithm) -> u8 {
    match algorithm {
        HashAlgorithm::Blake3 => b'b',
        HashAlgorithm::Sha256 => b's',
    }
}

fn hash_from_byte(byte: u8) -> Option<HashAlgorithm> {
    HashAlgorithm::ALL
        .into_iter()
        .find(|a| hash_byte(*a) == byte)
}
const MAX_FRAME: usize = 1 << 20;
/// How long a stalled peer may block a read or a write before pmem gives
/// up with an error instead of hanging forever.
pub const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// What an object on the stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The memory image (`'I'` on the wire).
    Image,
    /// The image's manifest (`'M'` on the wire).
    Manifest,
    /// The kernel's symbol bundle beside an image with no room for it
    /// (`'S'` on the wire).
    Symbols,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Image => b'I',
            Kind::Manifest => b'M',
            Kind::Symbols => b'S',
        }
    }

    fn from_byte(byte: u8) -> Option<Kind> {
        [Kind::Image, Kind::Manifest, Kind::Symbols]
            .into_iter()
            .find(|kind| kind.byte() == byte)
    }
}

impl From<Companion> for Kind {
    fn from(companion: Companion) -> Kind {
        match companion {
            Companion::Manifest => Kind::Manifest,
            Companion::Symbols => Kind::Symbols,
        }
    }
}

/// Whether another object of the same acquisition comes after this one
/// (the header's flag bit 0): the receiver then waits for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follows {
    /// Another object follows, on a new connection: the symbols or the
    /// manifest after the image, the manifest after the symbols.
    More,
    /// This object is the last.
    Nothing,
}

impl Follows {
    fn flags(self) -> u8 {
        match self {
            Follows::More => 1,
            Follows::Nothing => 0,
        }
    }

    fn from_flags(flags: u8) -> Follows {
        if flags & 1 != 0 {
            Follows::More
        } else {
            Follows::Nothing
        }
    }
}

/// How the sender decides to trust the receiver.
#[derive(Clone, Debug)]
pub enum Trust {
    /// SHA-256 of the receiver's end-entity certificate (DER).
    Fingerprint([u8; 32]),
    /// CA certificates (PEM file); the certificate must name the host.
    CaFile(PathBuf),
}

/// Parses a SHA-256 fingerprint as `openssl x509 -fingerprint -sha256`
/// prints it (colons) or as plain hex.
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], UploadError> {
    let text = text.trim();
    let text = text
        .rsplit_once('=')
        .map(|(_, hex)| hex)
        .unwrap_or(text)
        .replace(':', "");
    let bytes = hex::decode(&text)
        .ok()
        .filter(|b| b.len() == 32)
        .ok_or_else(|| UploadError::tls("the fingerprint must be 32 bytes of hex (SHA-256)"))?;
    let mut out = [0u8; 32];
    out.copy_from_slice(&bytes);
    Ok(out)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts exactly one certificate: the pinned one. The handshake
/// signature is still verified with the certificate's key, so a stolen
/// certificate without its key does not pass.
#[derive(Debug)]
struct PinnedCert {
    fingerprint: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let seen: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if seen == self.fingerprint {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the receiver's certificate has fingerprint {}, not the pinned one",
                hex::encode(seen)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn tls_err(e: rustls::Error) -> UploadError {
    UploadError::tls(e.to_string()).because(e)
}

/// Reads all certificates of a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, UploadError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            UploadError::tls(format!("reading certificates {}: {e}", path.display())).because(e)
        })?;
    if certs.is_empty() {
        return Err(UploadError::tls(format!(
            "{} holds no certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// A client configuration trusting what `trust` says.
pub fn client_config(trust: &Trust) -> Result<Arc<rustls::ClientConfig>, UploadError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?;
    let config = match trust {
        Trust::Fingerprint(fingerprint) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCert {
                fingerprint: *fingerprint,
                provider,
            }))
            .with_no_client_auth(),
        Trust::CaFile(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(path)? {
                roots.add(cert).map_err(tls_err)?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(Arc::new(config))
}

type ClientStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Sends one object (the image, the symbols or the manifest) to a receiver.
pub struct TlsSender {
    stream: ClientStream,
    frame: Vec<u8>,
    /// Of the payload, for the trailer.
    digest: ImageDigest,
}

impl TlsSender {
    /// Connects to `host:port`, sends the header naming `hash` as the
    /// trailer's algorithm, and waits for the receiver's ready token: a
    /// receiver that does not speak this version fails here.
    pub fn connect(
        address: &str,
        trust: &Trust,
        kind: Kind,
        follows: Follows,
        hash: HashAlgorithm,
    ) -> Result<TlsSender, UploadError> {
        let (host, _) = address
            .rsplit_once(':')
            .ok_or_else(|| UploadError::destination(format!("tls://{address}: no port")))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|e| UploadError::destination(format!("tls://{address}: {e}")).because(e))?;
        let addrs: Vec<_> = address
            .to_socket_addrs()
            .map_err(|e| UploadError::Transport {
                what: format!("resolving {address}"),
                detail: e.to_string(),
                source: Some(e.into()),
            })?
            .collect();
        let mut last = None;
        let mut tcp = None;
        for addr in &addrs {
            match TcpStream::connect_timeout(addr, Duration::from_secs(30)) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let tcp = tcp.ok_or_else(|| UploadError::Transport {
            what: format!("connecting to {address}"),
            detail: last
                .as_ref()
                .map_or_else(|| "no address".into(), |e| e.to_string()),
            source: last.map(Into::into),
        })?;
        tcp.set_read_timeout(Some(IO_TIMEOUT))?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))?;
        tcp.set_nodelay(true)?;
        let conn =
            rustls::ClientConnection::new(client_config(trust)?, server_name).map_err(tls_err)?;
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        // Complete the handshake now so that a wrong certificate is
        // reported before any memory is read.
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock).map_err(|e| {
                UploadError::tls(format!("handshake with {address}: {e}")).because(e)
            })?;
        }
        let mut header = MAGIC.to_vec();
        header.push(kind.byte());
        header.push(follows.flags());
        header.push(hash_byte(hash));
        stream.write_all(&header)?;
        stream.flush()?;
        let mut ready = [0u8; 8];
        let answered = read_exact_tls(&mut stream, &mut ready);
        if answered.is_err() || &ready != READY {
            let why = match answered {
                Err(e) => e.to_string(),
                Ok(()) => format!("it answered {:?}", String::from_utf8_lossy(&ready)),
            };
            return Err(UploadError::protocol(format!(
                "the receiver at {address} did not accept a version-2 pmem stream ({why}): \
                 it is probably an older `pmem receive`; upgrade pmem on the receiving \
                 machine (nothing was sent)"
            )));
        }
        Ok(TlsSender {
            stream,
            frame: Vec::with_capacity(MAX_FRAME),
            digest: ImageDigest::new(hash),
        })
    }

    fn flush_frame(&mut self) -> io::Result<()> {
        if self.frame.is_empty() {
            return Ok(());
        }
        let len = self.frame.len() as u32;
        self.stream.write_all(&len.to_be_bytes())?;
        self.stream.write_all(&self.frame)?;
        self.frame.clear();
        Ok(())
    }

    /// Sends a whole buffer as one object and commits it (the manifest, the
    /// symbols).
    pub fn send_all(mut self, data: &[u8]) -> Result<(), UploadError> {
        Upload::write(&mut self, data)?;
        let summary = SinkSummary {
            bytes: data.len() as u64,
            hash: None,
        };
        Box::new(self).finish(&summary)
    }
}

impl Upload for TlsSender {
    fn write(&mut self, buf: &[u8]) -> Result<(), UploadError> {
        self.digest.update(buf);
        Ok(fill_buffer(
            self,
            buf,
            MAX_FRAME,
            |s| &mut s.frame,
            Self::flush_frame,
        )?)
    }

    fn finish(mut self: Box<Self>, summary: &SinkSummary) -> Result<(), UploadError> {
        self.flush_frame()?;
        let bytes = self.digest.len();
        let hash = self
            .digest
            .clone()
            .finish()
            .ok_or_else(|| UploadError::protocol("the trailer has no hash"))?;
        // The image's own hash, when its sink made one with the same
        // algorithm, must be the trailer's.
        let differs = summary
            .hash
            .is_some_and(|h| h.algorithm == hash.algorithm && h.bytes != hash.bytes);
        if differs || bytes != summary.bytes {
            return Err(UploadError::protocol(
                "the bytes sent differ from the image's summary",
            ));
        }
        let sha = hash.bytes;
        let mut trailer = 0u32.to_be_bytes().to_vec();
        trailer.extend_from_slice(&bytes.to_be_bytes());
        trailer.extend_from_slice(&sha);
        self.stream.write_all(&trailer)?;
        self.stream.flush()?;
        self.stream.conn.send_close_notify();
        while self.stream.conn.wants_write() {
            self.stream.conn.write_tls(&mut self.stream.sock)?;
        }
        // Half-close: the receiver sees EOF after close_notify, and the
        // connection stays open for its acknowledgement.
        self.stream.sock.shutdown(Shutdown::Write)?;
        let mut ack = [0u8; 40];
        read_exact_tls(&mut self.stream, &mut ack).map_err(|e| {
            UploadError::protocol(format!(
                "the receiver did not acknowledge the stream ({e}): it may be incomplete there"
            ))
            .because(e)
        })?;
        if &ack[..8] != ACK || ack[8..] != sha {
            return Err(UploadError::protocol(
                "the receiver's acknowledgement does not match what was sent",
            ));
        }
        Ok(())
    }
}

/// `read_exact` that reports an early EOF (including a TLS stream closed
/// without close_notify) as an error.
fn read_exact_tls(r: &mut impl Read, buf: &mut [u8]) -> io::Result<()> {
    r.read_exact(buf)
}

/// A server configuration from a PEM certificate chain and key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, UploadError> {
    let chain = read_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| UploadError::tls(format!("reading key {}: {e}", key.display())).because(e))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(tls_err)?;
    Ok(Arc::new(config))
}

/// One object received completely.
#[derive(Debug, Clone)]
pub struct Received {
    /// What the object was.
    pub kind: Kind,
    /// Where it was stored (renamed there once its trailer matched).
    pub path: PathBuf,
    /// Payload length in bytes.
    pub bytes: u64,
    /// Hash of the payload (the algorithm the sender's header named;
    /// SHA-256 from a version-1 sender), as the trailer stated and the
    /// receiver checked.
    pub hash: ImageHash,
    /// The protocol version the sender spoke (1 or 2).
    pub version: u8,
    /// Whether the sender said another object follows.
    pub follows: Follows,
}

/// Where an object of `kind` goes: the image at `out`, its manifest at
/// `out.json`, its symbols at `out.symbols`.
pub fn target_path(out: &Path, kind: Kind) -> PathBuf {
    let suffix = match kind {
        Kind::Image => return out.to_path_buf(),
        Kind::Manifest => Companion::Manifest.suffix(),
        Kind::Symbols => Companion::Symbols.suffix(),
    };
    let mut name = out.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Receives one object on an accepted connection: writes it to
/// `TARGET.partial`, checks the trailer, fsyncs, renames to TARGET, then
/// acknowledges. A cut or inconsistent stream is an error and leaves only
/// the `.partial` file.
pub fn receive_one(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    out: &Path,
    overwrite: bool,
) -> Result<Received, UploadError> {
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    let conn = rustls::ServerConnection::new(config).map_err(tls_err)?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    let cut = |e: io::Error| {
        UploadError::protocol(format!("stream cut before its trailer: {e}")).because(e)
    };
    let mut header = [0u8; 10];
    stream
        .read_exact(&mut header)
        .map_err(|e| UploadError::rejected(format!("before the stream started: {e}")).because(e))?;
    let (version, algorithm) = if &header[..8] == MAGIC {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).map_err(|e| {
            UploadError::rejected(format!("before the stream started: {e}")).because(e)
        })?;
        let algorithm = hash_from_byte(byte[0]).ok_or_else(|| {
            UploadError::protocol(format!("unknown hash algorithm {:?}", byte[0] as char))
        })?;
        (2, algorithm)
    } else if &header[..8] == MAGIC_V1 {
        (1, HashAlgorithm::Sha256)
    } else {
        return Err(UploadError::rejected("not a pmem stream"));
    };
    let kind = Kind::from_byte(header[8])
        .ok_or_else(|| UploadError::protocol(format!("unknown object kind {}", header[8])))?;
    let follows = Follows::from_flags(header[9]);
    if version == 2 {
        stream.write_all(READY)?;
        stream.flush()?;
    }
    let target = target_path(out, kind);
    let partial = partial_path(&target);
    let file = pmem_core::sink::create_image_file(&partial, true)?;
    let mut writer = io::BufWriter::with_capacity(1 << 20, file);
    let mut hasher = ImageDigest::new(algorithm);
    let mut bytes = 0u64;
    let mut buf = vec![0u8; MAX_FRAME];
    loop {
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).map_err(cut)?;
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 {
            break;
        }
        if len > MAX_FRAME {
            return Err(UploadError::protocol(format!("frame of {len} bytes")));
        }
        stream.read_exact(&mut buf[..len]).map_err(cut)?;
        writer.write_all(&buf[..len])?;
        hasher.update(&buf[..len]);
        bytes += len as u64;
    }
    let mut trailer = [0u8; 40];
    stream.read_exact(&mut trailer).map_err(cut)?;
    let hash = hasher
        .finish()
        .ok_or_else(|| UploadError::protocol("no hash of the stream"))?;
    let sha = hash.bytes;
    let declared = u64::from_be_bytes(trailer[..8].try_into().unwrap_or_default());
    if declared != bytes || trailer[8..] != sha {
        return Err(UploadError::protocol(format!(
            "trailer says {declared} bytes {algorithm} {}, received {bytes} bytes {algorithm} {}",
            hex::encode(&trailer[8..]),
            hex::encode(sha)
        )));
    }
    // The sender's close_notify must follow: anything else means the
    // stream was not ended by pmem.
    let mut extra = [0u8; 1];
    match stream.read(&mut extra) {
        Ok(0) => {}
        Ok(_) => return Err(UploadError::protocol("data after the trailer")),
        Err(e) => return Err(cut(e)),
    }
    let file = writer.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    if !overwrite && target.exists() {
        return Err(UploadError::protocol(format!(
            "{} already exists (complete copy kept in {})",
            target.display(),
            partial.display()
        )));
    }
    std::fs::rename(&partial, &target)?;
    let mut ack = ACK.to_vec();
    ack.extend_from_slice(&sha);
    stream.write_all(&ack)?;
    stream.conn.send_close_notify();
    stream.flush()?;
    while stream.conn.wants_write() {
        stream.conn.write_tls(&mut stream.sock)?;
    }
    Ok(Received {
        kind,
        path: target,
        bytes,
        hash,
        version,
        follows,
    })
}

/// Serves one acquisition: objects until one says nothing follows (the
/// image, its symbols, its manifest: see the module doc). Returns what was
/// received, in order. A connection that fails before
/// its stream starts (a wrong pin, a port scanner) is reported and the
/// receiver keeps waiting; a stream cut after it started is an error.
pub fn serve(
    listener: &TcpListener,
    config: Arc<rustls::ServerConfig>,
    out: &Path,
    overwrite: bool,
    mut log: impl FnMut(Result<&Received, &UploadError>),
) -> Result<Vec<Received>, UploadError> {
    let mut received = Vec::new();
    loop {
        let (tcp, _) = listener.accept()?;
        let got = match receive_one(tcp, config.clone(), out, overwrite) {
            Ok(got) => got,
            Err(err @ UploadError::Rejected { .. }) => {
                log(Err(&err));
                continue;
            }
            Err(err) => return Err(err),
        };
        log(Ok(&got));
        let last = got.follows == Follows::Nothing;
        received.push(got);
        if last {
            return Ok(received);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_openssl_and_plain_form() {
        let hex64 = "ab".repeat(32);
        let colons = hex64
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap().to_uppercase())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(parse_fingerprint(&hex64).unwrap(), [0xab; 32]);
        assert_eq!(
            parse_fingerprint(&format!("sha256 Fingerprint={colons}")).unwrap(),
            [0xab; 32]
        );
        assert!(parse_fingerprint("abcd").is_err());
    }
}
