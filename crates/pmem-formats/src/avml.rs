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
//!   block: block boundaries are chosen so that every block carries enough
//!   compressible data ("slack") to pay for its incompressible frames; a
//!   stretch that no block of at most 16 MiB can pay for makes the writer
//!   fail with [`WriteError::Unrepresentable`] before writing that block,
//!   and the CLI falls back to plain LiME for the whole image.
//! * AVML's `avml-convert` decodes exactly `end - start + 1` bytes from the
//!   stream and then skips 8 bytes, so a stream must not carry anything
//!   after its last data chunk.
//!
//! All-zero 64 KiB frames between blocks are left out of the image (a gap
//! between records), as AVML leaves out all-zero 16 MiB blocks; the
//! pipeline's report and the manifest keep the fact that they were read and
//! found zero.

use crate::{
    check_plan_nonempty, file_len, finish_sink, read_exact_at, write_all, Format, FormatError,
    ImageReader,
};
use pmem_core::writer::ChunkCursor;
use pmem_core::{
    ByteSink, Chunk, ImageWriter, MemoryMap, PhysicalMemory, Plan, Range, ReadError, SinkSummary,
    WriteError,
};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

pub const MAGIC: u32 = 0x4C4D_5641;
pub const VERSION: u32 = 2;
pub const HEADER_LEN: u64 = 32;
/// Largest block written, as AVML: readers hold a block's stream in memory.
pub const MAX_BLOCK: u64 = 16 << 20;
/// Blocks are closed once this large (when the next one keeps a donor), so
/// the writer buffers little compressed data in the common case.
pub const TARGET_BLOCK: u64 = 2 << 20;
/// Uncompressed bytes per snappy frame (the framing format's maximum).
pub const FRAME: usize = 64 * 1024;

/// The snappy framing format's stream identifier chunk.
const STREAM_ID: [u8; 10] = [0xff, 6, 0, 0, b's', b'N', b'a', b'P', b'p', b'Y'];
/// Chunk header (type + 3-byte length) plus masked CRC-32C.
const CHUNK_OVERHEAD: usize = 8;
/// Volatility needs stream length <= block length - 1; keep a margin.
const MARGIN: i64 = 16;
/// Slack a block keeps in its tail for the next block: enough for the next
/// block to be 16 MiB of incompressible frames.
const RESERVE: i64 = ((MAX_BLOCK as usize / FRAME) * CHUNK_OVERHEAD) as i64 + 64;

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

/// Appends one framing-format data chunk for `raw` to `out`: compressed
/// when that is shorter, stored otherwise. Returns the chunk's length.
pub fn encode_frame(encoder: &mut snap::raw::Encoder, raw: &[u8], out: &mut Vec<u8>) -> usize {
    debug_assert!(!raw.is_empty() && raw.len() <= FRAME);
    let at = out.len();
    out.extend_from_slice(&[0; CHUNK_OVERHEAD]);
    out.resize(
        at + CHUNK_OVERHEAD + snap::raw::max_compress_len(raw.len()),
        0,
    );
    let kind = match encoder.compress(raw, &mut out[at + CHUNK_OVERHEAD..]) {
        Ok(n) if n < raw.len() => {
            out.truncate(at + CHUNK_OVERHEAD + n);
            TYPE_COMPRESSED
        }
        // Incompressible (or, never seen, an encoder error): store as is.
        _ => {
            out.truncate(at + CHUNK_OVERHEAD);
            out.extend_from_slice(raw);
            TYPE_STORED
        }
    };
    let len = out.len() - at;
    let body = (len - 4) as u32;
    out[at] = kind;
    out[at + 1..at + 4].copy_from_slice(&body.to_le_bytes()[..3]);
    out[at + 4..at + 8].copy_from_slice(&masked_crc(raw).to_le_bytes());
    len
}

/// One encoded frame of the block being built.
#[derive(Debug, Clone, Copy)]
struct FrameInfo {
    raw: u32,
    /// Chunk length in the stream, header included.
    encoded: u32,
}

impl FrameInfo {
    /// What the frame saves against its raw length (negative when stored).
    fn saving(&self) -> i64 {
        i64::from(self.raw) - i64::from(self.encoded)
    }
}

/// The block being built: consecutive frames of one range.
#[derive(Debug, Default)]
struct PendingBlock {
    start: u64,
    frames: Vec<FrameInfo>,
    /// The frames' chunks, concatenated.
    bytes: Vec<u8>,
    raw: u64,
    saving: i64,
}

impl PendingBlock {
    /// Stream length minus block length, negated: a block is writable when
    /// this is at least [`MARGIN`].
    fn slack(&self) -> i64 {
        self.saving - STREAM_ID.len() as i64
    }

    fn push(&mut self, addr: u64, raw: u32, chunk: &[u8]) {
        if self.frames.is_empty() {
            self.start = addr;
        }
        let f = FrameInfo {
            raw,
            encoded: chunk.len() as u32,
        };
        self.frames.push(f);
        self.bytes.extend_from_slice(chunk);
        self.raw += u64::from(raw);
        self.saving += f.saving();
    }
}

/// Writes AVML v2 blocks.
pub struct AvmlWriter {
    sink: Box<dyn ByteSink>,
    ranges: MemoryMap,
    cursor: ChunkCursor,
    encoder: snap::raw::Encoder,
    /// Raw bytes of the frame being filled.
    frame: Vec<u8>,
    frame_addr: u64,
    /// No data chunk has contributed to the frame: it is all zero.
    frame_zero: bool,
    /// The encoded chunk of a full all-zero frame, computed once.
    zero_chunk: Vec<u8>,
    /// An all-zero frame just left out, kept as a potential donor for an
    /// incompressible frame right after it: (address, length).
    held_zero: Option<(u64, usize)>,
    block: PendingBlock,
    /// Scratch for one encoded frame.
    scratch: Vec<u8>,
}

impl AvmlWriter {
    pub fn new(sink: Box<dyn ByteSink>) -> AvmlWriter {
        let mut encoder = snap::raw::Encoder::new();
        let mut zero_chunk = Vec::new();
        encode_frame(&mut encoder, &[0; FRAME], &mut zero_chunk);
        AvmlWriter {
            sink,
            ranges: MemoryMap::default(),
            cursor: ChunkCursor::default(),
            encoder,
            frame: Vec::with_capacity(FRAME),
            frame_addr: 0,
            frame_zero: true,
            zero_chunk,
            held_zero: None,
            block: PendingBlock::default(),
            scratch: Vec::with_capacity(CHUNK_OVERHEAD + snap::raw::max_compress_len(FRAME)),
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
            if self.frame.is_empty() {
                self.frame_addr = addr;
                self.frame_zero = true;
            }
            let room = FRAME - self.frame.len();
            let n = len.min(room as u64) as usize;
            match data {
                Some(d) => {
                    self.frame.extend_from_slice(&d[..n]);
                    self.frame_zero = false;
                    data = Some(&d[n..]);
                }
                None => self.frame.resize(self.frame.len() + n, 0),
            }
            addr += n as u64;
            len -= n as u64;
            if self.frame.len() == FRAME {
                self.end_frame()?;
            }
        }
        Ok(())
    }

    /// Encodes the current frame and decides where it goes.
    fn end_frame(&mut self) -> Result<(), WriteError> {
        if self.frame.is_empty() {
            return Ok(());
        }
        let addr = self.frame_addr;
        let raw = self.frame.len();
        if self.frame_zero {
            self.frame.clear();
            return self.zero_frame(addr, raw);
        }
        self.scratch.clear();
        encode_frame(&mut self.encoder, &self.frame, &mut self.scratch);
        self.frame.clear();
        let saving = raw as i64 - self.scratch.len() as i64;
        if let Some((zaddr, zlen)) = self.held_zero.take() {
            // An incompressible frame right after a left-out zero frame
            // starts a block: take the zero frame back in as its donor.
            if saving < RESERVE && self.block.frames.is_empty() && zaddr + zlen as u64 == addr {
                self.push_zero(zaddr, zlen);
            }
        }
        let chunk = std::mem::take(&mut self.scratch);
        self.block.push(addr, raw as u32, &chunk);
        self.scratch = chunk;
        self.after_push()
    }

    fn push_zero(&mut self, addr: u64, len: usize) {
        if len == FRAME {
            let chunk = std::mem::take(&mut self.zero_chunk);
            self.block.push(addr, len as u32, &chunk);
            self.zero_chunk = chunk;
        } else {
            let mut chunk = Vec::new();
            encode_frame(&mut self.encoder, &vec![0; len], &mut chunk);
            self.block.push(addr, len as u32, &chunk);
        }
    }

    /// An all-zero frame: left out of the image unless the open block needs
    /// it as a donor.
    fn zero_frame(&mut self, addr: u64, len: usize) -> Result<(), WriteError> {
        if self.block.frames.is_empty() {
            self.held_zero = Some((addr, len));
            return Ok(());
        }
        if self.block.slack() >= MARGIN {
            self.emit(self.block.frames.len())?;
            self.held_zero = Some((addr, len));
            return Ok(());
        }
        self.push_zero(addr, len);
        self.after_push()
    }

    /// Closes blocks that have grown large enough.
    fn after_push(&mut self) -> Result<(), WriteError> {
        if self.block.raw >= MAX_BLOCK {
            // Longest prefix that is writable on its own; the rest (frames
            // that did not pay for themselves) waits for a donor after it.
            let mut best = None;
            let mut saving = 0i64;
            for (i, f) in self.block.frames.iter().enumerate() {
                saving += f.saving();
                if saving - STREAM_ID.len() as i64 >= MARGIN {
                    best = Some(i + 1);
                }
            }
            return match best {
                Some(n) => self.emit(n),
                None => Err(self.unrepresentable()),
            };
        }
        if self.block.raw >= TARGET_BLOCK && self.block.slack() >= MARGIN {
            // Close the block but keep its shortest tail that can pay for a
            // whole incompressible next block, so that incompressible data
            // right after the cut still finds a donor.
            let mut tail = 0i64;
            for (i, f) in self.block.frames.iter().enumerate().rev() {
                tail += f.saving();
                if tail - STREAM_ID.len() as i64 >= RESERVE {
                    if i > 0 && self.block.saving - tail - STREAM_ID.len() as i64 >= MARGIN {
                        return self.emit(i);
                    }
                    break;
                }
            }
        }
        Ok(())
    }

    fn unrepresentable(&self) -> WriteError {
        WriteError::Unrepresentable {
            addr: self.block.start,
            len: self.block.raw,
            reason: "this memory is incompressible: an AVML block of at most 16 MiB holding it \
                     would be longer compressed than raw, which makes Volatility 3 hang"
                .into(),
        }
    }

    /// Writes the first `n` frames of the pending block as one record.
    fn emit(&mut self, n: usize) -> Result<(), WriteError> {
        let frames = &self.block.frames[..n];
        let raw: u64 = frames.iter().map(|f| u64::from(f.raw)).sum();
        let encoded: usize = frames.iter().map(|f| f.encoded as usize).sum();
        let saving: i64 = frames.iter().map(FrameInfo::saving).sum();
        let range = Range::new(self.block.start, self.block.start + raw)
            .expect("pending frames lie inside a planned range");
        debug_assert!(saving - STREAM_ID.len() as i64 >= MARGIN);
        write_all(self.sink.as_mut(), &header(range))?;
        write_all(self.sink.as_mut(), &STREAM_ID)?;
        write_all(self.sink.as_mut(), &self.block.bytes[..encoded])?;
        let stream = (STREAM_ID.len() + encoded) as u64;
        write_all(self.sink.as_mut(), &stream.to_le_bytes())?;
        let rest = self.block.frames.split_off(n);
        self.block.frames = rest;
        self.block.bytes.drain(..encoded);
        self.block.start += raw;
        self.block.raw -= raw;
        self.block.saving -= saving;
        Ok(())
    }

    /// At the end of a range: everything pending must go out now.
    fn end_range(&mut self) -> Result<(), WriteError> {
        self.end_frame()?;
        self.held_zero = None;
        if self.block.frames.is_empty() {
            return Ok(());
        }
        if self.block.slack() < MARGIN {
            return Err(self.unrepresentable());
        }
        self.emit(self.block.frames.len())
    }
}

impl ImageWriter for AvmlWriter {
    fn begin(&mut self, plan: &Plan) -> Result<(), WriteError> {
        check_plan_nonempty(plan, Format::Avml)?;
        self.ranges = plan.ranges.clone();
        self.cursor = ChunkCursor::new(&plan.ranges);
        Ok(())
    }

    fn write_chunk(&mut self, addr: u64, chunk: Chunk<'_>) -> Result<(), WriteError> {
        let position = self.cursor.advance(addr, chunk.len())?;
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
    file: File,
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

fn read_chunk_header(path: &Path, file: &File, offset: u64) -> Result<ChunkHeader, FormatError> {
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
    pub fn open(path: &Path, file: File) -> Result<AvmlReader, FormatError> {
        let len = file_len(path, &file)?;
        if len == 0 {
            return Err(FormatError::Empty { path: path.into() });
        }
        let corrupt = |offset: u64, reason: String| FormatError::Corrupt {
            path: path.into(),
            offset,
            format: Format::Avml,
            reason,
        };
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
    use pmem_core::sink::HashingSink;
    use pmem_core::Arch;

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

    fn map(r: &[(u64, u64)]) -> MemoryMap {
        MemoryMap::new(r.iter().map(|&(s, e)| Range::new(s, e).unwrap()).collect()).unwrap()
    }

    /// Writes `content` (one Vec per range) as AVML, returning the file or
    /// the writer's error.
    fn write(
        ranges: &MemoryMap,
        content: &[Vec<u8>],
    ) -> (tempfile::TempDir, PathBuf, Result<SinkSummary, WriteError>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img.avml");
        let sink = Box::new(HashingSink::file(File::create(&path).unwrap()));
        let mut w: Box<dyn ImageWriter> = Box::new(AvmlWriter::new(sink));
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
            assert!(block <= MAX_BLOCK);
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
        a.extend(vec![0u8; 1 << 20]); // left out: a gap
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
        // The zero MiB is not in the image.
        let gap = 0x10_0000 + (3 << 20);
        assert!(
            r.memory_map().find(gap + 0x10000).is_none(),
            "{:x?}",
            r.memory_map()
        );
        assert!(r.memory_map().covers(0x10_0000, 3 << 20));
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
    fn incompressible_stretch_is_refused_not_written() {
        let data = random(3, 40 << 20);
        let ranges = map(&[(0, data.len() as u64)]);
        let (_dir, path, result) = write(&ranges, &[data]);
        assert!(
            matches!(result, Err(WriteError::Unrepresentable { .. })),
            "{result:?}"
        );
        // Whatever was written before the error holds no bad block.
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
