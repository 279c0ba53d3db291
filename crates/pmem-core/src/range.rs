//! Physical address ranges and memory maps.
//!
//! Internally every range is half-open, `[start, end)`. Linux (/proc/iomem)
//! and LiME write inclusive ends; conversion happens at those edges only,
//! through [`Range::from_inclusive`] and [`Range::last`].

use std::fmt;

/// A run of consecutive pages, as the manifest records unreadable or
/// changed memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRun {
    /// Physical address of the first page (a multiple of [`crate::PAGE_SIZE`]).
    pub start: u64,
    /// Number of [`crate::PAGE_SIZE`] pages in the run; at least 1.
    pub pages: u64,
}

/// A non-empty, half-open range of physical addresses `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Range {
    /// First address in the range.
    pub start: u64,
    /// One past the last address (exclusive); always greater than `start`.
    pub end: u64,
}

impl Range {
    /// `[start, end)`; `None` when empty or reversed.
    pub fn new(start: u64, end: u64) -> Option<Range> {
        (start < end).then_some(Range { start, end })
    }

    /// From an inclusive last address, as /proc/iomem and LiME write it.
    /// `None` when reversed or when `last` is u64::MAX (no representable end).
    pub fn from_inclusive(start: u64, last: u64) -> Option<Range> {
        if last < start {
            return None;
        }
        last.checked_add(1).map(|end| Range { start, end })
    }

    /// Size in bytes; never 0.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Always false: a `Range` is never empty. Present for clippy's sake.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Inclusive last address.
    pub fn last(&self) -> u64 {
        self.end - 1
    }

    /// Whether `addr` lies in `[start, end)`.
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }

    /// The addresses both ranges hold; `None` when they do not overlap
    /// (touching ranges do not overlap).
    pub fn intersect(&self, other: &Range) -> Option<Range> {
        Range::new(self.start.max(other.start), self.end.min(other.end))
    }

    /// The largest sub-range whose both ends are multiples of `align`
    /// (a power of two), or `None` if no whole aligned unit fits.
    pub fn shrink_to_alignment(&self, align: u64) -> Option<Range> {
        debug_assert!(align.is_power_of_two());
        let start = self.start.checked_add(align - 1)? & !(align - 1);
        let end = self.end & !(align - 1);
        Range::new(start, end)
    }
}

impl fmt::Display for Range {
    /// Inclusive notation, as /proc/iomem prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}-{:#x}", self.start, self.last())
    }
}

/// Why a list of ranges is not a valid [`MemoryMap`] (or
/// [`FileMap`](crate::FileMap)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MemoryMapError {
    /// Two neighbouring ranges are out of order or overlap.
    #[error("range {next} starts before the previous range {previous} ends: memory maps must be sorted and disjoint")]
    Unsorted {
        /// The earlier range in the list.
        previous: Range,
        /// The range after it, which starts before `previous` ends.
        next: Range,
    },
    /// A file piece whose bytes would run past file offset `u64::MAX`.
    #[error(
        "range {range} at file offset {file_offset:#x} would end past the largest file offset"
    )]
    FileOffsetOverflow {
        /// The physical range of the piece.
        range: Range,
        /// The file offset the piece starts at.
        file_offset: u64,
    },
}

/// Sorted, disjoint physical ranges. Adjacent ranges stay separate so that a
/// map keeps the shape its origin gave it (one LiME record per iomem entry).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryMap {
    ranges: Vec<Range>,
}

impl MemoryMap {
    /// Checks that `ranges` are sorted and disjoint.
    pub fn new(ranges: Vec<Range>) -> Result<MemoryMap, MemoryMapError> {
        for pair in ranges.windows(2) {
            if pair[1].start < pair[0].end {
                return Err(MemoryMapError::Unsorted {
                    previous: pair[0],
                    next: pair[1],
                });
            }
        }
        Ok(MemoryMap { ranges })
    }

    /// Sorts, then merges overlapping and adjacent ranges into one.
    pub fn normalized(mut ranges: Vec<Range>) -> MemoryMap {
        ranges.sort();
        let mut merged: Vec<Range> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        MemoryMap { ranges: merged }
    }

    /// The ranges, sorted and disjoint.
    pub fn ranges(&self) -> &[Range] {
        &self.ranges
    }

    /// Whether the map holds no range at all.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Number of ranges (not bytes: see [`total_bytes`](Self::total_bytes)).
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Sum of all range lengths.
    pub fn total_bytes(&self) -> u64 {
        self.ranges.iter().map(Range::len).sum()
    }

    /// One past the highest address, 0 for an empty map.
    pub fn end(&self) -> u64 {
        self.ranges.last().map_or(0, |r| r.end)
    }

    /// Index of the range holding `addr`.
    pub fn find(&self, addr: u64) -> Option<usize> {
        let i = self.ranges.partition_point(|r| r.end <= addr);
        (i < self.ranges.len() && self.ranges[i].contains(addr)).then_some(i)
    }

    /// Whether `[addr, addr + len)` lies inside one range of the map.
    pub fn covers(&self, addr: u64, len: u64) -> bool {
        match (self.find(addr), addr.checked_add(len)) {
            (Some(i), Some(end)) => end <= self.ranges[i].end,
            _ => false,
        }
    }

    /// Every part of `self` that also lies in `other`, keeping `self`'s
    /// range boundaries (a range of `self` straddling two ranges of `other`
    /// yields two pieces).
    pub fn intersect(&self, other: &MemoryMap) -> MemoryMap {
        let mut out = Vec::new();
        for a in &self.ranges {
            let first = other.ranges.partition_point(|b| b.end <= a.start);
            for b in &other.ranges[first..] {
                if b.start >= a.end {
                    break;
                }
                if let Some(piece) = a.intersect(b) {
                    out.push(piece);
                }
            }
        }
        MemoryMap { ranges: out }
    }

    /// The parts of `self` that `other` does not cover.
    pub fn subtract(&self, other: &MemoryMap) -> MemoryMap {
        let mut out = Vec::new();
        for a in &self.ranges {
            let mut cursor = a.start;
            let first = other.ranges.partition_point(|b| b.end <= a.start);
            for b in &other.ranges[first..] {
                if b.start >= a.end {
                    break;
                }
                if let Some(gap) = Range::new(cursor, b.start.min(a.end)) {
                    out.push(gap);
                }
                cursor = cursor.max(b.end);
            }
            if let Some(tail) = Range::new(cursor, a.end) {
                out.push(tail);
            }
        }
        MemoryMap { ranges: out }
    }
}

impl<'a> IntoIterator for &'a MemoryMap {
    type Item = &'a Range;
    type IntoIter = std::slice::Iter<'a, Range>;
    fn into_iter(self) -> Self::IntoIter {
        self.ranges.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(start: u64, end: u64) -> Range {
        Range::new(start, end).unwrap()
    }

    #[test]
    fn inclusive_edges() {
        assert_eq!(
            Range::from_inclusive(0x1000, 0x9fbff),
            Some(r(0x1000, 0x9fc00))
        );
        assert_eq!(Range::from_inclusive(5, 4), None);
        assert_eq!(Range::from_inclusive(0, u64::MAX), None);
        assert_eq!(r(0x1000, 0x9fc00).last(), 0x9fbff);
        assert_eq!(r(0x1000, 0x9fc00).to_string(), "0x1000-0x9fbff");
    }

    #[test]
    fn alignment_clips_partial_pages() {
        assert_eq!(
            r(0x1000, 0x9fc00).shrink_to_alignment(4096),
            Some(r(0x1000, 0x9f000))
        );
        assert_eq!(r(0x100, 0xfff).shrink_to_alignment(4096), None);
        assert_eq!(
            r(0x10, 0x2010).shrink_to_alignment(4096),
            Some(r(0x1000, 0x2000))
        );
    }

    #[test]
    fn rejects_overlap() {
        assert!(MemoryMap::new(vec![r(0, 10), r(5, 20)]).is_err());
        assert!(MemoryMap::new(vec![r(10, 20), r(0, 5)]).is_err());
        assert!(MemoryMap::new(vec![r(0, 10), r(10, 20)]).is_ok());
    }

    #[test]
    fn intersect_splits_straddling_ranges() {
        let a = MemoryMap::new(vec![r(0, 100), r(200, 300)]).unwrap();
        let b = MemoryMap::new(vec![r(50, 60), r(90, 250)]).unwrap();
        assert_eq!(
            a.intersect(&b).ranges(),
            &[r(50, 60), r(90, 100), r(200, 250)]
        );
        assert_eq!(a.subtract(&b).ranges(), &[r(0, 50), r(60, 90), r(250, 300)]);
    }

    #[test]
    fn find_and_covers() {
        let m = MemoryMap::new(vec![r(0x1000, 0x2000), r(0x3000, 0x5000)]).unwrap();
        assert_eq!(m.find(0xfff), None);
        assert_eq!(m.find(0x1000), Some(0));
        assert_eq!(m.find(0x2000), None);
        assert_eq!(m.find(0x4fff), Some(1));
        assert!(m.covers(0x3000, 0x2000));
        assert!(!m.covers(0x3000, 0x2001));
        assert!(!m.covers(u64::MAX, 2));
        assert_eq!(m.total_bytes(), 0x3000);
        assert_eq!(m.end(), 0x5000);
    }

    fn arb_ranges() -> impl Strategy<Value = Vec<Range>> {
        prop::collection::vec((0u64..1000, 1u64..50), 0..20)
            .prop_map(|v| v.into_iter().map(|(s, l)| r(s, s + l)).collect::<Vec<_>>())
    }

    proptest! {
        #[test]
        fn intersect_and_subtract_partition(a in arb_ranges(), b in arb_ranges()) {
            let a = MemoryMap::normalized(a);
            let b = MemoryMap::normalized(b);
            let inside = a.intersect(&b);
            let outside = a.subtract(&b);
            prop_assert_eq!(inside.total_bytes() + outside.total_bytes(), a.total_bytes());
            for addr in 0..1100u64 {
                let in_a = a.find(addr).is_some();
                let in_b = b.find(addr).is_some();
                prop_assert_eq!(inside.find(addr).is_some(), in_a && in_b);
                prop_assert_eq!(outside.find(addr).is_some(), in_a && !in_b);
            }
            prop_assert!(MemoryMap::new(inside.ranges().to_vec()).is_ok());
            prop_assert!(MemoryMap::new(outside.ranges().to_vec()).is_ok());
        }
    }
}
