//! What `convert` records about its input: the manifest's origin and the
//! output's plan, made in one place from the image reader's metadata
//! ([`ImageMetadata`]), as [`crate::live::Live::new`] makes them for a
//! live source. A new metadata field is added here and there.

use crate::manifest::{self, HostJson, Origin, SourceJson, WindowsJson};
use anyhow::Result;
use pmem_core::{Arch, MemoryMap, Plan, WindowsMetadata};
use pmem_formats::{Format, ImageMetadata};
use std::path::Path;

/// What is known about an image being converted, after the command
/// line's overrides (`--arch`, `--cr3`, ...) were applied.
pub struct ImageInput<'a> {
    /// The input image, as given.
    pub path: &'a Path,
    /// Its format.
    pub format: Format,
    /// What the image records about itself.
    pub recorded: &'a ImageMetadata,
    /// The memory the reader holds.
    pub ranges: MemoryMap,
    /// The architecture to record.
    pub arch: Arch,
    /// The Windows metadata to record, if any.
    pub windows: Option<WindowsMetadata>,
    /// The acquisition's record embedded in the image (pmem's note).
    pub embedded: Option<&'a Origin>,
    /// The acquisition's record: the embedded one, else the input's
    /// manifest's.
    pub inherited: Option<&'a Origin>,
}

/// The manifest's origin and the output's plan of a conversion.
pub struct ImageOrigin {
    /// Where the output's memory came from, for its manifest.
    pub origin: Origin,
    /// What the output image is to hold.
    pub plan: Plan,
}

/// The acquisition's record embedded in an image (pmem's metadata note),
/// when it has one that parses.
pub fn embedded(recorded: &ImageMetadata) -> Option<Origin> {
    recorded
        .metadata_json
        .as_deref()
        .and_then(|text| serde_json::from_str(text).ok())
}

impl ImageOrigin {
    /// The origin and plan of converting `input`.
    pub fn new(input: ImageInput<'_>) -> Result<ImageOrigin> {
        let origin = Origin {
            pmem_version: env!("CARGO_PKG_VERSION").to_string(),
            host: input.inherited.map_or_else(
                || HostJson {
                    hostname: String::new(),
                    kernel_release: String::new(),
                    arch: input.arch.name(),
                },
                |o| o.host.clone(),
            ),
            source: SourceJson {
                kind: "image".into(),
                path: input.path.display().to_string(),
                format: Some(input.format.name().to_string()),
                skipped: Vec::new(),
                direct_map_offset: input.recorded.direct_map_offset.map(|o| format!("{o:#x}")),
                vmcoreinfo: input.recorded.vmcoreinfo.is_some(),
                module_version: None,
            },
            system_ram: input.inherited.map_or_else(
                || manifest::ranges_json(&input.ranges),
                |o| o.system_ram.clone(),
            ),
            not_acquired: input
                .inherited
                .map_or_else(Vec::new, |o| o.not_acquired.clone()),
            started_at: crate::host::now(),
            windows: input
                .windows
                .as_ref()
                .map(|w| keep_mode(w, input.inherited)),
            macos: input.inherited.and_then(|o| o.macos.clone()),
        };
        // Carry the embedded note through unchanged, so conversions are
        // deterministic and ELF -> X -> ELF keeps the original metadata. Windows
        // metadata the note lacks (from a dump header or --cr3) is added; a
        // note made here takes its time from that metadata, never from the clock.
        let metadata_json = match input.recorded.metadata_json.as_deref() {
            Some(text) => match (input.embedded, &input.windows) {
                (Some(note), Some(w)) if note.windows.is_none() => {
                    let mut note = note.clone();
                    note.windows = Some(WindowsJson::from(w));
                    Some(serde_json::to_string(&note)?)
                }
                _ => Some(text.to_string()),
            },
            None => match (input.inherited, &input.windows) {
                (Some(origin), w) => {
                    let mut note = origin.clone();
                    if note.windows.is_none() {
                        note.windows = w.as_ref().map(WindowsJson::from);
                    }
                    Some(serde_json::to_string(&note)?)
                }
                (None, Some(w)) => {
                    let mut note = origin.clone();
                    note.started_at = filetime_rfc3339(w.system_time);
                    note.source.path = String::new();
                    Some(serde_json::to_string(&note)?)
                }
                (None, None) => None,
            },
        };
        let plan = Plan {
            ranges: input.ranges,
            arch: input.arch,
            direct_map_offset: input.recorded.direct_map_offset,
            vmcoreinfo: input.recorded.vmcoreinfo.clone(),
            metadata_json,
            windows: input.windows,
            symbols: None,
            kernel_image: Vec::new(),
            time_map: pmem_core::TimeMapPlan::None,
        };
        Ok(ImageOrigin { origin, plan })
    }
}

/// The manifest's record of `w`, keeping the live acquisition's driver mode.
fn keep_mode(w: &WindowsMetadata, inherited: Option<&Origin>) -> WindowsJson {
    let mut json = WindowsJson::from(w);
    json.mode = inherited
        .and_then(|o| o.windows.as_ref())
        .and_then(|j| j.mode.clone());
    json
}

/// RFC 3339 text of a FILETIME (the Unix epoch when before 1970).
fn filetime_rfc3339(filetime: u64) -> String {
    let secs = WindowsMetadata::unix_from_filetime(filetime).unwrap_or(0);
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(time).to_string()
}
