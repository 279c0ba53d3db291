//! Byte sinks: where a format writer's bytes go. Every sink hashes what it
//! writes (SHA-256 of the image as written) and counts the bytes.

use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

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

/// Where a [`HashingSink`] sends its bytes.
enum Target {
    /// A regular file: holes become seeks, `finish` fsyncs.
    File(BufWriter<File>),
    /// Anything else (stdout, a pipe): zeros are written out.
    Stream(BufWriter<Box<dyn Write + Send>>),
}

/// A [`ByteSink`] over a file or a stream that hashes and counts every byte.
pub struct HashingSink {
    target: Target,
    hasher: Sha256,
    position: u64,
    /// A hole has been seeked over at the end of the file: `finish` must
    /// extend the file to `position`.
    pending_hole: bool,
}

const BUFFER: usize = 1 << 20;

impl HashingSink {
    /// A sink writing a regular file from offset 0 with sparse holes.
    pub fn file(file: File) -> HashingSink {
        HashingSink::with_target(Target::File(BufWriter::with_capacity(BUFFER, file)))
    }

    /// A sink writing a non-seekable stream; holes are written as zeros.
    pub fn stream(writer: Box<dyn Write + Send>) -> HashingSink {
        HashingSink::with_target(Target::Stream(BufWriter::with_capacity(BUFFER, writer)))
    }

    /// A file sink if `file` is a regular file, a stream sink otherwise
    /// (a FIFO or character device given as OUTPUT cannot seek).
    pub fn for_file(file: File) -> io::Result<HashingSink> {
        if file.metadata()?.is_file() {
            Ok(HashingSink::file(file))
        } else {
            Ok(HashingSink::stream(Box::new(file)))
        }
    }

    fn with_target(target: Target) -> HashingSink {
        HashingSink {
            target,
            hasher: Sha256::new(),
            position: 0,
            pending_hole: false,
        }
    }
}

impl ByteSink for HashingSink {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match &mut self.target {
            Target::File(w) => w.write_all(buf)?,
            Target::Stream(w) => w.write_all(buf)?,
        }
        self.hasher.update(buf);
        self.position += buf.len() as u64;
        if !buf.is_empty() {
            self.pending_hole = false;
        }
        Ok(())
    }

    fn write_zeros(&mut self, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        match &mut self.target {
            Target::File(w) => {
                let offset = i64::try_from(len)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "hole too large"))?;
                // BufWriter's seek flushes its buffer first.
                w.seek(SeekFrom::Current(offset))?;
                self.pending_hole = true;
            }
            Target::Stream(w) => {
                let mut left = len;
                while left > 0 {
                    let n = left.min(ZEROS.len() as u64) as usize;
                    w.write_all(&ZEROS[..n])?;
                    left -= n as u64;
                }
            }
        }
        hash_zeros(&mut self.hasher, len);
        self.position += len;
        Ok(())
    }

    fn position(&self) -> u64 {
        self.position
    }

    fn finish(self: Box<Self>) -> io::Result<SinkSummary> {
        let summary = SinkSummary {
            bytes: self.position,
            sha256: self.hasher.finalize().into(),
        };
        match self.target {
            Target::File(w) => {
                let file = w.into_inner().map_err(|e| e.into_error())?;
                if self.pending_hole {
                    file.set_len(summary.bytes)?;
                }
                file.sync_all()?;
            }
            Target::Stream(mut w) => w.flush()?,
        }
        Ok(summary)
    }
}

/// Creates an image file for writing: mode 0600 (images hold secrets), never
/// through a symlink (O_NOFOLLOW), and never over an existing file unless
/// `overwrite` is set.
pub fn create_image_file(path: &Path, overwrite: bool) -> io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
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
