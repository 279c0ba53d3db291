//! `pmem module`: pmem's own read-only kernel module for Linux machines
//! without a usable /proc/kcore. Its source (`module/` in the project)
//! travels inside this binary, so a responder holding only pmem and the
//! target kernel's headers can build it.
//!
//! Writing physical memory is opt-in twice: a separate build
//! (`build --write`) and a load parameter (`load --write`, writable=1).

use anyhow::{bail, Context, Result};
use pmem_sources::module::{DEVICE_PATH, MODULE_NAME};
use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// The module's source files, embedded at build time.
pub const SOURCES: [(&str, &str); 3] = [
    ("pmem_phys.c", include_str!("../../../module/pmem_phys.c")),
    ("Kbuild", include_str!("../../../module/Kbuild")),
    ("Makefile", include_str!("../../../module/Makefile")),
];

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Build pmem_phys.ko against kernel headers (default: the running
    /// kernel's, /lib/modules/$(uname -r)/build). Needs make and the C
    /// compiler the kernel was built with.
    Build {
        /// Kernel headers or build tree (the directory `make -C` takes).
        #[arg(long, value_name = "DIR")]
        headers: Option<PathBuf>,
        /// Where to write the module [default: pmem_phys.ko, with --write
        /// pmem_phys-write.ko].
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Build the write build: /dev/pmem-phys can also write whole
        /// System RAM pages once loaded with `pmem module load --write`.
        /// For research and teaching on machines you may crash, never for
        /// regular systems; refuses to load under kernel lockdown.
        #[arg(long)]
        write: bool,
    },
    /// Write the module's source (C, Kbuild, Makefile) into DIR, e.g. to
    /// build or sign it elsewhere.
    Source { dir: PathBuf },
    /// Load the module (finit_module), explaining a refusal: unsigned
    /// module under Secure Boot / module.sig_enforce, another kernel's build.
    Load {
        /// The module [default: pmem_phys.ko, with --write pmem_phys-write.ko].
        file: Option<PathBuf>,
        /// Turn writing on (writable=1): only the write build has it. Taints
        /// the kernel; every write is logged to the kernel log.
        #[arg(long)]
        write: bool,
    },
    /// Unload the module (its device node and /sys/module entry go away).
    Unload,
}

pub fn run(args: Args) -> Result<ExitCode> {
    match args.command {
        Sub::Build {
            headers,
            out,
            write,
        } => build(headers, &out.unwrap_or_else(|| default_file(write)), write),
        Sub::Source { dir } => {
            write_sources(&dir)?;
            eprintln!(
                "pmem: module source in {}; build: make -C /lib/modules/$(uname -r)/build M=$PWD modules",
                dir.display()
            );
            Ok(())
        }
        Sub::Load { file, write } => load(&file.unwrap_or_else(|| default_file(write)), write),
        Sub::Unload => unload(),
    }?;
    Ok(ExitCode::SUCCESS)
}

/// The module file `build` writes and `load` takes by default.
fn default_file(write: bool) -> PathBuf {
    PathBuf::from(if write {
        "pmem_phys-write.ko"
    } else {
        "pmem_phys.ko"
    })
}

/// The write build's load parameter (`parm=writable:...` in its .modinfo;
/// /sys/module/pmem_phys/parameters/writable once loaded).
pub const WRITE_PARAMETER: &str = "writable";

/// Whether a module file is the write build.
pub fn is_write_build(ko: &[u8]) -> bool {
    modinfo(ko, "parm").is_some_and(|p| p.starts_with(&format!("{WRITE_PARAMETER}:")))
}

fn write_sources(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, text) in SOURCES {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn running_release() -> Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("reading the running kernel's release (/proc/sys/kernel/osrelease)")?
        .trim()
        .to_string())
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// A fresh private build directory. Kbuild refuses M= paths with spaces or
/// colons, so a TMPDIR holding them is not used.
fn build_dir() -> Result<PathBuf> {
    let base = std::env::temp_dir();
    let base = if base.to_string_lossy().contains([' ', ':']) {
        PathBuf::from("/tmp")
    } else {
        base
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = base.join(format!("pmem-module-{}-{nanos}", std::process::id()));
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Text between `key=` and the next NUL in a module's .modinfo.
pub fn modinfo(ko: &[u8], key: &str) -> Option<String> {
    let needle = format!("{key}=");
    let at = ko
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())?;
    let rest = &ko[at + needle.len()..];
    let end = rest.iter().position(|&b| b == 0)?;
    String::from_utf8(rest[..end].to_vec()).ok()
}

/// Why `make` did not produce a module, as advice.
fn build_hint(headers: &Path, output: &str) -> String {
    if output.contains("No such file or directory") && output.contains("Makefile") {
        return format!("; {} is not a usable kernel build tree", headers.display());
    }
    if output.contains("gcc") && output.contains("not found") {
        return "; install the C compiler the kernel was built with (see the headers' CONFIG_CC_VERSION_TEXT)".into();
    }
    String::new()
}

fn build(headers: Option<PathBuf>, out: &Path, write: bool) -> Result<()> {
    let headers = match headers {
        Some(dir) => dir,
        None => PathBuf::from(format!("/lib/modules/{}/build", running_release()?)),
    };
    if !headers.join("Makefile").is_file() {
        bail!(
            "no kernel headers at {}: install this kernel's headers (Debian/Ubuntu: linux-headers-$(uname -r); \
             RHEL/Fedora: kernel-devel-$(uname -r)) or pass --headers DIR",
            headers.display()
        );
    }
    let headers = headers
        .canonicalize()
        .with_context(|| format!("resolving {}", headers.display()))?;
    let dir = build_dir()?;
    let result = build_in(&headers, &dir, out, write);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn build_in(headers: &Path, dir: &Path, out: &Path, write: bool) -> Result<()> {
    write_sources(dir)?;
    let mut make = Command::new("make");
    make.arg("-C")
        .arg(headers)
        .arg(format!("M={}", dir.display()))
        .arg("modules");
    if write {
        // module/Kbuild: ccflags-$(PMEM_PHYS_WRITE) += -DPMEM_PHYS_WRITE
        make.arg("PMEM_PHYS_WRITE=y");
    }
    // Module BTF (for BPF tools) needs pahole; the module works without it.
    let config = std::fs::read_to_string(headers.join(".config")).unwrap_or_default();
    if config.contains("CONFIG_DEBUG_INFO_BTF_MODULES=y") && !on_path("pahole") {
        eprintln!(
            "pmem: pahole not found: building without module BTF (CONFIG_DEBUG_INFO_BTF_MODULES=)"
        );
        make.arg("CONFIG_DEBUG_INFO_BTF_MODULES=");
    }
    eprintln!(
        "pmem: building {MODULE_NAME}.ko{} against {}",
        if write { " (the write build)" } else { "" },
        headers.display()
    );
    let output = make.output().context("running make (is it installed?)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let ko = dir.join(format!("{MODULE_NAME}.ko"));
    if !output.status.success() || !ko.is_file() {
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "make failed ({}){}:\n{}",
            output.status,
            build_hint(headers, &text),
            tail.join("\n")
        );
    }
    // Warnings from the compiler are worth seeing; the rest is noise.
    for line in text.lines().filter(|l| l.contains("warning")) {
        eprintln!("make: {line}");
    }
    let bytes = std::fs::read(&ko).with_context(|| format!("reading {}", ko.display()))?;
    if is_write_build(&bytes) != write {
        bail!(
            "make built {} without the {WRITE_PARAMETER} parameter the write build has: the \
             kernel's build ignored PMEM_PHYS_WRITE",
            ko.display()
        );
    }
    std::fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "pmem: wrote {} ({} bytes, version {}, vermagic {})",
        out.display(),
        bytes.len(),
        modinfo(&bytes, "version").unwrap_or_else(|| "?".into()),
        modinfo(&bytes, "vermagic")
            .unwrap_or_else(|| "?".into())
            .trim()
    );
    if write {
        eprintln!(
            "pmem: this is the WRITE build: `pmem module load --write {}` lets root overwrite physical \
             memory (pmem mount --write). For research and teaching on machines you may crash, never \
             for regular systems",
            out.display()
        );
    } else {
        eprintln!(
            "pmem: load it on that kernel with `pmem module load {}`, then `pmem acquire --source module ...`",
            out.display()
        );
    }
    Ok(())
}

/// Advice for a refused finit_module.
pub fn load_hint(errno: i32, file_vermagic: Option<&str>, running: Option<&str>) -> String {
    match errno {
        libc::EKEYREJECTED => "the kernel accepts only signed modules (module.sig_enforce=1 or \
             CONFIG_MODULE_SIG_FORCE) and this one is not signed by a key it trusts: sign it with a \
             Machine Owner Key enrolled with mokutil (see README, \"Signing the module\")"
            .into(),
        libc::EPERM => "not permitted: loading needs root (CAP_SYS_MODULE); kernel lockdown \
             (Secure Boot turns on \"integrity\") refuses unsigned modules, and \
             kernel.modules_disabled=1 refuses all: sign it with a Machine Owner Key \
             (see README, \"Signing the module\")"
            .into(),
        libc::ENOEXEC | libc::EINVAL => format!(
            "the module was built for another kernel (module vermagic {:?}, running {:?}): \
             build it against this kernel's headers with `pmem module build`",
            file_vermagic.unwrap_or("?"),
            running.unwrap_or("?")
        ),
        libc::EBADMSG | libc::ENOKEY => "its signature is invalid or made with an unknown key".into(),
        libc::ENOSYS => "this kernel was built without loadable module support (CONFIG_MODULES \
             unset): no module can be loaded, and with no /proc/kcore, /dev/crash or unrestricted \
             /dev/mem its memory can't be read from inside; acquire it from outside (hypervisor \
             memory dump)"
            .into(),
        _ => String::new(),
    }
}

/// Why `load --write` must not go on, if it must not: the file is not the
/// write build, or the kernel is locked down (`lockdown`: the active mode,
/// when /sys/kernel/security/lockdown is readable).
pub fn write_load_refusal(file: &Path, ko: &[u8], lockdown: Option<&str>) -> Option<String> {
    if !is_write_build(ko) {
        return Some(format!(
            "{} is the read-only build: it cannot write at all. Build the write build with \
             `pmem module build --write` (for research and teaching only)",
            file.display()
        ));
    }
    match lockdown {
        Some(mode) if mode != "none" => Some(format!(
            "kernel lockdown is \"{mode}\": the write build refuses to load under any lockdown \
             mode (writing physical memory is what lockdown forbids)"
        )),
        _ => None,
    }
}

fn load(file: &Path, write: bool) -> Result<()> {
    let ko = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    if modinfo(&bytes, "name").as_deref() != Some(MODULE_NAME) {
        bail!("{} is not pmem's module ({MODULE_NAME})", file.display());
    }
    if write {
        let lockdown = pmem_sources::module::OpenContext::read().lockdown;
        if let Some(why) = write_load_refusal(file, &bytes, lockdown.as_deref()) {
            bail!("not loading {} with writes on: {why}", file.display());
        }
    }
    let params = CString::new(if write {
        format!("{WRITE_PARAMETER}=1")
    } else {
        String::new()
    })?;
    // SAFETY: finit_module reads the open descriptor and a NUL-terminated
    // parameter string that outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            ko.as_raw_fd(),
            params.as_ptr(),
            0 as libc::c_int,
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        let errno = err.raw_os_error().unwrap_or(0);
        if errno == libc::EEXIST {
            if write && write_state() != Some(true) {
                bail!(
                    "{MODULE_NAME} is already loaded with writes off: `pmem module unload` it first, \
                     then `pmem module load --write {}`",
                    file.display()
                );
            }
            eprintln!("pmem: {MODULE_NAME} is already loaded");
            return Ok(());
        }
        let vermagic = modinfo(&bytes, "vermagic");
        let running = running_release().ok();
        let hint = load_hint(errno, vermagic.as_deref(), running.as_deref());
        bail!(
            "the kernel refused to load {}: {err}{}",
            file.display(),
            if hint.is_empty() {
                String::new()
            } else {
                format!(": {hint}")
            }
        );
    }
    eprintln!(
        "pmem: loaded {MODULE_NAME} {} ({DEVICE_PATH}{})",
        modinfo(&bytes, "version").unwrap_or_default(),
        match (write, is_write_build(&bytes)) {
            (true, _) =>
                ", WRITABLE: the kernel is tainted and logs every write; `pmem mount --write` \
                          writes through it",
            (false, true) => ", the write build with writes off: read-only",
            (false, false) => ", read-only",
        }
    );
    Ok(())
}

/// The loaded module's write switch: `None` when it has none (the
/// read-only build, or no module loaded), else whether writes are on.
pub fn write_state() -> Option<bool> {
    std::fs::read_to_string(format!(
        "/sys/module/{MODULE_NAME}/parameters/{WRITE_PARAMETER}"
    ))
    .ok()
    .map(|v| v.trim() == "Y")
}

fn unload() -> Result<()> {
    let name = CString::new(MODULE_NAME)?;
    // SAFETY: delete_module reads a NUL-terminated name that outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_delete_module, name.as_ptr(), libc::O_NONBLOCK) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        let why = match err.raw_os_error() {
            Some(libc::ENOENT) => "; it is not loaded",
            Some(libc::EBUSY) | Some(libc::EAGAIN) => {
                "; it is in use: wait for the acquisition reading it to end"
            }
            Some(libc::EPERM) => "; run as root (CAP_SYS_MODULE)",
            _ => "",
        };
        bail!("cannot unload {MODULE_NAME}: {err}{why}");
    }
    eprintln!("pmem: unloaded {MODULE_NAME}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_source_is_the_module() {
        let (_, c) = SOURCES[0];
        assert!(c.contains("MODULE_LICENSE(\"GPL\")"));
        assert!(c.contains(&format!("\"{}\"", pmem_sources::module::DEVICE_NAME)));
        // No mmap or ioctl entry points; a write entry point only inside
        // the write build's #ifdef blocks.
        for op in [".mmap", ".unlocked_ioctl", ".compat_ioctl"] {
            assert!(!c.contains(op), "{op}");
        }
        let mut depth_in_write = None;
        let mut write_ops = 0;
        for (n, line) in c.lines().enumerate() {
            let line = line.trim();
            match depth_in_write {
                None if line == "#ifdef PMEM_PHYS_WRITE" => depth_in_write = Some(0),
                Some(0) if line == "#endif" || line == "#else" => depth_in_write = None,
                Some(d) if line.starts_with("#if") => depth_in_write = Some(d + 1),
                Some(d) if line == "#endif" => depth_in_write = Some(d - 1),
                _ => {}
            }
            if line.starts_with(".write") || line.contains("vmap(&page") {
                assert!(
                    depth_in_write.is_some(),
                    "line {}: {line} outside the write build",
                    n + 1
                );
                write_ops += 1;
            }
        }
        assert_eq!(write_ops, 2, "the write build's entry point and page copy");
        let (_, kbuild) = SOURCES[1];
        assert!(kbuild.contains(&format!("obj-m := {MODULE_NAME}.o")));
    }

    #[test]
    fn reads_modinfo() {
        let ko = b"\x7fELF..version=1.0.0\0description=x\0vermagic=6.1.0-56-cloud-amd64 SMP preempt mod_unload modversions \0name=pmem_phys\0";
        assert_eq!(modinfo(ko, "version").as_deref(), Some("1.0.0"));
        assert_eq!(modinfo(ko, "name").as_deref(), Some("pmem_phys"));
        assert_eq!(
            modinfo(ko, "vermagic").as_deref(),
            Some("6.1.0-56-cloud-amd64 SMP preempt mod_unload modversions ")
        );
        assert_eq!(modinfo(ko, "license"), None);
        assert_eq!(modinfo(b"version=unterminated", "version"), None);
    }

    #[test]
    fn write_builds_are_told_apart_and_refused_under_lockdown() {
        let read_only = b"\x7fELF..version=1.1.0\0name=pmem_phys\0";
        let write =
            b"\x7fELF..parm=writable:Let root write\0parmtype=writable:bool\0name=pmem_phys\0";
        assert!(!is_write_build(read_only));
        assert!(is_write_build(write));
        assert!(!is_write_build(b"parm=other:x\0"));
        let file = Path::new("pmem_phys.ko");
        let why = write_load_refusal(file, read_only, None).unwrap();
        assert!(
            why.contains("read-only build") && why.contains("build --write"),
            "{why}"
        );
        assert_eq!(write_load_refusal(file, write, None), None);
        assert_eq!(write_load_refusal(file, write, Some("none")), None);
        for mode in ["integrity", "confidentiality"] {
            let why = write_load_refusal(file, write, Some(mode)).unwrap();
            assert!(why.contains(&format!("lockdown is \"{mode}\"")), "{why}");
        }
    }

    #[test]
    fn load_refusals_are_explained() {
        assert!(load_hint(libc::EKEYREJECTED, None, None).contains("Machine Owner Key"));
        assert!(load_hint(libc::EPERM, None, None).contains("lockdown"));
        let other = load_hint(
            libc::ENOEXEC,
            Some("6.1.0-56-cloud-amd64 SMP"),
            Some("6.12.1"),
        );
        assert!(
            other.contains("6.1.0-56") && other.contains("6.12.1"),
            "{other}"
        );
        assert!(load_hint(libc::ENOSYS, None, None).contains("CONFIG_MODULES"));
        assert_eq!(load_hint(libc::EIO, None, None), "");
    }

    #[test]
    fn build_refuses_missing_headers() {
        let dir = tempfile::tempdir().unwrap();
        let err = build(
            Some(dir.path().to_path_buf()),
            &dir.path().join("x.ko"),
            false,
        )
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("no kernel headers at"), "{text}");
        assert!(text.contains("--headers"), "{text}");
    }

    #[test]
    fn writes_the_source() {
        let dir = tempfile::tempdir().unwrap();
        write_sources(&dir.path().join("src")).unwrap();
        for (name, text) in SOURCES {
            assert_eq!(
                std::fs::read_to_string(dir.path().join("src").join(name)).unwrap(),
                text
            );
        }
    }
}
