//! Which format an image is, from its first bytes, and the zstd layer a
//! compressed image is wrapped in.

use crate::image_file::{file_len, nonempty_len, open_file, read_exact_at};
use crate::{macho, zstd, Format, FormatError, ImageFile};
use std::io;
use std::path::Path;

/// Identifies an image by its first bytes: "EMiL" is LiME, "\x7fELF" is
/// ELF, "PAGE" is a crash dump, MH_MAGIC_64 with MH_CORE is Mach-O, anything else is raw (raw images have no header to recognise).
pub fn detect(path: &Path) -> Result<Format, FormatError> {
    let file = open_file(path)?;
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

pub(crate) fn detect_file(path: &Path, file: &ImageFile) -> Result<Format, FormatError> {
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
