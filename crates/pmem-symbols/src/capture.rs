//! Capturing a running Linux kernel's symbol bundle from the files it
//! exports (see [`crate::bundle`] for the archive). Reads files only, no
//! memory: the caller runs it before or after the memory copy, never during
//! it, so it adds nothing to the image's smear.

use crate::bundle::{self, Bundle, CaptureRecord, CapturedFile, KallsymsAddresses, MissingFile};
use std::path::PathBuf;
use std::time::Instant;

/// Where the kernel's files are: `/` on the machine itself (a test points
/// it at a copied tree).
#[derive(Debug, Clone)]
pub struct Capture {
    root: PathBuf,
}

impl Default for Capture {
    fn default() -> Capture {
        Capture::under("/")
    }
}

impl Capture {
    /// Reads /proc, /sys and /boot under `root`.
    pub fn under(root: impl Into<PathBuf>) -> Capture {
        Capture { root: root.into() }
    }

    /// Captures what this kernel exports; `vmcoreinfo` is the note the
    /// memory source read (it is not a file: /proc/kcore's note, or the
    /// module's copy). Never fails: what cannot be read is listed in
    /// [`CaptureRecord::missing`] with the reason.
    pub fn run(&self, vmcoreinfo: Option<&[u8]>) -> Bundle {
        let started = Instant::now();
        let mut taken = Taken::default();
        let release = self
            .read_text("proc/sys/kernel/osrelease")
            .map(|text| text.trim().to_string());
        let kptr_restrict = self
            .read_text("proc/sys/kernel/kptr_restrict")
            .and_then(|text| text.trim().parse().ok());
        self.take(&mut taken, bundle::BTF, "sys/kernel/btf/vmlinux");
        for module in self.module_btf_names() {
            let name = format!("{}{module}", bundle::MODULE_BTF_DIR);
            self.take(&mut taken, &name, &format!("sys/kernel/btf/{module}"));
        }
        self.take(&mut taken, bundle::KALLSYMS, "proc/kallsyms");
        let kallsyms_addresses = match taken.bundle.member(bundle::KALLSYMS) {
            Some(text) if shows_addresses(text) => KallsymsAddresses::Real,
            Some(_) => KallsymsAddresses::Hidden,
            None => KallsymsAddresses::Absent,
        };
        self.take(&mut taken, bundle::VERSION, "proc/version");
        self.take(&mut taken, bundle::MODULES, "proc/modules");
        match vmcoreinfo {
            Some(note) => taken.add(
                bundle::VMCOREINFO,
                "the memory source's VMCOREINFO note",
                note.to_vec(),
            ),
            None => taken.missing.push(MissingFile {
                name: bundle::VMCOREINFO.into(),
                source: "the memory source's VMCOREINFO note".into(),
                reason: "the source gave none".into(),
            }),
        }
        self.take_config(&mut taken, release.as_deref());
        let Taken {
            mut bundle,
            files,
            missing,
        } = taken;
        bundle.record = CaptureRecord {
            kind: bundle::BUNDLE_KIND.into(),
            version: bundle::BUNDLE_VERSION,
            kernel_release: release,
            kallsyms_addresses,
            kptr_restrict,
            files,
            missing,
            seconds: started.elapsed().as_secs_f64(),
        };
        bundle
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    fn read_text(&self, relative: &str) -> Option<String> {
        std::fs::read_to_string(self.path(relative)).ok()
    }

    /// Reads `relative` into member `name`, or records why it could not.
    fn take(&self, taken: &mut Taken, name: &str, relative: &str) -> bool {
        let path = self.path(relative);
        match std::fs::read(&path) {
            Ok(data) => {
                taken.add(name, &path.display().to_string(), data);
                true
            }
            Err(err) => {
                taken.missing.push(MissingFile {
                    name: name.into(),
                    source: path.display().to_string(),
                    reason: if err.kind() == std::io::ErrorKind::NotFound {
                        "not present".into()
                    } else {
                        err.to_string()
                    },
                });
                false
            }
        }
    }

    /// /proc/config.gz (CONFIG_IKCONFIG_PROC), else /boot/config-RELEASE
    /// (Debian, Ubuntu, RHEL); one missing entry when neither is there.
    fn take_config(&self, taken: &mut Taken, release: Option<&str>) {
        let proc_config = "proc/config.gz";
        if self.path(proc_config).exists() && self.take(taken, bundle::CONFIG_GZ, proc_config) {
            return;
        }
        let Some(release) = release else {
            taken.missing.push(MissingFile {
                name: bundle::CONFIG.into(),
                source: "/proc/config.gz, /boot/config-RELEASE".into(),
                reason: "no /proc/config.gz, and no kernel release to name /boot's file".into(),
            });
            return;
        };
        let boot_config = format!("boot/config-{release}");
        if !self.take(taken, bundle::CONFIG, &boot_config) {
            if let Some(missing) = taken.missing.last_mut() {
                missing.source =
                    format!("{}, {}", self.path(proc_config).display(), missing.source);
            }
        }
    }

    /// The modules with BTF of their own (/sys/kernel/btf/NAME), sorted.
    fn module_btf_names(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.path("sys/kernel/btf")) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter(|name| name != "vmlinux" && !name.contains('/'))
            .collect();
        names.sort();
        names
    }
}

/// The members read so far and the record's lists.
#[derive(Default)]
struct Taken {
    bundle: Bundle,
    files: Vec<CapturedFile>,
    missing: Vec<MissingFile>,
}

impl Taken {
    fn add(&mut self, name: &str, source: &str, data: Vec<u8>) {
        self.files.push(CapturedFile {
            name: name.into(),
            source: source.into(),
            bytes: data.len() as u64,
        });
        self.bundle.members.insert(name.into(), data);
    }
}

/// Whether kallsyms text shows any nonzero address (kptr_restrict, or
/// reading without CAP_SYSLOG, turns every address into zeros).
pub fn shows_addresses(kallsyms: &[u8]) -> bool {
    kallsyms.split(|&b| b == b'\n').any(|line| {
        let address = line.split(|&b| b == b' ').next().unwrap_or_default();
        !address.is_empty() && address.iter().any(|&b| b != b'0')
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn tree(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, data) in files {
            let path = dir.path().join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, data).unwrap();
        }
        dir
    }

    #[test]
    fn a_full_tree_is_captured_with_module_btf_and_boot_config() {
        let dir = tree(&[
            ("proc/sys/kernel/osrelease", b"6.1.0-56-cloud-amd64\n"),
            ("proc/sys/kernel/kptr_restrict", b"0\n"),
            ("sys/kernel/btf/vmlinux", b"\x9f\xeb\x01\x00vmlinux"),
            ("sys/kernel/btf/virtio_blk", b"\x9f\xeb\x01\x00module"),
            (
                "proc/kallsyms",
                b"0000000000000000 A fixed_percpu_data\nffffffff9d000000 T _text\n",
            ),
            ("proc/version", b"Linux version 6.1.0-56-cloud-amd64 ...\n"),
            (
                "proc/modules",
                b"virtio_blk 20480 2 - Live 0x0000000000000000\n",
            ),
            (
                "boot/config-6.1.0-56-cloud-amd64",
                b"CONFIG_DEBUG_INFO_BTF=y\n",
            ),
        ]);
        let bundle = Capture::under(dir.path()).run(Some(b"KERNELOFFSET=1c000000\n"));
        let record = &bundle.record;
        assert_eq!(
            record.kernel_release.as_deref(),
            Some("6.1.0-56-cloud-amd64")
        );
        assert_eq!(record.kallsyms_addresses, KallsymsAddresses::Real);
        assert_eq!(record.kptr_restrict, Some(0));
        assert!(record.missing.is_empty(), "{:?}", record.missing);
        let names: Vec<&str> = bundle.members.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "btf/modules/virtio_blk",
                "btf/vmlinux",
                "config",
                "kallsyms",
                "modules",
                "version",
                "vmcoreinfo"
            ]
        );
        assert_eq!(
            bundle.member("btf/modules/virtio_blk"),
            Some(&b"\x9f\xeb\x01\x00module"[..])
        );
        assert_eq!(bundle.kernel_offset(), Some(0x1c00_0000));
        // Through the archive and back.
        let read = Bundle::from_tar(&bundle.clone().into_tar(), "t").unwrap();
        assert_eq!(read, bundle);
    }

    #[test]
    fn hidden_addresses_and_missing_files_are_recorded() {
        let dir = tree(&[
            ("proc/sys/kernel/osrelease", b"6.12.1\n"),
            ("proc/sys/kernel/kptr_restrict", b"2\n"),
            (
                "proc/kallsyms",
                b"0000000000000000 T _text\n0000000000000000 D init_task\n",
            ),
            ("proc/config.gz", b"\x1f\x8bgz"),
        ]);
        let bundle = Capture::under(dir.path()).run(None);
        let record = &bundle.record;
        assert_eq!(record.kallsyms_addresses, KallsymsAddresses::Hidden);
        assert_eq!(record.kptr_restrict, Some(2));
        assert!(bundle.member(bundle::CONFIG_GZ).is_some());
        let missing: Vec<&str> = record.missing.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(missing, ["btf/vmlinux", "version", "modules", "vmcoreinfo"]);
        assert_eq!(record.missing[0].reason, "not present");
    }

    #[test]
    fn no_config_anywhere_names_both_places() {
        let dir = tree(&[("proc/sys/kernel/osrelease", b"6.1.0\n")]);
        let bundle = Capture::under(dir.path()).run(None);
        let config = bundle
            .record
            .missing
            .iter()
            .find(|m| m.name == bundle::CONFIG)
            .unwrap();
        assert!(config.source.contains("proc/config.gz"), "{config:?}");
        assert!(config.source.contains("boot/config-6.1.0"), "{config:?}");
        assert_eq!(bundle.record.kallsyms_addresses, KallsymsAddresses::Absent);
    }

    #[test]
    fn address_detection() {
        assert!(shows_addresses(
            b"0000000000000000 A x\nffffffff81000000 T _text\n"
        ));
        assert!(!shows_addresses(
            b"0000000000000000 T _text\n0000000000000000 T y\n"
        ));
        assert!(!shows_addresses(b""));
    }
}
