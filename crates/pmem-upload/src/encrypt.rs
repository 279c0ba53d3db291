//! age encryption of an image stream (and of its manifest) before it leaves
//! the process, to X25519 recipients (`age1...`). Standard `age -d`
//! restores the plaintext.
//!
//! [`EncryptSink`] sits between the format writer and the destination: the
//! writer sees plaintext offsets and the summary it returns is that of the
//! plaintext image (the same hash as an unencrypted acquisition), while the
//! destination's summary (the ciphertext as stored) is reported through a
//! [`CiphertextSlot`] so the manifest can record both.

use crate::UploadError;
use pmem_core::sink::ImageDigest;
use pmem_core::HashAlgorithm;
use pmem_core::{ByteSink, SinkSummary};
use std::io::{self, BufRead, Read, Write};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

/// The first bytes of every binary age file.
pub const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";

/// Recipients parsed from `--encrypt-to`.
#[derive(Clone)]
pub struct Recipients {
    keys: Vec<age::x25519::Recipient>,
}

impl Recipients {
    /// Parses age X25519 public keys (`age1...`).
    pub fn parse<S: AsRef<str>>(texts: &[S]) -> Result<Recipients, UploadError> {
        let keys = texts
            .iter()
            .map(|t| {
                let t = t.as_ref().trim();
                age::x25519::Recipient::from_str(t).map_err(|e| {
                    UploadError::age(format!(
                        "recipient {t:?} is not an age X25519 public key (age1...): {e}"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(UploadError::age("no recipient"));
        }
        Ok(Recipients { keys })
    }

    /// The public keys, as the manifest records them.
    pub fn to_strings(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.to_string()).collect()
    }

    fn encryptor(&self) -> Result<age::Encryptor, UploadError> {
        age::Encryptor::with_recipients(self.keys.iter().map(|k| k as &dyn age::Recipient))
            .map_err(|e| UploadError::age(e.to_string()).because(e))
    }

    /// Encrypts a small buffer (a manifest) into one age file.
    pub fn encrypt_bytes(&self, plaintext: &[u8]) -> Result<Vec<u8>, UploadError> {
        let mut out = Vec::with_capacity(plaintext.len() + 256);
        let mut writer = self.encryptor()?.wrap_output(&mut out)?;
        writer.write_all(plaintext)?;
        writer.finish()?;
        Ok(out)
    }
}

/// Where an [`EncryptSink`] leaves the destination's summary on finish.
pub type CiphertextSlot = Arc<Mutex<Option<SinkSummary>>>;

/// Plaintext bytes per age STREAM chunk, and the tag added to each.
const CHUNK: u64 = 64 * 1024;
const TAG: u64 = 16;

/// The length of age's payload for `plaintext` bytes: ChaCha20-Poly1305
/// chunks of 64 KiB, a 16-byte tag each, at least one chunk (the last,
/// marked final, is never empty unless the plaintext is). The file is the
/// header (with its 16-byte nonce) followed by this.
pub fn payload_len(plaintext: u64) -> u64 {
    plaintext + plaintext.div_ceil(CHUNK).max(1) * TAG
}

/// Adapts the destination sink to `io::Write` for age's stream writer,
/// counting what passes (so the header's length is known).
struct SinkWriter(Box<dyn ByteSink>, u64);

impl Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_all(buf)?;
        self.1 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A [`ByteSink`] that encrypts everything into `inner`.
pub struct EncryptSink {
    stream: age::stream::StreamWriter<CountHeader>,
    /// Of the plaintext.
    digest: ImageDigest,
    slot: CiphertextSlot,
    /// Bytes of the age header and nonce (random "grease" stanzas make it
    /// vary from file to file), written when the sink is made.
    header_len: u64,
}

impl EncryptSink {
    /// Starts the age file (header) in `inner`. Returns the sink and the
    /// slot that receives the ciphertext summary (hashed by `inner`) when
    /// the sink finishes. The plaintext is hashed with `hash` (`None`:
    /// only counted).
    pub fn new(
        inner: Box<dyn ByteSink>,
        recipients: &Recipients,
        hash: Option<HashAlgorithm>,
    ) -> Result<(EncryptSink, CiphertextSlot), UploadError> {
        let header_len = Arc::new(Mutex::new(0));
        let counted = CountHeader(SinkWriter(inner, 0), header_len.clone());
        let stream = recipients.encryptor()?.wrap_output(counted)?;
        let header_len = *header_len.lock().map_err(|_| UploadError::age("lock"))?;
        let slot = CiphertextSlot::default();
        Ok((
            EncryptSink {
                stream,
                digest: ImageDigest::optional(hash),
                slot: slot.clone(),
                header_len,
            },
            slot,
        ))
    }

    /// The exact length of the ciphertext this sink produces for an image
    /// of `plaintext` bytes (for a destination that declares its length up
    /// front).
    pub fn ciphertext_len(&self, plaintext: u64) -> u64 {
        self.header_len + payload_len(plaintext)
    }
}

/// Records in the shared cell how many bytes age wrote so far: at the end
/// of `wrap_output`, the header and the nonce.
struct CountHeader(SinkWriter, Arc<Mutex<u64>>);

impl Write for CountHeader {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.0.write(buf)?;
        if let Ok(mut count) = self.1.lock() {
            *count = self.0 .1;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl ByteSink for EncryptSink {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.stream.write_all(buf)?;
        self.digest.update(buf);
        Ok(())
    }

    // Ciphertext has no holes: the trait's write_zeros encrypts zeros like
    // any other bytes.

    fn position(&self) -> u64 {
        self.digest.len()
    }

    fn finish(self: Box<Self>) -> io::Result<SinkSummary> {
        let this = *self;
        // The last (short) chunk and its tag are written here: without
        // this, age -d reports a truncated file.
        let CountHeader(SinkWriter(inner, _), _) = this.stream.finish()?;
        let ciphertext = inner.finish()?;
        if let Ok(mut slot) = this.slot.lock() {
            *slot = Some(ciphertext);
        }
        Ok(this.digest.summary())
    }
}

/// Identities (age secret keys) from an identity file as `age-keygen`
/// writes it.
pub struct Identities {
    keys: Vec<Box<dyn age::Identity + Send + Sync>>,
}

impl Identities {
    /// Reads the identity file at `path`.
    pub fn from_file(path: &Path) -> Result<Identities, UploadError> {
        let file = std::fs::File::open(path).map_err(|e| {
            UploadError::age(format!("opening identity file {}: {e}", path.display())).because(e)
        })?;
        Identities::from_reader(io::BufReader::new(file))
    }

    /// Reads identities in identity-file syntax from `reader`; fails when
    /// it holds none.
    pub fn from_reader<R: BufRead>(reader: R) -> Result<Identities, UploadError> {
        let keys = age::IdentityFile::from_buffer(reader)
            .and_then(|f| f.into_identities().map_err(io::Error::other))
            .map_err(|e| UploadError::age(format!("reading identities: {e}")).because(e))?;
        if keys.is_empty() {
            return Err(UploadError::age("the identity file holds no key"));
        }
        Ok(Identities { keys })
    }

    /// A reader of the plaintext of an age file. With `R: Seek` the reader
    /// seeks too (age's STREAM chunks are independent), which is how pmem's
    /// image readers read an encrypted image in place.
    pub fn decrypt<R: Read>(&self, input: R) -> Result<age::stream::StreamReader<R>, UploadError> {
        let decryptor =
            age::Decryptor::new(input).map_err(|e| UploadError::age(e.to_string()).because(e))?;
        decryptor
            .decrypt(self.keys.iter().map(|k| k.as_ref() as &dyn age::Identity))
            .map_err(|e| UploadError::age(e.to_string()).because(e))
    }
}

/// True when `head` starts like an age file.
pub fn is_age(head: &[u8]) -> bool {
    head.starts_with(AGE_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pmem_core::sink::HashingSink;
    use sha2::{Digest, Sha256};

    fn keypair() -> (String, Identities) {
        let identity = age::x25519::Identity::generate();
        let public = identity.to_public().to_string();
        let text = format!(
            "# test\n{}\n",
            age::secrecy::ExposeSecret::expose_secret(&identity.to_string())
        );
        (public, Identities::from_reader(text.as_bytes()).unwrap())
    }

    #[test]
    fn sink_round_trips_and_reports_both_hashes() {
        let (public, identities) = keypair();
        let recipients = Recipients::parse(&[public]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img.age");
        let inner = Box::new(HashingSink::stream(Box::new(
            std::fs::File::create(&path).unwrap(),
        )));
        let (sink, slot) =
            EncryptSink::new(inner, &recipients, Some(HashAlgorithm::Sha256)).unwrap();
        let mut sink: Box<dyn ByteSink> = Box::new(sink);
        sink.write_all(b"hello").unwrap();
        sink.write_zeros(200_000).unwrap();
        sink.write_all(b"end").unwrap();
        assert_eq!(sink.position(), 200_008);
        let plain = sink.finish().unwrap();
        let mut expected = b"hello".to_vec();
        expected.resize(200_005, 0);
        expected.extend_from_slice(b"end");
        let plain = plain.hash.unwrap();
        assert_eq!(plain.algorithm, HashAlgorithm::Sha256);
        assert_eq!(plain.bytes, <[u8; 32]>::from(Sha256::digest(&expected)));
        let stored = std::fs::read(&path).unwrap();
        assert!(is_age(&stored));
        let cipher = slot.lock().unwrap().clone().unwrap();
        assert_eq!(cipher.bytes, stored.len() as u64);
        // The inner sink's own (default) algorithm: BLAKE3.
        let cipher = cipher.hash.unwrap();
        assert_eq!(cipher.algorithm, HashAlgorithm::Blake3);
        assert_eq!(cipher.bytes, *blake3::hash(&stored).as_bytes());
        let mut back = Vec::new();
        identities
            .decrypt(&stored[..])
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, expected);
    }

    #[test]
    fn wrong_identity_and_bad_recipient_fail() {
        let (public, _) = keypair();
        let (_, other) = keypair();
        let recipients = Recipients::parse(&[public]).unwrap();
        let sealed = recipients.encrypt_bytes(b"{}").unwrap();
        assert!(other.decrypt(&sealed[..]).is_err());
        assert!(Recipients::parse(&["ssh-ed25519 AAAA"]).is_err());
        assert!(Recipients::parse::<&str>(&[]).is_err());
    }

    #[test]
    fn the_ciphertext_length_is_known_up_front() {
        let (a, _) = keypair();
        let (b, _) = keypair();
        for keys in [vec![a.clone()], vec![a, b]] {
            let recipients = Recipients::parse(&keys).unwrap();
            for plain in [0u64, 1, 65_535, 65_536, 65_537, 3 * 65_536, 200_000] {
                // Several files: the grease stanza changes the header length.
                for _ in 0..3 {
                    let dir = tempfile::tempdir().unwrap();
                    let path = dir.path().join("c.age");
                    let inner = Box::new(HashingSink::stream(Box::new(
                        std::fs::File::create(&path).unwrap(),
                    )));
                    let (sink, _) = EncryptSink::new(inner, &recipients, None).unwrap();
                    let expected = sink.ciphertext_len(plain);
                    let mut sink: Box<dyn ByteSink> = Box::new(sink);
                    sink.write_zeros(plain).unwrap();
                    sink.finish().unwrap();
                    let got = std::fs::metadata(&path).unwrap().len();
                    assert_eq!(got, expected, "{plain} bytes, {} recipient(s)", keys.len());
                }
            }
        }
    }

    #[test]
    fn a_missing_identity_file_keeps_the_io_error_as_the_source() {
        use std::error::Error;
        let path = Path::new("/nonexistent/pmem-identity.txt");
        let err = Identities::from_file(path).err().expect("no such file");
        let io = err
            .source()
            .and_then(|s| s.downcast_ref::<io::Error>())
            .expect("the io::Error is the source");
        assert_eq!(io.kind(), io::ErrorKind::NotFound);
        // The message is as it was: the cause's text quoted after what failed.
        assert_eq!(
            err.to_string(),
            format!("age: opening identity file {}: {io}", path.display())
        );
    }
}
