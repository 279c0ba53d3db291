//! The helpers every image writer's bytes go through. The writer for a
//! format, and the exact size of an image known before writing, are
//! [`crate::by_format`]'s.

use crate::Format;
use pmem_core::writer::ChunkCursor;
use pmem_core::{ByteSink, Chunk, SinkSummary, WriteError};

/// Writes a chunk's bytes; zero chunks become holes on file sinks.
pub(crate) fn write_body(sink: &mut dyn ByteSink, chunk: Chunk<'_>) -> Result<(), WriteError> {
    match chunk {
        Chunk::Data(data) => write_all(sink, data),
        Chunk::Zero(len) => write_zeros(sink, len),
    }
}

pub(crate) fn write_all(sink: &mut dyn ByteSink, buf: &[u8]) -> Result<(), WriteError> {
    let offset = sink.position();
    sink.write_all(buf)
        .map_err(|source| WriteError::Io { offset, source })
}

pub(crate) fn write_zeros(sink: &mut dyn ByteSink, len: u64) -> Result<(), WriteError> {
    let offset = sink.position();
    sink.write_zeros(len)
        .map_err(|source| WriteError::Io { offset, source })
}

/// A plan the format cannot represent, and why.
pub(crate) fn plan_error(what: impl Into<String>) -> WriteError {
    WriteError::Plan(what.into())
}

/// The plan's symbol bundle, for the formats that carry it; one larger
/// than [`MAX_SYMBOLS`](crate::MAX_SYMBOLS) is refused, as readers would
/// refuse to load it.
pub(crate) fn plan_symbols(plan: &pmem_core::Plan) -> Result<Option<&[u8]>, WriteError> {
    match plan.symbols.as_deref() {
        Some(symbols) if symbols.len() as u64 > crate::MAX_SYMBOLS => Err(plan_error(format!(
            "the symbol bundle of {} bytes exceeds the {}-byte limit",
            symbols.len(),
            crate::MAX_SYMBOLS
        ))),
        symbols => Ok(symbols),
    }
}

/// Refuses plans no reader could open again: an image without memory is an
/// empty file for LiME and raw.
pub(crate) fn check_plan_nonempty(
    plan: &pmem_core::Plan,
    format: Format,
) -> Result<(), WriteError> {
    if plan.ranges.is_empty() {
        return Err(WriteError::Plan(format!(
            "the plan has no ranges: refusing to write an empty {format} image"
        )));
    }
    Ok(())
}

/// The commit point of every writer: only an image holding every planned
/// byte reaches the sink's `finish` (fsync + hash).
pub(crate) fn finish_sink(
    sink: Box<dyn ByteSink>,
    cursor: &ChunkCursor,
) -> Result<SinkSummary, WriteError> {
    if !cursor.is_complete() {
        return Err(WriteError::Plan(format!(
            "image incomplete: finished after {:#x} image bytes, before every planned range was written",
            sink.position()
        )));
    }
    let offset = sink.position();
    sink.finish()
        .map_err(|source| WriteError::Io { offset, source })
}
