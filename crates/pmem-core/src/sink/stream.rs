//! Streams (standard output, pipes, FIFOs): written in order, widened to
//! hold one whole buffer where the system lets us.

use std::io::{self, Write};

/// Standard output for image bytes: a pipe widened to one buffer, written
/// through a descriptor of its own. Standard output's own handle is
/// line-buffered: image bytes full of newlines would go out in odd pieces.
pub fn stdout_stream() -> Box<dyn Write + Send> {
    #[cfg(unix)]
    {
        widen_pipe(1);
        use std::os::fd::AsFd;
        if let Ok(fd) = io::stdout().as_fd().try_clone_to_owned() {
            return Box::new(std::fs::File::from(fd));
        }
    }
    Box::new(io::stdout())
}

/// Makes a pipe hold one whole buffer (1 MiB, the usual unprivileged
/// maximum) instead of 64 KiB: the reader then wakes once per buffer rather
/// than sixteen times, which matters where context switches are dear (one
/// CPU, emulated machines). Not a pipe, or not allowed: left as it is.
#[cfg(unix)]
pub(crate) fn widen_pipe(fd: i32) {
    #[cfg(target_os = "linux")]
    // SAFETY: F_SETPIPE_SZ takes an int and fails harmlessly on non-pipes.
    unsafe {
        libc::fcntl(fd, libc::F_SETPIPE_SZ, super::BUFFER as libc::c_int);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = fd;
}
