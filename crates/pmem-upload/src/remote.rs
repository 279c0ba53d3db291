//! [`RemoteSink`]: the [`ByteSink`] in front of every network destination.
//! It hashes and counts the image bytes exactly as a local file sink does
//! (so the manifest's hash is the same), writes holes as zeros (a network
//! object has no holes), and commits the destination in `finish` — the
//! only point at which a remote object may become visible as complete.

use crate::UploadError;
use pmem_core::{ByteSink, SinkSummary};
use sha2::{Digest, Sha256};
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

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

pub struct RemoteSink {
    upload: Box<dyn Upload>,
    hasher: Sha256,
    position: u64,
}

impl RemoteSink {
    pub fn new(upload: Box<dyn Upload>) -> RemoteSink {
        RemoteSink {
            upload,
            hasher: Sha256::new(),
            position: 0,
        }
    }
}

impl ByteSink for RemoteSink {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.upload.write(buf)?;
        self.hasher.update(buf);
        self.position += buf.len() as u64;
        Ok(())
    }

    fn write_zeros(&mut self, mut len: u64) -> io::Result<()> {
        while len > 0 {
            let n = len.min(ZEROS.len() as u64) as usize;
            self.write_all(&ZEROS[..n])?;
            len -= n as u64;
        }
        Ok(())
    }

    fn position(&self) -> u64 {
        self.position
    }

    fn finish(self: Box<Self>) -> io::Result<SinkSummary> {
        let summary = SinkSummary {
            bytes: self.position,
            sha256: self.hasher.finalize().into(),
        };
        self.upload.finish(&summary)?;
        Ok(summary)
    }
}
