//! The trait every readable thing implements: live devices and image files.

use crate::range::MemoryMap;
use std::io;

/// A failed read. `Unreadable` is recoverable and concerns the pages of the
/// request: the pipeline retries page by page and zero-fills what still
/// fails. `Fatal` ends the copy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// Some page of the request could not be read; the source is still
    /// usable.
    #[error("physical address {addr:#x} is unreadable: {source}")]
    Unreadable {
        /// The physical address the read failed at (the request's start
        /// when the source cannot tell which page failed).
        addr: u64,
        /// What the operating system or device said.
        source: io::Error,
    },
    /// The source can no longer be read at all (device gone, image file
    /// truncated): retrying page by page would not help.
    #[error("{what} at physical address {addr:#x}: {source}")]
    Fatal {
        /// What was being done, naming the source (e.g. `reading /dev/crash`).
        what: String,
        /// The physical address of the failed request.
        addr: u64,
        /// The underlying error.
        source: io::Error,
    },
}

/// Anything that can be read by physical address: /proc/kcore, /dev/crash,
/// /dev/mem, a driver, an image file.
pub trait PhysicalMemory: Send {
    /// Sorted, disjoint, non-empty ranges: exactly what `read_at` may be
    /// asked for.
    fn memory_map(&self) -> &MemoryMap;

    /// Reads must start and end on multiples of this (4096 for /dev/crash).
    /// The pipeline aligns its chunks to it.
    fn read_granularity(&self) -> u64 {
        1
    }

    /// Fills `buf` from `addr`. The caller only asks for bytes inside one
    /// range of [`memory_map`](Self::memory_map).
    fn read_at(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError>;
}

impl<T: PhysicalMemory + ?Sized> PhysicalMemory for Box<T> {
    fn memory_map(&self) -> &MemoryMap {
        (**self).memory_map()
    }
    fn read_granularity(&self) -> u64 {
        (**self).read_granularity()
    }
    fn read_at(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        (**self).read_at(addr, buf)
    }
}
