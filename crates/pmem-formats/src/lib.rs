//! Image formats of pmem: one module per format, each with its writer (an
//! [`ImageWriter`](pmem_core::ImageWriter) over a [`ByteSink`]) and its reader (an [`ImageReader`]
//! over a file) side by side, plus detection by magic.
//!
//! * [`lime`]: LiME v1, one 32-byte header per range followed by its bytes.
//! * [`raw`]: zero-padded raw, file offset == physical address.
//! * [`elf`]: ELF64 core file, one `PT_LOAD` per range, VMCOREINFO and pmem
//!   metadata as notes.
//! * [`avml`]: AVML v2 ("compressed LiME"): snappy-framed blocks, as AVML
//!   `--compress` writes them.
//! * [`dmp`]: Microsoft full memory crash dump (runs or page bitmap).
//! * [`macho`]: Mach-O 64-bit core, one `LC_SEGMENT_64` per range (OSXPMem).
//! * [`aff4`]: AFF4 Standard ZIP64 volume, an `aff4:Map` over an
//!   `aff4:ImageStream` (the pmem 2.x/3.x imagers' default).
//!
//! Readers parse untrusted files: every size they act on is checked against
//! the file length first, and every problem is a [`FormatError`] naming the
//! file and the offset of the bad structure.

pub mod aff4;
pub mod avml;
pub mod dmp;
pub mod elf;
pub mod lime;
pub mod macho;
pub mod raw;
pub mod zstd;

#[cfg(test)]
mod test_util;

use pmem_core::writer::ChunkCursor;
use pmem_core::{
    Arch, ByteSink, Chunk, MemoryMap, PhysicalMemory, Plan, ReadError, SinkSummary,
    WindowsMetadata, WriteError,
};
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The image formats pmem writes and reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    Lime,
    Raw,
    Elf,
    /// Windows crash dump; needs Windows metadata and page-aligned ranges.
    Dmp,
    /// AVML v2 compressed LiME (`--format lime --compress snappy`).
    Avml,
    /// Mach-O 64-bit core (OSXPMem).
    Macho,
    /// AFF4 Standard volume (pmem 2.x/3.x imagers).
    Aff4,
}

impl Format {
    /// Every format, in the order the CLI lists them.
    pub const ALL: [Format; 7] = [
        Format::Lime,
        Format::Raw,
        Format::Elf,
        Format::Dmp,
        Format::Avml,
        Format::Macho,
        Format::Aff4,
    ];

    /// The name the CLI and the manifest use.
    pub fn name(&self) -> &'static str {
        match self {
            Format::Lime => "lime",
            Format::Raw => "raw",
            Format::Elf => "elf",
            Format::Dmp => "dmp",
            Format::Avml => "avml",
            Format::Macho => "macho",
            Format::Aff4 => "aff4",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A format name that [`Format::from_str`] does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown image format {0:?}: expected one of lime, raw, elf, dmp, avml, macho, aff4")]
pub struct UnknownFormat(pub String);

impl FromStr for Format {
    type Err = UnknownFormat;

    fn from_str(s: &str) -> Result<Format, UnknownFormat> {
        Format::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownFormat(s.to_string()))
    }
}

/// Why an image file cannot be read. Every variant names the file and the
/// file offset of the problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    #[error("{}: at file offset {offset:#x}: {source}", path.display())]
    Io {
        path: PathBuf,
        offset: u64,
        source: io::Error,
    },
    #[error("{}: at file offset 0x0: the file is empty, not a memory image", path.display())]
    Empty { path: PathBuf },
    #[error("{}: at file offset {offset:#x}: invalid {format} image: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        format: Format,
        reason: String,
    },
    #[error("{}: at file offset {offset:#x}: {reason}", path.display())]
    Unsupported {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
}

impl FormatError {
    pub fn path(&self) -> &Path {
        match self {
            FormatError::Io { path, .. }
            | FormatError::Empty { path }
            | FormatError::Corrupt { path, .. }
            | FormatError::Unsupported { path, .. } => path,
        }
    }

    /// File offset of the problem.
    pub fn offset(&self) -> u64 {
        match self {
            FormatError::Empty { .. } => 0,
            FormatError::Io { offset, .. }
            | FormatError::Corrupt { offset, .. }
            | FormatError::Unsupported { offset, .. } => *offset,
        }
    }
}

/// A readable image: physical memory plus what the format carries about it.
pub trait ImageReader: PhysicalMemory {
    fn format(&self) -> Format;

    /// The ELF e_machine; `None` for formats without one.
    fn arch(&self) -> Option<Arch> {
        None
    }

    /// The pmem metadata note of an ELF image written by pmem.
    fn metadata_json(&self) -> Option<&str> {
        None
    }

    /// The descriptor of a VMCOREINFO note.
    fn vmcoreinfo(&self) -> Option<&[u8]> {
        None
    }

    /// Kernel virtual address of physical 0, when every segment's
    /// p_vaddr - p_paddr agrees and is nonzero.
    fn direct_map_offset(&self) -> Option<u64> {
        None
    }

    /// Windows kernel metadata a crash dump header carries.
    fn windows(&self) -> Option<WindowsMetadata> {
        None
    }

    /// Memory the image marks as not read (its bytes read as zeros). Only
    /// AFF4 can say so inside the image; other formats leave it to the
    /// manifest.
    fn unreadable(&self) -> Vec<pmem_core::Range> {
        Vec::new()
    }
}

/// A writer for `format` that sends its bytes to `sink`.
pub fn writer(format: Format, sink: Box<dyn ByteSink>) -> Box<dyn pmem_core::ImageWriter> {
    match format {
        Format::Lime => Box::new(lime::LimeWriter::new(sink)),
        Format::Raw => Box::new(raw::RawWriter::new(sink)),
        Format::Elf => Box::new(elf::writer(sink)),
        Format::Dmp => Box::new(dmp::DmpWriter::new(sink)),
        Format::Avml => Box::new(avml::AvmlWriter::new(sink)),
        Format::Macho => Box::new(macho::writer(sink)),
        Format::Aff4 => Box::new(aff4::Aff4Writer::new(sink)),
    }
}

/// Identifies an image by its first bytes: "EMiL" is LiME, "\x7fELF" is
/// ELF, "PAGE" is a crash dump, MH_MAGIC_64 with MH_CORE is Mach-O, anything else is raw (raw images have no header to recognise).
pub fn detect(path: &Path) -> Result<Format, FormatError> {
    let file = open(path)?;
    detect_file(path, &file.into())
}

/// [`detect`] for an image already opened (a decrypting stream).
pub fn detect_image(path: &Path, file: &ImageFile) -> Result<Format, FormatError> {
    detect_file(path, file)
}

/// An image compressed with `--compress zstd` (or by `zstd` itself) as the
/// image it holds, decompressed where it is read; other files as they are.
/// The flag says whether it was zstd.
pub fn unwrap_zstd(path: &Path, file: ImageFile) -> Result<(ImageFile, bool), FormatError> {
    let len = file_len(path, &file)?;
    let mut magic = [0u8; 4];
    if len < 4 {
        return Ok((file, false));
    }
    read_exact_at(path, &file, 0, &mut magic)?;
    if magic != zstd::MAGIC {
        return Ok((file, false));
    }
    // Bad zstd data is named at its offset in the compressed file.
    let io_error = |source: io::Error| FormatError::Io {
        path: path.into(),
        offset: zstd::ZstdError::offset_of(&source).unwrap_or(0),
        source,
    };
    let reader = zstd::ZstdReader::new(file, len).map_err(io_error)?;
    Ok((ImageFile::stream(reader).map_err(io_error)?, true))
}

/// Opens an image for reading. `raw_map` says where a raw image's bytes
/// belong (a raw file cannot tell); without it a raw image is one range
/// `[0, file length)`. Other formats carry their own map and ignore it.
pub fn open_image(
    path: &Path,
    raw_map: Option<MemoryMap>,
) -> Result<Box<dyn ImageReader>, FormatError> {
    let (file, _) = unwrap_zstd(path, open(path)?.into())?;
    open_image_file(path, file, raw_map)
}

/// [`open_image`] over an image already opened: a file, or the plaintext
/// of an encrypted image (an [`ImageFile::stream`] over age's seekable
/// decrypting reader), read in place. `path` names it in errors.
pub fn open_image_file(
    path: &Path,
    file: ImageFile,
    raw_map: Option<MemoryMap>,
) -> Result<Box<dyn ImageReader>, FormatError> {
    Ok(match detect_file(path, &file)? {
        Format::Lime => Box::new(lime::LimeReader::open(path, file)?),
        Format::Elf => Box::new(elf::ElfReader::open(path, file)?),
        Format::Raw => Box::new(raw::RawReader::open(path, file, raw_map)?),
        Format::Dmp => Box::new(dmp::DmpReader::open(path, file)?),
        Format::Avml => Box::new(avml::AvmlReader::open(path, file)?),
        Format::Macho => Box::new(macho::MachoReader::open(path, file)?),
        Format::Aff4 => Box::new(aff4::Aff4Reader::open(path, file)?),
    })
}

fn open(path: &Path) -> Result<File, FormatError> {
    File::open(path).map_err(|source| FormatError::Io {
        path: path.into(),
        offset: 0,
        source,
    })
}

fn detect_file(path: &Path, file: &ImageFile) -> Result<Format, FormatError> {
    let len = nonempty_len(path, file)?;
    let mut magic = [0u8; 4];
    if len < 4 {
        // Too short for any header: only raw can be this small.
        return Ok(Format::Raw);
    }
    read_exact_at(path, file, 0, &mut magic)?;
    match &magic {
        b"EMiL" => Ok(Format::Lime),
        b"\x7fELF" => Ok(Format::Elf),
        // Eight bytes, so that a raw image whose memory happens to start
        // with "PAGE" stays raw.
        b"PAGE" if len >= 8 => {
            let mut valid = [0u8; 4];
            read_exact_at(path, file, 4, &mut valid)?;
            Ok(match &valid {
                b"DU64" | b"DUMP" => Format::Dmp,
                _ => Format::Raw,
            })
        }
        b"AVML" => Ok(Format::Avml),
        // A ZIP local header: pmem reads no ZIP but AFF4.
        b"PK\x03\x04" => Ok(Format::Aff4),
        // MH_MAGIC_64 and MH_CORE both, so that raw memory starting with
        // the magic stays raw.
        [0xcf, 0xfa, 0xed, 0xfe] if len >= macho::HEADER_LEN => {
            let mut filetype = [0u8; 4];
            read_exact_at(path, file, 12, &mut filetype)?;
            Ok(if u32::from_le_bytes(filetype) == macho::MH_CORE {
                Format::Macho
            } else {
                Format::Raw
            })
        }
        _ => Ok(Format::Raw),
    }
}

fn avml_unsupported(path: &Path, offset: u64) -> FormatError {
    FormatError::Unsupported {
        path: path.into(),
        offset,
        reason: "an AVML compressed record (magic \"AVML\") in a LiME file: \
                 a file cannot mix LiME and AVML records"
            .into(),
    }
}

/// Files and [`ImageFile`]s: what [`file_len`] measures.
trait Length {
    fn length(&self) -> io::Result<u64>;
}

impl Length for File {
    fn length(&self) -> io::Result<u64> {
        self.metadata().map(|m| m.len())
    }
}

impl Length for ImageFile {
    fn length(&self) -> io::Result<u64> {
        match &self.source {
            Source::File(f) => f.length(),
            Source::Stream(_) => Ok(self.len),
        }
    }
}

fn file_len(path: &Path, file: &impl Length) -> Result<u64, FormatError> {
    file.length().map_err(|source| FormatError::Io {
        path: path.into(),
        offset: 0,
        source,
    })
}

/// The length of an image about to be parsed; an empty file is an error.
fn nonempty_len(path: &Path, file: &impl Length) -> Result<u64, FormatError> {
    match file_len(path, file)? {
        0 => Err(FormatError::Empty { path: path.into() }),
        len => Ok(len),
    }
}

/// The reader's "invalid `format` image at `offset`: reason" for `path`.
fn corrupt_in(path: &Path, format: Format) -> impl Fn(u64, String) -> FormatError + '_ {
    move |offset, reason| FormatError::Corrupt {
        path: path.into(),
        offset,
        format,
        reason,
    }
}

/// The bytes an image reader reads: a file, or any seekable source of a
/// known length, such as the plaintext of an age-encrypted image (age's
/// reader decrypts only the 64 KiB chunks a read touches).
#[derive(Debug)]
pub struct ImageFile {
    source: Source,
    /// The length of a stream (a file's is asked of the file).
    len: u64,
}

/// A seekable source of image bytes.
pub trait ReadSeek: Read + Seek + Send {}
impl<T: Read + Seek + Send> ReadSeek for T {}

enum Source {
    File(File),
    /// Readers take `&ImageFile`: the lock gives the stream's `&mut`.
    Stream(std::sync::Mutex<Box<dyn ReadSeek>>),
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(file) => file.fmt(f),
            Source::Stream(_) => f.write_str("Stream"),
        }
    }
}

impl ImageFile {
    /// A seekable stream; its length is found by seeking to its end.
    pub fn stream(mut reader: impl ReadSeek + 'static) -> io::Result<ImageFile> {
        let len = reader.seek(SeekFrom::End(0))?;
        reader.seek(SeekFrom::Start(0))?;
        Ok(ImageFile {
            source: Source::Stream(std::sync::Mutex::new(Box::new(reader))),
            len,
        })
    }

    /// The length in bytes (of the plaintext, for a decrypting stream).
    pub fn size(&self) -> io::Result<u64> {
        self.length()
    }

    fn with_stream<T>(&self, op: impl FnOnce(&mut dyn ReadSeek) -> io::Result<T>) -> io::Result<T> {
        match &self.source {
            Source::File(_) => unreachable!("only called for streams"),
            Source::Stream(lock) => {
                let mut guard = lock
                    .lock()
                    .map_err(|_| io::Error::other("an earlier read of the image panicked"))?;
                op(guard.as_mut())
            }
        }
    }
}

impl From<File> for ImageFile {
    fn from(file: File) -> ImageFile {
        ImageFile {
            source: Source::File(file),
            len: 0,
        }
    }
}

impl Read for ImageFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Seek for ImageFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        (&*self).seek(pos)
    }
}

impl Read for &ImageFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.source {
            Source::File(file) => {
                let mut f: &File = file;
                f.read(buf)
            }
            Source::Stream(_) => self.with_stream(|s| s.read(buf)),
        }
    }
}

impl Seek for &ImageFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        match &self.source {
            Source::File(file) => {
                let mut f: &File = file;
                f.seek(pos)
            }
            Source::Stream(_) => self.with_stream(|s| s.seek(pos)),
        }
    }
}

/// Reads exactly `buf.len()` bytes at `offset` of an image being parsed.
fn read_exact_at(
    path: &Path,
    mut file: &ImageFile,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), FormatError> {
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(buf))
        .map_err(|source| FormatError::Io {
            path: path.into(),
            offset,
            source,
        })
}

/// The part shared by all readers: ranges of physical memory stored as
/// contiguous runs of the file.
#[derive(Debug)]
struct Segments {
    path: PathBuf,
    file: ImageFile,
    map: MemoryMap,
    /// File offset of each range's first byte, parallel to `map.ranges()`.
    offsets: Vec<u64>,
}

impl Segments {
    fn read_at(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let len = buf.len() as u64;
        let index = match self.map.find(addr) {
            Some(i) if self.map.covers(addr, len) => i,
            // The caller broke the contract; refuse rather than read
            // whatever the file holds there.
            _ => {
                return Err(ReadError::Fatal {
                    what: format!("{}: {len:#x} bytes requested", self.path.display()),
                    addr,
                    source: io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "not inside one range of the image's memory map",
                    ),
                })
            }
        };
        let offset = self.offsets[index] + (addr - self.map.ranges()[index].start);
        let mut file = &self.file;
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_exact(buf))
            .map_err(|source| ReadError::Fatal {
                what: format!(
                    "{}: reading {len:#x} bytes at file offset {offset:#x}",
                    self.path.display()
                ),
                addr,
                source,
            })
    }
}

/// Writes a chunk's bytes; zero chunks become holes on file sinks.
fn write_body(sink: &mut dyn ByteSink, chunk: Chunk<'_>) -> Result<(), WriteError> {
    match chunk {
        Chunk::Data(data) => write_all(sink, data),
        Chunk::Zero(len) => write_zeros(sink, len),
    }
}

fn write_all(sink: &mut dyn ByteSink, buf: &[u8]) -> Result<(), WriteError> {
    let offset = sink.position();
    sink.write_all(buf)
        .map_err(|source| WriteError::Io { offset, source })
}

fn write_zeros(sink: &mut dyn ByteSink, len: u64) -> Result<(), WriteError> {
    let offset = sink.position();
    sink.write_zeros(len)
        .map_err(|source| WriteError::Io { offset, source })
}

/// Refuses plans no reader could open again: an image without memory is an
/// empty file for LiME and raw.
fn check_plan_nonempty(plan: &pmem_core::Plan, format: Format) -> Result<(), WriteError> {
    if plan.ranges.is_empty() {
        return Err(WriteError::Plan(format!(
            "the plan has no ranges: refusing to write an empty {format} image"
        )));
    }
    Ok(())
}

/// The commit point of every writer: only an image holding every planned
/// byte reaches the sink's `finish` (fsync + hash).
fn finish_sink(sink: Box<dyn ByteSink>, cursor: &ChunkCursor) -> Result<SinkSummary, WriteError> {
    if !cursor.is_complete() {
        return Err(WriteError::Plan(format!(
            "image incomplete: finished after {:#x} image bytes, before every planned range was written",
            sink.position()
        )));
    }
    let offset = sink.position();
    sink.finish()
        .map_err(|source| WriteError::Io { offset, source })
}

/// A format's layout of a plan: the header bytes and each range's data offset.
pub(crate) type Layout = fn(&Plan) -> Result<(Vec<u8>, Vec<u64>), WriteError>;

/// A format laid out whole before the first byte: a header (which lists the
/// ranges), then each range's data at a precomputed offset. ELF and Mach-O
/// cores are written this way, strictly forward, so they stream to pipes.
pub struct LaidOutWriter {
    format: Format,
    layout: Layout,
    sink: Box<dyn ByteSink>,
    cursor: ChunkCursor,
    offsets: Vec<u64>,
}

impl LaidOutWriter {
    pub(crate) fn new(format: Format, layout: Layout, sink: Box<dyn ByteSink>) -> LaidOutWriter {
        LaidOutWriter {
            format,
            layout,
            sink,
            cursor: ChunkCursor::default(),
            offsets: Vec::new(),
        }
    }
}

impl pmem_core::ImageWriter for LaidOutWriter {
    fn begin(&mut self, plan: &Plan) -> Result<(), WriteError> {
        check_plan_nonempty(plan, self.format)?;
        let (head, offsets) = (self.layout)(plan)?;
        write_all(self.sink.as_mut(), &head)?;
        self.offsets = offsets;
        self.cursor = ChunkCursor::new(&plan.ranges);
        Ok(())
    }

    fn write_chunk(&mut self, addr: u64, chunk: Chunk<'_>) -> Result<(), WriteError> {
        let position = self.cursor.advance(addr, chunk.len())?;
        if position.starts_range {
            // Padding up to the range's (page-aligned) data offset.
            let pad = self.offsets[position.range_index] - self.sink.position();
            write_zeros(self.sink.as_mut(), pad)?;
        }
        write_body(self.sink.as_mut(), chunk)
    }

    fn finish(self: Box<Self>) -> Result<SinkSummary, WriteError> {
        finish_sink(self.sink, &self.cursor)
    }
}

/// The exact length in bytes of the image `format`'s writer produces for
/// `plan`, known before the first byte: `Some` for the formats whose length
/// depends only on the plan (lime, raw, elf, dmp, macho), `None` for those
/// whose length depends on the memory's content (avml, aff4: compressed).
/// A destination that must declare its length up front (one HTTP PUT with
/// a Content-Length) needs `Some`.
///
/// The length is measured, not restated: the format's own writer is run
/// over the plan with every range given as one zero chunk into a sink that
/// only counts, so it cannot drift from what the writer really emits.
pub fn image_size(format: Format, plan: &Plan) -> Result<Option<u64>, WriteError> {
    match format {
        Format::Lime | Format::Raw | Format::Elf | Format::Dmp | Format::Macho => {}
        Format::Avml | Format::Aff4 => return Ok(None),
    }
    let mut writer = writer(format, Box::new(CountingSink(0)));
    writer.begin(plan)?;
    for range in plan.ranges.ranges() {
        writer.write_chunk(range.start, Chunk::Zero(range.end - range.start))?;
    }
    Ok(Some(writer.finish()?.bytes))
}

/// A sink that keeps nothing but its length (for [`image_size`]).
struct CountingSink(u64);

impl ByteSink for CountingSink {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0 += buf.len() as u64;
        Ok(())
    }

    fn write_zeros(&mut self, len: u64) -> io::Result<()> {
        self.0 += len;
        Ok(())
    }

    fn position(&self) -> u64 {
        self.0
    }

    fn finish(self: Box<Self>) -> io::Result<SinkSummary> {
        Ok(SinkSummary {
            bytes: self.0,
            sha256: [0; 32],
        })
    }
}
