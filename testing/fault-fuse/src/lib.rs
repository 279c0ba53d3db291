//! A FUSE file shaped like /proc/kcore whose reads fail on demand: pmem's
//! fault-injection fixture.
//!
//! [`FaultFs::mount`] serves, in a directory of its own, `mnt/kcore`: an
//! ELF core with one PT_LOAD segment per RAM range (built by
//! `pmem_sources::testing::KcoreBuilder`) whose byte at physical address
//! `a` is `pmem_sources::testing::pattern_byte(a)`, and beside it an
//! `iomem` listing that RAM. [`Fault`]s make the requests that touch
//! chosen physical pages fail with an errno, return fewer bytes, stall,
//! or take the whole server away (the kernel aborts the connection, as
//! when a FUSE server dies), on every request or on the first few.
//!
//! A fault applies to every request that touches one of its pages, not
//! only to the request holding its first byte: with direct I/O (the
//! default, like /proc/kcore: nothing is cached) a request is the read the
//! program made, split at the kernel's FUSE request size; through the page
//! cache requests come in page-cache-sized pieces (readahead, then single
//! pages).
//!
//! Mounting needs root and /dev/fuse; fuser mounts through /dev/fuse
//! itself, without libfuse or fusermount. [`Action::Abort`] also needs the
//! fusectl file system, which is mounted on /sys/fs/fuse/connections when
//! it is not there yet. Linux only: elsewhere this library is empty.
#![cfg(target_os = "linux")]

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    INodeNo, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry,
    ReplyOpen,
};
use pmem_core::{Arch, Range, PAGE_SIZE};
use pmem_sources::testing::{iomem_text, pattern_byte, Content, KcoreBuilder, Segment};
use std::ffi::{CString, OsStr};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

/// What a faulty request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Fails with this errno.
    Errno(i32),
    /// Gets at most this many bytes (correct ones). With direct I/O the
    /// program's read returns short; through the page cache the kernel
    /// would fill the rest with zeros, so use it with direct I/O only.
    Short(u32),
    /// Waits this long, then gets its data.
    Stall(Duration),
    /// The server goes away: its connection is aborted through fusectl,
    /// as the kernel does when a FUSE server dies. This request and every
    /// later one, the ELF header too, fail (ECONNABORTED, then ENOTCONN).
    Abort,
}

/// A fault on a span of physical pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// Page-aligned physical addresses inside one RAM range.
    pub pages: Range,
    pub action: Action,
    /// How many requests touching `pages` it applies to; `None`: all.
    pub times: Option<u32>,
}

impl Fault {
    /// On every request touching the page at `phys`.
    pub fn page(phys: u64, action: Action) -> Fault {
        Fault {
            pages: page_range(phys),
            action,
            times: None,
        }
    }

    /// On the first `times` requests touching the page at `phys` only.
    pub fn page_times(phys: u64, action: Action, times: u32) -> Fault {
        Fault {
            times: Some(times),
            ..Fault::page(phys, action)
        }
    }
}

fn page_range(phys: u64) -> Range {
    Range {
        start: phys,
        end: phys + PAGE_SIZE,
    }
}

/// How the file is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Every read goes to the server (FOPEN_DIRECT_IO), as on /proc/kcore.
    /// Off: reads go through the page cache.
    pub direct_io: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options { direct_io: true }
    }
}

/// One read request as the server saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// File offset.
    pub offset: u64,
    pub size: u32,
    /// Whether a fault applied to it.
    pub faulted: bool,
}

/// A mounted faulty kcore. Unmounted on drop.
pub struct FaultFs {
    /// The kcore-shaped file, for `--source kcore:PATH`.
    pub kcore: PathBuf,
    /// An iomem listing the RAM, for `--iomem PATH`.
    pub iomem: PathBuf,
    mountpoint: PathBuf,
    served: Arc<Served>,
    session: Option<BackgroundSession>,
}

impl FaultFs {
    /// Mounts the file in `dir/mnt` and writes `dir/iomem`. `ram`: sorted,
    /// disjoint, page-aligned RAM ranges, each one kcore segment.
    pub fn mount(
        dir: &Path,
        ram: &[Range],
        faults: Vec<Fault>,
        options: Options,
    ) -> io::Result<FaultFs> {
        let layout = Layout::build(dir, ram)?;
        let mut placed = Vec::new();
        for fault in faults {
            let file = layout.file_range(fault.pages).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("fault pages {} are not inside one RAM range", fault.pages),
                )
            })?;
            placed.push(Placed {
                file,
                action: fault.action,
                remaining: fault.times.map(AtomicU32::new),
            });
        }
        if placed.iter().any(|p| p.action == Action::Abort) {
            mount_fusectl()?;
        }
        let iomem = dir.join("iomem");
        std::fs::write(&iomem, iomem_text(ram))?;
        let mountpoint = dir.join("mnt");
        std::fs::create_dir_all(&mountpoint)?;
        let served = Arc::new(Served {
            layout,
            faults: placed,
            options,
            log: Mutex::new(Vec::new()),
            connection: OnceLock::new(),
        });
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("pmem-fault-fuse".into()),
            MountOption::RO,
        ];
        let session = fuser::spawn_mount(KcoreFs(served.clone()), &mountpoint, &config)?;
        let fs = FaultFs {
            kcore: mountpoint.join("kcore"),
            iomem,
            mountpoint,
            served,
            session: Some(session),
        };
        // fusectl names a connection by its device number (major 0).
        let dev = std::os::linux::fs::MetadataExt::st_dev(&std::fs::metadata(&fs.mountpoint)?);
        let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0xff);
        let _ = fs.served.connection.set(minor);
        Ok(fs)
    }

    /// Every read request served so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.served.log.lock().unwrap().clone()
    }

    /// How many requests touched the page at physical `phys`.
    pub fn requests_touching(&self, phys: u64) -> usize {
        let Some(file) = self.served.layout.file_range(page_range(phys)) else {
            return 0;
        };
        self.requests()
            .iter()
            .filter(|r| overlaps(&file, r.offset, r.size))
            .count()
    }
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let _ = session.umount_and_join();
        }
        // An aborted connection's mount stays until unmounted; fuser
        // leaves it. Lazy, so that it can never hang a test.
        if let Ok(path) = CString::new(self.mountpoint.as_os_str().as_bytes()) {
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Where the file's bytes come from.
struct Layout {
    /// The ELF header, program headers and notes (the file's start).
    header: Vec<u8>,
    /// (file offset, physical start, length) of each RAM segment.
    segments: Vec<(u64, u64, u64)>,
    len: u64,
}

impl Layout {
    /// Builds the kcore with the test builder into a sparse scratch file
    /// and keeps its headers.
    fn build(dir: &Path, ram: &[Range]) -> io::Result<Layout> {
        let mut builder = KcoreBuilder::new(Arch::X86_64)
            .vmcoreinfo(b"OSRELEASE=pmem-fault-fuse\nPAGESIZE=4096\n")
            .segment(Segment::not_ram(0xffff_c900_0000_0000, 1 << 36));
        for r in ram {
            if r.start % PAGE_SIZE != 0 || r.end % PAGE_SIZE != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("RAM range {r} is not page-aligned"),
                ));
            }
            builder = builder.segment(Segment::ram(r.start, r.len()).with_content(Content::Zeros));
        }
        let scratch = dir.join("layout.kcore");
        let offsets = builder.write(&scratch)?;
        let len = std::fs::metadata(&scratch)?.len();
        let segments: Vec<(u64, u64, u64)> = ram
            .iter()
            .zip(&offsets[1..])
            .map(|(r, &offset)| (offset, r.start, r.len()))
            .collect();
        let header_len = segments.iter().map(|s| s.0).min().unwrap_or(len);
        let mut header = vec![0; header_len as usize];
        std::fs::File::open(&scratch)?.read_exact(&mut header)?;
        std::fs::remove_file(&scratch)?;
        Ok(Layout {
            header,
            segments,
            len,
        })
    }

    /// The file offsets of physical `pages`, when one segment holds them.
    fn file_range(&self, pages: Range) -> Option<std::ops::Range<u64>> {
        self.segments.iter().find_map(|&(offset, phys, len)| {
            (phys <= pages.start && pages.end <= phys + len).then(|| {
                let start = offset + (pages.start - phys);
                start..start + pages.len()
            })
        })
    }

    /// The bytes at file `offset`: header, pattern, or zeros (padding).
    fn fill(&self, offset: u64, buf: &mut [u8]) {
        buf.fill(0);
        let end = offset + buf.len() as u64;
        let header_end = self.header.len() as u64;
        if offset < header_end {
            let n = (header_end.min(end) - offset) as usize;
            buf[..n].copy_from_slice(&self.header[offset as usize..offset as usize + n]);
        }
        for &(seg_offset, phys, len) in &self.segments {
            let from = offset.max(seg_offset);
            let to = end.min(seg_offset + len);
            for at in from..to {
                buf[(at - offset) as usize] = pattern_byte(phys + (at - seg_offset));
            }
        }
    }
}

/// A fault at its file offsets.
struct Placed {
    file: std::ops::Range<u64>,
    action: Action,
    remaining: Option<AtomicU32>,
}

impl Placed {
    /// Whether it applies to one more request (and counts it).
    fn take(&self) -> bool {
        match &self.remaining {
            None => true,
            Some(left) => left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok(),
        }
    }
}

struct Served {
    layout: Layout,
    faults: Vec<Placed>,
    options: Options,
    log: Mutex<Vec<Request>>,
    /// fusectl's name of this mount's connection.
    connection: OnceLock<u64>,
}

impl Served {
    /// Aborts this mount's connection, as the kernel does for a dead
    /// server.
    fn abort(&self) {
        match self.connection.get() {
            Some(id) => {
                let path = format!("/sys/fs/fuse/connections/{id}/abort");
                if let Err(e) = std::fs::write(&path, "1") {
                    eprintln!("pmem-fault-fuse: cannot abort through {path}: {e}");
                }
            }
            None => eprintln!("pmem-fault-fuse: abort before the mount completed"),
        }
    }
}

fn overlaps(file: &std::ops::Range<u64>, offset: u64, size: u32) -> bool {
    offset < file.end && file.start < offset.saturating_add(u64::from(size))
}

/// Mounts fusectl on /sys/fs/fuse/connections unless it is there.
fn mount_fusectl() -> io::Result<()> {
    static MOUNTED: Mutex<bool> = Mutex::new(false);
    let mut mounted = MOUNTED.lock().unwrap();
    if *mounted || std::fs::read_to_string("/proc/mounts")?.contains(" fusectl ") {
        *mounted = true;
        return Ok(());
    }
    let target = c"/sys/fs/fuse/connections";
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            c"fusectl".as_ptr(),
            target.as_ptr(),
            c"fusectl".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(io::Error::new(
                e.kind(),
                format!("mounting fusectl on /sys/fs/fuse/connections: {e}"),
            ));
        }
    }
    *mounted = true;
    Ok(())
}

const ROOT: INodeNo = INodeNo::ROOT;
const FILE: INodeNo = INodeNo(2);
const TTL: Duration = Duration::from_secs(60);

struct KcoreFs(Arc<Served>);

impl KcoreFs {
    fn attr(&self, ino: INodeNo) -> FileAttr {
        let (kind, perm, size, nlink) = if ino == ROOT {
            (FileType::Directory, 0o755, 0, 2)
        } else {
            (FileType::RegularFile, 0o400, self.0.layout.len, 1)
        };
        FileAttr {
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
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: PAGE_SIZE as u32,
            flags: 0,
        }
    }
}

impl Filesystem for KcoreFs {
    fn lookup(&self, _req: &fuser::Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent == ROOT && name == "kcore" {
            reply.entry(&TTL, &self.attr(FILE), fuser::Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(
        &self,
        _req: &fuser::Request,
        ino: INodeNo,
        _fh: Option<FileHandle>,
        reply: ReplyAttr,
    ) {
        if ino == ROOT || ino == FILE {
            reply.attr(&TTL, &self.attr(ino));
        } else {
            reply.error(Errno::ENOENT);
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
            (FILE, FileType::RegularFile, "kcore"),
        ];
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(ino, i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn open(&self, _req: &fuser::Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino != FILE {
            return reply.error(Errno::EISDIR);
        }
        let flags = if self.0.options.direct_io {
            FopenFlags::FOPEN_DIRECT_IO
        } else {
            FopenFlags::empty()
        };
        reply.opened(FileHandle(0), flags);
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
        if ino != FILE {
            return reply.error(Errno::EISDIR);
        }
        let served = &self.0;
        let mut limit = u64::from(size);
        let mut stall = Duration::ZERO;
        let mut errno = None;
        let mut abort = false;
        let mut faulted = false;
        for fault in &served.faults {
            if overlaps(&fault.file, offset, size) && fault.take() {
                faulted = true;
                match fault.action {
                    Action::Errno(code) => errno = Some(code),
                    Action::Short(n) => limit = limit.min(u64::from(n.max(1))),
                    Action::Stall(d) => stall += d,
                    Action::Abort => abort = true,
                }
            }
        }
        served.log.lock().unwrap().push(Request {
            offset,
            size,
            faulted,
        });
        if abort {
            served.abort();
            return reply.error(Errno::ENOTCONN);
        }
        std::thread::sleep(stall);
        if let Some(code) = errno {
            return reply.error(Errno::from_i32(code));
        }
        let n = limit.min(served.layout.len.saturating_sub(offset));
        let mut buf = vec![0; n as usize];
        served.layout.fill(offset, &mut buf);
        reply.data(&buf);
    }
}
