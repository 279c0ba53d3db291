//! Writers of formats whose header lists every range up front.

use crate::write::{check_plan_nonempty, finish_sink, write_all, write_body, write_zeros};
use crate::Format;
use pmem_core::writer::ChunkCursor;
use pmem_core::{ByteSink, Chunk, Plan, SinkSummary, WriteError};

/// A format's layout of a plan: what comes before the first range's data,
/// and each range's data offset.
pub(crate) struct DataLayout<'p> {
    /// The header, up to the symbol bundle.
    pub(crate) head: Vec<u8>,
    /// The plan's symbol bundle (empty without one), the header's last
    /// part, written after `head`. Borrowed, not copied into `head`: it is
    /// megabytes, and a copy would double the peak memory of an
    /// acquisition. Zeros follow it up to the first range's data.
    pub(crate) symbols: &'p [u8],
    /// Each range's data offset in the file.
    pub(crate) offsets: Vec<u64>,
}

pub(crate) type LayoutFn = for<'p> fn(&'p Plan) -> Result<DataLayout<'p>, WriteError>;

/// What a format writes after the last range's data, at the next multiple
/// of 4 bytes (the ELF note holding the time map): its length for a plan
/// (0: none; the layout lists it), and its bytes given the time map JSON.
#[derive(Clone, Copy)]
pub(crate) struct Trailer {
    pub(crate) len: fn(&Plan) -> u64,
    pub(crate) bytes: fn(Option<&str>, u64) -> Vec<u8>,
}

/// A format laid out whole before the first byte: a header (which lists the
/// ranges), then each range's data at a precomputed offset. ELF and Mach-O
/// cores are written this way, strictly forward, so they stream to pipes.
pub struct LaidOutWriter {
    format: Format,
    layout: LayoutFn,
    sink: Box<dyn ByteSink>,
    cursor: ChunkCursor,
    offsets: Vec<u64>,
    trailer: Option<Trailer>,
    trailer_len: u64,
    time_map: Option<String>,
}

impl LaidOutWriter {
    pub(crate) fn new(format: Format, layout: LayoutFn, sink: Box<dyn ByteSink>) -> LaidOutWriter {
        LaidOutWriter {
            format,
            layout,
            sink,
            cursor: ChunkCursor::default(),
            offsets: Vec::new(),
            trailer: None,
            trailer_len: 0,
            time_map: None,
        }
    }

    /// The writer, with `trailer` after the last range.
    pub(crate) fn with_trailer(mut self, trailer: Trailer) -> LaidOutWriter {
        self.trailer = Some(trailer);
        self
    }
}

impl pmem_core::ImageWriter for LaidOutWriter {
    fn begin(&mut self, plan: &Plan) -> Result<(), WriteError> {
        check_plan_nonempty(plan, self.format)?;
        let layout = (self.layout)(plan)?;
        write_all(self.sink.as_mut(), &layout.head)?;
        write_all(self.sink.as_mut(), layout.symbols)?;
        self.offsets = layout.offsets;
        self.cursor = ChunkCursor::new(&plan.ranges);
        self.trailer_len = self.trailer.map_or(0, |t| (t.len)(plan));
        Ok(())
    }

    fn write_chunk(&mut self, addr: u64, chunk: Chunk<'_>) -> Result<(), WriteError> {
        let position = self.cursor.advance(addr, chunk.len())?;
        if position.starts_range {
            // Padding up to the range's (page-aligned) data offset.
            let pad = self.offsets[position.range_index] - self.sink.position();
            write_zeros(self.sink.as_mut(), pad)?;
        }
        write_body(self.sink.as_mut(), chunk)
    }

    fn time_map(&mut self, json: &str) -> Result<(), WriteError> {
        self.time_map = Some(json.to_owned());
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<SinkSummary, WriteError> {
        if let (Some(trailer), true) = (self.trailer, self.cursor.is_complete()) {
            if self.trailer_len > 0 {
                let end = self.sink.position();
                write_zeros(self.sink.as_mut(), end.next_multiple_of(4) - end)?;
                let bytes = (trailer.bytes)(self.time_map.as_deref(), self.trailer_len);
                write_all(self.sink.as_mut(), &bytes)?;
            }
        }
        finish_sink(self.sink, &self.cursor)
    }
}
