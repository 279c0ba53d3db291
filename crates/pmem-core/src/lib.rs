//! The shared vocabulary of pmem: physical ranges and memory maps, the
//! [`PhysicalMemory`] trait every source and image reader implements, the
//! [`ImageWriter`] trait every format writer implements, byte sinks that hash
//! what they write, and the pipeline that copies one into the other.
//!
//! Data flows source -> [`pipeline`] -> format writer -> [`sink`].

#![warn(missing_docs)]

pub mod arch;
pub mod file_map;
pub mod pipeline;
pub mod range;
pub mod sink;
pub mod source;
pub mod window;
pub mod windows;
pub mod writer;

pub use arch::Arch;
pub use file_map::{FileMap, FilePiece, Located};
pub use pipeline::{copy_memory, CopyError, CopyOptions, CopyReport};
pub use range::{MemoryMap, MemoryMapError, PageRun, Range};
pub use sink::{ByteSink, HashAlgorithm, ImageHash, Patch, SinkSummary};
pub use source::{read_or_zero, PhysicalMemory, ReadError};
pub use window::{PageDigests, ReadOrder, RereadReport, TimeMap};
pub use windows::WindowsMetadata;
pub use writer::{Chunk, ImageWriter, Plan, TimeMapPlan, WriteError};

/// The page size all sources and formats account in. Physical memory maps,
/// unreadable-page records and ELF segment alignment use it.
pub const PAGE_SIZE: u64 = 4096;
