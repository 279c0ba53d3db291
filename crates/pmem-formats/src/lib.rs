//! Image formats of pmem: one module per format, each with its writer (an
//! [`ImageWriter`](pmem_core::ImageWriter) over a [`ByteSink`](pmem_core::ByteSink)) and its reader (an [`ImageReader`]
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
//!
//! # Examples
//!
//! Open an image and read a range. The LiME file here is built by hand,
//! byte by byte as the format lays it out (a 32-byte header with the
//! inclusive last address, then the range's bytes), so the reader is
//! checked against the format rather than against pmem's own writer.
//! [`open_image`] detects the format from the magic.
//!
//! ```
//! use pmem_core::{PhysicalMemory, Range};
//! use pmem_formats::{open_image, Format};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut image = Vec::new();
//! for (start, fill) in [(0x1000u64, 0xaau8), (0x8000, 0xbb)] {
//!     image.extend_from_slice(&0x4C69_4D45u32.to_le_bytes()); // "EMiL"
//!     image.extend_from_slice(&1u32.to_le_bytes()); // version
//!     image.extend_from_slice(&start.to_le_bytes());
//!     image.extend_from_slice(&(start + 0xfff).to_le_bytes()); // inclusive
//!     image.extend_from_slice(&0u64.to_le_bytes()); // reserved
//!     image.extend(std::iter::repeat(fill).take(0x1000));
//! }
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("memory.lime");
//! std::fs::write(&path, &image)?;
//!
//! let mut reader = open_image(&path, None)?;
//! assert_eq!(reader.format(), Format::Lime);
//! assert_eq!(
//!     reader.memory_map().ranges(),
//!     &[Range::new(0x1000, 0x2000).unwrap(), Range::new(0x8000, 0x9000).unwrap()]
//! );
//! // Reads take physical addresses; the gap between the records is not
//! // in the image, and a read must lie inside one range.
//! let mut buf = [0u8; 16];
//! reader.read_at(0x8ff0, &mut buf)?;
//! assert_eq!(buf, [0xbb; 16]);
//! assert!(reader.read_at(0x1ff8, &mut buf).is_err());
//! # Ok(())
//! # }
//! ```
//!
//! Write a LiME image from memory. Any [`PhysicalMemory`] can be acquired;
//! here it is two ranges held in `Vec`s. [`copy_memory`] reads the plan's
//! ranges in order and hands them to the format's writer, which frames them
//! into the sink; the report gives the image's length and hash (BLAKE3 by
//! default) as written, which the example checks against the file.
//!
//! [`PhysicalMemory`]: pmem_core::PhysicalMemory
//! [`copy_memory`]: pmem_core::copy_memory
//!
//! ```
//! use pmem_core::sink::{HashAlgorithm, HashingSink, ImageDigest};
//! use pmem_core::{
//!     copy_memory, Arch, CopyOptions, MemoryMap, PhysicalMemory, Plan, Range, ReadError,
//! };
//! use pmem_formats::{image_size, writer, Format};
//!
//! /// Physical memory held in one `Vec` per range.
//! struct VecMemory {
//!     map: MemoryMap,
//!     bytes: Vec<Vec<u8>>,
//! }
//!
//! impl PhysicalMemory for VecMemory {
//!     fn memory_map(&self) -> &MemoryMap {
//!         &self.map
//!     }
//!
//!     fn read_at(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
//!         // The pipeline only asks for bytes inside one range of the map.
//!         let i = self.map.find(addr).expect("address in the memory map");
//!         let at = (addr - self.map.ranges()[i].start) as usize;
//!         buf.copy_from_slice(&self.bytes[i][at..at + buf.len()]);
//!         Ok(())
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Two pages at 0x1000 (the second all zero), one page at 0x5000.
//! let ranges = vec![
//!     Range::new(0x1000, 0x3000).unwrap(),
//!     Range::new(0x5000, 0x6000).unwrap(),
//! ];
//! let mut low = vec![0x11u8; 0x2000];
//! low[0x1000..].fill(0);
//! let mut memory = VecMemory {
//!     map: MemoryMap::new(ranges.clone())?,
//!     bytes: vec![low, vec![0x22; 0x1000]],
//! };
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("memory.lime");
//! // Read and write: bytes held back from the hash (AVML's headers) are
//! // hashed by reading them back.
//! let file = std::fs::File::options()
//!     .read(true)
//!     .write(true)
//!     .create_new(true)
//!     .open(&path)?;
//! let mut plan = Plan::new(MemoryMap::new(ranges)?, Arch::X86_64);
//! let report = copy_memory(
//!     &mut memory,
//!     writer(Format::Lime, Box::new(HashingSink::file(file))),
//!     &mut plan,
//!     &CopyOptions::default(),
//!     &mut |_bytes_read| {},
//! )?;
//!
//! assert_eq!(report.bytes, 0x3000);
//! assert_eq!(report.zero_bytes, 0x1000);
//! assert_eq!(report.unreadable_pages(), 0);
//! // One 32-byte header per range, then its bytes; as announced up front.
//! assert_eq!(report.image.bytes, 2 * 32 + 0x3000);
//! assert_eq!(image_size(Format::Lime, &plan)?, Some(report.image.bytes));
//!
//! let image = std::fs::read(&path)?;
//! assert_eq!(&image[..4], b"EMiL");
//! assert_eq!(&image[8..16], &0x1000u64.to_le_bytes());
//! assert_eq!(&image[16..24], &0x2fffu64.to_le_bytes()); // inclusive end
//! assert_eq!(image[32..32 + 0x1000], [0x11; 0x1000]);
//! assert_eq!(&image[0x2020..0x2020 + 4], b"EMiL");
//! assert_eq!(&image[0x2028..0x2030], &0x5000u64.to_le_bytes());
//! let mut digest = ImageDigest::new(HashAlgorithm::Blake3);
//! digest.update(&image);
//! assert_eq!(digest.summary(), report.image);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

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

mod by_format;
mod bytes;
mod detect;
mod error;
mod format;
mod image_file;
mod laid_out;
mod reader;
mod view;
mod workers;
mod write;

pub use by_format::{image_size, open_image, open_image_file, writer};
pub use detect::{detect, detect_image, unwrap_zstd};
pub use error::FormatError;
pub use format::{Format, UnknownFormat, MAX_SYMBOLS};
pub use image_file::{ImageFile, ReadSeek};
pub use laid_out::LaidOutWriter;
pub use reader::{ImageMetadata, ImageReader};
pub use view::{ImageView, ViewPiece};
