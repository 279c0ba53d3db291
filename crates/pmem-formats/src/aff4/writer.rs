//! The AFF4 writer: bevies of compressed chunks streamed forward, then the
//! map, its idx and the Turtle, then the central directory.

use super::zip::ZipWriter;
use super::{
    member_name, Compression, AFF4, CATEGORY_PHYSICAL, CHUNKS_PER_SEGMENT, CHUNK_SIZE, PMEM_NS,
    SYMBOLS_MEMBER, UNREADABLE, ZERO, ZERO_RUN_MIN,
};
use crate::write::{check_plan_nonempty, finish_sink, plan_symbols};
use crate::Format;
use pmem_core::writer::ChunkCursor;
use pmem_core::{ByteSink, Chunk, ImageWriter, Plan, SinkSummary, WriteError};

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
    /// The URN of the symbol bundle's member, once written.
    symbols: Option<String>,
    /// The copy's time map (JSON), stated in the Turtle.
    time_map: Option<String>,
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
    /// A writer compressing chunks with the default, snappy.
    pub fn new(sink: Box<dyn ByteSink>) -> Aff4Writer {
        Aff4Writer::with_compression(sink, Compression::default())
    }

    /// A writer compressing the image stream's chunks with `compression`.
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
            symbols: None,
            time_map: None,
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
        let (v, i, m, s) = (&self.volume, &self.image, &self.map, &self.stream);
        let end = plan.ranges.end();
        let volume = statement(
            v,
            &[
                "a aff4:ZipVolume".into(),
                format!("aff4:contains <{i}>, <{m}>, <{s}>"),
                "aff4:interface aff4:volume".into(),
            ],
        );
        // The image is its own subject whose aff4:dataStream is the map, as
        // the Standard has it: pyaff4 opens a physical image through that
        // link, and c-aff4 delegates an aff4:Image to its dataStream (were
        // the map itself an aff4:Image pointing at the stream, both would
        // read the stream at the wrong addresses or not at all).
        let image = statement(
            i,
            &[
                "a aff4:Image, aff4:MemoryImage".into(),
                format!("aff4:dataStream <{m}>"),
                format!("aff4:size {end}"),
                format!("aff4:stored <{v}>"),
            ],
        );
        let map = statement(
            m,
            &[
                "a aff4:Map".into(),
                format!("aff4:category <{CATEGORY_PHYSICAL}>"),
                format!("aff4:dependentStream <{s}>"),
                format!("aff4:size {end}"),
                format!("aff4:stored <{v}>"),
            ],
        );
        let stream = statement(
            s,
            &[
                "a aff4:ImageStream".into(),
                format!("aff4:chunkSize {CHUNK_SIZE}"),
                format!("aff4:chunksInSegment {CHUNKS_PER_SEGMENT}"),
                format!("aff4:compressionMethod <{}>", self.compression.iri()),
                format!("aff4:size {}", self.stream_len),
                format!("aff4:stored <{v}>"),
                "aff4:version 1".into(),
            ],
        );
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
        if let Some(urn) = &self.symbols {
            extra.push(format!("pmem:symbols <{urn}>"));
        }
        if let Some(json) = &self.time_map {
            extra.push(format!("pmem:timeMap {}", literal(json)));
        }
        let pmem = statement(m, &extra);
        format!(
            "@prefix aff4: <{AFF4}> .\n@prefix rdf: <http://www.w3.org/1999/02/22-rdf-syntax-ns#> .\n@prefix xsd: <http://www.w3.org/2001/XMLSchema#> .\n@prefix pmem: <{PMEM_NS}> .\n\n{}",
            [volume, image, map, stream, pmem].join("\n")
        )
    }
}

/// One Turtle statement: the subject, then its predicate-object pairs (the
/// first `a` and the types) one a line.
fn statement(subject: &str, properties: &[String]) -> String {
    format!("<{subject}>\n    {} .\n", properties.join(" ;\n    "))
}

impl ImageWriter for Aff4Writer {
    fn begin(&mut self, plan: &Plan) -> Result<(), WriteError> {
        check_plan_nonempty(plan, Format::Aff4)?;
        let symbols = plan_symbols(plan)?;
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
        // Kept for the Turtle, without the symbol bundle: that is written
        // now, as the volume's third member, so that the writer does not
        // hold a second copy of megabytes while the memory streams.
        self.plan = Some(plan.without_symbols());
        self.targets = vec![self.stream.clone()];
        let sink = self.sink.as_mut();
        self.zip
            .member(sink, "container.description", self.volume.as_bytes())?;
        let version = format!(
            "major=1\nminor=0\ntool=pmem {}\n",
            env!("CARGO_PKG_VERSION")
        );
        self.zip.member(sink, "version.txt", version.as_bytes())?;
        if let Some(symbols) = symbols {
            self.zip.member(sink, SYMBOLS_MEMBER, symbols)?;
            self.symbols = Some(format!("{}/{SYMBOLS_MEMBER}", self.volume));
        }
        Ok(())
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

    fn time_map(&mut self, json: &str) -> Result<(), WriteError> {
        self.time_map = Some(json.to_owned());
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
