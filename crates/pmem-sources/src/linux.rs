//! Opening the live sources on Linux: procfs and device paths, `auto`.

use crate::devices;
use crate::error::SourceError;
use crate::info::OpenedSource;
use crate::iomem::{self, Iomem};
use crate::kind::{SourceKind, SourceRequest};
use crate::module;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

const IOMEM: &str = "/proc/iomem";
const SYSFS: &str = "/sys";

pub(crate) fn open(request: &SourceRequest) -> Result<OpenedSource, SourceError> {
    let iomem_path = request
        .iomem_path
        .clone()
        .unwrap_or_else(|| PathBuf::from(IOMEM));
    let iomem = read_iomem(&iomem_path)?;
    match (request.kind, &request.path) {
        (SourceKind::Auto, Some(_)) => Err(SourceError::PathNotAllowed {
            kind: SourceKind::Auto,
        }),
        (SourceKind::Auto, None) => {
            let candidates: Vec<(SourceKind, PathBuf)> = SourceKind::AUTO_ORDER
                .iter()
                .filter_map(|&k| Some((k, PathBuf::from(k.default_path()?))))
                .collect();
            open_first(&candidates, &iomem)
        }
        (kind, path) => {
            let path = match path {
                Some(p) => p.clone(),
                None => PathBuf::from(kind.default_path().unwrap_or_default()),
            };
            open_kind(kind, &path, iomem)
        }
    }
}

/// Reads and checks iomem: a listing with hidden addresses or without RAM
/// would make every source look empty, so it is refused up front.
fn read_iomem(path: &Path) -> Result<Iomem, SourceError> {
    let text = iomem::read_file(path).map_err(|source| SourceError::IomemRead {
        path: path.to_path_buf(),
        source,
    })?;
    let iomem = iomem::parse(&text).map_err(|source| SourceError::IomemParse {
        path: path.to_path_buf(),
        source,
    })?;
    if iomem.is_all_zero() {
        return Err(SourceError::IomemHidden {
            path: path.to_path_buf(),
        });
    }
    if iomem.system_ram().is_empty() {
        return Err(SourceError::NoSystemRam {
            path: path.to_path_buf(),
        });
    }
    Ok(iomem)
}

/// `auto`: the first candidate that opens, maps and passes its probe read.
fn open_first(
    candidates: &[(SourceKind, PathBuf)],
    iomem: &Iomem,
) -> Result<OpenedSource, SourceError> {
    let mut skipped = Vec::new();
    for (kind, path) in candidates {
        match open_kind(*kind, path, iomem.clone()) {
            Ok(mut source) => {
                source.info.skipped = skipped;
                return Ok(source);
            }
            Err(e) => skipped.push((*kind, e.to_string())),
        }
    }
    Err(SourceError::NoSourceAvailable { skipped })
}

fn open_kind(kind: SourceKind, path: &Path, iomem: Iomem) -> Result<OpenedSource, SourceError> {
    // The module's node is checked before it is opened: never read a file
    // that is not the loaded module's device as physical memory.
    let module_version = match kind {
        SourceKind::Module => Some(module::check_node(path, Path::new(SYSFS))?),
        _ => None,
    };
    // Read-only; std adds O_CLOEXEC. No O_NOFOLLOW: /dev entries may be
    // symlinks, and tests point at files.
    let file = File::open(path).map_err(|source| SourceError::Open {
        kind,
        path: path.to_path_buf(),
        hint: match kind {
            SourceKind::Module => module::open_hint(&source, &module::OpenContext::read()),
            _ => open_hint(kind, &source),
        },
        source,
    })?;
    match kind {
        SourceKind::Kcore => devices::kcore(file, path, iomem),
        SourceKind::Crash => devices::crash(file, path, iomem),
        SourceKind::Mem => devices::mem(file, path, iomem),
        SourceKind::Module => {
            devices::module(file, path, iomem, module_version.unwrap_or_default())
        }
        SourceKind::Auto => Err(SourceError::PathNotAllowed { kind }),
    }
}

fn open_hint(kind: SourceKind, error: &io::Error) -> String {
    match (kind, error.kind()) {
        (SourceKind::Crash, io::ErrorKind::NotFound) => {
            "; the crash driver exists on RHEL-family kernels: try `modprobe crash`".into()
        }
        (_, io::ErrorKind::PermissionDenied) => {
            "; run as root (kernel lockdown in \"confidentiality\" mode also blocks it)".into()
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{iomem_text, pattern, write_physical_file, KcoreBuilder, Segment};
    use pmem_core::{Arch, Range};

    const MIB: u64 = 1 << 20;

    struct Files {
        dir: tempfile::TempDir,
        iomem: PathBuf,
    }

    impl Files {
        fn new(ram: &[Range]) -> Files {
            let dir = tempfile::tempdir().unwrap();
            let iomem = dir.path().join("iomem");
            std::fs::write(&iomem, iomem_text(ram)).unwrap();
            Files { dir, iomem }
        }
        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }
    }

    fn ram() -> Vec<Range> {
        vec![
            Range::new(0x1000, 0x9fc00).unwrap(),
            Range::new(MIB, 8 * MIB).unwrap(),
        ]
    }

    fn write_kcore(path: &Path) {
        KcoreBuilder::new(Arch::X86_64)
            .segment(Segment::not_ram(0xffff_c900_0000_0000, 64 * MIB))
            .segment(Segment::ram(0x1000, 0x9e000))
            .segment(Segment::ram(MIB, 7 * MIB))
            .write(path)
            .unwrap();
    }

    #[test]
    fn opens_kcore_from_overridden_paths() {
        let files = Files::new(&ram());
        write_kcore(&files.path("kcore"));
        let request: SourceRequest = format!("kcore:{}", files.path("kcore").display())
            .parse()
            .unwrap();
        let request = SourceRequest {
            iomem_path: Some(files.iomem.clone()),
            ..request
        };
        let mut source = open(&request).unwrap();
        assert_eq!(source.info.kind, SourceKind::Kcore);
        assert_eq!(source.info.path, files.path("kcore"));
        assert!(source.info.skipped.is_empty());
        let mut buf = vec![0; 4096];
        source.memory.read_at(5 * MIB, &mut buf).unwrap();
        assert_eq!(buf, pattern(5 * MIB, 4096));
    }

    #[test]
    fn auto_falls_back_in_order() {
        let files = Files::new(&ram());
        write_physical_file(&files.path("crash"), &ram()).unwrap();
        write_physical_file(&files.path("mem"), &ram()).unwrap();
        // A kcore that opens but can't be read: truncated after the headers.
        write_kcore(&files.path("kcore"));
        File::options()
            .write(true)
            .open(files.path("kcore"))
            .unwrap()
            .set_len(4096)
            .unwrap();
        let iomem = read_iomem(&files.iomem).unwrap();
        let candidates = |k: &str, c: &str, m: &str| {
            vec![
                (SourceKind::Kcore, files.path(k)),
                (SourceKind::Crash, files.path(c)),
                (SourceKind::Mem, files.path(m)),
            ]
        };

        let source = open_first(&candidates("missing", "crash", "mem"), &iomem).unwrap();
        assert_eq!(source.info.kind, SourceKind::Crash);
        assert_eq!(source.info.skipped.len(), 1);
        assert_eq!(source.info.skipped[0].0, SourceKind::Kcore);
        assert!(source.info.skipped[0].1.contains("cannot open"));

        let source = open_first(&candidates("kcore", "missing", "mem"), &iomem).unwrap();
        assert_eq!(source.info.kind, SourceKind::Mem);
        let why: Vec<&str> = source.info.skipped.iter().map(|s| s.1.as_str()).collect();
        assert!(why[0].contains("probe read"), "{why:?}");
        assert!(why[1].contains("modprobe crash"), "{why:?}");

        write_kcore(&files.path("kcore"));
        let source = open_first(&candidates("kcore", "crash", "mem"), &iomem).unwrap();
        assert_eq!(source.info.kind, SourceKind::Kcore);

        // The module comes last; with no module loaded it explains itself.
        let mut all = candidates("none", "none", "none");
        all.push((SourceKind::Module, files.path("pmem-phys")));
        let err = open_first(&all, &iomem).unwrap_err();
        assert!(err.to_string().contains("module: "), "{err}");
        assert_eq!(err.to_string().lines().count(), 5, "{err}");

        let err = open_first(&candidates("none", "none", "none"), &iomem).unwrap_err();
        match &err {
            SourceError::NoSourceAvailable { skipped } => assert_eq!(skipped.len(), 3),
            other => panic!("{other}"),
        }
        assert_eq!(err.to_string().lines().count(), 4, "{err}");
    }

    #[test]
    fn iomem_refusals() {
        let files = Files::new(&ram());
        let zero = files.path("zero");
        std::fs::write(
            &zero,
            "00000000-00000000 : Reserved\n00000000-00000000 : System RAM\n",
        )
        .unwrap();
        let err = read_iomem(&zero).unwrap_err();
        assert!(err.to_string().contains("run as root"), "{err}");
        let none = files.path("none");
        std::fs::write(&none, "00000000-00000fff : Reserved\n").unwrap();
        assert!(matches!(
            read_iomem(&none),
            Err(SourceError::NoSystemRam { .. })
        ));
        let garbage = files.path("garbage");
        std::fs::write(&garbage, "00000000-00000fff : Reserved\nnonsense\n").unwrap();
        let err = read_iomem(&garbage).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(matches!(
            read_iomem(&files.path("missing")),
            Err(SourceError::IomemRead { .. })
        ));
        let request = SourceRequest {
            kind: SourceKind::Auto,
            path: Some(files.path("x")),
            iomem_path: Some(files.iomem.clone()),
        };
        assert!(matches!(
            open(&request),
            Err(SourceError::PathNotAllowed { .. })
        ));
    }
}
