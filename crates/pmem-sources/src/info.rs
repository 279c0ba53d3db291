//! What an opened Linux source is ([`SourceInfo`]), with the RAM it could
//! not give ([`NotAcquired`]).

use crate::iomem::Iomem;
use crate::kind::SourceKind;
use pmem_core::{Arch, MemoryMap, PhysicalMemory, Range};
use std::fmt;
use std::path::PathBuf;

/// System RAM the source could not give, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAcquired {
    /// The physical addresses (bytes) left out.
    pub range: Range,
    /// Why, for the manifest (e.g. "partial page at the end of a range").
    pub reason: String,
}

/// What an opened source is, for the manifest and the image metadata.
#[derive(Debug, Clone)]
pub struct SourceInfo {
    /// The source actually used (never `Auto`).
    pub kind: SourceKind,
    /// The device or file read.
    pub path: PathBuf,
    /// kcore's e_machine; the host's for /dev/crash and /dev/mem.
    pub arch: Arch,
    /// Kernel virtual address of physical 0 in the direct map (kcore only).
    pub direct_map_offset: Option<u64>,
    /// Descriptor of kcore's VMCOREINFO note, when it has one.
    pub vmcoreinfo: Option<Vec<u8>>,
    /// System RAM as iomem lists it, not clipped to pages.
    pub system_ram: MemoryMap,
    /// The whole memory map read (every resource, not only System RAM).
    pub iomem: Iomem,
    /// System RAM outside the source's memory map, sorted by address.
    pub not_acquired: Vec<NotAcquired>,
    /// For `auto`: the sources tried before this one and why each was skipped.
    pub skipped: Vec<(SourceKind, String)>,
    /// The version of pmem's kernel module (module source only).
    pub module_version: Option<String>,
}

/// A source ready to copy: its memory map is page-aligned System RAM.
pub struct OpenedSource {
    /// The memory to copy, read through the source.
    pub memory: Box<dyn PhysicalMemory>,
    /// What the source is.
    pub info: SourceInfo,
}

impl fmt::Debug for OpenedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenedSource")
            .field("memory_map", self.memory.memory_map())
            .field("info", &self.info)
            .finish()
    }
}
