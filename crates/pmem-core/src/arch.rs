//! The machine architecture an image belongs to. Formats need it for their
//! machine fields (ELF e_machine), the manifest names it.

/// Architectures pmem knows how to label. Unknown ELF machines are kept by
/// number so that `info` and `convert` can still carry them through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// 64-bit x86 (AMD64, Intel 64); ELF `EM_X86_64`.
    X86_64,
    /// 64-bit Arm (ARMv8-A and later); ELF `EM_AARCH64`.
    Aarch64,
    /// 32-bit x86; ELF `EM_386`. The one 32-bit architecture pmem names.
    X86,
    /// Any other ELF e_machine value.
    Other(u16),
}

impl Arch {
    /// The architecture this binary was built for, used when a source does
    /// not say (for example /dev/crash or /dev/mem).
    pub fn host() -> Arch {
        if cfg!(target_arch = "x86_64") {
            Arch::X86_64
        } else if cfg!(target_arch = "aarch64") {
            Arch::Aarch64
        } else if cfg!(target_arch = "x86") {
            Arch::X86
        } else {
            Arch::Other(0)
        }
    }

    /// ELF e_machine value (EM_X86_64 = 62, EM_AARCH64 = 183, EM_386 = 3).
    pub fn elf_machine(self) -> u16 {
        match self {
            Arch::X86_64 => 62,
            Arch::Aarch64 => 183,
            Arch::X86 => 3,
            Arch::Other(m) => m,
        }
    }

    /// The architecture of an ELF `e_machine` value; the inverse of
    /// [`elf_machine`](Self::elf_machine). Never fails: unknown values
    /// become [`Arch::Other`].
    pub fn from_elf_machine(machine: u16) -> Arch {
        match machine {
            62 => Arch::X86_64,
            183 => Arch::Aarch64,
            3 => Arch::X86,
            m => Arch::Other(m),
        }
    }

    /// Name as `uname -m` prints it; what the manifest records.
    pub fn name(self) -> String {
        match self {
            Arch::X86_64 => "x86_64".into(),
            Arch::Aarch64 => "aarch64".into(),
            Arch::X86 => "i686".into(),
            Arch::Other(m) => format!("elf-machine-{m}"),
        }
    }

    /// Parses a name as [`name`](Self::name) writes it, and the aliases
    /// other tools use (`amd64`, `arm64`, `i386`, `x86`). `None` for a name
    /// pmem does not know.
    pub fn from_name(name: &str) -> Option<Arch> {
        match name {
            "x86_64" | "amd64" => Some(Arch::X86_64),
            "aarch64" | "arm64" => Some(Arch::Aarch64),
            "i386" | "i686" | "x86" => Some(Arch::X86),
            other => other
                .strip_prefix("elf-machine-")
                .and_then(|n| n.parse().ok())
                .map(Arch::Other),
        }
    }

    /// Whether the architecture is 64-bit (ELF class of the images pmem writes).
    pub fn is_64bit(self) -> bool {
        !matches!(self, Arch::X86)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for arch in [Arch::X86_64, Arch::Aarch64, Arch::X86, Arch::Other(243)] {
            assert_eq!(Arch::from_name(&arch.name()), Some(arch));
            assert_eq!(Arch::from_elf_machine(arch.elf_machine()), arch);
        }
    }
}
