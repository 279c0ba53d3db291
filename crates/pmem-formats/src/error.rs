//! The one error type of the readers: every problem names the file and the
//! offset of the bad structure, so that a user can look at it with a hex
//! editor.

use crate::Format;
use std::io;
use std::path::{Path, PathBuf};

/// Why an image file cannot be read. Every variant names the file and the
/// file offset of the problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// Opening, seeking or reading the file failed.
    #[error("{}: at file offset {offset:#x}: {source}", path.display())]
    Io {
        /// The image file.
        path: PathBuf,
        /// File offset of the failed read (0 when opening failed).
        offset: u64,
        /// The operating system's error.
        source: io::Error,
    },
    /// The file has no bytes at all.
    #[error("{}: at file offset 0x0: the file is empty, not a memory image", path.display())]
    Empty {
        /// The image file.
        path: PathBuf,
    },
    /// A structure of the format is wrong: bad magic, a size past the end
    /// of the file, overlapping ranges.
    #[error("{}: at file offset {offset:#x}: invalid {format} image: {reason}", path.display())]
    Corrupt {
        /// The image file.
        path: PathBuf,
        /// File offset of the bad structure.
        offset: u64,
        /// The format the file was read as.
        format: Format,
        /// What is wrong, for the user.
        reason: String,
    },
    /// A file in a variant of its format that pmem does not read (a 32-bit
    /// Mach-O, a crash dump type that does not hold all memory, AVML
    /// records in a LiME file). Files no format recognises are read as
    /// raw, not refused.
    #[error("{}: at file offset {offset:#x}: {reason}", path.display())]
    Unsupported {
        /// The image file.
        path: PathBuf,
        /// File offset of the structure that says so.
        offset: u64,
        /// What pmem does not support, for the user.
        reason: String,
    },
}

impl FormatError {
    /// The image file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            FormatError::Io { path, .. }
            | FormatError::Empty { path }
            | FormatError::Corrupt { path, .. }
            | FormatError::Unsupported { path, .. } => path,
        }
    }

    /// File offset of the problem.
    pub fn offset(&self) -> u64 {
        match self {
            FormatError::Empty { .. } => 0,
            FormatError::Io { offset, .. }
            | FormatError::Corrupt { offset, .. }
            | FormatError::Unsupported { offset, .. } => *offset,
        }
    }
}

/// What the LiME reader says of an AVML record: a file holds one or the
/// other, never both.
pub(crate) fn avml_unsupported(path: &Path, offset: u64) -> FormatError {
    FormatError::Unsupported {
        path: path.into(),
        offset,
        reason: "an AVML compressed record (magic \"AVML\") in a LiME file: \
                 a file cannot mix LiME and AVML records"
            .into(),
    }
}
