//! AFF4 Standard containers as the pmem 2.x/3.x imagers wrote them.
//!
//! A ZIP64 volume (zip comment and `container.description` = the volume
//! URN, `version.txt`, `information.turtle`) holding physical memory as an
//! `aff4:Map` (category `memory/physical`, members `map` and `idx`) over an
//! `aff4:ImageStream` of 32 KiB chunks, 1024 per bevy, snappy by default
//! (lz4, deflate, stored on request). Each bevy is a member `<stream>/%08d`
//! with the chunks back to back plus `<stream>/%08d.index` of 12-byte
//! {u64 offset, u32 length} entries; a chunk stored at full chunk size is
//! uncompressed. Member names are the URN %-escaped (`aff4%3A%2F%2F...`).
//!
//! The writer only goes forward (pipes work): members carry ZIP data
//! descriptors; map, idx and the Turtle (all known from the plan) come after
//! the bevies, then the central directory. The stream holds the memory that
//! was read back to back, its last chunk padded with zeros (the stream's
//! `aff4:size` says where it ends); the map points each run of memory at the
//! stream, at the symbolic stream `aff4:Zero` (runs of zero pages of at least
//! [`ZERO_RUN_MIN`]: kept out of the stream, and the map says they were read
//! and found zero) or at `aff4:UnreadableData` (pages that could not be read).
//!
//! The reader takes the `aff4:Map` whose category is memory/physical (else
//! the first Map, else the first ImageStream read as address = offset), and
//! accepts both index layouts (12-byte `.index` members of the standard, the
//! 4-byte offsets of Rekall-era `/index` members).

mod zip;

use crate::ImageFile;
use crate::{
    check_plan_nonempty, corrupt_in, finish_sink, nonempty_len, Format, FormatError, ImageReader,
};
use pmem_core::writer::ChunkCursor;
use pmem_core::{
    ByteSink, Chunk, ImageWriter, MemoryMap, PhysicalMemory, Plan, Range, ReadError, SinkSummary,
    WriteError,
};
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use zip::{ZipIndex, ZipWriter};

pub const CHUNK_SIZE: u64 = 32 * 1024;
pub const CHUNKS_PER_SEGMENT: u64 = 1024;
pub const AFF4: &str = "http://aff4.org/Schema#";
pub const CATEGORY_PHYSICAL: &str = "http://aff4.org/Schema#memory/physical";
pub const UNREADABLE: &str = "http://aff4.org/Schema#UnreadableData";
pub const ZERO: &str = "http://aff4.org/Schema#Zero";
/// Shorter runs of zero pages go into the stream (they compress to almost
/// nothing): each map entry costs 28 bytes held until the end, so this bounds
/// the map to 28 bytes per MiB of memory whatever the layout.
pub const ZERO_RUN_MIN: u64 = 1 << 20;
/// pmem's own predicates (metadata JSON, VMCOREINFO).
pub const PMEM_NS: &str = "https://github.com/pmem-rs/pmem/aff4#";
const RDF_TYPE: &str = "http://www.w3.org/1999/02/22-rdf-syntax-ns#type";

/// Chunk compression of the image stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    Snappy,
    Lz4,
    Deflate,
    Stored,
}

impl Compression {
    /// The compressionMethod IRI the pmem 3.x imagers (c-aff4) wrote.
    pub fn iri(self) -> &'static str {
        match self {
            Compression::Snappy => "http://code.google.com/p/snappy/",
            Compression::Lz4 => "https://code.google.com/p/lz4/",
            // pyaff4's and c-aff4's zlib IRI: readers match the IRI exactly.
            Compression::Deflate => "https://www.ietf.org/rfc/rfc1950.txt",
            Compression::Stored => "http://aff4.org/Schema#NullCompressor",
        }
    }

    /// Any IRI a writer used for these methods (older vocabulary too).
    fn from_iri(iri: &str) -> Option<Compression> {
        let l = iri.to_ascii_lowercase();
        if l.contains("snappy") {
            Some(Compression::Snappy)
        } else if l.contains("lz4") {
            Some(Compression::Lz4)
        } else if l.contains("1950") || l.contains("zlib") || l.contains("deflate") {
            Some(Compression::Deflate)
        } else if l.contains("null") || l.contains("stored") {
            Some(Compression::Stored)
        } else {
            None
        }
    }

    fn compress(self, chunk: &[u8]) -> Vec<u8> {
        match self {
            Compression::Snappy => snap::raw::Encoder::new()
                .compress_vec(chunk)
                .unwrap_or_else(|_| chunk.to_vec()),
            Compression::Lz4 => lz4_flex::block::compress(chunk),
            Compression::Deflate => {
                use std::io::Write;
                let mut e =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
                // Writing to a Vec cannot fail; on the impossible error the
                // chunk is stored raw, which every reader accepts.
                match e.write_all(chunk).and_then(|()| e.finish()) {
                    Ok(v) => v,
                    Err(_) => chunk.to_vec(),
                }
            }
            Compression::Stored => chunk.to_vec(),
        }
    }

    fn decompress(self, data: &[u8], size: usize) -> io::Result<Vec<u8>> {
        let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
        match self {
            Compression::Snappy => {
                let n = snap::raw::decompress_len(data).map_err(|e| invalid(e.to_string()))?;
                if n > size {
                    return Err(invalid(format!(
                        "snappy chunk of {n} bytes, chunk size {size}"
                    )));
                }
                snap::raw::Decoder::new()
                    .decompress_vec(data)
                    .map_err(|e| invalid(e.to_string()))
            }
            Compression::Lz4 => {
                lz4_flex::block::decompress(data, size).map_err(|e| invalid(e.to_string()))
            }
            Compression::Deflate => {
                let mut out = Vec::with_capacity(size);
                flate2::read::ZlibDecoder::new(data)
                    .take(size as u64 + 1)
                    .read_to_end(&mut out)?;
                Ok(out)
            }
            Compression::Stored => Ok(data.to_vec()),
        }
    }
}

/// A URN as a member name: `aff4://x/y` -> `aff4%3A%2F%2Fx/y`.
fn member_name(urn: &str) -> String {
    match urn.strip_prefix("aff4://") {
        Some(rest) => format!("aff4%3A%2F%2F{rest}"),
        None => urn.to_string(),
    }
}

/// A name-based UUID (version-4 shape) from `seed` and `salt`: conversions of
/// the same input give the same bytes. FNV-1a; not a security property.
fn uuid(seed: &[u8], salt: u8) -> String {
    let mut h = [
        0xcbf2_9ce4_8422_2325u64 ^ u64::from(salt),
        0x8422_2325_cbf2_9ce4,
    ];
    for (i, half) in h.iter_mut().enumerate() {
        for &b in seed.iter().chain([salt, i as u8].iter()) {
            *half = (*half ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&h[0].to_be_bytes());
    b[8..].copy_from_slice(&h[1].to_be_bytes());
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x: String = b.iter().map(|v| format!("{v:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..]
    )
}

/// A Turtle string literal.
fn literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Streams an AFF4 volume.
pub struct Aff4Writer {
    sink: Box<dyn ByteSink>,
    compression: Compression,
    cursor: ChunkCursor,
    zip: ZipWriter,
    volume: String,
    stream: String,
    map: String,
    /// The `aff4:Image` whose `aff4:dataStream` is the map.
    image: String,
    plan: Option<Plan>,
    /// Bytes of the chunk being filled.
    chunk: Vec<u8>,
    /// Bytes pushed into the image stream so far.
    stream_len: u64,
    /// The map so far: (address, length, target offset, target index).
    entries: Vec<(u64, u64, u64, u32)>,
    /// Target URNs of the `idx` member: the stream first, symbolic ones as used.
    targets: Vec<String>,
    /// A run of zero pages not yet placed: (address, length).
    zeros: Option<(u64, u64)>,
    /// Index entries of the open bevy; its number.
    index: Vec<u8>,
    bevy_offset: u64,
    bevy: u64,
    bevy_open: bool,
}

impl Aff4Writer {
    pub fn new(sink: Box<dyn ByteSink>) -> Aff4Writer {
        Aff4Writer::with_compression(sink, Compression::default())
    }

    pub fn with_compression(sink: Box<dyn ByteSink>, compression: Compression) -> Aff4Writer {
        Aff4Writer {
            sink,
            compression,
            cursor: ChunkCursor::default(),
            zip: ZipWriter::default(),
            volume: String::new(),
            stream: String::new(),
            map: String::new(),
            image: String::new(),
            plan: None,
            chunk: Vec::with_capacity(CHUNK_SIZE as usize),
            stream_len: 0,
            entries: Vec::new(),
            targets: Vec::new(),
            zeros: None,
            index: Vec::new(),
            bevy_offset: 0,
            bevy: 0,
            bevy_open: false,
        }
    }

    fn bevy_name(&self) -> String {
        format!("{}/{:08}", member_name(&self.stream), self.bevy)
    }

    /// Compresses the full chunk buffer into the open bevy.
    fn flush_chunk(&mut self) -> Result<(), WriteError> {
        if !self.bevy_open {
            let name = self.bevy_name();
            self.zip.start(self.sink.as_mut(), &name)?;
            self.bevy_open = true;
            self.bevy_offset = 0;
            self.index.clear();
        }
        let packed = self.compression.compress(&self.chunk);
        // Stored at full size means "not compressed" to every reader.
        let data = if packed.len() as u64 >= CHUNK_SIZE {
            &self.chunk[..]
        } else {
            &packed[..]
        };
        self.index
            .extend_from_slice(&self.bevy_offset.to_le_bytes());
        self.index
            .extend_from_slice(&(data.len() as u32).to_le_bytes());
        self.bevy_offset += data.len() as u64;
        self.zip.write(self.sink.as_mut(), data)?;
        self.chunk.clear();
        if self.index.len() as u64 == CHUNKS_PER_SEGMENT * 12 {
            self.close_bevy()?;
        }
        Ok(())
    }

    fn close_bevy(&mut self) -> Result<(), WriteError> {
        if self.bevy_open {
            self.zip.end(self.sink.as_mut())?;
            let name = format!("{}.index", self.bevy_name());
            let index = std::mem::take(&mut self.index);
            self.zip.member(self.sink.as_mut(), &name, &index)?;
            self.bevy += 1;
            self.bevy_open = false;
        }
        Ok(())
    }

    /// Maps `len` bytes at `addr` to `target` (the stream: at its current
    /// end), merging with the previous entry where both continue.
    fn map_run(&mut self, addr: u64, len: u64, target: &str) {
        let index = match self.targets.iter().position(|t| t == target) {
            Some(i) => i,
            None => {
                self.targets.push(target.to_string());
                self.targets.len() - 1
            }
        } as u32;
        let offset = if index == 0 { self.stream_len } else { 0 };
        if let Some(last) = self.entries.last_mut() {
            let continues = last.0 + last.1 == addr
                && last.3 == index
                && (index != 0 || last.2 + last.1 == offset);
            if continues {
                last.1 += len;
                return;
            }
        }
        self.entries.push((addr, len, offset, index));
    }

    /// Bytes read from memory, into the stream.
    fn push_data(&mut self, addr: u64, data: &[u8]) -> Result<(), WriteError> {
        let stream = self.stream.clone();
        self.map_run(addr, data.len() as u64, &stream);
        self.stream_len += data.len() as u64;
        self.push(data)
    }

    /// Places the pending run of zero pages: long runs in the map only,
    /// short ones in the stream.
    fn place_zeros(&mut self) -> Result<(), WriteError> {
        let Some((addr, mut n)) = self.zeros.take() else {
            return Ok(());
        };
        if n >= ZERO_RUN_MIN {
            self.map_run(addr, n, ZERO);
            return Ok(());
        }
        static ZEROS: [u8; CHUNK_SIZE as usize] = [0; CHUNK_SIZE as usize];
        let mut at = addr;
        while n > 0 {
            let k = n.min(CHUNK_SIZE);
            self.push_data(at, &ZEROS[..k as usize])?;
            at += k;
            n -= k;
        }
        Ok(())
    }

    fn push(&mut self, mut data: &[u8]) -> Result<(), WriteError> {
        while !data.is_empty() {
            let n = data.len().min(CHUNK_SIZE as usize - self.chunk.len());
            self.chunk.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.chunk.len() as u64 == CHUNK_SIZE {
                self.flush_chunk()?;
            }
        }
        Ok(())
    }

    fn turtle(&self, plan: &Plan) -> String {
        let size = self.stream_len;
        let end = plan.ranges.end();
        let mut t = String::new();
        t.push_str(&format!(
            "@prefix aff4: <{AFF4}> .\n@prefix rdf: <http://www.w3.org/1999/02/22-rdf-syntax-ns#> .\n@prefix xsd: <http://www.w3.org/2001/XMLSchema#> .\n@prefix pmem: <{PMEM_NS}> .\n\n"
        ));
        t.push_str(&format!(
            "<{v}>\n    a aff4:ZipVolume ;\n    aff4:contains <{i}>, <{m}>, <{s}> ;\n    aff4:interface aff4:volume .\n\n",
            v = self.volume,
            i = self.image,
            m = self.map,
            s = self.stream
        ));
        // The image is its own subject whose aff4:dataStream is the map, as
        // the Standard has it: pyaff4 opens a physical image through that
        // link, and c-aff4 delegates an aff4:Image to its dataStream (were
        // the map itself an aff4:Image pointing at the stream, both would
        // read the stream at the wrong addresses or not at all).
        t.push_str(&format!(
            "<{i}>\n    a aff4:Image, aff4:MemoryImage ;\n    aff4:dataStream <{m}> ;\n    aff4:size {end} ;\n    aff4:stored <{v}> .\n\n",
            i = self.image,
            m = self.map,
            v = self.volume
        ));
        t.push_str(&format!(
            "<{m}>\n    a aff4:Map ;\n    aff4:category <{CATEGORY_PHYSICAL}> ;\n    aff4:dependentStream <{s}> ;\n    aff4:size {end} ;\n    aff4:stored <{v}> .\n\n",
            m = self.map,
            s = self.stream,
            v = self.volume
        ));
        t.push_str(&format!(
            "<{s}>\n    a aff4:ImageStream ;\n    aff4:chunkSize {CHUNK_SIZE} ;\n    aff4:chunksInSegment {CHUNKS_PER_SEGMENT} ;\n    aff4:compressionMethod <{c}> ;\n    aff4:size {size} ;\n    aff4:stored <{v}> ;\n    aff4:version 1 .\n",
            s = self.stream,
            c = self.compression.iri(),
            v = self.volume
        ));
        // pmem's metadata last, in its own statement: some readers split the
        // Turtle at " . " and must not see the JSON inside the Map's block.
        let mut extra = Vec::new();
        extra.push(format!("pmem:architecture {}", literal(&plan.arch.name())));
        // The plan's ranges: the map's entries are runs of one target and
        // cannot tell two adjacent ranges from one.
        let ranges: Vec<String> = plan
            .ranges
            .ranges()
            .iter()
            .map(|r| format!("{:#x}-{:#x}", r.start, r.end))
            .collect();
        extra.push(format!("pmem:ranges {}", literal(&ranges.join(" "))));
        if let Some(json) = &plan.metadata_json {
            extra.push(format!("pmem:metadata {}", literal(json)));
        }
        if let Some(v) = &plan.vmcoreinfo {
            extra.push(format!(
                "pmem:vmcoreinfo {}",
                literal(&String::from_utf8_lossy(v))
            ));
        }
        if let Some(o) = plan.direct_map_offset {
            extra.push(format!("pmem:directMapOffset {o}"));
        }
        t.push_str(&format!(
            "\n<{}>\n    {} .\n",
            self.map,
            extra.join(" ;\n    ")
        ));
        t
    }
}

impl ImageWriter for Aff4Writer {
    fn begin(&mut self, plan: &Plan) -> Result<(), WriteError> {
        check_plan_nonempty(plan, Format::Aff4)?;
        let mut seed = Vec::new();
        for r in &plan.ranges {
            seed.extend_from_slice(&r.start.to_le_bytes());
            seed.extend_from_slice(&r.end.to_le_bytes());
        }
        seed.extend_from_slice(plan.metadata_json.as_deref().unwrap_or("").as_bytes());
        self.volume = format!("aff4://{}", uuid(&seed, 1));
        self.map = format!("aff4://{}", uuid(&seed, 2));
        self.stream = format!("aff4://{}", uuid(&seed, 3));
        self.image = format!("aff4://{}", uuid(&seed, 4));
        self.cursor = ChunkCursor::new(&plan.ranges);
        self.plan = Some(plan.clone());
        self.targets = vec![self.stream.clone()];
        let sink = self.sink.as_mut();
        self.zip
            .member(sink, "container.description", self.volume.as_bytes())?;
        let version = format!(
            "major=1\nminor=0\ntool=pmem {}\n",
            env!("CARGO_PKG_VERSION")
        );
        self.zip.member(sink, "version.txt", version.as_bytes())
    }

    fn write_chunk(&mut self, addr: u64, chunk: Chunk<'_>) -> Result<(), WriteError> {
        self.cursor.advance(addr, chunk.len())?;
        match chunk {
            Chunk::Data(d) => {
                self.place_zeros()?;
                self.push_data(addr, d)
            }
            Chunk::Zero(n) => {
                match &mut self.zeros {
                    Some((at, len)) if *at + *len == addr => *len += n,
                    _ => {
                        self.place_zeros()?;
                        self.zeros = Some((addr, n));
                    }
                }
                Ok(())
            }
        }
    }

    fn write_unreadable(&mut self, addr: u64, len: u64) -> Result<(), WriteError> {
        self.cursor.advance(addr, len)?;
        self.place_zeros()?;
        self.map_run(addr, len, UNREADABLE);
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<SinkSummary, WriteError> {
        if !self.cursor.is_complete() {
            return finish_sink(self.sink, &self.cursor);
        }
        self.place_zeros()?;
        if !self.chunk.is_empty() {
            self.chunk.resize(CHUNK_SIZE as usize, 0);
            self.flush_chunk()?;
        }
        self.close_bevy()?;
        let plan = self.plan.take().expect("begin ran: the cursor is complete");
        let mut map = Vec::with_capacity(self.entries.len() * 28);
        for &(addr, len, offset, target) in &self.entries {
            map.extend_from_slice(&addr.to_le_bytes());
            map.extend_from_slice(&len.to_le_bytes());
            map.extend_from_slice(&offset.to_le_bytes());
            map.extend_from_slice(&target.to_le_bytes());
        }
        let map_name = member_name(&self.map);
        let idx: String = self.targets.iter().map(|t| format!("{t}\n")).collect();
        let turtle = self.turtle(&plan);
        let volume = self.volume.clone();
        let sink = self.sink.as_mut();
        self.zip.member(sink, &format!("{map_name}/map"), &map)?;
        self.zip
            .member(sink, &format!("{map_name}/idx"), idx.as_bytes())?;
        self.zip
            .member(sink, "information.turtle", turtle.as_bytes())?;
        let zip = std::mem::take(&mut self.zip);
        zip.finish(self.sink.as_mut(), &volume)?;
        finish_sink(self.sink, &self.cursor)
    }
}

/// `pmem:ranges`: "start-end" pairs (hex, half-open), space separated.
fn parse_ranges(text: &str) -> Option<MemoryMap> {
    let hex = |v: &str| u64::from_str_radix(v.strip_prefix("0x")?, 16).ok();
    let ranges = text
        .split_whitespace()
        .map(|pair| {
            let (start, end) = pair.split_once('-')?;
            Range::new(hex(start)?, hex(end)?)
        })
        .collect::<Option<Vec<_>>>()?;
    MemoryMap::new(ranges).ok()
}

/// Largest metadata member read whole (Turtle, map, idx, one bevy index).
const MAX_META: u64 = 256 << 20;

/// Triples of `information.turtle` as subject -> predicate -> objects
/// (IRIs and literal values as strings).
type Graph = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn parse_turtle(text: &[u8]) -> Result<Graph, String> {
    let mut graph = Graph::new();
    for triple in oxttl::TurtleParser::new().for_slice(text) {
        let t = triple.map_err(|e| format!("information.turtle: {e}"))?;
        let subject = match &t.subject {
            oxrdf::NamedOrBlankNode::NamedNode(n) => n.as_str().to_string(),
            oxrdf::NamedOrBlankNode::BlankNode(b) => format!("_:{}", b.as_str()),
        };
        let object = match &t.object {
            oxrdf::Term::NamedNode(n) => n.as_str().to_string(),
            oxrdf::Term::BlankNode(b) => format!("_:{}", b.as_str()),
            oxrdf::Term::Literal(l) => l.value().to_string(),
            #[allow(unreachable_patterns)]
            _ => continue,
        };
        graph
            .entry(subject)
            .or_default()
            .entry(t.predicate.as_str().to_string())
            .or_default()
            .push(object);
    }
    Ok(graph)
}

/// The member-name prefix of the object `urn` in `zip`: the URN %-escaped
/// (pmem), its bare path, or its path relative to the volume (pyaff4 and
/// c-aff4 name members of objects inside the volume so: `<volume>/x/data` is
/// `x/data/00000000`). The volume is the zip comment or any `aff4:stored`.
fn member_base(zip: &ZipIndex, graph: &Graph, urn: &str) -> String {
    let mut candidates = vec![
        member_name(urn),
        urn.strip_prefix("aff4://").unwrap_or(urn).to_string(),
    ];
    let stored = format!("{AFF4}stored");
    let volumes = graph
        .values()
        .filter_map(|p| p.get(&stored))
        .flatten()
        .map(String::as_str)
        .chain([zip.comment.trim_end_matches('\0').trim()]);
    for v in volumes.filter(|v| !v.is_empty()) {
        if let Some(rest) = urn.strip_prefix(v).and_then(|r| r.strip_prefix('/')) {
            candidates.push(rest.to_string());
        }
    }
    candidates
        .iter()
        .find(|c| {
            let dir = format!("{c}/");
            zip.members.iter().any(|m| m.name.starts_with(&dir))
        })
        .unwrap_or(&candidates[0])
        .clone()
}

fn has(graph: &Graph, subject: &str, predicate: &str, object: &str) -> bool {
    graph
        .get(subject)
        .and_then(|p| p.get(predicate))
        .is_some_and(|o| o.iter().any(|v| v == object))
}

fn first<'a>(graph: &'a Graph, subject: &str, predicate: &str) -> Option<&'a str> {
    graph
        .get(subject)?
        .get(predicate)?
        .first()
        .map(String::as_str)
}

/// One entry of the map: memory `range` comes from `target` at `offset`.
#[derive(Debug, Clone, Copy)]
struct MapEntry {
    range: Range,
    offset: u64,
    /// The image stream, or `false` for a symbolic target (reads as zeros).
    stream: bool,
    /// The target is aff4:UnreadableData.
    unreadable: bool,
}

/// Where one bevy's chunks are.
#[derive(Debug)]
struct Bevy {
    data: u64,
    len: u64,
    /// (offset, length) per chunk.
    chunks: Vec<(u64, u32)>,
}

/// An AFF4 volume opened for reading.
#[derive(Debug)]
pub struct Aff4Reader {
    path: PathBuf,
    file: ImageFile,
    len: u64,
    zip: ZipIndex,
    map: MemoryMap,
    entries: Vec<MapEntry>,
    stream_member: String,
    stream_size: u64,
    chunk_size: u64,
    chunks_per_segment: u64,
    compression: Compression,
    metadata_json: Option<String>,
    vmcoreinfo: Option<Vec<u8>>,
    arch: Option<pmem_core::Arch>,
    direct_map_offset: Option<u64>,
    bevy: Option<(u64, Bevy)>,
    chunk: Option<(u64, Vec<u8>)>,
}

impl Aff4Reader {
    pub fn open(path: &Path, file: ImageFile) -> Result<Aff4Reader, FormatError> {
        let len = nonempty_len(path, &file)?;
        let corrupt = corrupt_in(path, Format::Aff4);
        let zerr = |e: zip::ZipError| corrupt(e.offset, e.reason);
        let zip = ZipIndex::open(&file, len).map_err(zerr)?;
        let turtle_member = zip
            .find("information.turtle")
            .ok_or_else(|| corrupt(0, "no information.turtle member".into()))?;
        let turtle_at = turtle_member.header;
        let turtle = zip::read_member(&file, len, turtle_member, MAX_META).map_err(zerr)?;
        let graph = parse_turtle(&turtle).map_err(|e| corrupt(turtle_at, e))?;
        let a = |s: &str| format!("{AFF4}{s}");
        let is = |subject: &str, class: &str| has(&graph, subject, RDF_TYPE, &a(class));
        let maps: Vec<&String> = graph.keys().filter(|s| is(s, "Map")).collect();
        let map_urn = maps
            .iter()
            .find(|s| has(&graph, s, &a("category"), CATEGORY_PHYSICAL))
            .or(maps.first())
            .map(|s| s.to_string());
        // The map's stream: aff4:dependentStream (pmem, the Standard), else
        // aff4:dataStream, else the first of the targets its idx member lists
        // that is an ImageStream (pyaff4 and c-aff4 name targets only there).
        let stream_of = |m: &str| {
            first(&graph, m, &a("dependentStream"))
                .or_else(|| first(&graph, m, &a("dataStream")))
                .map(str::to_string)
                .or_else(|| {
                    let idx = zip.find(&format!("{}/idx", member_base(&zip, &graph, m)))?;
                    let idx = zip::read_member(&file, len, idx, MAX_META).ok()?;
                    String::from_utf8_lossy(&idx)
                        .lines()
                        .map(str::trim)
                        .find(|t| is(t, "ImageStream"))
                        .map(str::to_string)
                })
        };
        let stream_urn = match &map_urn {
            Some(m) => stream_of(m),
            None => graph.keys().find(|s| is(s, "ImageStream")).cloned(),
        }
        .ok_or_else(|| {
            corrupt(
                turtle_at,
                "information.turtle names no aff4:Map or aff4:ImageStream".into(),
            )
        })?;
        let num = |s: &str, p: &str| -> Result<Option<u64>, FormatError> {
            first(&graph, s, &a(p))
                .map(|v| {
                    v.parse::<u64>().map_err(|_| {
                        corrupt(turtle_at, format!("{s} aff4:{p} {v:?} is not a number"))
                    })
                })
                .transpose()
        };
        let chunk_size = num(&stream_urn, "chunkSize")?.unwrap_or(CHUNK_SIZE);
        let chunks_per_segment = num(&stream_urn, "chunksInSegment")?.unwrap_or(CHUNKS_PER_SEGMENT);
        if chunk_size == 0
            || chunk_size > 64 << 20
            || chunks_per_segment == 0
            || chunks_per_segment > 1 << 24
        {
            return Err(corrupt(
                turtle_at,
                format!(
                    "chunkSize {chunk_size} or chunksInSegment {chunks_per_segment} out of range"
                ),
            ));
        }
        let stream_size = num(&stream_urn, "size")?;
        let compression = match first(&graph, &stream_urn, &a("compressionMethod")) {
            None => Compression::Stored,
            Some(iri) => Compression::from_iri(iri).ok_or_else(|| FormatError::Unsupported {
                path: path.into(),
                offset: turtle_at,
                reason: format!("AFF4 compression method {iri} is not supported"),
            })?,
        };
        let stream_member = member_base(&zip, &graph, &stream_urn);

        let mut entries = Vec::new();
        match &map_urn {
            Some(m) => {
                let base = member_base(&zip, &graph, m);
                let find = |suffix: &str| {
                    zip.find(&format!("{base}/{suffix}")).ok_or_else(|| {
                        corrupt(turtle_at, format!("the map {m} has no {suffix} member"))
                    })
                };
                let map_member = find("map")?;
                let map_at = map_member.header;
                let raw = zip::read_member(&file, len, map_member, MAX_META).map_err(zerr)?;
                let idx = zip::read_member(&file, len, find("idx")?, MAX_META).map_err(zerr)?;
                let targets: Vec<String> = String::from_utf8_lossy(&idx)
                    .lines()
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty())
                    .collect();
                if raw.len() % 28 != 0 {
                    return Err(corrupt(
                        map_at,
                        format!(
                            "map of {} bytes is not a whole number of 28-byte entries",
                            raw.len()
                        ),
                    ));
                }
                for (i, e) in raw.chunks_exact(28).enumerate() {
                    let start = u64::from_le_bytes(e[0..8].try_into().expect("8"));
                    let length = u64::from_le_bytes(e[8..16].try_into().expect("8"));
                    let offset = u64::from_le_bytes(e[16..24].try_into().expect("8"));
                    let target = u32::from_le_bytes(e[24..28].try_into().expect("4")) as usize;
                    if length == 0 {
                        continue;
                    }
                    let range = start
                        .checked_add(length)
                        .and_then(|end| Range::new(start, end))
                        .ok_or_else(|| {
                            corrupt(
                                map_at,
                                format!(
                                    "map entry {i} at {start:#x} (+{length:#x}) runs past 2^64"
                                ),
                            )
                        })?;
                    let name = targets.get(target).ok_or_else(|| {
                        corrupt(
                            map_at,
                            format!(
                                "map entry {i} names target {target}, idx lists {}",
                                targets.len()
                            ),
                        )
                    })?;
                    let stream = *name == stream_urn;
                    if stream
                        && offset
                            .checked_add(length)
                            .is_none_or(|end| stream_size.is_some_and(|s| end > s))
                    {
                        return Err(corrupt(
                            map_at,
                            format!("map entry {i} reads past the end of the image stream"),
                        ));
                    }
                    entries.push(MapEntry {
                        range,
                        offset,
                        stream,
                        unreadable: *name == UNREADABLE,
                    });
                }
            }
            None => {
                let size = stream_size.ok_or_else(|| {
                    corrupt(turtle_at, "the image stream has no aff4:size".into())
                })?;
                if let Some(range) = Range::new(0, size) {
                    entries.push(MapEntry {
                        range,
                        offset: 0,
                        stream: true,
                        unreadable: false,
                    });
                }
            }
        }
        entries.sort_by_key(|e| e.range.start);
        MemoryMap::new(entries.iter().map(|e| e.range).collect())
            .map_err(|e| corrupt(turtle_at, format!("map: {e}")))?;
        let pmem = |p: &str| {
            map_urn
                .as_deref()
                .and_then(|m| first(&graph, m, &format!("{PMEM_NS}{p}")))
                .map(str::to_string)
        };
        // Entries are runs of one target; memory ranges are what they cover
        // together (a range read partly from the stream, partly zero), split
        // where pmem recorded its ranges.
        let covered = MemoryMap::normalized(entries.iter().map(|e| e.range).collect());
        let map = match pmem("ranges").map(|r| parse_ranges(&r)) {
            Some(Some(recorded))
                if recorded.total_bytes() == covered.total_bytes()
                    && recorded
                        .ranges()
                        .iter()
                        .all(|r| covered.covers(r.start, r.len())) =>
            {
                recorded
            }
            Some(_) => {
                return Err(corrupt(
                    turtle_at,
                    "pmem:ranges disagrees with the map's entries".into(),
                ))
            }
            None => covered,
        };
        let metadata_json = pmem("metadata");
        let vmcoreinfo = pmem("vmcoreinfo").map(String::into_bytes);
        let arch = pmem("architecture").and_then(|a| pmem_core::Arch::from_name(&a));
        let direct_map_offset = pmem("directMapOffset").and_then(|v| v.parse().ok());
        Ok(Aff4Reader {
            path: path.into(),
            file,
            len,
            zip,
            map,
            entries,
            stream_member,
            stream_size: stream_size.unwrap_or(u64::MAX),
            chunk_size,
            chunks_per_segment,
            compression,
            metadata_json,
            vmcoreinfo,
            arch,
            direct_map_offset,
            bevy: None,
            chunk: None,
        })
    }

    /// The volume URN (the ZIP comment).
    pub fn volume(&self) -> &str {
        &self.zip.comment
    }

    /// Memory the map points at aff4:UnreadableData (read as zeros).
    pub fn unreadable(&self) -> Vec<Range> {
        self.entries
            .iter()
            .filter(|e| e.unreadable)
            .map(|e| e.range)
            .collect()
    }

    fn fatal(&self, addr: u64, reason: String) -> ReadError {
        ReadError::Fatal {
            what: format!("{}: AFF4 image stream", self.path.display()),
            addr,
            source: io::Error::new(io::ErrorKind::InvalidData, reason),
        }
    }

    /// Loads the index of bevy `n`: 12-byte entries in `<bevy>.index`, or the
    /// 4-byte offsets of the Rekall-era `<bevy>/index`.
    fn load_bevy(&mut self, n: u64, addr: u64) -> Result<(), ReadError> {
        if self.bevy.as_ref().is_some_and(|(b, _)| *b == n) {
            return Ok(());
        }
        let name = format!("{}/{n:08}", self.stream_member);
        let zerr = |e: zip::ZipError| format!("at file offset {:#x}: {}", e.offset, e.reason);
        let data_member = self
            .zip
            .find(&name)
            .cloned()
            .ok_or_else(|| self.fatal(addr, format!("no bevy member {name}")))?;
        let data = zip::stored_span(&self.file, self.len, &data_member)
            .map_err(|e| self.fatal(addr, zerr(e)))?;
        let chunks = if let Some(m) = self.zip.find(&format!("{name}.index")) {
            let raw = zip::read_member(&self.file, self.len, m, MAX_META)
                .map_err(|e| self.fatal(addr, zerr(e)))?;
            raw.chunks_exact(12)
                .map(|e| {
                    (
                        u64::from_le_bytes(e[..8].try_into().expect("8")),
                        u32::from_le_bytes(e[8..].try_into().expect("4")),
                    )
                })
                .collect()
        } else if let Some(m) = self.zip.find(&format!("{name}/index")) {
            let raw = zip::read_member(&self.file, self.len, m, MAX_META)
                .map_err(|e| self.fatal(addr, zerr(e)))?;
            let offsets: Vec<u64> = raw
                .chunks_exact(4)
                .map(|e| u64::from(u32::from_le_bytes(e.try_into().expect("4"))))
                .collect();
            offsets
                .iter()
                .enumerate()
                .map(|(i, &o)| {
                    let end = offsets
                        .get(i + 1)
                        .copied()
                        .unwrap_or(data_member.compressed);
                    (o, end.saturating_sub(o).min(u64::from(u32::MAX)) as u32)
                })
                .collect()
        } else {
            return Err(self.fatal(addr, format!("bevy {name} has no index member")));
        };
        self.bevy = Some((
            n,
            Bevy {
                data,
                len: data_member.compressed,
                chunks,
            },
        ));
        Ok(())
    }

    /// The uncompressed chunk `n` of the image stream.
    fn load_chunk(&mut self, n: u64, addr: u64) -> Result<(), ReadError> {
        if self.chunk.as_ref().is_some_and(|(c, _)| *c == n) {
            return Ok(());
        }
        self.load_bevy(n / self.chunks_per_segment, addr)?;
        let (_, bevy) = self.bevy.as_ref().expect("loaded");
        let i = (n % self.chunks_per_segment) as usize;
        let &(offset, length) = bevy
            .chunks
            .get(i)
            .ok_or_else(|| self.fatal(addr, format!("chunk {n} is not in its bevy's index")))?;
        let size = self.chunk_size as usize;
        if u64::from(length) > 2 * self.chunk_size
            || offset
                .checked_add(u64::from(length))
                .is_none_or(|e| e > bevy.len)
        {
            return Err(self.fatal(
                addr,
                format!("chunk {n}: index entry {offset:#x} (+{length:#x}) lies outside its bevy"),
            ));
        }
        let mut raw = vec![0u8; length as usize];
        zip::read_at(&self.file, bevy.data + offset, &mut raw)
            .map_err(|e| self.fatal(addr, e.reason))?;
        let data = if length as usize == size {
            raw
        } else {
            self.compression
                .decompress(&raw, size)
                .map_err(|e| self.fatal(addr, format!("chunk {n}: {e}")))?
        };
        self.chunk = Some((n, data));
        Ok(())
    }
}

impl PhysicalMemory for Aff4Reader {
    fn memory_map(&self) -> &MemoryMap {
        &self.map
    }

    fn read_at(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        if !self.map.covers(addr, buf.len() as u64) {
            return Err(self.fatal(
                addr,
                "not inside one range of the image's memory map".into(),
            ));
        }
        let mut done = 0usize;
        while done < buf.len() {
            let at = addr + done as u64;
            let i = self.entries.partition_point(|e| e.range.end <= at);
            let e = self.entries[i];
            let n = (buf.len() - done).min((e.range.end - at) as usize);
            if !e.stream {
                buf[done..done + n].fill(0);
                done += n;
                continue;
            }
            let mut pos = e.offset + (at - e.range.start);
            let mut left = n;
            while left > 0 {
                if pos >= self.stream_size {
                    return Err(self.fatal(at, "read past the image stream's size".into()));
                }
                let c = pos / self.chunk_size;
                self.load_chunk(c, at)?;
                let chunk = &self.chunk.as_ref().expect("loaded").1;
                let within = (pos % self.chunk_size) as usize;
                if within >= chunk.len() {
                    return Err(
                        self.fatal(at, format!("chunk {c} holds {} bytes, short", chunk.len()))
                    );
                }
                let k = left.min(chunk.len() - within);
                buf[done..done + k].copy_from_slice(&chunk[within..within + k]);
                done += k;
                left -= k;
                pos += k as u64;
            }
        }
        Ok(())
    }
}

impl ImageReader for Aff4Reader {
    fn format(&self) -> Format {
        Format::Aff4
    }
    fn arch(&self) -> Option<pmem_core::Arch> {
        self.arch
    }
    fn metadata_json(&self) -> Option<&str> {
        self.metadata_json.as_deref()
    }
    fn vmcoreinfo(&self) -> Option<&[u8]> {
        self.vmcoreinfo.as_deref()
    }
    fn direct_map_offset(&self) -> Option<u64> {
        self.direct_map_offset
    }
    fn unreadable(&self) -> Vec<Range> {
        Aff4Reader::unreadable(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{map, write_image};
    use pmem_core::Arch;
    use std::fs::File;

    /// A small AFF4 volume (stored members: easy to edit in place).
    fn image() -> (tempfile::TempDir, PathBuf, Vec<u8>) {
        let plan = Plan::new(
            map(&[(0x1000, 0x3000), (0x10_0000, 0x10_1000)]),
            Arch::X86_64,
        );
        let bytes = write_image(Format::Aff4, &plan);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img.aff4");
        (dir, path, bytes)
    }

    fn reopen(path: &Path, bytes: &[u8]) -> Result<Aff4Reader, FormatError> {
        std::fs::write(path, bytes).unwrap();
        Aff4Reader::open(path, File::open(path).unwrap().into())
    }

    /// `bytes` with the one occurrence of `from` replaced by `to` (same length).
    fn replaced(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
        assert_eq!(from.len(), to.len());
        let hits: Vec<usize> = (0..=bytes.len() - from.len())
            .filter(|&i| &bytes[i..i + from.len()] == from)
            .collect();
        assert_eq!(hits.len(), 1, "{:?}", String::from_utf8_lossy(from));
        let mut out = bytes.to_vec();
        out[hits[0]..hits[0] + to.len()].copy_from_slice(to);
        out
    }

    fn position(bytes: &[u8], what: &[u8]) -> usize {
        bytes
            .windows(what.len())
            .rposition(|w| w == what)
            .unwrap_or_else(|| panic!("{what:?} not found"))
    }

    /// (local header offset, data offset) of the member whose name ends with `suffix`.
    fn member(path: &Path, bytes: &[u8], suffix: &str) -> (u64, usize) {
        std::fs::write(path, bytes).unwrap();
        let file: ImageFile = File::open(path).unwrap().into();
        let len = bytes.len() as u64;
        let zip = ZipIndex::open(&file, len).unwrap();
        let m = zip
            .members
            .iter()
            .find(|m| m.name.ends_with(suffix))
            .unwrap();
        (m.header, zip::data_offset(&file, len, m).unwrap() as usize)
    }

    fn read_error(path: &Path, bytes: &[u8]) -> String {
        let mut r = reopen(path, bytes).unwrap();
        let mut buf = vec![0u8; 0x2000];
        r.read_at(0x1000, &mut buf).unwrap_err().to_string()
    }

    #[test]
    fn corrupt_containers_are_named_by_offset() {
        let (_dir, path, bytes) = image();
        let mut r = reopen(&path, &bytes).unwrap();
        let mut page = [0u8; 4096];
        r.read_at(0x10_0000, &mut page).unwrap();
        assert_eq!(page, [0x22; 4096]);
        // Truncation anywhere is an error, never a panic.
        for cut in [
            1,
            29,
            30,
            200,
            bytes.len() / 2,
            bytes.len() - 22,
            bytes.len() - 1,
        ] {
            assert!(reopen(&path, &bytes[..cut]).is_err(), "cut at {cut}");
        }
        // The ZIP64 end record: a central directory past the end of the
        // file, more members than any volume holds.
        let eocd = position(&bytes, &0x0605_4b50u32.to_le_bytes()) as u64;
        let rec = position(&bytes, &0x0606_4b50u32.to_le_bytes());
        let mut bad = bytes.clone();
        bad[rec + 48..rec + 56].copy_from_slice(&(u64::MAX - 8).to_le_bytes());
        let err = reopen(&path, &bad).unwrap_err();
        assert_eq!(err.offset(), eocd, "{err}");
        assert!(err.to_string().contains("does not fit the file"), "{err}");
        let mut bad = bytes.clone();
        bad[rec + 32..rec + 40].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let err = reopen(&path, &bad).unwrap_err();
        assert!(err.to_string().contains("exceed the limit"), "{err}");
        // The locator pointing past the end.
        let mut bad = bytes.clone();
        let locator = eocd as usize - 20;
        bad[locator + 8..locator + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        let err = reopen(&path, &bad).unwrap_err();
        assert_eq!(err.offset(), locator as u64, "{err}");
        // No information.turtle.
        let mut bad = bytes.clone();
        let name = position(&bytes, b"information.turtle");
        bad[name + 17] = b'X';
        let err = reopen(&path, &bad).unwrap_err();
        assert!(
            err.to_string().contains("no information.turtle member"),
            "{err}"
        );
        // Every single-byte change in the central directory and end records
        // fails cleanly or reads.
        let cd = position(&bytes, &0x0201_4b50u32.to_le_bytes()) - 400;
        for i in cd..bytes.len() {
            for flip in [0x01, 0xff] {
                let mut bad = bytes.clone();
                bad[i] ^= flip;
                if let Ok(mut r) = reopen(&path, &bad) {
                    let mut buf = vec![0u8; 0x2000];
                    let _ = r.read_at(0x1000, &mut buf);
                }
            }
        }
    }

    #[test]
    fn corrupt_metadata_is_named_by_offset() {
        let (_dir, path, bytes) = image();
        let (turtle_at, _) = member(&path, &bytes, "information.turtle");
        let refused = |bad: &[u8], says: &str| {
            let err = reopen(&path, bad).unwrap_err();
            assert!(err.to_string().contains(says), "{err}");
            err.offset()
        };
        let bad = replaced(&bytes, b"aff4:chunkSize 32768", b"aff4:chunkSize 00000");
        assert_eq!(refused(&bad, "out of range"), turtle_at);
        let bad = replaced(
            &bytes,
            b"aff4:chunksInSegment 1024",
            b"aff4:chunksInSegment \"ab\"",
        );
        assert_eq!(refused(&bad, "is not a number"), turtle_at);
        // A stream size shorter than the map needs.
        let (map_at, _) = member(&path, &bytes, "/map");
        let bad = replaced(&bytes, b"aff4:size 12288", b"aff4:size 1228 ");
        assert_eq!(refused(&bad, "past the end of the image stream"), map_at);
        let bad = replaced(&bytes, b"aff4:size 12288 ;", b"aff4:size 12288 ]");
        assert_eq!(refused(&bad, "information.turtle"), turtle_at);
        let bad = replaced(&bytes, b"0x1000-0x3000", b"0x1000-0x4000");
        assert_eq!(refused(&bad, "pmem:ranges disagrees"), turtle_at);
    }

    #[test]
    fn corrupt_maps_and_indexes_are_named() {
        let (_dir, path, bytes) = image();
        let (map_at, map) = member(&path, &bytes, "/map");
        let entry = |bytes: &mut Vec<u8>, i: usize, field: usize, value: u64| {
            let at = map + i * 28 + field;
            bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
        };
        // An entry whose range runs past 2^64.
        let mut bad = bytes.clone();
        entry(&mut bad, 0, 0, u64::MAX - 0x10);
        let err = reopen(&path, &bad).unwrap_err();
        assert_eq!(err.offset(), map_at);
        assert!(err.to_string().contains("runs past 2^64"), "{err}");
        // An entry reading past the end of the image stream, or past 2^64 in it.
        for offset in [0x3000, u64::MAX - 0x10] {
            let mut bad = bytes.clone();
            entry(&mut bad, 0, 16, offset);
            let err = reopen(&path, &bad).unwrap_err();
            assert_eq!(err.offset(), map_at);
            assert!(
                err.to_string().contains("past the end of the image stream"),
                "{err}"
            );
        }
        // An entry naming a target the idx member does not list.
        let mut bad = bytes.clone();
        bad[map + 24..map + 28].copy_from_slice(&7u32.to_le_bytes());
        let err = reopen(&path, &bad).unwrap_err();
        assert!(err.to_string().contains("names target 7"), "{err}");
        // Overlapping entries.
        let mut bad = bytes.clone();
        entry(&mut bad, 1, 0, 0x2000);
        assert!(reopen(&path, &bad).is_err());
        // A bevy index entry outside its bevy: found when the chunk is read.
        let (_, index) = member(&path, &bytes, "00000000.index");
        for (field, value) in [(0, u64::MAX - 2), (0, 1 << 40)] {
            let mut bad = bytes.clone();
            bad[index + field..index + field + 8].copy_from_slice(&value.to_le_bytes());
            let err = read_error(&path, &bad);
            assert!(err.contains("lies outside its bevy"), "{err}");
        }
        // A chunk length of zero or past the bevy.
        for length in [0u32, u32::MAX] {
            let mut bad = bytes.clone();
            bad[index + 8..index + 12].copy_from_slice(&length.to_le_bytes());
            let err = read_error(&path, &bad);
            assert!(!err.is_empty());
        }
    }
}
