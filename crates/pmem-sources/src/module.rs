//! pmem's own kernel module (`module/pmem_phys.c`): `/dev/pmem-phys`, a
//! read-only character device whose file offset is the physical address.
//!
//! Before reading, the node is checked to be the module's device: the
//! module must be loaded (`/sys/module/pmem_phys`) and the node's device
//! number must be the one the kernel gave the module's misc device
//! (`/sys/class/misc/pmem-phys/dev`), so a stray file or an NVDIMM
//! `/dev/pmemN` is never read as physical memory. Opening failures are
//! explained: missing CAP_SYS_RAWIO, lockdown "confidentiality", guests
//! with unaccepted memory.

use std::io;
use std::path::{Path, PathBuf};

/// The module's name as the kernel knows it (`/sys/module/NAME`).
pub const MODULE_NAME: &str = "pmem_phys";
/// The misc device's name (`/dev/NAME`, `/sys/class/misc/NAME`).
pub const DEVICE_NAME: &str = "pmem-phys";
/// Where the kernel's devtmpfs puts the node.
pub const DEVICE_PATH: &str = "/dev/pmem-phys";
/// CAP_SYS_RAWIO's bit in the capability sets of /proc/self/status.
const CAP_SYS_RAWIO: u32 = 17;

/// Why the node can't be trusted as the module's device.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The module is not loaded: its sysfs directory is missing.
    #[error("the {MODULE_NAME} module is not loaded ({} is missing): build it with `pmem module build` and load it with `pmem module load {MODULE_NAME}.ko` (or insmod)", .sysfs_module.display())]
    NotLoaded {
        /// /sys/module/pmem_phys (or the test's stand-in).
        sysfs_module: PathBuf,
    },
    /// The device node exists but is not the module's (another driver's
    /// node, or one any user could have made).
    #[error("{} is not the {MODULE_NAME} module's device: {reason}", .path.display())]
    NotOurs {
        /// The device node.
        path: PathBuf,
        /// What does not match.
        reason: String,
    },
}

/// A `MAJOR:MINOR` line as sysfs `dev` attributes hold it.
pub fn parse_dev(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.trim().split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Checks that `device` is the node of the loaded module's misc device,
/// with sysfs at `sysfs` (normally `/sys`). Returns the module's version.
pub fn check_node(device: &Path, sysfs: &Path) -> Result<String, NodeError> {
    let module_dir = sysfs.join("module").join(MODULE_NAME);
    if !module_dir.is_dir() {
        return Err(NodeError::NotLoaded {
            sysfs_module: module_dir,
        });
    }
    let not_ours = |reason: String| NodeError::NotOurs {
        path: device.to_path_buf(),
        reason,
    };
    let version = std::fs::read_to_string(module_dir.join("version"))
        .map(|v| v.trim().to_string())
        .map_err(|e| {
            not_ours(format!(
                "the loaded {MODULE_NAME} has no version attribute ({e}): it is not pmem's module"
            ))
        })?;
    let dev_attr = sysfs.join("class/misc").join(DEVICE_NAME).join("dev");
    let text = std::fs::read_to_string(&dev_attr).map_err(|e| {
        not_ours(format!(
            "{} is unreadable ({e}): the module registered no {DEVICE_NAME} device",
            dev_attr.display()
        ))
    })?;
    let want = parse_dev(&text).ok_or_else(|| {
        not_ours(format!(
            "{} holds {:?}, not MAJOR:MINOR",
            dev_attr.display(),
            text.trim()
        ))
    })?;
    let got = node_number(device).map_err(|e| not_ours(e.to_string()))?;
    if got != want {
        return Err(not_ours(format!(
            "its device number is {}:{}, the module's is {}:{} ({})",
            got.0,
            got.1,
            want.0,
            want.1,
            dev_attr.display()
        )));
    }
    Ok(version)
}

/// The device number of a character device node (Linux's dev_t split;
/// the module exists on Linux only).
#[cfg(target_os = "linux")]
fn node_number(path: &Path) -> io::Result<(u32, u32)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::metadata(path)?;
    if !meta.file_type().is_char_device() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "it is not a character device",
        ));
    }
    let rdev = meta.rdev();
    Ok((libc::major(rdev), libc::minor(rdev)))
}

#[cfg(not(target_os = "linux"))]
fn node_number(_path: &Path) -> io::Result<(u32, u32)> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "pmem's kernel module exists on Linux only",
    ))
}

/// Whether CAP_SYS_RAWIO is in the effective set, from the text of
/// /proc/self/status; `None` when it has no readable CapEff line.
pub fn has_sys_rawio(status: &str) -> Option<bool> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    let caps = u64::from_str_radix(hex, 16).ok()?;
    Some(caps & (1 << CAP_SYS_RAWIO) != 0)
}

/// The active lockdown mode from /sys/kernel/security/lockdown, whose
/// text is e.g. `none integrity [confidentiality]`.
pub fn active_lockdown(text: &str) -> Option<&str> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))
}

/// What the machine says about a failed open, for the error's hint.
#[derive(Debug, Clone, Default)]
pub struct OpenContext {
    /// From /proc/self/status.
    pub sys_rawio: Option<bool>,
    /// From /sys/kernel/security/lockdown (securityfs may be unmounted).
    pub lockdown: Option<String>,
}

impl OpenContext {
    /// Reads the live machine's capability and lockdown state.
    pub fn read() -> OpenContext {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let lockdown = std::fs::read_to_string("/sys/kernel/security/lockdown").ok();
        OpenContext {
            sys_rawio: has_sys_rawio(&status),
            lockdown: lockdown
                .as_deref()
                .and_then(active_lockdown)
                .map(String::from),
        }
    }
}

/// Advice for an open of the module's device that failed with `error`,
/// starting with "; " (empty when there is none). The module answers EPERM
/// both without CAP_SYS_RAWIO and under lockdown, so the capability decides.
pub fn open_hint(error: &io::Error, context: &OpenContext) -> String {
    #[cfg(unix)]
    {
        match error.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => match context.sys_rawio {
                Some(false) => "; opening it needs CAP_SYS_RAWIO: run pmem as root".into(),
                _ => {
                    let mode = match context.lockdown.as_deref() {
                        Some(mode) => format!("lockdown is \"{mode}\""),
                        None => "lockdown \"confidentiality\" is the likely cause (/sys/kernel/security/lockdown is unreadable)".into(),
                    };
                    format!(
                        "; the module refuses to open under kernel lockdown \"confidentiality\", as /proc/kcore does ({mode}); \
                         physical memory can't be read on this boot without lifting lockdown"
                    )
                }
            },
            Some(libc::EOPNOTSUPP) => "; the module refuses machines whose firmware hands over unaccepted memory \
                 (TDX/SEV-SNP guests with lazy acceptance): reading a page never accepted would harm the guest"
                .into(),
            Some(libc::ENOENT) => format!(
                "; the module is loaded but the node is missing: is devtmpfs mounted on /dev? \
                 (the device number is in /sys/class/misc/{DEVICE_NAME}/dev)"
            ),
            _ => String::new(),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (error, context);
        String::new()
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::fs;

    /// A fake sysfs with the module loaded and its misc device at `dev`.
    fn sysfs(dev: &str, version: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let module = dir.path().join("module").join(MODULE_NAME);
        fs::create_dir_all(&module).unwrap();
        if let Some(v) = version {
            fs::write(module.join("version"), format!("{v}\n")).unwrap();
        }
        let misc = dir.path().join("class/misc").join(DEVICE_NAME);
        fs::create_dir_all(&misc).unwrap();
        fs::write(misc.join("dev"), dev).unwrap();
        dir
    }

    #[test]
    fn parses_dev_attributes() {
        assert_eq!(parse_dev("10:122\n"), Some((10, 122)));
        assert_eq!(parse_dev("259:0"), Some((259, 0)));
        for bad in ["", "10", "10:", ":1", "a:b", "10:1:2"] {
            assert_eq!(parse_dev(bad), None, "{bad}");
        }
    }

    #[test]
    fn node_must_be_the_modules_device() {
        // /dev/null is 1:3 on every Linux system; a fake sysfs names it.
        let null = Path::new("/dev/null");
        let ok = sysfs("1:3\n", Some("1.0.0"));
        assert_eq!(check_node(null, ok.path()).unwrap(), "1.0.0");

        let other = sysfs("10:122\n", Some("1.0.0"));
        let err = check_node(null, other.path()).unwrap_err().to_string();
        assert!(
            err.contains("device number is 1:3, the module's is 10:122"),
            "{err}"
        );

        // A regular file is never a device, whatever sysfs says.
        let file = ok.path().join("module").join(MODULE_NAME).join("version");
        let err = check_node(&file, ok.path()).unwrap_err().to_string();
        assert!(err.contains("not a character device"), "{err}");

        let missing = check_node(Path::new("/dev/pmem-phys-missing"), ok.path()).unwrap_err();
        assert!(matches!(missing, NodeError::NotOurs { .. }), "{missing}");

        let no_version = sysfs("1:3", None);
        let err = check_node(null, no_version.path()).unwrap_err().to_string();
        assert!(err.contains("no version attribute"), "{err}");

        let garbage = sysfs("one:three", Some("1.0.0"));
        let err = check_node(null, garbage.path()).unwrap_err().to_string();
        assert!(err.contains("not MAJOR:MINOR"), "{err}");
    }

    #[test]
    fn module_not_loaded() {
        let empty = tempfile::tempdir().unwrap();
        let err = check_node(Path::new("/dev/null"), empty.path()).unwrap_err();
        assert!(matches!(err, NodeError::NotLoaded { .. }));
        let text = err.to_string();
        assert!(text.contains("not loaded"), "{text}");
        assert!(text.contains("pmem module build"), "{text}");
    }

    #[test]
    fn reads_capabilities_and_lockdown() {
        let status = "Name:\tpmem\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(has_sys_rawio(status), Some(true));
        assert_eq!(
            has_sys_rawio("CapEff:\t0000000000020000\n"),
            Some(true),
            "bit 17 alone"
        );
        assert_eq!(has_sys_rawio("CapEff:\t00000000fffdffff\n"), Some(false));
        assert_eq!(has_sys_rawio("CapPrm:\t0000003fffffffff\n"), None);
        assert_eq!(
            active_lockdown("none integrity [confidentiality]\n"),
            Some("confidentiality")
        );
        assert_eq!(
            active_lockdown("[none] integrity confidentiality"),
            Some("none")
        );
        assert_eq!(active_lockdown(""), None);
    }

    #[test]
    fn open_hints_name_the_cause() {
        let eperm = io::Error::from_raw_os_error(libc::EPERM);
        let unprivileged = OpenContext {
            sys_rawio: Some(false),
            lockdown: Some("none".into()),
        };
        assert!(open_hint(&eperm, &unprivileged).contains("CAP_SYS_RAWIO"));
        let locked = OpenContext {
            sys_rawio: Some(true),
            lockdown: Some("confidentiality".into()),
        };
        let hint = open_hint(&eperm, &locked);
        assert!(hint.contains("lockdown is \"confidentiality\""), "{hint}");
        let unknown = OpenContext {
            sys_rawio: Some(true),
            lockdown: None,
        };
        assert!(open_hint(&eperm, &unknown).contains("likely cause"));
        let unaccepted = io::Error::from_raw_os_error(libc::EOPNOTSUPP);
        assert!(open_hint(&unaccepted, &locked).contains("unaccepted memory"));
        let other = io::Error::from_raw_os_error(libc::EIO);
        assert_eq!(open_hint(&other, &locked), "");
    }
}
