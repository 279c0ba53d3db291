//! Image files: created private, written by offset so that holes stay
//! holes (a sparse file), given their full length and made durable at the
//! end.

use super::disk_limit::{DiskLimit, DiskLimited};
use std::fs::File;
use std::io;
use std::path::Path;

/// Creates an image file for writing: mode 0600 (images hold secrets), never
/// through a symlink (O_NOFOLLOW), and never over an existing file unless
/// `overwrite` is set.
pub fn create_image_file(path: &Path, overwrite: bool) -> io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    // Readable too: bytes held back from the hash (to be patched) are
    // hashed by reading them back.
    options.read(true).write(true);
    if overwrite {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    let file = options.open(path)?;
    #[cfg(unix)]
    {
        // An existing file opened with --force keeps its old mode: tighten it.
        use std::os::unix::fs::PermissionsExt;
        let meta = file.metadata()?;
        if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(file)
}

/// A regular image file written by image offset: bytes never written (holes)
/// take no space. Optionally under a [`DiskLimit`].
pub(crate) struct SparseFile {
    file: File,
    /// Readable (as [`create_image_file`] makes them): bytes may be
    /// rewritten, and the hasher reads held bytes back.
    readable: bool,
    limit: Option<DiskLimited>,
}

impl SparseFile {
    /// The file, and a second handle that reads it back by offset when the
    /// file is readable.
    pub(crate) fn new(file: File) -> (SparseFile, Option<File>) {
        let reader = file
            .try_clone()
            .ok()
            .filter(|f| read_at(f, &mut [0u8; 1], 0).is_ok());
        let sparse = SparseFile {
            file,
            readable: reader.is_some(),
            limit: None,
        };
        (sparse, reader)
    }

    /// Enforces `limit`: checked now, before anything is written, and on
    /// every [`write`](Self::write).
    pub(crate) fn limit(&mut self, limit: DiskLimit) -> io::Result<()> {
        self.limit = Some(DiskLimited::new(limit, &self.file)?);
        Ok(())
    }

    /// The disk limit stopped the writes.
    pub(crate) fn stopped(&self) -> bool {
        self.limit.as_ref().is_some_and(DiskLimited::stopped)
    }

    pub(crate) fn can_rewrite(&self) -> bool {
        self.readable
    }

    /// Writes `bytes` at image offset `at`, within the disk limit.
    pub(crate) fn write(&mut self, at: u64, bytes: &[u8]) -> io::Result<()> {
        if let Some(limit) = &mut self.limit {
            limit.allow(&self.file, at + bytes.len() as u64)?;
        }
        write_at(&self.file, bytes, at)
    }

    /// Writes `bytes` at `at` without consulting the disk limit: bytes
    /// rewritten in place, or the last buffer of an abandoned image.
    pub(crate) fn write_unlimited(&self, at: u64, bytes: &[u8]) -> io::Result<()> {
        write_at(&self.file, bytes, at)
    }

    /// A hole at the end: gives the file its full length `len`.
    pub(crate) fn extend_to(&self, len: u64) -> io::Result<()> {
        if self.file.metadata()?.len() < len {
            self.file.set_len(len)?;
        }
        Ok(())
    }

    /// fsync: the image is on disk.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
    }
}

#[cfg(unix)]
fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(windows)]
fn write_at(file: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        let n = file.seek_write(buf, offset)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
        offset += n as u64;
    }
    Ok(())
}

#[cfg(unix)]
pub(crate) fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, offset)
}

#[cfg(windows)]
pub(crate) fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, offset)
}

// The test checks Unix modes and symlinks.
#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn image_files_are_private_and_not_clobbered() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        drop(create_image_file(&path, false).unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let err = create_image_file(&path, false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(create_image_file(&path, true).unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(
            create_image_file(&link, true).is_err(),
            "must not follow symlinks"
        );
    }
}
