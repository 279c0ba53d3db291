//! Byte sinks: where a format writer's bytes go. Every sink hashes what it
//! writes (SHA-256 of the image as written) and counts the bytes.
//!
//! Hashing runs on its own thread so that it never stalls the copy: for a
//! regular file the hasher re-reads what was written (from the page cache,
//! by offset), which also lets a writer patch bytes it wrote earlier (an AVML
//! block header) as long as it holds them back from the hasher; for a stream
//! the written buffers themselves are handed to the hasher and come back for
//! reuse. Memory: two or three buffers of [`BUFFER`] bytes.

use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

/// What a finished sink reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkSummary {
    /// Image length in bytes.
    pub bytes: u64,
    /// SHA-256 of all image bytes, holes counted as zeros.
    pub sha256: [u8; 32],
}

/// The end of the pipeline: image bytes in order.
pub trait ByteSink: Send {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;

    /// Appends `len` zero bytes. A sink backed by a regular file leaves a
    /// hole (sparse file); a stream writes the zeros.
    fn write_zeros(&mut self, len: u64) -> io::Result<()>;

    /// Bytes written so far (the current image offset).
    fn position(&self) -> u64;

    /// Whether [`patch`](Self::patch) works: a regular file can, a stream
    /// cannot.
    fn can_patch(&self) -> bool {
        false
    }

    /// Keeps bytes from `offset` on out of the hash until released with
    /// `None`, so that they may still be patched. `offset` must not be
    /// below an earlier hold's.
    fn hold(&mut self, _offset: Option<u64>) {}

    /// Overwrites bytes written earlier at `offset` (inside the held
    /// region); only when [`can_patch`](Self::can_patch).
    fn patch(&mut self, _offset: u64, _bytes: &[u8]) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this output cannot be rewritten",
        ))
    }

    /// Flushes, makes the data durable (fsync for files) and reports the
    /// hash. The only commit point of the image.
    fn finish(self: Box<Self>) -> io::Result<SinkSummary>;
}

/// 64 KiB of zeros, hashed repeatedly for holes.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// Feeds `len` zero bytes to `hasher` without allocating them.
pub(crate) fn hash_zeros(hasher: &mut Sha256, mut len: u64) {
    while len > 0 {
        let n = len.min(ZEROS.len() as u64) as usize;
        hasher.update(&ZEROS[..n]);
        len -= n as u64;
    }
}

/// Bytes buffered before a write system call, and per hasher read.
pub const BUFFER: usize = 1 << 20;

/// Writes at least this large skip the sink's buffer when nothing needs a
/// copy of their bytes.
const DIRECT: usize = 64 * 1024;

/// A limit on the disk space an image may take (`--max-disk-usage`),
/// checked before the first byte and every [`DiskLimit::CHECK_EVERY`]
/// bytes while writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskLimit {
    /// The image may be at most this many bytes.
    Bytes(u64),
    /// The output's filesystem may be at most this full (percent of its
    /// size, as `df` counts it).
    Percent(u8),
}

impl DiskLimit {
    pub const CHECK_EVERY: u64 = 16 << 20;

    /// Errors when writing `position` bytes in total to `file` breaks the
    /// limit.
    fn check(&self, file: &File, position: u64) -> io::Result<()> {
        let refuse = |what: String| {
            Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!("--max-disk-usage: {what}; stopped (what was written is kept)"),
            ))
        };
        match *self {
            DiskLimit::Bytes(max) if position > max => {
                refuse(format!("the image would grow past {} MiB", max >> 20))
            }
            DiskLimit::Bytes(_) => Ok(()),
            DiskLimit::Percent(max) => {
                let (total, available) = fs_space(file)?;
                let used = total.saturating_sub(available);
                if total > 0 && used.saturating_mul(100) > total.saturating_mul(u64::from(max)) {
                    refuse(format!(
                        "the output's filesystem is {}% full, above {max}%",
                        used * 100 / total
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// (size, bytes available to us) of the filesystem holding `file`.
#[cfg(unix)]
fn fs_space(file: &File) -> io::Result<(u64, u64)> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: fstatvfs only writes the struct we pass; the fd is open.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let unit = st.f_frsize as u64;
    Ok((st.f_blocks as u64 * unit, st.f_bavail as u64 * unit))
}

#[cfg(not(unix))]
fn fs_space(_file: &File) -> io::Result<(u64, u64)> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "--max-disk-usage N% is not supported on this system; give MiB",
    ))
}

/// Standard output for image bytes: a pipe widened to one buffer, written
/// through a descriptor of its own. Standard output's own handle is
/// line-buffered: image bytes full of newlines would go out in odd pieces.
pub fn stdout_stream() -> Box<dyn Write + Send> {
    #[cfg(unix)]
    {
        widen_pipe(1);
        use std::os::fd::AsFd;
        if let Ok(fd) = io::stdout().as_fd().try_clone_to_owned() {
            return Box::new(File::from(fd));
        }
    }
    Box::new(io::stdout())
}

/// Makes a pipe hold one whole buffer (1 MiB, the usual unprivileged
/// maximum) instead of 64 KiB: the reader then wakes once per buffer rather
/// than sixteen times, which matters where context switches are dear (one
/// CPU, emulated machines). Not a pipe, or not allowed: left as it is.
#[cfg(unix)]
fn widen_pipe(fd: i32) {
    #[cfg(target_os = "linux")]
    // SAFETY: F_SETPIPE_SZ takes an int and fails harmlessly on non-pipes.
    unsafe {
        libc::fcntl(fd, libc::F_SETPIPE_SZ, BUFFER as libc::c_int);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = fd;
}

#[cfg(unix)]
fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(windows)]
fn write_at(file: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        let n = file.seek_write(buf, offset)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
        offset += n as u64;
    }
    Ok(())
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, offset)
}

#[cfg(windows)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, offset)
}

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
    hasher: Sha256,
    /// File mode: a handle of its own to read the image back by offset.
    file: Option<File>,
    done: u64,
    buf: Vec<u8>,
}

impl HashState {
    /// Hashes what `msg` names; returns a stream buffer for reuse.
    fn take(&mut self, msg: ToHasher) -> io::Result<Option<Vec<u8>>> {
        match msg {
            ToHasher::Upto(end) => {
                let Some(file) = &self.file else {
                    return Err(io::Error::other("file hashing without a file"));
                };
                self.buf.resize(BUFFER, 0);
                while self.done < end {
                    let want = (end - self.done).min(BUFFER as u64) as usize;
                    let n = read_at(file, &mut self.buf[..want], self.done)?;
                    if n == 0 {
                        // Past the end of the file: a hole not yet extended
                        // by set_len.
                        hash_zeros(&mut self.hasher, end - self.done);
                        self.done = end;
                    } else {
                        self.hasher.update(&self.buf[..n]);
                        self.done += n as u64;
                    }
                }
                Ok(None)
            }
            ToHasher::Data(data) => {
                self.hasher.update(&data);
                Ok(Some(data))
            }
            ToHasher::Zeros(len) => {
                hash_zeros(&mut self.hasher, len);
                Ok(None)
            }
        }
    }
}

/// The hasher: a thread, or inline on the writer's thread when no thread
/// (or no second file handle) could be had.
enum Hasher {
    Thread {
        to: Option<SyncSender<ToHasher>>,
        /// Buffers coming back in stream mode.
        back: Receiver<Vec<u8>>,
        thread: Option<JoinHandle<io::Result<[u8; 32]>>>,
    },
    Inline {
        state: HashState,
        spare: Option<Vec<u8>>,
        error: Option<io::Error>,
    },
    /// No hash asked for (`acquire --no-hash`): reports zeros.
    Off,
}

impl Hasher {
    /// `file`: hash by reading this handle back (file mode); `None`: by
    /// the buffers sent.
    fn new(file: Option<File>) -> Hasher {
        let state = HashState {
            hasher: Sha256::new(),
            file,
            done: 0,
            buf: Vec::new(),
        };
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
                Ok(state.hasher.finalize().into())
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
                    state: state.unwrap_or_else(|| HashState {
                        hasher: Sha256::new(),
                        file: None,
                        done: 0,
                        buf: Vec::new(),
                    }),
                    spare: None,
                    error: None,
                }
            }
        }
    }

    /// Sends work; an error is reported at `join`.
    fn send(&mut self, msg: ToHasher) {
        match self {
            Hasher::Thread { to, .. } => {
                if let Some(sender) = to {
                    if sender.send(msg).is_err() {
                        *to = None;
                    }
                }
            }
            Hasher::Off => {}
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
            Hasher::Off => None,
        }
    }

    fn join(&mut self) -> io::Result<[u8; 32]> {
        match self {
            Hasher::Thread { to, thread, .. } => {
                *to = None;
                match thread.take().map(JoinHandle::join) {
                    Some(Ok(result)) => result,
                    _ => Err(io::Error::other("the hashing thread failed")),
                }
            }
            Hasher::Inline { state, error, .. } => match error.take() {
                Some(e) => Err(e),
                None => Ok(std::mem::take(&mut state.hasher).finalize().into()),
            },
            Hasher::Off => Ok([0; 32]),
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

/// Where a [`HashingSink`] sends its bytes.
enum Target {
    /// A regular file, written by offset: holes are skipped (sparse file),
    /// `finish` fsyncs.
    File(File),
    /// Anything else (stdout, a pipe): zeros are written out.
    Stream(Box<dyn Write + Send>),
}

/// A [`ByteSink`] over a file or a stream that hashes and counts every byte.
pub struct HashingSink {
    target: Target,
    /// Bytes not yet written, starting at image offset `flushed`.
    buf: Vec<u8>,
    flushed: u64,
    position: u64,
    /// File mode: bytes from here on are not hashed yet (may be patched).
    held: Option<u64>,
    /// File mode: bytes below this have been sent to the hasher.
    hashed: u64,
    hasher: Hasher,
    limit: Option<DiskLimit>,
    next_check: u64,
    /// File mode with a readable handle: the hasher reads the file back.
    by_reading: bool,
    /// The disk limit stopped the writes: nothing more may be written.
    stopped: bool,
    /// A readable file: bytes may be rewritten (and then hashed by reading).
    patchable: bool,
}

impl Drop for HashingSink {
    /// An image abandoned on an error keeps what it was given (the manifest
    /// says it is incomplete), except past a disk limit.
    fn drop(&mut self) {
        if self.stopped || self.buf.is_empty() {
            return;
        }
        match &mut self.target {
            Target::File(file) => {
                let _ = write_at(file, &self.buf, self.flushed);
            }
            Target::Stream(w) => {
                let _ = w.write_all(&self.buf).and_then(|()| w.flush());
            }
        }
    }
}

impl HashingSink {
    /// A sink writing a regular file from offset 0 with sparse holes.
    pub fn file(file: File) -> HashingSink {
        // Hash by reading back when the file can be read (images made by
        // create_image_file are); otherwise hash the buffers as written,
        // and patching is not possible.
        let reader = file
            .try_clone()
            .ok()
            .filter(|f| read_at(f, &mut [0u8; 1], 0).is_ok());
        let by_reading = reader.is_some();
        let mut sink = HashingSink::with_target(Target::File(file), Hasher::new(reader));
        sink.by_reading = by_reading;
        sink.patchable = by_reading;
        sink
    }

    /// A sink writing a non-seekable stream; holes are written as zeros.
    pub fn stream(writer: Box<dyn Write + Send>) -> HashingSink {
        HashingSink::with_target(Target::Stream(writer), Hasher::new(None))
    }

    /// A file sink if `file` is a regular file, a stream sink otherwise
    /// (a FIFO or character device given as OUTPUT cannot seek).
    pub fn for_file(file: File) -> io::Result<HashingSink> {
        if file.metadata()?.is_file() {
            Ok(HashingSink::file(file))
        } else {
            #[cfg(unix)]
            widen_pipe(std::os::unix::io::AsRawFd::as_raw_fd(&file));
            Ok(HashingSink::stream(Box::new(file)))
        }
    }

    /// A stream sink on standard output.
    pub fn stdout() -> HashingSink {
        HashingSink::stream(stdout_stream())
    }

    /// Hashes nothing: the summary's hash is all zeros. For acquisitions
    /// where speed matters more than a hash made at acquisition time.
    pub fn without_hash(mut self) -> HashingSink {
        self.hasher = Hasher::Off;
        self.by_reading = false;
        self
    }

    /// Enforces `limit` (file outputs only; a stream takes no disk space
    /// here): checked now, before anything is written, and while writing.
    pub fn with_limit(mut self, limit: DiskLimit) -> io::Result<HashingSink> {
        if let Target::File(file) = &self.target {
            limit.check(file, 0)?;
            self.limit = Some(limit);
            self.next_check = DiskLimit::CHECK_EVERY;
        }
        Ok(self)
    }

    fn with_target(target: Target, hasher: Hasher) -> HashingSink {
        HashingSink {
            target,
            buf: Vec::with_capacity(BUFFER),
            flushed: 0,
            position: 0,
            held: None,
            hashed: 0,
            hasher,
            limit: None,
            next_check: 0,
            by_reading: false,
            stopped: false,
            patchable: false,
        }
    }

    /// Writes the buffer out and lets the hasher catch up.
    fn flush_buffer(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let len = self.buf.len() as u64;
        let buf = std::mem::take(&mut self.buf);
        let written = self.write_out(&buf);
        self.buf = buf;
        written?;
        if self.hash_needs_no_copy() {
            self.buf.clear();
        } else {
            // Hand the bytes to the hasher and take a spare buffer: one
            // comes back once hashed, or a new one while all are away.
            let spare = self
                .hasher
                .spare()
                .unwrap_or_else(|| Vec::with_capacity(BUFFER));
            let full = std::mem::replace(&mut self.buf, spare);
            self.hasher.send(ToHasher::Data(full));
            self.buf.clear();
        }
        self.written(len);
        Ok(())
    }

    /// `len` more bytes are out: lets the hasher catch up.
    fn written(&mut self, len: u64) {
        self.flushed += len;
        self.release_to_hasher();
    }

    /// Whether written bytes reach the hash without a copy of their own:
    /// read back from the file, or not hashed at all.
    fn hash_needs_no_copy(&self) -> bool {
        self.by_reading || matches!(self.hasher, Hasher::Off)
    }

    /// Writes `bytes` at image offset `flushed` (checking the disk limit),
    /// not moving `flushed`.
    fn write_out(&mut self, bytes: &[u8]) -> io::Result<()> {
        let len = bytes.len() as u64;
        match &mut self.target {
            Target::File(file) => {
                if let Some(limit) = &self.limit {
                    // A byte limit costs nothing to check; the filesystem's
                    // usage costs a system call: every CHECK_EVERY bytes.
                    let every = matches!(limit, DiskLimit::Bytes(_));
                    if every || self.flushed + len >= self.next_check {
                        if let Err(e) = limit.check(file, self.flushed + len) {
                            self.stopped = true;
                            return Err(e);
                        }
                        self.next_check = self.flushed + len + DiskLimit::CHECK_EVERY;
                    }
                }
                write_at(file, bytes, self.flushed)?;
            }
            Target::Stream(w) => w.write_all(bytes)?,
        }
        Ok(())
    }

    /// File mode: lets the hasher read what is written and not held.
    fn release_to_hasher(&mut self) {
        if self.by_reading {
            let upto = self.held.unwrap_or(u64::MAX).min(self.flushed);
            if upto > self.hashed {
                self.hashed = upto;
                self.hasher.send(ToHasher::Upto(upto));
            }
        }
    }
}

impl ByteSink for HashingSink {
    fn write_all(&mut self, mut buf: &[u8]) -> io::Result<()> {
        if buf.len() >= DIRECT && self.hash_needs_no_copy() {
            // Large pieces go out from the caller's buffer: a copy of every
            // byte saved (the dearest cost left when nothing is hashed, or
            // when the hash reads the file back).
            self.flush_buffer()?;
            self.write_out(buf)?;
            self.position += buf.len() as u64;
            self.written(buf.len() as u64);
            return Ok(());
        }
        self.position += buf.len() as u64;
        while !buf.is_empty() {
            let n = (BUFFER - self.buf.len()).min(buf.len());
            self.buf.extend_from_slice(&buf[..n]);
            buf = &buf[n..];
            if self.buf.len() == BUFFER {
                self.flush_buffer()?;
            }
        }
        Ok(())
    }

    fn write_zeros(&mut self, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        self.flush_buffer()?;
        if let Target::Stream(w) = &mut self.target {
            let mut left = len;
            while left > 0 {
                let n = left.min(ZEROS.len() as u64) as usize;
                w.write_all(&ZEROS[..n])?;
                left -= n as u64;
            }
        }
        // On a file: a hole, skipped (read back as zeros when hashing by
        // reading).
        if !self.hash_needs_no_copy() {
            self.hasher.send(ToHasher::Zeros(len));
        }
        self.position += len;
        self.written(len);
        Ok(())
    }

    fn position(&self) -> u64 {
        self.position
    }

    fn can_patch(&self) -> bool {
        self.patchable
    }

    fn hold(&mut self, offset: Option<u64>) {
        if let Some(at) = offset {
            debug_assert!(at >= self.hashed, "hold below what was hashed");
        }
        self.held = offset;
        self.release_to_hasher();
    }

    fn patch(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let end = offset + bytes.len() as u64;
        let (Target::File(file), true) = (&self.target, self.patchable) else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this output cannot be rewritten",
            ));
        };
        if offset < self.hashed || end > self.position {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("patch at {offset:#x} outside the held, written bytes"),
            ));
        }
        // The part already written goes to the file, the rest to the buffer.
        let split = end.min(self.flushed).max(offset);
        let (old, new) = bytes.split_at((split - offset) as usize);
        if !old.is_empty() {
            write_at(file, old, offset)?;
        }
        if !new.is_empty() {
            let at = (split - self.flushed) as usize;
            self.buf[at..at + new.len()].copy_from_slice(new);
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> io::Result<SinkSummary> {
        self.flush_buffer()?;
        if let Target::File(file) = &self.target {
            if self.held.is_some() {
                return Err(io::Error::other("image finished with bytes still held"));
            }
            // A hole at the end: give the file its full length.
            if file.metadata()?.len() < self.position {
                file.set_len(self.position)?;
            }
        }
        self.release_to_hasher();
        match &mut self.target {
            Target::File(file) => file.sync_all()?,
            Target::Stream(w) => w.flush()?,
        }
        let sha256 = self.hasher.join()?;
        Ok(SinkSummary {
            bytes: self.position,
            sha256,
        })
    }
}

/// Creates an image file for writing: mode 0600 (images hold secrets), never
/// through a symlink (O_NOFOLLOW), and never over an existing file unless
/// `overwrite` is set.
pub fn create_image_file(path: &Path, overwrite: bool) -> io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    // Readable too: the sink hashes the image by reading it back.
    options.read(true).write(true);
    if overwrite {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    let file = options.open(path)?;
    #[cfg(unix)]
    {
        // An existing file opened with --force keeps its old mode: tighten it.
        use std::os::unix::fs::PermissionsExt;
        let meta = file.metadata()?;
        if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(file)
}

/// Hex encoding of a digest, as the manifest writes it.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sha(data: &[u8]) -> [u8; 32] {
        Sha256::digest(data).into()
    }

    #[test]
    fn file_sink_leaves_holes_and_hashes_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let mut sink = Box::new(HashingSink::file(create_image_file(&path, false).unwrap()));
        sink.write_all(b"abc").unwrap();
        sink.write_zeros(1 << 20).unwrap();
        sink.write_all(b"def").unwrap();
        sink.write_zeros(5000).unwrap();
        let summary = sink.finish().unwrap();
        let mut expected = b"abc".to_vec();
        expected.resize(3 + (1 << 20), 0);
        expected.extend_from_slice(b"def");
        expected.resize(expected.len() + 5000, 0);
        let mut written = Vec::new();
        File::open(&path)
            .unwrap()
            .read_to_end(&mut written)
            .unwrap();
        assert_eq!(written, expected);
        assert_eq!(summary.bytes, expected.len() as u64);
        assert_eq!(summary.sha256, sha(&expected));
    }

    #[test]
    fn held_bytes_can_be_patched_and_are_hashed_as_patched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let mut sink = Box::new(HashingSink::file(create_image_file(&path, false).unwrap()));
        assert!(sink.can_patch());
        let big = vec![7u8; 3 * BUFFER + 5];
        sink.write_all(&big).unwrap();
        let at = sink.position();
        sink.hold(Some(at));
        sink.write_all(b"HEADER??").unwrap();
        sink.write_all(&big).unwrap(); // the header is on disk by now
        sink.write_all(b"tail").unwrap();
        sink.patch(at + 6, b"OK").unwrap();
        sink.patch(sink.position() - 4, b"TA").unwrap(); // still buffered
        assert!(sink.patch(0, b"x").is_err(), "below the hold");
        sink.hold(None);
        sink.write_zeros(10_000).unwrap();
        let summary = sink.finish().unwrap();
        let mut expected = big.clone();
        expected.extend_from_slice(b"HEADEROK");
        expected.extend_from_slice(&big);
        expected.extend_from_slice(b"TAil");
        expected.resize(expected.len() + 10_000, 0);
        let written = std::fs::read(&path).unwrap();
        assert!(written == expected);
        assert_eq!(summary.sha256, sha(&expected));
    }

    /// A stream whose bytes the test can read afterwards.
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn large_and_small_writes_keep_order_and_hash_in_every_mode() {
        // Pieces below and above the direct-write size, and zeros between.
        let pieces: Vec<Vec<u8>> = [100, DIRECT, 3, 2 * BUFFER + 7, DIRECT - 1, 70_000]
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|j| (j * 31 + i * 7) as u8 | 1).collect())
            .collect();
        let mut expected = Vec::new();
        for piece in &pieces {
            expected.extend_from_slice(piece);
            expected.resize(expected.len() + 5000, 0);
        }
        let dir = tempfile::tempdir().unwrap();
        for (mode, hashed) in [
            ("file", true),
            ("file", false),
            ("stream", true),
            ("stream", false),
        ] {
            let path = dir.path().join(format!("{mode}-{hashed}"));
            let stream = Shared::default();
            let mut sink = match mode {
                "file" => HashingSink::file(create_image_file(&path, false).unwrap()),
                _ => HashingSink::stream(Box::new(stream.clone())),
            };
            if !hashed {
                sink = sink.without_hash();
            }
            let mut sink = Box::new(sink);
            for piece in &pieces {
                sink.write_all(piece).unwrap();
                sink.write_zeros(5000).unwrap();
            }
            let summary = sink.finish().unwrap();
            let written = match mode {
                "file" => std::fs::read(&path).unwrap(),
                _ => stream.0.lock().unwrap().clone(),
            };
            assert!(written == expected, "{mode} hashed={hashed}: bytes differ");
            assert_eq!(summary.bytes, expected.len() as u64);
            let want = if hashed { sha(&expected) } else { [0; 32] };
            assert_eq!(summary.sha256, want, "{mode} hashed={hashed}");
        }
    }

    #[test]
    fn write_only_file_is_hashed_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let mut sink = Box::new(HashingSink::file(File::create(&path).unwrap()));
        assert!(!sink.can_patch());
        sink.write_all(&[3u8; 100]).unwrap();
        sink.write_zeros(3 << 20).unwrap();
        let summary = sink.finish().unwrap();
        let written = std::fs::read(&path).unwrap();
        assert_eq!(written.len(), 100 + (3 << 20));
        assert_eq!(summary.sha256, sha(&written));
    }

    #[test]
    fn byte_limit_stops_writing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let file = create_image_file(&path, false).unwrap();
        let mut sink = Box::new(
            HashingSink::file(file)
                .with_limit(DiskLimit::Bytes(20 << 20))
                .unwrap(),
        );
        let chunk = vec![1u8; 1 << 20];
        let mut err = None;
        for _ in 0..40 {
            if let Err(e) = sink.write_all(&chunk) {
                err = Some(e);
                break;
            }
        }
        let err = err.expect("the limit must stop the writes");
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert!(std::fs::metadata(&path).unwrap().len() <= 20 << 20);
        #[cfg(unix)]
        {
            let file = create_image_file(&dir.path().join("b"), false).unwrap();
            let e = HashingSink::file(file)
                .with_limit(DiskLimit::Percent(0))
                .err()
                .expect("any used filesystem is above 0%");
            assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        }
    }

    #[test]
    fn without_hash_writes_the_same_bytes_and_can_still_patch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let file = create_image_file(&path, false).unwrap();
        let mut sink = Box::new(HashingSink::file(file).without_hash());
        assert!(sink.can_patch());
        sink.hold(Some(0));
        sink.write_all(&[5u8; 3 << 20]).unwrap();
        sink.patch(0, b"AB").unwrap();
        sink.hold(None);
        sink.write_zeros(100).unwrap();
        let summary = sink.finish().unwrap();
        assert_eq!(summary.sha256, [0; 32]);
        assert_eq!(summary.bytes, (3 << 20) + 100);
        let written = std::fs::read(&path).unwrap();
        assert_eq!(&written[..3], b"AB\x05");
        assert_eq!(written.len() as u64, summary.bytes);
    }

    #[test]
    fn stream_sink_writes_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stream");
        let file = File::create(&path).unwrap();
        let mut sink = Box::new(HashingSink::stream(Box::new(file)));
        sink.write_zeros(70_000).unwrap();
        sink.write_all(b"x").unwrap();
        let summary = sink.finish().unwrap();
        let written = std::fs::read(&path).unwrap();
        assert_eq!(written.len(), 70_001);
        assert_eq!(summary.sha256, sha(&written));
    }

    #[cfg(unix)]
    #[test]
    fn image_files_are_private_and_not_clobbered() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        drop(create_image_file(&path, false).unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let err = create_image_file(&path, false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(create_image_file(&path, true).unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(
            create_image_file(&link, true).is_err(),
            "must not follow symlinks"
        );
    }
}
