//! The zstd sink's compression workers: frames go out to threads and come
//! back in submission order, each compressed on its own (zstd frames are
//! independent), so the output does not depend on the number of threads.

use ruzstd::encoding::{CompressionLevel, FrameCompressor, MatchGeneratorDriver};
use std::io::{self, Cursor};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

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

/// pmem's encoder, with the compressor [`run`] chooses.
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

/// One frame to compress, a buffer for its output, and where to send both
/// back.
struct Job {
    id: FrameId,
    input: Vec<u8>,
    output: Vec<u8>,
    reply: SyncSender<Compressed>,
}

/// A compressed frame, and its input buffer for reuse.
pub(super) struct Compressed {
    pub(super) input: Vec<u8>,
    pub(super) output: io::Result<Vec<u8>>,
}

/// Compresses frame `id` with `encode`. Full frames (`full` bytes) use the
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
fn run(
    encode: Encode,
    compressor: &mut Compressor,
    full: usize,
    id: FrameId,
    mut input: Vec<u8>,
    mut output: Vec<u8>,
) -> Compressed {
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

/// The threads, and the queue they take frames from.
pub(super) struct Workers {
    jobs: Option<SyncSender<Job>>,
    threads: Vec<JoinHandle<()>>,
    encode: Encode,
    /// Bytes of a full frame.
    full: usize,
    /// Without threads: the caller's compressor, made at the first frame.
    inline: Option<Box<Compressor>>,
}

impl Workers {
    /// Up to `n` threads running `encode`; `queue` frames may wait for one.
    /// None when threads cannot be had (or `n` is 0): then frames are
    /// compressed on the caller's thread.
    /// Frames of `full` bytes reuse their thread's compressor.
    pub(super) fn spawn(n: usize, queue: usize, full: usize, encode: Encode) -> Workers {
        let (jobs, rx) = mpsc::sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::new();
        for i in 0..n {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("pmem-zstd-{i}"))
                .spawn(move || {
                    let mut compressor = compressor();
                    loop {
                        // The lock is held only to take one job.
                        let job = match rx.lock() {
                            Ok(guard) => guard.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else {
                            return; // the sink has gone
                        };
                        let done =
                            run(encode, &mut compressor, full, job.id, job.input, job.output);
                        // The sink may have failed and gone: drop the result.
                        let _ = job.reply.send(done);
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
            encode,
            full,
            inline: None,
        }
    }

    /// Worker threads running.
    pub(super) fn threads(&self) -> usize {
        self.threads.len()
    }

    /// Hands frame `id` to a worker, or compresses it here when there
    /// are none. An error when the workers have all gone (they died).
    pub(super) fn compress(
        &mut self,
        id: FrameId,
        input: Vec<u8>,
        output: Vec<u8>,
    ) -> io::Result<Pending> {
        let Some(jobs) = &self.jobs else {
            let compressor = self.inline.get_or_insert_with(|| Box::new(compressor()));
            return Ok(Pending::Done(run(
                self.encode,
                compressor,
                self.full,
                id,
                input,
                output,
            )));
        };
        let (reply, result) = mpsc::sync_channel(1);
        let job = Job {
            id,
            input,
            output,
            reply,
        };
        match jobs.send(job) {
            Ok(()) => Ok(Pending::Worker { id, result }),
            Err(_) => Err(thread_failed(id)),
        }
    }
}

fn thread_failed(id: FrameId) -> io::Error {
    io::Error::other(format!(
        "zstd frame {} (image offset {:#x}): the compression thread failed",
        id.index, id.at
    ))
}

impl Drop for Workers {
    fn drop(&mut self) {
        // Workers finish the frame at hand, find the queue closed and end.
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A frame on its way back.
pub(super) enum Pending {
    Worker {
        id: FrameId,
        result: Receiver<Compressed>,
    },
    Done(Compressed),
}

impl Pending {
    /// The compressed frame; an error when its thread died before sending
    /// it (its reply channel closed: never a hang).
    pub(super) fn wait(self) -> io::Result<Compressed> {
        match self {
            Pending::Worker { id, result } => result.recv().map_err(|_| thread_failed(id)),
            Pending::Done(done) => Ok(done),
        }
    }
}
