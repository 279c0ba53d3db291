//! `image_size`: the length a writer declares before the first byte (for
//! one HTTP PUT with a Content-Length) equals what it then writes, for every
//! format whose length depends only on the plan; compressed formats
//! declare none.

use pmem_core::sink::HashingSink;
use pmem_core::{Arch, Chunk, MemoryMap, Plan, Range};
use pmem_formats::{image_size, writer, Format};
use proptest::prelude::*;
use std::io::Write;
use std::sync::{Arc, Mutex};

/// A `Write` that counts what reaches it (the stream sink writes zeros).
#[derive(Clone, Default)]
struct Counter(Arc<Mutex<u64>>);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        *self.0.lock().unwrap() += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn plan(ranges: &[(u64, u64)]) -> Plan {
    let map = MemoryMap::new(
        ranges
            .iter()
            .map(|&(s, e)| Range::new(s, e).unwrap())
            .collect(),
    )
    .unwrap();
    let mut plan = Plan::new(map, Arch::X86_64);
    plan.vmcoreinfo = Some(b"OSRELEASE=6.1.0\n".to_vec());
    plan.metadata_json = Some(r#"{"tool":"pmem"}"#.into());
    // A symbol bundle of a length no note alignment divides.
    plan.symbols = Some(vec![0x5a; 70_001]);
    plan.windows = Some(pmem_core::WindowsMetadata {
        cr3: 0x1aa000,
        processors: 1,
        ..Default::default()
    });
    plan
}

/// Writes `plan` with pseudo-random (mostly non-zero) content in 3000-byte
/// pieces and returns the bytes that reached the stream.
fn written(format: Format, plan: &Plan, seed: u8) -> u64 {
    let counter = Counter::default();
    let sink = HashingSink::stream(Box::new(counter.clone()));
    let mut w = writer(format, Box::new(sink));
    w.begin(plan).unwrap();
    let mut data = vec![0u8; 3000];
    for range in plan.ranges.ranges() {
        let mut addr = range.start;
        while addr < range.end {
            let n = (range.end - addr).min(3000) as usize;
            for (i, b) in data[..n].iter_mut().enumerate() {
                *b = (addr as usize + i) as u8 ^ seed;
            }
            if seed == 0 && addr % 2 == 0 {
                w.write_chunk(addr, Chunk::Zero(n as u64)).unwrap();
            } else {
                w.write_chunk(addr, Chunk::Data(&data[..n])).unwrap();
            }
            addr += n as u64;
        }
    }
    let summary = w.finish().unwrap();
    assert_eq!(summary.bytes, *counter.0.lock().unwrap());
    summary.bytes
}

/// Sorted, disjoint ranges: (gap before, length) pairs in pages or bytes.
fn ranges(aligned: bool) -> impl Strategy<Value = Vec<(u64, u64)>> {
    prop::collection::vec((0u64..40, 1u64..40), 1..8).prop_map(move |pairs| {
        let unit = if aligned { 4096 } else { 777 };
        let mut at = 0x1000;
        pairs
            .into_iter()
            .map(|(gap, len)| {
                let start = at + gap * unit;
                at = start + len * unit;
                (start, at)
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn declared_size_is_what_the_writer_writes(r in ranges(false), seed in any::<u8>()) {
        let plan = plan(&r);
        for format in [Format::Lime, Format::Raw, Format::Elf, Format::Macho] {
            let declared = image_size(format, &plan).unwrap();
            prop_assert_eq!(declared, Some(written(format, &plan, seed)), "{}", format);
        }
    }

    #[test]
    fn declared_size_of_crash_dumps(r in ranges(true), seed in any::<u8>()) {
        let plan = plan(&r);
        prop_assert_eq!(
            image_size(Format::Dmp, &plan).unwrap(),
            Some(written(Format::Dmp, &plan, seed))
        );
    }
}

#[test]
fn many_runs_make_a_bitmap_dump_of_the_declared_size() {
    // Above 42 runs a dump switches to the bitmap layout (longer header).
    let r: Vec<(u64, u64)> = (0..60u64)
        .map(|i| (0x10_0000 + i * 0x3000, 0x10_0000 + i * 0x3000 + 0x1000))
        .collect();
    let plan = plan(&r);
    assert_eq!(
        image_size(Format::Dmp, &plan).unwrap(),
        Some(written(Format::Dmp, &plan, 7))
    );
}

#[test]
fn compressed_formats_declare_no_size_and_bad_plans_fail() {
    let plan = plan(&[(0x1000, 0x3000)]);
    assert_eq!(image_size(Format::Avml, &plan).unwrap(), None);
    assert_eq!(image_size(Format::Aff4, &plan).unwrap(), None);
    // A dump of an unaligned range is refused at size time, as at write time.
    assert!(image_size(Format::Dmp, &self::plan(&[(0x1000, 0x1800)])).is_err());
    let mut no_windows = plan.clone();
    no_windows.windows = None;
    assert!(image_size(Format::Dmp, &no_windows).is_err());
    assert_eq!(image_size(Format::Lime, &plan).unwrap(), Some(32 + 0x2000));
    assert_eq!(image_size(Format::Raw, &plan).unwrap(), Some(0x3000));
}
