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
//!   (16 MiB, as AVML) *and* its stream is at least [`MARGIN`] bytes shorter
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

use crate::{
    check_plan_nonempty, corrupt_in, finish_sink, nonempty_len, read_exact_at, write_all, Format,
    FormatError, ImageFile, ImageReader,
};
use pmem_core::writer::ChunkCursor;
use pmem_core::{
    ByteSink, Chunk, ImageWriter, MemoryMap, PhysicalMemory, Plan, Range, ReadError, SinkSummary,
    WriteError,
};
use std::collections::VecDeque;
#[cfg(test)]
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

pub const MAGIC: u32 = 0x4C4D_5641;
pub const VERSION: u32 = 2;
pub const HEADER_LEN: u64 = 32;
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

/// The snappy framing format's stream identifier chunk.
const STREAM_ID: [u8; 10] = [0xff, 6, 0, 0, b's', b'N', b'a', b'P', b'p', b'Y'];
/// Chunk header (type + 3-byte length) plus masked CRC-32C.
const CHUNK_OVERHEAD: usize = 8;
/// Volatility needs stream length <= block length - 1; keep a margin.
const MARGIN: i64 = 16;

const TYPE_COMPRESSED: u8 = 0x00;
const TYPE_STORED: u8 = 0x01;
const TYPE_STREAM_ID: u8 = 0xff;

/// The CRC the snappy framing format stores: CRC-32C, rotated and offset so
/// that CRCs of data containing CRCs stay well distributed.
pub fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// The block header for `range`.
pub fn header(range: Range) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&VERSION.to_le_bytes());
    h[8..16].copy_from_slice(&range.start.to_le_bytes());
    h[16..24].copy_from_slice(&range.last().to_le_bytes());
    h
}

/// Encodes framing-format data chunks. Keeps the encoder's tables and an
/// output buffer from frame to frame: a fresh, zeroed output for every
/// 64 KiB frame would cost as much as copying the frame again.
pub struct FrameEncoder {
    snappy: snap::raw::Encoder,
    scratch: Vec<u8>,
}

impl Default for FrameEncoder {
    fn default() -> Self {
        FrameEncoder {
            snappy: snap::raw::Encoder::new(),
            scratch: vec![0; snap::raw::max_compress_len(FRAME)],
        }
    }
}

impl FrameEncoder {
    /// Appends one data chunk for `raw` (at most [`FRAME`] bytes) to `out`:
    /// compressed when that is shorter, stored otherwise. Returns the
    /// chunk's length.
    pub fn encode(&mut self, raw: &[u8], out: &mut Vec<u8>) -> usize {
        debug_assert!(!raw.is_empty() && raw.len() <= FRAME);
        let (kind, body) = match self.snappy.compress(raw, &mut self.scratch) {
            Ok(n) if n < raw.len() => (TYPE_COMPRESSED, &self.scratch[..n]),
            // Incompressible (or, never seen, an encoder error): store as is.
            _ => (TYPE_STORED, raw),
        };
        let len = CHUNK_OVERHEAD + body.len();
        let mut head = [0u8; CHUNK_OVERHEAD];
        head[0] = kind;
        head[1..4].copy_from_slice(&((len - 4) as u32).to_le_bytes()[..3]);
        head[4..8].copy_from_slice(&masked_crc(raw).to_le_bytes());
        out.extend_from_slice(&head);
        out.extend_from_slice(body);
        len
    }
}

/// One frame of a batch: where it is and whether it is all zero.
#[derive(Debug, Clone, Copy)]
struct FrameSpec {
    addr: u64,
    len: u32,
    zero: bool,
}

/// A compression job: consecutive frames' raw bytes (zero frames take no
/// room) and where they are.
struct Batch {
    raw: Vec<u8>,
    frames: Vec<FrameSpec>,
}

/// A finished job: the frames' chunks, concatenated (nothing for zero
/// frames), their lengths, and the raw buffer for reuse.
struct Encoded {
    raw: Vec<u8>,
    frames: Vec<FrameSpec>,
    chunks: Vec<u8>,
    lens: Vec<u32>,
}

fn encode_batch(encoder: &mut FrameEncoder, batch: Batch, mut chunks: Vec<u8>) -> Encoded {
    chunks.clear();
    let mut lens = Vec::with_capacity(batch.frames.len());
    let mut at = 0usize;
    for f in &batch.frames {
        if f.zero {
            lens.push(0);
            continue;
        }
        let raw = &batch.raw[at..at + f.len as usize];
        lens.push(encoder.encode(raw, &mut chunks) as u32);
        at += f.len as usize;
    }
    Encoded {
        raw: batch.raw,
        frames: batch.frames,
        chunks,
        lens,
    }
}

/// A compression job: the batch, a buffer for its chunks, where to reply.
type Job = (Batch, Vec<u8>, SyncSender<Encoded>);

/// Compression workers: jobs in, each with its own reply channel so that
/// results are taken back in submission order.
struct Workers {
    jobs: Option<SyncSender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// `n` threads; none when threads cannot be had (then the writer
    /// compresses inline).
    fn spawn(n: usize) -> Workers {
        let (jobs, rx) = mpsc::sync_channel::<Job>(n);
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::new();
        for i in 0..n {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("pmem-snappy-{i}"))
                .spawn(move || {
                    let mut encoder = FrameEncoder::default();
                    loop {
                        // The lock is held only to take one job.
                        let job = match rx.lock() {
                            Ok(guard) => guard.recv(),
                            Err(_) => return,
                        };
                        let Ok((batch, chunks, reply)) = job else {
                            return;
                        };
                        // The writer may have failed and gone: drop the result.
                        let _ = reply.send(encode_batch(&mut encoder, batch, chunks));
                    }
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(_) => break,
            }
        }
        Workers {
            jobs: (!threads.is_empty()).then_some(jobs),
            threads,
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A result on its way back.
enum Pending {
    Worker(Receiver<Encoded>),
    Done(Encoded),
}

/// The block being written.
#[derive(Debug)]
struct OpenBlock {
    /// Image offset of its header (file mode).
    header_at: u64,
    start: u64,
    raw: u64,
    /// Sum of the frames' chunk lengths.
    encoded: u64,
    /// Stream mode: the frames' chunks, written when the block closes.
    buffered: Option<Vec<u8>>,
}

impl OpenBlock {
    /// Block length minus stream length: a block may be closed when this is
    /// at least [`MARGIN`].
    fn slack(&self) -> i64 {
        self.raw as i64 - self.encoded as i64 - STREAM_ID.len() as i64
    }
}

/// Writes AVML v2 blocks.
pub struct AvmlWriter {
    sink: Box<dyn ByteSink>,
    cursor: ChunkCursor,
    /// Inline compression when there are no workers.
    encoder: FrameEncoder,
    workers: Workers,
    in_flight: VecDeque<Pending>,
    max_in_flight: usize,
    /// The batch being filled.
    batch: Batch,
    /// Bytes of the frame being filled (the tail of `batch.raw` when it is
    /// not all zero).
    frame_addr: u64,
    frame_len: usize,
    frame_zero: bool,
    /// The planned ranges, and the one being written.
    ranges: Vec<Range>,
    range: Option<Range>,
    /// Spare buffers.
    spare_raw: Vec<Vec<u8>>,
    spare_chunks: Vec<Vec<u8>>,
    /// The encoded chunk of a full all-zero frame, computed once.
    zero_chunk: Vec<u8>,
    block: Option<OpenBlock>,
    /// The sink can patch: blocks go straight to it.
    direct: bool,
}

impl AvmlWriter {
    pub fn new(sink: Box<dyn ByteSink>) -> AvmlWriter {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        AvmlWriter::with_threads(sink, threads)
    }

    /// A writer compressing on `threads` worker threads (0: inline).
    pub fn with_threads(sink: Box<dyn ByteSink>, threads: usize) -> AvmlWriter {
        let mut encoder = FrameEncoder::default();
        let mut zero_chunk = Vec::new();
        encoder.encode(&[0; FRAME], &mut zero_chunk);
        let direct = sink.can_patch();
        AvmlWriter {
            sink,
            cursor: ChunkCursor::default(),
            encoder,
            workers: Workers::spawn(threads),
            in_flight: VecDeque::new(),
            // Enough jobs queued to keep every worker busy, few enough to
            // bound memory: (threads + 1) x 2 x 1 MiB.
            max_in_flight: threads + 1,
            batch: Batch {
                raw: Vec::with_capacity(BATCH_FRAMES * FRAME),
                frames: Vec::with_capacity(BATCH_FRAMES),
            },
            frame_addr: 0,
            frame_len: 0,
            frame_zero: true,
            ranges: Vec::new(),
            range: None,
            spare_raw: Vec::new(),
            spare_chunks: Vec::new(),
            zero_chunk,
            block: None,
            direct,
        }
    }

    /// Adds `len` bytes to the current frame, from `data` or zeros.
    fn fill(
        &mut self,
        mut addr: u64,
        mut data: Option<&[u8]>,
        mut len: u64,
    ) -> Result<(), WriteError> {
        while len > 0 {
            if self.frame_len == 0 {
                self.frame_addr = addr;
                self.frame_zero = true;
            }
            let n = len.min((FRAME - self.frame_len) as u64) as usize;
            match data {
                Some(d) => {
                    if self.frame_zero {
                        // Zeros so far were not stored: materialise them.
                        let from = self.batch.raw.len();
                        self.batch.raw.resize(from + self.frame_len, 0);
                        self.frame_zero = false;
                    }
                    self.batch.raw.extend_from_slice(&d[..n]);
                    data = Some(&d[n..]);
                }
                None if !self.frame_zero => {
                    let from = self.batch.raw.len();
                    self.batch.raw.resize(from + n, 0);
                }
                None => {}
            }
            self.frame_len += n;
            addr += n as u64;
            len -= n as u64;
            if self.frame_len == FRAME {
                self.end_frame()?;
            }
        }
        Ok(())
    }

    /// Puts the filled frame into the batch; a full batch is submitted.
    fn end_frame(&mut self) -> Result<(), WriteError> {
        if self.frame_len == 0 {
            return Ok(());
        }
        self.batch.frames.push(FrameSpec {
            addr: self.frame_addr,
            len: self.frame_len as u32,
            zero: self.frame_zero,
        });
        self.frame_len = 0;
        if self.batch.frames.len() == BATCH_FRAMES {
            self.submit()?;
        }
        Ok(())
    }

    /// Hands the batch to a worker (or compresses it here), then takes back
    /// finished results while too many are in flight.
    fn submit(&mut self) -> Result<(), WriteError> {
        if self.batch.frames.is_empty() {
            return Ok(());
        }
        let raw = self
            .spare_raw
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BATCH_FRAMES * FRAME));
        let frames = Vec::with_capacity(BATCH_FRAMES);
        let batch = std::mem::replace(&mut self.batch, Batch { raw, frames });
        let chunks = self.spare_chunks.pop().unwrap_or_default();
        let pending = match &self.workers.jobs {
            Some(jobs) => {
                let (reply, result) = mpsc::sync_channel(1);
                match jobs.send((batch, chunks, reply)) {
                    Ok(()) => Pending::Worker(result),
                    Err(mpsc::SendError((batch, chunks, _))) => {
                        Pending::Done(encode_batch(&mut self.encoder, batch, chunks))
                    }
                }
            }
            None => Pending::Done(encode_batch(&mut self.encoder, batch, chunks)),
        };
        self.in_flight.push_back(pending);
        while self.in_flight.len() > self.max_in_flight {
            self.take_one()?;
        }
        Ok(())
    }

    /// Takes back the oldest result and writes its frames.
    fn take_one(&mut self) -> Result<(), WriteError> {
        let encoded = match self.in_flight.pop_front() {
            None => return Ok(()),
            Some(Pending::Done(e)) => e,
            Some(Pending::Worker(rx)) => rx.recv().map_err(|_| WriteError::Io {
                offset: self.sink.position(),
                source: io::Error::other("a compression thread failed"),
            })?,
        };
        let mut at = 0usize;
        for (f, &len) in encoded.frames.iter().zip(&encoded.lens) {
            if f.zero {
                // All-zero frames are written too (a 64 KiB zero frame
                // compresses to about 3 KiB): Volatility 3's AVML layer
                // fails a read that touches a gap between blocks, and its
                // stackers read such pages, so a left-out frame could make
                // the whole image unreadable to it.
                self.push_zero(f.addr, f.len as usize)?;
                self.after_push()?;
            } else {
                let chunk = &encoded.chunks[at..at + len as usize];
                at += len as usize;
                self.data_frame(f.addr, f.len, chunk)?;
            }
        }
        let Encoded {
            mut raw, chunks, ..
        } = encoded;
        raw.clear();
        self.spare_raw.push(raw);
        self.spare_chunks.push(chunks);
        Ok(())
    }

    fn data_frame(&mut self, addr: u64, raw: u32, chunk: &[u8]) -> Result<(), WriteError> {
        self.push(addr, u64::from(raw), chunk)?;
        self.after_push()
    }

    fn push_zero(&mut self, addr: u64, len: usize) -> Result<(), WriteError> {
        if len == FRAME {
            let chunk = std::mem::take(&mut self.zero_chunk);
            let result = self.push(addr, len as u64, &chunk);
            self.zero_chunk = chunk;
            result
        } else {
            let mut chunk = Vec::new();
            self.encoder.encode(&vec![0; len], &mut chunk);
            self.push(addr, len as u64, &chunk)
        }
    }

    /// Appends a frame's chunk to the open block, opening one if needed.
    fn push(&mut self, addr: u64, raw: u64, chunk: &[u8]) -> Result<(), WriteError> {
        if self.block.is_none() {
            let header_at = self.sink.position();
            let buffered = if self.direct {
                // Provisional header (patched on close): held back from the
                // hash until then.
                self.sink.hold(Some(header_at));
                write_all(
                    self.sink.as_mut(),
                    &header(Range::new(addr, addr + 1).expect("one byte")),
                )?;
                write_all(self.sink.as_mut(), &STREAM_ID)?;
                None
            } else {
                Some(Vec::new())
            };
            self.block = Some(OpenBlock {
                header_at,
                start: addr,
                raw: 0,
                encoded: 0,
                buffered,
            });
        }
        let Some(block) = self.block.as_mut() else {
            return Ok(());
        };
        debug_assert_eq!(block.start + block.raw, addr, "blocks are contiguous");
        block.raw += raw;
        block.encoded += chunk.len() as u64;
        match &mut block.buffered {
            Some(buf) => buf.extend_from_slice(chunk),
            None => write_all(self.sink.as_mut(), chunk)?,
        }
        Ok(())
    }

    /// Closes a block that is large enough and pays for itself; refuses one
    /// that has grown to the cap without paying.
    fn after_push(&mut self) -> Result<(), WriteError> {
        let Some(block) = &self.block else {
            return Ok(());
        };
        let (target, cap) = if self.direct {
            (MAX_BLOCK, CAP)
        } else {
            (STREAM_BLOCK, STREAM_CAP)
        };
        if block.raw >= target && block.slack() >= MARGIN {
            return self.close();
        }
        if block.raw >= cap {
            return Err(self.unrepresentable());
        }
        Ok(())
    }

    fn unrepresentable(&self) -> WriteError {
        let (addr, len) = self.block.as_ref().map_or((0, 0), |b| (b.start, b.raw));
        let reason = if self.direct {
            format!(
                "this memory is incompressible: an AVML block holding it (up to {} MiB) would \
                 be longer compressed than raw, which makes Volatility 3 hang",
                CAP >> 20
            )
        } else {
            format!(
                "this memory is incompressible: an AVML block holding it would be longer \
                 compressed than raw (which makes Volatility 3 hang), and a stream cannot \
                 buffer more than {} MiB to find compressible data: write to a file",
                STREAM_CAP >> 20
            )
        };
        WriteError::Unrepresentable { addr, len, reason }
    }

    /// Writes the open block's trailer and its final header.
    fn close(&mut self) -> Result<(), WriteError> {
        let Some(block) = self.block.take() else {
            return Ok(());
        };
        debug_assert!(block.slack() >= MARGIN);
        let range = Range::new(block.start, block.start + block.raw)
            .expect("an open block holds at least one frame");
        let stream = STREAM_ID.len() as u64 + block.encoded;
        match &block.buffered {
            Some(chunks) => {
                write_all(self.sink.as_mut(), &header(range))?;
                write_all(self.sink.as_mut(), &STREAM_ID)?;
                write_all(self.sink.as_mut(), chunks)?;
                write_all(self.sink.as_mut(), &stream.to_le_bytes())?;
            }
            None => {
                write_all(self.sink.as_mut(), &stream.to_le_bytes())?;
                self.sink
                    .patch(block.header_at, &header(range))
                    .map_err(|source| WriteError::Io {
                        offset: block.header_at,
                        source,
                    })?;
                self.sink.hold(None);
            }
        }
        Ok(())
    }

    /// At the end of a range: everything pending must go out now.
    fn end_range(&mut self) -> Result<(), WriteError> {
        self.end_frame()?;
        self.submit()?;
        while !self.in_flight.is_empty() {
            self.take_one()?;
        }
        match &self.block {
            None => Ok(()),
            Some(b) if b.slack() >= MARGIN => self.close(),
            Some(_) => Err(self.unrepresentable()),
        }
    }
}

impl ImageWriter for AvmlWriter {
    fn begin(&mut self, plan: &Plan) -> Result<(), WriteError> {
        check_plan_nonempty(plan, Format::Avml)?;
        self.cursor = ChunkCursor::new(&plan.ranges);
        self.ranges = plan.ranges.ranges().to_vec();
        Ok(())
    }

    fn write_chunk(&mut self, addr: u64, chunk: Chunk<'_>) -> Result<(), WriteError> {
        let position = self.cursor.advance(addr, chunk.len())?;
        self.range = self.ranges.get(position.range_index).copied();
        match chunk {
            Chunk::Data(d) => self.fill(addr, Some(d), d.len() as u64)?,
            Chunk::Zero(n) => self.fill(addr, None, n)?,
        }
        if position.ends_range {
            self.end_range()?;
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<SinkSummary, WriteError> {
        finish_sink(self.sink, &self.cursor)
    }
}

/// One record of an AVML file, as found when opening it.
#[derive(Debug, Clone, Copy)]
struct BlockIndex {
    range: Range,
    /// File offset of the first chunk after the stream identifier.
    first_chunk: u64,
    /// File offset just past the stream's last chunk.
    stream_end: u64,
}

/// Where sequential reads left off inside a block.
#[derive(Debug, Clone, Copy)]
struct ChunkPos {
    block: usize,
    /// File offset of the chunk header.
    offset: u64,
    /// Physical address of the chunk's first byte.
    addr: u64,
}

/// An AVML v2 file opened for reading. Opening walks every chunk header
/// (not the data) to find the records; reads decode one 64 KiB chunk at a
/// time, so memory stays small whatever the image size.
#[derive(Debug)]
pub struct AvmlReader {
    path: PathBuf,
    file: ImageFile,
    map: MemoryMap,
    blocks: Vec<BlockIndex>,
    pos: Option<ChunkPos>,
    /// The decoded chunk at `cached_addr` (empty when none).
    cached: Vec<u8>,
    cached_addr: u64,
    compressed: Vec<u8>,
    decoder: snap::raw::Decoder,
}

/// A parsed chunk header.
#[derive(Debug, Clone, Copy)]
struct ChunkHeader {
    kind: u8,
    /// Length after the 4-byte header.
    len: u64,
}

fn read_chunk_header(
    path: &Path,
    file: &ImageFile,
    offset: u64,
) -> Result<ChunkHeader, FormatError> {
    let mut h = [0u8; 4];
    read_exact_at(path, file, offset, &mut h)?;
    Ok(ChunkHeader {
        kind: h[0],
        len: u64::from(u32::from_le_bytes([h[1], h[2], h[3], 0])),
    })
}

/// The uncompressed length a snappy block announces (its varint preamble).
fn snappy_len(bytes: &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, b) in bytes.iter().take(5).enumerate() {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

impl AvmlReader {
    pub fn open(path: &Path, file: impl Into<ImageFile>) -> Result<AvmlReader, FormatError> {
        let file: ImageFile = file.into();
        let len = nonempty_len(path, &file)?;
        let corrupt = corrupt_in(path, Format::Avml);
        let mut blocks: Vec<BlockIndex> = Vec::new();
        let mut offset = 0u64;
        while offset < len {
            if len - offset < HEADER_LEN {
                return Err(corrupt(
                    offset,
                    format!("truncated block header: {} bytes left", len - offset),
                ));
            }
            let mut h = [0u8; HEADER_LEN as usize];
            read_exact_at(path, &file, offset, &mut h)?;
            let u32_at = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().expect("4 bytes"));
            let u64_at = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().expect("8 bytes"));
            let (magic, version, start, last) = (u32_at(0), u32_at(4), u64_at(8), u64_at(16));
            if magic != MAGIC {
                return Err(corrupt(
                    offset,
                    format!("bad block magic {magic:#010x}, expected {MAGIC:#010x} (\"AVML\"); an AVML file cannot mix LiME and AVML records"),
                ));
            }
            if version != VERSION {
                return Err(corrupt(
                    offset,
                    format!("block version {version}, only version {VERSION} is supported"),
                ));
            }
            let range = Range::from_inclusive(start, last).ok_or_else(|| {
                corrupt(offset, format!("block range {start:#x}-{last:#x} (inclusive end) is reversed or ends at 2^64"))
            })?;
            if let Some(previous) = blocks.last() {
                if range.start < previous.range.end {
                    return Err(corrupt(offset, format!("block {range} overlaps or precedes the previous block {}: blocks must ascend", previous.range)));
                }
            }
            let stream_start = offset + HEADER_LEN;
            // Walk the chunks: headers and, for compressed chunks, the
            // length preamble; never the data.
            let mut at = stream_start;
            let mut decoded = 0u64;
            let mut first_chunk = None;
            while decoded < range.len() {
                if len - at.min(len) < 4 {
                    return Err(corrupt(
                        at,
                        format!(
                            "block {range}: stream truncated after {decoded:#x} of {:#x} bytes",
                            range.len()
                        ),
                    ));
                }
                let ch = read_chunk_header(path, &file, at)?;
                if ch.len > len - at - 4 {
                    return Err(corrupt(
                        at,
                        format!("chunk of {:#x} bytes runs past the end of the file", ch.len),
                    ));
                }
                match ch.kind {
                    TYPE_STREAM_ID => {
                        let mut id = [0u8; 10];
                        if ch.len != 6 {
                            return Err(corrupt(at, "bad snappy stream identifier length".into()));
                        }
                        read_exact_at(path, &file, at, &mut id)?;
                        if id != STREAM_ID {
                            return Err(corrupt(at, "bad snappy stream identifier".into()));
                        }
                    }
                    _ if first_chunk.is_none() && at == stream_start => {
                        return Err(corrupt(
                            at,
                            "snappy stream does not start with its stream identifier".into(),
                        ));
                    }
                    TYPE_COMPRESSED | TYPE_STORED => {
                        first_chunk.get_or_insert(at);
                        let n = if ch.kind == TYPE_STORED {
                            ch.len.checked_sub(4)
                        } else {
                            let mut pre = [0u8; 9];
                            let avail = ch.len.min(9) as usize;
                            read_exact_at(path, &file, at + 4, &mut pre[..avail])?;
                            pre.get(4..avail).and_then(snappy_len)
                        };
                        let n = match n {
                            Some(n) if n > 0 && n <= FRAME as u64 => n,
                            _ => {
                                return Err(corrupt(
                                    at,
                                    format!("data chunk of type {:#04x} has a bad length", ch.kind),
                                ))
                            }
                        };
                        decoded += n;
                        if decoded > range.len() {
                            return Err(corrupt(
                                at,
                                format!(
                                    "block {range}: stream holds more than the block's {:#x} bytes",
                                    range.len()
                                ),
                            ));
                        }
                    }
                    0x02..=0x7f => {
                        return Err(corrupt(
                            at,
                            format!("reserved unskippable snappy chunk type {:#04x}", ch.kind),
                        ));
                    }
                    // Padding and reserved skippable chunks.
                    _ => {}
                }
                at += 4 + ch.len;
            }
            let first_chunk = first_chunk.unwrap_or(at);
            if len - at < 8 {
                return Err(corrupt(
                    at,
                    "missing the stream length after the block's snappy stream".into(),
                ));
            }
            let mut trailer = [0u8; 8];
            read_exact_at(path, &file, at, &mut trailer)?;
            let stated = u64::from_le_bytes(trailer);
            if stated != at - stream_start {
                return Err(corrupt(
                    at,
                    format!(
                        "block {range}: stream length says {stated:#x}, the stream is {:#x} bytes",
                        at - stream_start
                    ),
                ));
            }
            blocks.push(BlockIndex {
                range,
                first_chunk,
                stream_end: at,
            });
            offset = at + 8;
        }
        // Adjacent blocks read as one range.
        let map = MemoryMap::normalized(blocks.iter().map(|b| b.range).collect());
        Ok(AvmlReader {
            path: path.into(),
            file,
            map,
            blocks,
            pos: None,
            cached: Vec::new(),
            cached_addr: 0,
            compressed: Vec::new(),
            decoder: snap::raw::Decoder::new(),
        })
    }

    fn fatal(&self, addr: u64, offset: u64, reason: String) -> ReadError {
        ReadError::Fatal {
            what: format!("{}: at file offset {offset:#x}", self.path.display()),
            addr,
            source: io::Error::new(io::ErrorKind::InvalidData, reason),
        }
    }

    fn io_fatal(&self, addr: u64, err: FormatError) -> ReadError {
        let offset = err.offset();
        self.fatal(addr, offset, err.to_string())
    }

    /// Decodes the chunk holding `addr` into `self.cached`.
    fn load(&mut self, addr: u64) -> Result<(), ReadError> {
        let block = match self.blocks.partition_point(|b| b.range.end <= addr) {
            i if i < self.blocks.len() && self.blocks[i].range.contains(addr) => i,
            _ => return Err(self.fatal(addr, 0, "address not held by any block".into())),
        };
        let b = self.blocks[block];
        let mut pos = match self.pos {
            Some(p) if p.block == block && p.addr <= addr => p,
            _ => ChunkPos {
                block,
                offset: b.first_chunk,
                addr: b.range.start,
            },
        };
        loop {
            if pos.offset >= b.stream_end {
                return Err(self.fatal(addr, pos.offset, "stream ended before the address".into()));
            }
            let ch = read_chunk_header(&self.path, &self.file, pos.offset)
                .map_err(|e| self.io_fatal(addr, e))?;
            let body = pos.offset + 4;
            let next = body + ch.len;
            if ch.kind != TYPE_COMPRESSED && ch.kind != TYPE_STORED {
                pos.offset = next;
                continue;
            }
            // Lengths were checked at open time (<= 64 KiB + overhead).
            let mut payload = std::mem::take(&mut self.compressed);
            payload.resize(ch.len as usize, 0);
            let read = read_exact_at(&self.path, &self.file, body, &mut payload);
            if let Err(e) = read {
                self.compressed = payload;
                return Err(self.io_fatal(addr, e));
            }
            let crc = u32::from_le_bytes(payload[..4].try_into().expect("4 bytes"));
            let mut out = std::mem::take(&mut self.cached);
            let decoded = if ch.kind == TYPE_STORED {
                out.clear();
                out.extend_from_slice(&payload[4..]);
                Ok(())
            } else {
                match snap::raw::decompress_len(&payload[4..]) {
                    Ok(n) if n > 0 && n <= FRAME => {
                        out.resize(n, 0);
                        self.decoder
                            .decompress(&payload[4..], &mut out)
                            .map(|_| ())
                            .map_err(|e| format!("snappy data does not decode: {e}"))
                    }
                    _ => Err("bad snappy length preamble".to_string()),
                }
            };
            self.compressed = payload;
            if let Err(reason) = decoded {
                self.cached = out;
                return Err(self.fatal(addr, pos.offset, reason));
            }
            if masked_crc(&out) != crc {
                self.cached = out;
                return Err(self.fatal(addr, pos.offset, "CRC-32C mismatch: corrupt chunk".into()));
            }
            let chunk_addr = pos.addr;
            pos.addr += out.len() as u64;
            pos.offset = next;
            self.cached = out;
            self.cached_addr = chunk_addr;
            if addr < pos.addr {
                self.pos = Some(pos);
                return Ok(());
            }
        }
    }
}

impl PhysicalMemory for AvmlReader {
    fn memory_map(&self) -> &MemoryMap {
        &self.map
    }

    fn read_at(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        if !self.map.covers(addr, buf.len() as u64) {
            return Err(self.fatal(
                addr,
                0,
                format!(
                    "{:#x} bytes requested outside the image's ranges",
                    buf.len()
                ),
            ));
        }
        let mut done = 0usize;
        while done < buf.len() {
            let at = addr + done as u64;
            let cached_end = self.cached_addr + self.cached.len() as u64;
            if !(self.cached_addr <= at && at < cached_end) {
                self.load(at)?;
            }
            let from = (at - self.cached_addr) as usize;
            let n = (self.cached.len() - from).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&self.cached[from..from + n]);
            done += n;
        }
        Ok(())
    }
}

impl ImageReader for AvmlReader {
    fn format(&self) -> Format {
        Format::Avml
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::map;
    use pmem_core::sink::HashingSink;
    use pmem_core::{Arch, ByteSink};

    /// Deterministic incompressible bytes.
    fn random(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect()
    }

    /// Compressible, never all zero.
    fn text(len: usize, salt: u8) -> Vec<u8> {
        (0..len)
            .map(|i| b"memory acquisition "[i % 19] ^ salt)
            .collect()
    }

    /// Writes `content` (one Vec per range) as AVML, returning the file or
    /// the writer's error.
    fn write(
        ranges: &MemoryMap,
        content: &[Vec<u8>],
    ) -> (tempfile::TempDir, PathBuf, Result<SinkSummary, WriteError>) {
        write_with(ranges, content, true, 2)
    }

    /// `direct`: a readable file (blocks streamed, headers patched) or a
    /// write-only one (blocks buffered, as on a pipe).
    fn write_with(
        ranges: &MemoryMap,
        content: &[Vec<u8>],
        direct: bool,
        threads: usize,
    ) -> (tempfile::TempDir, PathBuf, Result<SinkSummary, WriteError>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img.avml");
        let file = if direct {
            pmem_core::sink::create_image_file(&path, false).unwrap()
        } else {
            File::create(&path).unwrap()
        };
        let sink = Box::new(HashingSink::file(file));
        assert_eq!(sink.can_patch(), direct);
        let mut w: Box<dyn ImageWriter> = Box::new(AvmlWriter::with_threads(sink, threads));
        let result = (|| {
            w.begin(&Plan::new(ranges.clone(), Arch::X86_64))?;
            for (range, data) in ranges.ranges().iter().zip(content) {
                // Feed in uneven pieces, zero pages as Zero chunks.
                let mut at = 0usize;
                while at < data.len() {
                    let n = (data.len() - at).min(12288 + at % 7 * 4096);
                    let piece = &data[at..at + n];
                    let addr = range.start + at as u64;
                    if piece.iter().all(|&b| b == 0) {
                        w.write_chunk(addr, Chunk::Zero(n as u64))?;
                    } else {
                        w.write_chunk(addr, Chunk::Data(piece))?;
                    }
                    at += n;
                }
            }
            w.finish()
        })();
        (dir, path, result)
    }

    /// Parses the file independently of the reader: every block's stream
    /// must be shorter than its block (Volatility's condition).
    fn block_shapes(bytes: &[u8]) -> Vec<(u64, u64, u64)> {
        let mut shapes = Vec::new();
        let mut at = 0usize;
        while at < bytes.len() {
            let start = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().unwrap());
            let last = u64::from_le_bytes(bytes[at + 16..at + 24].try_into().unwrap());
            let mut off = at + 32;
            assert_eq!(&bytes[off..off + 10], &STREAM_ID);
            off += 10;
            let mut decoded = 0u64;
            while decoded < last - start + 1 {
                let len = u32::from_le_bytes([bytes[off + 1], bytes[off + 2], bytes[off + 3], 0])
                    as usize;
                let body = &bytes[off + 8..off + 4 + len];
                decoded += match bytes[off] {
                    0 => snap::raw::decompress_len(body).unwrap() as u64,
                    1 => body.len() as u64,
                    t => panic!("chunk type {t}"),
                };
                off += 4 + len;
            }
            let stream = (off - at - 32) as u64;
            assert_eq!(
                u64::from_le_bytes(bytes[off..off + 8].try_into().unwrap()),
                stream
            );
            let block = last - start + 1;
            assert!(
                stream < block,
                "block {start:#x}: stream {stream} >= block {block}"
            );
            assert!(block <= CAP);
            shapes.push((start, block, stream));
            at = off + 8;
        }
        shapes
    }

    fn read_all(path: &Path) -> AvmlReader {
        AvmlReader::open(path, File::open(path).unwrap()).unwrap()
    }

    #[test]
    fn round_trip_mixed_with_zero_gaps() {
        let mut a = text(3 << 20, 1);
        a.extend(vec![0u8; 1 << 20]); // written as compressed zero frames
        a.extend(random(7, 5 << 20)); // needs donors on both sides
        a.extend(text(3 << 20, 2));
        let b = random(9, 3 << 19);
        let mut b2 = text(1 << 20, 3);
        b2.extend(b);
        b2.extend(text(100_000, 4));
        let ranges = map(&[
            (0x10_0000, 0x10_0000 + a.len() as u64),
            (1 << 32, (1 << 32) + b2.len() as u64),
        ]);
        let (_dir, path, result) = write(&ranges, &[a.clone(), b2.clone()]);
        let summary = result.unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(summary.bytes, bytes.len() as u64);
        block_shapes(&bytes);
        let mut r = read_all(&path);
        // The zero MiB is in the image too: no gaps inside a range.
        assert_eq!(r.memory_map(), &ranges);
        for (range, data) in ranges.ranges().iter().zip([&a, &b2]) {
            for piece in r
                .memory_map()
                .intersect(&MemoryMap::new(vec![*range]).unwrap())
                .ranges()
                .to_vec()
            {
                let mut buf = vec![0u8; piece.len() as usize];
                r.read_at(piece.start, &mut buf).unwrap();
                let off = (piece.start - range.start) as usize;
                assert!(buf == data[off..off + buf.len()], "range {piece}");
            }
        }
        // Random access backwards and inside chunks.
        let mut one = [0u8; 3];
        r.read_at(0x10_0000 + 70_000, &mut one).unwrap();
        assert_eq!(one[..], a[70_000..70_003]);
        r.read_at(0x10_0000 + 5, &mut one).unwrap();
        assert_eq!(one[..], a[5..8]);
    }

    #[test]
    fn every_range_is_written_whole_zeros_included() {
        // Zeros at both ends of a range, inside it, and a range of zeros
        // only (with a partial last frame): the blocks cover both ranges
        // exactly, so no read of a listed address falls into a gap.
        let mut a = vec![0u8; 3 * FRAME];
        a.extend(text(2 * FRAME, 1));
        a.extend(vec![0u8; 4 * FRAME]);
        a.extend(text(FRAME, 2));
        a.extend(vec![0u8; 3 * FRAME]);
        let b = vec![0u8; 5 * FRAME + 4096];
        let ranges = map(&[
            (0x10_0000, 0x10_0000 + a.len() as u64),
            (1 << 32, (1 << 32) + b.len() as u64),
        ]);
        let (_dir, path, result) = write(&ranges, &[a.clone(), b.clone()]);
        result.unwrap();
        let mut r = read_all(&path);
        assert_eq!(r.memory_map(), &ranges);
        check_content(&path, &ranges, &[a, b]);
        let mut page = vec![1u8; 4096];
        r.read_at((1 << 32) + 5 * FRAME as u64, &mut page).unwrap();
        assert!(page.iter().all(|&x| x == 0));
    }

    #[test]
    fn incompressible_stretch_is_refused_not_written() {
        let data = random(3, 40 << 20);
        let ranges = map(&[(0, data.len() as u64)]);
        let content = [data];
        let (_dir, _path, result) = write(&ranges, &content);
        assert!(
            matches!(result, Err(WriteError::Unrepresentable { .. })),
            "{result:?}"
        );
        // Buffered (stream) blocks: whatever was written before the error
        // holds no bad block. (On a file the unfinished block is left behind
        // a provisional header; the CLI starts the file again.)
        let (_dir, path, result) = write_with(&ranges, &content, false, 1);
        assert!(matches!(result, Err(WriteError::Unrepresentable { .. })));
        block_shapes(&std::fs::read(&path).unwrap());
    }

    #[test]
    fn short_incompressible_range_is_refused() {
        let data = random(5, 8192);
        let ranges = map(&[(0, 8192)]);
        let (_dir, _path, result) = write(&ranges, &[data]);
        assert!(matches!(result, Err(WriteError::Unrepresentable { .. })));
    }

    #[test]
    fn incompressible_after_zero_borrows_the_zero_frame() {
        let mut data = vec![0u8; 1 << 20];
        data.extend(random(11, 6 << 20));
        data.extend(vec![0u8; 1 << 20]);
        let ranges = map(&[(0, data.len() as u64)]);
        let (_dir, path, result) = write(&ranges, &[data.clone()]);
        result.unwrap();
        let shapes = block_shapes(&std::fs::read(&path).unwrap());
        let mut r = read_all(&path);
        for range in r.memory_map().ranges().to_vec() {
            let mut buf = vec![0u8; range.len() as usize];
            r.read_at(range.start, &mut buf).unwrap();
            assert!(buf == data[range.start as usize..range.end as usize]);
        }
        assert!(shapes.len() <= 3, "{shapes:?}");
    }

    fn check_content(path: &Path, ranges: &MemoryMap, content: &[Vec<u8>]) {
        let mut r = read_all(path);
        for (range, data) in ranges.ranges().iter().zip(content) {
            for piece in r
                .memory_map()
                .intersect(&MemoryMap::new(vec![*range]).unwrap())
                .ranges()
                .to_vec()
            {
                let mut buf = vec![0u8; piece.len() as usize];
                r.read_at(piece.start, &mut buf).unwrap();
                let off = (piece.start - range.start) as usize;
                assert!(buf == data[off..off + buf.len()], "range {piece}");
            }
        }
    }

    #[test]
    fn incompressible_stretch_grows_a_block_past_16_mib_on_a_file() {
        let mut data = text(3 << 20, 1);
        data.extend(random(21, 40 << 20));
        data.extend(text(1 << 20, 2));
        let ranges = map(&[(0, data.len() as u64)]);
        let content = [data];
        let (_dir, path, result) = write(&ranges, &content);
        let summary = result.unwrap();
        let bytes = std::fs::read(&path).unwrap();
        // The hash covers the patched headers: as a plain stream of the bytes.
        let mut again = Box::new(HashingSink::stream(Box::new(io::sink())));
        again.write_all(&bytes).unwrap();
        assert_eq!(summary, again.finish().unwrap());
        let shapes = block_shapes(&bytes);
        assert!(shapes.iter().any(|s| s.1 > MAX_BLOCK), "{shapes:?}");
        check_content(&path, &ranges, &content);
        // On a stream the block cannot grow that far: refused early.
        let (_dir, path, result) = write_with(&ranges, &content, false, 1);
        match result {
            Err(WriteError::Unrepresentable { reason, .. }) => {
                assert!(reason.contains("write to a file"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        block_shapes(&std::fs::read(&path).unwrap());
    }

    #[test]
    fn output_is_the_same_whatever_the_threads() {
        let mut data = text(5 << 20, 3);
        data.extend(vec![0u8; 3 << 20]);
        data.extend(random(5, 2 << 20));
        data.extend(text(70_000, 4));
        let ranges = map(&[(0x1000, 0x1000 + data.len() as u64)]);
        let content = [data];
        let (_d0, p0, r0) = write_with(&ranges, &content, true, 0);
        let (_d3, p3, r3) = write_with(&ranges, &content, true, 3);
        assert_eq!(r0.unwrap(), r3.unwrap());
        assert!(std::fs::read(&p0).unwrap() == std::fs::read(&p3).unwrap());
        check_content(&p0, &ranges, &content);
        // Buffered (stream) mode: smaller blocks, same memory.
        let (_ds, ps, rs) = write_with(&ranges, &content, false, 2);
        rs.unwrap();
        block_shapes(&std::fs::read(&ps).unwrap());
        check_content(&ps, &ranges, &content);
    }

    fn small_image() -> (tempfile::TempDir, PathBuf, Vec<u8>) {
        let mut data = text(300_000, 1);
        data.extend(random(1, 100_000));
        let ranges = map(&[(0x1000, 0x1000 + data.len() as u64)]);
        let (dir, path, result) = write(&ranges, &[data]);
        result.unwrap();
        let bytes = std::fs::read(&path).unwrap();
        (dir, path, bytes)
    }

    fn reopen(path: &Path, bytes: &[u8]) -> Result<AvmlReader, FormatError> {
        std::fs::write(path, bytes).unwrap();
        AvmlReader::open(path, File::open(path).unwrap())
    }

    #[test]
    fn corrupt_chunks_are_named_by_offset() {
        let (_dir, path, bytes) = small_image();
        // A flipped data byte: the chunk's CRC catches it on read.
        let mut bad = bytes.clone();
        let first_chunk = 32 + 10;
        bad[first_chunk + 20] ^= 0x55;
        let mut r = reopen(&path, &bad).unwrap();
        let mut buf = vec![0u8; 400_000];
        let err = r.read_at(0x1000, &mut buf).unwrap_err().to_string();
        assert!(
            err.contains(&format!("file offset {first_chunk:#x}")),
            "{err}"
        );
        // A chunk length past the end of the file.
        let mut bad = bytes.clone();
        bad[first_chunk + 3] = 0x7f;
        let err = reopen(&path, &bad).unwrap_err();
        assert_eq!(err.offset(), first_chunk as u64);
        // Truncation anywhere is an error, never a panic.
        for cut in [
            1,
            31,
            33,
            45,
            bytes.len() / 2,
            bytes.len() - 8,
            bytes.len() - 1,
        ] {
            assert!(reopen(&path, &bytes[..cut]).is_err(), "cut at {cut}");
        }
        // A wrong stream length.
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - 8] ^= 1;
        assert!(reopen(&path, &bad)
            .unwrap_err()
            .to_string()
            .contains("stream length"));
        // A huge compressed-length preamble is refused before allocating.
        let mut bad = bytes.clone();
        assert_eq!(bad[first_chunk], 0);
        bad[first_chunk + 8..first_chunk + 13].copy_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(reopen(&path, &bad).is_err());
        // Every single-byte change in the headers fails cleanly or reads.
        for i in 0..60 {
            let mut bad = bytes.clone();
            bad[i] ^= 0xa5;
            if let Ok(mut r) = reopen(&path, &bad) {
                let ranges = r.memory_map().ranges().to_vec();
                for range in ranges {
                    let mut buf = vec![0u8; range.len().min(1 << 20) as usize];
                    let _ = r.read_at(range.start, &mut buf);
                }
            }
        }
    }
}
