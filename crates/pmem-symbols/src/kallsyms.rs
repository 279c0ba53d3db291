//! `/proc/kallsyms`: one symbol a line, `ADDRESS TYPE NAME [MODULE]`, with
//! the addresses the running kernel uses (KASLR-shifted), or all zeros when
//! `kptr_restrict` (or a reader without CAP_SYSLOG) hides them.

/// One kallsyms line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSymbol {
    /// The address as the running kernel sees it (KASLR-shifted).
    pub address: u64,
    /// nm-style type letter: `T`/`t` text, `D`/`d` data, `B`/`b` bss,
    /// `R`/`r` read-only data, `A` absolute (per-CPU offsets), ...
    pub kind: char,
    /// Symbol name.
    pub name: String,
    /// The module that holds the symbol, `None` for vmlinux itself.
    pub module: Option<String>,
}

/// Why kallsyms text could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KallsymsError {
    /// A line that is not `ADDRESS TYPE NAME [MODULE]`.
    #[error("kallsyms line {line} (byte offset {offset}): {problem}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// Byte offset of the line's start.
        offset: usize,
        /// What was wrong.
        problem: String,
    },
    /// Every address is zero: the kernel hid them (`kernel.kptr_restrict`
    /// is set, or the reader lacked CAP_SYSLOG), so the symbols are useless
    /// for analysis.
    #[error(
        "kallsyms has {symbols} symbols but every address is 0: the kernel hid them \
         (kernel.kptr_restrict, or read without root); capture /proc/kallsyms as root \
         with kptr_restrict 0 or 1"
    )]
    AddressesHidden {
        /// How many symbols were there.
        symbols: usize,
    },
    /// No symbols at all.
    #[error("kallsyms holds no symbols")]
    Empty,
}

/// Parses kallsyms text. Fails with [`KallsymsError::AddressesHidden`]
/// when every address is zero, a condition the caller reports on its own.
pub fn parse(text: &str) -> Result<Vec<KernelSymbol>, KallsymsError> {
    let mut symbols = Vec::new();
    let mut line_offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let offset = line_offset;
        line_offset += line.len();
        let line = line.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            continue;
        }
        let malformed = |problem: String| KallsymsError::Malformed {
            line: index + 1,
            offset,
            problem,
        };
        let mut fields = line.split_whitespace();
        let (Some(address), Some(kind), Some(name)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(malformed(format!(
                "expected ADDRESS TYPE NAME [MODULE], got {line:?}"
            )));
        };
        let address = u64::from_str_radix(address, 16)
            .map_err(|e| malformed(format!("address {address:?} is not hex: {e}")))?;
        let mut kind_chars = kind.chars();
        let (Some(kind), None) = (kind_chars.next(), kind_chars.next()) else {
            return Err(malformed(format!("type {kind:?} is not a single letter")));
        };
        let module = match fields.next() {
            None => None,
            Some(bracketed) => match bracketed
                .strip_prefix('[')
                .and_then(|m| m.strip_suffix(']'))
            {
                Some(module) => Some(module.to_string()),
                None => {
                    return Err(malformed(format!(
                        "fourth field {bracketed:?} is not a [module]"
                    )))
                }
            },
        };
        symbols.push(KernelSymbol {
            address,
            kind,
            name: name.to_string(),
            module,
        });
    }
    if symbols.is_empty() {
        return Err(KallsymsError::Empty);
    }
    if symbols.iter().all(|s| s.address == 0) {
        return Err(KallsymsError::AddressesHidden {
            symbols: symbols.len(),
        });
    }
    Ok(symbols)
}

/// The link-time address of `_text` in an x86-64 kernel built with the
/// default `CONFIG_PHYSICAL_START` (16 MiB) and `__START_KERNEL_map`
/// 0xffffffff80000000: where `_text` sits when KASLR does not move it.
pub const X86_64_DEFAULT_TEXT: u64 = 0xffff_ffff_8100_0000;

/// Why the KASLR offset could not be derived from kallsyms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KaslrError {
    /// Neither `_text` nor `_stext` is in kallsyms.
    #[error("kallsyms has neither _text nor _stext: cannot derive the KASLR offset; give it (VMCOREINFO's KERNELOFFSET)")]
    NoTextSymbol,
    /// Not an x86-64 kernel: the default link address is not known here.
    #[error(
        "kallsyms does not look like an x86-64 kernel (no startup_64): the default link address \
         of _text differs by architecture and configuration; give the KASLR offset \
         (VMCOREINFO's KERNELOFFSET)"
    )]
    UnknownArchitecture,
    /// `_text` lies below the default link address: not a KASLR shift.
    #[error("_text is at 0x{text:x}, below the x86-64 default 0x{default:x}: not a KASLR shift; give the offset")]
    TextBelowDefault {
        /// `_text` as kallsyms has it.
        text: u64,
        /// The default link address.
        default: u64,
    },
}

/// Derives the KASLR offset of an x86-64 kernel: `_text` (or `_stext`) as
/// kallsyms shows it minus [`X86_64_DEFAULT_TEXT`]. This equals VMCOREINFO's
/// `KERNELOFFSET` for kernels built with the default `CONFIG_PHYSICAL_START`;
/// other architectures (arm64's image base moved between releases) and
/// custom configurations need the offset given.
pub fn derive_x86_64_kaslr_offset(symbols: &[KernelSymbol]) -> Result<u64, KaslrError> {
    let vmlinux = || symbols.iter().filter(|s| s.module.is_none());
    if !vmlinux().any(|s| s.name == "startup_64") {
        return Err(KaslrError::UnknownArchitecture);
    }
    let text = vmlinux()
        .find(|s| s.name == "_text")
        .or_else(|| vmlinux().find(|s| s.name == "_stext"))
        .ok_or(KaslrError::NoTextSymbol)?
        .address;
    text.checked_sub(X86_64_DEFAULT_TEXT)
        .ok_or(KaslrError::TextBelowDefault {
            text,
            default: X86_64_DEFAULT_TEXT,
        })
}

/// The link-time address of a kallsyms address: kernel-image addresses
/// (upper half) move by the KASLR offset; the small absolute values of
/// per-CPU symbols (`A`, offsets into the per-CPU area) do not.
pub fn unshifted_address(address: u64, kaslr_offset: u64) -> u64 {
    const KERNEL_HALF: u64 = 1 << 63;
    if address >= KERNEL_HALF {
        address.wrapping_sub(kaslr_offset)
    } else {
        address
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
0000000000000000 A fixed_percpu_data
ffffffff9a000000 T _text
ffffffff9a000000 T _stext
ffffffff9a000040 T startup_64
ffffffff9c60a940 D init_task
ffffffff9c2001a0 R linux_banner
ffffffffc0a01000 t xfs_init_fs_context\t[xfs]
";

    #[test]
    fn parses_lines_with_and_without_module() {
        let symbols = parse(SAMPLE).unwrap();
        assert_eq!(symbols.len(), 7);
        assert_eq!(
            symbols[4],
            KernelSymbol {
                address: 0xffffffff9c60a940,
                kind: 'D',
                name: "init_task".into(),
                module: None
            }
        );
        assert_eq!(symbols[0].kind, 'A');
        assert_eq!(symbols[5].name, "linux_banner");
        let last = &symbols[6];
        assert_eq!(last.module.as_deref(), Some("xfs"));
        assert_eq!(last.kind, 't');
    }

    #[test]
    fn all_zero_addresses_are_reported_as_hidden() {
        let hidden = "0000000000000000 T _text\n0000000000000000 D init_task\n";
        assert_eq!(
            parse(hidden),
            Err(KallsymsError::AddressesHidden { symbols: 2 })
        );
        assert!(parse(hidden)
            .unwrap_err()
            .to_string()
            .contains("kptr_restrict"));
    }

    #[test]
    fn malformed_line_names_line_and_offset() {
        let text = "ffffffff81000000 T _text\nzzzz T bad\n";
        match parse(text) {
            Err(KallsymsError::Malformed { line, offset, .. }) => {
                assert_eq!((line, offset), (2, 25));
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
        assert!(matches!(
            parse("ffffffff81000000 T\n"),
            Err(KallsymsError::Malformed { line: 1, .. })
        ));
        assert!(matches!(
            parse("ffffffff81000000 TT x\n"),
            Err(KallsymsError::Malformed { .. })
        ));
        assert!(matches!(
            parse("ffffffff81000000 T x xfs\n"),
            Err(KallsymsError::Malformed { .. })
        ));
        assert_eq!(parse("\n\n"), Err(KallsymsError::Empty));
    }

    #[test]
    fn kaslr_offset_from_text_and_unshifting() {
        let symbols = parse(SAMPLE).unwrap();
        let offset = derive_x86_64_kaslr_offset(&symbols).unwrap();
        assert_eq!(offset, 0xffffffff9a000000 - 0xffffffff81000000);
        assert_eq!(
            unshifted_address(0xffffffff9c60a940, offset),
            0xffffffff8360a940
        );
        // Per-CPU offsets stay as they are.
        assert_eq!(unshifted_address(0x1f000, offset), 0x1f000);
        // No KASLR: offset 0.
        let unmoved = parse("ffffffff81000000 T _text\nffffffff81000040 T startup_64\n").unwrap();
        assert_eq!(derive_x86_64_kaslr_offset(&unmoved), Ok(0));
    }

    #[test]
    fn kaslr_derivation_refuses_what_it_cannot_know() {
        let arm64 = parse("ffff800080000000 T _text\nffff800080010000 T primary_entry\n").unwrap();
        assert_eq!(
            derive_x86_64_kaslr_offset(&arm64),
            Err(KaslrError::UnknownArchitecture)
        );
        let no_text = parse("ffffffff81000040 T startup_64\n").unwrap();
        assert_eq!(
            derive_x86_64_kaslr_offset(&no_text),
            Err(KaslrError::NoTextSymbol)
        );
        let low = parse("ffffffff80000000 T _text\nffffffff81000040 T startup_64\n").unwrap();
        assert!(matches!(
            derive_x86_64_kaslr_offset(&low),
            Err(KaslrError::TextBelowDefault { .. })
        ));
    }
}
