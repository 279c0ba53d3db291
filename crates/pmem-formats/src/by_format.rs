//! What each [`Format`] opens and writes with: the one place that names
//! every format's reader and writer. The readers and writers depend on
//! [`crate::reader`] and [`crate::write`]'s helpers, never on this module.

use crate::detect::{detect_file, unwrap_zstd};
use crate::image_file::open_file;
use crate::reader::ImageReader;
use crate::{aff4, avml, dmp, elf, lime, macho, raw, Format, FormatError, ImageFile};
use pmem_core::{ByteSink, Chunk, MemoryMap, Plan, SinkSummary, WriteError};
use std::io;
use std::path::Path;

/// Opens an image for reading. `raw_map` says where a raw image's bytes
/// belong (a raw file cannot tell); without it a raw image is one range
/// `[0, file length)`. Other formats carry their own map and ignore it.
pub fn open_image(
    path: &Path,
    raw_map: Option<MemoryMap>,
) -> Result<Box<dyn ImageReader>, FormatError> {
    let (file, _) = unwrap_zstd(path, open_file(path)?.into())?;
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
            hash: None,
        })
    }
}
