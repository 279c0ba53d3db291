//! Which Linux source to read ([`SourceKind`]) and where
//! ([`SourceRequest`]), and how the command line names them.

use crate::module;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::OnceLock;

/// Which live source to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    /// kcore, then crash, then mem, then module: the first that opens and reads.
    Auto,
    /// /proc/kcore, the kernel's ELF view of its memory: reads all RAM
    /// its segments cover, whatever STRICT_DEVMEM says.
    Kcore,
    /// /dev/crash (Red Hat's crash driver): physical addresses, one page
    /// at a time.
    Crash,
    /// /dev/mem: physical addresses; a STRICT_DEVMEM kernel refuses RAM
    /// above 1 MiB.
    Mem,
    /// pmem's own kernel module (`pmem module build`), /dev/pmem-phys.
    Module,
}

impl SourceKind {
    /// Every kind, in the order the command line and its messages list
    /// them: the one list their names are taken from.
    pub const ALL: [SourceKind; 5] = [
        SourceKind::Auto,
        SourceKind::Kcore,
        SourceKind::Crash,
        SourceKind::Mem,
        SourceKind::Module,
    ];

    /// The order `auto` tries sources in.
    /// The module comes last: the user-space sources need nothing loaded.
    pub const AUTO_ORDER: [SourceKind; 4] = [
        SourceKind::Kcore,
        SourceKind::Crash,
        SourceKind::Mem,
        SourceKind::Module,
    ];

    /// The name the command line and the manifest use (`--source kcore`).
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Auto => "auto",
            SourceKind::Kcore => "kcore",
            SourceKind::Crash => "crash",
            SourceKind::Mem => "mem",
            SourceKind::Module => "module",
        }
    }

    /// The names of [`SourceKind::ALL`] as a sentence lists them: "auto,
    /// kcore, crash, mem or module" (for help texts and messages).
    pub fn names() -> String {
        names_list(false)
    }

    /// The device or procfs file read by default; `None` for `Auto`.
    pub fn default_path(self) -> Option<&'static str> {
        match self {
            SourceKind::Auto => None,
            SourceKind::Kcore => Some("/proc/kcore"),
            SourceKind::Crash => Some("/dev/crash"),
            SourceKind::Mem => Some("/dev/mem"),
            SourceKind::Module => Some(module::DEVICE_PATH),
        }
    }
}

/// The names of [`SourceKind::ALL`] as a sentence lists them; with
/// `paths`, each kind that reads a device is followed by "[:PATH]".
fn names_list(paths: bool) -> String {
    let names: Vec<String> = SourceKind::ALL
        .iter()
        .map(|kind| match kind.default_path() {
            Some(_) if paths => format!("{}[:PATH]", kind.name()),
            _ => kind.name().to_string(),
        })
        .collect();
    match names.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// "expected auto, kcore, crash, mem or module" (or with "[:PATH]"), made
/// once: [`ParseSourceError::reason`] is a `&'static str`.
fn expected(paths: bool) -> &'static str {
    static PLAIN: OnceLock<String> = OnceLock::new();
    static WITH_PATHS: OnceLock<String> = OnceLock::new();
    let cell = if paths { &WITH_PATHS } else { &PLAIN };
    cell.get_or_init(|| format!("expected {}", names_list(paths)))
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A `--source` text that names no [`SourceKind`] or is not `KIND[:PATH]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid source {text:?}: {reason}")]
pub struct ParseSourceError {
    /// The text parsed, as given.
    pub text: String,
    /// What was expected instead, e.g. "empty path after ':'".
    pub reason: &'static str,
}

impl FromStr for SourceKind {
    type Err = ParseSourceError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        SourceKind::ALL
            .into_iter()
            .find(|kind| kind.name() == text)
            .ok_or_else(|| ParseSourceError {
                text: text.to_string(),
                reason: expected(false),
            })
    }
}

/// What to open. `path` overrides the kind's default device path (tests
/// and copies of kcore); `iomem_path` overrides /proc/iomem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRequest {
    /// The source, or `Auto` to try each in [`SourceKind::AUTO_ORDER`].
    pub kind: SourceKind,
    /// The device or file to read instead of the kind's
    /// [`default_path`](SourceKind::default_path); never with `Auto`.
    pub path: Option<PathBuf>,
    /// The memory map to read instead of /proc/iomem.
    pub iomem_path: Option<PathBuf>,
}

impl Default for SourceRequest {
    fn default() -> Self {
        SourceRequest {
            kind: SourceKind::Auto,
            path: None,
            iomem_path: None,
        }
    }
}

/// Parses `KIND[:PATH]`, e.g. `kcore`, `crash:/dev/crash`, `kcore:/tmp/kcore`.
/// `auto` takes no path: it tries several devices. `iomem_path` stays `None`.
impl FromStr for SourceRequest {
    type Err = ParseSourceError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (kind, path) = match text.split_once(':') {
            Some((kind, path)) => (kind, Some(path)),
            None => (text, None),
        };
        let kind: SourceKind = kind.parse().map_err(|_| ParseSourceError {
            text: text.to_string(),
            reason: expected(true),
        })?;
        let bad = |reason| ParseSourceError {
            text: text.to_string(),
            reason,
        };
        match path {
            Some(_) if kind == SourceKind::Auto => {
                Err(bad("auto tries the default devices and takes no path"))
            }
            Some("") => Err(bad("empty path after ':'")),
            path => Ok(SourceRequest {
                kind,
                path: path.map(PathBuf::from),
                iomem_path: None,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests() {
        let r: SourceRequest = "kcore:/tmp/x:y".parse().unwrap();
        assert_eq!(r.kind, SourceKind::Kcore);
        assert_eq!(r.path, Some(PathBuf::from("/tmp/x:y")));
        let r: SourceRequest = "mem".parse().unwrap();
        assert_eq!((r.kind, r.path), (SourceKind::Mem, None));
        let r: SourceRequest = "module".parse().unwrap();
        assert_eq!((r.kind, r.path), (SourceKind::Module, None));
        assert_eq!(
            SourceKind::Module.default_path(),
            Some("/dev/pmem-phys"),
            "never /dev/pmemN (NVDIMM)"
        );
        assert_eq!(SourceKind::AUTO_ORDER.last(), Some(&SourceKind::Module));
        assert_eq!(
            "auto".parse::<SourceRequest>().unwrap(),
            SourceRequest::default()
        );
        for bad in ["auto:/dev/mem", "kcore:", "disk", "", "Kcore"] {
            assert!(bad.parse::<SourceRequest>().is_err(), "{bad}");
        }
        for kind in SourceKind::ALL {
            assert_eq!(kind.to_string().parse::<SourceKind>().unwrap(), kind);
        }
        assert_eq!(
            "disk".parse::<SourceKind>().unwrap_err().reason,
            "expected auto, kcore, crash, mem or module"
        );
        assert_eq!(
            "disk".parse::<SourceRequest>().unwrap_err().reason,
            "expected auto, kcore[:PATH], crash[:PATH], mem[:PATH] or module[:PATH]"
        );
    }
}
