//! The compression worker pool: batches of frames go out to threads and
//! come back, in submission order, as framing-format chunks.

use super::frame::FrameEncoder;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

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

pub(super) fn encode_batch(
    encoder: &mut FrameEncoder,
    batch: Batch,
    mut chunks: Vec<u8>,
) -> Encoded {
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

/// What a worker is handed: the batch, a buffer for its chunks, and where
/// to send them back.
type CompressionRequest = (Batch, Vec<u8>, SyncSender<Encoded>);

/// Compression workers: jobs in, each with its own reply channel so that
/// results are taken back in submission order.
pub(super) struct Workers {
    jobs: Option<SyncSender<CompressionRequest>>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// `n` threads; none when threads cannot be had (then the writer
    /// compresses inline).
    pub(super) fn spawn(n: usize) -> Workers {
        let (jobs, rx) = mpsc::sync_channel::<CompressionRequest>(n);
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::new();
        for i in 0..n {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("pmem-snappy-{i}"))
                .spawn(move || {
                    let mut encoder = FrameEncoder::default();
                    loop {
                        // The lock is held only to take one job.
                        let job = match rx.lock() {
                            Ok(guard) => guard.recv(),
                            Err(_) => return,
                        };
                        let Ok((batch, chunks, reply)) = job else {
                            return;
                        };
                        // The writer may have failed and gone: drop the result.
                        let _ = reply.send(encode_batch(&mut encoder, batch, chunks));
                    }
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(_) => break,
            }
        }
        Workers {
            jobs: (!threads.is_empty()).then_some(jobs),
            threads,
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Workers {
    /// Hands `batch` to a worker, or compresses it here with `inline` when
    /// there are no workers (or they have gone).
    pub(super) fn compress(
        &self,
        inline: &mut FrameEncoder,
        batch: Batch,
        chunks: Vec<u8>,
    ) -> Pending {
        match &self.jobs {
            Some(jobs) => {
                let (reply, result) = mpsc::sync_channel(1);
                match jobs.send((batch, chunks, reply)) {
                    Ok(()) => Pending::Worker(result),
                    Err(mpsc::SendError((batch, chunks, _))) => {
                        Pending::Done(encode_batch(inline, batch, chunks))
                    }
                }
            }
            None => Pending::Done(encode_batch(inline, batch, chunks)),
        }
    }
}

/// A result on its way back.
pub(super) enum Pending {
    Worker(Receiver<Encoded>),
    Done(Encoded),
}

impl Pending {
    /// The encoded batch; an error when its worker thread failed.
    pub(super) fn wait(self) -> Result<Encoded, mpsc::RecvError> {
        match self {
            Pending::Worker(rx) => rx.recv(),
            Pending::Done(encoded) => Ok(encoded),
        }
    }
}
