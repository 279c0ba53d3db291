//! The AVML writer: frames into batches, batches to the workers, their
//! chunks into blocks that pay for themselves (see the module above for
//! the rules the readers impose).

use super::batch::{self, Batch, Encoded, FrameSpec, Workers};
use super::frame::{header, FrameEncoder, STREAM_ID};
use super::{BATCH_FRAMES, CAP, FRAME, MAX_BLOCK, STREAM_BLOCK, STREAM_CAP};
use crate::workers::Pending;
use crate::write::{check_plan_nonempty, finish_sink, write_all};
use crate::Format;
use pmem_core::writer::ChunkCursor;
use pmem_core::{ByteSink, Chunk, ImageWriter, Plan, Range, SinkSummary, WriteError};
use std::collections::VecDeque;
use std::io;

/// Volatility needs stream length <= block length - 1; keep a margin.
const MARGIN: i64 = 16;

/// The block being written.
#[derive(Debug)]
struct OpenBlock {
    /// Image offset of its header (file mode).
    header_at: u64,
    start: u64,
    raw: u64,
    /// Sum of the frames' chunk lengths.
    encoded: u64,
    /// Stream mode: the frames' chunks, written when the block closes.
    buffered: Option<Vec<u8>>,
}

impl OpenBlock {
    /// Block length minus stream length: a block may be closed when this is
    /// at least [`MARGIN`].
    fn slack(&self) -> i64 {
        self.raw as i64 - self.encoded as i64 - STREAM_ID.len() as i64
    }
}

/// Writes AVML v2 blocks.
pub struct AvmlWriter {
    sink: Box<dyn ByteSink>,
    cursor: ChunkCursor,
    /// Encodes all-zero frames, which the workers leave out.
    encoder: FrameEncoder,
    workers: Workers,
    in_flight: VecDeque<Pending<Encoded>>,
    max_in_flight: usize,
    /// The batch being filled.
    batch: Batch,
    /// Bytes of the frame being filled (the tail of `batch.raw` when it is
    /// not all zero).
    frame_addr: u64,
    frame_len: usize,
    frame_zero: bool,
    /// The planned ranges, and the one being written.
    ranges: Vec<Range>,
    range: Option<Range>,
    /// Spare buffers.
    spare_raw: Vec<Vec<u8>>,
    spare_chunks: Vec<Vec<u8>>,
    /// The encoded chunk of a full all-zero frame, computed once.
    zero_chunk: Vec<u8>,
    block: Option<OpenBlock>,
    /// The sink can patch: blocks go straight to it.
    direct: bool,
}

impl AvmlWriter {
    /// A writer compressing on one worker thread per CPU, at most 4.
    pub fn new(sink: Box<dyn ByteSink>) -> AvmlWriter {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        AvmlWriter::with_threads(sink, threads)
    }

    /// A writer compressing on `threads` worker threads (0: inline).
    pub fn with_threads(mut sink: Box<dyn ByteSink>, threads: usize) -> AvmlWriter {
        let mut encoder = FrameEncoder::default();
        let mut zero_chunk = Vec::new();
        encoder.encode(&[0; FRAME], &mut zero_chunk);
        let direct = sink.patcher().is_some();
        AvmlWriter {
            sink,
            cursor: ChunkCursor::default(),
            encoder,
            workers: batch::spawn(threads),
            in_flight: VecDeque::new(),
            // Enough jobs queued to keep every worker busy, few enough to
            // bound memory: threads + 1 jobs stay in flight (one more until
            // the oldest is taken back), each holding its 512 KiB of input
            // (BATCH_FRAMES x FRAME) and at most a little more than that of
            // chunks; with the batch being filled, threads + 3 batches of
            // about 1 MiB at most.
            max_in_flight: threads + 1,
            batch: Batch {
                raw: Vec::with_capacity(BATCH_FRAMES * FRAME),
                frames: Vec::with_capacity(BATCH_FRAMES),
            },
            frame_addr: 0,
            frame_len: 0,
            frame_zero: true,
            ranges: Vec::new(),
            range: None,
            spare_raw: Vec::new(),
            spare_chunks: Vec::new(),
            zero_chunk,
            block: None,
            direct,
        }
    }

    /// Adds `len` bytes to the current frame, from `data` or zeros.
    fn fill(
        &mut self,
        mut addr: u64,
        mut data: Option<&[u8]>,
        mut len: u64,
    ) -> Result<(), WriteError> {
        while len > 0 {
            if self.frame_len == 0 {
                self.frame_addr = addr;
                self.frame_zero = true;
            }
            let n = len.min((FRAME - self.frame_len) as u64) as usize;
            match data {
                Some(d) => {
                    if self.frame_zero {
                        // Zeros so far were not stored: materialise them.
                        let from = self.batch.raw.len();
                        self.batch.raw.resize(from + self.frame_len, 0);
                        self.frame_zero = false;
                    }
                    self.batch.raw.extend_from_slice(&d[..n]);
                    data = Some(&d[n..]);
                }
                None if !self.frame_zero => {
                    let from = self.batch.raw.len();
                    self.batch.raw.resize(from + n, 0);
                }
                None => {}
            }
            self.frame_len += n;
            addr += n as u64;
            len -= n as u64;
            if self.frame_len == FRAME {
                self.end_frame()?;
            }
        }
        Ok(())
    }

    /// Puts the filled frame into the batch; a full batch is submitted.
    fn end_frame(&mut self) -> Result<(), WriteError> {
        if self.frame_len == 0 {
            return Ok(());
        }
        self.batch.frames.push(FrameSpec {
            addr: self.frame_addr,
            len: self.frame_len as u32,
            zero: self.frame_zero,
        });
        self.frame_len = 0;
        if self.batch.frames.len() == BATCH_FRAMES {
            self.submit()?;
        }
        Ok(())
    }

    /// Hands the batch to a worker (or compresses it here), then takes back
    /// finished results while too many are in flight.
    fn submit(&mut self) -> Result<(), WriteError> {
        if self.batch.frames.is_empty() {
            return Ok(());
        }
        let raw = self
            .spare_raw
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BATCH_FRAMES * FRAME));
        let frames = Vec::with_capacity(BATCH_FRAMES);
        let batch = std::mem::replace(&mut self.batch, Batch { raw, frames });
        let chunks = self.spare_chunks.pop().unwrap_or_default();
        // Workers that have gone (died) leave the batch to this thread.
        let pending = match self.workers.submit((batch, chunks)) {
            Ok(pending) => pending,
            Err(job) => Pending::Done(self.workers.run_here(job)),
        };
        self.in_flight.push_back(pending);
        while self.in_flight.len() > self.max_in_flight {
            self.take_one()?;
        }
        Ok(())
    }

    /// Takes back the oldest result and writes its frames.
    fn take_one(&mut self) -> Result<(), WriteError> {
        let encoded = match self.in_flight.pop_front() {
            None => return Ok(()),
            Some(pending) => pending.wait().map_err(|_| WriteError::Io {
                offset: self.sink.position(),
                source: io::Error::other("a compression thread failed"),
            })?,
        };
        let mut at = 0usize;
        for (f, &len) in encoded.frames.iter().zip(&encoded.lens) {
            if f.zero {
                // All-zero frames are written too (a 64 KiB zero frame
                // compresses to about 3 KiB): Volatility 3's AVML layer
                // fails a read that touches a gap between blocks, and its
                // stackers read such pages, so a left-out frame could make
                // the whole image unreadable to it.
                self.push_zero(f.addr, f.len as usize)?;
                self.after_push()?;
            } else {
                let chunk = &encoded.chunks[at..at + len as usize];
                at += len as usize;
                self.data_frame(f.addr, f.len, chunk)?;
            }
        }
        let Encoded {
            mut raw, chunks, ..
        } = encoded;
        raw.clear();
        self.spare_raw.push(raw);
        self.spare_chunks.push(chunks);
        Ok(())
    }

    fn data_frame(&mut self, addr: u64, raw: u32, chunk: &[u8]) -> Result<(), WriteError> {
        self.push(addr, u64::from(raw), chunk)?;
        self.after_push()
    }

    fn push_zero(&mut self, addr: u64, len: usize) -> Result<(), WriteError> {
        if len == FRAME {
            let chunk = std::mem::take(&mut self.zero_chunk);
            let result = self.push(addr, len as u64, &chunk);
            self.zero_chunk = chunk;
            result
        } else {
            let mut chunk = Vec::new();
            self.encoder.encode(&vec![0; len], &mut chunk);
            self.push(addr, len as u64, &chunk)
        }
    }

    /// Appends a frame's chunk to the open block, opening one if needed.
    fn push(&mut self, addr: u64, raw: u64, chunk: &[u8]) -> Result<(), WriteError> {
        if self.block.is_none() {
            let header_at = self.sink.position();
            let buffered = if self.direct {
                // Provisional header (patched on close): held back from the
                // hash until then.
                if let Some(patcher) = self.sink.patcher() {
                    patcher.hold(Some(header_at));
                }
                write_all(
                    self.sink.as_mut(),
                    &header(Range::new(addr, addr + 1).expect("one byte")),
                )?;
                write_all(self.sink.as_mut(), &STREAM_ID)?;
                None
            } else {
                Some(Vec::new())
            };
            self.block = Some(OpenBlock {
                header_at,
                start: addr,
                raw: 0,
                encoded: 0,
                buffered,
            });
        }
        let Some(block) = self.block.as_mut() else {
            return Ok(());
        };
        debug_assert_eq!(block.start + block.raw, addr, "blocks are contiguous");
        block.raw += raw;
        block.encoded += chunk.len() as u64;
        match &mut block.buffered {
            Some(buf) => buf.extend_from_slice(chunk),
            None => write_all(self.sink.as_mut(), chunk)?,
        }
        Ok(())
    }

    /// Closes a block that is large enough and pays for itself; refuses one
    /// that has grown to the cap without paying.
    fn after_push(&mut self) -> Result<(), WriteError> {
        let Some(block) = &self.block else {
            return Ok(());
        };
        let (target, cap) = if self.direct {
            (MAX_BLOCK, CAP)
        } else {
            (STREAM_BLOCK, STREAM_CAP)
        };
        if block.raw >= target && block.slack() >= MARGIN {
            return self.close();
        }
        if block.raw >= cap {
            return Err(self.unrepresentable());
        }
        Ok(())
    }

    fn unrepresentable(&self) -> WriteError {
        let (addr, len) = self.block.as_ref().map_or((0, 0), |b| (b.start, b.raw));
        let reason = if self.direct {
            format!(
                "this memory is incompressible: an AVML block holding it (up to {} MiB) would \
                 be longer compressed than raw, which makes Volatility 3 hang",
                CAP >> 20
            )
        } else {
            format!(
                "this memory is incompressible: an AVML block holding it would be longer \
                 compressed than raw (which makes Volatility 3 hang), and a stream cannot \
                 buffer more than {} MiB to find compressible data: write to a file",
                STREAM_CAP >> 20
            )
        };
        WriteError::Unrepresentable { addr, len, reason }
    }

    /// Writes the open block's trailer and its final header.
    fn close(&mut self) -> Result<(), WriteError> {
        let Some(block) = self.block.take() else {
            return Ok(());
        };
        debug_assert!(block.slack() >= MARGIN);
        let range = Range::new(block.start, block.start + block.raw)
            .expect("an open block holds at least one frame");
        let stream = STREAM_ID.len() as u64 + block.encoded;
        match &block.buffered {
            Some(chunks) => {
                write_all(self.sink.as_mut(), &header(range))?;
                write_all(self.sink.as_mut(), &STREAM_ID)?;
                write_all(self.sink.as_mut(), chunks)?;
                write_all(self.sink.as_mut(), &stream.to_le_bytes())?;
            }
            None => {
                write_all(self.sink.as_mut(), &stream.to_le_bytes())?;
                let Some(patcher) = self.sink.patcher() else {
                    return Err(WriteError::Io {
                        offset: block.header_at,
                        source: io::Error::new(
                            io::ErrorKind::Unsupported,
                            "this output cannot be rewritten",
                        ),
                    });
                };
                patcher
                    .patch(block.header_at, &header(range))
                    .map_err(|source| WriteError::Io {
                        offset: block.header_at,
                        source,
                    })?;
                patcher.hold(None);
            }
        }
        Ok(())
    }

    /// At the end of a range: everything pending must go out now.
    fn end_range(&mut self) -> Result<(), WriteError> {
        self.end_frame()?;
        self.submit()?;
        while !self.in_flight.is_empty() {
            self.take_one()?;
        }
        match &self.block {
            None => Ok(()),
            Some(b) if b.slack() >= MARGIN => self.close(),
            Some(_) => Err(self.unrepresentable()),
        }
    }
}

impl ImageWriter for AvmlWriter {
    fn begin(&mut self, plan: &Plan) -> Result<(), WriteError> {
        check_plan_nonempty(plan, Format::Avml)?;
        self.cursor = ChunkCursor::new(&plan.ranges);
        self.ranges = plan.ranges.ranges().to_vec();
        Ok(())
    }

    fn write_chunk(&mut self, addr: u64, chunk: Chunk<'_>) -> Result<(), WriteError> {
        let position = self.cursor.advance(addr, chunk.len())?;
        self.range = self.ranges.get(position.range_index).copied();
        match chunk {
            Chunk::Data(d) => self.fill(addr, Some(d), d.len() as u64)?,
            Chunk::Zero(n) => self.fill(addr, None, n)?,
        }
        if position.ends_range {
            self.end_range()?;
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<SinkSummary, WriteError> {
        finish_sink(self.sink, &self.cursor)
    }
}
