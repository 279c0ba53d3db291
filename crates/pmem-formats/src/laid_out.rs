//! Writers of formats whose header lists every range up front.

use crate::write::{check_plan_nonempty, finish_sink, write_all, write_body, write_zeros};
use crate::Format;
use pmem_core::writer::ChunkCursor;
use pmem_core::{ByteSink, Chunk, Plan, SinkSummary, WriteError};

/// A format's layout of a plan: the header bytes and each range's data offset.
pub(crate) type LayoutFn = fn(&Plan) -> Result<(Vec<u8>, Vec<u64>), WriteError>;

/// A format laid out whole before the first byte: a header (which lists the
/// ranges), then each range's data at a precomputed offset. ELF and Mach-O
/// cores are written this way, strictly forward, so they stream to pipes.
pub struct LaidOutWriter {
    format: Format,
    layout: LayoutFn,
    sink: Box<dyn ByteSink>,
    cursor: ChunkCursor,
    offsets: Vec<u64>,
}

impl LaidOutWriter {
    pub(crate) fn new(format: Format, layout: LayoutFn, sink: Box<dyn ByteSink>) -> LaidOutWriter {
        LaidOutWriter {
            format,
            layout,
            sink,
            cursor: ChunkCursor::default(),
            offsets: Vec::new(),
        }
    }
}

impl pmem_core::ImageWriter for LaidOutWriter {
    fn begin(&mut self, plan: &Plan) -> Result<(), WriteError> {
        check_plan_nonempty(plan, self.format)?;
        let (head, offsets) = (self.layout)(plan)?;
        write_all(self.sink.as_mut(), &head)?;
        self.offsets = offsets;
        self.cursor = ChunkCursor::new(&plan.ranges);
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

    fn finish(self: Box<Self>) -> Result<SinkSummary, WriteError> {
        finish_sink(self.sink, &self.cursor)
    }
}
