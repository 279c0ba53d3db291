//! Byte sinks: where a format writer's bytes go. Every sink hashes what it
//! writes (BLAKE3 or SHA-256 of the image as written, see [`HashAlgorithm`])
//! and counts the bytes.
//!
//! [`HashingSink`] writes a file or a stream. It is made of parts, one file
//! each: the image file written with holes (`file`, with its [`DiskLimit`]
//! in `disk_limit`) or a stream (`stream`), the hasher on a thread of its
//! own (`hasher`) and the digest itself (`digest`, which the sinks that
//! hash on the caller's thread use too). Memory: two or three buffers of
//! [`BUFFER`] bytes.

mod digest;
mod disk_limit;
mod file;
mod hasher;
mod hashing;
mod stream;

pub use digest::{hex, HashAlgorithm, ImageDigest, ImageHash};
pub use disk_limit::DiskLimit;
pub use file::create_image_file;
pub use hashing::HashingSink;
pub use stream::stdout_stream;

use std::io;

/// What a finished sink reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkSummary {
    /// Image length in bytes.
    pub bytes: u64,
    /// Hash of all image bytes, holes counted as zeros; `None` when the
    /// sink hashed nothing (`--hash none`).
    pub hash: Option<ImageHash>,
}

/// The end of the pipeline: image bytes in order.
pub trait ByteSink: Send {
    /// Appends all of `buf` to the image, or fails.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;

    /// Appends `len` zero bytes. By default they are written like any
    /// other bytes; a sink backed by a regular file leaves a hole (sparse
    /// file) instead.
    fn write_zeros(&mut self, len: u64) -> io::Result<()> {
        zeros_through(len, |zeros| self.write_all(zeros))
    }

    /// Bytes written so far (the current image offset).
    fn position(&self) -> u64;

    /// The sink's patching side: a readable regular file can rewrite bytes
    /// it was given, a stream cannot (`None`).
    fn patcher(&mut self) -> Option<&mut dyn Patch> {
        None
    }

    /// Flushes, makes the data durable (fsync for files) and reports the
    /// hash. The only commit point of the image.
    fn finish(self: Box<Self>) -> io::Result<SinkSummary>;
}

/// Rewriting bytes already given to a sink (the AVML writer's block
/// headers, whose lengths are known only once the block is complete).
pub trait Patch {
    /// Keeps bytes from `offset` on out of the hash until released with
    /// `None`, so that they may still be patched. `offset` must not be
    /// below an earlier hold's.
    fn hold(&mut self, offset: Option<u64>);

    /// Overwrites bytes written earlier at `offset` (inside the held
    /// region).
    fn patch(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()>;
}

/// Bytes buffered before a write system call, and per hasher read.
pub const BUFFER: usize = 1 << 20;

/// 64 KiB of zeros: written or hashed repeatedly for holes.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// Hands `len` zero bytes to `write`, [`ZEROS`] at a time, without
/// allocating them.
fn zeros_through(mut len: u64, mut write: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
    while len > 0 {
        let n = len.min(ZEROS.len() as u64) as usize;
        write(&ZEROS[..n])?;
        len -= n as u64;
    }
    Ok(())
}

/// Appends `data` to the buffer that `buffer` finds in `owner`, and calls
/// `flush` (which must empty it) each time the buffer holds `capacity`
/// bytes: the write loop of every writer that sends fixed-size pieces (the
/// file sink's buffer, zstd frames, TLS frames).
pub fn fill_buffer<S: ?Sized, E>(
    owner: &mut S,
    mut data: &[u8],
    capacity: usize,
    buffer: impl Fn(&mut S) -> &mut Vec<u8>,
    mut flush: impl FnMut(&mut S) -> Result<(), E>,
) -> Result<(), E> {
    while !data.is_empty() {
        let buf = buffer(owner);
        let n = (capacity - buf.len()).min(data.len());
        buf.extend_from_slice(&data[..n]);
        data = &data[n..];
        if buf.len() == capacity {
            flush(owner)?;
        }
    }
    Ok(())
}
