//! The bytes of an AVML file: block headers and the snappy framing format's
//! chunks inside each block's stream.

use super::{FRAME, HEADER_LEN, MAGIC, VERSION};
use crate::image_file::read_exact_at;
use crate::{FormatError, ImageFile};
use pmem_core::Range;
use std::path::Path;

/// The snappy framing format's stream identifier chunk.
pub(super) const STREAM_ID: [u8; 10] = [0xff, 6, 0, 0, b's', b'N', b'a', b'P', b'p', b'Y'];
/// Chunk header (type + 3-byte length) plus masked CRC-32C.
pub(super) const CHUNK_OVERHEAD: usize = 8;

pub(super) const TYPE_COMPRESSED: u8 = 0x00;
pub(super) const TYPE_STORED: u8 = 0x01;
pub(super) const TYPE_STREAM_ID: u8 = 0xff;

/// The CRC the snappy framing format stores: CRC-32C, rotated and offset so
/// that CRCs of data containing CRCs stay well distributed.
pub fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// The block header for `range`.
pub fn header(range: Range) -> [u8; HEADER_LEN as usize] {
    crate::lime::header_for(MAGIC, VERSION, range)
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

/// A parsed chunk header.
#[derive(Debug, Clone, Copy)]
pub(super) struct ChunkHeader {
    pub(super) kind: u8,
    /// Length after the 4-byte header.
    pub(super) len: u64,
}

pub(super) fn read_chunk_header(
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
pub(super) fn snappy_len(bytes: &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, b) in bytes.iter().take(5).enumerate() {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}
