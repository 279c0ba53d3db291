//! Where physical memory lies in a file: the translation table of every
//! reader that serves memory out of a file or device, whether an image
//! (LiME records, ELF or Mach-O segments, a raw file, a crash dump's runs)
//! or a live source (/proc/kcore segments, /dev/mem, /dev/crash).

use crate::range::{MemoryMap, MemoryMapError, Range};

/// A physical range and the file offset of its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilePiece {
    /// The physical addresses this piece holds.
    pub phys: Range,
    /// File offset of `phys.start`.
    pub file_offset: u64,
}

/// Sorted, disjoint physical ranges, each stored as one contiguous run of
/// a file. Adjacent pieces stay separate: two records that follow each other
/// in physical memory may lie anywhere in the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileMap {
    pieces: Vec<FilePiece>,
    map: MemoryMap,
}

/// Where a physical address lies: its file offset and how many bytes, from
/// there, its piece holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Located {
    /// File offset of the address.
    pub file_offset: u64,
    /// Bytes from the address to the end of its piece.
    pub run: u64,
}

impl FileMap {
    /// Checks that the pieces are sorted and disjoint, and that no piece's
    /// file run would pass the end of the 64-bit file offset space.
    pub fn new(pieces: Vec<FilePiece>) -> Result<FileMap, MemoryMapError> {
        let map = MemoryMap::new(pieces.iter().map(|p| p.phys).collect())?;
        if let Some(p) = pieces
            .iter()
            .find(|p| p.file_offset.checked_add(p.phys.len()).is_none())
        {
            return Err(MemoryMapError::FileOffsetOverflow {
                range: p.phys,
                file_offset: p.file_offset,
            });
        }
        Ok(FileMap { pieces, map })
    }

    /// A device whose file offsets are physical addresses (/dev/mem,
    /// /dev/crash, pmem's module, macOS's /dev/pmem): one piece covering the
    /// whole address space at file offset 0. Infallible, unlike [`new`]:
    /// that one piece can't overlap or overflow.
    ///
    /// [`new`]: FileMap::new
    pub fn identity() -> FileMap {
        let all = Range {
            start: 0,
            end: u64::MAX,
        };
        FileMap {
            pieces: vec![FilePiece {
                phys: all,
                file_offset: 0,
            }],
            map: MemoryMap::normalized(vec![all]),
        }
    }

    /// The pieces, by physical address.
    pub fn pieces(&self) -> &[FilePiece] {
        &self.pieces
    }

    /// The physical ranges, one per piece (adjacent ones not merged).
    pub fn memory_map(&self) -> &MemoryMap {
        &self.map
    }

    /// Where `addr` lies in the file, or `None` when no piece holds it.
    pub fn locate(&self, addr: u64) -> Option<Located> {
        let index = self.map.find(addr)?;
        let piece = &self.pieces[index];
        Some(Located {
            file_offset: piece.file_offset + (addr - piece.phys.start),
            run: piece.phys.end - addr,
        })
    }

    /// Where `[addr, addr + len)` lies when one piece holds all of it.
    pub fn locate_within(&self, addr: u64, len: u64) -> Option<u64> {
        self.locate(addr)
            .filter(|at| len <= at.run)
            .map(|at| at.file_offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(start: u64, end: u64, file_offset: u64) -> FilePiece {
        FilePiece {
            phys: Range::new(start, end).unwrap(),
            file_offset,
        }
    }

    #[test]
    fn adjacent_pieces_keep_their_own_file_offsets() {
        let map = FileMap::new(vec![
            piece(0, 0x1000, 0x500),
            piece(0x1000, 0x3000, 0x10000),
        ])
        .unwrap();
        assert_eq!(map.memory_map().len(), 2);
        assert_eq!(
            map.locate(0xfff),
            Some(Located {
                file_offset: 0x14ff,
                run: 1
            })
        );
        assert_eq!(
            map.locate(0x1800),
            Some(Located {
                file_offset: 0x10800,
                run: 0x1800
            })
        );
        assert_eq!(map.locate(0x3000), None);
    }

    #[test]
    fn a_request_crossing_two_pieces_is_not_within_one() {
        let map = FileMap::new(vec![piece(0, 0x1000, 0), piece(0x1000, 0x2000, 0x1000)]).unwrap();
        assert_eq!(map.locate_within(0x800, 0x800), Some(0x800));
        assert_eq!(map.locate_within(0x800, 0x801), None);
    }

    #[test]
    fn identity_puts_every_address_at_its_own_offset() {
        let map = FileMap::identity();
        assert_eq!(map.locate_within(0x1234_5000, 0x1000), Some(0x1234_5000));
        assert_eq!(map.locate(u64::MAX - 1).map(|at| at.run), Some(1));
    }

    #[test]
    fn overlapping_pieces_and_overflowing_offsets_are_refused() {
        assert!(FileMap::new(vec![piece(0, 0x2000, 0), piece(0x1000, 0x3000, 0)]).is_err());
        assert!(FileMap::new(vec![piece(0, 0x2000, u64::MAX - 0x1000)]).is_err());
    }
}
