//! What an AFF4 volume's `information.turtle` says, read step by step: its
//! triples, the physical-memory map, the image stream it reads from, the
//! map's entries and pmem's own metadata (with the symbol bundle, a member
//! the Turtle points at). Member names are resolved here too, as the
//! imagers that wrote the volume named them.

use super::reader::MapEntry;
use super::zip::{self, ZipError, ZipIndex};
use super::{
    member_name, Compression, AFF4, CATEGORY_PHYSICAL, CHUNKS_PER_SEGMENT, CHUNK_SIZE, PMEM_NS,
    UNREADABLE,
};
use crate::bytes::{u32_le, u64_le};
use crate::image_file::Parsing;
use crate::{FormatError, ImageMetadata};
use pmem_core::{Arch, MemoryMap, Range};
use std::collections::BTreeMap;

const RDF_TYPE: &str = "http://www.w3.org/1999/02/22-rdf-syntax-ns#type";

/// A ZIP problem as the reader's error.
pub(super) fn zip_corrupt(image: Parsing<'_>, e: ZipError) -> FormatError {
    image.corrupt(e.offset, e.reason)
}

/// `name` in the AFF4 namespace.
fn aff4(name: &str) -> String {
    format!("{AFF4}{name}")
}

/// The volume's Turtle, parsed, and where it is (its errors point there).
pub(super) struct Volume {
    graph: Graph,
    pub(super) turtle_at: u64,
}

/// The `aff4:ImageStream` the memory is read from.
pub(super) struct ImageStream {
    urn: String,
    /// The member-name prefix of its bevies.
    pub(super) member: String,
    /// Its `aff4:size`, when stated.
    pub(super) size: Option<u64>,
    pub(super) chunk_size: u64,
    pub(super) chunks_per_segment: u64,
    pub(super) compression: Compression,
}

impl Volume {
    /// Reads and parses `information.turtle`.
    pub(super) fn read(image: Parsing<'_>, zip: &ZipIndex) -> Result<Volume, FormatError> {
        let turtle_member = zip
            .find("information.turtle")
            .ok_or_else(|| image.corrupt(0, "no information.turtle member"))?;
        let turtle_at = turtle_member.header;
        let turtle = zip::read_member(image.file, image.len, turtle_member, MAX_META)
            .map_err(|e| zip_corrupt(image, e))?;
        let graph = parse_turtle(&turtle).map_err(|e| image.corrupt(turtle_at, e))?;
        Ok(Volume { graph, turtle_at })
    }

    /// Whether `subject` is an `aff4:<class>`.
    fn is(&self, subject: &str, class: &str) -> bool {
        has(&self.graph, subject, RDF_TYPE, &aff4(class))
    }

    /// The first `aff4:<predicate>` of `subject`.
    fn first(&self, subject: &str, predicate: &str) -> Option<&str> {
        first(&self.graph, subject, &aff4(predicate))
    }

    /// The `aff4:Map` whose category is memory/physical, else the first Map.
    pub(super) fn physical_map(&self) -> Option<String> {
        let maps: Vec<&String> = self.graph.keys().filter(|s| self.is(s, "Map")).collect();
        maps.iter()
            .find(|s| has(&self.graph, s, &aff4("category"), CATEGORY_PHYSICAL))
            .or(maps.first())
            .map(|s| s.to_string())
    }

    /// The map's stream: aff4:dependentStream (pmem, the Standard), else
    /// aff4:dataStream, else the first of the targets its idx member lists
    /// that is an ImageStream (pyaff4 and c-aff4 name targets only there).
    fn stream_of(&self, image: Parsing<'_>, zip: &ZipIndex, map: &str) -> Option<String> {
        self.first(map, "dependentStream")
            .or_else(|| self.first(map, "dataStream"))
            .map(str::to_string)
            .or_else(|| {
                let idx = zip.find(&format!("{}/idx", member_base(zip, &self.graph, map)))?;
                let idx = zip::read_member(image.file, image.len, idx, MAX_META).ok()?;
                String::from_utf8_lossy(&idx)
                    .lines()
                    .map(str::trim)
                    .find(|t| self.is(t, "ImageStream"))
                    .map(str::to_string)
            })
    }

    /// `aff4:<predicate>` of `subject` as a number, when stated.
    fn number(
        &self,
        image: Parsing<'_>,
        subject: &str,
        predicate: &str,
    ) -> Result<Option<u64>, FormatError> {
        self.first(subject, predicate)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    image.corrupt(
                        self.turtle_at,
                        format!("{subject} aff4:{predicate} {v:?} is not a number"),
                    )
                })
            })
            .transpose()
    }

    /// The stream the `map` reads from (without a map, the first
    /// ImageStream), with its chunking and compression.
    pub(super) fn stream(
        &self,
        image: Parsing<'_>,
        zip: &ZipIndex,
        map: Option<&str>,
    ) -> Result<ImageStream, FormatError> {
        let turtle_at = self.turtle_at;
        let urn = match map {
            Some(m) => self.stream_of(image, zip, m),
            None => self
                .graph
                .keys()
                .find(|s| self.is(s, "ImageStream"))
                .cloned(),
        }
        .ok_or_else(|| {
            image.corrupt(
                turtle_at,
                "information.turtle names no aff4:Map or aff4:ImageStream",
            )
        })?;
        let chunk_size = self.number(image, &urn, "chunkSize")?.unwrap_or(CHUNK_SIZE);
        let chunks_per_segment = self
            .number(image, &urn, "chunksInSegment")?
            .unwrap_or(CHUNKS_PER_SEGMENT);
        if chunk_size == 0
            || chunk_size > 64 << 20
            || chunks_per_segment == 0
            || chunks_per_segment > 1 << 24
        {
            return Err(image.corrupt(
                turtle_at,
                format!(
                    "chunkSize {chunk_size} or chunksInSegment {chunks_per_segment} out of range"
                ),
            ));
        }
        let size = self.number(image, &urn, "size")?;
        let compression = match self.first(&urn, "compressionMethod") {
            None => Compression::Stored,
            Some(iri) => Compression::from_iri(iri).ok_or_else(|| FormatError::Unsupported {
                path: image.path.into(),
                offset: turtle_at,
                reason: format!("AFF4 compression method {iri} is not supported"),
            })?,
        };
        Ok(ImageStream {
            member: member_base(zip, &self.graph, &urn),
            urn,
            size,
            chunk_size,
            chunks_per_segment,
            compression,
        })
    }

    /// The entries of the map's `map` member, each naming its target in
    /// the `idx` member.
    pub(super) fn map_entries(
        &self,
        image: Parsing<'_>,
        zip: &ZipIndex,
        map: &str,
        stream: &ImageStream,
    ) -> Result<Vec<MapEntry>, FormatError> {
        let base = member_base(zip, &self.graph, map);
        let find = |suffix: &str| {
            zip.find(&format!("{base}/{suffix}")).ok_or_else(|| {
                image.corrupt(
                    self.turtle_at,
                    format!("the map {map} has no {suffix} member"),
                )
            })
        };
        let read = |member| {
            zip::read_member(image.file, image.len, member, MAX_META)
                .map_err(|e| zip_corrupt(image, e))
        };
        let map_member = find("map")?;
        let map_at = map_member.header;
        let raw = read(map_member)?;
        let idx = read(find("idx")?)?;
        let targets: Vec<String> = String::from_utf8_lossy(&idx)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        if raw.len() % 28 != 0 {
            return Err(image.corrupt(
                map_at,
                format!(
                    "map of {} bytes is not a whole number of 28-byte entries",
                    raw.len()
                ),
            ));
        }
        let mut entries = Vec::new();
        for (i, e) in raw.chunks_exact(28).enumerate() {
            let entry = MapRecord {
                index: i,
                start: u64_le(e, 0),
                length: u64_le(e, 8),
                offset: u64_le(e, 16),
                target: u32_le(e, 24) as usize,
            };
            entries.extend(entry.resolve(image, map_at, &targets, stream)?);
        }
        Ok(entries)
    }

    /// Without a map: the whole stream at address 0.
    pub(super) fn whole_stream(
        &self,
        image: Parsing<'_>,
        stream: &ImageStream,
    ) -> Result<Vec<MapEntry>, FormatError> {
        let size = stream
            .size
            .ok_or_else(|| image.corrupt(self.turtle_at, "the image stream has no aff4:size"))?;
        Ok(Range::new(0, size)
            .map(|range| MapEntry {
                range,
                offset: 0,
                stream: true,
                unreadable: false,
            })
            .into_iter()
            .collect())
    }

    /// pmem's own `pmem:<predicate>` of the map.
    fn pmem(&self, map: Option<&str>, predicate: &str) -> Option<String> {
        map.and_then(|m| first(&self.graph, m, &format!("{PMEM_NS}{predicate}")))
            .map(str::to_string)
    }

    /// The memory ranges: what the entries cover together (a range read
    /// partly from the stream, partly zero), split where pmem recorded its
    /// ranges. `entries` are sorted.
    pub(super) fn memory_ranges(
        &self,
        image: Parsing<'_>,
        map: Option<&str>,
        entries: &[MapEntry],
    ) -> Result<MemoryMap, FormatError> {
        let covered = MemoryMap::normalized(entries.iter().map(|e| e.range).collect());
        match self.pmem(map, "ranges").map(|r| parse_ranges(&r)) {
            Some(Some(recorded))
                if recorded.total_bytes() == covered.total_bytes()
                    && recorded
                        .ranges()
                        .iter()
                        .all(|r| covered.covers(r.start, r.len())) =>
            {
                Ok(recorded)
            }
            Some(_) => Err(image.corrupt(
                self.turtle_at,
                "pmem:ranges disagrees with the map's entries",
            )),
            None => Ok(covered),
        }
    }

    /// The symbol bundle the map's `pmem:symbols` names: a member of this
    /// volume, read whole (at most [`crate::MAX_SYMBOLS`] bytes).
    fn symbols(
        &self,
        image: Parsing<'_>,
        zip: &ZipIndex,
        map: Option<&str>,
    ) -> Result<Option<Vec<u8>>, FormatError> {
        let Some(urn) = self.pmem(map, "symbols") else {
            return Ok(None);
        };
        let volume = zip.comment.trim_end_matches('\0').trim();
        let member = urn
            .strip_prefix(volume)
            .and_then(|rest| rest.strip_prefix('/'))
            .and_then(|name| zip.find(name))
            .ok_or_else(|| {
                image.corrupt(
                    self.turtle_at,
                    format!("pmem:symbols names {urn}, which is no member of the volume {volume}"),
                )
            })?;
        zip::read_member(image.file, image.len, member, crate::MAX_SYMBOLS)
            .map(Some)
            .map_err(|e| zip_corrupt(image, e))
    }

    /// What pmem recorded on the map (the symbol bundle read from its
    /// member), and the memory it marks unreadable.
    pub(super) fn metadata(
        &self,
        image: Parsing<'_>,
        zip: &ZipIndex,
        map: Option<&str>,
        entries: &[MapEntry],
    ) -> Result<ImageMetadata, FormatError> {
        Ok(ImageMetadata {
            arch: self
                .pmem(map, "architecture")
                .and_then(|a| Arch::from_name(&a)),
            direct_map_offset: self
                .pmem(map, "directMapOffset")
                .and_then(|v| v.parse().ok()),
            vmcoreinfo: self.pmem(map, "vmcoreinfo").map(String::into_bytes),
            metadata_json: self.pmem(map, "metadata"),
            time_map_json: self.pmem(map, "timeMap"),
            windows: None,
            symbols: self.symbols(image, zip, map)?,
            unreadable: entries
                .iter()
                .filter(|e| e.unreadable)
                .map(|e| e.range)
                .collect(),
        })
    }
}

/// One 28-byte entry of a map member, as stored.
struct MapRecord {
    index: usize,
    start: u64,
    length: u64,
    offset: u64,
    target: usize,
}

impl MapRecord {
    /// The entry, checked; `None` for an empty one.
    fn resolve(
        &self,
        image: Parsing<'_>,
        map_at: u64,
        targets: &[String],
        stream: &ImageStream,
    ) -> Result<Option<MapEntry>, FormatError> {
        let MapRecord {
            index: i,
            start,
            length,
            offset,
            target,
        } = *self;
        if length == 0 {
            return Ok(None);
        }
        let range = start
            .checked_add(length)
            .and_then(|end| Range::new(start, end))
            .ok_or_else(|| {
                image.corrupt(
                    map_at,
                    format!("map entry {i} at {start:#x} (+{length:#x}) runs past 2^64"),
                )
            })?;
        let name = targets.get(target).ok_or_else(|| {
            image.corrupt(
                map_at,
                format!(
                    "map entry {i} names target {target}, idx lists {}",
                    targets.len()
                ),
            )
        })?;
        let in_stream = *name == stream.urn;
        if in_stream
            && offset
                .checked_add(length)
                .is_none_or(|end| stream.size.is_some_and(|s| end > s))
        {
            return Err(image.corrupt(
                map_at,
                format!("map entry {i} reads past the end of the image stream"),
            ));
        }
        Ok(Some(MapEntry {
            range,
            offset,
            stream: in_stream,
            unreadable: *name == UNREADABLE,
        }))
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
pub(super) const MAX_META: u64 = 256 << 20;

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
