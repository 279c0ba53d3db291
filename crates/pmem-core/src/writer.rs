//! The trait every image format writer implements.

use crate::arch::Arch;
use crate::range::{MemoryMap, Range};
use crate::sink::SinkSummary;
use crate::windows::WindowsMetadata;
use std::io;

/// What a writer must know before the first byte: the ranges it will be
/// given (an ELF header lists them all up front) and the metadata it embeds.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The ranges the writer will be given, in this order, each whole.
    pub ranges: MemoryMap,
    /// The machine the memory belongs to (ELF and Mach-O headers name it).
    pub arch: Arch,
    /// Kernel virtual address of physical address 0 in the direct map
    /// (Linux page_offset_base), when the source knows it.
    pub direct_map_offset: Option<u64>,
    /// Descriptor of the kernel's VMCOREINFO ELF note, when the source has one.
    pub vmcoreinfo: Option<Vec<u8>>,
    /// pmem's acquisition metadata as JSON text, for formats that can carry it.
    pub metadata_json: Option<String>,
    /// Kernel facts of a Windows machine, needed by the crash dump format.
    pub windows: Option<WindowsMetadata>,
    /// The symbol bundle captured with the memory (a tar of the kernel's
    /// BTF, kallsyms, banner, ...; opaque bytes here), carried by the
    /// formats that have room for it (pmem_formats' `Format::carries_symbols`).
    /// The writers place it in `begin`; [`crate::copy_memory`] then drops it.
    pub symbols: Option<Vec<u8>>,
    /// Where the kernel image lies (Linux iomem's Kernel code, rodata,
    /// data and bss, as one span per System RAM range), inside `ranges`;
    /// empty when unknown. The time map reports when it was read and
    /// `--order kernel-first` reads it first.
    pub kernel_image: Vec<Range>,
    /// The time map the image carries, in the formats that have room for
    /// one (ELF, AFF4): the copy's own, or one a conversion carries on.
    pub time_map: TimeMapPlan,
}

/// Which time map an image carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TimeMapPlan {
    /// None: a conversion of an image that had none.
    #[default]
    None,
    /// The copy's own: it reads live memory, so when it read each part
    /// is worth keeping. Formats that write it after the copy reserve
    /// [`crate::TimeMap::json_bound`] for it.
    Measured,
    /// An earlier acquisition's, as JSON, carried on by a conversion: when
    /// a conversion read its input file says nothing of the memory.
    Carried(String),
}

impl Plan {
    /// A plan with only the essentials; metadata fields empty.
    pub fn new(ranges: MemoryMap, arch: Arch) -> Plan {
        Plan {
            ranges,
            arch,
            direct_map_offset: None,
            vmcoreinfo: None,
            metadata_json: None,
            windows: None,
            symbols: None,
            kernel_image: Vec::new(),
            time_map: TimeMapPlan::None,
        }
    }

    /// A copy of the plan without its symbol bundle, for a writer that
    /// keeps the plan past `begin`: the bundle (megabytes) is never cloned.
    pub fn without_symbols(&self) -> Plan {
        let Plan {
            ranges,
            arch,
            direct_map_offset,
            vmcoreinfo,
            metadata_json,
            windows,
            symbols: _,
            kernel_image,
            time_map,
        } = self;
        Plan {
            ranges: ranges.clone(),
            arch: *arch,
            direct_map_offset: *direct_map_offset,
            vmcoreinfo: vmcoreinfo.clone(),
            metadata_json: metadata_json.clone(),
            windows: *windows,
            symbols: None,
            kernel_image: kernel_image.clone(),
            time_map: time_map.clone(),
        }
    }
}

/// A piece of one range's content, handed to writers in strictly ascending
/// address order.
#[derive(Debug, Clone, Copy)]
pub enum Chunk<'a> {
    /// Bytes as read (the pipeline sends the pages it finds all zero as
    /// [`Chunk::Zero`] instead).
    Data(&'a [u8]),
    /// `len` bytes that are all zero (read and found zero, or unreadable and
    /// zero-filled; the pipeline's report tells which).
    Zero(u64),
}

impl Chunk<'_> {
    /// Bytes of memory the chunk stands for (for `Zero`, its count).
    pub fn len(&self) -> u64 {
        match self {
            Chunk::Data(d) => d.len() as u64,
            Chunk::Zero(n) => *n,
        }
    }

    /// Whether the chunk stands for no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why an image could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The sink failed (disk full, broken stream, disk limit reached).
    #[error("at image offset {offset}: {source}")]
    Io {
        /// Image offset (bytes from the start of the image) of the write
        /// that failed.
        offset: u64,
        /// The sink's error.
        source: io::Error,
    },
    /// The plan cannot be written in this format (no ranges, too many
    /// ranges for the header, missing metadata the format requires), or
    /// the writer was finished before every planned byte arrived. The
    /// message says which.
    #[error("{0}")]
    Plan(String),
    /// A chunk broke the order contract of
    /// [`ImageWriter::write_chunk`]: a bug in the caller, not in the data.
    #[error("chunk at {addr:#x} (+{len:#x}) does not follow on from the previous one or lies outside the planned ranges")]
    OutOfOrder {
        /// Physical address of the rejected chunk.
        addr: u64,
        /// Its length in bytes.
        len: u64,
    },
    /// The format cannot hold this memory as required (an AVML block that
    /// would be longer compressed than raw). Nothing of it was written; the
    /// caller may start again in another format.
    #[error("memory at {addr:#x} (+{len:#x}) cannot be written in this format: {reason}")]
    Unrepresentable {
        /// Physical address of the memory the format cannot hold.
        addr: u64,
        /// Its length in bytes.
        len: u64,
        /// Why not, for the user.
        reason: String,
    },
}

/// Frames range contents into one image format.
///
/// `finish` is the only commit point: a writer dropped without it leaves an
/// incomplete image, and the manifest says so.
pub trait ImageWriter: Send {
    /// Called once, before any chunk: checks that the format can hold the
    /// plan and writes what comes before the first range's bytes (an ELF
    /// or Mach-O header with every segment, for instance).
    fn begin(&mut self, plan: &Plan) -> Result<(), WriteError>;
    /// The next piece of memory, starting at physical address `addr`.
    /// Chunks arrive in ascending order with no gaps inside a range, and
    /// together cover exactly the planned ranges (checked with a
    /// [`ChunkCursor`]; anything else is [`WriteError::OutOfOrder`]).
    fn write_chunk(&mut self, addr: u64, chunk: Chunk<'_>) -> Result<(), WriteError>;
    /// `len` bytes at `addr` that could not be read. Formats without a way
    /// to say so write zeros (the manifest lists the pages); AFF4 maps them
    /// to aff4:UnreadableData.
    fn write_unreadable(&mut self, addr: u64, len: u64) -> Result<(), WriteError> {
        self.write_chunk(addr, Chunk::Zero(len))
    }
    /// The copy's time map as JSON ([`crate::TimeMap::to_json`]), given
    /// after the last chunk and before `finish`, only when
    /// [`Plan::time_map`] names one (the copy's own, or a carried one).
    /// Formats that write their metadata at the end (AFF4), or that
    /// reserved room for it because [`Plan::time_map`] asked (ELF), carry
    /// it; the others ignore it.
    fn time_map(&mut self, _json: &str) -> Result<(), WriteError> {
        Ok(())
    }
    /// Writes what follows the last range (an index, a trailer), then
    /// finishes the sink: the image's commit point. Fails with
    /// [`WriteError::Plan`] if a planned byte is missing.
    fn finish(self: Box<Self>) -> Result<SinkSummary, WriteError>;
}

/// Checks the order contract of [`ImageWriter::write_chunk`] for writers:
/// tracks the next expected address across the planned ranges.
#[derive(Debug, Default, Clone)]
pub struct ChunkCursor {
    ranges: MemoryMap,
    index: usize,
    next: u64,
}

/// Where a chunk fell in the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPosition {
    /// Index of the planned range the chunk belongs to.
    pub range_index: usize,
    /// Whether the chunk starts its range.
    pub starts_range: bool,
    /// Whether the chunk ends its range.
    pub ends_range: bool,
}

impl ChunkCursor {
    /// A cursor expecting the first byte of the first range of `ranges`.
    pub fn new(ranges: &MemoryMap) -> ChunkCursor {
        ChunkCursor {
            ranges: ranges.clone(),
            index: 0,
            next: ranges.ranges().first().map_or(0, |r| r.start),
        }
    }

    /// Accepts the chunk if it starts exactly where the previous one ended
    /// (or at the next range's start once a range is done) and does not run
    /// past its range's end.
    pub fn advance(&mut self, addr: u64, len: u64) -> Result<ChunkPosition, WriteError> {
        let bad = WriteError::OutOfOrder { addr, len };
        let range = match self.ranges.ranges().get(self.index) {
            Some(r) => *r,
            None => return Err(bad),
        };
        let end = match addr.checked_add(len) {
            Some(end) if len > 0 && addr == self.next && end <= range.end => end,
            _ => return Err(bad),
        };
        let position = ChunkPosition {
            range_index: self.index,
            starts_range: addr == range.start,
            ends_range: end == range.end,
        };
        if position.ends_range {
            self.index += 1;
            self.next = self
                .ranges
                .ranges()
                .get(self.index)
                .map_or(end, |r| r.start);
        } else {
            self.next = end;
        }
        Ok(position)
    }

    /// True once every planned byte has been written.
    pub fn is_complete(&self) -> bool {
        self.index >= self.ranges.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::range::Range;

    fn map(r: &[(u64, u64)]) -> MemoryMap {
        MemoryMap::new(r.iter().map(|&(s, e)| Range::new(s, e).unwrap()).collect()).unwrap()
    }

    #[test]
    fn cursor_accepts_ascending_chunks() {
        let mut c = ChunkCursor::new(&map(&[(0x1000, 0x3000), (0x5000, 0x6000)]));
        let p = c.advance(0x1000, 0x1000).unwrap();
        assert_eq!(
            (p.range_index, p.starts_range, p.ends_range),
            (0, true, false)
        );
        let p = c.advance(0x2000, 0x1000).unwrap();
        assert_eq!(
            (p.range_index, p.starts_range, p.ends_range),
            (0, false, true)
        );
        assert!(!c.is_complete());
        let p = c.advance(0x5000, 0x1000).unwrap();
        assert_eq!(
            (p.range_index, p.starts_range, p.ends_range),
            (1, true, true)
        );
        assert!(c.is_complete());
        assert!(c.advance(0x6000, 1).is_err());
    }

    #[test]
    fn cursor_rejects_gaps_and_overruns() {
        let m = map(&[(0x1000, 0x3000), (0x5000, 0x6000)]);
        assert!(ChunkCursor::new(&m).advance(0x1001, 1).is_err());
        assert!(ChunkCursor::new(&m).advance(0x1000, 0x2001).is_err());
        assert!(ChunkCursor::new(&m).advance(0x5000, 0x10).is_err());
        let mut c = ChunkCursor::new(&m);
        c.advance(0x1000, 0x1000).unwrap();
        assert!(c.advance(0x5000, 0x10).is_err(), "range 0 not finished");
        assert!(c.advance(0x1000, 0x10).is_err(), "going back");
    }
}
