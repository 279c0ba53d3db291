//! `pmem mount` (Linux): this machine's physical memory as files, for
//! analysis tools that take an image path and should see the live machine.
//!
//! A read-only FUSE file system serves `memory.raw` (file offset ==
//! physical address, holes read as zeros), `memory.lime` and `memory.elf`
//! (pmem_formats' [`ImageView`]s of the same memory: the formats' headers,
//! with the data read when a tool reads it), `iomem`, `vmcoreinfo`,
//! `symbols.tar` (the bundle `pmem symbols` turns into an ISF; also inside
//! memory.elf) and `info.json` (where the memory comes from, the map, and
//! what was served so far).
//!
//! Every read goes to the source, never to a cache (FUSE direct I/O: live
//! means live), with acquisition's page retry: an unreadable page reads as
//! zeros and is counted in info.json. Only the user who mounted (root) may
//! read: files are 0400 and the mount has no allow_other. fuser mounts
//! through /dev/fuse itself, without libfuse or fusermount.

use crate::carried_symbols::{fits_inside, CarriedSymbols};
use crate::manifest::{Origin, RangeJson};
use anyhow::{bail, Context, Result};
use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo, LockOwner,
    MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen,
};
use pmem_core::{read_or_zero, PhysicalMemory, Range, PAGE_SIZE};
use pmem_formats::{Format, ImageView, ViewPiece};
use serde::Serialize;
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, UNIX_EPOCH};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "auto", help = crate::acquire::source_help())]
    source: String,
    /// Read the physical memory map from this file instead of /proc/iomem.
    #[arg(long)]
    iomem: Option<PathBuf>,
    /// Do not capture the kernel's symbols (symbols.tar, and the copy
    /// inside memory.elf).
    #[arg(long)]
    no_symbols: bool,
    /// An existing directory to mount on. pmem serves until it is
    /// unmounted (`umount DIR`) or gets SIGINT or SIGTERM (it unmounts).
    mountpoint: PathBuf,
}

pub fn run(args: Args) -> Result<ExitCode> {
    if !args.mountpoint.is_dir() {
        bail!(
            "{}: not a directory (mount on an existing directory)",
            args.mountpoint.display()
        );
    }
    if !std::path::Path::new("/dev/fuse").exists() {
        bail!("/dev/fuse does not exist: load the FUSE module first (modprobe fuse)");
    }
    // Before any thread starts: the threads inherit the blocked mask, so
    // only this thread takes SIGINT and SIGTERM (sigtimedwait below).
    let signals = block_signals();
    let mut live = crate::live::open(
        &pmem_sources::LiveRequest {
            source: args.source.clone(),
            map_path: args.iomem.clone(),
            ..Default::default()
        },
        crate::host::now(),
    )?;
    let iomem_path = args.iomem.clone().unwrap_or("/proc/iomem".into());
    let iomem =
        std::fs::read(&iomem_path).with_context(|| format!("reading {}", iomem_path.display()))?;
    let symbols = (!args.no_symbols)
        .then(|| CarriedSymbols::capture(live.plan.vmcoreinfo.as_deref()))
        .map(|symbols| {
            if fits_inside(Format::Elf, &symbols) {
                live.plan.symbols = Some(symbols.tar.clone());
            }
            symbols.tar
        });
    // The plan by value: its copy of the bundle is in memory.elf's header
    // once the views are laid out, and is freed here, not held while serving.
    let fs = MemoryFs::new(live.memory, live.plan, live.origin, iomem, symbols)?;
    let names: Vec<&str> = fs.files.iter().map(|f| f.name).collect();

    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("pmem".into()),
        MountOption::Subtype("pmem".into()),
        MountOption::RO,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::NoExec,
        MountOption::DefaultPermissions,
    ];
    let session = fuser::spawn_mount(fs, &args.mountpoint, &config).with_context(|| {
        format!(
            "mounting on {} (pmem mounts through /dev/fuse itself: run it as root)",
            args.mountpoint.display()
        )
    })?;
    eprintln!(
        "pmem: serving this machine's memory at {}: {}. Ctrl-C, SIGTERM or `umount {}` ends it.",
        args.mountpoint.display(),
        names.join(", "),
        args.mountpoint.display()
    );
    loop {
        if session.guard.is_finished() {
            session.join().context("serving the mount")?;
            eprintln!("pmem: {} was unmounted", args.mountpoint.display());
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(signal) = wait_signal(&signals, Duration::from_millis(200)) {
            if let Err(err) = session.umount_and_join() {
                // Busy (a tool still has a file open): detach it, so the
                // mount goes as soon as the last file is closed.
                eprintln!(
                    "pmem: unmounting {}: {err}; detaching it instead",
                    args.mountpoint.display()
                );
                detach(&args.mountpoint)?;
            }
            eprintln!("pmem: {} unmounted ({signal})", args.mountpoint.display());
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// Blocks SIGINT and SIGTERM in this thread (and so in the threads it
/// starts), to be taken by [`wait_signal`]. (Also when started with
/// SIGINT ignored, as a shell starts `pmem mount DIR &`: Linux keeps a
/// blocked signal pending even if ignored.)
fn block_signals() -> libc::sigset_t {
    // SAFETY: plain libc calls on a sigset_t owned here.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// The name of a blocked signal that arrived within `timeout`.
fn wait_signal(set: &libc::sigset_t, timeout: Duration) -> Option<&'static str> {
    let timeout = libc::timespec {
        // `as _`: time_t is deprecated on musl (its width will change).
        tv_sec: timeout.as_secs() as _,
        tv_nsec: timeout.subsec_nanos() as _,
    };
    // SAFETY: `set` and `timeout` are valid for the call; no siginfo asked.
    match unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &timeout) } {
        libc::SIGINT => Some("SIGINT"),
        libc::SIGTERM => Some("SIGTERM"),
        _ => None,
    }
}

/// Lazy unmount of `path`.
fn detach(path: &std::path::Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("detaching {}", path.display()));
    }
    Ok(())
}

/// What a served file holds.
enum Content {
    /// An image of the memory, read on demand.
    View(ImageView),
    /// Bytes fixed at mount time.
    Fixed(Vec<u8>),
    /// info.json, made when read.
    Info,
}

struct ServedFile {
    name: &'static str,
    content: Content,
}

/// What has been served, for info.json.
#[derive(Default)]
struct Served {
    read_requests: u64,
    bytes_read: u64,
    unreadable_reads: u64,
    /// Pages found unreadable (addresses), each counted once.
    unreadable_pages: BTreeSet<u64>,
}

#[derive(Serialize)]
struct InfoJson<'a> {
    origin: &'a Origin,
    /// The ranges the memory files hold (System RAM as the source reads it).
    memory_map: Vec<RangeJson>,
    files: Vec<FileJson>,
    served: ServedJson,
}

#[derive(Serialize)]
struct FileJson {
    name: &'static str,
    bytes: u64,
}

#[derive(Serialize)]
struct ServedJson {
    read_requests: u64,
    bytes_read: u64,
    /// Source reads that found an unreadable page (served as zeros).
    unreadable_reads: u64,
    /// Distinct pages found unreadable so far.
    unreadable_pages: u64,
}

struct Io {
    memory: Box<dyn PhysicalMemory>,
    /// A reply's bytes.
    out: Vec<u8>,
    /// A source request widened to whole pieces, when the reply's is not.
    scratch: Vec<u8>,
}

struct MemoryFs {
    files: Vec<ServedFile>,
    /// The source and the buffers reads are served from (reused: a fresh
    /// 1 MiB buffer per request costs its page faults every time).
    io: Mutex<Io>,
    /// Source requests are whole multiples of this (a page, or the
    /// source's read granularity if larger).
    piece: u64,
    origin: Origin,
    memory_map: Vec<RangeJson>,
    served: Mutex<Served>,
    uid: u32,
    gid: u32,
}

const ROOT: INodeNo = INodeNo::ROOT;
/// Attributes of files whose length never changes.
const TTL: Duration = Duration::from_secs(1);

impl MemoryFs {
    fn new(
        memory: Box<dyn PhysicalMemory>,
        plan: pmem_core::Plan,
        origin: Origin,
        iomem: Vec<u8>,
        symbols: Option<Vec<u8>>,
    ) -> Result<MemoryFs> {
        let mut files = Vec::new();
        for (name, format) in [
            ("memory.raw", Format::Raw),
            ("memory.lime", Format::Lime),
            ("memory.elf", Format::Elf),
        ] {
            let view =
                ImageView::new(format, &plan).with_context(|| format!("laying out {name}"))?;
            files.push(ServedFile {
                name,
                content: Content::View(view),
            });
        }
        files.push(ServedFile {
            name: "iomem",
            content: Content::Fixed(iomem),
        });
        if let Some(vmcoreinfo) = plan.vmcoreinfo {
            files.push(ServedFile {
                name: "vmcoreinfo",
                content: Content::Fixed(vmcoreinfo),
            });
        }
        if let Some(tar) = symbols {
            files.push(ServedFile {
                name: "symbols.tar",
                content: Content::Fixed(tar),
            });
        }
        files.push(ServedFile {
            name: "info.json",
            content: Content::Info,
        });
        let piece = PAGE_SIZE.max(memory.read_granularity());
        // SAFETY: getuid and getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Ok(MemoryFs {
            files,
            io: Mutex::new(Io {
                memory,
                out: Vec::new(),
                scratch: Vec::new(),
            }),
            piece,
            origin,
            memory_map: plan.ranges.ranges().iter().map(RangeJson::from).collect(),
            served: Mutex::new(Served::default()),
            uid,
            gid,
        })
    }

    fn file(&self, ino: INodeNo) -> Option<&ServedFile> {
        (ino.0 as usize)
            .checked_sub(2)
            .and_then(|i| self.files.get(i))
    }

    fn info_json(&self) -> Vec<u8> {
        let served = self.served.lock().unwrap_or_else(|e| e.into_inner());
        let info = InfoJson {
            origin: &self.origin,
            memory_map: self.memory_map.clone(),
            files: self
                .files
                .iter()
                .filter(|f| !matches!(f.content, Content::Info))
                .map(|f| FileJson {
                    name: f.name,
                    bytes: self.len(f),
                })
                .collect(),
            served: ServedJson {
                read_requests: served.read_requests,
                bytes_read: served.bytes_read,
                unreadable_reads: served.unreadable_reads,
                unreadable_pages: served.unreadable_pages.len() as u64,
            },
        };
        let mut text = serde_json::to_vec_pretty(&info).unwrap_or_default();
        text.push(b'\n');
        text
    }

    fn len(&self, file: &ServedFile) -> u64 {
        match &file.content {
            Content::View(view) => view.len(),
            Content::Fixed(bytes) => bytes.len() as u64,
            Content::Info => self.info_json().len() as u64,
        }
    }

    fn attr(&self, ino: INodeNo) -> Option<FileAttr> {
        let (kind, perm, size, nlink) = if ino == ROOT {
            (FileType::Directory, 0o500, 0, 2)
        } else {
            (FileType::RegularFile, 0o400, self.len(self.file(ino)?), 1)
        };
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: PAGE_SIZE as u32,
            flags: 0,
        })
    }

    fn ttl(&self, ino: INodeNo) -> Duration {
        match self.file(ino).map(|f| &f.content) {
            Some(Content::Info) => Duration::ZERO,
            _ => TTL,
        }
    }

    /// The view's bytes from file offset `offset`, `len` of them, into
    /// `io.out`.
    fn read_view(
        &self,
        io: &mut Io,
        view: &ImageView,
        offset: u64,
        len: usize,
    ) -> Result<(), String> {
        let Io {
            memory,
            out,
            scratch,
        } = io;
        if out.len() < len {
            out.resize(len, 0);
        }
        let out = &mut out[..len];
        let end = offset + len as u64;
        // What no piece covers (padding, raw's holes) reads as zeros.
        let mut filled = offset;
        for (at, piece) in view.overlapping(offset, len as u64) {
            let from = (*at).max(offset);
            let to = (at + piece.len()).min(end);
            out[(filled - offset) as usize..(from - offset) as usize].fill(0);
            let dest = &mut out[(from - offset) as usize..(to - offset) as usize];
            match piece {
                ViewPiece::Bytes(bytes) => {
                    dest.copy_from_slice(&bytes[(from - at) as usize..(to - at) as usize])
                }
                ViewPiece::Memory(range) => self.read_memory(
                    memory.as_mut(),
                    scratch,
                    *range,
                    range.start + (from - at),
                    dest,
                )?,
            }
            filled = to;
        }
        out[(filled - offset) as usize..].fill(0);
        Ok(())
    }

    /// Reads physical memory at `phys` into `dest`, inside `range`, in
    /// requests aligned to [`MemoryFs::piece`].
    fn read_memory(
        &self,
        memory: &mut dyn PhysicalMemory,
        scratch: &mut Vec<u8>,
        range: Range,
        phys: u64,
        dest: &mut [u8],
    ) -> Result<(), String> {
        let end = phys + dest.len() as u64;
        let start = (phys / self.piece * self.piece).max(range.start);
        let stop = end.next_multiple_of(self.piece).min(range.end);
        let aligned = start == phys && stop == end;
        let buf: &mut [u8] = if aligned {
            dest
        } else {
            scratch.resize((stop - start) as usize, 0);
            scratch
        };
        let bad = read_or_zero(memory, start, buf, self.piece).map_err(|e| e.to_string())?;
        if !aligned {
            let from = (phys - start) as usize;
            dest.copy_from_slice(&scratch[from..from + dest.len()]);
        }
        let mut served = self.served.lock().unwrap_or_else(|e| e.into_inner());
        served.read_requests += 1;
        served.bytes_read += stop - start;
        if !bad.is_empty() {
            served.unreadable_reads += 1;
            for (addr, len) in bad {
                let first = addr / PAGE_SIZE;
                served
                    .unreadable_pages
                    .extend((first..(addr + len).div_ceil(PAGE_SIZE)).map(|p| p * PAGE_SIZE));
            }
        }
        Ok(())
    }
}

impl Filesystem for MemoryFs {
    fn lookup(&self, _req: &fuser::Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = (parent == ROOT)
            .then(|| self.files.iter().position(|f| f.name == name))
            .flatten()
            .map(|i| INodeNo(i as u64 + 2));
        match found.and_then(|ino| self.attr(ino).map(|a| (ino, a))) {
            Some((ino, attr)) => reply.entry(&self.ttl(ino), &attr, fuser::Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(
        &self,
        _req: &fuser::Request,
        ino: INodeNo,
        _fh: Option<FileHandle>,
        reply: ReplyAttr,
    ) {
        match self.attr(ino) {
            Some(attr) => reply.attr(&self.ttl(ino), &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(
        &self,
        _req: &fuser::Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (ROOT, FileType::Directory, "."),
            (ROOT, FileType::Directory, ".."),
        ]
        .into_iter()
        .chain(
            self.files
                .iter()
                .enumerate()
                .map(|(i, f)| (INodeNo(i as u64 + 2), FileType::RegularFile, f.name)),
        );
        for (i, (ino, kind, name)) in entries.enumerate().skip(offset as usize) {
            if reply.add(ino, i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn open(&self, _req: &fuser::Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if self.file(ino).is_none() {
            return reply.error(Errno::EISDIR);
        }
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        // Direct I/O: no page cache, every read reaches the source.
        reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
    }

    fn read(
        &self,
        _req: &fuser::Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(file) = self.file(ino) else {
            return reply.error(Errno::EISDIR);
        };
        let info;
        let bytes = match &file.content {
            Content::View(view) => {
                let n = u64::from(size).min(view.len().saturating_sub(offset)) as usize;
                let mut io = self.io.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(err) = self.read_view(&mut io, view, offset, n) {
                    eprintln!("pmem: reading {} at offset {offset:#x}: {err}", file.name);
                    return reply.error(Errno::EIO);
                }
                return reply.data(&io.out[..n]);
            }
            Content::Fixed(bytes) => bytes,
            Content::Info => {
                info = self.info_json();
                &info
            }
        };
        let from = (offset as usize).min(bytes.len());
        let to = from.saturating_add(size as usize).min(bytes.len());
        reply.data(&bytes[from..to]);
    }
}
