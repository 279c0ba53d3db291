//! [`RemoteSink`]: the [`ByteSink`] in front of every network destination.
//! It hashes and counts the image bytes exactly as a local file sink does
//! (so the manifest's hash is the same), writes holes as zeros (a network
//! object has no holes), and commits the destination in `finish` — the
//! only point at which a remote object may become visible as complete.

use crate::UploadError;
use pmem_core::sink::ImageDigest;
use pmem_core::HashAlgorithm;
use pmem_core::{ByteSink, SinkSummary};
use std::io;

/// A destination that receives the image bytes in order.
pub trait Upload: Send {
    /// Takes the next bytes of the image. May block (bounded memory).
    fn write(&mut self, buf: &[u8]) -> Result<(), UploadError>;

    /// Commits the object. `summary` is the length and hash of everything
    /// written; a destination that cannot commit leaves no complete-looking
    /// object behind.
    fn finish(self: Box<Self>, summary: &SinkSummary) -> Result<(), UploadError>;
}

/// The [`ByteSink`] over an [`Upload`]: hashes and counts what it passes
/// on, and commits the upload in [`ByteSink::finish`].
pub struct RemoteSink {
    upload: Box<dyn Upload>,
    digest: ImageDigest,
}

impl RemoteSink {
    /// A sink sending the image to `upload`, hashing it with `hash`
    /// (`None`: only counting it).
    pub fn new(upload: Box<dyn Upload>, hash: Option<HashAlgorithm>) -> RemoteSink {
        RemoteSink {
            upload,
            digest: ImageDigest::optional(hash),
        }
    }
}

impl ByteSink for RemoteSink {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.upload.write(buf)?;
        self.digest.update(buf);
        Ok(())
    }

    // A network object has no holes: the trait's write_zeros sends zeros.

    fn position(&self) -> u64 {
        self.digest.len()
    }

    fn finish(self: Box<Self>) -> io::Result<SinkSummary> {
        let summary = self.digest.summary();
        self.upload.finish(&summary)?;
        Ok(summary)
    }
}
