//! The kernel's symbol bundle as a job carries it: captured from the
//! running Linux kernel before the copy starts (never during it: no extra
//! smear), or taken over from an input image; placed inside the image when
//! the format has room (ELF, Mach-O, AFF4), else beside it as
//! `IMAGE.symbols`. The bundle itself is pmem-symbols'.

use crate::image::{self, Identity};
use crate::manifest::SymbolsJson;
use anyhow::Result;
use pmem_core::sink::hex;
use pmem_formats::Format;
use pmem_symbols::bundle::{Bundle, CaptureRecord};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// A symbol bundle, as the archive that is stored and what it says.
pub struct CarriedSymbols {
    /// The tar archive, as stored in the image or the sidecar.
    pub tar: Vec<u8>,
    /// Its capture.json.
    pub record: CaptureRecord,
}

/// The sidecar of an image file: `IMAGE.symbols`.
pub fn sidecar_path(image: &Path) -> PathBuf {
    let mut name = image.as_os_str().to_owned();
    name.push(".symbols");
    PathBuf::from(name)
}

/// Whether the bundle goes inside an image of `format`: the format has
/// room, and the bundle is within what its readers accept.
pub fn fits_inside(format: Format, symbols: &CarriedSymbols) -> bool {
    format.carries_symbols() && symbols.tar.len() as u64 <= pmem_formats::MAX_SYMBOLS
}

impl CarriedSymbols {
    /// Captures this machine's kernel symbols (Linux), saying on stderr
    /// what was captured and what is missing. `vmcoreinfo` is the note the
    /// memory source read.
    #[cfg(target_os = "linux")]
    pub fn capture(vmcoreinfo: Option<&[u8]>) -> CarriedSymbols {
        let bundle = pmem_symbols::capture::Capture::default().run(vmcoreinfo);
        let record = bundle.record.clone();
        let symbols = CarriedSymbols {
            tar: bundle.into_tar(),
            record,
        };
        symbols.announce();
        symbols
    }

    /// A bundle read back (from an image, a sidecar, a file); `what`
    /// names it in errors.
    pub fn from_tar(tar: Vec<u8>, what: &str) -> Result<CarriedSymbols> {
        let record = Bundle::from_tar(&tar, what)?.record;
        Ok(CarriedSymbols { tar, record })
    }

    /// The bundle an image carries: inside it (`embedded`, from the
    /// reader's metadata), else its `IMAGE.symbols` sidecar (decrypted
    /// with `identity` when sealed). `None` when it has neither.
    pub fn of_image(
        path: &Path,
        embedded: Option<&[u8]>,
        identity: Option<&Identity>,
    ) -> Result<Option<(CarriedSymbols, String)>> {
        if let Some(tar) = embedded {
            let what = format!("{} (symbols inside the image)", path.display());
            return Ok(Some((CarriedSymbols::from_tar(tar.to_vec(), &what)?, what)));
        }
        let sidecar = sidecar_path(path);
        if !sidecar.is_file() {
            return Ok(None);
        }
        let tar = image::read_sealed(&sidecar, identity, "the symbols")?;
        let what = sidecar.display().to_string();
        Ok(Some((CarriedSymbols::from_tar(tar, &what)?, what)))
    }

    /// The manifest's record: `carried` is "image", "sidecar" or
    /// "not_kept", `file` the sidecar's name.
    pub fn manifest_record(&self, carried: &str, file: Option<String>) -> SymbolsJson {
        SymbolsJson {
            carried: carried.into(),
            file,
            bytes: self.tar.len() as u64,
            sha256: hex(&Sha256::digest(&self.tar)),
            capture: self.record.clone(),
        }
    }

    /// One line on what was captured, and a warning per gap that matters
    /// to `pmem symbols`.
    #[cfg(target_os = "linux")]
    fn announce(&self) {
        use pmem_symbols::bundle::{self, KallsymsAddresses};
        let record = &self.record;
        let names: Vec<String> = record
            .files
            .iter()
            .filter(|f| !f.name.starts_with(bundle::MODULE_BTF_DIR))
            .map(|f| f.name.clone())
            .collect();
        let modules = record
            .files
            .iter()
            .filter(|f| f.name.starts_with(bundle::MODULE_BTF_DIR))
            .count();
        eprintln!(
            "pmem: symbols captured: {}{} ({:.1} MiB in {:.2} s)",
            names.join(", "),
            if modules > 0 {
                format!(", BTF of {modules} module(s)")
            } else {
                String::new()
            },
            self.tar.len() as f64 / (1 << 20) as f64,
            record.seconds
        );
        for missing in &record.missing {
            match missing.name.as_str() {
                bundle::BTF => eprintln!(
                    "pmem: warning: no kernel BTF ({}: {}): the kernel was built without \
                     CONFIG_DEBUG_INFO_BTF, so `pmem symbols` cannot make its ISF; build one with \
                     dwarf2json from the kernel's debug package instead",
                    missing.source, missing.reason
                ),
                bundle::KALLSYMS | bundle::VERSION => eprintln!(
                    "pmem: warning: {} not captured ({}: {})",
                    missing.name, missing.source, missing.reason
                ),
                _ => {}
            }
        }
        if record.kallsyms_addresses == KallsymsAddresses::Hidden {
            eprintln!(
                "pmem: warning: /proc/kallsyms shows no addresses (kernel.kptr_restrict={}{}): \
                 captured as it is, but `pmem symbols` needs the addresses; run pmem as root \
                 with kptr_restrict 0 or 1",
                record
                    .kptr_restrict
                    .map_or_else(|| "?".into(), |v| v.to_string()),
                if record.kptr_restrict == Some(2) {
                    ", which hides them even from root"
                } else {
                    ", or pmem is not root"
                }
            );
        }
    }
}
