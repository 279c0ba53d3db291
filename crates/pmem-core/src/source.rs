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

/// Reads `buf` at `addr`; when the source says part of it is unreadable,
/// reads it again in pieces of `piece` bytes (cut at absolute multiples of
/// `piece`: a page, or the source's granularity if larger), keeping the
/// pieces that read and zero-filling those that still fail. Returns the
/// zero-filled pieces (address, length; adjacent ones merged), so that one
/// bad page never costs the rest of a request. Only a fatal error is an
/// error.
pub fn read_or_zero(
    source: &mut dyn PhysicalMemory,
    addr: u64,
    buf: &mut [u8],
    piece: u64,
) -> Result<Vec<(u64, u64)>, ReadError> {
    let mut bad: Vec<(u64, u64)> = Vec::new();
    match source.read_at(addr, buf) {
        Ok(()) => return Ok(bad),
        Err(ReadError::Unreadable { .. }) => {}
        Err(fatal) => return Err(fatal),
    }
    let end = addr + buf.len() as u64;
    let mut at = addr;
    while at < end {
        let piece_end = ((at / piece) + 1).saturating_mul(piece).min(end);
        let (from, to) = ((at - addr) as usize, (piece_end - addr) as usize);
        match source.read_at(at, &mut buf[from..to]) {
            Ok(()) => {}
            Err(ReadError::Unreadable { .. }) => {
                buf[from..to].fill(0);
                match bad.last_mut() {
                    Some(last) if last.0 + last.1 == at => last.1 += piece_end - at,
                    _ => bad.push((at, piece_end - at)),
                }
            }
            Err(fatal) => return Err(fatal),
        }
        at = piece_end;
    }
    Ok(bad)
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
