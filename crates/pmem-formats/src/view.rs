//! An image of a plan as a reader of its format finds it, without the
//! memory: the bytes the format adds (headers, notes) and, at their file
//! offsets, the physical ranges whose bytes are read on demand. `pmem
//! mount` serves live memory as raw, LiME and ELF files this way. The
//! layouts are the writers' own (LiME's record header, ELF's laid-out
//! header), and a test renders each view over known memory and compares it
//! with what the writer writes.

use crate::write::{check_plan_nonempty, plan_error};
use crate::{elf, lime, Format};
use pmem_core::{Plan, Range, WriteError};

/// What lies at a view's file offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewPiece {
    /// Bytes of the format itself.
    Bytes(Vec<u8>),
    /// The bytes of physical memory in this range.
    Memory(Range),
}

impl ViewPiece {
    /// Bytes the piece covers in the file.
    pub fn len(&self) -> u64 {
        match self {
            ViewPiece::Bytes(bytes) => bytes.len() as u64,
            ViewPiece::Memory(range) => range.len(),
        }
    }

    /// Never: pieces are not empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An image file laid out as pieces at ascending file offsets; what lies
/// between pieces (alignment padding, raw's holes) reads as zeros.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageView {
    pieces: Vec<(u64, ViewPiece)>,
    len: u64,
}

impl ImageView {
    /// The view of an image of `plan` in `format`: raw, LiME or ELF (the
    /// formats that store memory uncompressed at fixed offsets and need
    /// nothing from the copy; an ELF view has no time map note).
    pub fn new(format: Format, plan: &Plan) -> Result<ImageView, WriteError> {
        check_plan_nonempty(plan, format)?;
        let mut pieces = Vec::with_capacity(plan.ranges.len() * 2 + 1);
        let len = match format {
            Format::Raw => {
                for &range in plan.ranges.ranges() {
                    pieces.push((range.start, ViewPiece::Memory(range)));
                }
                plan.ranges.ranges().last().map_or(0, |r| r.end)
            }
            Format::Lime => {
                let mut at = 0u64;
                for &range in plan.ranges.ranges() {
                    pieces.push((at, ViewPiece::Bytes(lime::header(range).to_vec())));
                    at += lime::HEADER_LEN;
                    pieces.push((at, ViewPiece::Memory(range)));
                    at = at
                        .checked_add(range.len())
                        .ok_or_else(|| plan_error("the LiME image would exceed 2^64 bytes"))?;
                }
                at
            }
            Format::Elf => {
                if plan.time_map != pmem_core::TimeMapPlan::None {
                    return Err(plan_error(
                        "an ELF view has no time map: the memory is read when the view is",
                    ));
                }
                let layout = elf::data_layout(plan)?;
                let symbols_at = layout.head.len() as u64;
                pieces.push((0, ViewPiece::Bytes(layout.head)));
                if !layout.symbols.is_empty() {
                    pieces.push((symbols_at, ViewPiece::Bytes(layout.symbols.to_vec())));
                }
                let mut end = 0;
                for (&range, offset) in plan.ranges.ranges().iter().zip(layout.offsets) {
                    pieces.push((offset, ViewPiece::Memory(range)));
                    end = offset + range.len();
                }
                end
            }
            other => {
                return Err(plan_error(format!(
                    "{} images are not served as views (raw, lime and elf are)",
                    other.name()
                )))
            }
        };
        Ok(ImageView { pieces, len })
    }

    /// The file's length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty (never: a plan has a range).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pieces (file offset, piece), by offset.
    pub fn pieces(&self) -> &[(u64, ViewPiece)] {
        &self.pieces
    }

    /// The pieces that overlap the file's `[offset, offset + len)`, as
    /// (piece's file offset, piece).
    pub fn overlapping(&self, offset: u64, len: u64) -> &[(u64, ViewPiece)] {
        let end = offset.saturating_add(len);
        let first = self
            .pieces
            .partition_point(|(at, piece)| at + piece.len() <= offset);
        let past = first + self.pieces[first..].partition_point(|(at, _)| *at < end);
        &self.pieces[first..past]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::by_format::writer;
    use pmem_core::{Arch, Chunk, MemoryMap};
    use std::io;

    fn byte_at(addr: u64) -> u8 {
        (addr as u8) ^ ((addr >> 12) as u8) | 1
    }

    fn plan() -> Plan {
        let ranges = MemoryMap::new(vec![
            Range::new(0x1000, 0x9f000).unwrap(),
            Range::new(0x10_0000, 0x30_0000).unwrap(),
            Range::new(0x1_0000_0000, 0x1_0000_3000).unwrap(),
        ])
        .unwrap();
        let mut plan = Plan::new(ranges, Arch::X86_64);
        plan.direct_map_offset = Some(0xffff_8880_0000_0000);
        plan.vmcoreinfo = Some(b"OSRELEASE=6.1.0-test\n".to_vec());
        plan.metadata_json = Some("{\"served\":true}".into());
        // Not a multiple of 4: the note's padding follows it.
        plan.symbols = Some(vec![7; 5001]);
        plan
    }

    /// The view's bytes, memory filled with [`byte_at`].
    fn render(view: &ImageView, offset: u64, len: u64) -> Vec<u8> {
        let mut out = vec![0u8; len as usize];
        for (at, piece) in view.overlapping(offset, len) {
            let from = (*at).max(offset);
            let to = (at + piece.len()).min(offset + len);
            for pos in from..to {
                out[(pos - offset) as usize] = match piece {
                    ViewPiece::Bytes(bytes) => bytes[(pos - at) as usize],
                    ViewPiece::Memory(range) => byte_at(range.start + (pos - at)),
                };
            }
        }
        out
    }

    /// A sink keeping what it is given (a raw image of a 4 GiB machine
    /// is mostly zeros; kept as a sparse list of written pieces).
    type Written = std::sync::Arc<std::sync::Mutex<Vec<(u64, Vec<u8>)>>>;
    struct Kept(Written, u64);

    impl pmem_core::ByteSink for Kept {
        fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
            self.0.lock().unwrap().push((self.1, buf.to_vec()));
            self.1 += buf.len() as u64;
            Ok(())
        }
        fn write_zeros(&mut self, len: u64) -> io::Result<()> {
            self.1 += len;
            Ok(())
        }
        fn position(&self) -> u64 {
            self.1
        }
        fn finish(self: Box<Self>) -> io::Result<pmem_core::SinkSummary> {
            Ok(pmem_core::SinkSummary {
                bytes: self.1,
                hash: None,
            })
        }
    }

    #[test]
    fn each_view_is_what_its_writer_writes() {
        let plan = plan();
        for format in [Format::Raw, Format::Lime, Format::Elf] {
            let kept = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let mut w = writer(format, Box::new(Kept(kept.clone(), 0)));
            w.begin(&plan).unwrap();
            for range in plan.ranges.ranges() {
                let data: Vec<u8> = (range.start..range.end).map(byte_at).collect();
                w.write_chunk(range.start, Chunk::Data(&data)).unwrap();
            }
            let written = w.finish().unwrap().bytes;
            let view = ImageView::new(format, &plan).unwrap();
            assert_eq!(view.len(), written, "{format:?} length");
            // Every byte the writer wrote, at its offset; zeros elsewhere.
            let pieces = kept.lock().unwrap();
            let mut covered = 0;
            for (at, bytes) in pieces.iter() {
                assert_eq!(
                    render(&view, *at, bytes.len() as u64),
                    *bytes,
                    "{format:?} at {at:#x}"
                );
                covered += bytes.len() as u64;
            }
            let data: u64 = plan.ranges.ranges().iter().map(Range::len).sum();
            assert!(covered >= data, "{format:?}: the writer wrote the memory");
            // And the view has nothing where the writer wrote nothing.
            let written_at: Vec<(u64, u64)> = pieces
                .iter()
                .map(|(at, b)| (*at, at + b.len() as u64))
                .collect();
            for (at, piece) in view.pieces() {
                let end = at + piece.len();
                let by_writer: u64 = written_at
                    .iter()
                    .filter(|&&(s, e)| s < end && *at < e)
                    .map(|&(s, e)| e.min(end) - s.max(*at))
                    .sum();
                assert_eq!(by_writer, end - at, "{format:?}: view piece at {at:#x}");
            }
        }
    }

    #[test]
    fn overlapping_finds_the_pieces_of_a_request() {
        let view = ImageView::new(Format::Lime, &plan()).unwrap();
        let pieces = view.pieces();
        // A request inside the first record's data.
        assert_eq!(view.overlapping(0x40, 0x10), &pieces[1..2]);
        // Straddling the first data's end and the second header.
        let second_header = pieces[2].0;
        assert_eq!(view.overlapping(second_header - 4, 8), &pieces[1..3]);
        // Past the end: nothing.
        assert!(view.overlapping(view.len(), 4096).is_empty());
        // The raw view's holes read as zeros.
        let raw = ImageView::new(Format::Raw, &plan()).unwrap();
        assert!(raw.overlapping(0, 0x1000).is_empty());
        assert_eq!(render(&raw, 0x9f000, 0x1000), vec![0; 0x1000]);
        assert_eq!(raw.len(), 0x1_0000_3000);
    }

    #[test]
    fn formats_that_need_the_copy_are_refused() {
        for format in [Format::Avml, Format::Aff4, Format::Dmp] {
            let err = ImageView::new(format, &plan()).unwrap_err();
            assert!(err.to_string().contains("not served as views"), "{err}");
        }
        let mut timed = plan();
        timed.time_map = pmem_core::TimeMapPlan::Measured;
        assert!(ImageView::new(Format::Elf, &timed).is_err());
    }
}
