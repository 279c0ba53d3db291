//! The zstd sink's compression workers: frames go out to threads and come
//! back in submission order, each compressed on its own (zstd frames are
//! independent), so the output does not depend on the number of threads.

use std::io;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Compresses one frame's input into `output` (emptied first): one
/// complete zstd frame.
pub(super) type Encode = fn(&[u8], &mut Vec<u8>) -> io::Result<()>;

/// pmem's encoder: ruzstd at its fastest level (the only compressing level
/// ruzstd 0.8 implements, about zstd's level 1), one fresh compressor per
/// frame, so that no state passes from frame to frame.
pub(super) fn ruzstd_fastest(input: &[u8], output: &mut Vec<u8>) -> io::Result<()> {
    output.clear();
    ruzstd::encoding::compress(
        input,
        &mut *output,
        ruzstd::encoding::CompressionLevel::Fastest,
    );
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

fn run(encode: Encode, id: FrameId, input: Vec<u8>, mut output: Vec<u8>) -> Compressed {
    let output = match encode(&input, &mut output) {
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
}

impl Workers {
    /// Up to `n` threads running `encode`; `queue` frames may wait for one.
    /// None when threads cannot be had (or `n` is 0): then frames are
    /// compressed on the caller's thread.
    pub(super) fn spawn(n: usize, queue: usize, encode: Encode) -> Workers {
        let (jobs, rx) = mpsc::sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::new();
        for i in 0..n {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("pmem-zstd-{i}"))
                .spawn(move || loop {
                    // The lock is held only to take one job.
                    let job = match rx.lock() {
                        Ok(guard) => guard.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else {
                        return; // the sink has gone
                    };
                    let done = run(encode, job.id, job.input, job.output);
                    // The sink may have failed and gone: drop the result.
                    let _ = job.reply.send(done);
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
        }
    }

    /// Worker threads running.
    pub(super) fn threads(&self) -> usize {
        self.threads.len()
    }

    /// Hands frame `id` to a worker, or compresses it here when there
    /// are none. An error when the workers have all gone (they died).
    pub(super) fn compress(
        &self,
        id: FrameId,
        input: Vec<u8>,
        output: Vec<u8>,
    ) -> io::Result<Pending> {
        let Some(jobs) = &self.jobs else {
            return Ok(Pending::Done(run(self.encode, id, input, output)));
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
