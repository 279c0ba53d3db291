//! What a Windows crash dump header needs to know about the kernel whose
//! memory an image holds. The WinPmem driver reports it at acquisition time;
//! images carry it onwards (manifest, ELF pmem note, dmp header) so that
//! `convert` can write a crash dump later without the live machine.

/// Kernel facts of a Windows machine, as the WinPmem driver reports them.
/// Addresses are kernel virtual addresses except `cr3` (physical).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowsMetadata {
    /// Directory table base of the System process: the root of address
    /// translation, which Volatility needs first.
    pub cr3: u64,
    /// The kernel's `NtBuildNumber` as reported (free builds carry 0xF in
    /// the top nibble of the low 32 bits, e.g. 0xF0004A61 for 19041).
    pub nt_build_number: u64,
    /// Load address of the kernel image (ntoskrnl.exe).
    pub kernel_base: u64,
    /// Address of the KDBG block; 0 when unknown (drivers since 2.x no
    /// longer fill it, Volatility 3 finds the kernel by scanning).
    pub kdbg: u64,
    /// Address of the page frame number database (`MmPfnDatabase`).
    pub pfn_database: u64,
    /// Address of `PsLoadedModuleList`, the head of the loaded driver list.
    pub ps_loaded_module_list: u64,
    /// Address of `PsActiveProcessHead`, the head of the process list.
    pub ps_active_process_head: u64,
    /// Number of processors (count of KPCR entries the driver filled).
    pub processors: u32,
    /// Time of the acquisition as a FILETIME (100 ns units since
    /// 1601-01-01 UTC); 0 when unknown. Written into dump headers, so it
    /// must come from the image's metadata, never from the conversion clock.
    pub system_time: u64,
}

/// FILETIME of the Unix epoch (1970-01-01) in 100 ns units since 1601.
const UNIX_EPOCH_AS_FILETIME: u64 = 116_444_736_000_000_000;

impl WindowsMetadata {
    /// The build number proper (19041, 22621), without the free/checked
    /// marker bits: what a dump header's MinorVersion holds.
    pub fn build(&self) -> u32 {
        (self.nt_build_number & 0xFFFF) as u32
    }

    /// FILETIME for `unix_seconds` seconds since 1970; saturates rather
    /// than wrapping on absurd inputs.
    pub fn filetime_from_unix(unix_seconds: u64) -> u64 {
        unix_seconds
            .saturating_mul(10_000_000)
            .saturating_add(UNIX_EPOCH_AS_FILETIME)
    }

    /// Seconds since 1970 of a FILETIME, `None` before 1970.
    pub fn unix_from_filetime(filetime: u64) -> Option<u64> {
        filetime
            .checked_sub(UNIX_EPOCH_AS_FILETIME)
            .map(|t| t / 10_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_strips_the_free_build_marker() {
        let m = WindowsMetadata {
            nt_build_number: 0xF000_4A61,
            ..Default::default()
        };
        assert_eq!(m.build(), 19041);
    }

    #[test]
    fn filetime_conversions() {
        // 2024-01-01T00:00:00Z
        let unix = 1_704_067_200;
        let ft = WindowsMetadata::filetime_from_unix(unix);
        assert_eq!(ft, 133_485_408_000_000_000);
        assert_eq!(WindowsMetadata::unix_from_filetime(ft), Some(unix));
        assert_eq!(WindowsMetadata::unix_from_filetime(5), None);
        assert_eq!(WindowsMetadata::filetime_from_unix(u64::MAX), u64::MAX);
    }
}
