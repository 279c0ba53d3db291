//! The ZIP64 container under AFF4: a forward-only writer (every member with
//! a data descriptor, so nothing is ever seeked back to, which a pipe needs)
//! and a reader of the central directory.
//!
//! Written by hand rather than with the `zip` crate: its writer wants
//! `Seek` for ZIP64 (or buffers members), and pmem's sinks only go forward.
//! Members are stored (method 0); AFF4 compresses chunks itself.

use crate::bytes::{u16_le, u32_le, u64_le};
use crate::ImageFile;
use pmem_core::{ByteSink, WriteError};
use std::io::{self, Read};

const LOCAL_SIG: u32 = 0x0403_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const DESCRIPTOR_SIG: u32 = 0x0807_4b50;
const EOCD_SIG: u32 = 0x0605_4b50;
const EOCD64_SIG: u32 = 0x0606_4b50;
const EOCD64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_EXTRA: u16 = 0x0001;
/// Version 4.5: ZIP64.
const VERSION: u16 = 45;
/// Bit 3: sizes and CRC follow the data; bit 11: names are UTF-8.
const FLAGS: u16 = (1 << 3) | (1 << 11);

fn io_err(sink: &dyn ByteSink, source: io::Error) -> WriteError {
    WriteError::Io {
        offset: sink.position(),
        source,
    }
}

fn put(sink: &mut dyn ByteSink, bytes: &[u8]) -> Result<(), WriteError> {
    let offset = sink.position();
    sink.write_all(bytes)
        .map_err(|source| WriteError::Io { offset, source })
}

struct Entry {
    name: String,
    offset: u64,
    size: u64,
    crc: u32,
}

/// Writes members one after another; `finish` writes the central directory.
#[derive(Default)]
pub struct ZipWriter {
    entries: Vec<Entry>,
    open: Option<(Entry, flate2::Crc)>,
}

impl ZipWriter {
    /// Starts a member; its bytes follow through [`ZipWriter::write`].
    pub fn start(&mut self, sink: &mut dyn ByteSink, name: &str) -> Result<(), WriteError> {
        debug_assert!(self.open.is_none());
        let offset = sink.position();
        let mut h = Vec::with_capacity(30 + name.len() + 20);
        h.extend_from_slice(&LOCAL_SIG.to_le_bytes());
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&FLAGS.to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes()); // stored
        h.extend_from_slice(&0u32.to_le_bytes()); // DOS time and date: none
        h.extend_from_slice(&0u32.to_le_bytes()); // CRC: in the descriptor
        h.extend_from_slice(&u32::MAX.to_le_bytes()); // sizes: in ZIP64 fields
        h.extend_from_slice(&u32::MAX.to_le_bytes());
        h.extend_from_slice(&(name.len() as u16).to_le_bytes());
        h.extend_from_slice(&20u16.to_le_bytes());
        h.extend_from_slice(name.as_bytes());
        // The ZIP64 extra announces 8-byte sizes in the data descriptor.
        h.extend_from_slice(&ZIP64_EXTRA.to_le_bytes());
        h.extend_from_slice(&16u16.to_le_bytes());
        h.extend_from_slice(&[0u8; 16]);
        put(sink, &h)?;
        self.open = Some((
            Entry {
                name: name.to_string(),
                offset,
                size: 0,
                crc: 0,
            },
            flate2::Crc::new(),
        ));
        Ok(())
    }

    pub fn write(&mut self, sink: &mut dyn ByteSink, data: &[u8]) -> Result<(), WriteError> {
        let (entry, crc) = self
            .open
            .as_mut()
            .ok_or_else(|| WriteError::Plan("ZIP data outside a member".into()))?;
        crc.update(data);
        entry.size += data.len() as u64;
        put(sink, data)
    }

    /// Ends the open member with its data descriptor.
    pub fn end(&mut self, sink: &mut dyn ByteSink) -> Result<(), WriteError> {
        let (mut entry, crc) = self
            .open
            .take()
            .ok_or_else(|| WriteError::Plan("no ZIP member to end".into()))?;
        entry.crc = crc.sum();
        let mut d = Vec::with_capacity(24);
        d.extend_from_slice(&DESCRIPTOR_SIG.to_le_bytes());
        d.extend_from_slice(&entry.crc.to_le_bytes());
        d.extend_from_slice(&entry.size.to_le_bytes());
        d.extend_from_slice(&entry.size.to_le_bytes());
        put(sink, &d)?;
        self.entries.push(entry);
        Ok(())
    }

    /// A whole member at once.
    pub fn member(
        &mut self,
        sink: &mut dyn ByteSink,
        name: &str,
        data: &[u8],
    ) -> Result<(), WriteError> {
        self.start(sink, name)?;
        self.write(sink, data)?;
        self.end(sink)
    }

    /// Central directory, ZIP64 end records and the end record with `comment`.
    pub fn finish(self, sink: &mut dyn ByteSink, comment: &str) -> Result<(), WriteError> {
        let cd_start = sink.position();
        let mut cd = Vec::new();
        for e in &self.entries {
            cd.extend_from_slice(&CENTRAL_SIG.to_le_bytes());
            cd.extend_from_slice(&VERSION.to_le_bytes()); // made by
            cd.extend_from_slice(&VERSION.to_le_bytes()); // needed
            cd.extend_from_slice(&FLAGS.to_le_bytes());
            cd.extend_from_slice(&0u16.to_le_bytes());
            cd.extend_from_slice(&0u32.to_le_bytes());
            cd.extend_from_slice(&e.crc.to_le_bytes());
            cd.extend_from_slice(&u32::MAX.to_le_bytes()); // sizes and offset
            cd.extend_from_slice(&u32::MAX.to_le_bytes()); // are in the ZIP64
            cd.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
            cd.extend_from_slice(&28u16.to_le_bytes()); // extra length
            cd.extend_from_slice(&0u16.to_le_bytes()); // comment length
            cd.extend_from_slice(&0u16.to_le_bytes()); // disk
            cd.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
            cd.extend_from_slice(&0u32.to_le_bytes()); // external attributes
            cd.extend_from_slice(&u32::MAX.to_le_bytes()); // offset: ZIP64
            cd.extend_from_slice(e.name.as_bytes());
            cd.extend_from_slice(&ZIP64_EXTRA.to_le_bytes());
            cd.extend_from_slice(&24u16.to_le_bytes());
            cd.extend_from_slice(&e.size.to_le_bytes());
            cd.extend_from_slice(&e.size.to_le_bytes());
            cd.extend_from_slice(&e.offset.to_le_bytes());
        }
        let count = self.entries.len() as u64;
        let eocd64 = cd_start + cd.len() as u64;
        cd.extend_from_slice(&EOCD64_SIG.to_le_bytes());
        cd.extend_from_slice(&44u64.to_le_bytes());
        cd.extend_from_slice(&VERSION.to_le_bytes());
        cd.extend_from_slice(&VERSION.to_le_bytes());
        cd.extend_from_slice(&0u32.to_le_bytes());
        cd.extend_from_slice(&0u32.to_le_bytes());
        cd.extend_from_slice(&count.to_le_bytes());
        cd.extend_from_slice(&count.to_le_bytes());
        cd.extend_from_slice(&(eocd64 - cd_start).to_le_bytes());
        cd.extend_from_slice(&cd_start.to_le_bytes());
        cd.extend_from_slice(&EOCD64_LOCATOR_SIG.to_le_bytes());
        cd.extend_from_slice(&0u32.to_le_bytes());
        cd.extend_from_slice(&eocd64.to_le_bytes());
        cd.extend_from_slice(&1u32.to_le_bytes());
        cd.extend_from_slice(&EOCD_SIG.to_le_bytes());
        cd.extend_from_slice(&[0u8; 4]);
        cd.extend_from_slice(&u16::MAX.to_le_bytes());
        cd.extend_from_slice(&u16::MAX.to_le_bytes());
        cd.extend_from_slice(&u32::MAX.to_le_bytes());
        cd.extend_from_slice(&u32::MAX.to_le_bytes());
        cd.extend_from_slice(&(comment.len() as u16).to_le_bytes());
        cd.extend_from_slice(comment.as_bytes());
        put(sink, &cd).map_err(|e| match e {
            WriteError::Io { source, .. } => io_err(sink, source),
            other => other,
        })
    }
}

/// Why a ZIP container cannot be read: an offset and a reason.
#[derive(Debug)]
pub struct ZipError {
    pub offset: u64,
    pub reason: String,
}

fn bad(offset: u64, reason: impl Into<String>) -> ZipError {
    ZipError {
        offset,
        reason: reason.into(),
    }
}

/// A member as the central directory lists it.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub method: u16,
    pub compressed: u64,
    pub size: u64,
    /// Offset of the local header.
    pub header: u64,
}

/// The central directory of a ZIP (ZIP64 or not) file.
#[derive(Debug)]
pub struct ZipIndex {
    pub members: Vec<Member>,
    pub comment: String,
}

/// Most members listed: an AFF4 image of 1 TiB has ~32k bevies, two members each.
const MAX_MEMBERS: u64 = 1 << 22;

pub fn read_at(file: &ImageFile, offset: u64, buf: &mut [u8]) -> Result<(), ZipError> {
    use std::io::{Seek, SeekFrom};
    let mut f = file;
    f.seek(SeekFrom::Start(offset))
        .and_then(|_| f.read_exact(buf))
        .map_err(|e| bad(offset, format!("reading {} bytes: {e}", buf.len())))
}

/// Where the central directory is, as the end records say.
struct Directory {
    count: u64,
    cd_size: u64,
    cd_start: u64,
    comment: String,
    /// File offset of the end of central directory record.
    eocd_at: u64,
}

/// Reads the end of central directory record (and the ZIP64 one it points
/// at): the directory's place and the volume's comment.
fn end_records(file: &ImageFile, len: u64) -> Result<Directory, ZipError> {
    // The end record is within the last 22 + 65535 bytes.
    let tail_len = len.min(22 + 65535);
    let tail_start = len - tail_len;
    let mut tail = vec![0u8; tail_len as usize];
    read_at(file, tail_start, &mut tail)?;
    let eocd = (0..tail.len().saturating_sub(21))
        .rev()
        .find(|&i| u32_le(&tail, i) == EOCD_SIG)
        .ok_or_else(|| bad(tail_start, "no ZIP end of central directory record"))?;
    let comment_len = u16_le(&tail, eocd + 20) as usize;
    let eocd_at = tail_start + eocd as u64;
    // The comment ends the file: one cut short is a truncated volume (its
    // URN, the comment, lost).
    let comment = tail
        .get(eocd + 22..eocd + 22 + comment_len)
        .ok_or_else(|| {
            bad(
                eocd_at,
                format!(
                    "ZIP comment of {comment_len} bytes runs past the end of the file: truncated"
                ),
            )
        })?;
    let mut directory = Directory {
        count: u64::from(u16_le(&tail, eocd + 10)),
        cd_size: u64::from(u32_le(&tail, eocd + 12)),
        cd_start: u64::from(u32_le(&tail, eocd + 16)),
        comment: String::from_utf8_lossy(comment).into_owned(),
        eocd_at,
    };
    if eocd >= 20 && u32_le(&tail, eocd - 20) == EOCD64_LOCATOR_SIG {
        let at = u64_le(&tail, eocd - 20 + 8);
        if at.checked_add(56).is_none_or(|end| end > len) {
            return Err(bad(
                eocd_at - 20,
                "ZIP64 end record lies past the end of the file",
            ));
        }
        let mut rec = [0u8; 56];
        read_at(file, at, &mut rec)?;
        if u32_le(&rec, 0) != EOCD64_SIG {
            return Err(bad(
                at,
                "no ZIP64 end of central directory record where the locator points",
            ));
        }
        directory.count = u64_le(&rec, 32);
        directory.cd_size = u64_le(&rec, 40);
        directory.cd_start = u64_le(&rec, 48);
    }
    Ok(directory)
}

/// The central directory entry at `at` of `cd` (which starts at file
/// offset `cd_start`), and the offset of the next one.
fn central_entry(cd: &[u8], at: usize, cd_start: u64) -> Result<(Member, usize), ZipError> {
    let here = cd_start + at as u64;
    if cd.len() - at < 46 || u32_le(cd, at) != CENTRAL_SIG {
        return Err(bad(here, "bad central directory entry"));
    }
    let method = u16_le(cd, at + 10);
    let mut compressed = u64::from(u32_le(cd, at + 20));
    let mut size = u64::from(u32_le(cd, at + 24));
    let name_len = u16_le(cd, at + 28) as usize;
    let extra_len = u16_le(cd, at + 30) as usize;
    let comment_len = u16_le(cd, at + 32) as usize;
    let mut header = u64::from(u32_le(cd, at + 42));
    let end = at + 46 + name_len + extra_len + comment_len;
    if end > cd.len() {
        return Err(bad(here, "central directory entry runs past the directory"));
    }
    let name = String::from_utf8_lossy(&cd[at + 46..at + 46 + name_len]).into_owned();
    // ZIP64 extra: only the fields whose 32-bit value is all ones, in order.
    let mut extra = &cd[at + 46 + name_len..at + 46 + name_len + extra_len];
    while extra.len() >= 4 {
        let (id, n) = (u16_le(extra, 0), u16_le(extra, 2) as usize);
        let body = &extra[4..(4 + n).min(extra.len())];
        if id == ZIP64_EXTRA {
            let mut fields = body.chunks_exact(8).map(|c| u64_le(c, 0));
            for v in [&mut size, &mut compressed, &mut header] {
                if *v == u64::from(u32::MAX) {
                    *v = fields
                        .next()
                        .ok_or_else(|| bad(here, "short ZIP64 extra field"))?;
                }
            }
        }
        extra = &extra[(4 + n).min(extra.len())..];
    }
    let member = Member {
        name,
        method,
        compressed,
        size,
        header,
    };
    Ok((member, end))
}

impl ZipIndex {
    /// Reads the end records, then every central directory entry.
    pub fn open(file: &ImageFile, len: u64) -> Result<ZipIndex, ZipError> {
        let Directory {
            count,
            cd_size,
            cd_start,
            comment,
            eocd_at,
        } = end_records(file, len)?;
        if count > MAX_MEMBERS {
            return Err(bad(
                eocd_at,
                format!("{count} members exceed the limit of {MAX_MEMBERS}"),
            ));
        }
        if cd_start.checked_add(cd_size).is_none_or(|end| end > len) || cd_size < count * 46 {
            return Err(bad(eocd_at, format!("central directory at {cd_start:#x} (+{cd_size:#x}) does not fit the file ({len:#x} bytes)")));
        }
        let mut cd = vec![0u8; cd_size as usize];
        read_at(file, cd_start, &mut cd)?;
        let mut members = Vec::with_capacity(count as usize);
        let mut at = 0usize;
        for _ in 0..count {
            let (member, next) = central_entry(&cd, at, cd_start)?;
            members.push(member);
            at = next;
        }
        Ok(ZipIndex { members, comment })
    }

    pub fn find(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }
}

/// Offset of a member's data: after its local header, name and extra.
pub fn data_offset(file: &ImageFile, len: u64, m: &Member) -> Result<u64, ZipError> {
    if m.header.checked_add(30).is_none_or(|end| end > len) {
        return Err(bad(
            m.header,
            format!("local header of {} lies past the end of the file", m.name),
        ));
    }
    let mut h = [0u8; 30];
    read_at(file, m.header, &mut h)?;
    if u32_le(&h, 0) != LOCAL_SIG {
        return Err(bad(m.header, format!("no local header for {}", m.name)));
    }
    let start = m.header + 30 + u64::from(u16_le(&h, 26)) + u64::from(u16_le(&h, 28));
    if start.checked_add(m.compressed).is_none_or(|end| end > len) {
        return Err(bad(
            m.header,
            format!(
                "member {} ({:#x} bytes) runs past the end of the file: truncated",
                m.name, m.compressed
            ),
        ));
    }
    Ok(start)
}

/// A whole small member, inflated if it was deflated; at most `limit` bytes.
pub fn read_member(
    file: &ImageFile,
    len: u64,
    m: &Member,
    limit: u64,
) -> Result<Vec<u8>, ZipError> {
    if m.size > limit || m.compressed > limit {
        return Err(bad(
            m.header,
            format!(
                "member {} of {:#x} bytes exceeds the {limit:#x}-byte limit",
                m.name, m.size
            ),
        ));
    }
    let start = data_offset(file, len, m)?;
    let mut raw = vec![0u8; m.compressed as usize];
    read_at(file, start, &mut raw)?;
    match m.method {
        0 => Ok(raw),
        8 => {
            let mut out = Vec::new();
            flate2::read::DeflateDecoder::new(&raw[..])
                .take(limit + 1)
                .read_to_end(&mut out)
                .map_err(|e| bad(start, format!("member {}: {e}", m.name)))?;
            if out.len() as u64 > limit {
                return Err(bad(
                    start,
                    format!("member {} inflates past the limit", m.name),
                ));
            }
            Ok(out)
        }
        other => Err(bad(
            m.header,
            format!(
                "member {}: ZIP compression method {other} is not supported",
                m.name
            ),
        )),
    }
}

/// Where `name`'s stored bytes are, for positional reads of large members.
pub fn stored_span(file: &ImageFile, len: u64, m: &Member) -> Result<u64, ZipError> {
    if m.method != 0 {
        return Err(bad(
            m.header,
            format!(
                "member {}: only stored (uncompressed) bevies can be read in place",
                m.name
            ),
        ));
    }
    data_offset(file, len, m)
}
