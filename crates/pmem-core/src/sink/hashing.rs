//! [`HashingSink`]: the sink over an image file or a stream, which hashes
//! and counts every byte. It buffers small writes into [`BUFFER`]-sized
//! ones (which then go to the hasher), sends large ones straight from the
//! caller's buffer when the hash needs no copy of them (nothing hashed, or
//! bytes held back and read back later), and lets the AVML writer patch
//! bytes it holds back from the hash.

use super::digest::HashAlgorithm;
use super::file::SparseFile;
use super::hasher::HashFeed;
use super::{fill_buffer, zeros_through, ByteSink, DiskLimit, Patch, SinkSummary, BUFFER};
use std::fs::File;
use std::io::{self, Write};

/// Writes at least this large skip the sink's buffer when nothing needs a
/// copy of their bytes.
const DIRECT: usize = 64 * 1024;

/// Where a [`HashingSink`] sends its bytes.
enum Target {
    /// A regular file, written by offset: holes are skipped (sparse file),
    /// `finish` fsyncs.
    File(SparseFile),
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
    feed: HashFeed,
}

impl Drop for HashingSink {
    /// An image abandoned on an error keeps what it was given (the manifest
    /// says it is incomplete), except past a disk limit.
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        match &mut self.target {
            Target::File(file) if file.stopped() => {}
            Target::File(file) => {
                let _ = file.write_unlimited(self.flushed, &self.buf);
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
        // The hasher takes the written buffers; when the file can be read
        // (images made by create_image_file are), bytes may also be held
        // back, patched and then read back; otherwise patching is not
        // possible.
        let (file, reader) = SparseFile::new(file);
        HashingSink::with_target(
            Target::File(file),
            HashFeed::new(reader, HashAlgorithm::default()),
        )
    }

    /// A sink writing a non-seekable stream; holes are written as zeros.
    pub fn stream(writer: Box<dyn Write + Send>) -> HashingSink {
        HashingSink::with_target(
            Target::Stream(writer),
            HashFeed::new(None, HashAlgorithm::default()),
        )
    }

    /// A file sink if `file` is a regular file, a stream sink otherwise
    /// (a FIFO or character device given as OUTPUT cannot seek).
    pub fn for_file(file: File) -> io::Result<HashingSink> {
        if file.metadata()?.is_file() {
            Ok(HashingSink::file(file))
        } else {
            #[cfg(unix)]
            super::stream::widen_pipe(std::os::unix::io::AsRawFd::as_raw_fd(&file));
            Ok(HashingSink::stream(Box::new(file)))
        }
    }

    /// A stream sink on standard output.
    pub fn stdout() -> HashingSink {
        HashingSink::stream(super::stdout_stream())
    }

    /// Hashes nothing: the summary has no hash. For acquisitions
    /// where speed matters more than a hash made at acquisition time.
    pub fn without_hash(mut self) -> HashingSink {
        self.feed.off();
        self
    }

    /// Hashes with `algorithm` (`None`: hashes nothing, as
    /// [`without_hash`](Self::without_hash)); the default is
    /// [`HashAlgorithm::Blake3`]. Chosen before the first byte is written.
    pub fn with_hash(mut self, algorithm: Option<HashAlgorithm>) -> HashingSink {
        match algorithm {
            Some(algorithm) => {
                let chosen = self.feed.set_algorithm(algorithm);
                debug_assert!(chosen, "the hash is chosen before writing");
            }
            None => self.feed.off(),
        }
        self
    }

    /// Enforces `limit` (file outputs only; a stream takes no disk space
    /// here): checked now, before anything is written, and while writing.
    pub fn with_limit(mut self, limit: DiskLimit) -> io::Result<HashingSink> {
        if let Target::File(file) = &mut self.target {
            file.limit(limit)?;
        }
        Ok(self)
    }

    fn with_target(target: Target, feed: HashFeed) -> HashingSink {
        HashingSink {
            target,
            buf: Vec::with_capacity(BUFFER),
            flushed: 0,
            position: 0,
            feed,
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
        if !self.feed.takes_buffers() {
            self.buf.clear();
        } else {
            // Hand the bytes to the hasher and take a spare buffer: one
            // comes back once hashed, or a new one while all are away.
            let spare = self.feed.spare_buffer();
            let full = std::mem::replace(&mut self.buf, spare);
            self.feed.data(full);
            self.buf.clear();
        }
        self.written(len);
        Ok(())
    }

    /// `len` more bytes are out: lets the hasher catch up.
    fn written(&mut self, len: u64) {
        self.flushed += len;
        self.feed.release(self.flushed);
    }

    /// Writes `bytes` at image offset `flushed` (checking the disk limit),
    /// not moving `flushed`.
    fn write_out(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.target {
            Target::File(file) => file.write(self.flushed, bytes),
            Target::Stream(w) => w.write_all(bytes),
        }
    }

    fn can_patch(&self) -> bool {
        matches!(&self.target, Target::File(file) if file.can_rewrite())
    }
}

impl ByteSink for HashingSink {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        if buf.len() >= DIRECT && !self.feed.takes_buffers() {
            // Large pieces go out from the caller's buffer: a copy of every
            // byte saved (the dearest cost left when nothing is hashed, or
            // when held bytes are read back by the hash).
            self.flush_buffer()?;
            self.write_out(buf)?;
            self.position += buf.len() as u64;
            self.written(buf.len() as u64);
            return Ok(());
        }
        self.position += buf.len() as u64;
        fill_buffer(self, buf, BUFFER, |s| &mut s.buf, Self::flush_buffer)
    }

    fn write_zeros(&mut self, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        self.flush_buffer()?;
        // On a file: a hole, skipped.
        if let Target::Stream(w) = &mut self.target {
            zeros_through(len, |zeros| w.write_all(zeros))?;
        }
        self.feed.zeros(len);
        self.position += len;
        self.written(len);
        Ok(())
    }

    fn position(&self) -> u64 {
        self.position
    }

    fn patcher(&mut self) -> Option<&mut dyn Patch> {
        if self.can_patch() {
            Some(self)
        } else {
            None
        }
    }

    fn finish(mut self: Box<Self>) -> io::Result<SinkSummary> {
        self.flush_buffer()?;
        if let Target::File(file) = &self.target {
            if self.feed.holding() {
                return Err(io::Error::other("image finished with bytes still held"));
            }
            file.extend_to(self.position)?;
        }
        self.feed.release(self.flushed);
        match &mut self.target {
            Target::File(file) => file.sync()?,
            Target::Stream(w) => w.flush()?,
        }
        let hash = self.feed.finish()?;
        Ok(SinkSummary {
            bytes: self.position,
            hash,
        })
    }
}

impl Patch for HashingSink {
    fn hold(&mut self, offset: Option<u64>) {
        self.feed.hold(offset, self.flushed);
    }

    fn patch(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let end = offset + bytes.len() as u64;
        let Target::File(file) = &self.target else {
            return Err(cannot_rewrite());
        };
        if !file.can_rewrite() {
            return Err(cannot_rewrite());
        }
        if offset < self.feed.released() || end > self.position {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("patch at {offset:#x} outside the held, written bytes"),
            ));
        }
        // The part already written goes to the file, the rest to the buffer.
        let split = end.min(self.flushed).max(offset);
        let (old, new) = bytes.split_at((split - offset) as usize);
        if !old.is_empty() {
            file.write_unlimited(offset, old)?;
        }
        if !new.is_empty() {
            let at = (split - self.flushed) as usize;
            self.buf[at..at + new.len()].copy_from_slice(new);
        }
        Ok(())
    }
}

fn cannot_rewrite() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "this output cannot be rewritten",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::create_image_file;
    use crate::sink::ImageHash;
    use sha2::Digest;
    use std::io::Read;

    /// The default hash of `data`, computed by the `blake3` crate directly.
    fn sha(data: &[u8]) -> Option<ImageHash> {
        Some(ImageHash {
            algorithm: HashAlgorithm::Blake3,
            bytes: *blake3::hash(data).as_bytes(),
        })
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
        assert_eq!(summary.hash, sha(&expected));
    }

    #[test]
    fn held_bytes_can_be_patched_and_are_hashed_as_patched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let mut sink = Box::new(HashingSink::file(create_image_file(&path, false).unwrap()));
        assert!(sink.patcher().is_some());
        let big = vec![7u8; 3 * BUFFER + 5];
        sink.write_all(&big).unwrap();
        let at = sink.position();
        sink.patcher().unwrap().hold(Some(at));
        sink.write_all(b"HEADER??").unwrap();
        sink.write_all(&big).unwrap(); // the header is on disk by now
        sink.write_all(b"tail").unwrap();
        let tail = sink.position() - 4;
        let patcher = sink.patcher().unwrap();
        patcher.patch(at + 6, b"OK").unwrap();
        patcher.patch(tail, b"TA").unwrap(); // still buffered
        assert!(patcher.patch(0, b"x").is_err(), "below the hold");
        patcher.hold(None);
        sink.write_zeros(10_000).unwrap();
        let summary = sink.finish().unwrap();
        let mut expected = big.clone();
        expected.extend_from_slice(b"HEADEROK");
        expected.extend_from_slice(&big);
        expected.extend_from_slice(b"TAil");
        expected.resize(expected.len() + 10_000, 0);
        let written = std::fs::read(&path).unwrap();
        assert!(written == expected);
        assert_eq!(summary.hash, sha(&expected));
    }

    /// Blocks as the AVML writer makes them: bytes hashed as buffers, then
    /// a held header patched after its block, released, and so on; holes
    /// between them. The hash is that of the file as finally written.
    #[test]
    fn holds_between_buffered_bytes_hash_the_patched_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let mut sink = Box::new(HashingSink::file(create_image_file(&path, false).unwrap()));
        let block: Vec<u8> = (0..BUFFER + 4321).map(|i| (i % 253) as u8).collect();
        let mut expected = Vec::new();
        for round in 0..4u8 {
            sink.write_all(&block[..round as usize * 1000 + 17])
                .unwrap();
            expected.extend_from_slice(&block[..round as usize * 1000 + 17]);
            let at = sink.position();
            sink.patcher().unwrap().hold(Some(at));
            sink.write_all(b"LEN=????").unwrap();
            sink.write_all(&block).unwrap();
            sink.write_zeros(3000).unwrap();
            sink.patcher()
                .unwrap()
                .patch(at + 4, &[b'0' + round; 4])
                .unwrap();
            sink.patcher().unwrap().hold(None);
            expected.extend_from_slice(b"LEN=");
            expected.extend_from_slice(&[b'0' + round; 4]);
            expected.extend_from_slice(&block);
            expected.resize(expected.len() + 3000, 0);
            sink.write_zeros(100_000).unwrap();
            expected.resize(expected.len() + 100_000, 0);
        }
        let summary = sink.finish().unwrap();
        assert!(std::fs::read(&path).unwrap() == expected);
        assert_eq!(summary.bytes, expected.len() as u64);
        assert_eq!(summary.hash, sha(&expected));
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
            let want = if hashed { sha(&expected) } else { None };
            assert_eq!(summary.hash, want, "{mode} hashed={hashed}");
        }
    }

    #[test]
    fn sha256_when_asked_in_every_mode() {
        let dir = tempfile::tempdir().unwrap();
        let mut expected = vec![9u8; 2 * BUFFER + 3];
        expected.resize(expected.len() + 70_000, 0);
        expected.extend_from_slice(b"end");
        for mode in ["file", "write-only", "stream"] {
            let path = dir.path().join(mode);
            let sink = match mode {
                "file" => HashingSink::file(create_image_file(&path, false).unwrap()),
                "write-only" => HashingSink::file(File::create(&path).unwrap()),
                _ => HashingSink::stream(Box::new(File::create(&path).unwrap())),
            };
            let mut sink = Box::new(sink.with_hash(Some(HashAlgorithm::Sha256)));
            sink.write_all(&expected[..2 * BUFFER + 3]).unwrap();
            sink.write_zeros(70_000).unwrap();
            sink.write_all(b"end").unwrap();
            let summary = sink.finish().unwrap();
            assert!(std::fs::read(&path).unwrap() == expected, "{mode}");
            let hash = summary.hash.expect("hashed");
            assert_eq!(hash.algorithm, HashAlgorithm::Sha256, "{mode}");
            assert_eq!(
                hash.bytes,
                <[u8; 32]>::from(sha2::Sha256::digest(&expected))
            );
        }
        // Nothing written: the hash of no bytes.
        let empty = Box::new(HashingSink::stream(Box::new(io::sink())));
        assert_eq!(empty.finish().unwrap().hash, sha(b""));
    }

    #[test]
    fn write_only_file_is_hashed_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let mut sink = Box::new(HashingSink::file(File::create(&path).unwrap()));
        assert!(sink.patcher().is_none());
        sink.write_all(&[3u8; 100]).unwrap();
        sink.write_zeros(3 << 20).unwrap();
        let summary = sink.finish().unwrap();
        let written = std::fs::read(&path).unwrap();
        assert_eq!(written.len(), 100 + (3 << 20));
        assert_eq!(summary.hash, sha(&written));
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
        assert!(sink.patcher().is_some());
        sink.patcher().unwrap().hold(Some(0));
        sink.write_all(&[5u8; 3 << 20]).unwrap();
        sink.patcher().unwrap().patch(0, b"AB").unwrap();
        sink.patcher().unwrap().hold(None);
        sink.write_zeros(100).unwrap();
        let summary = sink.finish().unwrap();
        assert_eq!(summary.hash, None);
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
        assert_eq!(summary.hash, sha(&written));
    }
}
