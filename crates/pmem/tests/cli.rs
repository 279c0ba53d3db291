//! End-to-end tests of the `pmem` binary on synthetic kcore and iomem files:
//! every byte an image holds is checked against the deterministic pattern
//! the synthetic kcore was filled with, using readers written here (not
//! pmem's own) for LiME and raw.

use pmem_core::{Arch, Range};
use pmem_sources::testing::{pattern, KcoreBuilder, Segment, DIRECT_MAP};
use serde_json::Value;
use std::path::{Path, PathBuf};

mod common;
use common::*;

const KERNEL_TEXT: u64 = 0xffff_ffff_8100_0000;

/// A machine with a partial page at the end of its first RAM range, holes
/// between RAM ranges, a kernel-text segment aliasing RAM, and a vmalloc
/// segment that is not RAM. (RAM above 4 GiB is covered by the format tests
/// and the guest suite; here it would make raw images 4 GiB long.)
struct Machine {
    dir: tempfile::TempDir,
    kcore: PathBuf,
    iomem: PathBuf,
}

const IOMEM: &str = "\
00000000-00000fff : Reserved
00001000-0009fbff : System RAM
0009fc00-0009ffff : Reserved
000a0000-000bffff : PCI Bus 0000:00
000f0000-000fffff : System ROM
00100000-008fffff : System RAM
  00200000-002fffff : Kernel code
  00300000-0037ffff : Kernel rodata
00900000-00ffffff : Reserved
fee00000-fee00fff : Local APIC
04000000-041fffff : System RAM
";

/// What the kcore exposes of System RAM: whole pages only.
fn acquired_ranges() -> Vec<Range> {
    vec![
        Range::new(0x1000, 0x9f000).unwrap(),
        Range::new(0x100000, 0x900000).unwrap(),
        Range::new(0x400_0000, 0x420_0000).unwrap(),
    ]
}

fn machine() -> Machine {
    let dir = tempfile::tempdir().unwrap();
    let kcore = dir.path().join("kcore");
    let iomem = dir.path().join("iomem");
    std::fs::write(&iomem, IOMEM).unwrap();
    let mut builder = KcoreBuilder::new(Arch::X86_64)
        .vmcoreinfo(b"OSRELEASE=6.1.0-test\nPAGESIZE=4096\n")
        // Kernel text: a second mapping of the RAM at 0x200000, outside
        // the direct map, with its physical address set.
        .segment(Segment {
            vaddr: KERNEL_TEXT,
            ..Segment::ram(0x200000, 0x100000)
        })
        .segment(Segment::not_ram(0xffff_c900_0000_0000, 0x10_0000_0000));
    // kcore's RAM segments are page-granular: the first ends at 0x9f000.
    for range in acquired_ranges() {
        builder = builder.segment(Segment::ram(range.start, range.len()));
    }
    builder.write(&kcore).unwrap();
    Machine { dir, kcore, iomem }
}

impl Machine {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn acquire(&self, format: &str, output: &Path) -> assert_cmd::assert::Assert {
        self.acquire_with(format, output, &[])
    }

    fn acquire_with(
        &self,
        format: &str,
        output: &Path,
        extra: &[&str],
    ) -> assert_cmd::assert::Assert {
        pmem()
            .args(["acquire", "--quiet", "--format", format])
            .args(extra)
            .arg(format!("--source=kcore:{}", self.kcore.display()))
            .arg("--iomem")
            .arg(&self.iomem)
            .arg(output)
            .assert()
    }
}

/// An independent LiME reader: (start, inclusive end, data) per record.
fn parse_lime(bytes: &[u8]) -> Vec<(u64, u64, &[u8])> {
    let mut records = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let word = |o: usize| u64::from_le_bytes(bytes[at + o..at + o + 8].try_into().unwrap());
        assert_eq!(
            &bytes[at..at + 8],
            &[0x45, 0x4d, 0x69, 0x4c, 1, 0, 0, 0],
            "LiME magic+version at {at}"
        );
        let (start, end) = (word(8), word(16));
        assert_eq!(word(24), 0);
        let len = (end - start + 1) as usize;
        records.push((start, end, &bytes[at + 32..at + 32 + len]));
        at += 32 + len;
    }
    records
}

fn range_json(range: &Range) -> Value {
    serde_json::json!({
        "start": format!("{:#x}", range.start),
        "last": format!("{:#x}", range.last()),
        "bytes": range.len(),
    })
}

#[test]
fn acquires_lime_byte_exact_with_manifest() {
    let m = machine();
    let out = m.path("memory.lime");
    m.acquire("lime", &out).success();

    let bytes = std::fs::read(&out).unwrap();
    let records = parse_lime(&bytes);
    let expected = acquired_ranges();
    assert_eq!(records.len(), expected.len());
    for ((start, end, data), range) in records.iter().zip(&expected) {
        assert_eq!((*start, *end), (range.start, range.last()));
        assert!(
            data == &pattern(range.start, range.len() as usize),
            "content of {range}"
        );
    }

    let man = manifest(&out);
    assert_eq!(man["complete"], true);
    assert_eq!(man["format"], "lime");
    assert_eq!(man["source"]["kind"], "kcore");
    assert_eq!(man["source"]["vmcoreinfo"], true);
    assert_eq!(
        man["source"]["direct_map_offset"],
        format!("{DIRECT_MAP:#x}")
    );
    assert_eq!(man["host"]["arch"], "x86_64");
    // BLAKE3 by default, in schema 2's field only.
    assert_eq!(man["schema_version"], 2);
    assert_blake3(&man["image_hash"], &bytes);
    assert!(man.get("image_sha256").is_none(), "{man}");
    // An independent BLAKE3: Debian's b3sum (installed by the set-up).
    let b3sum = std::process::Command::new("b3sum")
        .arg("--no-names")
        .arg(&out)
        .output()
        .expect("b3sum (apt package b3sum) must be installed: scripts/test.sh installs it");
    assert!(b3sum.status.success());
    assert_eq!(
        String::from_utf8_lossy(&b3sum.stdout).trim(),
        man["image_hash"]["hex"]
    );
    assert_eq!(man["bytes"]["image"], bytes.len() as u64);
    let ranges: Vec<Value> = expected.iter().map(range_json).collect();
    assert_eq!(man["ranges"], Value::Array(ranges));
    assert_eq!(man["system_ram"][0]["last"], "0x9fbff");
    // The partial page at the end of the first RAM range is accounted for.
    let gaps = man["not_acquired"].as_array().unwrap();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!(gaps[0]["start"], "0x9f000");
    assert_eq!(gaps[0]["last"], "0x9fbff");
    assert_eq!(man["unreadable_page_count"], 0);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for path in [out.clone(), m.path("memory.lime.json")] {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", path.display());
        }
    }
    pmem().arg("verify").arg(&out).assert().success();
}

#[test]
fn raw_is_zero_padded_and_sparse() {
    let m = machine();
    let out = m.path("memory.raw");
    m.acquire("raw", &out).success();
    let bytes = std::fs::read(&out).unwrap();
    let expected = acquired_ranges();
    assert_eq!(bytes.len() as u64, expected.last().unwrap().end);
    let mut at = 0u64;
    for range in &expected {
        assert!(bytes[at as usize..range.start as usize]
            .iter()
            .all(|&b| b == 0));
        assert!(
            bytes[range.start as usize..range.end as usize]
                == pattern(range.start, range.len() as usize)[..]
        );
        at = range.end;
    }
    #[cfg(unix)]
    {
        // The 39 MiB gap must be a hole, not written zeros.
        use std::os::unix::fs::MetadataExt;
        let allocated = std::fs::metadata(&out).unwrap().blocks() * 512;
        let data: u64 = expected.iter().map(Range::len).sum();
        assert!(
            allocated < data + (4 << 20),
            "raw image allocates {allocated} bytes for {data}"
        );
    }
    let info = info_json(&out);
    assert_eq!(info["format"], "raw");
    assert_eq!(info["ranges_from"], "manifest");
    assert_eq!(info["ranges"], manifest(&out)["ranges"]);
    pmem().arg("verify").arg(&out).assert().success();
}

#[test]
fn elf_carries_notes_direct_map_and_machine() {
    let m = machine();
    let out = m.path("memory.elf");
    m.acquire("elf", &out).success();
    let info = info_json(&out);
    assert_eq!(info["format"], "elf");
    assert_eq!(info["arch"], "x86_64");
    assert_eq!(info["direct_map_offset"], format!("{DIRECT_MAP:#x}"));
    assert_eq!(info["vmcoreinfo_bytes"], 35);
    assert_eq!(info["metadata"]["source"]["kind"], "kcore");
    assert_eq!(info["ranges"], manifest(&out)["ranges"]);
    let text = pmem()
        .arg("info")
        .arg(&out)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("format:       elf"), "{text}");
    assert!(text.contains("0x4000000"), "{text}");
    pmem().arg("verify").arg(&out).assert().success();
}

#[test]
fn every_format_holds_the_same_memory_and_converts_back_exactly() {
    let m = machine();
    let lime = m.path("a.lime");
    m.acquire_with("lime", &lime, &["--memory-hash"]).success();
    let memory_sha = manifest(&lime)["memory_hash"].clone();
    assert_eq!(memory_sha["hex"].as_str().map(str::len), Some(64));
    assert_eq!(memory_sha["algorithm"], "blake3");
    // Without --memory-hash an acquisition records the image hash only.
    let plain = m.path("plain.lime");
    m.acquire("lime", &plain).success();
    assert_eq!(manifest(&plain)["memory_hash"], Value::Null);
    assert_eq!(
        manifest(&plain)["image_hash"]["hex"].as_str().map(str::len),
        Some(64)
    );

    // lime -> elf -> raw -> lime gives the original LiME bytes back.
    let elf = m.path("b.elf");
    let raw = m.path("c.raw");
    let lime2 = m.path("d.lime");
    for (input, output, format) in [
        (&lime, &elf, "elf"),
        (&elf, &raw, "raw"),
        (&raw, &lime2, "lime"),
    ] {
        pmem()
            .args(["convert", "--quiet", "--format", format])
            .arg(input)
            .arg(output)
            .assert()
            .success();
        let man = manifest(output);
        assert_eq!(man["memory_hash"], memory_sha, "{}", output.display());
        assert_eq!(man["source"]["kind"], "image");
        // The acquisition's record travels with the image.
        assert_eq!(man["not_acquired"][0]["start"], "0x9f000");
        pmem().arg("verify").arg(output).assert().success();
    }
    assert!(std::fs::read(&lime).unwrap() == std::fs::read(&lime2).unwrap());

    // Conversion is deterministic: the same input gives the same bytes.
    let elf2 = m.path("e.elf");
    pmem()
        .args(["convert", "-q", "-f", "elf"])
        .arg(&lime2)
        .arg(&elf2)
        .assert()
        .success();
    let elf3 = m.path("f.elf");
    pmem()
        .args(["convert", "-q", "-f", "elf"])
        .arg(&lime2)
        .arg(&elf3)
        .assert()
        .success();
    assert!(std::fs::read(&elf2).unwrap() == std::fs::read(&elf3).unwrap());
}

#[test]
fn stdout_carries_only_the_image() {
    let m = machine();
    let file = m.path("file.lime");
    m.acquire("lime", &file).success();
    let output = m
        .acquire("lime", Path::new("-"))
        .success()
        .get_output()
        .clone();
    assert!(
        output.stdout == std::fs::read(&file).unwrap(),
        "stdout differs from the file image"
    );
    assert!(
        !output.stderr.is_empty(),
        "progress and summary go to stderr"
    );
    assert!(
        !m.path("-.json").exists(),
        "no manifest for stdout unless asked"
    );

    let man_path = m.path("stream.json");
    let output = pmem()
        .args(["acquire", "-q", "--format", "raw"])
        .arg(format!("--source=kcore:{}", m.kcore.display()))
        .arg("--iomem")
        .arg(&m.iomem)
        .arg("--manifest")
        .arg(&man_path)
        .arg("-")
        .assert()
        .success()
        .get_output()
        .clone();
    let man: Value = serde_json::from_slice(&std::fs::read(&man_path).unwrap()).unwrap();
    assert_blake3(&man["image_hash"], &output.stdout);
    assert_eq!(
        output.stdout.len() as u64,
        acquired_ranges().last().unwrap().end
    );
}

#[test]
fn never_overwrites_without_force() {
    let m = machine();
    let out = m.path("memory.lime");
    std::fs::write(&out, b"evidence").unwrap();
    m.acquire("lime", &out).failure().stderr(
        predicates::str::contains("already exists").and(predicates::str::contains("--force")),
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"evidence");
    pmem()
        .args(["acquire", "-q", "--force"])
        .arg(format!("--source=kcore:{}", m.kcore.display()))
        .arg("--iomem")
        .arg(&m.iomem)
        .arg(&out)
        .assert()
        .success();
    pmem().arg("verify").arg(&out).assert().success();
}

use predicates::prelude::PredicateBooleanExt;

#[test]
fn hidden_iomem_is_refused_with_advice() {
    let m = machine();
    let hidden = IOMEM
        .lines()
        .map(|l| {
            let (_, name) = l.split_once(" : ").unwrap();
            let indent = &l[..l.len() - l.trim_start().len()];
            format!("{indent}00000000-00000000 : {name}\n")
        })
        .collect::<String>();
    std::fs::write(&m.iomem, hidden).unwrap();
    m.acquire("lime", &m.path("x.lime"))
        .failure()
        .stderr(predicates::str::contains("root"));
    assert!(
        !m.path("x.lime").exists(),
        "nothing written when the map is hidden"
    );
}

#[test]
fn verify_detects_a_changed_byte() {
    let m = machine();
    let out = m.path("memory.lime");
    m.acquire_with("lime", &out, &["--memory-hash"]).success();
    let mut bytes = std::fs::read(&out).unwrap();
    bytes[5000] ^= 0x01;
    std::fs::write(&out, &bytes).unwrap();
    pmem()
        .arg("verify")
        .arg(&out)
        .assert()
        .failure()
        .stdout(predicates::str::contains("FAIL image blake3"))
        .stdout(predicates::str::contains("FAIL memory blake3"));
}

#[test]
fn corrupt_images_get_errors_naming_file_and_offset() {
    let m = machine();
    let out = m.path("memory.lime");
    m.acquire("lime", &out).success();
    let bytes = std::fs::read(&out).unwrap();

    let truncated = m.path("truncated.lime");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    pmem()
        .arg("info")
        .arg(&truncated)
        .assert()
        .failure()
        .stderr(predicates::str::contains("truncated.lime"))
        .stderr(predicates::str::contains("offset"));

    let mut bad_header = bytes.clone();
    let second = 32 + 0x9e000;
    bad_header[second] = b'X';
    let bad = m.path("bad.lime");
    std::fs::write(&bad, &bad_header).unwrap();
    pmem()
        .args(["convert", "-f", "raw"])
        .arg(&bad)
        .arg(m.path("bad.raw"))
        .assert()
        .failure()
        .stderr(predicates::str::contains(format!("{second:#x}")));

    let elf = m.path("short.elf");
    std::fs::write(&elf, b"\x7fELF\x02\x01\x01").unwrap();
    pmem()
        .arg("info")
        .arg(&elf)
        .assert()
        .failure()
        .stderr(predicates::str::contains("short.elf"));

    let empty = m.path("empty");
    std::fs::write(&empty, b"").unwrap();
    pmem().arg("info").arg(&empty).assert().failure();
}

#[test]
fn mem_source_reads_a_device_by_physical_offset() {
    let m = machine();
    let devmem = m.path("devmem");
    pmem_sources::testing::write_physical_file(&devmem, &acquired_ranges()).unwrap();
    let out = m.path("mem.lime");
    pmem()
        .args(["acquire", "-q"])
        .arg(format!("--source=mem:{}", devmem.display()))
        .arg("--iomem")
        .arg(&m.iomem)
        .arg(&out)
        .assert()
        .success()
        .stderr(predicates::str::contains("mem"));
    let bytes = std::fs::read(&out).unwrap();
    for ((start, _, data), range) in parse_lime(&bytes).iter().zip(acquired_ranges()) {
        assert_eq!(*start, range.start);
        assert!(data == &pattern(range.start, range.len() as usize));
    }
    assert_eq!(manifest(&out)["source"]["kind"], "mem");
}

#[test]
fn missing_source_fails_without_writing() {
    let m = machine();
    let out = m.path("x.lime");
    pmem()
        .args(["acquire", "-q", "--source=kcore:/nonexistent/kcore"])
        .arg("--iomem")
        .arg(&m.iomem)
        .arg(&out)
        .assert()
        .failure()
        .stderr(predicates::str::contains("/nonexistent/kcore"));
    assert!(!out.exists());
}

#[test]
fn max_disk_usage_stops_and_leaves_an_incomplete_manifest() {
    let m = machine();
    let out = m.path("limited.raw");
    m.acquire_with("raw", &out, &["--max-disk-usage", "1"])
        .failure()
        .stderr(predicates::str::contains("--max-disk-usage"));
    let man = manifest(&out);
    assert_eq!(man["complete"], false);
    assert!(man["error"].as_str().unwrap().contains("1 MiB"), "{man}");
    assert!(out.exists(), "what was written is kept");
    // Percentages are checked before the first byte.
    m.acquire_with("lime", &m.path("full.lime"), &["--max-disk-usage", "0%"])
        .failure();
    m.acquire_with("lime", &m.path("ok.lime"), &["--max-disk-usage", "100%"])
        .success();
}

#[test]
fn no_hash_writes_the_same_image_and_verify_accepts_it() {
    let m = machine();
    let hashed = m.path("h.lime");
    let plain = m.path("n.lime");
    m.acquire("lime", &hashed).success();
    m.acquire_with("lime", &plain, &["--no-hash"]).success();
    assert!(std::fs::read(&hashed).unwrap() == std::fs::read(&plain).unwrap());
    assert_eq!(manifest(&plain)["image_hash"], Value::Null);
    assert!(manifest(&plain).get("image_sha256").is_none());
    // --hash none is the same.
    let none = m.path("none.lime");
    m.acquire_with("lime", &none, &["--hash", "none"]).success();
    assert_eq!(manifest(&none)["image_hash"], Value::Null);
    assert!(std::fs::read(&none).unwrap() == std::fs::read(&plain).unwrap());
    pmem()
        .arg("verify")
        .arg(&plain)
        .assert()
        .success()
        .stdout(predicates::str::contains("not recorded in the manifest"));
    // AVML on a file patches its headers also without a hash running.
    let avml = m.path("n.avml");
    m.acquire_with("lime", &avml, &["--no-hash", "--compress", "snappy"])
        .success();
    pmem().arg("verify").arg(&avml).assert().success();
    // convert --no-hash: the same bytes as a hashed conversion, no hashes.
    let (converted, converted_plain) = (m.path("c.raw"), m.path("cn.raw"));
    for (out, extra) in [(&converted, None), (&converted_plain, Some("--no-hash"))] {
        pmem()
            .args(["convert", "-q", "--format", "raw"])
            .args(extra)
            .arg(&avml)
            .arg(out)
            .assert()
            .success();
    }
    assert!(std::fs::read(&converted).unwrap() == std::fs::read(&converted_plain).unwrap());
    let (with, without) = (manifest(&converted), manifest(&converted_plain));
    assert!(with["memory_hash"]["hex"].is_string() && with["image_hash"]["hex"].is_string());
    assert_eq!(without["memory_hash"], Value::Null);
    assert_eq!(without["image_hash"], Value::Null);
}

/// --hash sha256: every hash in SHA-256, in schema 2's fields and in
/// schema 1's beside them; `verify` checks them, and `info` names the
/// algorithm.
#[test]
fn sha256_on_request_writes_both_schemas_and_verify_checks_it() {
    let m = machine();
    let out = m.path("s.lime");
    m.acquire_with("lime", &out, &["--hash", "sha256", "--memory-hash"])
        .success();
    let bytes = std::fs::read(&out).unwrap();
    let man = manifest(&out);
    assert_eq!(man["image_hash"]["algorithm"], "sha256");
    assert_eq!(man["image_hash"]["hex"], sha256_hex(&bytes));
    assert_eq!(man["image_sha256"], sha256_hex(&bytes));
    assert_eq!(man["memory_hash"]["algorithm"], "sha256");
    assert_eq!(man["memory_sha256"], man["memory_hash"]["hex"]);
    pmem()
        .arg("verify")
        .arg(&out)
        .assert()
        .success()
        .stdout(predicates::str::contains(format!(
            "ok   image sha256: {}",
            sha256_hex(&bytes)
        )))
        .stdout(predicates::str::contains("ok   memory sha256"));
    pmem()
        .arg("info")
        .arg(&out)
        .assert()
        .success()
        .stdout(predicates::str::contains(format!(
            "image hash:   sha256 {}",
            sha256_hex(&bytes)
        )));
    assert_eq!(info_json(&out)["image_hash"]["algorithm"], "sha256");
    // The default's info names BLAKE3.
    let default = m.path("b.lime");
    m.acquire("lime", &default).success();
    pmem()
        .arg("info")
        .arg(&default)
        .assert()
        .success()
        .stdout(predicates::str::contains(format!(
            "image hash:   blake3 {}",
            blake3_hex(&std::fs::read(&default).unwrap())
        )))
        .stdout(predicates::str::contains("memory hash:  not recorded"));
    // A changed byte fails the check in the manifest's algorithm.
    let mut changed = bytes.clone();
    let last = changed.len() - 1;
    changed[last] ^= 1;
    std::fs::write(&out, &changed).unwrap();
    verify_fails(&out, "image sha256");
}

/// A manifest of schema 1 (before the hashes named their algorithm: only
/// image_sha256 and memory_sha256) still parses, and `verify` checks its
/// SHA-256 fields.
#[test]
fn verify_checks_a_schema_1_manifest() {
    let m = machine();
    let out = m.path("old.lime");
    m.acquire_with("lime", &out, &["--hash", "sha256", "--memory-hash"])
        .success();
    let path = m.path("old.lime.json");
    let mut old = manifest(&out);
    let fields = old.as_object_mut().unwrap();
    for key in ["schema_version", "image_hash", "memory_hash"] {
        assert!(fields.remove(key).is_some(), "{key}");
    }
    let v1 = Value::Object(fields.clone());
    std::fs::write(&path, serde_json::to_vec_pretty(&v1).unwrap()).unwrap();
    pmem()
        .arg("verify")
        .arg(&out)
        .assert()
        .success()
        .stdout(predicates::str::contains("ok   image sha256"))
        .stdout(predicates::str::contains("ok   memory sha256"));
    // Its hashes are compared, not only read: a wrong one fails.
    let mut wrong = v1.clone();
    wrong["memory_sha256"] = "00".repeat(32).into();
    std::fs::write(&path, serde_json::to_vec_pretty(&wrong).unwrap()).unwrap();
    verify_fails(&out, "memory sha256");
    let mut wrong = v1;
    wrong["image_sha256"] = "00".repeat(32).into();
    std::fs::write(&path, serde_json::to_vec_pretty(&wrong).unwrap()).unwrap();
    verify_fails(&out, "image sha256");
}

/// Every format pmem writes converts into every other with the same memory
/// (memory_hash of each conversion equals the acquisition's), and every
/// format converts back to the acquisition's LiME bytes.
#[test]
fn every_format_pair_converts_with_the_same_memory() {
    let m = machine();
    let lime = m.path("acquired.lime");
    m.acquire_with("lime", &lime, &["--memory-hash"]).success();
    let memory_sha = manifest(&lime)["memory_hash"].clone();
    let original = std::fs::read(&lime).unwrap();
    // (name, convert arguments): AVML is LiME with snappy; a crash dump
    // needs the Windows facts a Linux image lacks.
    let formats: [(&str, &[&str]); 7] = [
        ("lime", &["-f", "lime"]),
        ("raw", &["-f", "raw"]),
        ("elf", &["-f", "elf"]),
        ("macho", &["-f", "macho"]),
        ("aff4", &["-f", "aff4"]),
        ("avml", &["-f", "lime", "--compress", "snappy"]),
        ("dmp", &["-f", "dmp", "--cr3", "1aa000", "--build", "19041"]),
    ];
    let convert = |input: &Path, output: &Path, args: &[&str]| {
        pmem()
            .args(["convert", "--quiet"])
            .args(args)
            .arg(input)
            .arg(output)
            .assert()
            .success();
        let man = manifest(output);
        assert_eq!(man["memory_hash"], memory_sha, "{}", output.display());
        pmem().arg("verify").arg(output).assert().success();
    };
    for (from, from_args) in formats {
        let source = m.path(&format!("src.{from}"));
        convert(&lime, &source, from_args);
        for (to, to_args) in formats {
            let target = m.path(&format!("{from}-to.{to}"));
            convert(&source, &target, to_args);
            if from == "lime" {
                // Back to LiME: the acquisition's bytes exactly.
                let back = m.path(&format!("{to}-back.lime"));
                convert(&target, &back, &["-f", "lime"]);
                assert!(std::fs::read(&back).unwrap() == original, "{to} -> lime");
            }
            std::fs::remove_file(&target).unwrap();
        }
    }
    // AFF4 with each chunk compression pmem offers.
    for compress in ["snappy", "lz4", "deflate", "none"] {
        let out = m.path(&format!("c-{compress}.aff4"));
        m.acquire_with("aff4", &out, &["--memory-hash", "--compress", compress])
            .success();
        let man = manifest(&out);
        assert_eq!(man["memory_hash"], memory_sha, "aff4 {compress}");
        assert_eq!(man["compression"], compress);
        pmem().arg("verify").arg(&out).assert().success();
    }
    m.acquire_with("aff4", &m.path("z.aff4"), &["--compress", "zstd"])
        .failure()
        .stderr(predicates::str::contains(
            "AFF4 compresses its chunks itself",
        ));
    m.acquire_with("raw", &m.path("z.raw"), &["--compress", "lz4"])
        .failure()
        .stderr(predicates::str::contains("use them with --format aff4"));
}

/// An arm64 machine as QEMU's virt board lays it out: RAM from 1 GiB, split
/// by a firmware reservation (as under UEFI), "Kernel code" and "Kernel data"
/// under System RAM, a kernel-image segment aliasing RAM.
const IOMEM_ARM64: &str = "\
09000000-09000fff : pl011@9000000
  09000000-09000fff : 9000000.pl011 pl011@9000000
40000000-407fffff : System RAM
  40210000-4030ffff : Kernel code
  40310000-4033ffff : reserved
  40340000-403fffff : Kernel data
40800000-408fffff : reserved
40900000-40bfffff : System RAM
";

#[test]
fn aarch64_kcore_gives_aarch64_images_manifests_and_info() {
    let dir = tempfile::tempdir().unwrap();
    let (kcore, iomem) = (dir.path().join("kcore"), dir.path().join("iomem"));
    std::fs::write(&iomem, IOMEM_ARM64).unwrap();
    let ram = [
        Range::new(0x4000_0000, 0x4080_0000).unwrap(),
        Range::new(0x4090_0000, 0x40c0_0000).unwrap(),
    ];
    let mut builder = KcoreBuilder::new(Arch::Aarch64)
        .vmcoreinfo(b"OSRELEASE=6.1.0-test-arm64\nPAGESIZE=4096\n")
        // The kernel image mapping (arm64's vmalloc-area kimage), aliasing RAM.
        .segment(Segment {
            vaddr: 0xffff_8000_0821_0000,
            ..Segment::ram(0x4021_0000, 0x10_0000)
        })
        .segment(Segment::not_ram(0xffff_8000_0000_0000, 0x800_0000));
    for range in &ram {
        builder = builder.segment(Segment::ram(range.start, range.len()));
    }
    builder.write(&kcore).unwrap();
    let acquire = |format: &str| {
        let out = dir.path().join(format!("arm64.{format}"));
        pmem()
            .args(["acquire", "--quiet", "--format", format])
            .arg(format!("--source=kcore:{}", kcore.display()))
            .arg("--iomem")
            .arg(&iomem)
            .arg(&out)
            .assert()
            .success();
        let man = manifest(&out);
        assert_eq!(man["host"]["arch"], "aarch64", "{format} manifest");
        let ranges: Vec<Value> = ram.iter().map(range_json).collect();
        assert_eq!(man["ranges"], Value::Array(ranges), "{format} ranges");
        let info = info_json(&out);
        assert_eq!(info["arch"], "aarch64", "{format} info");
        (out, info)
    };

    // ELF: EM_AARCH64 in the header, read back from the image itself.
    let (elf, info) = acquire("elf");
    let bytes = std::fs::read(&elf).unwrap();
    assert_eq!(u16::from_le_bytes([bytes[18], bytes[19]]), 183);
    assert_eq!(info["arch_from"], "image");
    // Mach-O: CPU_TYPE_ARM64.
    let (macho, info) = acquire("macho");
    let bytes = std::fs::read(&macho).unwrap();
    assert_eq!(
        u32::from_le_bytes(bytes[4..8].try_into().unwrap()),
        0x0100_000c
    );
    assert_eq!(info["arch_from"], "image");
    // LiME has no machine field: the manifest names it, and `pmem info` says so.
    let (lime, info) = acquire("lime");
    assert_eq!(info["arch_from"], "manifest");
    let lime_bytes = std::fs::read(&lime).unwrap();
    let records = parse_lime(&lime_bytes);
    assert_eq!(records.len(), ram.len());
    for ((start, end, data), range) in records.iter().zip(&ram) {
        assert_eq!((*start, *end), (range.start, range.last()));
        assert!(
            data == &pattern(range.start, range.len() as usize),
            "{range}"
        );
    }
    pmem()
        .arg("info")
        .arg(&lime)
        .assert()
        .success()
        .stdout(predicates::str::contains(
            "architecture: aarch64 (from the manifest)",
        ));
    // Without its manifest LiME records no architecture, and info says that.
    std::fs::remove_file(dir.path().join("arm64.lime.json")).unwrap();
    pmem()
        .arg("info")
        .arg(&lime)
        .assert()
        .success()
        .stdout(predicates::str::contains("architecture: not recorded"));
    // Converting keeps it: the ELF made from the Mach-O is aarch64 too.
    let converted = dir.path().join("from-macho.elf");
    pmem()
        .args(["convert", "-q", "-f", "elf"])
        .arg(&macho)
        .arg(&converted)
        .assert()
        .success();
    let bytes = std::fs::read(&converted).unwrap();
    assert_eq!(u16::from_le_bytes([bytes[18], bytes[19]]), 183);
}

// ---- What pmem leaves behind when a run fails, is refused or interrupted ----

/// The files of `dir`, sorted (to show that a run left nothing behind).
fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_failure_before_memory_is_written_leaves_nothing_and_the_retry_works() {
    let m = machine();
    let lime = m.path("k.lime");
    m.acquire("lime", &lime).success();
    let before = files_in(m.dir.path());
    let dmp = m.path("k.dmp");
    pmem()
        .args(["convert", "-q", "--format", "dmp"])
        .arg(&lime)
        .arg(&dmp)
        .assert()
        .failure()
        .stderr(predicates::str::contains("--cr3"));
    assert_eq!(files_in(m.dir.path()), before, "no image, no manifest");
    pmem()
        .args(["convert", "-q", "--format", "dmp", "--cr3", "0x1aa000"])
        .arg(&lime)
        .arg(&dmp)
        .assert()
        .success();
    assert_eq!(manifest(&dmp)["complete"], true);

    // A source whose first read fails: nothing was written, nothing is left.
    let device = m.path("short-device");
    std::fs::write(&device, b"").unwrap();
    let out = m.path("empty-source.lime");
    pmem()
        .args(["acquire", "-q"])
        .arg(format!("--source=mem:{}", device.display()))
        .arg("--iomem")
        .arg(&m.iomem)
        .arg(&out)
        .assert()
        .failure();
    assert!(!out.exists() && !m.path("empty-source.lime.json").exists());
}

#[test]
fn acquire_dmp_off_windows_is_refused_before_creating_anything() {
    let m = machine();
    let out = m.path("x.dmp");
    m.acquire("dmp", &out)
        .failure()
        .stderr(predicates::str::contains("Windows"))
        .stderr(predicates::str::contains("pmem convert"));
    assert!(!out.exists() && !m.path("x.dmp.json").exists());
    // The advice names options that exist: convert takes --cr3.
    pmem()
        .args(["convert", "--help"])
        .assert()
        .success()
        .stdout(predicates::str::contains("--cr3"));
    let help = pmem().args(["acquire", "--help"]).output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for format in ["lime", "raw", "elf", "dmp", "avml", "macho", "aff4"] {
        assert!(
            help.contains(format),
            "acquire --help lacks {format}: {help}"
        );
    }
}

#[test]
fn a_refused_overwrite_writes_nothing() {
    let m = machine();
    let out = m.path("memory.lime");
    std::fs::write(&out, b"evidence").unwrap();
    m.acquire("lime", &out)
        .failure()
        .stderr(predicates::str::contains("already exists"));
    assert_eq!(std::fs::read(&out).unwrap(), b"evidence");
    assert!(!m.path("memory.lime.json").exists(), "no manifest either");

    // An existing manifest alone refuses too, without creating the image.
    let other = m.path("other.lime");
    std::fs::write(m.path("other.lime.json"), b"{}").unwrap();
    m.acquire("lime", &other)
        .failure()
        .stderr(predicates::str::contains("already exists"));
    assert!(!other.exists());
    assert_eq!(std::fs::read(m.path("other.lime.json")).unwrap(), b"{}");

    // convert onto an existing output.
    let raw = m.path("taken.raw");
    std::fs::write(&raw, b"kept").unwrap();
    m.acquire("lime", &m.path("in.lime")).success();
    pmem()
        .args(["convert", "-q", "-f", "raw"])
        .arg(m.path("in.lime"))
        .arg(&raw)
        .assert()
        .failure()
        .stderr(predicates::str::contains("already exists"));
    assert_eq!(std::fs::read(&raw).unwrap(), b"kept");
    assert!(!m.path("taken.raw.json").exists());
}

#[test]
fn the_manifest_is_replaced_whole_never_rewritten_in_place() {
    let m = machine();
    let out = m.path("memory.lime");
    m.acquire("lime", &out).success();
    let first = std::fs::read(m.path("memory.lime.json")).unwrap();
    // A hard link keeps the inode of the first manifest: a manifest
    // rewritten in place would change it.
    std::fs::hard_link(m.path("memory.lime.json"), m.path("first.json")).unwrap();
    m.acquire_with("lime", &out, &["--force"]).success();
    assert_eq!(std::fs::read(m.path("first.json")).unwrap(), first);
    assert_eq!(manifest(&out)["complete"], true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(m.path("memory.lime.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let mut names = files_in(m.dir.path());
    names.retain(|n| n.contains("tmp"));
    assert!(names.is_empty(), "temporary files left: {names:?}");

    // A symlink where the manifest goes is refused, as for the image.
    #[cfg(unix)]
    {
        let target = m.path("elsewhere");
        std::os::unix::fs::symlink(&target, m.path("linked.lime.json")).unwrap();
        m.acquire_with("lime", &m.path("linked.lime"), &["--force"])
            .failure();
        assert!(!target.exists(), "nothing written through the link");
    }
}

#[cfg(unix)]
#[test]
fn sigint_and_sigterm_are_recorded_in_the_manifest() {
    let m = machine();
    // 256 GiB of "RAM", far more than is read before the signal: 16 MiB of
    // data (written to the image at once), then zeros (a sparse file).
    let iomem = m.path("big-iomem");
    std::fs::write(&iomem, "00000000-3fffffffff : System RAM\n").unwrap();
    let device = m.path("big-device");
    std::fs::write(&device, pattern(0, 16 << 20)).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&device)
        .unwrap()
        .set_len(1 << 38)
        .unwrap();
    for (signal, name) in [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM")] {
        // raw: the data goes to the file as read, the zeros are holes.
        let out = m.path(&format!("{name}.raw"));
        let manifest_path = m.path(&format!("{name}.raw.json"));
        let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("pmem"))
            .args(["acquire", "-q", "--format", "raw"])
            .arg(format!("--source=mem:{}", device.display()))
            .arg("--iomem")
            .arg(&iomem)
            .arg(&out)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut child = Proc(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        // Signalled once the data is in the image, while the zeros are read.
        let data_written = || std::fs::metadata(&out).is_ok_and(|m| m.len() >= 16 << 20);
        while !(manifest_path.exists() && data_written()) {
            assert!(
                std::time::Instant::now() < deadline,
                "no manifest or no data"
            );
            assert!(child.0.try_wait().unwrap().is_none(), "pmem ended early");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        unsafe { libc::kill(child.0.id() as i32, signal) };
        let status = loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name} did not stop pmem"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(128 + signal), "{name}: {status:?}");
        let man = manifest(&out);
        assert_eq!(man["complete"], false);
        assert_eq!(man["error"], format!("interrupted by {name}"));
        assert!(man["finished_at"].is_string(), "{man}");
        // What was written is kept and accounted for.
        let len = std::fs::metadata(&out).unwrap().len();
        assert!(len >= 16 << 20, "{len}");
        assert_eq!(man["bytes"]["image"], len);
        pmem()
            .arg("verify")
            .arg(&out)
            .assert()
            .failure()
            .stdout(predicates::str::contains(format!("interrupted by {name}")));
    }
}

/// A machine read through the `mem` source from a file with all-zero
/// stretches: at a range's start, inside a range, and a whole range.
#[cfg(unix)]
fn machine_with_zeros() -> (Machine, PathBuf) {
    let m = machine();
    let device = m.path("devmem");
    pmem_sources::testing::write_physical_file(&device, &acquired_ranges()).unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&device)
        .unwrap();
    use std::os::unix::fs::FileExt;
    for (start, len) in [
        (0x100000u64, 0x20000usize),
        (0x400000, 0x40000),
        (0x400_0000, 0x20_0000),
    ] {
        file.write_all_at(&vec![0; len], start).unwrap();
    }
    (m, device)
}

#[cfg(unix)]
#[test]
fn verify_checks_avml_ranges_against_the_blocks() {
    let (m, device) = machine_with_zeros();
    let out = m.path("zeros.avml");
    pmem()
        .args(["acquire", "-q", "--format", "avml"])
        .arg(format!("--source=mem:{}", device.display()))
        .arg("--iomem")
        .arg(&m.iomem)
        .arg(&out)
        .assert()
        .success();
    pmem().arg("verify").arg(&out).assert().success();
    let raw = m.path("zeros.raw");
    pmem()
        .args(["convert", "-q", "-f", "raw"])
        .arg(&out)
        .arg(&raw)
        .assert()
        .success();
    assert_eq!(manifest(&raw)["ranges"], manifest(&out)["ranges"]);

    let path = m.path("zeros.avml.json");
    let good = manifest(&out);
    let invent = |extra: Vec<Value>| {
        let mut man = good.clone();
        man["ranges"].as_array_mut().unwrap().extend(extra);
        std::fs::write(&path, serde_json::to_vec(&man).unwrap()).unwrap();
    };
    // One invented MiB after the last range.
    invent(vec![range_json(
        &Range::new(0x1000_0000, 0x1010_0000).unwrap(),
    )]);
    verify_fails(&out, "ranges");
    // convert takes only what the blocks hold, and says why.
    pmem()
        .args(["convert", "-q", "-f", "raw"])
        .arg(&out)
        .arg(m.path("invented.raw"))
        .assert()
        .success()
        .stderr(predicates::str::contains("0x10000000"));
    let converted = manifest(&m.path("invented.raw"));
    let starts: Vec<&Value> = converted["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["start"])
        .collect();
    assert!(!starts.contains(&&Value::from("0x10000000")), "{starts:?}");
    // 100,000 of them.
    invent(
        (0..100_000u64)
            .map(|i| {
                let start = 0x1_0000_0000 + i * 0x2000;
                range_json(&Range::new(start, start + 0x1000).unwrap())
            })
            .collect(),
    );
    verify_fails(&out, "ranges");
    // Two real ranges merged into one: the hole between them is not a
    // stretch of left-out zero frames (it does not start on a frame).
    let mut man = good.clone();
    let ranges = man["ranges"].as_array_mut().unwrap();
    let merged = serde_json::json!({
        "start": ranges[0]["start"],
        "last": ranges[1]["last"],
        "bytes": 0x900000 - 0x1000,
    });
    ranges.splice(0..2, [merged]);
    std::fs::write(&path, serde_json::to_vec(&man).unwrap()).unwrap();
    verify_fails(&out, "ranges");
}

/// `pmem verify IMAGE` fails, and its report fails the named check.
fn verify_fails(image: &Path, check: &str) {
    pmem()
        .arg("verify")
        .arg(image)
        .assert()
        .failure()
        .stdout(predicates::str::contains(format!("FAIL {check}")));
}

#[test]
fn unreadable_pages_are_shown_by_info_and_checked_by_verify() {
    let m = machine();
    let out = m.path("memory.lime");
    m.acquire("lime", &out).success();
    let path = m.path("memory.lime.json");
    let good = manifest(&out);
    let with = |runs: Value, count: u64| {
        let mut man = good.clone();
        man["unreadable_pages"] = runs;
        man["unreadable_page_count"] = count.into();
        std::fs::write(&path, serde_json::to_vec(&man).unwrap()).unwrap();
    };
    with(serde_json::json!([{"start": "0x2000", "pages": 2}]), 2);
    pmem()
        .arg("info")
        .arg(&out)
        .assert()
        .success()
        .stdout(predicates::str::contains("unreadable"))
        .stdout(predicates::str::contains("0x2000"));
    let info = pmem().args(["info", "--json"]).arg(&out).output().unwrap();
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["unreadable"][0]["start"], "0x2000");
    assert_eq!(info["unreadable"][0]["bytes"], 0x2000);
    pmem().arg("verify").arg(&out).assert().success();

    with(
        serde_json::json!([{"start": "0x2000", "pages": 2}]),
        u64::MAX,
    );
    verify_fails(&out, "unreadable pages");
    // A run outside every range.
    with(serde_json::json!([{"start": "0x10000000", "pages": 1}]), 1);
    verify_fails(&out, "unreadable pages");
    with(
        serde_json::json!([{"start": "0x2000", "pages": u64::MAX}]),
        u64::MAX,
    );
    verify_fails(&out, "unreadable pages");
}

#[test]
fn an_endless_iomem_is_refused_quickly() {
    let m = machine();
    let started = std::time::Instant::now();
    pmem()
        .args(["acquire", "-q"])
        .arg(format!("--source=kcore:{}", m.kcore.display()))
        .args(["--iomem", "/dev/zero"])
        .arg(m.path("x.lime"))
        .assert()
        .failure()
        .stderr(predicates::str::contains("/dev/zero"))
        .stderr(predicates::str::contains("MiB"));
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert!(!m.path("x.lime").exists());
}

#[test]
fn error_lines_say_their_cause_once() {
    let m = machine();
    let assert = pmem()
        .args(["acquire", "-q", "--source=mem:/nonexistent/device"])
        .arg("--iomem")
        .arg(&m.iomem)
        .arg(m.path("x.lime"))
        .assert()
        .failure();
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
    let assert = pmem()
        .args(["convert", "-q", "-f", "raw"])
        .arg(m.path("missing.lime"))
        .arg(m.path("y.raw"))
        .assert()
        .failure();
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
}

/// A full disk: the image keeps what fitted, the manifest (rewritten in the
/// blocks of its first version) says why, and stderr names the image's
/// error first. Needs a small filesystem: a tmpfs mounted for the test
/// (root, as in CI); skipped with a note where mounting is not allowed.
#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_is_recorded_in_the_manifest() {
    let m = machine();
    let small = m.path("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&small)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here (not root)");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(small.clone());
    let out = small.join("memory.lime");
    m.acquire("lime", &out)
        .failure()
        .stderr(predicates::str::contains("No space left"))
        .stderr(predicates::str::contains("writing lime image"));
    let man = manifest(&out);
    assert_eq!(man["complete"], false);
    assert!(
        man["error"].as_str().unwrap().contains("No space left"),
        "{man}"
    );
    assert!(man["finished_at"].is_string());
    assert!(
        std::fs::metadata(&out).unwrap().len() > 0,
        "what fitted is kept"
    );
}

/// `pmem SUBCOMMAND IMAGE` (info, verify), run.
#[cfg(target_os = "linux")]
fn on_image(subcommand: &str, image: &Path) -> assert_cmd::assert::Assert {
    pmem().arg(subcommand).arg(image).assert()
}

/// `pmem symbols IMAGE -o DIR`, run.
#[cfg(target_os = "linux")]
fn symbols_of(image: &Path, dir: &Path) -> assert_cmd::assert::Assert {
    pmem().arg("symbols").arg(image).arg("-o").arg(dir).assert()
}

/// The symbol bundle of an acquisition, as `pmem symbols` and `tar` read it.
#[cfg(target_os = "linux")]
fn read_bundle(path: &Path) -> pmem_symbols::bundle::Bundle {
    let tar = std::fs::read(path).unwrap();
    pmem_symbols::bundle::Bundle::from_tar(&tar, &path.display().to_string()).unwrap()
}

/// Whether this machine's kernel exports BTF (CI and developers' machines
/// do; `pmem symbols` must say why it cannot work where it does not).
#[cfg(target_os = "linux")]
fn host_has_btf() -> bool {
    std::fs::File::open("/sys/kernel/btf/vmlinux").is_ok()
}

/// Acquisition captures this machine's kernel symbols (its real /proc
/// and /sys files) before the copy: LiME has no room, so they lie beside
/// the image, owner-only, recorded in the manifest with their hash; `info`
/// says so and `pmem symbols IMAGE` turns them into an ISF.
#[cfg(target_os = "linux")]
#[test]
fn acquisition_keeps_the_kernel_symbols_beside_a_lime_image() {
    let m = machine();
    let out = m.path("memory.lime");
    m.acquire("lime", &out)
        .success()
        .stderr(predicates::str::contains("pmem: symbols captured: "));
    let sidecar = m.path("memory.lime.symbols");
    let tar = std::fs::read(&sidecar).expect("IMAGE.symbols beside the image");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&sidecar).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "kallsyms addresses defeat KASLR");
    }
    let man = manifest(&out);
    let record = &man["symbols"];
    assert_eq!(record["carried"], "sidecar", "{man}");
    assert_eq!(record["file"], sidecar.to_str().unwrap());
    assert_eq!(record["bytes"], tar.len() as u64);
    assert_eq!(record["sha256"], sha256_hex(&tar));

    // What the bundle holds is what this kernel exports, byte for byte.
    let bundle = read_bundle(&sidecar);
    assert_eq!(
        bundle.member("version"),
        Some(std::fs::read("/proc/version").unwrap().as_slice())
    );
    // The memory source's VMCOREINFO (the synthetic kcore's note).
    assert_eq!(
        bundle.member("vmcoreinfo"),
        Some(&b"OSRELEASE=6.1.0-test\nPAGESIZE=4096\n"[..])
    );
    assert!(bundle.member("kallsyms").is_some_and(|k| !k.is_empty()));
    assert_eq!(
        bundle.record.kernel_release.as_deref(),
        Some(
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap()
                .trim()
        )
    );
    assert_eq!(
        serde_json::to_value(&bundle.record).unwrap(),
        record["capture"],
        "the manifest quotes capture.json"
    );

    on_image("info", &out)
        .success()
        .stdout(predicates::str::contains("symbols:      beside the image"));
    on_image("verify", &out)
        .success()
        .stdout(predicates::str::contains("ok   symbols sha256: "));

    let isf_dir = m.path("isf");
    let symbols = symbols_of(&out, &isf_dir);
    if host_has_btf() {
        symbols
            .success()
            .stdout(predicates::str::contains(".json.xz: "));
        let written: Vec<_> = std::fs::read_dir(isf_dir.join("linux")).unwrap().collect();
        assert_eq!(written.len(), 1);
    } else {
        symbols
            .failure()
            .stderr(predicates::str::contains("CONFIG_DEBUG_INFO_BTF"));
    }
}

/// --no-symbols captures nothing; `pmem symbols` then says what it lacks.
#[cfg(target_os = "linux")]
#[test]
fn no_symbols_captures_nothing() {
    let m = machine();
    let out = m.path("memory.lime");
    m.acquire_with("lime", &out, &["--no-symbols"]).success();
    assert!(!m.path("memory.lime.symbols").exists());
    assert!(manifest(&out).get("symbols").is_none());
    symbols_of(&out, &m.path("isf"))
        .failure()
        .stderr(predicates::str::contains("carries no kernel symbols"))
        .stderr(predicates::str::contains("dwarf2json"));
}

/// Standard output has no room beside it: the symbols go to
/// --symbols-file when given, else the manifest says they were not kept.
#[cfg(target_os = "linux")]
#[test]
fn symbols_of_a_stream_go_to_symbols_file_or_are_reported_not_kept() {
    let m = machine();
    let run = |extra: &[&str], manifest: &Path| {
        let output = pmem()
            .args(["acquire", "--quiet", "--format", "lime"])
            .args(extra)
            .arg(format!("--source=kcore:{}", m.kcore.display()))
            .arg("--iomem")
            .arg(&m.iomem)
            .arg("--manifest")
            .arg(manifest)
            .arg("-")
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        output
    };
    let not_kept = run(&[], &m.path("a.json"));
    assert!(String::from_utf8_lossy(&not_kept.stderr).contains("symbols are not kept"));
    let man: Value = serde_json::from_slice(&std::fs::read(m.path("a.json")).unwrap()).unwrap();
    assert_eq!(man["symbols"]["carried"], "not_kept");

    let file = m.path("b.symbols");
    run(
        &["--symbols-file", file.to_str().unwrap()],
        &m.path("b.json"),
    );
    let man: Value = serde_json::from_slice(&std::fs::read(m.path("b.json")).unwrap()).unwrap();
    assert_eq!(man["symbols"]["carried"], "sidecar");
    assert_eq!(
        man["symbols"]["sha256"],
        sha256_hex(&std::fs::read(&file).unwrap())
    );
}

/// `convert` carries an image's symbols on: the sidecar of the output holds
/// the same bundle, byte for byte.
#[cfg(target_os = "linux")]
#[test]
fn convert_carries_the_symbols_on() {
    let m = machine();
    let lime = m.path("memory.lime");
    m.acquire("lime", &lime).success();
    let raw = m.path("memory.raw");
    pmem()
        .args(["convert", "-q", "--format", "raw"])
        .arg(&lime)
        .arg(&raw)
        .assert()
        .success();
    assert_eq!(
        std::fs::read(m.path("memory.raw.symbols")).unwrap(),
        std::fs::read(m.path("memory.lime.symbols")).unwrap()
    );
    assert_eq!(manifest(&raw)["symbols"]["carried"], "sidecar");
}

/// A damaged bundle is named with the offset where it breaks, by `pmem
/// symbols` and by `info` (which still shows the rest).
#[cfg(target_os = "linux")]
#[test]
fn a_damaged_symbols_file_is_named_with_its_offset() {
    let m = machine();
    let out = m.path("memory.lime");
    m.acquire("lime", &out).success();
    let sidecar = m.path("memory.lime.symbols");
    let mut tar = std::fs::read(&sidecar).unwrap();
    // The second member's header (capture.json is short: its header and
    // data take the first 512 + a few blocks).
    let second = 512
        + tar[124..136]
            .iter()
            .take_while(|b| **b != 0 && **b != b' ')
            .fold(0usize, |n, b| n * 8 + (b - b'0') as usize)
            .div_ceil(512)
            * 512;
    tar[second + 148] ^= 0x11; // its checksum
    std::fs::write(&sidecar, &tar).unwrap();
    symbols_of(&out, &m.path("isf"))
        .failure()
        .stderr(predicates::str::contains(sidecar.to_str().unwrap()))
        .stderr(predicates::str::contains(format!(
            "at byte offset {second}"
        )));
    on_image("info", &out)
        .success()
        .stdout(predicates::str::contains("unreadable"));
    on_image("verify", &out)
        .failure()
        .stdout(predicates::str::contains("FAIL symbols sha256: "));
    // The memory still converts; the damaged bundle is said and left.
    let raw = m.path("memory.raw");
    pmem()
        .args(["convert", "-q", "--format", "raw"])
        .arg(&out)
        .arg(&raw)
        .assert()
        .success()
        .stderr(predicates::str::contains("symbols are not carried over"));
    assert!(!m.path("memory.raw.symbols").exists());
    assert!(manifest(&raw).get("symbols").is_none());
}

/// ELF has room: the bundle is inside the image (no sidecar), `info` and
/// `pmem symbols` find it there, and `convert` to LiME puts the same bytes
/// beside the LiME image.
#[cfg(target_os = "linux")]
#[test]
fn an_elf_image_carries_its_symbols_inside() {
    let m = machine();
    let elf = m.path("memory.elf");
    m.acquire("elf", &elf).success();
    assert!(!m.path("memory.elf.symbols").exists());
    let man = manifest(&elf);
    assert_eq!(man["symbols"]["carried"], "image", "{man}");
    assert!(man["symbols"].get("file").is_none());
    let info = info_json(&elf);
    assert_eq!(info["symbols"]["where"], "image", "{info}");
    on_image("verify", &elf)
        .success()
        .stdout(predicates::str::contains("ok   symbols sha256: "));
    assert_eq!(info["symbols"]["bytes"], man["symbols"]["bytes"]);

    let lime = m.path("memory.lime");
    pmem()
        .args(["convert", "-q", "--format", "lime"])
        .arg(&elf)
        .arg(&lime)
        .assert()
        .success();
    let sidecar = std::fs::read(m.path("memory.lime.symbols")).unwrap();
    assert_eq!(sha256_hex(&sidecar), man["symbols"]["sha256"]);
    assert_eq!(
        manifest(&lime)["symbols"]["sha256"],
        man["symbols"]["sha256"]
    );
}

#[test]
fn convert_carries_the_time_map_and_the_reread_on() {
    let m = machine();
    let elf = m.path("timed.elf");
    m.acquire_with("elf", &elf, &["--reread", "--order", "kernel-first"])
        .success();
    let acquired = manifest(&elf);
    assert_eq!(acquired["time_map"]["order"], "kernel-first");
    // From the ELF image's note: AFF4 carries it in the volume, LiME only
    // in its manifest. The re-read travels in the manifest.
    for (format, name, from) in [
        ("aff4", "timed.aff4", "image"),
        ("lime", "timed.lime", "manifest"),
    ] {
        let out = m.path(name);
        pmem()
            .args(["convert", "-q", "--format", format])
            .arg(&elf)
            .arg(&out)
            .assert()
            .success();
        let converted = manifest(&out);
        assert_eq!(converted["time_map"], acquired["time_map"], "{format}");
        assert_eq!(converted["reread"], acquired["reread"], "{format}");
        let info = info_json(&out);
        assert_eq!(info["time_map"], acquired["time_map"], "{format}");
        assert_eq!(info["time_map_from"], from, "{format}");
    }
    // From a LiME image's manifest into an ELF image: the image now holds
    // it on its own.
    let back = m.path("back.elf");
    pmem()
        .args(["convert", "-q", "--format", "elf"])
        .arg(m.path("timed.lime"))
        .arg(&back)
        .assert()
        .success();
    std::fs::remove_file(m.path("back.elf.json")).unwrap();
    let info = info_json(&back);
    assert_eq!(info["time_map"], acquired["time_map"]);
    assert_eq!(info["time_map_from"], "image");
    // An input without one gives an output without one.
    let bare = m.path("bare.lime");
    std::fs::copy(m.path("timed.lime"), &bare).unwrap();
    let plain = m.path("plain.elf");
    pmem()
        .args(["convert", "-q", "--format", "elf"])
        .arg(&bare)
        .arg(&plain)
        .assert()
        .success();
    assert!(manifest(&plain).get("time_map").is_none());
    assert!(manifest(&plain).get("reread").is_none());
    assert_eq!(info_json(&plain)["time_map"], Value::Null);
}

#[test]
fn acquire_records_the_time_map_and_rereads_in_kernel_first_order() {
    let m = machine();
    let plain = m.path("address.lime");
    m.acquire("lime", &plain).success();
    let man = manifest(&plain);
    let t = &man["time_map"];
    assert_eq!(t["order"], "address");
    // The regions follow the ranges (none is over 64 MiB here).
    let regions = t["regions"].as_array().unwrap();
    assert_eq!(regions.len(), acquired_ranges().len());
    assert_eq!(regions[1]["start"], "0x100000");
    assert!(regions
        .iter()
        .all(|r| r["first_ms"].as_f64().unwrap() <= r["last_ms"].as_f64().unwrap()));
    // iomem's Kernel code and rodata, as one span.
    assert_eq!(t["kernel"]["ranges"][0]["start"], "0x200000");
    assert_eq!(t["kernel"]["ranges"][0]["last"], "0x37ffff");
    assert_eq!(t["kernel"]["buffered_bytes"], 0);
    assert!(man.get("reread").is_none());

    let out = m.path("kernel-first.elf");
    let assert = m
        .acquire_with("elf", &out, &["--reread", "--order", "kernel-first"])
        .success();
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
    assert!(stderr.contains("pmem: re-read: 0 of "), "{stderr}");
    let man = manifest(&out);
    assert_eq!(man["time_map"]["order"], "kernel-first");
    assert_eq!(man["time_map"]["kernel"]["buffered_bytes"], 0x180000);
    let pages: u64 = acquired_ranges().iter().map(|r| r.len() / 4096).sum();
    let reread = &man["reread"];
    assert_eq!(reread["pages_compared"], pages);
    assert_eq!(reread["pages_changed"], 0);
    assert_eq!(reread["ratio"], 0.0);
    assert_eq!(reread["changed_pages"], Value::Array(vec![]));
    assert_eq!(reread["regions"].as_array().unwrap().len(), 3);
    // The re-read left the image as the manifest hashed it.
    pmem().arg("verify").arg(&out).assert().success();
    // The ELF image carries the time map; info summarises it.
    let info = pmem().arg("info").arg(&out).assert().success();
    let text = String::from_utf8_lossy(&info.get_output().stdout).to_string();
    assert!(
        text.contains("kernel-first order; from the image"),
        "{text}"
    );
    assert!(
        text.contains("kernel:       its image (1.5 MiB in 1 range(s))"),
        "{text}"
    );
    assert!(text.contains("re-read:      0 of "), "{text}");
    let info = pmem().args(["info", "--json"]).arg(&out).assert().success();
    let json: Value = serde_json::from_slice(&info.get_output().stdout).unwrap();
    assert_eq!(json["time_map"], man["time_map"]);

    // The same memory as an address-order copy, byte for byte.
    let lime = m.path("kernel-first.lime");
    m.acquire_with("lime", &lime, &["--order", "kernel-first"])
        .success();
    assert_eq!(
        std::fs::read(&lime).unwrap(),
        std::fs::read(&plain).unwrap()
    );
}
