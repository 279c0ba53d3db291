//! Opening an image for reading, together with its manifest when one lies
//! beside it (raw images need it: a raw file cannot say where its holes are).

use crate::manifest::{self, Manifest};
use anyhow::{Context, Result};
use pmem_core::{MemoryMap, PhysicalMemory, ReadError};
use pmem_formats::{Format, ImageReader};
use std::path::Path;

pub struct OpenedImage {
    pub reader: Box<dyn ImageReader>,
    pub manifest: Option<Manifest>,
}

/// Opens `path`; `manifest_path` overrides the default `IMAGE.json`.
pub fn open(path: &Path, manifest_path: Option<&Path>) -> Result<OpenedImage> {
    let default = manifest::default_path(path);
    let manifest = match manifest_path {
        Some(p) => Some(manifest::read(p)?),
        None if default.is_file() => Some(manifest::read(&default)?),
        None => None,
    };
    let format = pmem_formats::detect(path)?;
    let raw_map = match (&format, &manifest) {
        (Format::Raw, Some(m)) => Some(
            manifest::map_from_json(&m.ranges)
                .context("reading the raw image's ranges from its manifest")?,
        ),
        _ => None,
    };
    let mut reader = pmem_formats::open_image(path, raw_map)?;
    // AVML images leave out all-zero blocks; their manifest lists the
    // ranges that were read. Reading them back as zeros restores the
    // acquired layout for verify and convert.
    if let (Format::Avml, Some(m)) = (format, &manifest) {
        let full = manifest::map_from_json(&m.ranges)
            .context("reading the AVML image's acquired ranges from its manifest")?;
        if full.intersect(reader.memory_map()) == *reader.memory_map() {
            reader = Box::new(ZeroFilled {
                inner: reader,
                map: full,
            });
        }
    }
    Ok(OpenedImage { reader, manifest })
}

/// An image whose holes inside `map` read as zeros.
struct ZeroFilled {
    inner: Box<dyn ImageReader>,
    map: MemoryMap,
}

impl PhysicalMemory for ZeroFilled {
    fn memory_map(&self) -> &MemoryMap {
        &self.map
    }

    fn read_at(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let end = addr + buf.len() as u64;
        let mut at = addr;
        while at < end {
            let held = self.inner.memory_map();
            let piece_end = match held.find(at) {
                Some(i) => held.ranges()[i].end.min(end),
                None => held
                    .ranges()
                    .iter()
                    .map(|r| r.start)
                    .find(|&s| s > at)
                    .unwrap_or(end)
                    .min(end),
            };
            let piece = &mut buf[(at - addr) as usize..(piece_end - addr) as usize];
            if held.find(at).is_some() {
                self.inner.read_at(at, piece)?;
            } else {
                piece.fill(0);
            }
            at = piece_end;
        }
        Ok(())
    }
}

impl ImageReader for ZeroFilled {
    fn format(&self) -> Format {
        self.inner.format()
    }
    fn arch(&self) -> Option<pmem_core::Arch> {
        self.inner.arch()
    }
    fn metadata_json(&self) -> Option<&str> {
        self.inner.metadata_json()
    }
    fn vmcoreinfo(&self) -> Option<&[u8]> {
        self.inner.vmcoreinfo()
    }
    fn direct_map_offset(&self) -> Option<u64> {
        self.inner.direct_map_offset()
    }
    fn windows(&self) -> Option<pmem_core::WindowsMetadata> {
        self.inner.windows()
    }
}
