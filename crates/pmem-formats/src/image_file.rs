//! The bytes a reader parses: a file or a seekable stream (the plaintext of
//! an encrypted image), and the checked reads every parser goes through.

use crate::{Format, FormatError};
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

pub(crate) fn open_file(path: &Path) -> Result<File, FormatError> {
    File::open(path).map_err(|source| FormatError::Io {
        path: path.into(),
        offset: 0,
        source,
    })
}

/// Files and [`ImageFile`]s: what [`file_len`] measures.
pub(crate) trait Length {
    fn length(&self) -> io::Result<u64>;
}

impl Length for File {
    fn length(&self) -> io::Result<u64> {
        self.metadata().map(|m| m.len())
    }
}

impl Length for ImageFile {
    fn length(&self) -> io::Result<u64> {
        match &self.source {
            Source::File(f) => f.length(),
            Source::Stream(_) => Ok(self.len),
        }
    }
}

pub(crate) fn file_len(path: &Path, file: &impl Length) -> Result<u64, FormatError> {
    file.length().map_err(|source| FormatError::Io {
        path: path.into(),
        offset: 0,
        source,
    })
}

/// The length of an image about to be parsed; an empty file is an error.
pub(crate) fn nonempty_len(path: &Path, file: &impl Length) -> Result<u64, FormatError> {
    match file_len(path, file)? {
        0 => Err(FormatError::Empty { path: path.into() }),
        len => Ok(len),
    }
}

/// The bytes an image reader reads: a file, or any seekable source of a
/// known length, such as the plaintext of an age-encrypted image (age's
/// reader decrypts only the 64 KiB chunks a read touches).
#[derive(Debug)]
pub struct ImageFile {
    source: Source,
    /// The length of a stream (a file's is asked of the file).
    len: u64,
}

/// A seekable source of image bytes.
pub trait ReadSeek: Read + Seek + Send {}
impl<T: Read + Seek + Send> ReadSeek for T {}

enum Source {
    File(File),
    /// Readers take `&ImageFile`: the lock gives the stream's `&mut`.
    Stream(std::sync::Mutex<Box<dyn ReadSeek>>),
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(file) => file.fmt(f),
            Source::Stream(_) => f.write_str("Stream"),
        }
    }
}

impl ImageFile {
    /// A seekable stream; its length is found by seeking to its end.
    pub fn stream(mut reader: impl ReadSeek + 'static) -> io::Result<ImageFile> {
        let len = reader.seek(SeekFrom::End(0))?;
        reader.seek(SeekFrom::Start(0))?;
        Ok(ImageFile {
            source: Source::Stream(std::sync::Mutex::new(Box::new(reader))),
            len,
        })
    }

    /// The length in bytes (of the plaintext, for a decrypting stream).
    pub fn size(&self) -> io::Result<u64> {
        self.length()
    }

    fn with_stream<T>(&self, op: impl FnOnce(&mut dyn ReadSeek) -> io::Result<T>) -> io::Result<T> {
        match &self.source {
            Source::File(_) => unreachable!("only called for streams"),
            Source::Stream(lock) => {
                let mut guard = lock
                    .lock()
                    .map_err(|_| io::Error::other("an earlier read of the image panicked"))?;
                op(guard.as_mut())
            }
        }
    }
}

impl From<File> for ImageFile {
    fn from(file: File) -> ImageFile {
        ImageFile {
            source: Source::File(file),
            len: 0,
        }
    }
}

impl Read for ImageFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Seek for ImageFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        (&*self).seek(pos)
    }
}

impl Read for &ImageFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.source {
            Source::File(file) => {
                let mut f: &File = file;
                f.read(buf)
            }
            Source::Stream(_) => self.with_stream(|s| s.read(buf)),
        }
    }
}

impl Seek for &ImageFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        match &self.source {
            Source::File(file) => {
                let mut f: &File = file;
                f.seek(pos)
            }
            Source::Stream(_) => self.with_stream(|s| s.seek(pos)),
        }
    }
}

/// Reads exactly `buf.len()` bytes at `offset` of an image being parsed.
pub(crate) fn read_exact_at(
    path: &Path,
    mut file: &ImageFile,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), FormatError> {
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(buf))
        .map_err(|source| FormatError::Io {
            path: path.into(),
            offset,
            source,
        })
}

/// An image being parsed: the file, its length, and what its errors name.
/// Parsers pass this one value from step to step instead of four.
#[derive(Clone, Copy)]
pub(crate) struct Parsing<'a> {
    pub(crate) path: &'a Path,
    pub(crate) file: &'a ImageFile,
    pub(crate) len: u64,
    pub(crate) format: Format,
}

impl<'a> Parsing<'a> {
    /// An image of any length (the format's parser names what is missing).
    pub(crate) fn new(
        path: &'a Path,
        file: &'a ImageFile,
        format: Format,
    ) -> Result<Parsing<'a>, FormatError> {
        let len = file_len(path, file)?;
        Ok(Parsing {
            path,
            file,
            len,
            format,
        })
    }

    /// This image, refused as [`FormatError::Empty`] when it holds no byte.
    pub(crate) fn nonempty(self) -> Result<Parsing<'a>, FormatError> {
        match self.len {
            0 => Err(FormatError::Empty {
                path: self.path.into(),
            }),
            _ => Ok(self),
        }
    }

    /// "invalid `format` image" at `offset`.
    pub(crate) fn corrupt(&self, offset: u64, reason: impl Into<String>) -> FormatError {
        FormatError::Corrupt {
            path: self.path.into(),
            offset,
            format: self.format,
            reason: reason.into(),
        }
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    pub(crate) fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), FormatError> {
        read_exact_at(self.path, self.file, offset, buf)
    }
}
