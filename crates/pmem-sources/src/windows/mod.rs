//! Windows acquisition through the WinPmem driver's `\\.\pmem` device.
//!
//! [`protocol`] holds everything that does not need Windows: the driver's
//! structures, mode handling, run validation, the read loop and the
//! unload-on-drop guard; it is tested on every platform against the
//! in-process driver of [`testing`]. [`live`] (Windows only) is the thin layer
//! over the service control manager, CreateFile, DeviceIoControl and
//! ReadFile.

pub mod protocol;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(windows)]
pub mod live;

#[cfg(test)]
mod tests;

pub use protocol::{
    DriverError, DriverSource, InfoLayout, LoadedDriver, MemoryInfo, Mode, DEVICE_PATH,
    SERVICE_NAME,
};
