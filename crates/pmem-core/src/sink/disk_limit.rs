//! `--max-disk-usage`: a limit on the space an image file may take,
//! checked before the first byte and while writing.

use std::fs::File;
use std::io;

/// A limit on the disk space an image may take (`--max-disk-usage`),
/// checked before the first byte and every [`DiskLimit::CHECK_EVERY`]
/// bytes while writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskLimit {
    /// The image may be at most this many bytes.
    Bytes(u64),
    /// The output's filesystem may be at most this full (percent of its
    /// size, as `df` counts it).
    Percent(u8),
}

impl DiskLimit {
    /// Bytes written between two checks of the limit (16 MiB): often
    /// enough to stop near the limit, rarely enough that the `fstatvfs` a
    /// percentage check costs does not show.
    pub const CHECK_EVERY: u64 = 16 << 20;

    /// Errors when writing `position` bytes in total to `file` breaks the
    /// limit.
    fn check(&self, file: &File, position: u64) -> io::Result<()> {
        let refuse = |what: String| {
            Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!("--max-disk-usage: {what}; stopped (what was written is kept)"),
            ))
        };
        match *self {
            DiskLimit::Bytes(max) if position > max => {
                refuse(format!("the image would grow past {} MiB", max >> 20))
            }
            DiskLimit::Bytes(_) => Ok(()),
            DiskLimit::Percent(max) => {
                let (total, available) = fs_space(file)?;
                let used = total.saturating_sub(available);
                if total > 0 && used.saturating_mul(100) > total.saturating_mul(u64::from(max)) {
                    refuse(format!(
                        "the output's filesystem is {}% full, above {max}%",
                        used * 100 / total
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// A limit being enforced on one image file.
pub(crate) struct DiskLimited {
    limit: DiskLimit,
    /// The filesystem's usage is checked again once the image reaches this.
    next_check: u64,
    /// The limit stopped the writes: nothing more may be written.
    stopped: bool,
}

impl DiskLimited {
    /// Checks `limit` before anything is written to `file`.
    pub(crate) fn new(limit: DiskLimit, file: &File) -> io::Result<DiskLimited> {
        limit.check(file, 0)?;
        Ok(DiskLimited {
            limit,
            next_check: DiskLimit::CHECK_EVERY,
            stopped: false,
        })
    }

    /// Errors (and stops for good) when writing up to image offset `end`
    /// breaks the limit.
    pub(crate) fn allow(&mut self, file: &File, end: u64) -> io::Result<()> {
        // A byte limit costs nothing to check; the filesystem's usage costs
        // a system call: every CHECK_EVERY bytes.
        let every = matches!(self.limit, DiskLimit::Bytes(_));
        if every || end >= self.next_check {
            if let Err(e) = self.limit.check(file, end) {
                self.stopped = true;
                return Err(e);
            }
            self.next_check = end + DiskLimit::CHECK_EVERY;
        }
        Ok(())
    }

    pub(crate) fn stopped(&self) -> bool {
        self.stopped
    }
}

/// (size, bytes available to us) of the filesystem holding `file`.
#[cfg(unix)]
fn fs_space(file: &File) -> io::Result<(u64, u64)> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: fstatvfs only writes the struct we pass; the fd is open.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let unit = st.f_frsize as u64;
    Ok((st.f_blocks as u64 * unit, st.f_bavail as u64 * unit))
}

#[cfg(not(unix))]
fn fs_space(_file: &File) -> io::Result<(u64, u64)> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "--max-disk-usage N% is not supported on this system; give MiB",
    ))
}
