//! Opening an image for reading, together with its manifest when one lies
//! beside it (raw images need it: a raw file cannot say where its holes are).

use crate::manifest::{self, Manifest};
use anyhow::{Context, Result};
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
    let reader = pmem_formats::open_image(path, raw_map)?;
    Ok(OpenedImage { reader, manifest })
}
