//! The hash every sink reports: SHA-256 and length of the image bytes, holes
//! counted as zeros. Shared by the file and stream sink's hasher and by the
//! sinks that hash on the writer's thread (upload, encryption).

use super::{zeros_through, SinkSummary};
use sha2::{Digest, Sha256};

/// SHA-256 and count of the bytes given so far.
#[derive(Clone, Default)]
pub struct ImageDigest {
    hasher: Sha256,
    bytes: u64,
}

impl ImageDigest {
    /// A digest of no bytes yet.
    pub fn new() -> ImageDigest {
        ImageDigest::default()
    }

    /// The next bytes of the image.
    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.bytes += bytes.len() as u64;
    }

    /// `len` zero bytes come next (a hole), hashed without allocating them.
    pub fn update_zeros(&mut self, len: u64) {
        let _ = zeros_through(len, |zeros| {
            self.update(zeros);
            Ok(())
        });
    }

    /// Bytes given so far: the image offset.
    pub fn len(&self) -> u64 {
        self.bytes
    }

    /// Whether no byte has been given yet.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// The SHA-256 of everything given, ending the digest.
    pub fn sha256(self) -> [u8; 32] {
        self.hasher.finalize().into()
    }

    /// The length and hash of everything given.
    pub fn summary(self) -> SinkSummary {
        SinkSummary {
            bytes: self.bytes,
            sha256: self.sha256(),
        }
    }
}

/// Hex encoding of a digest, as the manifest writes it.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_hash_as_written_zeros() {
        let mut holes = ImageDigest::new();
        holes.update(b"ab");
        holes.update_zeros(200_000);
        let mut written = ImageDigest::new();
        written.update(b"ab");
        written.update(&vec![0; 200_000]);
        assert_eq!(holes.len(), 200_002);
        assert_eq!(holes.summary(), written.summary());
        assert_eq!(hex(&[0x0f, 0xa0]), "0fa0");
    }
}
