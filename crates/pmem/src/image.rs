//! Opening an image for reading, together with its manifest when one lies
//! beside it (raw images need it: a raw file cannot say where its holes are).

use crate::manifest::{self, Manifest};
use anyhow::{Context, Result};
use pmem_core::{MemoryMap, PhysicalMemory, ReadError};
use pmem_formats::{Format, ImageFile, ImageReader};
use pmem_upload::encrypt::Identities;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// `--identity` of `info`, `convert` and `verify`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct IdentityArgs {
    /// age identity file (as age-keygen writes it): read an image made with
    /// --encrypt-to, and its encrypted manifest, in place (no plaintext copy
    /// is written).
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
}

/// The identities of this run (one command per process).
static IDENTITY: OnceLock<(PathBuf, Identities)> = OnceLock::new();

/// Records `--identity` before images are opened.
pub fn set_identity(args: &IdentityArgs) -> Result<()> {
    if let Some(path) = &args.identity {
        let identities = Identities::from_file(path).context("--identity")?;
        let _ = IDENTITY.set((path.clone(), identities));
    }
    Ok(())
}

fn identities(path: &Path, what: &str) -> Result<&'static Identities> {
    match IDENTITY.get() {
        Some((_, identities)) => Ok(identities),
        None => anyhow::bail!(
            "{} is an age-encrypted {what}: pass --identity FILE (the age identity of a \
             recipient it was encrypted to) to read it in place, or decrypt it first",
            path.display()
        ),
    }
}

fn decrypt_error(path: &Path) -> String {
    let identity = IDENTITY
        .get()
        .map(|(p, _)| p.display().to_string())
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
pub fn open_file(path: &Path) -> Result<(ImageFile, bool)> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut head = [0u8; 22];
    let n = file.read(&mut head).unwrap_or(0);
    use std::io::Seek;
    file.rewind()?;
    if !pmem_upload::encrypt::is_age(&head[..n]) {
        return Ok((ImageFile::from(file), false));
    }
    let reader = identities(path, "image")?
        .decrypt(file)
        .with_context(|| decrypt_error(path))?;
    let image = ImageFile::stream(reader).with_context(|| decrypt_error(path))?;
    Ok((image, true))
}

/// The image's length (of the plaintext, for an encrypted image).
pub fn image_len(path: &Path) -> Result<u64> {
    let (file, _) = open_file(path)?;
    Ok(file.size()?)
}

/// A reader of the image's plaintext bytes (for hashing).
pub fn plain_reader(path: &Path) -> Result<Box<dyn Read>> {
    let (file, _) = open_file(path)?;
    Ok(Box::new(PlainReader(file)))
}

struct PlainReader(ImageFile);

impl Read for PlainReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&self.0).read(buf)
    }
}

/// Reads a manifest, decrypting it when it was sealed with --encrypt-to.
pub fn read_manifest(path: &Path) -> Result<Manifest> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading manifest {}", path.display()))?;
    if !pmem_upload::encrypt::is_age(&bytes) {
        return manifest::read(path);
    }
    let mut text = Vec::new();
    identities(path, "manifest")?
        .decrypt(&bytes[..])
        .and_then(|mut r| Ok(r.read_to_end(&mut text)?))
        .with_context(|| decrypt_error(path))?;
    serde_json::from_slice(&text).with_context(|| format!("parsing manifest {}", path.display()))
}

pub struct OpenedImage {
    pub reader: Box<dyn ImageReader>,
    pub manifest: Option<Manifest>,
}

/// Opens `path`; `manifest_path` overrides the default `IMAGE.json`.
pub fn open(path: &Path, manifest_path: Option<&Path>) -> Result<OpenedImage> {
    let default = manifest::default_path(path);
    let manifest = match manifest_path {
        Some(p) => Some(read_manifest(p)?),
        None if default.is_file() => Some(read_manifest(&default)?),
        None => None,
    };
    let (file, _) = open_file(path)?;
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
