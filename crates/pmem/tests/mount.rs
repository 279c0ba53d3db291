//! `pmem mount` end to end: the served files against the memory they come
//! from (a synthetic kcore whose bytes the test knows and changes, and the
//! FUSE fault fixture for an unreadable page), against what `pmem acquire`
//! writes of the same memory, through pmem's own readers, and the ways a
//! mount ends (SIGTERM, SIGINT, umount).
//!
//! Needs root and /dev/fuse (CI runs as root, where it exists); without
//! /dev/fuse each test prints why and passes.
#![cfg(target_os = "linux")]

use pmem_core::{Arch, Range};
use pmem_fault_fuse::{Action, Fault, FaultFs, Options};
use pmem_sources::testing::{pattern, KcoreBuilder, Segment};
use serde_json::Value;
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::pmem;

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;
/// A mount that is not up, or a server that has not ended, after this is
/// a hang.
const TIMEOUT: Duration = Duration::from_secs(60);

const IOMEM: &str = "\
00000000-00000fff : Reserved
00001000-0009efff : System RAM
0009f000-000fffff : Reserved
00100000-008fffff : System RAM
  00200000-002fffff : Kernel code
00900000-00ffffff : Reserved
04000000-041fffff : System RAM
";

fn ram() -> Vec<Range> {
    vec![
        Range::new(0x1000, 0x9f000).unwrap(),
        Range::new(MIB, 9 * MIB).unwrap(),
        Range::new(0x400_0000, 0x420_0000).unwrap(),
    ]
}

fn have_fuse() -> bool {
    let ok = Path::new("/dev/fuse").exists();
    if !ok {
        println!("skipped: /dev/fuse is missing (pmem mount needs FUSE and root)");
    }
    ok
}

/// A kcore file and an iomem in `dir`.
fn machine(dir: &Path) -> (PathBuf, PathBuf) {
    let kcore = dir.join("kcore");
    let iomem = dir.join("iomem");
    std::fs::write(&iomem, IOMEM).unwrap();
    let mut builder =
        KcoreBuilder::new(Arch::X86_64).vmcoreinfo(b"OSRELEASE=6.1.0-test\nPAGESIZE=4096\n");
    for range in ram() {
        builder = builder.segment(Segment::ram(range.start, range.len()));
    }
    builder.write(&kcore).unwrap();
    (kcore, iomem)
}

/// A running `pmem mount`, killed (and its mount detached) if the test
/// fails before it ends it.
struct Mounted {
    child: Option<Child>,
    dir: PathBuf,
}

impl Mounted {
    fn start(kcore: &Path, iomem: &Path, dir: PathBuf) -> Mounted {
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pmem"));
        // Started as a shell starts `pmem mount ... &`: with SIGINT
        // ignored. `kill -INT` must end it all the same.
        // SAFETY: only an async-signal-safe call between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_IGN);
                Ok(())
            });
        }
        let child = cmd
            .arg("mount")
            .arg(format!("--source=kcore:{}", kcore.display()))
            .arg("--iomem")
            .arg(iomem)
            .arg("--no-symbols")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut mounted = Mounted {
            child: Some(child),
            dir,
        };
        let started = Instant::now();
        while !mounted.path("info.json").exists() {
            if let Some(status) = mounted.child.as_mut().unwrap().try_wait().unwrap() {
                let out = mounted.child.take().unwrap().wait_with_output().unwrap();
                panic!(
                    "pmem mount ended ({status}) before serving: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            assert!(started.elapsed() < TIMEOUT, "the mount did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        mounted
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn is_mounted(&self) -> bool {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let dir = self.dir.canonicalize().unwrap_or(self.dir.clone());
        mounts
            .lines()
            .any(|l| l.split(' ').nth(1) == Some(dir.to_str().unwrap()))
    }

    fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().unwrap().id() as i32;
        // SAFETY: signalling our own child.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// Waits for the server to end; its exit status and stderr.
    fn wait(&mut self) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > TIMEOUT {
                let _ = child.kill();
                panic!("pmem mount did not end");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let path = std::ffi::CString::new(self.dir.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path; failing is fine (not mounted).
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    }
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let file = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset).unwrap();
    buf
}

/// The file offset of the kcore segment holding physical `phys` at its
/// start (read from the ELF program headers, by hand).
fn kcore_offset(kcore: &Path, phys: u64) -> u64 {
    let bytes = std::fs::read(kcore).unwrap();
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
    let u16_at = |o: usize| u16::from_le_bytes(bytes[o..o + 2].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20) as usize, u16_at(0x36), u16_at(0x38));
    (0..phnum)
        .map(|i| phoff + i * phentsize)
        .find(|&ph| bytes[ph..ph + 4] == [1, 0, 0, 0] && u64_at(ph + 24) == phys)
        .map(|ph| u64_at(ph + 8))
        .expect("a PT_LOAD at that physical address")
}

#[test]
fn serves_live_memory_as_raw_lime_and_elf() {
    if !have_fuse() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (kcore, iomem) = machine(tmp.path());
    let mut mounted = Mounted::start(&kcore, &iomem, tmp.path().join("mnt"));

    // Only the mounting user may read, nobody may write.
    for name in [
        "memory.raw",
        "memory.lime",
        "memory.elf",
        "iomem",
        "vmcoreinfo",
    ] {
        let meta = std::fs::metadata(mounted.path(name)).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
            0o400,
            "{name}"
        );
        let refused = std::fs::OpenOptions::new()
            .write(true)
            .open(mounted.path(name))
            .unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::EROFS), "{name}");
    }
    assert_eq!(
        std::fs::read_to_string(mounted.path("iomem")).unwrap(),
        IOMEM
    );
    assert_eq!(
        std::fs::read(mounted.path("vmcoreinfo")).unwrap(),
        b"OSRELEASE=6.1.0-test\nPAGESIZE=4096\n"
    );

    // memory.raw: file offset == physical address, holes are zeros.
    let raw = std::fs::read(mounted.path("memory.raw")).unwrap();
    assert_eq!(raw.len() as u64, 0x420_0000);
    let mut at = 0u64;
    for range in ram() {
        assert!(raw[at as usize..range.start as usize]
            .iter()
            .all(|&b| b == 0));
        assert_eq!(
            raw[range.start as usize..range.end as usize],
            pattern(range.start, range.len() as usize)[..],
            "RAM at {:#x}",
            range.start
        );
        at = range.end;
    }
    // A read straddling a hole and RAM, not page-aligned.
    assert_eq!(
        read_at(&mounted.path("memory.raw"), 0x9f000 - 100, 200)[..100],
        pattern(0x9f000 - 100, 100)[..]
    );

    // memory.lime is what `pmem acquire --format lime` writes of it.
    let acquired = tmp.path().join("acquired.lime");
    pmem()
        .args([
            "acquire",
            "--quiet",
            "--no-hash",
            "--no-symbols",
            "--format",
            "lime",
        ])
        .arg(format!("--source=kcore:{}", kcore.display()))
        .arg("--iomem")
        .arg(&iomem)
        .arg(&acquired)
        .assert()
        .success();
    assert!(
        std::fs::read(mounted.path("memory.lime")).unwrap() == std::fs::read(&acquired).unwrap()
    );

    // memory.elf opens in pmem's readers and holds the same memory.
    let info = pmem()
        .args(["info", "--json"])
        .arg(mounted.path("memory.elf"))
        .output()
        .unwrap();
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    let converted = tmp.path().join("from-elf.raw");
    pmem()
        .args(["convert", "--quiet", "--format", "raw"])
        .arg(mounted.path("memory.elf"))
        .arg(&converted)
        .assert()
        .success();
    assert!(std::fs::read(&converted).unwrap() == raw);

    // Live: a change of the source is seen by the next read of the same
    // open file (no page cache: FUSE drops it on open, not between reads).
    let page = 0x400_0000 + 5 * PAGE;
    let raw_file = std::fs::File::open(mounted.path("memory.raw")).unwrap();
    let mut before = vec![0u8; PAGE as usize];
    raw_file.read_exact_at(&mut before, page).unwrap();
    let offset = kcore_offset(&kcore, 0x400_0000) + 5 * PAGE;
    assert!(read_at(&kcore, offset, PAGE as usize) == before);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&kcore)
        .unwrap();
    file.write_all_at(&[0xab; PAGE as usize], offset).unwrap();
    drop(file);
    let mut after = vec![0u8; PAGE as usize];
    raw_file.read_exact_at(&mut after, page).unwrap();
    assert!(
        after == vec![0xab; PAGE as usize],
        "a change is seen at once"
    );
    let lime = read_at(&mounted.path("memory.lime"), 0, 64);
    assert_eq!(&lime[..4], b"EMiL");

    // info.json: where the memory comes from and what was served.
    let info: Value =
        serde_json::from_slice(&std::fs::read(mounted.path("info.json")).unwrap()).unwrap();
    assert_eq!(info["origin"]["source"]["kind"], "kcore");
    assert_eq!(info["memory_map"].as_array().unwrap().len(), 3);
    assert!(info["served"]["read_requests"].as_u64().unwrap() > 0);
    assert_eq!(info["served"]["unreadable_pages"], 0);
    let files: Vec<&str> = info["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        files,
        [
            "memory.raw",
            "memory.lime",
            "memory.elf",
            "iomem",
            "vmcoreinfo"
        ]
    );

    // SIGTERM unmounts and ends the server.
    assert!(mounted.is_mounted());
    mounted.signal(libc::SIGTERM);
    let (status, stderr) = mounted.wait();
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("unmounted (SIGTERM)"), "{stderr}");
    assert!(!mounted.is_mounted());
}

#[test]
fn an_unreadable_page_reads_as_zeros_and_is_counted() {
    if !have_fuse() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let bad = 2 * MIB + 3 * PAGE;
    std::fs::create_dir_all(tmp.path().join("faulty")).unwrap();
    let faulty = FaultFs::mount(
        &tmp.path().join("faulty"),
        &[Range::new(MIB, 4 * MIB).unwrap()],
        vec![Fault::page(bad, Action::Errno(libc::EIO))],
        Options::default(),
    )
    .expect("mounting the FUSE kcore (root?)");
    let mut mounted = Mounted::start(&faulty.kcore, &faulty.iomem, tmp.path().join("mnt"));
    let raw = std::fs::read(mounted.path("memory.raw")).unwrap();
    assert_eq!(raw.len() as u64, 4 * MIB);
    for page in (MIB..4 * MIB).step_by(PAGE as usize) {
        let got = &raw[page as usize..(page + PAGE) as usize];
        if page == bad {
            assert!(got.iter().all(|&b| b == 0), "the unreadable page is zeros");
        } else {
            assert_eq!(got, pattern(page, PAGE as usize), "page {page:#x}");
        }
    }
    let info: Value =
        serde_json::from_slice(&std::fs::read(mounted.path("info.json")).unwrap()).unwrap();
    assert_eq!(info["served"]["unreadable_pages"], 1, "{info}");

    // SIGINT ends it like SIGTERM.
    mounted.signal(libc::SIGINT);
    let (status, stderr) = mounted.wait();
    assert!(status.success(), "{status}: {stderr}");
    assert!(!mounted.is_mounted());
}

#[test]
fn umount_ends_the_server() {
    if !have_fuse() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (kcore, iomem) = machine(tmp.path());
    let mut mounted = Mounted::start(&kcore, &iomem, tmp.path().join("mnt"));
    let status = Command::new("umount").arg(&mounted.dir).status().unwrap();
    assert!(status.success());
    let (status, stderr) = mounted.wait();
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("was unmounted"), "{stderr}");
}

#[test]
fn mounting_on_a_missing_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nowhere");
    let out = pmem().arg("mount").arg(&missing).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nowhere: not a directory"), "{stderr}");
}

#[test]
fn write_is_refused_without_the_modules_write_build() {
    let tmp = tempfile::tempdir().unwrap();
    let (kcore, iomem) = machine(tmp.path());
    let dir = tmp.path().join("mnt");
    std::fs::create_dir(&dir).unwrap();
    let out = pmem()
        .args(["mount", "--write", "--no-symbols"])
        .arg(format!("--source=kcore:{}", kcore.display()))
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--write writes through pmem's module only"),
        "{stderr}"
    );
    if !have_fuse() || std::path::Path::new("/sys/module/pmem_phys").exists() {
        return;
    }
    // --write means --source module: here the module is not loaded, and
    // nothing is mounted.
    let out = pmem()
        .args(["mount", "--write", "--no-symbols", "--iomem"])
        .arg(&iomem)
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("module is not loaded"), "{stderr}");
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(dir.to_str().unwrap()), "{mounts}");
}
