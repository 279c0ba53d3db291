//! The agent's commands (Linux only: pagemap, mlock, /proc).

use crate::bench;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The harness assumes x86-64's 4 KiB base pages (checked at run time).
const PAGE_SIZE: usize = 4096;
const MAGIC: &[u8; 8] = b"PMEMMARK";
const HEADER_LEN: usize = 32;
// The body is exactly 127 SHA-256 blocks: no partial block to specify.
const _: () = assert!((PAGE_SIZE - HEADER_LEN) % 32 == 0);

/// pagemap entry: bit 63 = present, bits 0..=54 = page frame number.
const PM_PRESENT: u64 = 1 << 63;
const PM_PFN_MASK: u64 = (1 << 55) - 1;

/// Fills one page with the deterministic content described in the crate docs.
fn fill_page(seed: u64, index: u64, count: u64, page: &mut [u8]) {
    assert_eq!(page.len(), PAGE_SIZE);
    page[0..8].copy_from_slice(MAGIC);
    page[8..16].copy_from_slice(&seed.to_le_bytes());
    page[16..24].copy_from_slice(&index.to_le_bytes());
    page[24..32].copy_from_slice(&count.to_le_bytes());
    let mut input = [0u8; 24];
    input[0..8].copy_from_slice(&seed.to_le_bytes());
    input[8..16].copy_from_slice(&index.to_le_bytes());
    for (j, block) in page[HEADER_LEN..].chunks_exact_mut(32).enumerate() {
        input[16..24].copy_from_slice(&(j as u64).to_le_bytes());
        block.copy_from_slice(&Sha256::digest(input));
    }
}

/// Anonymous memory of base pages, populated and locked on request: the
/// marker pages, and the churn command's buffer.
pub(crate) struct Planted {
    ptr: *mut u8,
    len: usize,
}

impl Planted {
    pub(crate) fn map(pages: usize) -> Result<Self, String> {
        let len = pages * PAGE_SIZE;
        // SAFETY: a fresh private anonymous mapping; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!("mmap of {len} bytes: {}", errno()));
        }
        // Huge pages would be split or collapsed behind our back by
        // khugepaged, moving frames; ask for base pages only. Failure is not
        // fatal (the host also sets THP to "never"), the frame re-check
        // catches any move anyway.
        // SAFETY: the range is the mapping created above.
        unsafe { libc::madvise(ptr, len, libc::MADV_NOHUGEPAGE) };
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }

    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr/len describe a live read-write mapping owned by self,
        // and &mut self makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    pub(crate) fn lock(&self) -> Result<(), String> {
        // SAFETY: the range is our own mapping.
        if unsafe { libc::mlock(self.ptr.cast(), self.len) } != 0 {
            return Err(format!("mlock of {} bytes: {}", self.len, errno()));
        }
        Ok(())
    }

    /// Physical frame of every page, from /proc/self/pagemap.
    pub(crate) fn frames(&self) -> Result<Vec<u64>, String> {
        let pagemap = File::open("/proc/self/pagemap")
            .map_err(|e| format!("open /proc/self/pagemap: {e}"))?;
        let pages = self.len / PAGE_SIZE;
        let mut raw = vec![0u8; pages * 8];
        let offset = (self.ptr as u64 / PAGE_SIZE as u64) * 8;
        pagemap
            .read_exact_at(&mut raw, offset)
            .map_err(|e| format!("read /proc/self/pagemap: {e}"))?;
        raw.chunks_exact(8)
            .enumerate()
            .map(|(index, entry)| {
                let entry = u64::from_le_bytes(entry.try_into().expect("8-byte chunk"));
                let pfn = entry & PM_PFN_MASK;
                if entry & PM_PRESENT == 0 {
                    Err(format!("marker page {index} is not present in RAM"))
                } else if pfn == 0 {
                    // The kernel hides frame numbers from processes without
                    // CAP_SYS_ADMIN by reporting 0.
                    Err("pagemap reports frame 0: the agent must run as root".into())
                } else {
                    Ok(pfn)
                }
            })
            .collect()
    }
}

impl Drop for Planted {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping exactly once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

struct Args {
    seed: u64,
    pages: usize,
    list: PathBuf,
    ready: PathBuf,
    release: PathBuf,
    report: PathBuf,
    timeout: Duration,
}

const USAGE: &str = "usage: pmem-guest-agent plant --seed N --pages N --list PATH \
--ready PATH --release PATH --report PATH [--timeout-secs N]";

fn parse_u64(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|e| format!("bad number {text:?}: {e}"))
}

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    if argv.next().as_deref() != Some("plant") {
        return Err(USAGE.into());
    }
    let (mut seed, mut pages, mut list, mut ready, mut release, mut report) =
        (None, None, None, None, None, None);
    let mut timeout = Duration::from_secs(3600);
    while let Some(flag) = argv.next() {
        let value = argv
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--seed" => seed = Some(parse_u64(&value)?),
            "--pages" => pages = Some(parse_u64(&value)? as usize),
            "--list" => list = Some(PathBuf::from(value)),
            "--ready" => ready = Some(PathBuf::from(value)),
            "--release" => release = Some(PathBuf::from(value)),
            "--report" => report = Some(PathBuf::from(value)),
            "--timeout-secs" => timeout = Duration::from_secs(parse_u64(&value)?),
            _ => return Err(format!("unknown option {flag}\n{USAGE}")),
        }
    }
    let missing = |name: &str| format!("missing {name}\n{USAGE}");
    Ok(Args {
        seed: seed.ok_or_else(|| missing("--seed"))?,
        pages: pages.ok_or_else(|| missing("--pages"))?,
        list: list.ok_or_else(|| missing("--list"))?,
        ready: ready.ok_or_else(|| missing("--ready"))?,
        release: release.ok_or_else(|| missing("--release"))?,
        report: report.ok_or_else(|| missing("--report"))?,
        timeout,
    })
}

/// Writes `text` to `path` durably: the host reads the data disk after a
/// hard power-off, so nothing may be left in the page cache.
fn write_durably(path: &Path, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).map_err(|e| format!("create {}: {e}", tmp.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("write {}: {e}", tmp.display()))?;
    fs::rename(&tmp, path).map_err(|e| format!("rename to {}: {e}", path.display()))
}

fn marker_list(args: &Args, frames: &[u64]) -> String {
    let mut text = format!(
        "# pmem guest markers v1: page index, physical frame number (hex)\n\
         seed {:#x}\npages {}\npage_size {PAGE_SIZE}\n",
        args.seed, args.pages
    );
    for (index, pfn) in frames.iter().enumerate() {
        text.push_str(&format!("{index} {pfn:#x}\n"));
    }
    text
}

fn run(args: &Args) -> Result<bool, String> {
    // SAFETY: sysconf has no preconditions.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if page_size != PAGE_SIZE as libc::c_long {
        return Err(format!(
            "page size is {page_size}, the marker format needs 4096"
        ));
    }
    let started = Instant::now();
    let mut planted = Planted::map(args.pages)?;
    let count = args.pages as u64;
    for (index, page) in planted.bytes_mut().chunks_exact_mut(PAGE_SIZE).enumerate() {
        fill_page(args.seed, index as u64, count, page);
    }
    planted.lock()?;
    // The rest of the agent (its stack, with argv and the environment at the
    // top) is locked too: with compact_unevictable_allowed=0 compaction never
    // moves locked pages, so Volatility's linux.psaux and linux.envars read
    // them in an image taken while the guest writes GiBs of page cache.
    // SAFETY: mlockall has no memory-safety preconditions.
    if unsafe { libc::mlockall(libc::MCL_CURRENT) } != 0 {
        return Err(format!("mlockall: {}", errno()));
    }
    let before = planted.frames()?;
    let mut distinct = before.clone();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() != before.len() {
        return Err("two marker pages share a physical frame".into());
    }
    write_durably(&args.list, &marker_list(args, &before))?;
    write_durably(&args.ready, "ready\n")?;
    eprintln!(
        "pmem-guest-agent: planted {} pages (seed {:#x}) in {:.1}s, waiting for {}",
        args.pages,
        args.seed,
        started.elapsed().as_secs_f64(),
        args.release.display()
    );

    let waiting = Instant::now();
    while !args.release.exists() {
        if waiting.elapsed() > args.timeout {
            return Err(format!(
                "{} did not appear within {:?}",
                args.release.display(),
                args.timeout
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // Only the frames are re-checked here: the content is checked by the host
    // in QEMU's dump, taken after every acquisition while the pages were held.
    let after = planted.frames()?;
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    let ok = moved == 0;
    let report = format!(
        "pages {}\nframes_moved {moved}\nresult {}\n",
        args.pages,
        if ok { "ok" } else { "FAIL" }
    );
    write_durably(&args.report, &report)?;
    eprintln!("pmem-guest-agent: frames moved since planting: {moved}");
    Ok(ok)
}

/// A command of the agent: its arguments (the name first), then what
/// went wrong.
type Command = fn(&[String]) -> Result<(), String>;

pub fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    // The commands besides `plant`, each its own module.
    let command: Option<Command> = match argv.first().map(String::as_str) {
        Some("measure" | "read-kcore" | "hash-speed") => Some(bench::main),
        Some("churn") => Some(crate::churn::main),
        Some("live-page") => Some(crate::live_page::main),
        _ => None,
    };
    if let Some(run) = command {
        return match run(&argv) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("pmem-guest-agent: {}: {message}", argv[0]);
                ExitCode::FAILURE
            }
        };
    }
    let args = match parse_args(argv.into_iter()) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("pmem-guest-agent: {message}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("pmem-guest-agent: error: {message}");
            // Leave the reason where the host looks for it.
            let _ = write_durably(&args.report, &format!("result FAIL\nerror {message}\n"));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the page format: `testing/guest/markers.py` must produce the same
    /// bytes (its self-test checks the same digest).
    #[test]
    fn page_format_is_stable() {
        let mut page = vec![0u8; PAGE_SIZE];
        fill_page(0x1234, 7, 16384, &mut page);
        assert_eq!(&page[0..8], b"PMEMMARK");
        assert_eq!(u64::from_le_bytes(page[16..24].try_into().unwrap()), 7);
        let digest: String = Sha256::digest(&page)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(digest, PAGE_DIGEST_SEED_0X1234_INDEX_7);
    }

    const PAGE_DIGEST_SEED_0X1234_INDEX_7: &str =
        "d6e2495a659506154b9b598d66aa54982738ade19eb306f627cbc6ede33a9ba9";

    #[test]
    fn arguments_parse() {
        let argv = "plant --seed 0x10 --pages 3 --list l --ready r --release x --report p"
            .split(' ')
            .map(String::from);
        let args = parse_args(argv).unwrap();
        assert_eq!((args.seed, args.pages), (16, 3));
        assert!(parse_args(["plant".to_string()].into_iter()).is_err());
    }
}
