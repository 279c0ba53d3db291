//! The macOS device layer: opens `/dev/pmem_info` and `/dev/pmem` of the
//! MacPmem kext. Everything else is platform-neutral in the parent module.

use super::{MacSource, MacosError, MAX_INFO_LEN};
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// Reads the kext's info device (bounded) and opens its memory device.
pub fn open(device_path: &Path, info_path: &Path) -> Result<MacSource, MacosError> {
    let open_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MacosError::Open { path, source }
    };
    let info_file = File::open(info_path).map_err(open_error(info_path))?;
    let mut text = String::new();
    // One byte more than the limit tells "too large" from "exactly at it".
    info_file
        .take(MAX_INFO_LEN + 1)
        .read_to_string(&mut text)
        .map_err(open_error(info_path))?;
    if text.len() as u64 > MAX_INFO_LEN {
        return Err(MacosError::InfoTooLarge {
            path: info_path.into(),
        });
    }
    let device = File::open(device_path).map_err(open_error(device_path))?;
    MacSource::new(&text, info_path, device, device_path)
}
