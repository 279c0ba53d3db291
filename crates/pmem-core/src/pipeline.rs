//! The copy loop: reads a source range by range in large chunks, retries
//! failed chunks page by page, classifies pages as data or zero and hands
//! ascending chunks to a format writer.
//!
//! Reading and writing overlap: the calling thread only reads, into a fixed
//! pool of [`CopyOptions::buffers`] buffers of [`CopyOptions::chunk_size`]
//! bytes, and a writer thread classifies, frames (and, for compressed
//! formats, hands frames to compression workers) and writes. The pool is the
//! pipeline's whole memory: reads wait for a free buffer, so memory stays
//! flat whatever the RAM size. The image hash runs on the sink's own thread
//! and the memory hash, when asked for, on a thread of its own that takes
//! each buffer after the writer is done with it: neither stalls the reads or
//! the writes (on one CPU they take turns; offline, or with a second CPU,
//! they run side by side).

use crate::range::{PageRun, Range};
use crate::sink::{HashAlgorithm, ImageDigest, ImageHash, SinkSummary};
use crate::source::{read_or_zero, PhysicalMemory, ReadError};
use crate::window::{Clock, PageDigests, ReadOrder, TimeMap};
use crate::writer::{Chunk, ImageWriter, Plan, TimeMapPlan, WriteError};
use crate::PAGE_SIZE;
use std::sync::mpsc;

/// How [`copy_memory`] reads: request size, memory in flight, and whether
/// to hash the memory as well as the image. The default reads 1 MiB at a
/// time through 4 buffers, without a memory hash.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Bytes per read request. Rounded to the source's read granularity.
    pub chunk_size: u64,
    /// Read buffers in flight between the reader and the writer (at least 2).
    pub buffers: usize,
    /// Also hash the memory content with this algorithm (format-independent;
    /// costs a second hash pass).
    pub memory_hash: Option<HashAlgorithm>,
    /// Keep an 8-byte digest of every page written
    /// ([`CopyReport::page_digests`]), for a re-read to compare with.
    pub page_digests: bool,
    /// The order memory is read in.
    pub order: ReadOrder,
    /// Largest kernel image [`ReadOrder::KernelFirst`] reads ahead into
    /// memory; above it the copy reads in address order.
    pub kernel_buffer_limit: u64,
}

/// Default of [`CopyOptions::kernel_buffer_limit`].
pub const KERNEL_BUFFER_LIMIT: u64 = 256 << 20;

impl Default for CopyOptions {
    fn default() -> Self {
        // 4 x 1 MiB: reads large enough that system call cost vanishes,
        // few enough that the pipeline holds 4 MiB whatever the RAM size.
        CopyOptions {
            chunk_size: 1 << 20,
            buffers: 4,
            memory_hash: None,
            page_digests: false,
            order: ReadOrder::Address,
            kernel_buffer_limit: KERNEL_BUFFER_LIMIT,
        }
    }
}

/// What a finished copy reports.
#[derive(Debug, Clone)]
pub struct CopyReport {
    /// Logical bytes handed to the writer (the plan's total).
    pub bytes: u64,
    /// Bytes that were read and found to be zero (unreadable pages, written
    /// as zeros too, are not counted here but in `unreadable`).
    pub zero_bytes: u64,
    /// Pages that could not be read even one by one; written as zeros.
    pub unreadable: Vec<PageRun>,
    /// Hash over the content of all ranges in ascending order (unreadable
    /// pages as zeros): equal for every format holding the same memory.
    /// Only with [`CopyOptions::memory_hash`], with its algorithm.
    pub memory_hash: Option<ImageHash>,
    /// The image as written.
    pub image: SinkSummary,
    /// When each part of memory was read.
    pub time_map: TimeMap,
    /// Why the copy did not read in the order asked (kernel-first without
    /// a known kernel image, or one too large to hold).
    pub order_note: Option<String>,
    /// Digests of the pages as written, with [`CopyOptions::page_digests`].
    pub page_digests: Option<PageDigests>,
    /// The time map's origin: when the copy started.
    pub started: std::time::Instant,
}

impl CopyReport {
    /// Total number of unreadable pages, over all runs.
    pub fn unreadable_pages(&self) -> u64 {
        self.unreadable.iter().map(|r| r.pages).sum()
    }
}

/// Why a copy stopped. Unreadable pages do not stop it (they are in
/// [`CopyReport::unreadable`]); these do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CopyError {
    /// The source failed fatally ([`ReadError::Fatal`]).
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The writer or its sink failed.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// A planned range is not readable from the source or not aligned to
    /// its read granularity; nothing was read.
    #[error("the source's memory map does not match the plan: {0}")]
    Plan(String),
}

/// One filled read buffer on its way to the writer thread.
struct Filled {
    addr: u64,
    buf: Vec<u8>,
    len: usize,
    /// Pieces (offset, len) that could not be read: zero-filled in `buf`.
    bad: Vec<(usize, usize)>,
}

/// Copies every planned range from `source` into `writer` and commits the
/// image. `progress` is called with the number of logical bytes read.
///
/// The plan's ranges must lie inside the source's memory map and be aligned
/// to its read granularity. The plan's symbol bundle is released once the
/// writer has begun (see [`Plan::symbols`]).
pub fn copy_memory(
    source: &mut dyn PhysicalMemory,
    mut writer: Box<dyn ImageWriter>,
    plan: &mut Plan,
    options: &CopyOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<CopyReport, CopyError> {
    let granularity = source.read_granularity().max(1);
    for range in plan.ranges.ranges() {
        if !source.memory_map().covers(range.start, range.len()) {
            return Err(CopyError::Plan(format!(
                "planned range {range} is not readable from the source"
            )));
        }
        if range.start % granularity != 0 || range.end % granularity != 0 {
            return Err(CopyError::Plan(format!(
                "planned range {range} is not aligned to the source's {granularity}-byte reads"
            )));
        }
    }
    let chunk_size =
        (options.chunk_size.max(granularity) / granularity * granularity).max(PAGE_SIZE);
    let retry_size = PAGE_SIZE.max(granularity);
    let buffers = options.buffers.max(2);
    let clock = Clock::start();
    let (order, kernel_pieces, order_note) = kernel_pieces(plan, options, granularity);
    let mut time_map = TimeMap::new(plan, order);
    let digests = options.page_digests.then(|| PageDigests::new(&plan.ranges));
    writer.begin(plan)?;
    // The writer has placed the bundle (megabytes): not held through the copy.
    plan.symbols = None;

    // Full buffers go to the writer, empty ones come back: `buffers`
    // allocations in all.
    let (to_writer, from_reader) = mpsc::sync_channel::<Filled>(buffers);
    let (to_reader, free) = mpsc::sync_channel::<Vec<u8>>(buffers);
    for _ in 0..buffers {
        // The channel has room for every buffer; the receiver is alive.
        let _ = to_reader.send(Vec::new());
    }
    std::thread::scope(|scope| {
        // With a memory hash, buffers go reader -> writer -> hasher ->
        // reader; without, straight back from the writer.
        let (after_writer, hashed) = if let Some(algorithm) = options.memory_hash {
            let (to_hasher, from_writer) = mpsc::sync_channel::<Filled>(buffers);
            // Moved, not cloned: when the writer fails, the hasher ends and
            // the reader's free list closes, which stops the reader.
            let back = to_reader;
            let spawned = std::thread::Builder::new()
                .name("pmem-memory-hash".into())
                .spawn_scoped(scope, move || {
                    let mut hasher = ImageDigest::new(algorithm);
                    for filled in from_writer {
                        // Unreadable pieces are zero-filled: hashed as zeros.
                        hasher.update(&filled.buf[..filled.len]);
                        let _ = back.send(filled.buf);
                    }
                    hasher.finish()
                });
            match spawned {
                Ok(handle) => (AfterWriter::Hasher(to_hasher), Some(handle)),
                Err(e) => return Err(thread_error(e)),
            }
        } else {
            (AfterWriter::Reader(to_reader), None)
        };
        let written = std::thread::Builder::new()
            .name("pmem-write".into())
            .spawn_scoped(scope, move || {
                let mut out = Output { zero_bytes: 0 };
                let mut digests = digests;
                for filled in from_reader {
                    out.emit(writer.as_mut(), &filled)?;
                    if let Some(digests) = &mut digests {
                        digests.add(filled.addr, &filled.buf[..filled.len]);
                    }
                    // The reader (or hasher) may have stopped; then the
                    // buffer is dropped.
                    match &after_writer {
                        AfterWriter::Hasher(to) => {
                            let _ = to.send(filled);
                        }
                        AfterWriter::Reader(to) => {
                            let _ = to.send(filled.buf);
                        }
                    }
                }
                Ok::<_, WriteError>((out, writer, digests))
            });
        let written = match written {
            Ok(handle) => handle,
            Err(e) => return Err(thread_error(e)),
        };
        let mut reader = Reader {
            unreadable: Vec::new(),
            done: 0,
            clock,
            time_map: &mut time_map,
            chunk_size,
            retry_size,
        };
        let read_result =
            reader.read_all(source, plan, &kernel_pieces, &free, &to_writer, progress);
        let (unreadable, done) = (reader.unreadable, reader.done);
        drop(to_writer);
        let joined = written
            .join()
            .map_err(|_| thread_error(std::io::Error::other("the writer thread failed")))?;
        // A write error stops the reader too; report the write error then.
        let (out, mut writer, page_digests) = joined?;
        read_result?;
        // The writer has gone, so the hasher's queue is closed: it ends.
        let memory_hash = match hashed.map(|h| h.join()) {
            Some(Ok(digest)) => digest,
            Some(Err(_)) => {
                let failed = std::io::Error::other("the memory hashing thread failed");
                return Err(thread_error(failed));
            }
            None => None,
        };
        match &plan.time_map {
            TimeMapPlan::None => {}
            TimeMapPlan::Measured => writer.time_map(&time_map.to_json())?,
            TimeMapPlan::Carried(json) => writer.time_map(json)?,
        }
        let image = writer.finish()?;
        Ok(CopyReport {
            bytes: done,
            zero_bytes: out.zero_bytes,
            unreadable,
            memory_hash,
            image,
            time_map,
            order_note,
            page_digests,
            started: clock.origin(),
        })
    })
}

/// A pipeline thread that could not start or that died: reported as a
/// write error (nothing names an offset).
fn thread_error(source: std::io::Error) -> CopyError {
    CopyError::Write(WriteError::Io { offset: 0, source })
}

/// What [`ReadOrder::KernelFirst`] reads ahead: the kernel image's
/// ranges inside the plan, widened to whole pages (and read units) within
/// their planned range. Empty, with the reason, when the order is address
/// or the read-ahead cannot be done.
fn kernel_pieces(
    plan: &Plan,
    options: &CopyOptions,
    granularity: u64,
) -> (ReadOrder, Vec<Range>, Option<String>) {
    if options.order != ReadOrder::KernelFirst {
        return (ReadOrder::Address, Vec::new(), None);
    }
    let unit = PAGE_SIZE.max(granularity);
    let mut pieces: Vec<Range> = Vec::new();
    for range in plan.ranges.ranges() {
        for kernel in &plan.kernel_image {
            let Some(inside) = range.intersect(kernel) else {
                continue;
            };
            // Whole units from the range's start, clipped to the range.
            let from = range.start + (inside.start - range.start) / unit * unit;
            let to =
                (range.start + (inside.end - range.start).div_ceil(unit) * unit).min(range.end);
            let Some(piece) = Range::new(from, to) else {
                continue;
            };
            match pieces.last_mut() {
                Some(last) if last.end >= piece.start => last.end = last.end.max(piece.end),
                _ => pieces.push(piece),
            }
        }
    }
    let bytes: u64 = pieces.iter().map(Range::len).sum();
    if pieces.is_empty() {
        let note = "--order kernel-first: where the kernel image lies is not known (no Kernel \
                    code/data in the memory map): read in address order"
            .to_string();
        return (ReadOrder::Address, Vec::new(), Some(note));
    }
    if bytes > options.kernel_buffer_limit {
        let note = format!(
            "--order kernel-first: the kernel image spans {} MiB, more than the {} MiB pmem \
             holds in memory: read in address order",
            bytes >> 20,
            options.kernel_buffer_limit >> 20
        );
        return (ReadOrder::Address, Vec::new(), Some(note));
    }
    (ReadOrder::KernelFirst, pieces, None)
}

/// The reading side.
struct Reader<'t> {
    unreadable: Vec<PageRun>,
    done: u64,
    clock: Clock,
    time_map: &'t mut TimeMap,
    chunk_size: u64,
    retry_size: u64,
}

/// The reader stopped because the writer thread has gone (a write error,
/// reported by the writer).
struct WriterGone;

/// The kernel image read ahead: its pieces, their bytes one after the
/// other, and the pieces of them that could not be read (absolute).
struct ReadAhead {
    pieces: Vec<(Range, usize)>,
    bytes: Vec<u8>,
    bad: Vec<(u64, u64)>,
}

impl Reader<'_> {
    /// Reads `buf` at `addr` (a failed read again page by page), records
    /// the read in the time map and returns the pieces that could not be
    /// read (absolute address, length), zero-filled in `buf`.
    fn read_timed(
        &mut self,
        source: &mut dyn PhysicalMemory,
        addr: u64,
        buf: &mut [u8],
    ) -> Result<Vec<(u64, u64)>, CopyError> {
        let first = self.clock.now_us();
        let bad = read_or_zero(source, addr, buf, self.retry_size)?;
        let last = self.clock.now_us();
        self.time_map.record(addr, buf.len() as u64, first, last);
        Ok(bad)
    }

    fn read_ahead(
        &mut self,
        source: &mut dyn PhysicalMemory,
        pieces: &[Range],
    ) -> Result<ReadAhead, CopyError> {
        let total: u64 = pieces.iter().map(Range::len).sum();
        // Filled, not zeroed: a zeroed allocation of this size is fresh
        // mapped memory whose pages the kernel supplies on first write, so
        // the reads below would take a page fault every 4 KiB (tens of
        // microseconds each under emulation: most of the read-ahead's
        // time). Filling faults them in now, before the kernel's window
        // opens; every byte is overwritten by the reads.
        let mut ahead = ReadAhead {
            pieces: Vec::with_capacity(pieces.len()),
            bytes: vec![0xff; total as usize],
            bad: Vec::new(),
        };
        let mut offset = 0usize;
        for piece in pieces {
            ahead.pieces.push((*piece, offset));
            let mut addr = piece.start;
            while addr < piece.end {
                let len = self.chunk_size.min(piece.end - addr) as usize;
                let at = offset + (addr - piece.start) as usize;
                let bad = self.read_timed(source, addr, &mut ahead.bytes[at..at + len])?;
                ahead.bad.extend(bad);
                addr += len as u64;
            }
            offset += piece.len() as usize;
        }
        self.time_map.buffered_bytes = total;
        Ok(ahead)
    }

    fn read_all(
        &mut self,
        source: &mut dyn PhysicalMemory,
        plan: &Plan,
        kernel_pieces: &[Range],
        free: &mpsc::Receiver<Vec<u8>>,
        to_writer: &mpsc::SyncSender<Filled>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), CopyError> {
        let ahead = self.read_ahead(source, kernel_pieces)?;
        for range in plan.ranges.ranges() {
            // The range in segments: read now, or taken from the read-ahead.
            let mut segments: Vec<(Range, Option<usize>)> = Vec::new();
            let mut at = range.start;
            for &(piece, offset) in &ahead.pieces {
                if piece.start >= range.end || piece.end <= range.start {
                    continue;
                }
                segments.extend(Range::new(at, piece.start).map(|r| (r, None)));
                segments.push((piece, Some(offset)));
                at = piece.end;
            }
            segments.extend(Range::new(at, range.end).map(|r| (r, None)));
            for (segment, held) in segments {
                let mut addr = segment.start;
                while addr < segment.end {
                    let len = self.chunk_size.min(segment.end - addr);
                    let Ok(mut buf) = free.recv() else {
                        return Ok(()); // the writer failed: it reports why
                    };
                    buf.resize(self.chunk_size as usize, 0);
                    let chunk = &mut buf[..len as usize];
                    let bad_now = match held {
                        None => self.read_timed(source, addr, chunk)?,
                        Some(offset) => {
                            let from = offset + (addr - segment.start) as usize;
                            chunk.copy_from_slice(&ahead.bytes[from..from + len as usize]);
                            ahead
                                .bad
                                .iter()
                                .filter_map(|&(a, l)| {
                                    let r = Range::new(a, a + l)?
                                        .intersect(&Range::new(addr, addr + len)?)?;
                                    Some((r.start, r.len()))
                                })
                                .collect()
                        }
                    };
                    let mut bad: Vec<(usize, usize)> = Vec::new();
                    for (bad_at, bad_len) in bad_now {
                        self.record_unreadable(bad_at, bad_len);
                        let from = (bad_at - addr) as usize;
                        match bad.last_mut() {
                            Some(last) if last.0 + last.1 == from => last.1 += bad_len as usize,
                            _ => bad.push((from, bad_len as usize)),
                        }
                    }
                    let filled = Filled {
                        addr,
                        buf,
                        len: len as usize,
                        bad,
                    };
                    if to_writer.send(filled).map_err(|_| WriterGone).is_err() {
                        return Ok(());
                    }
                    addr += len;
                    self.done += len;
                    progress(self.done);
                }
            }
        }
        Ok(())
    }

    fn record_unreadable(&mut self, addr: u64, len: u64) {
        let first = addr / PAGE_SIZE * PAGE_SIZE;
        let pages = (addr + len).div_ceil(PAGE_SIZE) - addr / PAGE_SIZE;
        match self.unreadable.last_mut() {
            Some(run) if run.start + run.pages * PAGE_SIZE >= first => {
                run.pages = run.pages.max((first - run.start) / PAGE_SIZE + pages)
            }
            _ => self.unreadable.push(PageRun {
                start: first,
                pages,
            }),
        }
    }
}

/// Where the writer thread passes a buffer it is done with.
enum AfterWriter {
    /// To the memory hasher, which then gives it back to the reader.
    Hasher(mpsc::SyncSender<Filled>),
    /// Back to the reader.
    Reader(mpsc::SyncSender<Vec<u8>>),
}

/// The writing side's state.
struct Output {
    zero_bytes: u64,
}

impl Output {
    /// Hands a filled buffer to the writer as runs of data and zero pages;
    /// unreadable pieces through `write_unreadable`.
    fn emit(&mut self, writer: &mut dyn ImageWriter, filled: &Filled) -> Result<(), WriteError> {
        let data = &filled.buf[..filled.len];
        let mut at = 0usize;
        for &(bad_at, bad_len) in filled.bad.iter().chain([(filled.len, 0)].iter()) {
            if bad_at > at {
                self.emit_read(writer, filled.addr + at as u64, &data[at..bad_at])?;
            }
            if bad_len > 0 {
                writer.write_unreadable(filled.addr + bad_at as u64, bad_len as u64)?;
            }
            at = bad_at + bad_len;
        }
        Ok(())
    }

    fn emit_read(
        &mut self,
        writer: &mut dyn ImageWriter,
        addr: u64,
        buf: &[u8],
    ) -> Result<(), WriteError> {
        for (offset, len, zero) in page_runs(addr, buf) {
            if zero {
                self.zero_bytes += len as u64;
                writer.write_chunk(addr + offset as u64, Chunk::Zero(len as u64))?;
            } else {
                writer.write_chunk(
                    addr + offset as u64,
                    Chunk::Data(&buf[offset..offset + len]),
                )?;
            }
        }
        Ok(())
    }
}

/// Splits `buf` (starting at physical `addr`) on page boundaries into
/// maximal runs of all-zero and not-all-zero pages: (offset, len, is_zero).
fn page_runs(addr: u64, buf: &[u8]) -> Vec<(usize, usize, bool)> {
    let mut runs: Vec<(usize, usize, bool)> = Vec::new();
    let mut offset = 0usize;
    while offset < buf.len() {
        let at = addr + offset as u64;
        let page_end = ((at / PAGE_SIZE + 1) * PAGE_SIZE - addr).min(buf.len() as u64) as usize;
        let zero = is_zero(&buf[offset..page_end]);
        match runs.last_mut() {
            Some(last) if last.2 == zero => last.1 += page_end - offset,
            _ => runs.push((offset, page_end - offset, zero)),
        }
        offset = page_end;
    }
    runs
}

/// Whether every byte is zero. ORs 64-byte blocks so the compiler can
/// vectorise; stops at the first non-zero block.
pub fn is_zero(buf: &[u8]) -> bool {
    let mut blocks = buf.chunks_exact(64);
    for block in &mut blocks {
        if block.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::range::{MemoryMap, Range};
    use crate::sink::{ByteSink, HashingSink};
    use crate::window::ReadOrder;
    use crate::writer::ChunkCursor;
    use crate::Arch;
    use std::io;
    use std::sync::{Arc, Mutex};

    /// Memory with a pattern and a set of bad pages, read in one piece per
    /// call like a device would.
    struct PatternMemory {
        map: MemoryMap,
        bad_pages: Vec<u64>,
        zero_pages: Vec<u64>,
        granularity: u64,
        reads: Vec<(u64, usize)>,
    }

    fn byte_at(addr: u64) -> u8 {
        (addr.wrapping_mul(2654435761) >> 13) as u8 | 1
    }

    impl PhysicalMemory for PatternMemory {
        fn memory_map(&self) -> &MemoryMap {
            &self.map
        }
        fn read_granularity(&self) -> u64 {
            self.granularity
        }
        fn read_at(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
            self.reads.push((addr, buf.len()));
            let end = addr + buf.len() as u64;
            if let Some(&bad) = self
                .bad_pages
                .iter()
                .find(|&&p| p < end && p + PAGE_SIZE > addr)
            {
                return Err(ReadError::Unreadable {
                    addr: bad,
                    source: io::Error::from_raw_os_error(14),
                });
            }
            for (i, b) in buf.iter_mut().enumerate() {
                let a = addr + i as u64;
                let page = a / PAGE_SIZE * PAGE_SIZE;
                *b = if self.zero_pages.contains(&page) {
                    0
                } else {
                    byte_at(a)
                };
            }
            Ok(())
        }
    }

    /// (address, bytes, whether it came as a Zero chunk)
    type Recorded = Vec<(u64, Vec<u8>, bool)>;

    /// Records chunks as a flat list after checking their order.
    struct RecordingWriter {
        cursor: ChunkCursor,
        out: Arc<Mutex<Recorded>>,
        sink: Box<HashingSink>,
    }

    impl ImageWriter for RecordingWriter {
        fn begin(&mut self, plan: &Plan) -> Result<(), WriteError> {
            self.cursor = ChunkCursor::new(&plan.ranges);
            Ok(())
        }
        fn write_chunk(&mut self, addr: u64, chunk: Chunk<'_>) -> Result<(), WriteError> {
            self.cursor.advance(addr, chunk.len())?;
            let (bytes, zero) = match chunk {
                Chunk::Data(d) => (d.to_vec(), false),
                Chunk::Zero(n) => (vec![0; n as usize], true),
            };
            self.sink.write_all(&bytes).unwrap();
            self.out.lock().unwrap().push((addr, bytes, zero));
            Ok(())
        }
        fn finish(self: Box<Self>) -> Result<SinkSummary, WriteError> {
            assert!(self.cursor.is_complete());
            Ok(self.sink.finish().unwrap())
        }
    }

    fn run(mem: &mut PatternMemory, chunk_size: u64) -> (CopyReport, Vec<(u64, Vec<u8>, bool)>) {
        let out = Arc::new(Mutex::new(Vec::new()));
        let writer = Box::new(RecordingWriter {
            cursor: ChunkCursor::default(),
            out: out.clone(),
            sink: Box::new(HashingSink::stream(Box::new(io::sink()))),
        });
        let mut plan = Plan::new(mem.map.clone(), Arch::X86_64);
        let mut last = 0;
        let report = copy_memory(
            mem,
            writer,
            &mut plan,
            &CopyOptions {
                chunk_size,
                buffers: 3,
                memory_hash: Some(HashAlgorithm::Sha256),
                ..CopyOptions::default()
            },
            &mut |done| {
                assert!(done > last);
                last = done;
            },
        )
        .unwrap();
        assert_eq!(last, plan.ranges.total_bytes());
        let chunks = out.lock().unwrap().clone();
        (report, chunks)
    }

    fn map(r: &[(u64, u64)]) -> MemoryMap {
        MemoryMap::new(r.iter().map(|&(s, e)| Range::new(s, e).unwrap()).collect()).unwrap()
    }

    #[test]
    fn bad_page_is_zero_filled_and_recorded_rest_kept() {
        let mut mem = PatternMemory {
            map: map(&[(0x1000, 0x11000), (0x20000, 0x22000)]),
            bad_pages: vec![0x5000, 0x6000, 0x21000],
            zero_pages: vec![0x9000],
            granularity: 1,
            reads: Vec::new(),
        };
        let (report, chunks) = run(&mut mem, 0x8000);
        assert_eq!(
            report.unreadable,
            vec![
                PageRun {
                    start: 0x5000,
                    pages: 2
                },
                PageRun {
                    start: 0x21000,
                    pages: 1
                }
            ]
        );
        assert_eq!(report.bytes, 0x12000);
        assert_eq!(report.zero_bytes, 0x1000);
        let mut expected_memory = Vec::new();
        for (addr, bytes, _) in &chunks {
            for (i, b) in bytes.iter().enumerate() {
                let a = addr + i as u64;
                let page = a / PAGE_SIZE * PAGE_SIZE;
                let want = if [0x5000, 0x6000, 0x21000, 0x9000].contains(&page) {
                    0
                } else {
                    byte_at(a)
                };
                assert_eq!(*b, want, "byte at {a:#x}");
            }
            expected_memory.extend_from_slice(bytes);
        }
        assert_eq!(expected_memory.len(), 0x12000);
        let memory = report.memory_hash.expect("asked for");
        assert_eq!(memory.algorithm, HashAlgorithm::Sha256);
        assert_eq!(
            memory.bytes,
            <[u8; 32]>::from(<sha2::Sha256 as sha2::Digest>::digest(&expected_memory))
        );
        // Large reads first: the first range is read in 0x8000-byte requests.
        assert_eq!(mem.reads[0], (0x1000, 0x8000));
    }

    /// Fails on its third chunk, slowly.
    struct FailingWriter {
        chunks: usize,
    }

    impl ImageWriter for FailingWriter {
        fn begin(&mut self, _plan: &Plan) -> Result<(), WriteError> {
            Ok(())
        }
        fn write_chunk(&mut self, _addr: u64, _chunk: Chunk<'_>) -> Result<(), WriteError> {
            self.chunks += 1;
            if self.chunks == 3 {
                // Time for the reader to queue every buffer: the failure
                // then takes them all with it, and only a closed free list
                // can stop the reader.
                std::thread::sleep(std::time::Duration::from_millis(200));
                return Err(WriteError::Io {
                    offset: 0x2000,
                    source: io::Error::other("disk gone"),
                });
            }
            Ok(())
        }
        fn finish(self: Box<Self>) -> Result<SinkSummary, WriteError> {
            unreachable!("a failed copy is never finished")
        }
    }

    #[test]
    fn a_write_error_stops_the_reader_with_or_without_memory_hash() {
        for memory_hash in [None, Some(HashAlgorithm::Blake3)] {
            // On a thread: a reader left waiting for buffers would hang.
            let (done, result) = mpsc::channel();
            std::thread::spawn(move || {
                let mut mem = PatternMemory {
                    map: map(&[(0, 0x100000)]),
                    bad_pages: vec![],
                    zero_pages: vec![],
                    granularity: 1,
                    reads: Vec::new(),
                };
                let mut plan = Plan::new(mem.map.clone(), Arch::X86_64);
                let options = CopyOptions {
                    chunk_size: 0x1000,
                    buffers: 2,
                    memory_hash,
                    ..CopyOptions::default()
                };
                let writer = Box::new(FailingWriter { chunks: 0 });
                let report = copy_memory(&mut mem, writer, &mut plan, &options, &mut |_| {});
                let _ = done.send(report.err().map(|e| e.to_string()));
            });
            let error = result
                .recv_timeout(std::time::Duration::from_secs(60))
                .expect("copy_memory returned");
            assert!(
                error.as_deref().is_some_and(|e| e.contains("disk gone")),
                "memory_hash {memory_hash:?}: {error:?}"
            );
        }
    }

    #[test]
    fn zero_pages_become_zero_chunks() {
        let mut mem = PatternMemory {
            map: map(&[(0, 0x4000)]),
            bad_pages: vec![],
            zero_pages: vec![0x1000, 0x2000],
            granularity: 1,
            reads: Vec::new(),
        };
        let (_, chunks) = run(&mut mem, 1 << 20);
        let shape: Vec<(u64, usize, bool)> =
            chunks.iter().map(|(a, b, z)| (*a, b.len(), *z)).collect();
        assert_eq!(
            shape,
            vec![
                (0, 0x1000, false),
                (0x1000, 0x2000, true),
                (0x3000, 0x1000, false)
            ]
        );
    }

    #[test]
    fn granularity_shapes_requests() {
        let mut mem = PatternMemory {
            map: map(&[(0x1000, 0x5000)]),
            bad_pages: vec![],
            zero_pages: vec![],
            granularity: 0x1000,
            reads: Vec::new(),
        };
        run(&mut mem, 0x1800);
        assert!(mem
            .reads
            .iter()
            .all(|(a, l)| a % 0x1000 == 0 && l % 0x1000 == 0));
    }

    #[test]
    fn unaligned_plan_is_refused() {
        let mut mem = PatternMemory {
            map: map(&[(0x1000, 0x1800)]),
            bad_pages: vec![],
            zero_pages: vec![],
            granularity: 0x1000,
            reads: Vec::new(),
        };
        let mut plan = Plan::new(mem.map.clone(), Arch::X86_64);
        let writer = Box::new(RecordingWriter {
            cursor: ChunkCursor::default(),
            out: Arc::default(),
            sink: Box::new(HashingSink::stream(Box::new(io::sink()))),
        });
        let err = copy_memory(
            &mut mem,
            writer,
            &mut plan,
            &CopyOptions::default(),
            &mut |_| {},
        );
        assert!(matches!(err, Err(CopyError::Plan(_))));
    }

    fn copy_with(
        mem: &mut PatternMemory,
        plan: &Plan,
        options: &CopyOptions,
    ) -> (CopyReport, Recorded) {
        let out = Arc::new(Mutex::new(Vec::new()));
        let writer = Box::new(RecordingWriter {
            cursor: ChunkCursor::default(),
            out: out.clone(),
            sink: Box::new(HashingSink::stream(Box::new(io::sink()))),
        });
        let report = copy_memory(mem, writer, &mut plan.clone(), options, &mut |_| {}).unwrap();
        let chunks = out.lock().unwrap().clone();
        (report, chunks)
    }

    #[test]
    fn kernel_first_reads_the_kernel_ahead_and_writes_in_address_order() {
        let mut mem = PatternMemory {
            map: map(&[(0x1000, 0x9000), (0x10000, 0x40000)]),
            bad_pages: vec![0x21000],
            zero_pages: vec![],
            granularity: 1,
            reads: Vec::new(),
        };
        let mut plan = Plan::new(mem.map.clone(), Arch::X86_64);
        // Not page-aligned at its end: read ahead up to the page's end.
        plan.kernel_image = vec![Range::new(0x20000, 0x22800).unwrap()];
        let options = CopyOptions {
            chunk_size: 0x8000,
            order: ReadOrder::KernelFirst,
            ..CopyOptions::default()
        };
        let (report, chunks) = copy_with(&mut mem, &plan, &options);
        assert_eq!(report.order_note, None);
        assert_eq!(report.time_map.order, ReadOrder::KernelFirst);
        assert_eq!(report.time_map.buffered_bytes, 0x3000);
        // The kernel first (one request, then the failed one page by
        // page), and never again.
        assert_eq!(mem.reads[0], (0x20000, 0x3000));
        assert_eq!(
            &mem.reads[1..4],
            &[(0x20000, 0x1000), (0x21000, 0x1000), (0x22000, 0x1000)]
        );
        assert_eq!(mem.reads[4], (0x1000, 0x8000));
        assert!(mem.reads[4..]
            .iter()
            .all(|&(a, l)| a + l as u64 <= 0x20000 || a >= 0x23000));
        // Written in address order, with the right bytes where they belong.
        let mut next = 0x1000;
        let mut written = 0;
        for (addr, bytes, _) in &chunks {
            if *addr != next {
                assert_eq!((next, *addr), (0x9000, 0x10000));
            }
            for (i, b) in bytes.iter().enumerate() {
                let a = addr + i as u64;
                let want = if a / PAGE_SIZE == 0x21 { 0 } else { byte_at(a) };
                assert_eq!(*b, want, "byte at {a:#x}");
            }
            next = addr + bytes.len() as u64;
            written += bytes.len();
        }
        assert_eq!(written as u64, plan.ranges.total_bytes());
        assert_eq!(
            report.unreadable,
            vec![PageRun {
                start: 0x21000,
                pages: 1
            }]
        );
        // The time map says the kernel was read before anything else.
        let kernel = report.time_map.kernel.unwrap();
        let first_region = report.time_map.regions[0].1.unwrap();
        assert!(kernel.last_us <= first_region.first_us);
    }

    #[test]
    fn kernel_first_falls_back_to_address_order() {
        let mut mem = PatternMemory {
            map: map(&[(0, 0x10000)]),
            bad_pages: vec![],
            zero_pages: vec![],
            granularity: 1,
            reads: Vec::new(),
        };
        let mut plan = Plan::new(mem.map.clone(), Arch::X86_64);
        plan.kernel_image = vec![Range::new(0x4000, 0x8000).unwrap()];
        let options = CopyOptions {
            chunk_size: 0x4000,
            order: ReadOrder::KernelFirst,
            kernel_buffer_limit: 0x3000,
            ..CopyOptions::default()
        };
        let (report, _) = copy_with(&mut mem, &plan, &options);
        assert_eq!(report.time_map.order, ReadOrder::Address);
        assert!(report.order_note.unwrap().contains("more than"));
        assert_eq!(mem.reads[0], (0, 0x4000));
        plan.kernel_image.clear();
        let (report, _) = copy_with(&mut mem, &plan, &options);
        assert!(report.order_note.unwrap().contains("not known"));
    }

    #[test]
    fn time_map_covers_every_region_in_address_order() {
        let mut mem = PatternMemory {
            map: map(&[(0, 0x20000), (0x100000, 0x110000)]),
            bad_pages: vec![],
            zero_pages: vec![],
            granularity: 1,
            reads: Vec::new(),
        };
        let mut plan = Plan::new(mem.map.clone(), Arch::X86_64);
        plan.kernel_image = vec![Range::new(0x100000, 0x101000).unwrap()];
        let options = CopyOptions {
            chunk_size: 0x4000,
            ..CopyOptions::default()
        };
        let (report, _) = copy_with(&mut mem, &plan, &options);
        let t = &report.time_map;
        assert_eq!(t.order, ReadOrder::Address);
        assert_eq!(t.regions.len(), 2);
        let (first, second) = (t.regions[0].1.unwrap(), t.regions[1].1.unwrap());
        assert!(first.last_us <= second.first_us);
        assert_eq!(t.all.unwrap().first_us, first.first_us);
        assert_eq!(t.all.unwrap().last_us, second.last_us);
        // The kernel's page was read by the second range's first request.
        assert!(t.kernel.unwrap().first_us >= first.last_us);
        assert!(report.page_digests.is_none());
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0; 4096]));
        assert!(is_zero(&[]));
        let mut v = vec![0u8; 4097];
        v[4096] = 1;
        assert!(!is_zero(&v));
        v[4096] = 0;
        v[63] = 1;
        assert!(!is_zero(&v));
    }
}
