//! Opening an image for reading, together with its manifest when one lies
//! beside it (raw images need it: a raw file cannot say where its holes are).

use crate::manifest::{self, Manifest};
use anyhow::{Context, Result};
use pmem_core::{MemoryMap, PhysicalMemory, Range, ReadError};
use pmem_formats::{Format, ImageFile, ImageReader};
use pmem_upload::encrypt::Identities;
use std::io::Read;
use std::path::{Path, PathBuf};

/// `--identity` of `info`, `convert` and `verify`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct IdentityArgs {
    /// age identity file (as age-keygen writes it): read an image made with
    /// --encrypt-to, and its encrypted manifest, in place (no plaintext copy
    /// is written).
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
}

impl IdentityArgs {
    /// Reads the identity file, when one is given.
    pub fn load(&self) -> Result<Option<Identity>> {
        let Some(path) = &self.identity else {
            return Ok(None);
        };
        let identities = Identities::from_file(path).context("--identity")?;
        Ok(Some(Identity {
            path: path.clone(),
            identities,
        }))
    }
}

/// `--identity`: the age identities that open encrypted images and
/// manifests, and the file they came from (for messages).
pub struct Identity {
    path: PathBuf,
    identities: Identities,
}

fn identities<'i>(
    identity: Option<&'i Identity>,
    path: &Path,
    what: &str,
) -> Result<&'i Identities> {
    match identity {
        Some(identity) => Ok(&identity.identities),
        None => anyhow::bail!(
            "{} is an age-encrypted {what}: pass --identity FILE (the age identity of a \
             recipient it was encrypted to) to read it in place, or decrypt it first",
            path.display()
        ),
    }
}

fn decrypt_error(identity: Option<&Identity>, path: &Path) -> String {
    let identity = identity
        .map(|i| i.path.display().to_string())
        .unwrap_or_default();
    format!(
        "decrypting {}: the identity in {identity} is not one it was encrypted to, \
         or the file is damaged",
        path.display()
    )
}

/// Opens an image file; an age-encrypted one is decrypted while it is
/// read (age's reader seeks: only the 64 KiB chunks a read touches are
/// decrypted).
pub fn open_file(path: &Path, identity: Option<&Identity>) -> Result<(ImageFile, bool)> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut head = [0u8; 22];
    let n = file.read(&mut head).unwrap_or(0);
    use std::io::Seek;
    file.rewind()?;
    if !pmem_upload::encrypt::is_age(&head[..n]) {
        return Ok((ImageFile::from(file), false));
    }
    let reader = identities(identity, path, "image")?
        .decrypt(file)
        .with_context(|| decrypt_error(identity, path))?;
    let image = ImageFile::stream(reader).with_context(|| decrypt_error(identity, path))?;
    Ok((image, true))
}

/// The image's length (of the plaintext, for an encrypted image).
pub fn image_len(path: &Path, identity: Option<&Identity>) -> Result<u64> {
    let (file, _) = open_file(path, identity)?;
    Ok(file.size()?)
}

/// A reader of the image's plaintext bytes (for hashing).
pub fn plain_reader(path: &Path, identity: Option<&Identity>) -> Result<Box<dyn Read>> {
    let (file, _) = open_file(path, identity)?;
    Ok(Box::new(PlainReader(file)))
}

struct PlainReader(ImageFile);

impl Read for PlainReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&self.0).read(buf)
    }
}

/// Reads a manifest, decrypting it when it was sealed with --encrypt-to.
pub fn read_manifest(path: &Path, identity: Option<&Identity>) -> Result<Manifest> {
    let text = read_sealed(path, identity, "manifest")?;
    serde_json::from_slice(&text).with_context(|| format!("parsing manifest {}", path.display()))
}

/// Reads a small file pmem wrote beside an image (a manifest, a symbols
/// sidecar), decrypting it when it was sealed with --encrypt-to; `what`
/// names it in messages.
pub fn read_sealed(path: &Path, identity: Option<&Identity>, what: &str) -> Result<Vec<u8>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))?;
    if !pmem_upload::encrypt::is_age(&bytes) {
        return Ok(bytes);
    }
    let mut text = Vec::new();
    identities(identity, path, what)?
        .decrypt(&bytes[..])
        .and_then(|mut r| Ok(r.read_to_end(&mut text)?))
        .with_context(|| decrypt_error(identity, path))?;
    Ok(text)
}

pub struct OpenedImage {
    pub reader: Box<dyn ImageReader>,
    pub manifest: Option<Manifest>,
    /// An AVML image whose manifest lists ranges its blocks do not prove:
    /// why. The reader then holds only the blocks.
    pub ranges_unproven: Option<String>,
}

/// Opens `path`; `manifest_path` overrides the default `IMAGE.json`;
/// `identity` opens an encrypted image and manifest.
pub fn open(
    path: &Path,
    manifest_path: Option<&Path>,
    identity: Option<&Identity>,
) -> Result<OpenedImage> {
    let default = manifest::default_path(path);
    let manifest = match manifest_path {
        Some(p) => Some(read_manifest(p, identity)?),
        None if default.is_file() => Some(read_manifest(&default, identity)?),
        None => None,
    };
    let (file, _) = open_file(path, identity)?;
    let (file, _) = pmem_formats::unwrap_zstd(path, file)?;
    let format = pmem_formats::detect_image(path, &file)?;
    let raw_map = match (&format, &manifest) {
        (Format::Raw, Some(m)) => Some(
            manifest::map_from_json(&m.ranges)
                .context("reading the raw image's ranges from its manifest")?,
        ),
        _ => None,
    };
    let mut reader = pmem_formats::open_image_file(path, file, raw_map)?;
    // AVML images leave out all-zero frames; their manifest lists the
    // ranges that were read. Reading the left-out frames back as zeros
    // restores the acquired layout for verify and convert, when the blocks
    // prove those ranges.
    let mut ranges_unproven = None;
    if let (Format::Avml, Some(m)) = (format, &manifest) {
        let claimed = manifest::map_from_json(&m.ranges)
            .context("reading the AVML image's acquired ranges from its manifest")?;
        match avml_ranges_proven(&claimed, reader.memory_map()) {
            Ok(()) => {
                reader = Box::new(ZeroFilled {
                    inner: reader,
                    map: claimed,
                })
            }
            Err(reason) => ranges_unproven = Some(reason),
        }
    }
    Ok(OpenedImage {
        reader,
        manifest,
        ranges_unproven,
    })
}

/// Whether an AVML image's blocks (`held`, adjacent blocks merged) prove
/// the ranges its manifest claims. pmem writes the first and the last 64
/// KiB frame of every range, zero or not, and leaves out only all-zero
/// frames between them; frames start every 64 KiB from the range's start.
/// So each claimed range must begin and end with a block, the gaps inside
/// it must start and end on its frame boundaries, and no block may lie
/// outside the claimed ranges. `Err` says the first thing that does not fit.
pub fn avml_ranges_proven(claimed: &MemoryMap, held: &MemoryMap) -> Result<(), String> {
    let frame = pmem_formats::avml::FRAME as u64;
    let runs = held.ranges();
    let mut covered = 0u64;
    for range in claimed.ranges() {
        let first = runs.partition_point(|run| run.end <= range.start);
        let pieces: Vec<Range> = runs[first..]
            .iter()
            .take_while(|run| run.start < range.end)
            .filter_map(|run| Range::new(run.start.max(range.start), run.end.min(range.end)))
            .collect();
        let (Some(head), Some(tail)) = (pieces.first(), pieces.last()) else {
            return Err(format!(
                "the manifest lists {range}, of which the image holds no block"
            ));
        };
        if head.start != range.start || tail.end != range.end {
            return Err(format!(
                "the manifest lists {range}, but the image's blocks there span only \
                 {:#x}-{:#x} (pmem writes the first and last 64 KiB of every range)",
                head.start,
                tail.end - 1
            ));
        }
        for piece in &pieces {
            for edge in [piece.start, piece.end] {
                if edge != range.end && (edge - range.start) % frame != 0 {
                    return Err(format!(
                        "the manifest lists {range}, but the image's blocks leave a gap at \
                         {edge:#x}, which is not on one of the range's 64 KiB frames: \
                         not left-out zeros"
                    ));
                }
            }
            covered += piece.len();
        }
    }
    if covered != held.total_bytes() {
        let outside = runs
            .iter()
            .find(|run| !claimed.covers(run.start, run.len()))
            .map_or_else(String::new, |run| format!(" ({run})"));
        return Err(format!(
            "the image holds blocks outside the manifest's ranges{outside}"
        ));
    }
    Ok(())
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
    fn metadata(&self) -> &pmem_formats::ImageMetadata {
        self.inner.metadata()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(ranges: &[(u64, u64)]) -> MemoryMap {
        MemoryMap::new(
            ranges
                .iter()
                .map(|&(s, e)| Range::new(s, e).unwrap())
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn avml_ranges_need_blocks_at_their_edges_and_frame_aligned_gaps() {
        let claimed = map(&[(0x1000, 0x9f000), (0x100000, 0x900000)]);
        // Whole, with frame-aligned zero gaps inside the second range.
        let held = map(&[
            (0x1000, 0x9f000),
            (0x100000, 0x120000),
            (0x400000, 0x900000),
        ]);
        assert_eq!(avml_ranges_proven(&claimed, &held), Ok(()));
        // Adjacent claimed ranges: blocks merged across the boundary.
        let adjacent = map(&[(0x1000, 0x9f000), (0x9f000, 0x100000)]);
        assert!(avml_ranges_proven(&adjacent, &map(&[(0x1000, 0x100000)])).is_ok());
        // An invented range.
        let invented = map(&[
            (0x1000, 0x9f000),
            (0x100000, 0x900000),
            (0x1000_0000, 0x1010_0000),
        ]);
        let err = avml_ranges_proven(&invented, &held).unwrap_err();
        assert!(err.contains("0x10000000"), "{err}");
        // Leading or trailing zeros left out: not proven.
        let late = map(&[(0x1000, 0x9f000), (0x110000, 0x900000)]);
        assert!(avml_ranges_proven(&claimed, &late).is_err());
        let early = map(&[(0x1000, 0x9f000), (0x100000, 0x800000)]);
        assert!(avml_ranges_proven(&claimed, &early).is_err());
        // A gap off the frame grid.
        let off = map(&[
            (0x1000, 0x9f000),
            (0x100000, 0x121000),
            (0x400000, 0x900000),
        ]);
        assert!(avml_ranges_proven(&claimed, &off).is_err());
        // A block outside the claimed ranges.
        let extra = map(&[
            (0x1000, 0x9f000),
            (0x100000, 0x900000),
            (0xa00000, 0xa10000),
        ]);
        let err = avml_ranges_proven(&claimed, &extra).unwrap_err();
        assert!(err.contains("outside"), "{err}");
    }
}
