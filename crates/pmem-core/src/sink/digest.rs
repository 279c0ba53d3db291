//! The hash every sink reports: a digest (BLAKE3 by default, or SHA-256)
//! and length of the image bytes, holes counted as zeros. Shared by the
//! file and stream sink's hasher, by the sinks that hash on the writer's
//! thread (upload, encryption) and by the memory hash of the pipeline.

use super::{zeros_through, SinkSummary};
use sha2::{Digest as _, Sha256};
use std::fmt;

/// Which hash pmem computes. Both give 32 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HashAlgorithm {
    /// BLAKE3 (the default): several times faster than SHA-256 in software.
    #[default]
    Blake3,
    /// SHA-256: what pmem used before BLAKE3, and what older tools expect.
    Sha256,
}

impl HashAlgorithm {
    /// Every algorithm, in the order the command line lists them.
    pub const ALL: [HashAlgorithm; 2] = [HashAlgorithm::Blake3, HashAlgorithm::Sha256];

    /// The name the command line, the manifest and messages use.
    pub fn name(self) -> &'static str {
        match self {
            HashAlgorithm::Blake3 => "blake3",
            HashAlgorithm::Sha256 => "sha256",
        }
    }

    /// The algorithm called `name` (as [`name`](Self::name) writes it).
    pub fn from_name(name: &str) -> Option<HashAlgorithm> {
        HashAlgorithm::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The hash of `data` at once.
    pub fn digest(self, data: &[u8]) -> ImageHash {
        let bytes = match self {
            HashAlgorithm::Sha256 => Sha256::digest(data).into(),
            HashAlgorithm::Blake3 => *blake3::hash(data).as_bytes(),
        };
        ImageHash {
            algorithm: self,
            bytes,
        }
    }
}

impl fmt::Display for HashAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A finished hash and the algorithm that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHash {
    /// The algorithm that made it.
    pub algorithm: HashAlgorithm,
    /// The hash itself (both algorithms give 32 bytes).
    pub bytes: [u8; 32],
}

impl ImageHash {
    /// Lower-case hex of the hash bytes, as the manifest writes it.
    pub fn hex(&self) -> String {
        hex(&self.bytes)
    }
}

/// The running state of either algorithm.
#[derive(Clone)]
enum State {
    Sha256(Sha256),
    // Boxed: BLAKE3's state is about 2 KiB.
    Blake3(Box<blake3::Hasher>),
    /// No hash (`--hash none`): bytes are only counted.
    Count,
}

/// A digest of the bytes given so far (or none), and their count.
#[derive(Clone)]
pub struct ImageDigest {
    state: State,
    bytes: u64,
}

impl ImageDigest {
    /// A digest of no bytes yet.
    pub fn new(algorithm: HashAlgorithm) -> ImageDigest {
        ImageDigest::optional(Some(algorithm))
    }

    /// A digest with `algorithm`, or (`None`) a counter of bytes that
    /// hashes nothing.
    pub fn optional(algorithm: Option<HashAlgorithm>) -> ImageDigest {
        let state = match algorithm {
            Some(HashAlgorithm::Sha256) => State::Sha256(Sha256::new()),
            Some(HashAlgorithm::Blake3) => State::Blake3(Box::default()),
            None => State::Count,
        };
        ImageDigest { state, bytes: 0 }
    }

    /// Which algorithm this digest computes (`None`: it only counts).
    pub fn algorithm(&self) -> Option<HashAlgorithm> {
        match self.state {
            State::Sha256(_) => Some(HashAlgorithm::Sha256),
            State::Blake3(_) => Some(HashAlgorithm::Blake3),
            State::Count => None,
        }
    }

    /// The next bytes of the image.
    pub fn update(&mut self, bytes: &[u8]) {
        match &mut self.state {
            State::Sha256(h) => h.update(bytes),
            State::Blake3(h) => {
                h.update(bytes);
            }
            State::Count => {}
        }
        self.bytes += bytes.len() as u64;
    }

    /// `len` zero bytes come next (a hole), hashed without allocating them.
    pub fn update_zeros(&mut self, len: u64) {
        if let State::Count = self.state {
            self.bytes += len;
            return;
        }
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

    /// The hash of everything given, ending the digest; `None` for a
    /// digest that only counts.
    pub fn finish(self) -> Option<ImageHash> {
        let (algorithm, bytes) = match self.state {
            State::Sha256(h) => (HashAlgorithm::Sha256, h.finalize().into()),
            State::Blake3(h) => (HashAlgorithm::Blake3, *h.finalize().as_bytes()),
            State::Count => return None,
        };
        Some(ImageHash { algorithm, bytes })
    }

    /// The length and hash of everything given.
    pub fn summary(self) -> SinkSummary {
        SinkSummary {
            bytes: self.bytes,
            hash: self.finish(),
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
        for algorithm in HashAlgorithm::ALL {
            let mut holes = ImageDigest::new(algorithm);
            holes.update(b"ab");
            holes.update_zeros(200_000);
            let mut written = ImageDigest::new(algorithm);
            written.update(b"ab");
            written.update(&vec![0; 200_000]);
            assert_eq!(holes.len(), 200_002);
            assert_eq!(holes.summary(), written.summary());
        }
        assert_eq!(hex(&[0x0f, 0xa0]), "0fa0");
    }

    /// The published test vectors of each algorithm for "abc".
    #[test]
    fn each_algorithm_gives_its_published_hash() {
        assert_eq!(
            HashAlgorithm::Sha256.digest(b"abc").hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            HashAlgorithm::Blake3.digest(b"abc").hex(),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
        for algorithm in HashAlgorithm::ALL {
            let mut split = ImageDigest::new(algorithm);
            split.update(b"a");
            split.update(b"bc");
            assert_eq!(split.finish(), Some(algorithm.digest(b"abc")));
        }
        let mut counted = ImageDigest::optional(None);
        counted.update(b"abc");
        counted.update_zeros(5);
        assert_eq!(
            counted.summary(),
            SinkSummary {
                bytes: 8,
                hash: None
            }
        );
        for algorithm in HashAlgorithm::ALL {
            assert_eq!(HashAlgorithm::from_name(algorithm.name()), Some(algorithm));
        }
        assert_eq!(HashAlgorithm::from_name("md5"), None);
    }
}
