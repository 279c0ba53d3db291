//! The AVML writer's compression job: a batch of frames, encoded on the
//! [`Pool`]'s threads into framing-format chunks and taken back in
//! submission order.

use super::frame::FrameEncoder;
use crate::workers::Pool;

/// One frame of a batch: where it is and whether it is all zero.
#[derive(Debug, Clone, Copy)]
pub(super) struct FrameSpec {
    pub(super) addr: u64,
    pub(super) len: u32,
    pub(super) zero: bool,
}

/// A compression job: consecutive frames' raw bytes (zero frames take no
/// room) and where they are.
pub(super) struct Batch {
    pub(super) raw: Vec<u8>,
    pub(super) frames: Vec<FrameSpec>,
}

/// A finished job: the frames' chunks, concatenated (nothing for zero
/// frames), their lengths, and the raw buffer for reuse.
pub(super) struct Encoded {
    pub(super) raw: Vec<u8>,
    pub(super) frames: Vec<FrameSpec>,
    pub(super) chunks: Vec<u8>,
    pub(super) lens: Vec<u32>,
}

/// Encodes each frame of `batch` that is not all zero into `chunks`
/// (cleared first), with the thread's `encoder`.
fn encode_batch(encoder: &mut FrameEncoder, batch: Batch, mut chunks: Vec<u8>) -> Encoded {
    chunks.clear();
    let mut lens = Vec::with_capacity(batch.frames.len());
    let mut at = 0usize;
    for f in &batch.frames {
        if f.zero {
            lens.push(0);
            continue;
        }
        let raw = &batch.raw[at..at + f.len as usize];
        lens.push(encoder.encode(raw, &mut chunks) as u32);
        at += f.len as usize;
    }
    Encoded {
        raw: batch.raw,
        frames: batch.frames,
        chunks,
        lens,
    }
}

/// A batch with a buffer for its chunks: the job a worker is handed.
pub(super) type Job = (Batch, Vec<u8>);

/// The writer's compression threads.
pub(super) type Workers = Pool<FrameEncoder, Job, Encoded>;

/// `n` threads encoding batches; as many batches may wait for one.
pub(super) fn spawn(n: usize) -> Workers {
    Pool::spawn(
        "pmem-snappy",
        n,
        n,
        FrameEncoder::default,
        |encoder, (batch, chunks)| encode_batch(encoder, batch, chunks),
    )
}
