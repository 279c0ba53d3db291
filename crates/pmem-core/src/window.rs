//! The acquisition window: when each part of memory was read (the time
//! map), per-page digests of what was written, and the re-read that
//! compares memory with them afterwards (how much changed while it was
//! copied: the smear).

use crate::range::{MemoryMap, PageRun, Range};
use crate::source::{read_or_zero, PhysicalMemory, ReadError};
use crate::writer::{Plan, TimeMapPlan};
use crate::PAGE_SIZE;
use std::fmt::Write as _;
use std::time::Instant;

/// The time map's regions are the plan's ranges cut every this many bytes
/// (from each range's start).
pub const REGION_BYTES: u64 = 64 << 20;

/// At most this many runs of changed pages are listed by a re-read (the
/// counts are exact whatever the list holds).
pub const MAX_CHANGED_RUNS: usize = 1024;

/// The order the copy reads memory in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadOrder {
    /// Ascending physical addresses.
    #[default]
    Address,
    /// The kernel image's ranges ([`Plan::kernel_image`]) first, buffered,
    /// then the rest in address order.
    KernelFirst,
}

impl ReadOrder {
    /// `address` or `kernel-first`, as the command line and the manifest
    /// name it.
    pub fn name(self) -> &'static str {
        match self {
            ReadOrder::Address => "address",
            ReadOrder::KernelFirst => "kernel-first",
        }
    }
}

/// The plan's ranges cut into regions of at most [`REGION_BYTES`].
pub fn regions(ranges: &MemoryMap) -> Vec<Range> {
    let mut out = Vec::new();
    for range in ranges.ranges() {
        let mut start = range.start;
        while start < range.end {
            let end = start.saturating_add(REGION_BYTES).min(range.end);
            out.extend(Range::new(start, end));
            start = end;
        }
    }
    out
}

/// Index of the region holding `addr`, if any (`regions` sorted).
#[cfg(test)]
fn region_index(regions: &[Range], addr: u64) -> Option<usize> {
    let i = regions.partition_point(|r| r.end <= addr);
    regions.get(i).filter(|r| r.contains(addr)).map(|_| i)
}

/// First and last read of some memory, in microseconds from the copy's
/// start (monotonic clock): `first` is when the earliest read began,
/// `last` when the latest ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Start of the first read.
    pub first_us: u64,
    /// End of the last read.
    pub last_us: u64,
}

impl Span {
    fn widen(this: &mut Option<Span>, first_us: u64, last_us: u64) {
        match this {
            Some(span) => {
                span.first_us = span.first_us.min(first_us);
                span.last_us = span.last_us.max(last_us);
            }
            None => *this = Some(Span { first_us, last_us }),
        }
    }

    /// `last - first`, in microseconds.
    pub fn window_us(&self) -> u64 {
        self.last_us.saturating_sub(self.first_us)
    }
}

/// When each part of memory was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeMap {
    /// The order the copy read in (address order when kernel-first fell
    /// back, see [`crate::CopyReport::order_note`]).
    pub order: ReadOrder,
    /// Every read.
    pub all: Option<Span>,
    /// The regions ([`regions`] of the plan) and when each was read
    /// (`None`: never, in a copy that stopped).
    pub regions: Vec<(Range, Option<Span>)>,
    /// The kernel image's ranges ([`Plan::kernel_image`]) and the span of
    /// the reads that covered them; empty when unknown.
    pub kernel_ranges: Vec<Range>,
    /// Reads of the kernel image.
    pub kernel: Option<Span>,
    /// Bytes of the kernel image read ahead and held (kernel-first).
    pub buffered_bytes: u64,
}

/// Microseconds as milliseconds with three decimals.
fn ms(us: u64) -> String {
    format!("{}.{:03}", us / 1000, us % 1000)
}

impl TimeMap {
    /// A time map with no read recorded.
    pub fn new(plan: &Plan, order: ReadOrder) -> TimeMap {
        TimeMap {
            order,
            all: None,
            regions: regions(&plan.ranges)
                .into_iter()
                .map(|r| (r, None))
                .collect(),
            kernel_ranges: plan.kernel_image.clone(),
            kernel: None,
            buffered_bytes: 0,
        }
    }

    /// Records a read of `[addr, addr + len)` that began at `first_us` and
    /// ended at `last_us`.
    pub fn record(&mut self, addr: u64, len: u64, first_us: u64, last_us: u64) {
        if len == 0 {
            return;
        }
        Span::widen(&mut self.all, first_us, last_us);
        let end = addr + len;
        let mut i = self.regions.partition_point(|(r, _)| r.end <= addr);
        while let Some((range, span)) = self.regions.get_mut(i) {
            if range.start >= end {
                break;
            }
            Span::widen(span, first_us, last_us);
            i += 1;
        }
        if self
            .kernel_ranges
            .iter()
            .any(|k| k.start < end && addr < k.end)
        {
            Span::widen(&mut self.kernel, first_us, last_us);
        }
    }

    /// The region read over the longest time, and that time in µs.
    pub fn slowest_region(&self) -> Option<(Range, u64)> {
        self.regions
            .iter()
            .filter_map(|(r, s)| s.map(|s| (*r, s.window_us())))
            .max_by_key(|&(r, w)| (w, std::cmp::Reverse(r.start)))
    }

    /// The time map as JSON, the shape of the manifest's `time_map` field
    /// (which the formats that have room carry as is).
    pub fn to_json(&self) -> String {
        let span = |out: &mut String, s: &Option<Span>| match s {
            Some(s) => {
                let _ = write!(
                    out,
                    "\"first_ms\":{},\"last_ms\":{},\"window_ms\":{}",
                    ms(s.first_us),
                    ms(s.last_us),
                    ms(s.window_us())
                );
            }
            None => out.push_str("\"first_ms\":null,\"last_ms\":null,\"window_ms\":null"),
        };
        let mut out = String::new();
        let _ = write!(out, "{{\"order\":\"{}\",", self.order.name());
        span(&mut out, &self.all);
        out.push_str(",\"kernel\":");
        if self.kernel_ranges.is_empty() {
            out.push_str("null");
        } else {
            out.push_str("{\"ranges\":[");
            for (i, r) in self.kernel_ranges.iter().enumerate() {
                let comma = if i > 0 { "," } else { "" };
                let _ = write!(
                    out,
                    "{comma}{{\"start\":\"{:#x}\",\"last\":\"{:#x}\",\"bytes\":{}}}",
                    r.start,
                    r.last(),
                    r.len()
                );
            }
            out.push_str("],");
            span(&mut out, &self.kernel);
            let _ = write!(out, ",\"buffered_bytes\":{}}}", self.buffered_bytes);
        }
        out.push_str(",\"regions\":[");
        for (i, (r, s)) in self.regions.iter().enumerate() {
            let comma = if i > 0 { "," } else { "" };
            let _ = write!(
                out,
                "{comma}{{\"start\":\"{:#x}\",\"bytes\":{},",
                r.start,
                r.len()
            );
            match s {
                Some(s) => {
                    let _ = write!(
                        out,
                        "\"first_ms\":{},\"last_ms\":{}}}",
                        ms(s.first_us),
                        ms(s.last_us)
                    );
                }
                None => out.push_str("\"first_ms\":null,\"last_ms\":null}"),
            }
        }
        out.push_str("]}");
        out
    }

    /// Bytes a format that writes the time map after the copy reserves for
    /// the JSON of the time map `plan` names; `None` when it names none.
    pub fn json_room(plan: &Plan) -> Option<usize> {
        match &plan.time_map {
            TimeMapPlan::None => None,
            TimeMapPlan::Measured => Some(TimeMap::json_bound(plan)),
            TimeMapPlan::Carried(json) => Some(json.len()),
        }
    }

    /// An upper bound of [`to_json`](Self::to_json)'s length for any time
    /// map of `plan`: what a format must reserve before the copy to carry
    /// it after (every number at its longest).
    pub fn json_bound(plan: &Plan) -> usize {
        // A u64 is at most 20 digits, as milliseconds 21 + 4 with the
        // point; an address 18 characters with 0x.
        const SPAN: usize = 3 * (14 + 25);
        const RANGE: usize = 40 + 2 * 18 + 20;
        const REGION: usize = 40 + 18 + 20 + 2 * 25;
        200 + 2 * SPAN
            + plan.kernel_image.len() * (RANGE + 1)
            + regions(&plan.ranges).len() * (REGION + 1)
    }
}

/// Measures the copy's time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock(Instant);

impl Clock {
    pub(crate) fn start() -> Clock {
        Clock(Instant::now())
    }
    pub(crate) fn now_us(&self) -> u64 {
        self.0.elapsed().as_micros() as u64
    }
    pub(crate) fn origin(&self) -> Instant {
        self.0
    }
}

/// A digest of 8 bytes of each page of the plan, as written: what a
/// re-read compares memory with. 2 MiB per GiB of memory.
#[derive(Debug, Clone)]
pub struct PageDigests {
    /// Each range with the index of its first page in `digests`.
    ranges: Vec<(Range, usize)>,
    digests: Vec<u64>,
}

/// The digest of one page (or of the last, partial page of a range).
pub fn page_digest(bytes: &[u8]) -> u64 {
    twox_hash::XxHash3_64::oneshot(bytes)
}

impl PageDigests {
    /// Room for every page of `ranges`, all digests 0 until added.
    pub fn new(ranges: &MemoryMap) -> PageDigests {
        let mut index = 0usize;
        let mut list = Vec::with_capacity(ranges.len());
        for range in ranges.ranges() {
            list.push((*range, index));
            index += range.len().div_ceil(PAGE_SIZE) as usize;
        }
        PageDigests {
            ranges: list,
            digests: vec![0; index],
        }
    }

    /// The index of the page at `addr` (which must lie in a range).
    fn index(&self, addr: u64) -> Option<usize> {
        let i = self.ranges.partition_point(|(r, _)| r.end <= addr);
        let (range, first) = self.ranges.get(i).filter(|(r, _)| r.contains(addr))?;
        Some(first + ((addr - range.start) / PAGE_SIZE) as usize)
    }

    /// Records the digests of `buf`, read at `addr`, which starts on a
    /// page boundary of its range (counted from the range's start) and
    /// ends on one or at the range's end.
    pub fn add(&mut self, addr: u64, buf: &[u8]) {
        let Some(mut index) = self.index(addr) else {
            return;
        };
        for page in buf.chunks(PAGE_SIZE as usize) {
            if let Some(slot) = self.digests.get_mut(index) {
                *slot = page_digest(page);
            }
            index += 1;
        }
    }

    /// Number of pages covered.
    pub fn pages(&self) -> u64 {
        self.digests.len() as u64
    }
}

/// What a re-read found: how many pages differ from what was written.
#[derive(Debug, Clone, PartialEq)]
pub struct RereadReport {
    /// Pages read in both passes and compared.
    pub pages_compared: u64,
    /// Of those, pages whose content differs.
    pub pages_changed: u64,
    /// Pages left out: unreadable in the copy or in the re-read.
    pub pages_unreadable: u64,
    /// Runs of changed pages, in address order, at most
    /// [`MAX_CHANGED_RUNS`].
    pub changed: Vec<PageRun>,
    /// Whether `changed` stops short of the last changed page.
    pub changed_truncated: bool,
    /// Per region of the time map ([`regions`]): pages compared and changed.
    pub regions: Vec<(Range, u64, u64)>,
    /// How long the re-read took, in microseconds.
    pub duration_us: u64,
}

impl RereadReport {
    /// Changed pages over compared pages (0 when nothing was compared).
    pub fn ratio(&self) -> f64 {
        if self.pages_compared == 0 {
            0.0
        } else {
            self.pages_changed as f64 / self.pages_compared as f64
        }
    }
}

/// Whether page `page_addr` lies in one of `runs` (sorted); `cursor`
/// remembers where the last lookup ended (lookups ascend).
fn in_runs(runs: &[PageRun], cursor: &mut usize, page_addr: u64) -> bool {
    while let Some(run) = runs.get(*cursor) {
        if run.start + run.pages * PAGE_SIZE <= page_addr {
            *cursor += 1;
        } else {
            return run.start <= page_addr;
        }
    }
    false
}

/// Reads every range of `plan` again, `chunk_size` bytes at a time through
/// one buffer, and compares each page with its digest from the copy.
/// Pages in `unreadable` (the copy's) or unreadable now are not compared.
/// Nothing is written: the image and its hashes stay as they were.
pub fn reread(
    source: &mut dyn PhysicalMemory,
    plan: &Plan,
    digests: &PageDigests,
    unreadable: &[PageRun],
    chunk_size: u64,
) -> Result<RereadReport, ReadError> {
    let clock = Clock::start();
    let granularity = source.read_granularity().max(1);
    let chunk_size = (chunk_size.max(granularity) / granularity * granularity).max(PAGE_SIZE);
    let retry = PAGE_SIZE.max(granularity);
    let mut report = RereadReport {
        pages_compared: 0,
        pages_changed: 0,
        pages_unreadable: 0,
        changed: Vec::new(),
        changed_truncated: false,
        regions: regions(&plan.ranges)
            .into_iter()
            .map(|r| (r, 0, 0))
            .collect(),
        duration_us: 0,
    };
    let mut buf = vec![0u8; chunk_size as usize];
    let mut cursor = 0usize;
    for range in plan.ranges.ranges() {
        let mut addr = range.start;
        while addr < range.end {
            let len = chunk_size.min(range.end - addr) as usize;
            let buf = &mut buf[..len];
            // Pieces unreadable now: (address, length).
            let bad = read_or_zero(source, addr, buf, retry)?;
            for (n, page) in buf.chunks(PAGE_SIZE as usize).enumerate() {
                let offset = n * PAGE_SIZE as usize;
                let page_addr = addr + offset as u64;
                let page_end = page_addr + page.len() as u64;
                let now_bad = bad
                    .iter()
                    .any(|&(at, l)| at < page_end && page_addr < at + l);
                if now_bad || in_runs(unreadable, &mut cursor, page_addr / PAGE_SIZE * PAGE_SIZE) {
                    report.pages_unreadable += 1;
                    continue;
                }
                let Some(index) = digests.index(page_addr) else {
                    continue;
                };
                let changed = digests.digests[index] != page_digest(page);
                report.pages_compared += 1;
                let region = region_index_of(&report.regions, page_addr);
                if let Some(r) = region {
                    report.regions[r].1 += 1;
                }
                if !changed {
                    continue;
                }
                report.pages_changed += 1;
                if let Some(r) = region {
                    report.regions[r].2 += 1;
                }
                let full = report.changed.len() >= MAX_CHANGED_RUNS;
                match report.changed.last_mut() {
                    Some(run) if run.start + run.pages * PAGE_SIZE == page_addr => run.pages += 1,
                    _ if full => report.changed_truncated = true,
                    _ => report.changed.push(PageRun {
                        start: page_addr,
                        pages: 1,
                    }),
                }
            }
            addr += len as u64;
        }
    }
    report.duration_us = clock.now_us();
    Ok(report)
}

fn region_index_of(regions: &[(Range, u64, u64)], addr: u64) -> Option<usize> {
    let i = regions.partition_point(|(r, _, _)| r.end <= addr);
    regions
        .get(i)
        .filter(|(r, _, _)| r.contains(addr))
        .map(|_| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{copy_memory, CopyOptions};
    use crate::sink::{ByteSink, HashingSink, SinkSummary};
    use crate::writer::{Chunk, ChunkCursor, ImageWriter, WriteError};
    use crate::Arch;

    /// Memory in a vector that the test changes between the copy and the
    /// re-read, with pages that fail to read.
    struct ChangingMemory {
        map: MemoryMap,
        bytes: Vec<u8>,
        bad_pages: Vec<u64>,
    }

    impl PhysicalMemory for ChangingMemory {
        fn memory_map(&self) -> &MemoryMap {
            &self.map
        }
        fn read_at(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
            let end = addr + buf.len() as u64;
            if let Some(&bad) = self
                .bad_pages
                .iter()
                .find(|&&p| p < end && p + PAGE_SIZE > addr)
            {
                return Err(ReadError::Unreadable {
                    addr: bad,
                    source: std::io::Error::from_raw_os_error(5),
                });
            }
            buf.copy_from_slice(&self.bytes[addr as usize..end as usize]);
            Ok(())
        }
    }

    /// Writes the image to nowhere, hashing it.
    struct NullWriter {
        cursor: ChunkCursor,
        sink: Box<HashingSink>,
    }

    impl ImageWriter for NullWriter {
        fn begin(&mut self, plan: &Plan) -> Result<(), WriteError> {
            self.cursor = ChunkCursor::new(&plan.ranges);
            Ok(())
        }
        fn write_chunk(&mut self, addr: u64, chunk: Chunk<'_>) -> Result<(), WriteError> {
            self.cursor.advance(addr, chunk.len())?;
            let io = |source| WriteError::Io { offset: 0, source };
            match chunk {
                Chunk::Data(d) => self.sink.write_all(d).map_err(io),
                Chunk::Zero(n) => self.sink.write_zeros(n).map_err(io),
            }
        }
        fn finish(self: Box<Self>) -> Result<SinkSummary, WriteError> {
            self.sink
                .finish()
                .map_err(|source| WriteError::Io { offset: 0, source })
        }
    }

    #[test]
    fn reread_counts_the_pages_that_changed_since_the_copy() {
        let ranges = map(&[(0x1000, 0x21000), (0x100000, 0x100000 + 2 * REGION_BYTES)]);
        let end = ranges.end() as usize;
        let mut mem = ChangingMemory {
            map: ranges.clone(),
            bytes: (0..end).map(|i| (i * 7 + i / 4096) as u8).collect(),
            bad_pages: vec![0x5000],
        };
        let mut plan = Plan::new(ranges, Arch::X86_64);
        let options = CopyOptions {
            page_digests: true,
            ..CopyOptions::default()
        };
        let writer = Box::new(NullWriter {
            cursor: ChunkCursor::default(),
            sink: Box::new(HashingSink::stream(Box::new(std::io::sink()))),
        });
        let report = copy_memory(&mut mem, writer, &mut plan, &options, &mut |_| {}).unwrap();
        let digests = report.page_digests.as_ref().unwrap();
        let pages = plan.ranges.total_bytes() / PAGE_SIZE;
        assert_eq!(digests.pages(), pages);

        // Nothing changed: nothing counted, the bad page left out.
        let same = reread(&mut mem, &plan, digests, &report.unreadable, 1 << 20).unwrap();
        assert_eq!((same.pages_changed, same.pages_unreadable), (0, 1));
        assert_eq!(same.pages_compared, pages - 1);

        // One byte of three pages in a row, one page in the second region,
        // the bad page (unreadable in the copy), and a page that fails now.
        for page in [0x2000usize, 0x3000, 0x4000, 0x5000, 0x9000] {
            mem.bytes[page + 17] ^= 0xff;
        }
        let far = 0x100000 + REGION_BYTES as usize + 0x40000;
        mem.bytes[far + 4095] ^= 1;
        mem.bad_pages.push(0x9000);
        let again = reread(&mut mem, &plan, digests, &report.unreadable, 1 << 20).unwrap();
        assert_eq!(again.pages_changed, 4);
        assert_eq!(again.pages_unreadable, 2);
        assert_eq!(again.pages_compared, pages - 2);
        assert_eq!(
            again.changed,
            vec![
                PageRun {
                    start: 0x2000,
                    pages: 3
                },
                PageRun {
                    start: far as u64,
                    pages: 1
                }
            ]
        );
        assert!(!again.changed_truncated);
        let per_region: Vec<u64> = again.regions.iter().map(|r| r.2).collect();
        assert_eq!(per_region, [3, 0, 1]);
        assert_eq!(again.regions.iter().map(|r| r.1).sum::<u64>(), pages - 2);
        assert!((again.ratio() - 4.0 / (pages - 2) as f64).abs() < 1e-12);

        // Every other page changed: more runs than are listed.
        for page in (0..=(MAX_CHANGED_RUNS + 10)).map(|i| 0x100000 + 2 * i * 4096) {
            mem.bytes[page] ^= 0x55;
        }
        let many = reread(&mut mem, &plan, digests, &report.unreadable, 1 << 20).unwrap();
        assert_eq!(many.changed.len(), MAX_CHANGED_RUNS);
        assert!(many.changed_truncated);
        assert_eq!(many.pages_changed, 4 + MAX_CHANGED_RUNS as u64 + 11);
    }

    fn map(r: &[(u64, u64)]) -> MemoryMap {
        MemoryMap::new(r.iter().map(|&(s, e)| Range::new(s, e).unwrap()).collect()).unwrap()
    }

    #[test]
    fn regions_follow_ranges_and_are_cut_at_64_mib() {
        let m = map(&[(0x1000, 0x9f000), (0x100000, 0x100000 + 130 * (1 << 20))]);
        let r = regions(&m);
        assert_eq!(r.len(), 4);
        assert_eq!(r[0], Range::new(0x1000, 0x9f000).unwrap());
        assert_eq!(r[1].len(), REGION_BYTES);
        assert_eq!(r[2].start, 0x100000 + REGION_BYTES);
        assert_eq!(r[3].len(), 2 << 20);
        assert_eq!(region_index(&r, 0x100000 + REGION_BYTES), Some(2));
        assert_eq!(region_index(&r, 0xa0000), None);
    }

    #[test]
    fn time_map_records_regions_and_the_kernel_and_fits_its_bound() {
        let m = map(&[(0, 3 * REGION_BYTES)]);
        let mut plan = Plan::new(m, Arch::X86_64);
        plan.kernel_image = vec![Range::new(REGION_BYTES + 0x1000, REGION_BYTES + 0x3000).unwrap()];
        let mut t = TimeMap::new(&plan, ReadOrder::Address);
        t.record(0, 0x1000, 5, 10);
        t.record(REGION_BYTES - 0x1000, 0x2000, 20, 30_500);
        t.record(2 * REGION_BYTES, 0x1000, 40_000, 41_000);
        assert_eq!(
            t.all,
            Some(Span {
                first_us: 5,
                last_us: 41_000
            })
        );
        assert_eq!(
            t.regions[0].1,
            Some(Span {
                first_us: 5,
                last_us: 30_500
            })
        );
        assert_eq!(
            t.regions[1].1,
            Some(Span {
                first_us: 20,
                last_us: 30_500
            })
        );
        assert_eq!(t.kernel, None, "the read stopped before the kernel");
        t.record(REGION_BYTES + 0x2000, 0x1000, 35_000, 35_100);
        assert_eq!(
            t.kernel,
            Some(Span {
                first_us: 35_000,
                last_us: 35_100
            })
        );
        assert_eq!(t.slowest_region().unwrap().0, t.regions[1].0);
        let json = t.to_json();
        assert!(json.contains("\"window_ms\":40.995"), "{json}");
        assert!(json.len() <= TimeMap::json_bound(&plan));
        // The longest numbers still fit.
        t.all = Some(Span {
            first_us: u64::MAX,
            last_us: u64::MAX,
        });
        t.kernel = t.all;
        for region in &mut t.regions {
            region.1 = t.all;
        }
        assert!(t.to_json().len() <= TimeMap::json_bound(&plan));
    }
}
