//! The zstd sink's compression of one frame, done on the [`Pool`]'s
//! threads: each frame is compressed on its own (zstd frames are
//! independent) and taken back in submission order, so the output does not
//! depend on the number of threads.

use crate::workers::Pool;
use ruzstd::encoding::{CompressionLevel, FrameCompressor, MatchGeneratorDriver};
use std::io::{self, Cursor};

/// ruzstd's frame compressor, reading a frame's input buffer and writing
/// into its output buffer (both handed back after each frame).
pub(super) type Compressor = FrameCompressor<Cursor<Vec<u8>>, Vec<u8>, MatchGeneratorDriver>;

/// Compresses `input` into `output` (replacing what it held) with the
/// thread's `compressor`: one complete zstd frame. Both buffers are left in
/// place for reuse, also on error.
pub(super) type Encode = fn(&mut Compressor, &mut Vec<u8>, &mut Vec<u8>) -> io::Result<()>;

/// A compressor at ruzstd's fastest level: the only compressing level
/// ruzstd 0.8 implements, about zstd's level 1.
pub(super) fn compressor() -> Compressor {
    FrameCompressor::new(CompressionLevel::Fastest)
}

/// pmem's encoder, with the compressor [`compress`] chooses.
pub(super) fn ruzstd_fastest(
    compressor: &mut Compressor,
    input: &mut Vec<u8>,
    output: &mut Vec<u8>,
) -> io::Result<()> {
    let mut drain = std::mem::take(output);
    drain.clear();
    compressor.set_source(Cursor::new(std::mem::take(input)));
    compressor.set_drain(drain);
    compressor.compress();
    *input = compressor
        .take_source()
        .map(Cursor::into_inner)
        .unwrap_or_default();
    *output = compressor.take_drain().unwrap_or_default();
    Ok(())
}

/// Which frame: its number and the image offset of its first byte (for
/// errors).
#[derive(Debug, Clone, Copy)]
pub(super) struct FrameId {
    pub(super) index: u64,
    pub(super) at: u64,
}

/// One frame to compress, and a buffer for its output.
pub(super) struct Job {
    pub(super) id: FrameId,
    pub(super) input: Vec<u8>,
    pub(super) output: Vec<u8>,
}

/// A compressed frame, and its input buffer for reuse.
pub(super) struct Compressed {
    pub(super) input: Vec<u8>,
    pub(super) output: io::Result<Vec<u8>>,
}

/// Compresses `job`'s frame with `encode`. Full frames (`full` bytes) use the
/// thread's `compressor`, reused for its buffers: ruzstd resets its matcher,
/// tables and checksum at each frame's start, and a frame is then the same
/// bytes as from a fresh compressor (`ruzstd::encoding::compress_to_vec`,
/// what pmem used before), whichever frames the thread compressed before.
/// A shorter frame (the image's last) gets a fresh compressor: after full
/// frames ruzstd 0.8 cuts its blocks differently (valid, but the output
/// would depend on which thread had it). The tests compare every frame with
/// a fresh compressor's. Reusing trims the kernel's share of a worker's
/// time (page faults on fresh, zeroed buffers) from 19% to 15% (perf, one
/// CPU, musl build).
fn compress(encode: Encode, compressor: &mut Compressor, full: usize, job: Job) -> Compressed {
    let Job {
        id,
        mut input,
        mut output,
    } = job;
    let mut fresh;
    let compressor = if input.len() == full {
        compressor
    } else {
        fresh = self::compressor();
        &mut fresh
    };
    let output = match encode(compressor, &mut input, &mut output) {
        Ok(()) => Ok(output),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!(
                "zstd frame {} (image offset {:#x}): compression failed: {e}",
                id.index, id.at
            ),
        )),
    };
    Compressed { input, output }
}

/// The sink's compression threads.
pub(super) type Workers = Pool<Compressor, Job, Compressed>;

/// Up to `n` threads compressing frames with `encode`; `queue` frames may
/// wait for one. Frames of `full` bytes reuse their thread's compressor.
pub(super) fn spawn(n: usize, queue: usize, full: usize, encode: Encode) -> Workers {
    Pool::spawn("pmem-zstd", n, queue, compressor, move |compressor, job| {
        compress(encode, compressor, full, job)
    })
}

/// The error for frame `id` when its compression thread died.
pub(super) fn thread_failed(id: FrameId) -> io::Error {
    io::Error::other(format!(
        "zstd frame {} (image offset {:#x}): the compression thread failed",
        id.index, id.at
    ))
}
