//! Write -> read round trips for every format, the ELF output checked with
//! object's own parser, and readers fed corrupted images.

use object::elf as E;
use object::read::elf::{ElfFile64, FileHeader as _, ProgramHeader as _};
use object::LittleEndian as LE;
use pmem_core::sink::{create_image_file, HashingSink};
use pmem_core::{Arch, Chunk, MemoryMap, Plan, Range, SinkSummary, WriteError};
use pmem_formats::{detect, open_image, writer, Format, FormatError, ImageReader};
use proptest::prelude::*;
use std::path::{Path, PathBuf};

const PAGE: u64 = 4096;

/// Memory to write: ranges with their content.
#[derive(Debug, Clone)]
struct Memory {
    ranges: Vec<(Range, Vec<u8>)>,
}

impl Memory {
    fn map(&self) -> MemoryMap {
        MemoryMap::new(self.ranges.iter().map(|(r, _)| *r).collect()).unwrap()
    }

    fn plan(&self) -> Plan {
        let mut plan = Plan::new(self.map(), Arch::X86_64);
        plan.vmcoreinfo = Some(b"OSRELEASE=6.1.0\nPAGESIZE=4096\n".to_vec());
        plan.metadata_json = Some(r#"{"tool":"pmem","hostname":"h\u00e9"}"#.into());
        plan.direct_map_offset = Some(0xffff_8880_0000_0000);
        plan.symbols = Some(symbol_bundle());
        plan.windows = Some(pmem_core::WindowsMetadata {
            cr3: 0x1aa000,
            nt_build_number: 0xF000_4A61,
            processors: 2,
            ..Default::default()
        });
        plan
    }

    /// Crash dumps hold whole pages only.
    fn page_aligned(&self) -> bool {
        self.ranges
            .iter()
            .all(|(r, _)| r.start % PAGE == 0 && r.end % PAGE == 0)
    }
}

/// Stands for a symbol bundle (opaque to the formats): every byte value,
/// not UTF-8, and a length that is no multiple of the ELF note alignment.
fn symbol_bundle() -> Vec<u8> {
    (0..5003u32).map(|i| (i * 7 + i / 256) as u8).collect()
}

/// Hands each range to `w` in `chunk`-byte pieces; all-zero pieces go as
/// `Chunk::Zero`, as the pipeline does.
fn feed(w: &mut dyn pmem_core::ImageWriter, mem: &Memory, chunk: usize) -> Result<(), WriteError> {
    for (range, data) in &mem.ranges {
        for (i, piece) in data.chunks(chunk).enumerate() {
            let addr = range.start + (i * chunk) as u64;
            if piece.iter().all(|&b| b == 0) {
                w.write_chunk(addr, Chunk::Zero(piece.len() as u64))?;
            } else {
                w.write_chunk(addr, Chunk::Data(piece))?;
            }
        }
    }
    Ok(())
}

fn write_file(format: Format, path: &Path, plan: &Plan, mem: &Memory, chunk: usize) -> SinkSummary {
    let sink = HashingSink::file(create_image_file(path, false).unwrap());
    let mut w = writer(format, Box::new(sink));
    w.begin(plan).unwrap();
    feed(w.as_mut(), mem, chunk).unwrap();
    w.finish().unwrap()
}

fn write_stream(format: Format, path: &Path, plan: &Plan, mem: &Memory, chunk: usize) {
    let file = std::fs::File::create(path).unwrap();
    let mut w = writer(format, Box::new(HashingSink::stream(Box::new(file))));
    w.begin(plan).unwrap();
    feed(w.as_mut(), mem, chunk).unwrap();
    w.finish().unwrap();
}

fn open(format: Format, path: &Path, map: &MemoryMap) -> Box<dyn ImageReader> {
    let raw_map = (format == Format::Raw).then(|| map.clone());
    open_image(path, raw_map).unwrap()
}

fn check_read_back(reader: &mut dyn ImageReader, mem: &Memory) {
    assert_eq!(reader.memory_map(), &mem.map());
    for (range, data) in &mem.ranges {
        let mut buf = vec![0xa5; data.len()];
        reader.read_at(range.start, &mut buf).unwrap();
        assert_eq!(&buf, data, "range {range}");
        // A read from the middle, too.
        let mid = data.len() / 2;
        let mut part = vec![0; data.len() - mid];
        reader.read_at(range.start + mid as u64, &mut part).unwrap();
        assert_eq!(&part[..], &data[mid..]);
    }
}

/// Checks the ELF image with object's parser, independent of ours.
fn check_elf_structure(bytes: &[u8], plan: &Plan) {
    let elf = ElfFile64::<LE>::parse(bytes).unwrap();
    let header = elf.elf_header();
    assert_eq!(header.e_type(LE), E::ET_CORE);
    assert_eq!(header.e_machine(LE), E::EM_X86_64);
    let phdrs = elf.elf_program_headers();
    assert_eq!(phdrs[0].p_type(LE), E::PT_NOTE, "PT_NOTE comes first");
    let mut notes = phdrs[0].notes(LE, bytes).unwrap().unwrap();
    let mut seen = Vec::new();
    while let Some(note) = notes.next().unwrap() {
        seen.push((note.name().to_vec(), note.n_type(LE), note.desc().to_vec()));
    }
    assert_eq!(
        seen,
        vec![
            (b"VMCOREINFO".to_vec(), 0, plan.vmcoreinfo.clone().unwrap()),
            (
                b"PMEM".to_vec(),
                pmem_formats::elf::NT_PMEM_METADATA,
                plan.metadata_json.clone().unwrap().into_bytes()
            ),
            (
                b"PMEM".to_vec(),
                pmem_formats::elf::NT_PMEM_SYMBOLS,
                plan.symbols.clone().unwrap()
            ),
        ]
    );
    let loads: Vec<_> = phdrs[1..].iter().collect();
    assert_eq!(loads.len(), plan.ranges.len());
    let mut previous_end = 0;
    for (phdr, range) in loads.iter().zip(plan.ranges.ranges()) {
        assert_eq!(phdr.p_type(LE), E::PT_LOAD);
        assert_eq!(phdr.p_paddr(LE), range.start);
        assert!(phdr.p_paddr(LE) >= previous_end, "ascending, disjoint");
        previous_end = range.end;
        assert_eq!(phdr.p_filesz(LE), range.len());
        assert_eq!(phdr.p_memsz(LE), range.len());
        assert_eq!(phdr.p_offset(LE) % PAGE, 0);
        assert_eq!(phdr.p_align(LE), 0, "0 as in kdump vmcores (crash)");
        assert_eq!(phdr.p_flags(LE), E::PF_R | E::PF_W | E::PF_X);
        assert_eq!(
            phdr.p_vaddr(LE),
            plan.direct_map_offset.unwrap() + range.start
        );
    }
}

/// Checks the Mach-O image with object's Mach-O parser, independent of
/// ours: header fields, one LC_SEGMENT_64 per range in ascending order with
/// page-aligned data equal to the memory, and the three LC_NOTEs.
fn check_macho_structure(bytes: &[u8], plan: &Plan, mem: &Memory) {
    use object::macho as M;
    use object::read::macho::{MachHeader as _, Segment as _};
    let header = M::MachHeader64::<LE>::parse(bytes, 0).unwrap();
    // object reads the magic big-endian: MH_CIGAM_64 means a little-endian MH_MAGIC_64.
    assert_eq!(header.magic(), M::MH_CIGAM_64);
    assert_eq!(header.cputype(LE), M::CPU_TYPE_X86_64);
    assert_eq!(header.filetype(LE), M::MH_CORE);
    assert_eq!(header.ncmds(LE) as usize, plan.ranges.len() + 3);
    let mut commands = header.load_commands(LE, bytes, 0).unwrap();
    let mut segments = Vec::new();
    let mut notes = Vec::new();
    while let Some(command) = commands.next().unwrap() {
        if command.cmd() == M::LC_NOTE {
            let note = command.data::<M::NoteCommand<LE>>().unwrap();
            let owner = note.data_owner;
            let end = owner.iter().position(|&c| c == 0).unwrap_or(16);
            let (offset, size) = (note.offset.get(LE) as usize, note.size.get(LE) as usize);
            notes.push((owner[..end].to_vec(), bytes[offset..offset + size].to_vec()));
        } else if let Some((segment, _)) = command.segment_64().unwrap() {
            assert_eq!(segment.name(), b"System RAM");
            assert_eq!(segment.nsects(LE), 0);
            assert_eq!(segment.vmsize(LE), segment.filesize(LE));
            assert_eq!(segment.fileoff(LE) % PAGE, 0);
            segments.push((
                segment.vmaddr(LE),
                segment.data(LE, bytes).unwrap().to_vec(),
            ));
        }
    }
    let expected: Vec<_> = mem
        .ranges
        .iter()
        .map(|(r, d)| (r.start, d.clone()))
        .collect();
    assert!(segments == expected, "segments differ from the memory");
    assert_eq!(
        notes,
        vec![
            (b"VMCOREINFO".to_vec(), plan.vmcoreinfo.clone().unwrap()),
            (
                b"pmem.metadata".to_vec(),
                plan.metadata_json.clone().unwrap().into_bytes()
            ),
            (b"pmem.symbols".to_vec(), plan.symbols.clone().unwrap()),
        ]
    );
}

/// Reads the AFF4 volume with the `aff4` crate (an independent reader): the
/// map's virtual disk holds every range at its address and zeros between;
/// the Turtle parses as RDF and says what pmem's reader relies on.
fn check_aff4_independently(path: &Path, plan: &Plan, mem: &Memory) {
    use std::io::{Read, Seek, SeekFrom};
    let mut r = aff4::Aff4Reader::open(path).unwrap();
    assert_eq!(r.virtual_disk_size(), plan.ranges.end());
    // Runs of zero pages of 1 MiB and more are mapped to aff4:Zero, not stored.
    assert!(r.image_stream_size() <= plan.ranges.total_bytes());
    let mut previous_end = 0;
    for (range, data) in &mem.ranges {
        let mut gap = vec![0xa5; (range.start - previous_end) as usize];
        r.seek(SeekFrom::Start(previous_end)).unwrap();
        r.read_exact(&mut gap).unwrap();
        assert!(gap.iter().all(|&b| b == 0), "zeros before {range}");
        let mut buf = vec![0xa5; data.len()];
        r.read_exact(&mut buf).unwrap();
        assert!(&buf == data, "aff4 crate: range {range} differs");
        previous_end = range.end;
    }
    // The Turtle, through an RDF parser.
    let file = std::fs::File::open(path).unwrap();
    let mut zip = zip_entry(file, "information.turtle");
    let triples: Vec<_> = oxttl::TurtleParser::new()
        .for_slice(&zip)
        .collect::<Result<_, _>>()
        .unwrap();
    let has = |p: &str, o: &str| {
        triples
            .iter()
            .any(|t| t.predicate.as_str().ends_with(p) && t.object.to_string().contains(o))
    };
    assert!(has("#type", "http://aff4.org/Schema#Map"));
    assert!(has("#category", "http://aff4.org/Schema#memory/physical"));
    assert!(has("#chunkSize", "32768"));
    assert!(has("#chunksInSegment", "1024"));
    assert!(has("#compressionMethod", "snappy"));
    assert!(has("aff4#metadata", "hostname"));
    // The symbol bundle: a member of its own, which the Turtle names.
    assert!(has("aff4#symbols", "/pmem-symbols.tar>"));
    let file = std::fs::File::open(path).unwrap();
    assert!(zip_entry(file, "pmem-symbols.tar") == plan.symbols.clone().unwrap());
    // The Standard's (and pyaff4's) layout: an aff4:Image subject whose
    // aff4:dataStream is the Map; the Map itself is no aff4:Image (readers
    // delegate an Image to its dataStream).
    let typed = |class: &str| -> Vec<String> {
        triples
            .iter()
            .filter(|t| t.predicate.as_str().ends_with("#type") && t.object.to_string() == class)
            .map(|t| t.subject.to_string())
            .collect()
    };
    let (images, maps) = (
        typed("<http://aff4.org/Schema#Image>"),
        typed("<http://aff4.org/Schema#Map>"),
    );
    assert_eq!((images.len(), maps.len()), (1, 1), "{images:?} {maps:?}");
    assert_ne!(images, maps);
    assert!(triples.iter().any(|t| t.subject.to_string() == images[0]
        && t.predicate.as_str().ends_with("#dataStream")
        && t.object.to_string() == maps[0]));
    zip.clear();
}

/// A member of a ZIP file, found by its local header name (test helper: the
/// container is small).
fn zip_entry(mut file: std::fs::File, name: &str) -> Vec<u8> {
    use std::io::Read;
    let mut all = Vec::new();
    file.read_to_end(&mut all).unwrap();
    let mut at = 0;
    while at + 30 <= all.len() && all[at..at + 4] == [0x50, 0x4b, 3, 4] {
        let n = u16::from_le_bytes([all[at + 26], all[at + 27]]) as usize;
        let x = u16::from_le_bytes([all[at + 28], all[at + 29]]) as usize;
        let member = &all[at + 30..at + 30 + n];
        let data = at + 30 + n + x;
        // Stored with a data descriptor: find it by its signature.
        let end = (data..all.len() - 3)
            .find(|&i| all[i..i + 4] == [0x50, 0x4b, 7, 8])
            .unwrap();
        if member == name.as_bytes() {
            return all[data..end].to_vec();
        }
        at = end + 24;
    }
    panic!("no member {name}");
}

fn round_trip(mem: &Memory, chunk: usize) {
    let dir = tempfile::tempdir().unwrap();
    let plan = mem.plan();
    for format in Format::ALL {
        let path = dir.path().join(format.name());
        if format == Format::Avml {
            // Tested in avml.rs: it leaves all-zero blocks out (its map is
            // not the plan's) and refuses incompressible memory.
            continue;
        }
        if format == Format::Dmp && !mem.page_aligned() {
            let sink = HashingSink::stream(Box::new(std::io::sink()));
            let err = writer(format, Box::new(sink)).begin(&plan).unwrap_err();
            assert!(matches!(err, WriteError::Plan(_)), "{err}");
            continue;
        }
        let summary = write_file(format, &path, &plan, mem, chunk);
        assert_eq!(summary.bytes, std::fs::metadata(&path).unwrap().len());
        assert_eq!(detect(&path).unwrap(), format);
        let mut reader = open(format, &path, &plan.ranges);
        assert_eq!(reader.format(), format);
        check_read_back(reader.as_mut(), mem);

        // A stream sink writes zeros where a file sink leaves holes: the
        // bytes must be the same.
        let streamed = dir.path().join(format!("{}.stream", format.name()));
        write_stream(format, &streamed, &plan, mem, chunk);
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            bytes == std::fs::read(&streamed).unwrap(),
            "{format}: file and stream differ"
        );

        // The formats with room carry the symbol bundle (compared below);
        // the others leave it out.
        assert_eq!(
            reader.metadata().symbols.is_some(),
            format.carries_symbols(),
            "{format}"
        );
        match format {
            Format::Elf => {
                check_elf_structure(&bytes, &plan);
                assert_eq!(reader.metadata().arch, Some(Arch::X86_64));
                assert_eq!(reader.metadata().vmcoreinfo, plan.vmcoreinfo);
                assert_eq!(reader.metadata().metadata_json, plan.metadata_json);
                assert_eq!(reader.metadata().symbols, plan.symbols);
                assert_eq!(reader.metadata().direct_map_offset, plan.direct_map_offset);
            }
            Format::Raw => {
                assert_eq!(
                    bytes.len() as u64,
                    plan.ranges.end(),
                    "raw ends at the last range"
                );
                for (range, data) in &mem.ranges {
                    assert_eq!(&bytes[range.start as usize..range.end as usize], &data[..]);
                }
                let mut whole = open_image(&path, None).unwrap();
                assert_eq!(
                    whole.memory_map().ranges(),
                    &[Range::new(0, plan.ranges.end()).unwrap()]
                );
                let mut all = vec![0xa5; bytes.len()];
                whole.read_at(0, &mut all).unwrap();
                assert!(all == bytes);
                assert_eq!(reader.metadata().arch, None);
            }
            Format::Dmp => {
                assert_eq!(reader.metadata().arch, Some(Arch::X86_64));
                assert_eq!(reader.metadata().windows, plan.windows);
            }
            Format::Aff4 => {
                check_aff4_independently(&path, &plan, mem);
                assert_eq!(reader.metadata().arch, Some(Arch::X86_64));
                assert_eq!(reader.metadata().vmcoreinfo, plan.vmcoreinfo);
                assert_eq!(reader.metadata().metadata_json, plan.metadata_json);
                assert_eq!(reader.metadata().symbols, plan.symbols);
                assert_eq!(reader.metadata().direct_map_offset, plan.direct_map_offset);
            }
            Format::Macho => {
                check_macho_structure(&bytes, &plan, mem);
                assert_eq!(reader.metadata().arch, Some(Arch::X86_64));
                assert_eq!(reader.metadata().vmcoreinfo, plan.vmcoreinfo);
                assert_eq!(reader.metadata().metadata_json, plan.metadata_json);
                assert_eq!(reader.metadata().symbols, plan.symbols);
            }
            _ => {
                assert_eq!(reader.metadata().arch, None);
                assert_eq!(reader.metadata().metadata_json, None);
            }
        }
    }
}

/// Deterministic pseudo-random bytes with zeroed 512-byte blocks.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut v: Vec<u8> = (0..len).map(|_| next() as u8).collect();
    for block in v.chunks_mut(512) {
        if next() % 3 == 0 {
            block.fill(0);
        }
    }
    v
}

fn memory(spans: &[(u64, u64)], seed: u64) -> Memory {
    let mut ranges = Vec::new();
    let mut at = 0;
    for (i, &(gap, len)) in spans.iter().enumerate() {
        let start = at + gap;
        let range = Range::new(start, start + len).unwrap();
        ranges.push((range, content(seed.wrapping_add(i as u64), len as usize)));
        at = range.end;
    }
    Memory { ranges }
}

#[test]
fn multiple_ranges_with_zero_chunks() {
    let mut mem = memory(
        &[(0x1000, 0x9f000 - 0x1000), (0x61000, 0x3000), (0, 0x1000)],
        7,
    );
    // A range that is all zeros, one that starts with a zero page.
    mem.ranges[2].1.fill(0);
    mem.ranges[1].1[..0x1000].fill(0);
    round_trip(&mem, 0x4000);
}

#[test]
fn unaligned_single_bytes() {
    round_trip(&memory(&[(3, 1), (1, 5), (4095, 4097)], 1), 3);
}

#[test]
fn elf_without_notes_or_direct_map() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("img.elf");
    let mem = memory(&[(0x1000, 0x2000)], 3);
    let plan = Plan::new(mem.map(), Arch::Aarch64);
    write_file(Format::Elf, &path, &plan, &mem, 0x1000);
    let bytes = std::fs::read(&path).unwrap();
    let elf = ElfFile64::<LE>::parse(&*bytes).unwrap();
    let phdrs = elf.elf_program_headers();
    assert_eq!(phdrs.len(), 1);
    assert_eq!(phdrs[0].p_type(LE), E::PT_LOAD);
    assert_eq!(phdrs[0].p_vaddr(LE), 0);
    let mut reader = open_image(&path, None).unwrap();
    assert_eq!(reader.metadata().arch, Some(Arch::Aarch64));
    assert_eq!(
        (
            &reader.metadata().vmcoreinfo,
            &reader.metadata().metadata_json
        ),
        (&None, &None)
    );
    assert_eq!(reader.metadata().direct_map_offset, None);
    assert_eq!(reader.metadata().symbols, None);
    check_read_back(reader.as_mut(), &mem);
}

#[test]
fn high_addresses_stay_sparse_in_lime_and_elf() {
    let dir = tempfile::tempdir().unwrap();
    let mut mem = memory(&[(0, 0x1000)], 5);
    mem.ranges.push((
        Range::new(0x8_0000_0000, 0x8_0000_2000).unwrap(),
        content(9, 0x2000),
    ));
    for format in [Format::Lime, Format::Elf, Format::Macho] {
        let path = dir.path().join(format.name());
        write_file(format, &path, &mem.plan(), &mem, 0x1000);
        assert!(std::fs::metadata(&path).unwrap().len() < 0x10000);
        check_read_back(open_image(&path, None).unwrap().as_mut(), &mem);
    }
}

fn arb_memory(aligned: bool) -> impl Strategy<Value = Memory> {
    (
        prop::collection::vec((0u64..3 * PAGE, 1u64..3 * PAGE), 1..6),
        any::<u64>(),
    )
        .prop_map(move |(spans, seed)| {
            let spans: Vec<(u64, u64)> = if aligned {
                spans
                    .iter()
                    .map(|&(gap, len)| (gap / PAGE * PAGE, (len / PAGE).max(1) * PAGE))
                    .collect()
            } else {
                spans
            };
            memory(&spans, seed)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn aligned_ranges_round_trip(mem in arb_memory(true), chunk in 1usize..3 * PAGE as usize) {
        round_trip(&mem, chunk);
    }

    #[test]
    fn unaligned_ranges_round_trip(mem in arb_memory(false), chunk in 1usize..3 * PAGE as usize) {
        round_trip(&mem, chunk);
    }

    /// Any corruption of a valid image gives an error or a reader, never a
    /// panic, a hang or a huge allocation; reads then fail or succeed.
    #[test]
    fn corrupted_images_never_panic(
        mem in arb_memory(false),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        for format in [Format::Lime, Format::Elf, Format::Macho, Format::Aff4] {
            let path = dir.path().join(format.name());
            write_file(format, &path, &mem.plan(), &mem, 4096);
            let mut bytes = std::fs::read(&path).unwrap();
            // Edits aim at the headers, where they matter most.
            let head = bytes.len().min(512);
            for (at, value) in &edits {
                bytes[at.index(head)] = *value;
            }
            if truncate {
                bytes.truncate(cut.index(bytes.len()));
            }
            std::fs::write(&path, &bytes).unwrap();
            if let Ok(mut reader) = open_image(&path, None) {
                let ranges = reader.memory_map().ranges().to_vec();
                for range in ranges {
                    let mut buf = vec![0; range.len().min(1 << 16) as usize];
                    let _ = reader.read_at(range.start, &mut buf);
                }
            }
        }
    }
}

fn temp_file(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("img");
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

#[test]
fn detection() {
    let (_d, path) = temp_file(b"");
    assert!(matches!(detect(&path), Err(FormatError::Empty { .. })));
    assert!(matches!(
        open_image(&path, None),
        Err(FormatError::Empty { .. })
    ));
    let (_d, path) = temp_file(b"EMi");
    assert_eq!(detect(&path).unwrap(), Format::Raw);
    let (_d, path) = temp_file(&[0u8; 100]);
    assert_eq!(detect(&path).unwrap(), Format::Raw);
    let mut avml = b"AVML".to_vec();
    avml.extend_from_slice(&2u32.to_le_bytes());
    avml.resize(64, 0);
    let (_d, path) = temp_file(&avml);
    assert_eq!(detect(&path).unwrap(), Format::Avml);
    // A header without its snappy stream.
    let err = open_image(&path, None).err().expect("no snappy stream");
    assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
    // The Mach-O magic without MH_CORE is raw memory.
    let mut macho = vec![0xcf, 0xfa, 0xed, 0xfe, 7, 0, 0, 1, 3, 0, 0, 0, 2, 0, 0, 0];
    macho.resize(64, 0);
    let (_d, path) = temp_file(&macho);
    assert_eq!(detect(&path).unwrap(), Format::Raw);
    macho[12] = 4;
    let (_d, path) = temp_file(&macho);
    assert_eq!(detect(&path).unwrap(), Format::Macho);
    let missing = path.with_file_name("missing");
    assert!(matches!(detect(&missing), Err(FormatError::Io { .. })));
}

#[test]
fn format_names() {
    for format in Format::ALL {
        assert_eq!(format.name().parse::<Format>().unwrap(), format);
        assert_eq!(format.to_string(), format.name());
    }
    assert_eq!("ELF".parse::<Format>().unwrap(), Format::Elf);
    assert!("aff5".parse::<Format>().is_err());
}

#[test]
fn symbol_bundles_over_the_limit_are_refused_where_carried() {
    let mem = memory(&[(0x1000, 0x2000)], 9);
    let mut plan = mem.plan();
    // calloc'd: the pages are never touched.
    plan.symbols = Some(vec![0; pmem_formats::MAX_SYMBOLS as usize + 1]);
    for format in Format::ALL {
        let sink = HashingSink::stream(Box::new(std::io::sink()));
        let begun = writer(format, Box::new(sink)).begin(&plan);
        if format.carries_symbols() {
            let err = begun.unwrap_err();
            assert!(err.to_string().contains("symbol bundle"), "{format}: {err}");
        } else {
            // Nothing of it is written, so nothing to refuse.
            begun.unwrap();
        }
    }
}

#[test]
fn writers_enforce_the_chunk_contract() {
    let mem = memory(&[(0x1000, 0x2000), (0x1000, 0x1000)], 2);
    let plan = mem.plan();
    for format in Format::ALL {
        let sink = || Box::new(HashingSink::stream(Box::new(std::io::sink())));
        // Writing before begin, out of order, past a range.
        let mut w = writer(format, sink());
        assert!(w.write_chunk(0x1000, Chunk::Zero(0x1000)).is_err());
        w.begin(&plan).unwrap();
        assert!(matches!(
            w.write_chunk(0x2000, Chunk::Zero(0x1000)),
            Err(WriteError::OutOfOrder { .. })
        ));
        assert!(w.write_chunk(0x1000, Chunk::Zero(0x2001)).is_err());
        w.write_chunk(0x1000, Chunk::Data(&[1; 0x2000])).unwrap();
        // Finishing with a range missing is an error, not a short image.
        assert!(matches!(w.finish(), Err(WriteError::Plan(_))));
        // An empty plan is refused.
        let mut w = writer(format, sink());
        let empty = Plan::new(MemoryMap::default(), Arch::X86_64);
        assert!(matches!(w.begin(&empty), Err(WriteError::Plan(_))));
    }
}

/// AFF4 keeps long runs of zero pages out of the stream (mapped to
/// aff4:Zero) and maps unreadable pages to aff4:UnreadableData; both read as
/// zeros, pmem's reader lists the unreadable ones, and the `aff4` crate reads
/// the same bytes.
#[test]
fn aff4_maps_zero_runs_and_unreadable_pages() {
    use pmem_formats::aff4::{UNREADABLE, ZERO, ZERO_RUN_MIN};
    const _: () = assert!(2 * (1 << 20) >= ZERO_RUN_MIN, "the 2 MiB run below is long");
    use std::io::{Read, Seek, SeekFrom};
    const MIB: u64 = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image.aff4");
    // Two adjacent ranges (kept apart by pmem:ranges), then one after a hole.
    let map = MemoryMap::new(vec![
        Range::new(0x10_0000, 0x50_0000).unwrap(),
        Range::new(0x50_0000, 0x60_0000).unwrap(),
        Range::new(0x100_0000, 0x100_8000).unwrap(),
    ])
    .unwrap();
    let plan = Plan::new(map.clone(), Arch::X86_64);
    let data: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8 + 1).collect();
    let sink = HashingSink::file(create_image_file(&path, false).unwrap());
    let mut w = writer(Format::Aff4, Box::new(sink));
    w.begin(&plan).unwrap();
    // Range 1: 1 MiB data, 2 MiB of zero pages in two pieces (one run),
    // 8 KiB unreadable, a short zero run (stored), data to the end.
    w.write_chunk(0x10_0000, Chunk::Data(&data)).unwrap();
    w.write_chunk(0x20_0000, Chunk::Zero(MIB)).unwrap();
    w.write_chunk(0x30_0000, Chunk::Zero(MIB)).unwrap();
    w.write_unreadable(0x40_0000, 0x2000).unwrap();
    w.write_chunk(0x40_2000, Chunk::Zero(0x1000)).unwrap();
    w.write_chunk(0x40_3000, Chunk::Data(&data[..0xf_d000]))
        .unwrap();
    // Range 2: zero pages only (1 MiB: mapped to aff4:Zero).
    w.write_chunk(0x50_0000, Chunk::Zero(MIB)).unwrap();
    // Range 3: unreadable, then data.
    w.write_unreadable(0x100_0000, 0x1000).unwrap();
    w.write_chunk(0x100_1000, Chunk::Data(&data[..0x7000]))
        .unwrap();
    w.finish().unwrap();

    let mut expected = vec![0u8; 0x100_8000 - 0x10_0000];
    let at = |a: u64| (a - 0x10_0000) as usize;
    expected[at(0x10_0000)..at(0x20_0000)].copy_from_slice(&data);
    expected[at(0x40_3000)..at(0x50_0000)].copy_from_slice(&data[..0xf_d000]);
    expected[at(0x100_1000)..at(0x100_8000)].copy_from_slice(&data[..0x7000]);

    let mut reader = open_image(&path, None).unwrap();
    assert_eq!(reader.memory_map(), &map, "adjacent ranges stay apart");
    assert_eq!(
        reader.metadata().unreadable,
        vec![
            Range::new(0x40_0000, 0x40_2000).unwrap(),
            Range::new(0x100_0000, 0x100_1000).unwrap()
        ]
    );
    for r in map.ranges() {
        let mut buf = vec![0xa5; r.len() as usize];
        reader.read_at(r.start, &mut buf).unwrap();
        assert!(buf[..] == expected[at(r.start)..at(r.end)], "range {r}");
    }

    // The idx names the stream and both symbolic streams; the stream holds
    // only what was read and not in a long zero run.
    let bytes = std::fs::read(&path).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains(&format!("{ZERO}\n")) && text.contains(&format!("{UNREADABLE}\n")));
    let mut independent = aff4::Aff4Reader::open(&path).unwrap();
    let stored = MIB + 0x1000 + 0xf_d000 + 0x7000;
    assert_eq!(independent.image_stream_size(), stored);
    let mut all = vec![0xa5; expected.len()];
    independent.seek(SeekFrom::Start(0x10_0000)).unwrap();
    independent.read_exact(&mut all).unwrap();
    // The aff4 crate reads symbolic streams its own way; where it reads
    // stream data it must agree with us.
    for (start, end) in [
        (0x10_0000, 0x20_0000),
        (0x40_3000, 0x50_0000),
        (0x100_1000, 0x100_8000),
    ] {
        assert!(
            all[at(start)..at(end)] == expected[at(start)..at(end)],
            "aff4 crate at {start:#x}"
        );
    }
}

/// [`Memory`] as the pipeline's source.
struct Source<'m> {
    map: MemoryMap,
    mem: &'m Memory,
}

impl pmem_core::PhysicalMemory for Source<'_> {
    fn memory_map(&self) -> &MemoryMap {
        &self.map
    }

    fn read_at(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), pmem_core::ReadError> {
        let (range, data) = self
            .mem
            .ranges
            .iter()
            .find(|(r, _)| r.start <= addr && addr < r.end)
            .expect("the pipeline reads inside the map");
        let at = (addr - range.start) as usize;
        buf.copy_from_slice(&data[at..at + buf.len()]);
        Ok(())
    }
}

/// The copy spends the plan's bundle: the image carries it, the plan no
/// longer holds it (it is megabytes, not to be held through the copy).
#[test]
fn the_copy_places_the_symbol_bundle_then_lets_it_go() {
    let mem = memory(&[(0x1000, 0x3000), (0x10_0000, 0x10_2000)], 7);
    for format in [Format::Elf, Format::Macho, Format::Aff4] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        let sink = HashingSink::file(create_image_file(&path, false).unwrap());
        let mut plan = mem.plan();
        let mut source = Source {
            map: mem.map(),
            mem: &mem,
        };
        pmem_core::copy_memory(
            &mut source,
            writer(format, Box::new(sink)),
            &mut plan,
            &pmem_core::CopyOptions::default(),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(plan.symbols, None, "{format:?}");
        let mut reader = open(format, &path, &mem.map());
        assert_eq!(
            reader.metadata().symbols,
            Some(symbol_bundle()),
            "{format:?}"
        );
        check_read_back(reader.as_mut(), &mem);
    }
}
