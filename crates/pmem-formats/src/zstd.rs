//! zstd over a whole image: a [`ByteSink`] that compresses what a format
//! writer produces into standard zstd frames (`zstd -d` restores the image).
//!
//! The encoder is `ruzstd`, pure Rust: pmem-formats must build for Windows
//! and macOS targets and as a static musl binary without a C toolchain for
//! each. The input is cut into independent frames of [`FRAME_INPUT`] bytes
//! (the zstd format allows concatenated frames; `zstd -d` writes their
//! contents one after the other), so memory stays bounded and frames can be
//! compressed on several threads.

use pmem_core::{ByteSink, SinkSummary};
use std::io;

/// The zstd frame magic number, as it appears on disk.
pub const MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// Uncompressed bytes per zstd frame.
pub const FRAME_INPUT: usize = 4 << 20;

/// Compresses everything written to it into `inner`.
pub struct ZstdSink {
    inner: Box<dyn ByteSink>,
    buffer: Vec<u8>,
    position: u64,
}

impl ZstdSink {
    pub fn new(inner: Box<dyn ByteSink>) -> ZstdSink {
        ZstdSink {
            inner,
            buffer: Vec::with_capacity(FRAME_INPUT),
            position: 0,
        }
    }

    fn flush_frame(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let frame = ruzstd::encoding::compress_to_vec(
            &self.buffer[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        self.buffer.clear();
        self.inner.write_all(&frame)
    }
}

impl ByteSink for ZstdSink {
    fn write_all(&mut self, mut buf: &[u8]) -> io::Result<()> {
        self.position += buf.len() as u64;
        while !buf.is_empty() {
            let n = (FRAME_INPUT - self.buffer.len()).min(buf.len());
            self.buffer.extend_from_slice(&buf[..n]);
            buf = &buf[n..];
            if self.buffer.len() == FRAME_INPUT {
                self.flush_frame()?;
            }
        }
        Ok(())
    }

    fn write_zeros(&mut self, mut len: u64) -> io::Result<()> {
        self.position += len;
        while len > 0 {
            let n = ((FRAME_INPUT - self.buffer.len()) as u64).min(len) as usize;
            self.buffer.resize(self.buffer.len() + n, 0);
            len -= n as u64;
            if self.buffer.len() == FRAME_INPUT {
                self.flush_frame()?;
            }
        }
        Ok(())
    }

    /// The offset in the uncompressed image: formats lay out by it.
    fn position(&self) -> u64 {
        self.position
    }

    /// Summary of the compressed bytes, as written.
    fn finish(mut self: Box<Self>) -> io::Result<SinkSummary> {
        self.flush_frame()?;
        self.inner.finish()
    }
}
