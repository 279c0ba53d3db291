//! [`open`]: the Linux sources, and on every other OS an error that says so.

use crate::error::SourceError;
use crate::info::OpenedSource;
use crate::kind::SourceRequest;

/// Opens the requested source: reads iomem (default /proc/iomem), opens the
/// device, maps it and probe-reads it: its first page, and when that fails
/// up to 15 more spread over the map; one that reads is enough (a bad page
/// is the copy's to record, never a reason to refuse a source). For `auto`,
/// tries kcore, crash, mem and module in turn and records why each skipped
/// one failed.
#[cfg(target_os = "linux")]
pub fn open(request: &SourceRequest) -> Result<OpenedSource, SourceError> {
    crate::linux::open(request)
}

/// Live sources exist only on Linux.
#[cfg(not(target_os = "linux"))]
pub fn open(_request: &SourceRequest) -> Result<OpenedSource, SourceError> {
    Err(SourceError::UnsupportedOs)
}

#[cfg(all(test, not(target_os = "linux")))]
mod tests {
    use super::*;

    #[test]
    fn open_is_unsupported() {
        assert!(matches!(
            open(&SourceRequest::default()),
            Err(SourceError::UnsupportedOs)
        ));
    }
}
