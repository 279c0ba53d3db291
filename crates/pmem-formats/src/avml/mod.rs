//! AVML v2, "compressed LiME": per block a 32-byte header (u32 magic
//! 0x4C4D5641, "AVML" on disk, u32 version 2, u64 start, u64 end inclusive,
//! u64 0), then a complete snappy *framing-format* stream holding the
//! block's bytes, then the u64 LE byte length of that stream.
//!
//! The writer is shaped by two readers:
//! * Volatility 3's AVMLLayer (2.28.2) reads only `end - start` bytes of
//!   stream per block and loops forever when the stream is longer. A block
//!   of incompressible data (encrypted pages, zswap, compressed files in the
//!   page cache) stores every 64 KiB frame with 8 bytes of framing overhead,
//!   so its stream is always longer than the block. We never write such a
//!   block. The rule: a block is closed once it holds [`MAX_BLOCK`] bytes
//!   (16 MiB, as AVML) *and* its stream is at least 16 bytes shorter
//!   than the block; until then it grows, so incompressible frames are
//!   absorbed into the block together with compressible neighbours (each
//!   stored frame costs only 8 bytes, which one compressible frame pays for
//!   many times over). An all-zero frame next to incompressible data is
//!   taken into the block as such a donor. A block that reaches [`CAP`]
//!   (256 MiB) or the end of its range without paying for itself makes the
//!   writer fail with [`WriteError::Unrepresentable`]; the CLI then writes
//!   plain LiME for the whole image, with a warning. On a file the block's
//!   frames go straight to disk behind a provisional header that is patched
//!   when the block closes (the sink holds those bytes back from the hash
//!   until then); on a stream, which cannot be patched, the block is
//!   buffered in memory and closed at [`STREAM_BLOCK`] (4 MiB), and a block
//!   whose buffer would pass [`STREAM_CAP`] fails early with the advice to
//!   write to a file.
//! * AVML's `avml-convert` decodes exactly `end - start + 1` bytes from the
//!   stream and then skips 8 bytes, so a stream must not carry anything
//!   after its last data chunk.
//!
//! Frames are compressed on worker threads, a batch of [`BATCH_FRAMES`]
//! frames per job, and taken back in order. All-zero 64 KiB frames are
//! written too (about 3 KiB each), unlike AVML, which leaves out all-zero
//! 16 MiB blocks: Volatility 3's AVML layer fails any read that touches a
//! gap between blocks, and its stackers read whatever pages the kernel's
//! structures point at. The blocks then cover every range exactly, which is
//! what `pmem verify` checks the manifest's ranges against. The reader still
//! reads images with gaps (AVML's own, and pmem's before this change) as
//! zeros where the manifest says the range was read.
//!
//! [`WriteError::Unrepresentable`]: pmem_core::WriteError::Unrepresentable

mod batch;
mod frame;
mod reader;
mod writer;

pub use frame::{header, masked_crc, FrameEncoder};
pub use reader::AvmlReader;
pub use writer::AvmlWriter;

/// "AVML" on disk; the header is LiME's shape ([`crate::lime::header_for`]).
pub const MAGIC: u32 = crate::lime::AVML_MAGIC;
/// The version field of every AVML block header.
pub const VERSION: u32 = 2;
/// Bytes of a block header: LiME's 32.
pub const HEADER_LEN: u64 = crate::lime::HEADER_LEN;
/// Blocks are closed at this size once they pay for themselves (AVML's
/// block size: readers hold a block's stream in memory).
pub const MAX_BLOCK: u64 = 16 << 20;
/// Largest block written to a file: growth past [`MAX_BLOCK`] only absorbs
/// incompressible data.
pub const CAP: u64 = 256 << 20;
/// Block size when writing to a stream (the block is buffered).
pub const STREAM_BLOCK: u64 = 4 << 20;
/// Largest buffered block on a stream.
pub const STREAM_CAP: u64 = 32 << 20;
/// Uncompressed bytes per snappy frame (the framing format's maximum).
pub const FRAME: usize = 64 * 1024;
/// Frames per compression job: 512 KiB of input. Each job in flight holds
/// its input and output (workers + 3 batches at most), so this size is most of
/// the writer's memory; half a MiB keeps the whole process under AVML's
/// 16.7 MiB peak with two workers, and still makes a job long enough that
/// handing it over costs nothing next to compressing it.
pub const BATCH_FRAMES: usize = 8;

#[cfg(test)]
mod tests;
