//! The image hash, computed on a thread of its own so that it never stalls
//! the copy. The written buffers themselves go to the hasher and come back
//! for reuse. Bytes a file sink holds back (they may still be patched: the
//! AVML writer's block headers) are read back from the file instead (from
//! the page cache, by offset) once released, patches and all. Hashing the
//! buffers is the faster way where it can be used: reading a file back is
//! one more pass over every byte (measured with `examples/hash_speed.rs`:
//! docs/benchmarks.md).

use super::digest::{HashAlgorithm, ImageDigest, ImageHash};
use super::file::read_at;
use super::BUFFER;
use std::fs::File;
use std::io;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

/// Work for the hasher.
enum ToHasher {
    /// File mode: hash the file's bytes up to this offset (reads past the
    /// end are a trailing hole: zeros).
    Upto(u64),
    /// Stream mode: these bytes come next; the buffer is sent back.
    Data(Vec<u8>),
    /// Stream mode: this many zeros come next.
    Zeros(u64),
}

/// The hash state, wherever it runs.
struct HashState {
    /// Its length is how far the file was hashed (file mode).
    digest: ImageDigest,
    /// File mode: a handle of its own to read the image back by offset.
    file: Option<File>,
    buf: Vec<u8>,
}

impl HashState {
    fn new(file: Option<File>, algorithm: HashAlgorithm) -> HashState {
        HashState {
            digest: ImageDigest::new(algorithm),
            file,
            buf: Vec::new(),
        }
    }

    /// Hashes what `msg` names; returns a stream buffer for reuse.
    fn take(&mut self, msg: ToHasher) -> io::Result<Option<Vec<u8>>> {
        match msg {
            ToHasher::Upto(end) => {
                let Some(file) = &self.file else {
                    return Err(io::Error::other("file hashing without a file"));
                };
                self.buf.resize(BUFFER, 0);
                while self.digest.len() < end {
                    let done = self.digest.len();
                    let want = (end - done).min(BUFFER as u64) as usize;
                    let n = read_at(file, &mut self.buf[..want], done)?;
                    if n == 0 {
                        // Past the end of the file: a hole not yet extended
                        // by set_len.
                        self.digest.update_zeros(end - done);
                    } else {
                        self.digest.update(&self.buf[..n]);
                    }
                }
                Ok(None)
            }
            ToHasher::Data(data) => {
                self.digest.update(&data);
                Ok(Some(data))
            }
            ToHasher::Zeros(len) => {
                self.digest.update_zeros(len);
                Ok(None)
            }
        }
    }
}

/// The hasher: a thread, or inline on the writer's thread when no thread
/// (or no second file handle) could be had.
enum Hasher {
    /// Not started: starts at the first work, so that the algorithm can
    /// still be chosen after the sink is made.
    Idle {
        file: Option<File>,
        algorithm: HashAlgorithm,
    },
    Thread {
        to: Option<SyncSender<ToHasher>>,
        /// Buffers coming back in stream mode.
        back: Receiver<Vec<u8>>,
        thread: Option<JoinHandle<io::Result<Option<ImageHash>>>>,
    },
    Inline {
        state: HashState,
        spare: Option<Vec<u8>>,
        error: Option<io::Error>,
    },
    /// No hash asked for (`--hash none`): reports none.
    Off,
}

impl Hasher {
    /// `file`: hash by reading this handle back (file mode); `None`: by
    /// the buffers sent.
    fn new(file: Option<File>, algorithm: HashAlgorithm) -> Hasher {
        let state = HashState::new(file, algorithm);
        // A few messages of lag: in file mode the bytes are still in the
        // page cache when hashed; in stream mode this bounds the buffers.
        let (to, from) = mpsc::sync_channel::<ToHasher>(1);
        let (give_back, back) = mpsc::channel();
        let shared = std::sync::Arc::new(std::sync::Mutex::new(Some(state)));
        let for_thread = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("pmem-hash".into())
            .spawn(move || {
                let taken = for_thread.lock().ok().and_then(|mut s| s.take());
                let Some(mut state) = taken else {
                    return Err(io::Error::other("hash state missing"));
                };
                for msg in from {
                    if let Some(buf) = state.take(msg)? {
                        // The sink may be gone already; nothing to do then.
                        let _ = give_back.send(buf);
                    }
                }
                Ok(state.digest.finish())
            });
        match spawned {
            Ok(thread) => Hasher::Thread {
                to: Some(to),
                back,
                thread: Some(thread),
            },
            Err(_) => {
                let state = shared.lock().ok().and_then(|mut s| s.take());
                Hasher::Inline {
                    state: state.unwrap_or_else(|| HashState::new(None, algorithm)),
                    spare: None,
                    error: None,
                }
            }
        }
    }

    /// Sends work; an error is reported at `join`.
    fn send(&mut self, msg: ToHasher) {
        self.start();
        match self {
            Hasher::Thread { to, .. } => {
                if let Some(sender) = to {
                    if sender.send(msg).is_err() {
                        *to = None;
                    }
                }
            }
            Hasher::Off | Hasher::Idle { .. } => {}
            Hasher::Inline {
                state,
                spare,
                error,
            } => {
                if error.is_none() {
                    match state.take(msg) {
                        Ok(buf) => *spare = buf.or(spare.take()),
                        Err(e) => *error = Some(e),
                    }
                }
            }
        }
    }

    /// A hashed stream buffer to reuse, if one is back.
    fn spare(&mut self) -> Option<Vec<u8>> {
        match self {
            Hasher::Thread { back, .. } => back.try_recv().ok(),
            Hasher::Inline { spare, .. } => spare.take(),
            Hasher::Off | Hasher::Idle { .. } => None,
        }
    }

    /// Starts an idle hasher.
    fn start(&mut self) {
        if let Hasher::Idle { file, algorithm } = self {
            let (file, algorithm) = (file.take(), *algorithm);
            *self = Hasher::new(file, algorithm);
        }
    }

    /// The hash of everything sent; `None` when off.
    fn join(&mut self) -> io::Result<Option<ImageHash>> {
        match self {
            Hasher::Idle { algorithm, .. } => Ok(ImageDigest::new(*algorithm).finish()),
            Hasher::Thread { to, thread, .. } => {
                *to = None;
                match thread.take().map(JoinHandle::join) {
                    Some(Ok(result)) => result,
                    _ => Err(io::Error::other("the hashing thread failed")),
                }
            }
            Hasher::Inline { state, error, .. } => match error.take() {
                Some(e) => Err(e),
                None => Ok(state.digest.clone().finish()),
            },
            Hasher::Off => Ok(None),
        }
    }
}

impl Drop for Hasher {
    fn drop(&mut self) {
        if let Hasher::Thread { to, thread, .. } = self {
            *to = None;
            if let Some(thread) = thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// How the bytes a sink writes reach the hasher, and which of them are
/// held back from it.
pub(crate) struct HashFeed {
    hasher: Hasher,
    /// The hasher can read the file back: held bytes, once released, are
    /// read back (it is told how far); others are given as buffers.
    by_reading: bool,
    /// File mode: bytes from here on are not hashed yet (may be patched).
    held: Option<u64>,
    /// File mode: bytes below this have been released to the hasher.
    released: u64,
}

impl HashFeed {
    /// Hashes with `algorithm` by reading `reader` back when there is
    /// one, else by the bytes sent.
    pub(crate) fn new(reader: Option<File>, algorithm: HashAlgorithm) -> HashFeed {
        HashFeed {
            by_reading: reader.is_some(),
            hasher: Hasher::Idle {
                file: reader,
                algorithm,
            },
            held: None,
            released: 0,
        }
    }

    /// Hashes nothing: the summary has no hash.
    pub(crate) fn off(&mut self) {
        self.hasher = Hasher::Off;
        self.by_reading = false;
    }

    /// Hashes with `algorithm` instead: only before any byte is written
    /// (returns false, changing nothing, after).
    pub(crate) fn set_algorithm(&mut self, algorithm: HashAlgorithm) -> bool {
        match &mut self.hasher {
            Hasher::Idle { algorithm: a, .. } => {
                *a = algorithm;
                true
            }
            _ => false,
        }
    }

    /// Whether written bytes go to the hasher as buffers (the sink copies
    /// them into one): always, unless nothing is hashed or a file holds
    /// bytes back (then they are read back once released). While no byte
    /// is held, every written byte has been released: the hasher is at the
    /// sink's write offset, so buffers may follow.
    pub(crate) fn takes_buffers(&self) -> bool {
        !matches!(self.hasher, Hasher::Off) && (!self.by_reading || self.held.is_none())
    }

    /// These bytes were written at the hasher's offset ([`takes_buffers`](Self::takes_buffers)).
    pub(crate) fn data(&mut self, bytes: Vec<u8>) {
        if self.by_reading {
            debug_assert!(self.held.is_none(), "buffers while bytes are held");
            self.released += bytes.len() as u64;
        }
        self.hasher.send(ToHasher::Data(bytes));
    }

    /// A buffer to fill next: one the hasher is done with, else a new one.
    pub(crate) fn spare_buffer(&mut self) -> Vec<u8> {
        self.hasher
            .spare()
            .unwrap_or_else(|| Vec::with_capacity(BUFFER))
    }

    /// `len` zeros were written or left as a hole (held ones are read back
    /// as zeros).
    pub(crate) fn zeros(&mut self, len: u64) {
        if self.takes_buffers() {
            if self.by_reading {
                self.released += len;
            }
            self.hasher.send(ToHasher::Zeros(len));
        }
    }

    /// File mode: lets the hasher read what is written (below `written`)
    /// and not held.
    pub(crate) fn release(&mut self, written: u64) {
        if self.by_reading {
            let upto = self.held.unwrap_or(u64::MAX).min(written);
            if upto > self.released {
                self.released = upto;
                self.hasher.send(ToHasher::Upto(upto));
            }
        }
    }

    /// Holds bytes from `offset` on back from the hasher (`None`: releases
    /// them), `written` bytes being out.
    pub(crate) fn hold(&mut self, offset: Option<u64>, written: u64) {
        if let Some(at) = offset {
            debug_assert!(at >= self.released, "hold below what was hashed");
        }
        self.held = offset;
        self.release(written);
    }

    pub(crate) fn holding(&self) -> bool {
        self.held.is_some()
    }

    /// Bytes below this may no longer change: the hasher may have read them.
    pub(crate) fn released(&self) -> u64 {
        self.released
    }

    /// Waits for the hash of everything released or sent.
    pub(crate) fn finish(&mut self) -> io::Result<Option<ImageHash>> {
        self.hasher.join()
    }
}
