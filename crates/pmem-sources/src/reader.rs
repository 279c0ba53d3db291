//! Positional reads from a file or device by physical address: the
//! [`PhysicalMemory`] implementation behind every live source.

use pmem_core::{FileMap, MemoryMap, PhysicalMemory, ReadError, PAGE_SIZE};
use std::io;
use std::path::PathBuf;

/// `pread`: reads at an absolute offset without moving a file position, so
/// tests can stand in for devices and inject errors.
pub trait ReadAt {
    /// Reads up to `buf.len()` bytes at `offset`; may return fewer.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
}

#[cfg(unix)]
impl ReadAt for std::fs::File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, offset)
    }
}

#[cfg(windows)]
impl ReadAt for std::fs::File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        std::os::windows::fs::FileExt::seek_read(self, buf, offset)
    }
}

/// In-memory files, for parsing headers held in a buffer (and fuzzing).
impl ReadAt for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

impl ReadAt for Vec<u8> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.as_slice().read_at(buf, offset)
    }
}

/// How often one read is repeated while it fails with EINTR or EAGAIN
/// before the bytes it asked for count as unreadable. A page that keeps
/// answering EINTR would otherwise be read forever.
pub const TRANSIENT_RETRIES: u32 = 16;

/// One `read_at`, repeated (at most [`TRANSIENT_RETRIES`] times) while it
/// fails with a transient error; EAGAIN waits a millisecond first.
pub(crate) fn read_once<R: ReadAt + ?Sized>(
    file: &R,
    buf: &mut [u8],
    offset: u64,
) -> io::Result<usize> {
    let mut retries = 0;
    loop {
        match file.read_at(buf, offset) {
            Err(e) if classify(&e) == Fault::Transient && retries < TRANSIENT_RETRIES => {
                retries += 1;
                if e.kind() == io::ErrorKind::WouldBlock {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
            other => return other,
        }
    }
}

/// Fills `buf` from `offset`, looping on short reads. Returns the number of
/// bytes read before an error, so callers can name the failing address.
/// End of file is an `UnexpectedEof` error.
pub(crate) fn read_full<R: ReadAt + ?Sized>(
    file: &R,
    buf: &mut [u8],
    offset: u64,
) -> Result<(), (usize, io::Error)> {
    let mut done = 0;
    while done < buf.len() {
        let at = offset
            .checked_add(done as u64)
            .ok_or_else(|| (done, io::Error::from(io::ErrorKind::InvalidInput)))?;
        match read_once(file, &mut buf[done..], at) {
            Ok(0) => return Err((done, end_of_file())),
            Ok(n) => done += n,
            Err(e) => return Err((done, e)),
        }
    }
    Ok(())
}

fn end_of_file() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "read returned no data")
}

/// What a failed read says about the source.
///
/// | class       | errors                                   | pmem does                         |
/// |-------------|------------------------------------------|-----------------------------------|
/// | `Transient` | EINTR, EAGAIN                            | reads again, at most [`TRANSIENT_RETRIES`] times; then as `Page` |
/// | `Page`      | end of file (a read giving no bytes), EIO, EFAULT, ENXIO, EPERM, EINVAL, ENOMEM, EHWPOISON | the pages asked for are unreadable: zero-filled and listed in the manifest |
/// | `Suspect`   | any other (ENODEV, ENOTCONN, ECANCELED, EBADF, ETIMEDOUT, ...) | the source is checked: a read that worked before is repeated; if it still works only these pages are unreadable, if it fails too the source is gone and the copy stops with an error |
///
/// The `Page` errors are what kcore, /dev/mem, /dev/crash and pmem's module
/// answer for memory they can't or won't read. The others don't say whether
/// one page or the whole source failed (a device that was removed answers
/// ENODEV, a FUSE file whose server died ENOTCONN, to every read), so the
/// source itself is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Interrupted or would block: read again.
    Transient,
    /// These pages can't be read: zero-fill and list them.
    Page,
    /// Maybe the whole source failed: check it with a read that worked.
    Suspect,
}

/// The class of a failed read (see [`Fault`]).
pub fn classify(err: &io::Error) -> Fault {
    if err.kind() == io::ErrorKind::UnexpectedEof {
        return Fault::Page;
    }
    #[cfg(unix)]
    {
        match err.raw_os_error() {
            Some(libc::EINTR | libc::EAGAIN) => Fault::Transient,
            Some(
                libc::EIO | libc::EFAULT | libc::ENXIO | libc::EPERM | libc::EINVAL | libc::ENOMEM,
            ) => Fault::Page,
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Some(libc::EHWPOISON) => Fault::Page,
            _ => Fault::Suspect,
        }
    }
    #[cfg(not(unix))]
    {
        match err.kind() {
            io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => Fault::Transient,
            _ => Fault::Suspect,
        }
    }
}

/// Part of the file that read before: what [`FileMemory`] reads again to
/// tell a failing page from a source that is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reference {
    /// A region that reads whenever the source works (kcore's ELF header,
    /// which the kernel builds on every read and which holds no RAM).
    Fixed { offset: u64, len: usize },
    /// The last page read without error (devices); none before the first.
    LastGood(Option<(u64, usize)>),
}

/// How a file or device wants its preads sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Preads {
    /// One pread per request (or per piece it crosses), of any length.
    AnyLength,
    /// /dev/crash: every pread must be exactly one aligned page.
    OneAlignedPage,
}

/// A file or device read by physical address through a translation table.
pub(crate) struct FileMemory<F> {
    pub(crate) file: F,
    pub(crate) path: PathBuf,
    /// What the source serves: page-aligned System RAM that `file_map`
    /// covers. Narrower than `file_map` (a device's table covers every
    /// address, kcore's whole segments), and adjacent pieces are merged.
    pub(crate) map: MemoryMap,
    /// Which file offset holds each physical address.
    pub(crate) file_map: FileMap,
    pub(crate) preads: Preads,
    pub(crate) reference: Reference,
}

impl<F> FileMemory<F> {
    /// A device whose file offsets are physical addresses (/dev/crash,
    /// /dev/mem, pmem's module, macOS's /dev/pmem), serving `map`. A
    /// suspect error is checked by reading the last page that read again.
    pub(crate) fn device(file: F, path: PathBuf, map: MemoryMap, preads: Preads) -> FileMemory<F> {
        FileMemory {
            file,
            path,
            map,
            file_map: FileMap::identity(),
            preads,
            reference: Reference::LastGood(None),
        }
    }
}

impl<F: ReadAt> FileMemory<F> {
    /// Classifies a failed read at `addr` (see [`Fault`]).
    fn error(&self, addr: u64, source: io::Error) -> ReadError {
        match classify(&source) {
            Fault::Transient | Fault::Page => ReadError::Unreadable { addr, source },
            Fault::Suspect => match self.gone() {
                None => ReadError::Unreadable { addr, source },
                Some(check) => ReadError::Fatal {
                    what: format!(
                        "reading {}: the source is gone ({check})",
                        self.path.display()
                    ),
                    addr,
                    source,
                },
            },
        }
    }

    /// Reads the reference again: `None` when it still reads (or there is
    /// none yet), else what failed.
    fn gone(&self) -> Option<String> {
        let (offset, len, what) = match self.reference {
            Reference::Fixed { offset, len } => (offset, len, "its header"),
            Reference::LastGood(Some((offset, len))) => (offset, len, "a page read before"),
            Reference::LastGood(None) => return None,
        };
        let mut buf = vec![0; len];
        match read_full(&self.file, &mut buf, offset) {
            Ok(()) => None,
            Err((_, e)) => Some(format!(
                "{what}, at file offset {offset:#x}, no longer reads either: {e}"
            )),
        }
    }

    fn fatal(&self, addr: u64, message: &str) -> ReadError {
        ReadError::Fatal {
            what: format!("reading {}", self.path.display()),
            addr,
            source: io::Error::new(io::ErrorKind::InvalidInput, message.to_string()),
        }
    }

    /// Reads `buf` from one piece: `phys` is at file offset `offset`.
    fn fill(&self, phys: u64, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        if self.preads == Preads::AnyLength {
            // One pread for the whole request; loops only on short reads.
            return read_full(&self.file, buf, offset)
                .map_err(|(done, e)| self.error(phys + done as u64, e));
        }
        for (i, page) in buf.chunks_mut(PAGE_SIZE as usize).enumerate() {
            let delta = i as u64 * PAGE_SIZE;
            match read_once(&self.file, page, offset + delta) {
                Ok(n) if n == page.len() => {}
                // A second pread for the rest of a page would not be
                // page-sized, which the device rejects: the page is lost.
                Ok(n) => {
                    let e = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("short read of {n} bytes"),
                    );
                    return Err(self.error(phys + delta, e));
                }
                Err(e) => return Err(self.error(phys + delta, e)),
            }
        }
        Ok(())
    }
}

impl<F: ReadAt + Send> PhysicalMemory for FileMemory<F> {
    fn memory_map(&self) -> &MemoryMap {
        &self.map
    }

    fn read_granularity(&self) -> u64 {
        match self.preads {
            Preads::AnyLength => 1,
            Preads::OneAlignedPage => PAGE_SIZE,
        }
    }

    /// Splits the request where it crosses from one piece (kcore segment)
    /// to the next; each part is one pread.
    fn read_at(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        if self.preads == Preads::OneAlignedPage
            && (addr % PAGE_SIZE != 0 || buf.len() as u64 % PAGE_SIZE != 0)
        {
            return Err(self.fatal(addr, "this device only reads whole aligned pages"));
        }
        // Never touch anything outside the map: on /dev/mem that would be
        // MMIO, where a read can have side effects or hang the machine.
        if !self.map.covers(addr, buf.len() as u64) {
            return Err(self.fatal(addr, "request outside the source's memory map"));
        }
        let mut done = 0usize;
        while done < buf.len() {
            let at = addr + done as u64;
            let Some(located) = self.file_map.locate(at) else {
                return Err(self.fatal(at, "no file offset for this address"));
            };
            let n = (buf.len() - done).min(located.run.min(usize::MAX as u64) as usize);
            let offset = located.file_offset;
            self.fill(at, offset, &mut buf[done..done + n])?;
            if let Reference::LastGood(last) = &mut self.reference {
                *last = Some((offset, n.min(PAGE_SIZE as usize)));
            }
            done += n;
        }
        Ok(())
    }
}

// The tests inject Unix errno values.
#[cfg(all(test, unix))]
pub(crate) mod tests {
    use super::*;
    use pmem_core::{FilePiece, Range};
    use std::sync::Mutex;

    /// A device stand-in: serves `data`, records every pread and fails the
    /// ones an injected rule says should fail.
    pub(crate) struct FakeDevice {
        pub data: Vec<u8>,
        pub reads: Mutex<Vec<(u64, usize)>>,
        /// Returns Some(result) to override a read at (offset, len).
        #[allow(clippy::type_complexity)]
        pub inject: Box<dyn Fn(u64, usize, usize) -> Option<io::Result<usize>> + Send + Sync>,
    }

    impl FakeDevice {
        pub fn new(data: Vec<u8>) -> FakeDevice {
            FakeDevice {
                data,
                reads: Mutex::new(Vec::new()),
                inject: Box::new(|_, _, _| None),
            }
        }
    }

    impl ReadAt for FakeDevice {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            let mut reads = self.reads.lock().unwrap();
            reads.push((offset, buf.len()));
            if let Some(result) = (self.inject)(offset, buf.len(), reads.len()) {
                return result;
            }
            self.data.read_at(buf, offset)
        }
    }

    pub(crate) fn errno(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    fn memory<F>(device: F, file_map: FileMap, preads: Preads) -> FileMemory<F> {
        let map = MemoryMap::normalized(file_map.memory_map().ranges().to_vec());
        FileMemory {
            file: device,
            path: "/dev/fake".into(),
            map,
            file_map,
            preads,
            reference: Reference::LastGood(None),
        }
    }

    fn identity(len: u64) -> FileMap {
        FileMap::new(vec![FilePiece {
            phys: Range::new(0, len).unwrap(),
            file_offset: 0,
        }])
        .unwrap()
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    #[test]
    fn retries_after_eintr() {
        let mut device = FakeDevice::new(data(1 << 20));
        device.inject = Box::new(|_, _, count| (count == 1).then(|| Err(errno(libc::EINTR))));
        let mut m = memory(device, identity(1 << 20), Preads::AnyLength);
        let mut buf = vec![0; 300_000];
        m.read_at(5000, &mut buf).unwrap();
        assert_eq!(buf, data(1 << 20)[5000..305_000]);
        // One interrupted read, then one read for the whole request.
        assert_eq!(m.file.reads.lock().unwrap().len(), 2);
    }

    #[test]
    fn short_reads_continue() {
        struct Trickle(Vec<u8>);
        impl ReadAt for Trickle {
            fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
                let n = buf.len().min(777);
                self.0.read_at(&mut buf[..n], offset)
            }
        }
        let mut m = memory(Trickle(data(100_000)), identity(100_000), Preads::AnyLength);
        let mut buf = vec![0; 50_000];
        m.read_at(10, &mut buf).unwrap();
        assert_eq!(buf, data(100_000)[10..50_010]);
    }

    #[test]
    fn error_classes() {
        for (code, fault) in [
            (libc::EINTR, Fault::Transient),
            (libc::EAGAIN, Fault::Transient),
            (libc::EIO, Fault::Page),
            (libc::EFAULT, Fault::Page),
            (libc::ENXIO, Fault::Page),
            (libc::EPERM, Fault::Page),
            (libc::EINVAL, Fault::Page),
            (libc::ENOMEM, Fault::Page),
            (libc::EBADF, Fault::Suspect),
            (libc::ENODEV, Fault::Suspect),
            (libc::ENOTCONN, Fault::Suspect),
            (libc::ECANCELED, Fault::Suspect),
        ] {
            assert_eq!(classify(&errno(code)), fault, "errno {code}");
            // Page errors never read anything else; the address is named.
            let mut device = FakeDevice::new(data(1 << 16));
            device.inject =
                Box::new(move |offset, _, _| (offset >= 0x2000).then(|| Err(errno(code))));
            let mut m = memory(device, identity(1 << 16), Preads::AnyLength);
            match m.read_at(0x2000, &mut [0; 4096]) {
                Err(ReadError::Unreadable { addr, .. }) => assert_eq!(addr, 0x2000),
                other => panic!("errno {code}: {other:?}"),
            }
            if fault == Fault::Page {
                assert_eq!(m.file.reads.lock().unwrap().len(), 1, "errno {code}");
            }
        }
        // A read past the end returns 0 bytes: unreadable, at the failing address.
        let mut m = memory(
            FakeDevice::new(data(0x3000)),
            identity(0x10000),
            Preads::AnyLength,
        );
        match m.read_at(0x1000, &mut [0; 0x4000]) {
            Err(ReadError::Unreadable { addr, .. }) => assert_eq!(addr, 0x3000),
            other => panic!("{other:?}"),
        }
    }

    /// A page whose reads keep failing with EINTR or EAGAIN: the retries
    /// end and the page is unreadable like any other.
    #[test]
    fn endless_eintr_and_eagain_make_the_page_unreadable() {
        for code in [libc::EINTR, libc::EAGAIN] {
            let mut device = FakeDevice::new(data(1 << 16));
            device.inject = Box::new(move |offset, _, count| {
                assert!(count < 10_000, "errno {code}: {count} reads, no end");
                (offset == 0x2000).then(|| Err(errno(code)))
            });
            let mut m = memory(device, identity(1 << 16), Preads::AnyLength);
            match m.read_at(0x2000, &mut [0; 4096]) {
                Err(ReadError::Unreadable { addr, .. }) => assert_eq!(addr, 0x2000),
                other => panic!("errno {code}: {other:?}"),
            }
            let reads = m.file.reads.lock().unwrap().len();
            assert!(reads > 2 && reads <= 64, "errno {code}: {reads} reads");
        }
    }

    /// One page failing with an errno outside the usual "unreadable" set,
    /// on a source that still answers elsewhere: that page is unreadable,
    /// the source is not abandoned.
    #[test]
    fn odd_errno_on_one_page_of_a_live_source_is_a_page_error() {
        for code in [
            libc::EAGAIN,
            libc::ENODEV,
            libc::ENOTCONN,
            libc::ECANCELED,
            libc::EBADF,
            libc::ETIMEDOUT,
        ] {
            let mut device = FakeDevice::new(data(1 << 16));
            device.inject = Box::new(move |offset, len, _| {
                let pages = offset / 4096..(offset + len as u64).div_ceil(4096);
                pages.contains(&3).then(|| Err(errno(code)))
            });
            let mut m = memory(device, identity(1 << 16), Preads::AnyLength);
            let mut buf = vec![0; 0x2000];
            m.read_at(0x1000, &mut buf).unwrap();
            assert_eq!(buf, data(1 << 16)[0x1000..0x3000]);
            match m.read_at(0x3000, &mut [0; 4096]) {
                Err(ReadError::Unreadable { addr, source }) => {
                    assert_eq!(addr, 0x3000);
                    assert_eq!(source.raw_os_error(), Some(code));
                }
                other => panic!("errno {code}: {other:?}"),
            }
            m.read_at(0x4000, &mut buf).unwrap();
            assert_eq!(buf, data(1 << 16)[0x4000..0x6000]);
        }
    }

    /// A source that stops answering altogether (a FUSE server that died:
    /// ENOTCONN; a device removed: ENODEV) ends the copy with an error
    /// that says so, at the address being read.
    #[test]
    fn a_source_that_is_gone_is_fatal() {
        for code in [libc::ENOTCONN, libc::ENODEV, libc::EBADF] {
            let mut device = FakeDevice::new(data(1 << 16));
            device.inject = Box::new(move |offset, len, _| {
                (offset + len as u64 > 0x5000).then(|| Err(errno(code)))
            });
            let mut m = memory(device, identity(1 << 16), Preads::AnyLength);
            m.read_at(0x1000, &mut [0; 4096]).unwrap();
            // Once gone, every read fails: also the page that read before.
            let gone = m.file.reads.lock().unwrap().len();
            m.file.inject = Box::new(move |_, _, count| (count > gone).then(|| Err(errno(code))));
            let err = m.read_at(0x8000, &mut [0; 4096]).unwrap_err();
            match &err {
                ReadError::Fatal { addr, source, .. } => {
                    assert_eq!(*addr, 0x8000);
                    assert_eq!(source.raw_os_error(), Some(code));
                }
                other => panic!("errno {code}: {other:?}"),
            }
            let text = err.to_string();
            assert!(
                text.contains("/dev/fake") && text.contains("gone"),
                "{text}"
            );
        }
    }

    #[test]
    fn page_reads_are_page_sized() {
        let mut m = memory(
            FakeDevice::new(data(4 << 20)),
            identity(4 << 20),
            Preads::OneAlignedPage,
        );
        assert_eq!(m.read_granularity(), 4096);
        let mut buf = vec![0; 1 << 20];
        m.read_at(0x10000, &mut buf).unwrap();
        assert_eq!(buf, data(4 << 20)[0x10000..0x110000]);
        let reads = m.file.reads.lock().unwrap().clone();
        assert_eq!(reads.len(), 256);
        for (i, (offset, len)) in reads.iter().enumerate() {
            assert_eq!((*offset, *len), (0x10000 + i as u64 * 4096, 4096));
        }
        assert!(matches!(
            m.read_at(0x10, &mut [0; 4096]),
            Err(ReadError::Fatal { .. })
        ));
        assert!(matches!(
            m.read_at(0, &mut [0; 100]),
            Err(ReadError::Fatal { .. })
        ));
    }

    #[test]
    fn page_reads_reject_short_pages() {
        let mut device = FakeDevice::new(data(1 << 16));
        device.inject = Box::new(|offset, _, _| (offset == 0x3000).then_some(Ok(100)));
        let mut m = memory(device, identity(1 << 16), Preads::OneAlignedPage);
        match m.read_at(0x1000, &mut [0; 0x4000]) {
            Err(ReadError::Unreadable { addr, .. }) => assert_eq!(addr, 0x3000),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reads_split_across_pieces() {
        // Physical 0x10000.. is at file 0x0, physical 0x20000.. at 0x50000.
        let pieces = FileMap::new(vec![
            FilePiece {
                phys: Range::new(0x10000, 0x20000).unwrap(),
                file_offset: 0,
            },
            FilePiece {
                phys: Range::new(0x20000, 0x30000).unwrap(),
                file_offset: 0x50000,
            },
        ])
        .unwrap();
        let mut m = memory(FakeDevice::new(data(0x60000)), pieces, Preads::AnyLength);
        let mut buf = vec![0; 0x2000];
        m.read_at(0x1f000, &mut buf).unwrap();
        assert_eq!(buf[..0x1000], data(0x60000)[0xf000..0x10000]);
        assert_eq!(buf[0x1000..], data(0x60000)[0x50000..0x51000]);
        assert_eq!(
            *m.file.reads.lock().unwrap(),
            [(0xf000, 0x1000), (0x50000, 0x1000)]
        );
        assert!(matches!(
            m.read_at(0x2f000, &mut buf),
            Err(ReadError::Fatal { .. })
        ));
    }
}
