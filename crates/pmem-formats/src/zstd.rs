//! zstd over a whole image: a [`ByteSink`] that compresses what a format
//! writer produces into standard zstd frames (`zstd -d` restores the image).
//!
//! The encoder is `ruzstd`, pure Rust: pmem-formats must build for Windows
//! and macOS targets and as a static musl binary without a C toolchain for
//! each. The input is cut into independent frames of [`FRAME_INPUT`] bytes
//! (the zstd format allows concatenated frames; `zstd -d` writes their
//! contents one after the other), so memory stays bounded and frames can be
//! compressed on several threads.
//!
//! After the last frame comes a seek table in zstd's seekable format (a
//! skippable frame that `zstd -d` ignores): each frame's compressed and
//! uncompressed size, so that [`ZstdReader`] finds any offset of the image
//! by decompressing one frame. `.zst` files without one (from `zstd`
//! itself) are indexed by decompressing each frame once when opened.

use crate::bytes::u32_le;
use pmem_core::sink::fill_buffer;
use pmem_core::{ByteSink, SinkSummary};
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

/// Compresses everything written to it into `inner`.
pub struct ZstdSink {
    inner: Box<dyn ByteSink>,
    buffer: Vec<u8>,
    position: u64,
    /// (compressed, uncompressed) size of each frame written: the seek table.
    frames: Vec<(u32, u32)>,
}

impl ZstdSink {
    /// A sink compressing into `inner`, which receives the `.zst` file's
    /// bytes (and so hashes the compressed file).
    pub fn new(inner: Box<dyn ByteSink>) -> ZstdSink {
        ZstdSink {
            inner,
            buffer: Vec::with_capacity(FRAME_INPUT),
            position: 0,
            frames: Vec::new(),
        }
    }

    fn flush_frame(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let frame = ruzstd::encoding::compress_to_vec(
            &self.buffer[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        // FRAME_INPUT bytes compress to far less than 4 GiB.
        self.frames
            .push((frame.len() as u32, self.buffer.len() as u32));
        self.buffer.clear();
        self.inner.write_all(&frame)
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
        self.position += buf.len() as u64;
        fill_buffer(self, buf, FRAME_INPUT, |s| &mut s.buffer, Self::flush_frame)
    }

    // Zeros compress like any bytes: the trait's write_zeros writes them.

    /// The offset in the uncompressed image: formats lay out by it.
    fn position(&self) -> u64 {
        self.position
    }

    /// Summary of the compressed bytes, as written.
    fn finish(mut self: Box<Self>) -> io::Result<SinkSummary> {
        self.flush_frame()?;
        let table = self.seek_table();
        self.inner.write_all(&table)?;
        self.inner.finish()
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
