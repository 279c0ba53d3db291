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
//!
//! `--write` (research and teaching only) makes memory.raw writable: a
//! write of whole System RAM pages at offset X goes to physical address X
//! through pmem's module, which must be the write build loaded with
//! `pmem module load --write`. Anything else is refused before the module
//! sees it: partial pages (EINVAL), bytes outside System RAM (EPERM).

use crate::carried_symbols::{fits_inside, CarriedSymbols};
use crate::manifest::{Origin, RangeJson};
use anyhow::{bail, Context, Result};
use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo, LockOwner,
    MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen,
};
use pmem_core::{read_or_zero, MemoryMap, PhysicalMemory, Range, PAGE_SIZE};
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
    /// Make memory.raw writable: writing whole System RAM pages at offset X
    /// writes physical memory at X. Needs pmem's module, the write build
    /// loaded with `pmem module load --write` (implies --source module).
    /// For research and teaching on machines you may crash, never for
    /// regular systems.
    #[arg(long)]
    write: bool,
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
    let source = if args.write {
        write_source(&args.source)?
    } else {
        args.source.clone()
    };
    if !std::path::Path::new("/dev/fuse").exists() {
        bail!("/dev/fuse does not exist: load the FUSE module first (modprobe fuse)");
    }
    // Before any thread starts: the threads inherit the blocked mask, so
    // only this thread takes SIGINT and SIGTERM (sigtimedwait below).
    let signals = block_signals();
    let mut live = crate::live::open(
        &pmem_sources::LiveRequest {
            source: source.clone(),
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
    let writer = if args.write {
        Some(open_writer(&source)?)
    } else {
        None
    };
    let fs = MemoryFs::new(live.memory, live.plan, live.origin, iomem, symbols, writer)?;
    let names: Vec<&str> = fs.files.iter().map(|f| f.name).collect();

    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("pmem".into()),
        MountOption::Subtype("pmem".into()),
        if args.write {
            MountOption::RW
        } else {
            MountOption::RO
        },
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
    if args.write {
        eprintln!(
            "pmem: memory.raw is WRITABLE: whole System RAM pages written to it overwrite this \
             machine's memory (the module logs each write to the kernel log)"
        );
    }
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

/// The source `--write` reads and writes through: pmem's module only.
fn write_source(source: &str) -> Result<String> {
    match source {
        "auto" => Ok("module".into()),
        s if s == "module" || s.starts_with("module:") => Ok(s.into()),
        other => bail!(
            "--write writes through pmem's module only (the write build, loaded with \
             `pmem module load --write`), not --source {other}"
        ),
    }
}

/// The module's device opened for writing, after checking that the loaded
/// module is the write build with writes on.
fn open_writer(source: &str) -> Result<std::fs::File> {
    use pmem_sources::module::{DEVICE_PATH, MODULE_NAME};
    let why = match crate::module::write_state() {
        Some(true) => None,
        Some(false) => Some("the write build, loaded with writes off"),
        None => Some("it is the read-only build"),
    };
    if let Some(why) = why {
        bail!(
            "--write: the loaded {MODULE_NAME} cannot write ({why}): build the write build with \
             `pmem module build --write`, then `pmem module unload` and `pmem module load --write \
             pmem_phys-write.ko`"
        );
    }
    let path = source.strip_prefix("module:").unwrap_or(DEVICE_PATH);
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|err| {
            let context = pmem_sources::module::OpenContext::read();
            let hint = match context.lockdown.as_deref() {
                Some(mode) if mode != "none" && err.raw_os_error() == Some(libc::EPERM) => {
                    format!(
                        "; kernel lockdown is \"{mode}\": the module refuses writes under any \
                         lockdown mode"
                    )
                }
                _ => pmem_sources::module::open_hint(&err, &context),
            };
            anyhow::anyhow!("opening {path} for writing: {err}{hint}")
        })
}

/// Whether `len` bytes written at physical address `offset` are whole pages
/// inside System RAM (`ram`: the plan's ranges, adjoining ones merged, so
/// one write may span them); why not, as the errno the writer gets and a
/// reason for the log.
fn check_write(ram: &MemoryMap, offset: u64, len: u64) -> Result<(), (Errno, String)> {
    if offset % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 {
        return Err((
            Errno::EINVAL,
            "not whole pages (offset and length must be multiples of 4096)".into(),
        ));
    }
    let end = offset
        .checked_add(len)
        .ok_or((Errno::EINVAL, "past the end of the address space".into()))?;
    if len > 0 && !ram.covers(offset, len) {
        return Err((
            Errno::EPERM,
            format!("[{offset:#x}, {end:#x}) is not System RAM throughout: only System RAM pages are written"),
        ));
    }
    Ok(())
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
    write_requests: u64,
    bytes_written: u64,
    /// Writes refused by pmem (partial pages, outside System RAM) or by
    /// the module.
    refused_writes: u64,
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
    /// With --write: what was written to memory.raw, and what was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    writes: Option<WritesJson>,
}

#[derive(Serialize)]
struct WritesJson {
    write_requests: u64,
    bytes_written: u64,
    refused_writes: u64,
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
    /// With --write: the module's device, open for writing, and the System
    /// RAM ranges writes must fall in.
    writer: Option<(std::fs::File, MemoryMap)>,
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
        writer: Option<std::fs::File>,
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
            writer: writer.map(|file| (file, MemoryMap::normalized(plan.ranges.ranges().to_vec()))),
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
                writes: self.writer.as_ref().map(|_| WritesJson {
                    write_requests: served.write_requests,
                    bytes_written: served.bytes_written,
                    refused_writes: served.refused_writes,
                }),
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
            let file = self.file(ino)?;
            let perm = if self.writable(file) { 0o600 } else { 0o400 };
            (FileType::RegularFile, perm, self.len(file), 1)
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

    /// Whether writes to `file` reach physical memory (memory.raw, --write).
    fn writable(&self, file: &ServedFile) -> bool {
        self.writer.is_some() && file.name == "memory.raw"
    }

    /// Writes `data` at physical address `offset` through the module:
    /// whole pages inside System RAM only, checked before anything is
    /// written.
    fn write_memory(&self, offset: u64, data: &[u8]) -> Result<(), (Errno, String)> {
        use std::os::unix::fs::FileExt;
        let Some((device, ram)) = &self.writer else {
            return Err((Errno::EROFS, "the mount is read-only".into()));
        };
        check_write(ram, offset, data.len() as u64)?;
        device.write_all_at(data, offset).map_err(|err| {
            let errno = err.raw_os_error().map_or(Errno::EIO, Errno::from_i32);
            (errno, format!("the module refused: {err}"))
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
            match self.file(ino) {
                Some(file) if self.writable(file) => {}
                _ if self.writer.is_some() => return reply.error(Errno::EACCES),
                _ => return reply.error(Errno::EROFS),
            }
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

    fn write(
        &self,
        _req: &fuser::Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: fuser::ReplyWrite,
    ) {
        let result = match self.file(ino) {
            Some(file) if self.writable(file) => self.write_memory(offset, data),
            _ => Err((Errno::EACCES, "only memory.raw is writable".into())),
        };
        let mut served = self.served.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => {
                served.write_requests += 1;
                served.bytes_written += data.len() as u64;
                reply.written(data.len() as u32);
            }
            Err((errno, why)) => {
                served.refused_writes += 1;
                eprintln!(
                    "pmem: write of {} bytes at {offset:#x} refused: {why}",
                    data.len()
                );
                reply.error(errno);
            }
        }
    }

    /// Only a size change reaches here that matters (open with O_TRUNC, a
    /// truncate): refused, the memory's size is fixed. Other changes are
    /// accepted and ignored (the attributes are the file system's own).
    fn setattr(
        &self,
        _req: &fuser::Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let Some(attr) = self.attr(ino) else {
            return reply.error(Errno::ENOENT);
        };
        match size {
            Some(size) if size != attr.size => reply.error(if self.writer.is_some() {
                Errno::EPERM
            } else {
                Errno::EROFS
            }),
            _ => reply.attr(&self.ttl(ino), &attr),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: u64, end: u64) -> Range {
        Range::new(start, end).unwrap()
    }

    #[test]
    fn writes_are_whole_system_ram_pages_only() {
        // RAM [4 KiB, 640 KiB), [1 MiB, 3 MiB), [3 MiB, 4 MiB): the last two
        // adjoin (one write may span them).
        let ram = MemoryMap::normalized(vec![
            range(0x1000, 0xA_0000),
            range(0x10_0000, 0x30_0000),
            range(0x30_0000, 0x40_0000),
        ]);
        let errno = |offset, len| check_write(&ram, offset, len).err().map(|(e, _)| e);
        assert_eq!(errno(0x1000, 0x1000), None);
        assert_eq!(errno(0x9_F000, 0x1000), None, "the last page of a range");
        assert_eq!(errno(0x2F_F000, 0x2000), None, "across adjoining ranges");
        assert_eq!(errno(0x10_0000, 0x30_0000), None, "two ranges whole");
        assert_eq!(errno(0x1000, 0), None, "nothing to write");
        for (offset, len) in [(0x1001, 0x1000), (0x1000, 0xFFF), (0x1000, 0x1001)] {
            assert_eq!(
                errno(offset, len),
                Some(Errno::EINVAL),
                "{offset:#x}+{len:#x}"
            );
        }
        for (offset, len) in [
            (0, 0x1000),         // below the first range
            (0x9_F000, 0x2000),  // runs off the end of a range
            (0xA_0000, 0x1000),  // in the hole
            (0xF_F000, 0x2000),  // starts in the hole
            (0x40_0000, 0x1000), // past the last range
            (0x1000, 0x40_0000), // over the hole
        ] {
            let (e, why) = check_write(&ram, offset, len).unwrap_err();
            assert_eq!(e, Errno::EPERM, "{offset:#x}+{len:#x}");
            assert!(why.contains("is not System RAM"), "{why}");
        }
        assert_eq!(
            errno(u64::MAX - 0xFFF, 0x2000).unwrap(),
            Errno::EINVAL,
            "wraps"
        );
    }
}
