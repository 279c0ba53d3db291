//! Parser for the text of Linux's /proc/iomem.
//!
//! Each line is `START-LAST : NAME` with hexadecimal addresses of any width
//! and an inclusive LAST; children are indented below their parent (two
//! spaces per level in the kernel's output). Platform-neutral, so it also
//! reads an iomem file copied off a machine.

use pmem_core::{MemoryMap, Range};

/// Every entry of an iomem listing, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Iomem {
    /// The entries, parents before their children.
    pub entries: Vec<IomemEntry>,
}

/// One line of /proc/iomem: a resource and the physical addresses it
/// takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IomemEntry {
    /// The physical addresses (bytes; iomem's inclusive end made
    /// exclusive).
    pub range: Range,
    /// As printed, e.g. "System RAM", "Kernel code", "PCI Bus 0000:00".
    pub name: String,
    /// 0 for top-level entries, 1 for their children, and so on.
    pub depth: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
/// A line of an iomem listing that does not parse.
pub enum IomemError {
    /// The line, what it says and what is wrong with it.
    #[error("line {line}: {reason}: {text:?}")]
    Line {
        /// 1-based.
        line: usize,
        /// The line as read.
        text: String,
        /// What is wrong, e.g. "no ' : ' separator".
        reason: &'static str,
    },
}

/// Largest memory map read: /proc/iomem of a large server is tens of KiB;
/// a file past this (`--iomem /dev/zero`) is refused instead of filling RAM.
pub const MAX_FILE_BYTES: u64 = 4 << 20;

/// Reads an iomem file of at most [`MAX_FILE_BYTES`]. /proc files report
/// size 0, so the limit is applied to what is read, not to the metadata.
pub fn read_file(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("longer than {} MiB: not a memory map", MAX_FILE_BYTES >> 20),
        ));
    }
    Ok(text)
}

/// Parses iomem text. Blank lines are skipped; CRLF line ends and any
/// indentation width are accepted; any other malformed line is an error
/// naming its line number, because a map read past garbage can't be trusted.
pub fn parse(text: &str) -> Result<Iomem, IomemError> {
    let mut entries = Vec::new();
    // Indentation widths of the entries enclosing the current line. Depth is
    // derived from this stack instead of dividing by two, so that odd or
    // inconsistent indentation still nests the way it reads.
    let mut open: Vec<usize> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim_end();
        if line.is_empty() {
            continue;
        }
        let error = |reason| IomemError::Line {
            line: index + 1,
            text: raw.to_string(),
            reason,
        };
        let body = line.trim_start();
        let indent = line.len() - body.len();
        // The name may itself contain ':' ("PCI Bus 0000:00"), the range never does.
        let (range, name) = body
            .split_once(':')
            .ok_or_else(|| error("expected \"START-END : NAME\""))?;
        let (start, last) = range
            .split_once('-')
            .ok_or_else(|| error("expected a range \"START-END\""))?;
        let start = parse_hex(start).ok_or_else(|| error("bad start address"))?;
        let last = parse_hex(last).ok_or_else(|| error("bad end address"))?;
        let range = match last.checked_add(1) {
            Some(end) => Range::new(start, end),
            // A half-open range can't end past u64::MAX; such an entry
            // (a bus window up to the top) loses its very last byte.
            None => Range::new(start, u64::MAX),
        }
        .ok_or_else(|| error("end address before start address"))?;
        while open.last().is_some_and(|&width| width >= indent) {
            open.pop();
        }
        let depth = open.len();
        open.push(indent);
        entries.push(IomemEntry {
            range,
            name: name.trim().to_string(),
            depth,
        });
    }
    Ok(Iomem { entries })
}

fn parse_hex(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

/// Whether an entry's name marks RAM: "System RAM", and the hot-plugged
/// variants the kernel labels "System RAM (kmem)" or "System RAM (virtio_mem)".
fn is_ram_name(name: &str) -> bool {
    name == "System RAM" || name.starts_with("System RAM (")
}

impl Iomem {
    /// The RAM ranges, sorted, exactly as listed (ends not page-clipped).
    ///
    /// On real machines "System RAM" entries are top-level. RAM added by
    /// drivers (dax kmem, virtio-mem) appears nested under its device
    /// ("System RAM (kmem)" at depth 3), and is RAM the kernel maps like any
    /// other, so the outermost RAM entries at any depth count; RAM nested in
    /// RAM is already covered by its parent. Separate entries stay separate
    /// (one range per iomem line); overlapping ones, which only a corrupt
    /// listing has, are merged.
    pub fn system_ram(&self) -> MemoryMap {
        let mut ranges = Vec::new();
        // Depth of the RAM entry we are currently inside, if any.
        let mut inside_ram: Option<usize> = None;
        for entry in &self.entries {
            if inside_ram.is_some_and(|depth| entry.depth <= depth) {
                inside_ram = None;
            }
            if inside_ram.is_none() && is_ram_name(&entry.name) {
                ranges.push(entry.range);
                inside_ram = Some(entry.depth);
            }
        }
        ranges.sort();
        MemoryMap::new(ranges.clone()).unwrap_or_else(|_| MemoryMap::normalized(ranges))
    }

    /// Where the kernel image lies: the span from the first to the last of
    /// its entries ("Kernel code", "Kernel rodata", "Kernel data", "Kernel
    /// bss"; x86 lists no rodata, which lies between code and data) inside
    /// each System RAM range that holds some. Empty when iomem lists none.
    pub fn kernel_image(&self) -> Vec<Range> {
        const PARTS: [&str; 4] = ["Kernel code", "Kernel rodata", "Kernel data", "Kernel bss"];
        let ram = self.system_ram();
        let mut spans: Vec<Range> = Vec::new();
        for ram_range in ram.ranges() {
            let inside = self
                .entries
                .iter()
                .filter(|e| PARTS.contains(&e.name.as_str()))
                .filter_map(|e| e.range.intersect(ram_range));
            let span = inside.fold(None::<Range>, |span, r| match span {
                None => Some(r),
                Some(s) => Range::new(s.start.min(r.start), s.end.max(r.end)),
            });
            spans.extend(span);
        }
        spans
    }

    /// All entries with exactly this name, in file order.
    pub fn find(&self, name: &str) -> Vec<&IomemEntry> {
        self.entries.iter().filter(|e| e.name == name).collect()
    }

    /// True when there are entries and all of them read 00000000-00000000:
    /// what the kernel shows readers without CAP_SYS_ADMIN.
    pub fn is_all_zero(&self) -> bool {
        !self.entries.is_empty()
            && self
                .entries
                .iter()
                .all(|e| e.range.start == 0 && e.range.end == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_file_refuses_an_endless_file() {
        let err = read_file(std::path::Path::new("/dev/zero")).unwrap_err();
        assert!(err.to_string().contains("MiB"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("iomem");
        std::fs::write(&path, "00001000-0009ffff : System RAM\n").unwrap();
        assert!(parse(&read_file(&path).unwrap()).is_ok());
    }

    /// /proc/iomem of a QEMU q35 x86_64 guest with 2 GiB, kernel 6.x.
    pub(crate) const QEMU_X86_64: &str = "\
00000000-00000fff : Reserved
00001000-0009fbff : System RAM
0009fc00-0009ffff : Reserved
000a0000-000bffff : PCI Bus 0000:00
000c0000-000c99ff : Video ROM
000ca000-000cadff : Adapter ROM
000cb000-000cb5ff : Adapter ROM
000f0000-000fffff : Reserved
  000f0000-000fffff : System ROM
00100000-7ffdcfff : System RAM
  2b000000-2c002406 : Kernel code
  2c200000-2cc4afff : Kernel rodata
  2ce00000-2d11f87f : Kernel data
  2d63e000-2d9fffff : Kernel bss
7ffdd000-7fffffff : Reserved
80000000-afffffff : PCI Bus 0000:00
b0000000-bfffffff : PCI MMCONFIG 0000 [bus 00-ff]
  b0000000-bfffffff : Reserved
c0000000-febfffff : PCI Bus 0000:00
  fd000000-fdffffff : 0000:00:01.0
    fd000000-fdffffff : bochs-drm
  feb80000-febbffff : 0000:00:02.0
  febd0000-febd0fff : 0000:00:01.0
    febd0000-febd0fff : bochs-drm
fec00000-fec003ff : IOAPIC 0
fed00000-fed003ff : HPET 0
  fed00000-fed003ff : PNP0103:00
fed1c000-fed1ffff : Reserved
  fed1f410-fed1f414 : iTCO_wdt.0.auto
fee00000-fee00fff : Local APIC
feffc000-feffffff : Reserved
fffc0000-ffffffff : Reserved
100000000-17fffffff : System RAM
380000000000-3807ffffffff : PCI Bus 0000:00
";

    /// /proc/iomem of a QEMU virt arm64 guest with 1 GiB, kernel 6.x.
    const QEMU_ARM64: &str = "\
00000000-03ffffff : 0.flash flash@0
04000000-07ffffff : 0.flash flash@0
08000000-0800ffff : GICD
09000000-09000fff : pl011@9000000
  09000000-09000fff : 9000000.pl011 pl011@9000000
09010000-09010fff : pl031@9010000
  09010000-09010fff : rtc-pl031
0a003e00-0a003fff : a003e00.virtio_mmio virtio_mmio@a003e00
10000000-3efeffff : pcie@10000000
3f000000-3fffffff : PCI ECAM
40000000-7fffffff : System RAM
  40210000-4165ffff : Kernel code
  41660000-41c5ffff : reserved
  41c60000-4212ffff : Kernel data
  48000000-483fffff : reserved
  7c5a0000-7c5fffff : reserved
  7c600000-7fffffff : reserved
8000000000-ffffffffff : pcie@10000000
";

    fn r(start: u64, end: u64) -> Range {
        Range::new(start, end).unwrap()
    }

    #[test]
    fn qemu_x86_64() {
        let iomem = parse(QEMU_X86_64).unwrap();
        assert_eq!(iomem.entries.len(), 34);
        assert_eq!(
            iomem.system_ram().ranges(),
            &[
                r(0x1000, 0x9fc00),
                r(0x100000, 0x7ffdd000),
                r(0x1_0000_0000, 0x1_8000_0000)
            ]
        );
        let code = iomem.find("Kernel code");
        assert_eq!(code.len(), 1);
        assert_eq!(code[0].range, r(0x2b000000, 0x2c002407));
        assert_eq!(code[0].depth, 1);
        assert_eq!(iomem.find("Kernel rodata")[0].range.start, 0x2c200000);
        assert_eq!(iomem.kernel_image(), [r(0x2b000000, 0x2da00000)]);
        let drm = iomem.find("bochs-drm");
        assert_eq!(drm.iter().map(|e| e.depth).collect::<Vec<_>>(), [2, 2]);
        assert_eq!(iomem.find("PCI Bus 0000:00").len(), 4, "names keep colons");
        assert_eq!(
            iomem.find("PCI MMCONFIG 0000 [bus 00-ff]")[0].range,
            r(0xb0000000, 0xc0000000)
        );
        assert!(!iomem.is_all_zero());
    }

    #[test]
    fn qemu_arm64() {
        let iomem = parse(QEMU_ARM64).unwrap();
        assert_eq!(iomem.system_ram().ranges(), &[r(0x40000000, 0x80000000)]);
        assert_eq!(iomem.find("reserved").len(), 4);
        assert_eq!(iomem.find("Kernel data")[0].depth, 1);
        let pcie = iomem.find("pcie@10000000");
        assert_eq!(pcie[1].range, r(0x80_0000_0000, 0x100_0000_0000));
    }

    #[test]
    fn odd_spacing_crlf_and_widths() {
        let text = "0000000000000000-0000000000000fff : Reserved\r\n\
                    \r\n\
                    1000-9fbff:System RAM\r\n\
                    \t 0x2000 - 0x2fff :   Kernel code  \r\n\
                    \x20  3000-3fff : deeper\r\n\
                    \x20 4000-4fff : sibling of code\r\n\
                    00100000-7fffffff  :  System RAM\r\n";
        let iomem = parse(text).unwrap();
        let summary: Vec<(&str, usize)> = iomem
            .entries
            .iter()
            .map(|e| (e.name.as_str(), e.depth))
            .collect();
        assert_eq!(
            summary,
            [
                ("Reserved", 0),
                ("System RAM", 0),
                ("Kernel code", 1),
                ("deeper", 2),
                ("sibling of code", 1),
                ("System RAM", 0)
            ]
        );
        assert_eq!(
            iomem.system_ram().ranges(),
            &[r(0x1000, 0x9fc00), r(0x100000, 0x80000000)]
        );
    }

    #[test]
    fn nested_ram() {
        // Driver-managed RAM nested under its device counts; RAM nested in
        // RAM does not count twice.
        let text = "\
00100000-7fffffff : System RAM
  00200000-002fffff : System RAM
180000000-1bfffffff : Persistent Memory
  180000000-1bfffffff : namespace0.0
    180000000-1bfffffff : dax0.0
      180000000-1bfffffff : System RAM (kmem)
1c0000000-1c0000fff : System RAMBO
";
        let iomem = parse(text).unwrap();
        assert_eq!(
            iomem.system_ram().ranges(),
            &[r(0x100000, 0x80000000), r(0x1_8000_0000, 0x1_c000_0000)]
        );
    }

    #[test]
    fn adjacent_ram_stays_separate() {
        let iomem = parse("1000-1fff : System RAM\n2000-2fff : System RAM\n").unwrap();
        assert_eq!(iomem.system_ram().len(), 2);
    }

    #[test]
    fn all_zero() {
        let text = "00000000-00000000 : Reserved\n00000000-00000000 : System RAM\n  00000000-00000000 : Kernel code\n";
        let iomem = parse(text).unwrap();
        assert!(iomem.is_all_zero());
        assert!(!parse("").unwrap().is_all_zero());
        assert!(!parse("00000000-00000fff : Reserved\n")
            .unwrap()
            .is_all_zero());
    }

    #[test]
    fn top_of_address_space() {
        let iomem = parse("ffffffff00000000-ffffffffffffffff : PCI Bus\n").unwrap();
        assert_eq!(iomem.entries[0].range.end, u64::MAX);
    }

    #[test]
    fn garbage_names_the_line() {
        let cases = [
            ("1000-1fff : ok\nhello world\n", 2),
            ("1000-1fff : ok\n\n1000 : no dash\n", 3),
            ("zz00-1fff : bad hex\n", 1),
            ("2000-1fff : reversed\n", 1),
            ("1000-11112222333344445 : too wide\n", 1),
            ("-1fff : empty start\n", 1),
        ];
        for (text, line) in cases {
            match parse(text) {
                Err(IomemError::Line { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?} parsed: {other:?}"),
            }
        }
        let message = parse("hello\n").unwrap_err().to_string();
        assert!(message.contains("line 1"), "{message}");
    }
}
