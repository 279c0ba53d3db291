//! What every image reader offers, and the translation table of readers
//! that serve memory from the file. Opening an image whatever its format
//! is [`crate::by_format`]'s.

use crate::{Format, ImageFile};
use pmem_core::{Arch, FileMap, MemoryMap, PhysicalMemory, Range, ReadError, WindowsMetadata};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// What an image records besides its bytes: the fields of
/// [`pmem_core::Plan`] a format can carry (the plan's ranges are the
/// reader's [`PhysicalMemory::memory_map`]), each `None` or empty where the
/// format has no place for it or the image left it out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageMetadata {
    /// The machine: ELF e_machine, Mach-O cputype, the dump header's
    /// layout, AFF4's `aff4:architecture`. LiME, raw and AVML have none.
    pub arch: Option<Arch>,
    /// Kernel virtual address of physical 0, when every ELF segment's
    /// p_vaddr - p_paddr agrees and is nonzero (AFF4 states it too).
    pub direct_map_offset: Option<u64>,
    /// The descriptor of a VMCOREINFO note.
    pub vmcoreinfo: Option<Vec<u8>>,
    /// The pmem metadata note of an image written by pmem.
    pub metadata_json: Option<String>,
    /// Windows kernel metadata a crash dump header carries.
    pub windows: Option<WindowsMetadata>,
    /// The symbol bundle captured with the memory (opaque bytes, at most
    /// [`MAX_SYMBOLS`](crate::MAX_SYMBOLS)): ELF, Mach-O and AFF4 images
    /// written by pmem carry it ([`Format::carries_symbols`]).
    pub symbols: Option<Vec<u8>>,
    /// When each part of memory was read (pmem's time map JSON, the
    /// manifest's `time_map`): ELF and AFF4 images of an acquisition.
    pub time_map_json: Option<String>,
    /// Memory the image marks as not read (its bytes read as zeros). Only
    /// AFF4 can say so inside the image; other formats leave it to the
    /// manifest.
    pub unreadable: Vec<Range>,
}

/// A readable image: physical memory plus what the format carries about it.
pub trait ImageReader: PhysicalMemory {
    /// The format the file was detected and read as.
    fn format(&self) -> Format;

    /// What the image records besides its bytes.
    fn metadata(&self) -> &ImageMetadata;
}

/// [`PhysicalMemory`] and [`ImageReader`] for a reader whose memory is its
/// `mapped` field (a [`MappedFile`]) and whose metadata its `metadata`
/// field.
macro_rules! mapped_file_reader {
    ($reader:ty, $format:expr) => {
        impl pmem_core::PhysicalMemory for $reader {
            fn memory_map(&self) -> &pmem_core::MemoryMap {
                self.mapped.memory_map()
            }

            fn read_at(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), pmem_core::ReadError> {
                self.mapped.read_at(addr, buf)
            }
        }

        impl $crate::ImageReader for $reader {
            fn format(&self) -> $crate::Format {
                $format
            }

            fn metadata(&self) -> &$crate::ImageMetadata {
                &self.metadata
            }
        }
    };
}
pub(crate) use mapped_file_reader;

/// The memory of a reader whose format stores each range as one run of the
/// file (LiME, raw, ELF, Mach-O, crash dump): the file and its
/// [`FileMap`].
#[derive(Debug)]
pub(crate) struct MappedFile {
    path: PathBuf,
    file: ImageFile,
    map: FileMap,
}

impl MappedFile {
    pub(crate) fn new(path: &Path, file: ImageFile, map: FileMap) -> MappedFile {
        MappedFile {
            path: path.into(),
            file,
            map,
        }
    }

    pub(crate) fn memory_map(&self) -> &MemoryMap {
        self.map.memory_map()
    }

    pub(crate) fn read_at(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let len = buf.len() as u64;
        let Some(offset) = self.map.locate_within(addr, len) else {
            // The caller broke the contract; refuse rather than read
            // whatever the file holds there.
            return Err(ReadError::Fatal {
                what: format!("{}: {len:#x} bytes requested", self.path.display()),
                addr,
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not inside one range of the image's memory map",
                ),
            });
        };
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
