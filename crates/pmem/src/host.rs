//! Facts about the machine pmem runs on, for the manifest.

use crate::manifest::HostJson;
use pmem_core::Arch;

pub fn describe(arch: Arch) -> HostJson {
    let (hostname, kernel_release) = uname();
    HostJson {
        hostname,
        kernel_release,
        arch: arch.name(),
    }
}

#[cfg(unix)]
fn uname() -> (String, String) {
    // SAFETY: utsname is plain old data; uname fills it or fails.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut uts) } != 0 {
        return (String::new(), String::new());
    }
    let field = |chars: &[libc::c_char]| {
        let bytes: Vec<u8> = chars
            .iter()
            .take_while(|&&c| c != 0)
            // c_char is i8 on x86-64, u8 on arm64 Linux: its byte either way.
            .map(|&c| c.to_ne_bytes()[0])
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    (field(&uts.nodename), field(&uts.release))
}

#[cfg(not(unix))]
fn uname() -> (String, String) {
    (
        std::env::var("COMPUTERNAME").unwrap_or_default(),
        String::new(),
    )
}

/// RFC 3339 UTC timestamp of now, with seconds precision.
pub fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
