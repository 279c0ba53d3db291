//! zstd over a whole image: a [`ByteSink`] that compresses what a format
//! writer produces into standard zstd frames (`zstd -d` restores the image).
//!
//! The encoder is `ruzstd`, pure Rust: pmem-formats must build for Windows
//! and macOS targets and as a static musl binary without a C toolchain for
//! each. The input is cut into independent frames of [`FRAME_INPUT`] bytes
//! (the zstd format allows concatenated frames; `zstd -d` writes their
//! contents one after the other), so memory stays bounded and frames are
//! compressed on several threads ([`ZstdSink`]), in the same bytes
//! whatever their number.
//!
//! After the last frame comes a seek table in zstd's seekable format (a
//! skippable frame that `zstd -d` ignores): each frame's compressed and
//! uncompressed size, so that [`ZstdReader`] finds any offset of the image
//! by decompressing one frame. `.zst` files without one (from `zstd`
//! itself) are indexed by decompressing each frame once when opened.

mod compress;

use crate::bytes::u32_le;
use crate::workers::Pending;
use compress::{thread_failed, Compressed, Encode, FrameId, Job, Workers};
use pmem_core::sink::fill_buffer;
use pmem_core::{ByteSink, SinkSummary};
use std::collections::VecDeque;
use std::io::{self, Read, Seek, SeekFrom};

/// The zstd frame magic number, as it appears on disk.
pub const MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// Uncompressed bytes per zstd frame.
pub const FRAME_INPUT: usize = 4 << 20;
/// The skippable frame that holds the seek table.
const SEEK_TABLE_FRAME_MAGIC: u32 = 0x184D_2A5E;
/// The seek table footer's magic (its last four bytes).
const SEEKABLE_MAGIC: u32 = 0x8F92_EAB1;
/// Number of frames (u32), descriptor (u8), magic (u32).
const FOOTER_LEN: u64 = 9;

/// Worker threads by default: one per CPU, at most [`MAX_THREADS`].
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_THREADS))
}

/// The most worker threads [`ZstdSink::new`] starts: each holds up to two
/// frames (input and output, 8 MiB) in memory.
pub const MAX_THREADS: usize = 4;

/// Compresses everything written to it into `inner`, on worker threads.
///
/// Frames are cut at fixed offsets of the image and each is compressed on
/// its own, then written in order, so the output is the same byte for byte
/// whatever the number of threads. At most `threads + 1` frames are
/// queued, being compressed or waiting to be written, beside the one being
/// filled: `threads + 2` frame inputs of [`FRAME_INPUT`] bytes and
/// `threads + 1` compressed frames at most in memory.
pub struct ZstdSink {
    inner: Box<dyn ByteSink>,
    /// The frame being filled.
    buffer: Vec<u8>,
    /// Uncompressed bytes per frame: [`FRAME_INPUT`] (smaller in tests).
    frame_input: usize,
    position: u64,
    /// (compressed, uncompressed) size of each frame written: the seek table.
    frames: Vec<(u32, u32)>,
    workers: Workers,
    /// Frames handed to the workers, oldest first.
    in_flight: VecDeque<(FrameId, Pending<Compressed>)>,
    max_in_flight: usize,
    /// Frames submitted so far (numbers the frames in errors).
    submitted: u64,
    /// Buffers of frames written, for the next ones.
    spare_inputs: Vec<Vec<u8>>,
    spare_outputs: Vec<Vec<u8>>,
    /// Set by the first error: a stream missing a frame must not go on.
    failed: bool,
}

impl ZstdSink {
    /// A sink compressing into `inner`, which receives the `.zst` file's
    /// bytes (and so hashes the compressed file), on
    /// [`default_threads`] worker threads.
    pub fn new(inner: Box<dyn ByteSink>) -> ZstdSink {
        ZstdSink::with_threads(inner, default_threads())
    }

    /// The same on `threads` worker threads (0: on the writing thread).
    pub fn with_threads(inner: Box<dyn ByteSink>, threads: usize) -> ZstdSink {
        ZstdSink::with_encoder(inner, threads, FRAME_INPUT, compress::ruzstd_fastest)
    }

    fn with_encoder(
        inner: Box<dyn ByteSink>,
        threads: usize,
        frame_input: usize,
        encode: Encode,
    ) -> ZstdSink {
        let workers = compress::spawn(threads, threads + 1, frame_input, encode);
        ZstdSink {
            inner,
            buffer: Vec::with_capacity(frame_input),
            frame_input,
            position: 0,
            frames: Vec::new(),
            max_in_flight: workers.threads() + 1,
            workers,
            in_flight: VecDeque::new(),
            submitted: 0,
            spare_inputs: Vec::new(),
            spare_outputs: Vec::new(),
            failed: false,
        }
    }

    /// Worker threads compressing (0: frames are compressed inline).
    pub fn threads(&self) -> usize {
        self.workers.threads()
    }

    /// Hands the filled frame to the workers, after writing the oldest
    /// frames while too many are in flight.
    fn flush_frame(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        while self.in_flight.len() >= self.max_in_flight {
            self.write_oldest()?;
        }
        let spare = self
            .spare_inputs
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.frame_input));
        let input = std::mem::replace(&mut self.buffer, spare);
        let output = self.spare_outputs.pop().unwrap_or_default();
        let id = FrameId {
            index: self.submitted,
            at: self.submitted * self.frame_input as u64,
        };
        let pending = match self.workers.submit(Job { id, input, output }) {
            Ok(pending) => pending,
            Err(_) => {
                // The workers have died: an earlier frame's own error,
                // when there is one, says which frame and why first.
                while !self.in_flight.is_empty() {
                    self.write_oldest()?;
                }
                return Err(thread_failed(id));
            }
        };
        self.submitted += 1;
        self.in_flight.push_back((id, pending));
        Ok(())
    }

    /// Waits for the oldest frame in flight and writes it.
    fn write_oldest(&mut self) -> io::Result<()> {
        let Some((id, pending)) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let Compressed { mut input, output } = pending.wait().map_err(|_| thread_failed(id))?;
        let frame = output?;
        // A frame's input (FRAME_INPUT) compresses to far less than 4 GiB.
        self.frames.push((frame.len() as u32, input.len() as u32));
        self.inner.write_all(&frame)?;
        input.clear();
        self.spare_inputs.push(input);
        self.spare_outputs.push(frame);
        Ok(())
    }

    /// Runs `step`, and refuses everything after its first error.
    fn guarded(&mut self, step: impl FnOnce(&mut Self) -> io::Result<()>) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other(
                "the zstd stream failed earlier: nothing more is written",
            ));
        }
        let result = step(self);
        self.failed = result.is_err();
        result
    }

    /// The seekable format's seek table, as one skippable frame.
    fn seek_table(&self) -> Vec<u8> {
        let entries = self.frames.len() * 8;
        let mut table = Vec::with_capacity(8 + entries + FOOTER_LEN as usize);
        table.extend_from_slice(&SEEK_TABLE_FRAME_MAGIC.to_le_bytes());
        table.extend_from_slice(&((entries as u64 + FOOTER_LEN) as u32).to_le_bytes());
        for &(compressed, plain) in &self.frames {
            table.extend_from_slice(&compressed.to_le_bytes());
            table.extend_from_slice(&plain.to_le_bytes());
        }
        table.extend_from_slice(&(self.frames.len() as u32).to_le_bytes());
        table.push(0); // no per-frame checksums
        table.extend_from_slice(&SEEKABLE_MAGIC.to_le_bytes());
        table
    }
}

impl ByteSink for ZstdSink {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.guarded(|s| {
            s.position += buf.len() as u64;
            let capacity = s.frame_input;
            fill_buffer(s, buf, capacity, |s| &mut s.buffer, Self::flush_frame)
        })
    }

    // Zeros compress like any bytes: the trait's write_zeros writes them.

    /// The offset in the uncompressed image: formats lay out by it.
    fn position(&self) -> u64 {
        self.position
    }

    /// Summary of the compressed bytes, as written.
    fn finish(mut self: Box<Self>) -> io::Result<SinkSummary> {
        self.guarded(|s| {
            s.flush_frame()?;
            while !s.in_flight.is_empty() {
                s.write_oldest()?;
            }
            let table = s.seek_table();
            s.inner.write_all(&table)
        })?;
        // The workers end before the inner sink commits the image.
        let ZstdSink { inner, workers, .. } = *self;
        drop(workers);
        inner.finish()
    }
}

/// Where one frame lies: compressed in the file, uncompressed in the image.
#[derive(Debug, Clone, Copy)]
struct Frame {
    file_offset: u64,
    compressed: u64,
    image_offset: u64,
    len: u64,
}

/// A `.zst` file read as the image it holds: seekable. A read decompresses
/// its frame from the frame's start up to the offset asked for and keeps
/// the decoder there, so reading in order decompresses everything once and
/// memory stays at one decoder's window whatever the frame's size.
pub struct ZstdReader<R: Read + Seek> {
    frames: Vec<Frame>,
    len: u64,
    position: u64,
    decoding: Decoding<R>,
}

/// The source, idle or inside a decoder positioned in one frame.
enum Decoding<R: Read + Seek> {
    Idle(R),
    Frame {
        index: usize,
        /// Uncompressed bytes of the frame the decoder has produced.
        at: u64,
        decoder:
            Box<ruzstd::decoding::StreamingDecoder<FrameBytes<R>, ruzstd::decoding::FrameDecoder>>,
    },
    /// Only while switching frames (a failed switch leaves it: later reads fail).
    Gone,
}

/// The compressed bytes [pos, end) of one frame, read from the source.
struct FrameBytes<R> {
    inner: R,
    pos: u64,
    end: u64,
}

impl<R: Read + Seek> Read for FrameBytes<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.end - self.pos) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.inner.seek(SeekFrom::Start(self.pos))?;
        let got = self.inner.read(&mut buf[..n])?;
        self.pos += got as u64;
        Ok(got)
    }
}

/// Bad zstd data at an offset of the compressed file: the payload of the
/// reader's `InvalidData` errors, so that callers can name the offset.
#[derive(Debug, thiserror::Error)]
#[error("zstd at file offset {offset:#x}: {reason}")]
pub struct ZstdError {
    /// Offset in the compressed file of the bad structure (frame, block
    /// or seek table).
    pub offset: u64,
    /// What is wrong with it.
    pub reason: String,
}

impl ZstdError {
    /// The offset of `err` when the zstd reader raised it.
    pub fn offset_of(err: &io::Error) -> Option<u64> {
        err.get_ref()?.downcast_ref::<ZstdError>().map(|e| e.offset)
    }
}

fn invalid(offset: u64, reason: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        ZstdError {
            offset,
            reason: reason.to_string(),
        },
    )
}

fn read_at<R: Read + Seek>(source: &mut R, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    source.seek(SeekFrom::Start(offset))?;
    source.read_exact(buf)
}

/// A decoder at the start of the frame `f`, over `source`.
fn start_frame<R: Read + Seek>(
    source: R,
    f: &Frame,
) -> io::Result<ruzstd::decoding::StreamingDecoder<FrameBytes<R>, ruzstd::decoding::FrameDecoder>> {
    let bytes = FrameBytes {
        inner: source,
        pos: f.file_offset,
        end: f.file_offset + f.compressed,
    };
    ruzstd::decoding::StreamingDecoder::new(bytes).map_err(|e| invalid(f.file_offset, e))
}

/// Reads and drops `n` bytes of `reader`; the count it could give.
fn skip(reader: &mut impl Read, mut n: u64) -> io::Result<u64> {
    if n == 0 {
        return Ok(0); // reading on in order: nothing to drop, nothing to allocate
    }
    let mut scratch = vec![0u8; 64 << 10];
    let mut done = 0;
    while n > 0 {
        let want = n.min(scratch.len() as u64) as usize;
        let k = reader.read(&mut scratch[..want])?;
        if k == 0 {
            break;
        }
        n -= k as u64;
        done += k as u64;
    }
    Ok(done)
}

impl<R: Read + Seek> ZstdReader<R> {
    /// Indexes the frames of `source` (`file_len` bytes): from the seek
    /// table when there is one, else by walking the frames (their sizes from
    /// their headers, or by decompressing them once).
    pub fn new(mut source: R, file_len: u64) -> io::Result<ZstdReader<R>> {
        let frames = match seek_table(&mut source, file_len)? {
            Some(frames) => frames,
            None => walk_frames(source.by_ref(), file_len)?,
        };
        let len = frames.last().map_or(0, |f| f.image_offset + f.len);
        Ok(ZstdReader {
            frames,
            len,
            position: 0,
            decoding: Decoding::Idle(source),
        })
    }

    /// A decoder in frame `index` at uncompressed offset `within`.
    fn seek_decoder(&mut self, index: usize, within: u64) -> io::Result<()> {
        if let Decoding::Frame { index: i, at, .. } = &self.decoding {
            if *i == index && *at <= within {
                let (at, decoder) = match &mut self.decoding {
                    Decoding::Frame { at, decoder, .. } => (at, decoder),
                    _ => unreachable!("matched above"),
                };
                *at += skip(decoder.as_mut(), within - *at)?;
                return self.check_reached(index, within);
            }
        }
        let source = match std::mem::replace(&mut self.decoding, Decoding::Gone) {
            Decoding::Idle(source) => source,
            Decoding::Frame { decoder, .. } => decoder.into_inner().inner,
            Decoding::Gone => return Err(io::Error::other("an earlier zstd read failed")),
        };
        let f = self.frames[index];
        let mut decoder = Box::new(start_frame(source, &f)?);
        let at = skip(decoder.as_mut(), within)?;
        self.decoding = Decoding::Frame { index, at, decoder };
        self.check_reached(index, within)
    }

    fn check_reached(&self, index: usize, within: u64) -> io::Result<()> {
        match &self.decoding {
            Decoding::Frame { at, .. } if *at == within => Ok(()),
            _ => {
                let f = self.frames[index];
                Err(invalid(
                    f.file_offset,
                    format!("frame ends before its {} bytes", f.len),
                ))
            }
        }
    }
}

/// The frames listed by a seek table at the end of the file, checked
/// against the file's length; `None` without one.
fn seek_table<R: Read + Seek>(source: &mut R, file_len: u64) -> io::Result<Option<Vec<Frame>>> {
    if file_len < 8 + FOOTER_LEN {
        return Ok(None);
    }
    let mut footer = [0u8; FOOTER_LEN as usize];
    read_at(source, file_len - FOOTER_LEN, &mut footer)?;
    if u32_le(&footer, 5) != SEEKABLE_MAGIC {
        return Ok(None);
    }
    let at = file_len - FOOTER_LEN;
    let count = u64::from(u32_le(&footer, 0));
    let descriptor = footer[4];
    if descriptor & 0x7c != 0 {
        return Err(invalid(at, "seek table descriptor has reserved bits set"));
    }
    let entry = if descriptor & 0x80 != 0 { 12 } else { 8 };
    let table_len = count * entry;
    let frame_start = file_len
        .checked_sub(FOOTER_LEN + table_len + 8)
        .ok_or_else(|| {
            invalid(
                at,
                format!("seek table of {count} frames is longer than the file"),
            )
        })?;
    let mut table = vec![0u8; (8 + table_len) as usize];
    read_at(source, frame_start, &mut table)?;
    if u32_le(&table, 0) != SEEK_TABLE_FRAME_MAGIC
        || u64::from(u32_le(&table, 4)) != table_len + FOOTER_LEN
    {
        return Err(invalid(
            frame_start,
            "seek table frame header does not match its footer",
        ));
    }
    let mut frames = Vec::with_capacity(count as usize);
    let (mut file_offset, mut image_offset) = (0u64, 0u64);
    for i in 0..count as usize {
        let e = 8 + i * entry as usize;
        let compressed = u64::from(u32_le(&table, e));
        let len = u64::from(u32_le(&table, e + 4));
        frames.push(Frame {
            file_offset,
            compressed,
            image_offset,
            len,
        });
        file_offset += compressed;
        image_offset += len;
    }
    if file_offset != frame_start {
        return Err(invalid(
            frame_start,
            format!("the seek table's frames end at {file_offset:#x}, not where the table starts"),
        ));
    }
    Ok(Some(frames))
}

/// Frames of a `.zst` without seek table: each frame's compressed length
/// from its block headers, its content size from its header or by
/// decompressing it once. Skippable frames are stepped over.
fn walk_frames<R: Read + Seek>(mut source: &mut R, file_len: u64) -> io::Result<Vec<Frame>> {
    let mut frames = Vec::new();
    let (mut at, mut image_offset) = (0u64, 0u64);
    // Where the last skippable frame began: the offset to name when its
    // stated length runs past the end of the file.
    let mut skippable_at = 0u64;
    while at < file_len {
        let mut head = [0u8; 8];
        let n = head.len().min((file_len - at) as usize);
        read_at(source, at, &mut head[..n])?;
        if n >= 8 && u32_le(&head, 0) & 0xffff_fff0 == 0x184D_2A50 {
            // Saturating: a length running past 2^64 runs past the file too.
            skippable_at = at;
            at = at.saturating_add(8 + u64::from(u32_le(&head, 4)));
            continue;
        }
        if n < 4 || head[..4] != MAGIC {
            return Err(invalid(at, "not a zstd frame"));
        }
        let (compressed, content) = frame_layout(source, at, file_len)?;
        let mut frame = Frame {
            file_offset: at,
            compressed,
            image_offset,
            len: 0,
        };
        frame.len = match content {
            Some(len) => len,
            None => {
                let mut decoder = start_frame(&mut source, &frame)?;
                skip(&mut decoder, u64::MAX)?
            }
        };
        frames.push(frame);
        at += compressed;
        image_offset = image_offset.checked_add(frame.len).ok_or_else(|| {
            invalid(
                frame.file_offset,
                format!(
                    "frame content size {:#x} takes the image past 2^64 bytes",
                    frame.len
                ),
            )
        })?;
    }
    if at != file_len {
        return Err(invalid(
            skippable_at,
            "a skippable frame runs past the end of the file",
        ));
    }
    Ok(frames)
}

/// The compressed length of the frame at `start` (header, blocks, checksum)
/// and its content size when the header has one.
fn frame_layout<R: Read + Seek>(
    source: &mut R,
    start: u64,
    file_len: u64,
) -> io::Result<(u64, Option<u64>)> {
    let mut header = [0u8; 18];
    let n = header.len().min((file_len - start) as usize);
    read_at(source, start, &mut header[..n])?;
    let d = header[4];
    let single_segment = d & 0x20 != 0;
    let checksum = d & 0x04 != 0;
    let dict_id = [0usize, 1, 2, 4][(d & 3) as usize];
    let fcs_len = match d >> 6 {
        0 => usize::from(single_segment),
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let fcs_at = 5 + usize::from(!single_segment) + dict_id;
    if fcs_at + fcs_len > n {
        return Err(invalid(start, "frame header is cut short"));
    }
    let mut fcs = [0u8; 8];
    fcs[..fcs_len].copy_from_slice(&header[fcs_at..fcs_at + fcs_len]);
    let content = match fcs_len {
        0 => None,
        2 => Some(u64::from_le_bytes(fcs) + 256),
        _ => Some(u64::from_le_bytes(fcs)),
    };
    let mut at = start + (fcs_at + fcs_len) as u64;
    loop {
        let mut block = [0u8; 3];
        if at + 3 > file_len {
            return Err(invalid(at, "frame is cut short"));
        }
        read_at(source, at, &mut block)?;
        let header = u32::from(block[0]) | u32::from(block[1]) << 8 | u32::from(block[2]) << 16;
        let last = header & 1 != 0;
        let size = u64::from(header >> 3);
        at += 3 + match (header >> 1) & 3 {
            1 => 1, // RLE: one byte, repeated `size` times
            3 => return Err(invalid(at, "reserved block type")),
            _ => size,
        };
        if last {
            break;
        }
    }
    at += if checksum { 4 } else { 0 };
    if at > file_len {
        return Err(invalid(start, "frame is cut short"));
    }
    Ok((at - start, content))
}

impl<R: Read + Seek> Read for ZstdReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.position >= self.len || buf.is_empty() {
            return Ok(0);
        }
        let position = self.position;
        let index = self
            .frames
            .partition_point(|f| f.image_offset + f.len <= position);
        let f = self.frames[index];
        let within = position - f.image_offset;
        self.seek_decoder(index, within)?;
        let n = (buf.len() as u64).min(f.len - within) as usize;
        let Decoding::Frame { at, decoder, .. } = &mut self.decoding else {
            unreachable!("seek_decoder leaves a decoder");
        };
        let got = decoder.read(&mut buf[..n])?;
        if got == 0 {
            return Err(invalid(
                f.file_offset,
                format!("frame ends before its {} bytes", f.len),
            ));
        }
        *at += got as u64;
        self.position += got as u64;
        Ok(got)
    }
}

impl<R: Read + Seek> Seek for ZstdReader<R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.position.checked_add_signed(d),
        };
        self.position = target.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the image",
            )
        })?;
        Ok(self.position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A zstd frame with an 8-byte content size field that claims
    /// `content` bytes, holding one RLE block of `rle` bytes of `byte`.
    fn frame_claiming(content: u64, rle: u32, byte: u8) -> Vec<u8> {
        let mut f = MAGIC.to_vec();
        f.push(0xe0); // content size: 8 bytes; single segment
        f.extend_from_slice(&content.to_le_bytes());
        let block = 1 | 1 << 1 | rle << 3; // last, RLE
        f.extend_from_slice(&block.to_le_bytes()[..3]);
        f.push(byte);
        f
    }

    fn open(bytes: &[u8]) -> io::Result<ZstdReader<Cursor<Vec<u8>>>> {
        ZstdReader::new(Cursor::new(bytes.to_vec()), bytes.len() as u64)
    }

    /// `data` through [`ZstdSink`]: frames of FRAME_INPUT bytes, then the
    /// seek table.
    fn compressed(data: &[u8]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img.zst");
        let file = pmem_core::sink::create_image_file(&path, false).unwrap();
        let mut sink = Box::new(ZstdSink::new(Box::new(pmem_core::sink::HashingSink::file(
            file,
        ))));
        sink.write_all(data).unwrap();
        sink.finish().unwrap();
        std::fs::read(&path).unwrap()
    }

    /// Two frames and a half: text, with a zero stretch.
    fn image() -> Vec<u8> {
        let mut data: Vec<u8> = (0..FRAME_INPUT * 2)
            .map(|i| b"physical memory "[i % 16] ^ (i >> 20) as u8)
            .collect();
        data.extend(vec![0u8; FRAME_INPUT / 2]);
        data
    }

    fn read_all(reader: &mut impl Read) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        reader.read_to_end(&mut out)?;
        Ok(out)
    }

    /// The seek table's length: 8 bytes of skippable frame header, 8 per
    /// frame, the footer.
    fn table_len(frames: usize) -> usize {
        8 + 8 * frames + FOOTER_LEN as usize
    }

    /// Memory-like bytes: text pages, zero pages and pseudo-random
    /// (incompressible) pages, mixed, not a multiple of any frame size.
    fn mixed(len: usize) -> Vec<u8> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut data = Vec::with_capacity(len);
        while data.len() < len {
            let page = data.len() / 4096;
            let n = (len - data.len()).min(4096);
            match page % 5 {
                0 | 3 => data.extend((0..n).map(|i| b"task_struct init "[(i + page) % 17])),
                1 => data.extend(std::iter::repeat_n(0, n)),
                _ => data.extend((0..n).map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })),
            }
        }
        data
    }

    /// What a [`HashingSink`](pmem_core::sink::HashingSink) over it wrote:
    /// shared with the test while the sink owns its end.
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl io::Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn bytes(&self) -> Vec<u8> {
            self.0.lock().unwrap().clone()
        }
    }

    /// A sink of `threads` workers, `frame` bytes per frame and `encode`,
    /// writing into the returned buffer.
    fn sink_with(threads: usize, frame: usize, encode: Encode) -> (Box<ZstdSink>, Shared) {
        let out = Shared::default();
        let inner = pmem_core::sink::HashingSink::stream(Box::new(out.clone()));
        let sink = ZstdSink::with_encoder(Box::new(inner), threads, frame, encode);
        (Box::new(sink), out)
    }

    /// `data` compressed with `threads` workers into frames of `frame`
    /// bytes, written in pieces of `piece` bytes.
    fn compressed_with(data: &[u8], threads: usize, frame: usize, piece: usize) -> Vec<u8> {
        let (mut sink, out) = sink_with(threads, frame, compress::ruzstd_fastest);
        assert_eq!(sink.threads(), threads);
        for part in data.chunks(piece) {
            sink.write_all(part).unwrap();
        }
        assert_eq!(sink.position(), data.len() as u64);
        sink.finish().unwrap();
        out.bytes()
    }

    /// The layout the single-threaded sink wrote before the workers: each
    /// `frame` bytes compressed alone by ruzstd, in order, then the table.
    fn reference(data: &[u8], frame: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut table = Vec::new();
        for part in data.chunks(frame) {
            let f = ruzstd::encoding::compress_to_vec(
                part,
                ruzstd::encoding::CompressionLevel::Fastest,
            );
            table.extend_from_slice(&(f.len() as u32).to_le_bytes());
            table.extend_from_slice(&(part.len() as u32).to_le_bytes());
            out.extend(f);
        }
        let frames = data.len().div_ceil(frame) as u32;
        out.extend_from_slice(&SEEK_TABLE_FRAME_MAGIC.to_le_bytes());
        out.extend_from_slice(&(table.len() as u32 + FOOTER_LEN as u32).to_le_bytes());
        out.extend(table);
        out.extend_from_slice(&frames.to_le_bytes());
        out.push(0);
        out.extend_from_slice(&SEEKABLE_MAGIC.to_le_bytes());
        out
    }

    #[test]
    fn output_is_the_same_bytes_whatever_the_thread_count() {
        // 37 frames of 64 KiB and a part: more frames than any pool holds
        // in flight, so workers finish out of order.
        let frame = 64 << 10;
        let data = mixed(frame * 37 + 12345);
        let expected = reference(&data, frame);
        for threads in [0, 1, 2, 3, 8] {
            for piece in [4096, 1 << 20, 100_003] {
                let got = compressed_with(&data, threads, frame, piece);
                assert!(got == expected, "{threads} threads, pieces of {piece}");
            }
        }
        let mut r = open(&expected).unwrap();
        assert_eq!(r.frames.len(), 38);
        assert!(read_all(&mut r).unwrap() == data);
        // The real frame size: the default pool against one thread and inline.
        let data = mixed(FRAME_INPUT * 2 + 4096 * 3);
        let one = compressed_with(&data, 1, FRAME_INPUT, 1 << 20);
        assert!(one == reference(&data, FRAME_INPUT));
        assert!(compressed_with(&data, 0, FRAME_INPUT, 1 << 20) == one);
        assert!(compressed_with(&data, 3, FRAME_INPUT, 1 << 20) == one);
        assert!(compressed(&data) == one, "ZstdSink::new");
    }

    #[test]
    fn an_empty_image_is_a_seek_table_alone() {
        for threads in [0, 2] {
            let got = compressed_with(&[], threads, 4096, 4096);
            assert_eq!(got, reference(&[], 4096));
            assert_eq!(got.len(), table_len(0));
            assert_eq!(open(&got).unwrap().len, 0);
        }
    }

    /// ruzstd, except on frames starting with "FAIL": an error.
    fn failing(
        c: &mut compress::Compressor,
        input: &mut Vec<u8>,
        output: &mut Vec<u8>,
    ) -> io::Result<()> {
        if input.starts_with(b"FAIL") {
            return Err(io::Error::other("injected encoder failure"));
        }
        compress::ruzstd_fastest(c, input, output)
    }

    /// ruzstd, except on frames starting with "FAIL": the thread dies.
    fn dying(
        c: &mut compress::Compressor,
        input: &mut Vec<u8>,
        output: &mut Vec<u8>,
    ) -> io::Result<()> {
        assert!(!input.starts_with(b"FAIL"), "injected worker panic");
        compress::ruzstd_fastest(c, input, output)
    }

    /// 12 frames of 4 KiB; frame `bad` starts with "FAIL".
    fn with_bad_frame(bad: usize) -> Vec<u8> {
        let mut data = mixed(4096 * 12);
        data[bad * 4096..bad * 4096 + 4].copy_from_slice(b"FAIL");
        data
    }

    /// Writes `data` in frames into a sink with `encode`; the first error
    /// (from a write or from finish) and what the inner sink received.
    fn first_error(threads: usize, encode: Encode, data: &[u8]) -> (io::Error, Vec<u8>) {
        let (mut sink, out) = sink_with(threads, 4096, encode);
        for part in data.chunks(4096) {
            if let Err(e) = sink.write_all(part) {
                // Refused from now on: the stream has lost a frame.
                let again = sink.write_all(b"more").unwrap_err();
                assert!(again.to_string().contains("failed earlier"), "{again}");
                assert!(sink.finish().is_err());
                return (e, out.bytes());
            }
        }
        let e = sink.finish().expect_err("a frame failed");
        (e, out.bytes())
    }

    #[test]
    fn an_encoder_error_on_a_worker_is_the_sinks_error() {
        for threads in [0, 1, 3] {
            for bad in [0, 5, 11] {
                let data = with_bad_frame(bad);
                let (err, written) = first_error(threads, failing, &data);
                let text = err.to_string();
                let want = format!("zstd frame {bad} (image offset {:#x})", bad * 4096);
                assert!(text.contains(&want), "{threads} threads: {text}");
                assert!(text.contains("injected encoder failure"), "{text}");
                // Exactly the frames before the bad one were written, in order.
                let good = reference(&data[..bad * 4096], 4096);
                assert_eq!(written, good[..good.len() - table_len(bad)]);
            }
        }
    }

    #[test]
    fn a_worker_thread_that_dies_is_an_error_not_a_hang() {
        for threads in [1, 2] {
            for bad in [0, 7] {
                let data = with_bad_frame(bad);
                let (err, written) = first_error(threads, dying, &data);
                let text = err.to_string();
                assert!(text.contains("compression thread failed"), "{text}");
                assert!(
                    text.contains(&format!("zstd frame {bad} ")),
                    "{threads} threads, frame {bad}: {text}"
                );
                let good = reference(&data[..bad * 4096], 4096);
                assert_eq!(written, good[..good.len() - table_len(bad)]);
            }
        }
    }

    #[test]
    fn reads_back_with_and_without_the_seek_table() {
        let data = image();
        let bytes = compressed(&data);
        let mut r = open(&bytes).unwrap();
        assert_eq!(r.frames.len(), 3);
        assert!(read_all(&mut r).unwrap() == data);
        // Random access: the last bytes, then back to the first frame.
        let mut b = [0u8; 5];
        r.seek(SeekFrom::Start(data.len() as u64 - 5)).unwrap();
        r.read_exact(&mut b).unwrap();
        assert_eq!(b, [0; 5]);
        r.seek(SeekFrom::Start(3)).unwrap();
        r.read_exact(&mut b).unwrap();
        assert_eq!(b[..], data[3..8]);
        // Without the seek table (as `zstd` writes files): the frames are walked.
        let plain = &bytes[..bytes.len() - table_len(3)];
        let mut r = open(plain).unwrap();
        assert_eq!(r.frames.len(), 3);
        assert!(read_all(&mut r).unwrap() == data);
    }

    #[test]
    fn corrupt_seek_tables_are_named_by_offset() {
        let bytes = compressed(&image());
        let n = bytes.len();
        let table_at = (n - table_len(3)) as u64;
        let footer_at = (n - FOOTER_LEN as usize) as u64;
        let refused = |bytes: &[u8]| {
            let err = open(bytes).err().expect("refused");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
            err.to_string()
        };
        // A frame count longer than the file.
        let mut bad = bytes.clone();
        bad[n - 9..n - 5].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = refused(&bad);
        assert!(
            err.contains(&format!("file offset {footer_at:#x}")),
            "{err}"
        );
        assert!(err.contains("longer than the file"), "{err}");
        // A frame count that disagrees with the table frame's size.
        let mut bad = bytes.clone();
        bad[n - 9] = 2;
        let err = refused(&bad);
        assert!(err.contains("does not match its footer"), "{err}");
        // Reserved descriptor bits.
        let mut bad = bytes.clone();
        bad[n - 5] = 0x04;
        let err = refused(&bad);
        assert!(err.contains("reserved bits"), "{err}");
        // Frame sizes that do not end where the table starts.
        let mut bad = bytes.clone();
        bad[table_at as usize + 8] ^= 1;
        let err = refused(&bad);
        assert!(err.contains(&format!("file offset {table_at:#x}")), "{err}");
        assert!(err.contains("not where the table starts"), "{err}");
        // An uncompressed size larger than the frame holds: found on read.
        let mut bad = bytes.clone();
        let first_plain = table_at as usize + 8 + 4;
        bad[first_plain + 3] = 0x7f;
        let mut r = open(&bad).unwrap();
        let err = read_all(&mut r).unwrap_err().to_string();
        assert!(err.contains("file offset 0x0: frame ends before"), "{err}");
    }

    #[test]
    fn corrupt_frames_are_errors_not_panics() {
        let data = image();
        let bytes = compressed(&data);
        let plain = bytes[..bytes.len() - table_len(3)].to_vec();
        // A reserved block type in the first frame's first block header.
        let header_len = 6; // magic, descriptor, window: no content size
        assert_eq!(plain[4] & 0xc0, 0, "the sink writes no content size");
        let mut bad = plain.clone();
        bad[header_len] |= 0b110;
        let err = open(&bad).err().expect("refused").to_string();
        assert!(err.contains("reserved block type"), "{err}");
        // Not a frame at all after the first.
        let mut bad = plain.clone();
        bad.extend_from_slice(b"LiME");
        let err = open(&bad).err().expect("refused").to_string();
        assert!(
            err.contains(&format!("file offset {:#x}: not a zstd frame", plain.len())),
            "{err}"
        );
        // A skippable frame that runs past the end.
        let mut bad = plain.clone();
        bad.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
        bad.extend_from_slice(&100u32.to_le_bytes());
        assert!(open(&bad).is_err());
        // Truncation anywhere, with or without the seek table: an error on
        // open or on read, never a panic, and never the wrong bytes.
        for source in [&bytes, &plain] {
            for cut in [1, 4, 5, 7, 9, 100, source.len() / 3, source.len() - 1] {
                if let Ok(mut r) = open(&source[..cut]) {
                    match read_all(&mut r) {
                        Ok(got) => assert!(data.starts_with(&got), "cut at {cut}"),
                        Err(e) => assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}"),
                    }
                }
            }
        }
        // Every single-byte change in the frame and seek table headers
        // fails cleanly or reads.
        let n = bytes.len();
        for i in (0..40).chain(n - table_len(3)..n) {
            let mut bad = bytes.clone();
            bad[i] ^= 0xa5;
            if let Ok(mut r) = open(&bad) {
                let mut buf = vec![0u8; 1 << 16];
                let _ = r.read(&mut buf);
            }
        }
    }

    /// Issue 15, defect 4: frame content sizes read from the file that add up
    /// past 2^64 are refused, not summed (a panic with overflow checks, a
    /// wrapped, small image length without).
    #[test]
    fn content_sizes_past_2_pow_64_are_refused() {
        let mut bytes = frame_claiming(4096, 4096, 0x41);
        bytes.extend(frame_claiming(u64::MAX - 100, 16, 0));
        bytes.extend(frame_claiming(u64::MAX - 100, 16, 0));
        let err = open(&bytes).err().expect("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(ZstdError::offset_of(&err), Some(0x11));
        assert!(
            err.to_string().contains("file offset 0x11"),
            "names the frame whose size overflows: {err}"
        );
    }

    /// A LiME image inside the zstd layer, as `--compress zstd` writes it,
    /// in a file: what [`crate::open_image`] opens.
    fn zstd_lime_file() -> (tempfile::TempDir, std::path::PathBuf, Vec<u8>) {
        let plan = pmem_core::Plan::new(
            crate::test_util::map(&[(0x1000, 0x3000), (0x8000, 0x9000)]),
            pmem_core::Arch::X86_64,
        );
        let lime = crate::test_util::write_image(crate::Format::Lime, &plan);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img.lime.zst");
        (dir, path, compressed(&lime))
    }

    fn open_image(path: &std::path::Path, bytes: &[u8]) -> Result<(), crate::FormatError> {
        std::fs::write(path, bytes).unwrap();
        let mut reader = crate::open_image(path, None)?;
        let ranges = reader.memory_map().ranges().to_vec();
        for range in ranges {
            let mut buf = vec![0u8; range.len() as usize];
            reader
                .read_at(range.start, &mut buf)
                .expect("an image that opens reads");
        }
        Ok(())
    }

    #[test]
    fn corrupt_seek_tables_are_format_errors_naming_the_file_and_offset() {
        let (_dir, path, bytes) = zstd_lime_file();
        open_image(&path, &bytes).unwrap();
        let n = bytes.len();
        let footer_at = (n - FOOTER_LEN as usize) as u64;
        // A frame count longer than the file.
        let mut bad = bytes.clone();
        bad[n - 9..n - 5].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = open_image(&path, &bad).unwrap_err();
        assert_eq!(err.path(), path);
        assert_eq!(err.offset(), footer_at, "{err}");
        let text = err.to_string();
        assert!(text.starts_with(&path.display().to_string()), "{text}");
        assert!(text.contains("longer than the file"), "{text}");
        // Not a zstd frame where the first one should be: the file is
        // then no zstd file at all but a raw image, which opens.
        let mut bad = bytes.clone();
        bad[0] ^= 0xff;
        std::fs::write(&path, &bad).unwrap();
        assert!(matches!(crate::detect(&path), Ok(crate::Format::Raw)));
        // A reserved block type in the frame: found when the frame is
        // decoded (the seek table spares the walk), named at the frame.
        let mut bad = bytes.clone();
        bad[6] |= 0b110;
        let err = open_image(&path, &bad).unwrap_err();
        assert_eq!(err.path(), path);
        assert_eq!(err.offset(), 0, "{err}");
        assert!(err.to_string().contains("Reserved block"), "{err}");
    }

    #[test]
    fn truncated_zstd_images_are_format_errors_naming_the_file() {
        let (_dir, path, bytes) = zstd_lime_file();
        for cut in (5..bytes.len())
            .step_by(37)
            .chain(bytes.len() - 12..bytes.len())
        {
            let err = open_image(&path, &bytes[..cut]).expect_err("truncated");
            assert_eq!(err.path(), path, "cut at {cut}: {err}");
            assert!(
                err.to_string().contains("file offset"),
                "cut at {cut}: {err}"
            );
            // The offset named is one the truncated file has.
            assert!((err.offset() as usize) < cut, "cut at {cut}: {err}");
        }
    }
}
