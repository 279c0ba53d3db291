//! The Windows-only layer: the service control manager (install, start,
//! stop, delete the kernel-driver service), the `\\.\pmem` device handle
//! (DeviceIoControl, SetFilePointerEx + ReadFile) and the Ctrl-C handler.
//! Everything it decides is in [`protocol`](super::protocol).

use super::protocol::{
    enable_writes_after_load, Device, DriverError, DriverSource, InfoLayout, LoadedDriver, Mode,
    ServiceControl, DEVICE_PATH, SERVICE_NAME,
};
use std::ffi::OsStr;
use std::io;
use std::os::windows::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use windows_sys::Win32::Foundation::{
    CloseHandle, GENERIC_READ, GENERIC_WRITE, HANDLE, INVALID_HANDLE_VALUE,
};
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, ReadFile, SetFilePointerEx, FILE_ATTRIBUTE_NORMAL, FILE_BEGIN, FILE_SHARE_READ,
    FILE_SHARE_WRITE, OPEN_EXISTING,
};
use windows_sys::Win32::System::Console::SetConsoleCtrlHandler;
use windows_sys::Win32::System::Services::{
    CloseServiceHandle, ControlService, CreateServiceW, DeleteService, OpenSCManagerW,
    OpenServiceW, StartServiceW, SC_HANDLE, SC_MANAGER_ALL_ACCESS, SERVICE_ALL_ACCESS,
    SERVICE_CONTROL_STOP, SERVICE_DEMAND_START, SERVICE_ERROR_NORMAL, SERVICE_KERNEL_DRIVER,
    SERVICE_STATUS,
};

/// Win32 errors the service code tells apart.
const ERROR_SERVICE_ALREADY_RUNNING: i32 = 1056;
const ERROR_SERVICE_DOES_NOT_EXIST: i32 = 1060;
const ERROR_SERVICE_NOT_ACTIVE: i32 = 1062;
const ERROR_SERVICE_MARKED_FOR_DELETE: i32 = 1072;

fn wide(text: &OsStr) -> Vec<u16> {
    text.encode_wide().chain(Some(0)).collect()
}

/// A service-manager handle closed on drop.
struct ScHandle(SC_HANDLE);

impl Drop for ScHandle {
    fn drop(&mut self) {
        // SAFETY: the handle came from OpenSCManagerW/OpenServiceW/
        // CreateServiceW and is closed once.
        unsafe { CloseServiceHandle(self.0) };
    }
}

fn manager() -> io::Result<ScHandle> {
    // SAFETY: null machine and database names mean the local defaults.
    let h = unsafe { OpenSCManagerW(null(), null(), SC_MANAGER_ALL_ACCESS) };
    if h.is_null() {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("cannot open the service control manager (run pmem as Administrator): {e}"),
        ));
    }
    Ok(ScHandle(h))
}

/// The kernel-driver service `pmem`, through the service control manager.
pub struct Scm;

impl Scm {
    fn open_service(manager: &ScHandle) -> io::Result<Option<ScHandle>> {
        let name = wide(OsStr::new(SERVICE_NAME));
        // SAFETY: valid manager handle and NUL-terminated name.
        let h = unsafe { OpenServiceW(manager.0, name.as_ptr(), SERVICE_ALL_ACCESS) };
        if h.is_null() {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(ERROR_SERVICE_DOES_NOT_EXIST) => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some(ScHandle(h)))
    }

    /// Stops (if running) and deletes the service; `Ok(false)` if there was none.
    fn stop_and_delete(manager: &ScHandle) -> io::Result<bool> {
        let Some(service) = Scm::open_service(manager)? else {
            return Ok(false);
        };
        // SAFETY: SERVICE_STATUS is plain data the call fills.
        let mut status: SERVICE_STATUS = unsafe { std::mem::zeroed() };
        // SAFETY: valid service handle.
        if unsafe { ControlService(service.0, SERVICE_CONTROL_STOP, &mut status) } == 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(ERROR_SERVICE_NOT_ACTIVE) {
                return Err(io::Error::new(
                    e.kind(),
                    format!("stopping the driver service {SERVICE_NAME}: {e}"),
                ));
            }
        }
        // SAFETY: valid service handle.
        if unsafe { DeleteService(service.0) } == 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(ERROR_SERVICE_MARKED_FOR_DELETE) {
                return Err(e);
            }
        }
        Ok(true)
    }
}

impl ServiceControl for Scm {
    fn install(&mut self, driver_path: &Path) -> io::Result<()> {
        // The service manager needs an absolute path: it resolves relative
        // ones against System32.
        let path = std::path::absolute(driver_path)?;
        if !path.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("driver file {} does not exist", path.display()),
            ));
        }
        let manager = manager()?;
        // A service left by a crashed run (or `driver load`) would make
        // CreateService fail: remove it first, as WinPmem does.
        Scm::stop_and_delete(&manager)?;
        let name = wide(OsStr::new(SERVICE_NAME));
        let binary = wide(path.as_os_str());
        // SAFETY: valid manager handle, NUL-terminated strings, optional
        // arguments null.
        let service = unsafe {
            CreateServiceW(
                manager.0,
                name.as_ptr(),
                name.as_ptr(),
                SERVICE_ALL_ACCESS,
                SERVICE_KERNEL_DRIVER,
                SERVICE_DEMAND_START,
                SERVICE_ERROR_NORMAL,
                binary.as_ptr(),
                null(),
                null_mut(),
                null(),
                null(),
                null(),
            )
        };
        if service.is_null() {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "creating the kernel-driver service for {}: {e}",
                    path.display()
                ),
            ));
        }
        let service = ScHandle(service);
        // SAFETY: valid service handle, no arguments.
        if unsafe { StartServiceW(service.0, 0, null()) } == 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(ERROR_SERVICE_ALREADY_RUNNING) {
                drop(service);
                let _ = Scm::stop_and_delete(&manager);
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "starting the driver {} failed: {e} (is it a signed WinPmem driver for this architecture? Secure Boot/HVCI may block it)",
                        path.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn remove(&mut self) -> io::Result<()> {
        Scm::stop_and_delete(&manager()?).map(|_| ())
    }
}

/// An open `\\.\pmem` handle.
pub struct WinDevice {
    handle: HANDLE,
}

// SAFETY: a file handle may be used from any thread; pmem uses it from one.
unsafe impl Send for WinDevice {}

impl WinDevice {
    /// Opens the driver's device (the driver must be loaded).
    pub fn open() -> io::Result<WinDevice> {
        let path = wide(OsStr::new(DEVICE_PATH));
        // SAFETY: NUL-terminated path, no security attributes or template.
        let handle = unsafe {
            CreateFileW(
                path.as_ptr(),
                GENERIC_READ | GENERIC_WRITE,
                FILE_SHARE_READ | FILE_SHARE_WRITE,
                null(),
                OPEN_EXISTING,
                FILE_ATTRIBUTE_NORMAL,
                null_mut(),
            )
        };
        if handle == INVALID_HANDLE_VALUE {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("cannot open {DEVICE_PATH}: {e}"),
            ));
        }
        Ok(WinDevice { handle })
    }
}

impl Drop for WinDevice {
    fn drop(&mut self) {
        // SAFETY: the handle is open and closed once.
        unsafe { CloseHandle(self.handle) };
    }
}

impl Device for WinDevice {
    fn ioctl(&mut self, code: u32, input: &[u8], output: &mut [u8]) -> io::Result<usize> {
        let mut returned = 0u32;
        // SAFETY: buffers are valid for the lengths passed; synchronous call.
        let ok = unsafe {
            windows_sys::Win32::System::IO::DeviceIoControl(
                self.handle,
                code,
                input.as_ptr().cast(),
                input.len() as u32,
                output.as_mut_ptr().cast(),
                output.len() as u32,
                &mut returned,
                null_mut(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(returned as usize)
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let distance = i64::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "address above 2^63"))?;
        // SAFETY: valid handle; the new position is not needed.
        if unsafe { SetFilePointerEx(self.handle, distance, null_mut(), FILE_BEGIN) } == 0 {
            return Err(io::Error::last_os_error());
        }
        let len = buf.len().min(u32::MAX as usize & !0xFFF) as u32;
        let mut read = 0u32;
        // SAFETY: the buffer is valid for `len` bytes; synchronous read.
        if unsafe { ReadFile(self.handle, buf.as_mut_ptr(), len, &mut read, null_mut()) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(read as usize)
    }
}

/// The flag Ctrl-C sets; installed once per process.
fn interrupted_flag() -> &'static Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(Arc::default)
}

unsafe extern "system" fn on_ctrl(_kind: u32) -> windows_sys::core::BOOL {
    interrupted_flag().store(true, Ordering::SeqCst);
    // Handled: the copy stops at its next read, the manifest records the
    // interruption and the driver is unloaded before the process exits.
    1
}

/// Installs the Ctrl-C / Ctrl-Break handler and returns its flag.
pub fn ctrl_c_flag() -> Arc<AtomicBool> {
    let flag = interrupted_flag().clone();
    // SAFETY: `on_ctrl` only touches an atomic.
    unsafe { SetConsoleCtrlHandler(Some(on_ctrl), 1) };
    flag
}

/// A live source: installs `driver` (unless `None`: the driver is already
/// loaded, e.g. by `pmem driver load`), opens the device, sets the mode and
/// reads the memory information. Dropping it closes the device, then
/// unloads and deletes the service it installed.
pub fn open(
    driver: Option<&Path>,
    mode: Option<Mode>,
) -> Result<DriverSource<WinDevice, Scm>, WindowsError> {
    let layout = InfoLayout::native();
    let mode = mode.unwrap_or(Mode::default_for(layout));
    let loaded = match driver {
        Some(path) => {
            Some(
                LoadedDriver::install(Scm, path).map_err(|source| WindowsError::Install {
                    path: path.to_path_buf(),
                    source,
                })?,
            )
        }
        None => None,
    };
    // `loaded` is dropped (driver unloaded) if the device does not open.
    let device = WinDevice::open().map_err(WindowsError::Device)?;
    Ok(DriverSource::open(
        device,
        loaded,
        mode,
        layout,
        ctrl_c_flag(),
    )?)
}

/// `pmem driver load`: install and leave loaded. With `write`
/// (`--write`), also open the device and ask the driver to enable writes
/// (IOCTL_WRITE_ENABLE); if the device does not open or the driver refuses,
/// the driver is unloaded again and nothing is left loaded.
pub fn load(driver: &Path, write: bool) -> Result<(), WindowsError> {
    let loaded = LoadedDriver::install(Scm, driver).map_err(|source| WindowsError::Install {
        path: driver.to_path_buf(),
        source,
    })?;
    let loaded = if write {
        // `loaded` is dropped (driver unloaded) on either error.
        let not_writable = |e| WindowsError::NotWritable(Box::new(e));
        let device = WinDevice::open()
            .map_err(WindowsError::Device)
            .map_err(not_writable)?;
        enable_writes_after_load(loaded, device)
            .map_err(WindowsError::Driver)
            .map_err(not_writable)?
    } else {
        loaded
    };
    loaded.keep();
    Ok(())
}

/// `pmem driver unload`: stop and delete the service; `Ok(false)` if
/// there was none.
pub fn unload() -> Result<bool, WindowsError> {
    manager()
        .and_then(|m| Scm::stop_and_delete(&m))
        .map_err(WindowsError::Unload)
}

/// Why the WinPmem driver could not be loaded, opened, read or unloaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WindowsError {
    /// Installing or starting the driver's service failed.
    #[error("cannot load the driver {}: {source}", .path.display())]
    Install {
        /// The driver file.
        path: PathBuf,
        /// The service manager's error.
        source: io::Error,
    },
    /// The device did not open (its message says why).
    #[error("{0}")]
    Device(io::Error),
    /// Stopping or deleting the service failed.
    #[error("cannot unload the driver service {SERVICE_NAME}: {0}")]
    Unload(io::Error),
    /// The driver's answers can't be used.
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// `driver load --write`: writes could not be enabled, so the driver
    /// was unloaded again.
    #[error("{0}; the driver was unloaded again (`pmem driver load` without --write leaves it loaded read-only)")]
    NotWritable(Box<WindowsError>),
}
