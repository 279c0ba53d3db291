//! `pmem symbols`: a Volatility 3 symbol table (ISF) for a Linux kernel
//! from its BTF, kallsyms and banner: those an image carries (inside it,
//! or its `IMAGE.symbols` sidecar, as `pmem acquire` captures them), a
//! bundle file, or the files given one by one. The work is pmem-symbols';
//! this is the command line around it.

use crate::carried_symbols::CarriedSymbols;
use crate::image::{self, IdentityArgs};
use anyhow::{bail, Context, Result};
use pmem_core::sink::hex;
use pmem_symbols::btf::Btf;
use pmem_symbols::bundle::{self, Bundle, KallsymsAddresses};
use pmem_symbols::isf::{self, Inputs};
use pmem_symbols::kallsyms;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// An image pmem acquired on Linux: its symbols are read from inside
    /// it (ELF, Mach-O, AFF4) or from IMAGE.symbols beside it.
    #[arg(conflicts_with_all = ["bundle", "btf"], required_unless_present_any = ["bundle", "btf"])]
    image: Option<PathBuf>,
    /// A symbol bundle file (IMAGE.symbols, or --symbols-file's).
    #[arg(long, value_name = "FILE", conflicts_with = "btf")]
    bundle: Option<PathBuf>,
    /// The kernel's BTF (a copy of /sys/kernel/btf/vmlinux), instead of an
    /// image or a bundle.
    #[arg(long, value_name = "FILE", requires = "kallsyms")]
    btf: Option<PathBuf>,
    /// With --btf: the kernel's /proc/kallsyms, read as root (real
    /// addresses).
    #[arg(long, value_name = "FILE", requires = "btf")]
    kallsyms: Option<PathBuf>,
    /// With --btf: the kernel's banner, /proc/version of the same boot:
    /// vol3 matches the ISF to an image by it.
    #[arg(
        long,
        visible_alias = "version-file",
        value_name = "FILE",
        requires = "btf"
    )]
    banner: Option<PathBuf>,
    /// KASLR offset of the boot kallsyms was read in, hex (VMCOREINFO's
    /// KERNELOFFSET). Default: the captured VMCOREINFO's, else derived
    /// from _text on x86-64.
    #[arg(long, value_name = "HEX", value_parser = parse_hex)]
    kaslr_offset: Option<u64>,
    /// File name of the ISF, without .json.xz (default: the kernel
    /// release in the banner).
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    identity: IdentityArgs,
    /// Symbol directory: the ISF goes to DIR/linux/NAME.json.xz (give DIR
    /// to `vol -s`).
    #[arg(short, long, value_name = "DIR")]
    output: PathBuf,
}

fn parse_hex(text: &str) -> Result<u64, String> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    u64::from_str_radix(digits, 16).map_err(|e| format!("{text:?} is not a hex number: {e}"))
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))
}

/// What the ISF is built from, each named for messages.
struct Material {
    btf: Vec<u8>,
    btf_name: String,
    kallsyms: Vec<u8>,
    kallsyms_name: String,
    banner: Option<Vec<u8>>,
    /// KERNELOFFSET of the captured VMCOREINFO.
    kernel_offset: Option<u64>,
}

/// The material of files given one by one.
fn from_files(btf: &Path, kallsyms_path: &Path, banner: Option<&Path>) -> Result<Material> {
    let btf_bytes = read(btf, "BTF").map_err(|err| {
        if btf.starts_with("/sys/kernel/btf") && !btf.exists() {
            err.context(NO_BTF)
        } else {
            err
        }
    })?;
    let banner = match banner {
        Some(path) => Some(read(path, "banner")?),
        None => {
            eprintln!(
                "pmem: warning: no --banner: the ISF has no linux_banner data, so vol3 will not \
                 pick it for an image by itself"
            );
            None
        }
    };
    Ok(Material {
        btf: btf_bytes,
        btf_name: btf.display().to_string(),
        kallsyms: read(kallsyms_path, "kallsyms")?,
        kallsyms_name: kallsyms_path.display().to_string(),
        banner,
        kernel_offset: None,
    })
}

const NO_BTF: &str = "this kernel has no BTF (built without CONFIG_DEBUG_INFO_BTF): build its ISF \
     with dwarf2json from the kernel's debug package (vmlinux with DWARF) instead";

/// The material of a symbol bundle (`what` names it).
fn from_bundle(bundle: Bundle, what: &str) -> Result<Material> {
    let member = |name: &str| {
        bundle.member(name).map(<[u8]>::to_vec).ok_or_else(|| {
            let reason = bundle
                .record
                .missing
                .iter()
                .find(|m| m.name == name)
                .map(|m| format!(" ({}: {})", m.source, m.reason))
                .unwrap_or_default();
            anyhow::anyhow!("{what}: the capture has no {name}{reason}")
        })
    };
    let btf = member(bundle::BTF).context(NO_BTF)?;
    let kallsyms = member(bundle::KALLSYMS)?;
    if bundle.record.kallsyms_addresses == KallsymsAddresses::Hidden {
        bail!(
            "{what}: kallsyms was captured without addresses (kernel.kptr_restrict={}): an ISF \
             needs them; acquire again as root with kptr_restrict 0 or 1",
            bundle
                .record
                .kptr_restrict
                .map_or_else(|| "?".into(), |v| v.to_string())
        );
    }
    let banner = bundle.member(bundle::VERSION).map(<[u8]>::to_vec);
    if banner.is_none() {
        eprintln!(
            "pmem: warning: {what} has no banner (/proc/version): vol3 will not pick the ISF \
             for an image by itself"
        );
    }
    Ok(Material {
        btf,
        btf_name: format!("{what}: {}", bundle::BTF),
        kallsyms,
        kallsyms_name: format!("{what}: {}", bundle::KALLSYMS),
        banner,
        kernel_offset: bundle.kernel_offset(),
    })
}

/// The bundle an image carries, or why there is none.
fn bundle_of_image(path: &Path, identity: &IdentityArgs) -> Result<(Bundle, String)> {
    let identity = identity.load()?;
    let opened = image::open(path, None, identity.as_ref())?;
    let embedded = opened.reader.metadata().symbols.as_deref();
    match CarriedSymbols::of_image(path, embedded, identity.as_ref())? {
        Some((symbols, what)) => Ok((Bundle::from_tar(&symbols.tar, &what)?, what)),
        None => bail!(
            "{} carries no kernel symbols, and no {} lies beside it: pmem captures them when it \
             acquires on Linux (unless --no-symbols); for another image build the ISF with \
             dwarf2json from the kernel's debug package, or give --btf and --kallsyms",
            path.display(),
            crate::carried_symbols::sidecar_path(path).display()
        ),
    }
}

pub fn run(args: Args) -> Result<ExitCode> {
    let material = match (&args.btf, &args.kallsyms, &args.bundle, &args.image) {
        (Some(btf), Some(kallsyms), _, _) => from_files(btf, kallsyms, args.banner.as_deref())?,
        (_, _, Some(path), _) => {
            let identity = args.identity.load()?;
            let tar = image::read_sealed(path, identity.as_ref(), "the symbols")?;
            let what = path.display().to_string();
            from_bundle(Bundle::from_tar(&tar, &what)?, &what)?
        }
        (_, _, _, Some(path)) => {
            let (bundle, what) = bundle_of_image(path, &args.identity)?;
            from_bundle(bundle, &what)?
        }
        _ => bail!("give an IMAGE, --bundle FILE, or --btf FILE with --kallsyms FILE"),
    };
    let btf = Btf::parse(&material.btf).with_context(|| material.btf_name.clone())?;
    let kallsyms_text = std::str::from_utf8(&material.kallsyms).map_err(|e| {
        anyhow::anyhow!(
            "{}: not text: invalid UTF-8 at byte offset {}",
            material.kallsyms_name,
            e.valid_up_to()
        )
    })?;
    let symbols = kallsyms::parse(kallsyms_text).with_context(|| material.kallsyms_name.clone())?;
    let mut banner = material.banner.as_deref();
    if banner.is_some() && !symbols.iter().any(|s| s.name == "linux_banner") {
        // A kernel without CONFIG_KALLSYMS_ALL: the ISF is still made
        // (warned about below), without the banner vol3 matches by.
        eprintln!(
            "pmem: warning: {} has no linux_banner symbol: the ISF cannot carry the banner, so \
             give it to vol3 by name",
            material.kallsyms_name
        );
        banner = None;
    }
    let kaslr_offset = match args.kaslr_offset.or(material.kernel_offset) {
        Some(offset) => offset,
        None => {
            let offset = kallsyms::derive_x86_64_kaslr_offset(&symbols).with_context(|| {
                format!(
                    "{}: no --kaslr-offset given and none derivable",
                    material.kallsyms_name
                )
            })?;
            eprintln!(
                "pmem: KASLR offset 0x{offset:x}, derived from _text minus x86-64's default \
                 0x{:x}; give --kaslr-offset (VMCOREINFO KERNELOFFSET) for a kernel with another \
                 CONFIG_PHYSICAL_START",
                kallsyms::X86_64_DEFAULT_TEXT
            );
            offset
        }
    };
    let kallsyms_file = Path::new(&material.kallsyms_name)
        .file_name()
        .map_or_else(|| "kallsyms".into(), |n| n.to_string_lossy().into_owned());
    let isf = isf::build(&Inputs {
        btf: &btf,
        kallsyms: &symbols,
        kallsyms_source: (kallsyms_file, hex(&Sha256::digest(&material.kallsyms))),
        banner,
        kaslr_offset,
    })
    .with_context(|| {
        format!(
            "building the ISF from {} and {}",
            material.btf_name, material.kallsyms_name
        )
    })?;
    // Without CONFIG_KALLSYMS_ALL kallsyms lists functions only: the ISF
    // is written (its types are complete) but vol3 cannot find the tasks.
    if !isf.symbols.contains_key("init_task") {
        eprintln!(
            "pmem: warning: {} has no init_task (a kernel built without CONFIG_KALLSYMS_ALL \
             lists functions only): vol3's Linux plugins need the data symbols",
            material.kallsyms_name
        );
    }
    let name = match args.name {
        Some(name) => {
            if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
                bail!("--name {name:?}: give a plain file name");
            }
            name
        }
        None => pmem_symbols::isf_name(
            material.banner.as_deref(),
            &hex(&Sha256::digest(&material.btf)),
        ),
    };
    let path: PathBuf = pmem_symbols::write_isf(&isf, &args.output, &name)?;
    println!(
        "{}: {} user types, {} enums, {} base types, {} symbols",
        path.display(),
        isf.user_types.len(),
        isf.enums.len(),
        isf.base_types.len(),
        isf.symbols.len()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_offsets_with_and_without_prefix() {
        assert_eq!(parse_hex("0x1c000000"), Ok(0x1c00_0000));
        assert_eq!(parse_hex("1C000000"), Ok(0x1c00_0000));
        assert!(parse_hex("0xzz").unwrap_err().contains("not a hex number"));
    }
}
