//! One copy from a source (live memory or an image) into an image format,
//! with progress on stderr and a manifest that is written whatever happens.
//! Shared by `acquire` and `convert`.

use crate::carried_symbols::{self, CarriedSymbols};
use crate::compress::{self, Compression, Encoding};
use crate::destination::{self, Destination, Encryption, ImageLength, SinkOptions};
use crate::errors::error_text;
use crate::interrupt::{Watch, Watched};
use crate::manifest::{
    self, BytesJson, Existing, Manifest, Origin, PageRunJson, RereadJson, SymbolsJson, TimeMapJson,
};
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pmem_core::window::reread;
use pmem_core::{
    copy_memory, CopyError, CopyOptions, CopyReport, PhysicalMemory, Plan, ReadOrder, TimeMapPlan,
    WriteError,
};
use pmem_formats::Format;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Everything one copy needs, as values: nothing is read from process state.
pub struct Job<'a> {
    pub source: &'a mut dyn PhysicalMemory,
    pub plan: Plan,
    pub format: Format,
    pub destination: Destination,
    /// --encrypt-to: the image and the manifest are encrypted.
    pub encryption: Option<Encryption>,
    /// Where to write the manifest; `None` writes none (stdout without --manifest).
    pub manifest_path: Option<PathBuf>,
    pub origin: Origin,
    /// Unreadable pages known from an earlier step (an input image's manifest).
    pub inherited_unreadable: Vec<PageRunJson>,
    /// The re-read of the acquisition an input image came from (its
    /// manifest's), carried on by a conversion as the time map is
    /// ([`Plan::time_map`]).
    pub inherited_reread: Option<RereadJson>,
    /// --compress.
    pub compression: Option<Compression>,
    /// --force, --hash, --max-disk-usage.
    pub sink: SinkOptions,
    /// No progress bar.
    pub quiet: bool,
    /// Also compute memory_hash (the format-independent hash of the
    /// memory content, with the sink's algorithm, BLAKE3 when it has
    /// none): a second hash pass.
    pub memory_hash: bool,
    /// Where a signal finds the manifest to record an interruption in.
    pub watch: &'a Watch,
    /// The kernel's symbol bundle to carry (acquire on Linux; convert of
    /// an image that has one).
    pub symbols: Option<CarriedSymbols>,
    /// --symbols-file: where the bundle goes when the format has no room
    /// for it (default: `IMAGE.symbols` beside an image file).
    pub symbols_file: Option<PathBuf>,
    /// --reread: after the copy, read memory again and count the pages
    /// that changed since they were copied (the image is not touched).
    pub reread: bool,
    /// --order: the order memory is read in.
    pub order: ReadOrder,
}

/// Where a job's symbol bundle goes.
#[derive(Debug, Clone, PartialEq)]
enum SymbolsPlace {
    /// Inside the image (the format has room).
    Image,
    /// A sidecar file on this machine.
    File(PathBuf),
    /// Beside the image at a remote destination, under this name.
    Remote(String),
    /// Standard output without --symbols-file, a pre-signed PUT without
    /// --symbols-url: nowhere to put it.
    NotKept,
}

impl SymbolsPlace {
    fn choose(
        symbols: &CarriedSymbols,
        format: Format,
        destination: &Destination,
        explicit: Option<&Path>,
    ) -> SymbolsPlace {
        if carried_symbols::fits_inside(format, symbols) {
            return SymbolsPlace::Image;
        }
        match (explicit, destination.file(), destination.symbols_beside()) {
            (Some(path), _, _) => SymbolsPlace::File(path.to_owned()),
            (None, Some(image), _) => SymbolsPlace::File(carried_symbols::sidecar_path(image)),
            (None, None, Some(name)) => SymbolsPlace::Remote(name),
            (None, None, None) => SymbolsPlace::NotKept,
        }
    }

    /// The sidecar's name for the manifest: its path, or the remote object.
    fn sidecar_name(&self) -> Option<String> {
        match self {
            SymbolsPlace::File(path) => Some(path.display().to_string()),
            SymbolsPlace::Remote(name) => Some(name.clone()),
            SymbolsPlace::Image | SymbolsPlace::NotKept => None,
        }
    }

    fn file(&self) -> Option<&Path> {
        match self {
            SymbolsPlace::File(path) => Some(path),
            _ => None,
        }
    }
}

/// Copies, commits, writes the manifest. Returns the manifest of a complete
/// image, or an error after writing a manifest that says what went wrong.
pub fn run(mut job: Job<'_>) -> Result<Manifest> {
    let started = Instant::now();
    let mut encoding = compress::resolve(job.format, job.compression)?;
    let image_path = job.destination.file().map(Path::to_owned);
    let symbols = job.symbols.take().map(|symbols| {
        let place = SymbolsPlace::choose(
            &symbols,
            encoding.format,
            &job.destination,
            job.symbols_file.as_deref(),
        );
        (symbols, place)
    });
    let symbols_path = symbols
        .as_ref()
        .and_then(|(_, place)| place.file().map(Path::to_owned));
    check_before_writing(
        &job,
        encoding.format,
        image_path.as_deref(),
        symbols_path.as_deref(),
    )?;
    let (symbols_record, sidecar) = match symbols {
        Some((symbols, place)) => {
            let (record, sidecar) = place_symbols(&mut job, symbols, &place)?;
            (Some(record), sidecar)
        }
        None => (None, None),
    };
    // A remote destination's sidecar goes after the image (its receiver
    // takes objects in that order); a local one before the copy.
    let (sidecar, mut remote_sidecar) = if symbols_path.is_some() {
        (sidecar, None)
    } else {
        (None, sidecar)
    };
    let mut manifest = Manifest {
        schema_version: manifest::SCHEMA_VERSION,
        origin: job.origin.clone(),
        complete: false,
        error: None,
        format: encoding.format.name().to_string(),
        ranges: manifest::ranges_json(&job.plan.ranges),
        unreadable_pages: job.inherited_unreadable.clone(),
        unreadable_page_count: 0,
        bytes: BytesJson {
            memory: job.plan.ranges.total_bytes(),
            ..BytesJson::default()
        },
        image_hash: None,
        image_sha256: None,
        memory_hash: None,
        memory_sha256: None,
        finished_at: None,
        seconds: None,
        compression: encoding.compression(),
        warnings: Vec::new(),
        encryption: job.encryption.as_ref().map(Encryption::record),
        symbols: symbols_record,
        time_map: None,
        reread: job.inherited_reread.clone(),
    };
    // A manifest that cannot be written should stop us before we write
    // gigabytes: create it first, replace it at the end. From here on a
    // signal is recorded in it.
    job.watch.with(|watched| -> Result<()> {
        if let Some(path) = &job.manifest_path {
            let text = destination::manifest_bytes(&manifest, job.encryption.as_ref())?;
            let existing = if job.sink.overwrite {
                Existing::Replace
            } else {
                Existing::Refuse
            };
            manifest::write(path, &text, existing)?;
        }
        *watched = Some(Watched {
            manifest: manifest.clone(),
            manifest_path: job.manifest_path.clone(),
            image: image_path.clone(),
            started,
            encryption: job.encryption.clone(),
        });
        Ok(())
    })?;
    // The sidecar before the copy, so the capture's memory is freed and a
    // copy that fails half-way still leaves the symbols beside its image.
    // The memory matters more: a sidecar that cannot be written is a
    // warning, not a reason to stop.
    if let (Some(path), Some(sealed)) = (&symbols_path, sidecar) {
        let existing = if job.sink.overwrite {
            Existing::Replace
        } else {
            Existing::Refuse
        };
        if let Err(err) = manifest::write_beside(path, &sealed, existing, "the symbols") {
            let _ = std::fs::remove_file(path);
            let warning = format!("the kernel's symbols were not kept: {}", error_text(&err));
            eprintln!("pmem: warning: {warning}");
            manifest.warnings.push(warning);
            if let Some(record) = &mut manifest.symbols {
                record.carried = "not_kept".into();
                record.file = None;
            }
            job.watch.with(|watched| {
                if let Some(w) = watched {
                    w.manifest = manifest.clone();
                }
            });
        }
    }

    let progress = if job.quiet {
        ProgressBar::hidden()
    } else {
        progress_bar(job.plan.ranges.total_bytes())
    };
    let options = CopyOptions {
        memory_hash: job.memory_hash.then(|| job.sink.hash.unwrap_or_default()),
        page_digests: job.reread,
        order: job.order,
        ..CopyOptions::default()
    };
    let sink_options = job.sink;
    let mut tracker = Tracker::default();
    let mut result = copy_once(
        &mut job,
        encoding,
        &sink_options,
        &progress,
        &mut tracker,
        &options,
    );
    if let (Format::Avml, Some(err)) = (encoding.format, unrepresentable(&result)) {
        // AVML blocks of incompressible memory would hang Volatility 3:
        // start again in plain LiME, on a file. Memory is read again.
        let warning = format!("{err}; wrote plain (uncompressed) LiME instead");
        if let Destination::File(_) = job.destination {
            eprintln!("pmem: warning: {warning}");
            manifest.warnings.push(warning);
            encoding = Encoding::plain(Format::Lime);
            manifest.format = encoding.format.name().to_string();
            manifest.compression = None;
            job.watch.with(|watched| {
                if let Some(w) = watched {
                    w.manifest = manifest.clone();
                }
            });
            progress.set_position(0);
            // The file is ours: created by this run.
            let ours = SinkOptions {
                overwrite: true,
                ..sink_options
            };
            result = copy_once(&mut job, encoding, &ours, &progress, &mut tracker, &options);
        } else {
            result = result.context(
                "AVML compression cannot represent this memory and a stream cannot start \
                 again: write to a file (pmem then falls back to plain LiME) or use --compress zstd",
            );
        }
    }
    progress.finish_and_clear();

    let result = match result {
        Err(err) if tracker.bytes_read == 0 => {
            // Nothing of the memory was written: leave nothing behind, so
            // the same command (corrected) can run again.
            job.watch.with(|watched| {
                *watched = None;
                if let (Some(path), true) = (&image_path, tracker.image_created) {
                    let _ = std::fs::remove_file(path);
                }
                for path in job.manifest_path.iter().chain(symbols_path.iter()) {
                    let _ = std::fs::remove_file(path);
                }
            });
            anyhow::bail!(
                "{} (nothing was written: no image, no manifest, no symbols)",
                error_text(&err)
            );
        }
        result => result,
    };

    manifest.finished_at = Some(crate::host::now());
    manifest.seconds = Some(started.elapsed().as_secs_f64());
    let outcome = match result {
        Ok(report) => {
            manifest.complete = true;
            manifest
                .unreadable_pages
                .extend(report.unreadable.iter().map(PageRunJson::from));
            manifest.bytes.zero = report.zero_bytes;
            manifest.bytes.image = report.image.bytes;
            manifest.set_hashes(report.image.hash, report.memory_hash);
            record_window(&mut job, &report, &mut manifest);
            // The image was synced by its sink; its directory entry too.
            match &image_path {
                Some(path) => manifest::sync_parent(path)
                    .with_context(|| format!("syncing the directory of {}", path.display())),
                None => Ok(()),
            }
        }
        Err(err) => Err(err),
    };
    if let Err(err) = &outcome {
        manifest.complete = false;
        manifest.error = Some(error_text(err));
    }
    if let (Ok(()), Some(sealed)) = (&outcome, remote_sidecar.take()) {
        // The image is complete: symbols that cannot follow it are a
        // warning in its manifest, not a failed acquisition.
        if let Err(err) = job.destination.send_symbols(&sealed, sink_options.hash) {
            let warning = format!(
                "the kernel's symbols were not uploaded: {}",
                error_text(&err)
            );
            eprintln!("pmem: warning: {warning}");
            manifest.warnings.push(warning);
            if let Some(record) = &mut manifest.symbols {
                record.carried = "not_kept".into();
                record.file = None;
            }
        }
    }
    manifest.unreadable_page_count = manifest.unreadable_pages.iter().map(|r| r.pages).sum();
    manifest.encryption = job.encryption.as_ref().map(Encryption::record);
    let recorded = job.watch.with(|watched| -> Result<()> {
        *watched = None;
        if let Some(path) = &job.manifest_path {
            let text = destination::manifest_bytes(&manifest, job.encryption.as_ref())?;
            manifest::write(path, &text, Existing::Replace)?;
        }
        Ok(())
    });
    match (recorded, &outcome) {
        (Ok(()), _) => {}
        (Err(failed), Ok(())) => return Err(failed),
        // Both failed (a full disk, say): the copy's error comes first.
        (Err(failed), Err(err)) => anyhow::bail!(
            "{}; and the manifest could not say so: {}",
            error_text(err),
            error_text(&failed)
        ),
    }
    if outcome.is_ok() && job.destination.is_remote() {
        let text = destination::manifest_bytes(&manifest, job.encryption.as_ref())?;
        job.destination.send_manifest(&text, sink_options.hash)?;
    }
    outcome.map(|()| manifest)
}

/// Records the copy's time map in the manifest and, with --reread, reads
/// memory again and records how much of it changed since it was copied.
/// A re-read that fails is a warning: the image is complete either way.
fn record_window(job: &mut Job<'_>, report: &CopyReport, manifest: &mut Manifest) {
    let time_map = match &job.plan.time_map {
        TimeMapPlan::None => return,
        // A conversion: the input's, as it was recorded (convert made it
        // from a TimeMapJson, so it reads back as one).
        TimeMapPlan::Carried(json) => {
            manifest.time_map = serde_json::from_str(json).ok();
            return;
        }
        TimeMapPlan::Measured => TimeMapJson::of(&report.time_map),
    };
    if let Some(note) = &report.order_note {
        eprintln!("pmem: warning: {note}");
        manifest.warnings.push(note.clone());
    }
    match time_map {
        Ok(time_map) => manifest.time_map = Some(time_map),
        Err(err) => manifest.warnings.push(format!(
            "the time map was not recorded: {}",
            error_text(&err)
        )),
    }
    let Some(digests) = &report.page_digests else {
        return;
    };
    if !job.quiet {
        eprintln!("pmem: reading memory again to measure what changed during the copy");
    }
    let started_ms = report.started.elapsed().as_secs_f64() * 1000.0;
    match reread(
        &mut *job.source,
        &job.plan,
        digests,
        &report.unreadable,
        CopyOptions::default().chunk_size,
    ) {
        Ok(found) => {
            let window = manifest
                .time_map
                .as_ref()
                .and_then(|t| t.window_ms)
                .unwrap_or(0.0);
            eprintln!(
                "pmem: re-read: {} of {} pages ({:.3}%) changed since they were copied \
                 (copy window {:.1} s, re-read {:.1} s)",
                found.pages_changed,
                found.pages_compared,
                found.ratio() * 100.0,
                window / 1000.0,
                found.duration_us as f64 / 1e6
            );
            manifest.reread = Some(RereadJson::new(&found, started_ms));
        }
        Err(err) => {
            let warning = format!("the re-read failed: {err}");
            eprintln!("pmem: warning: {warning}");
            manifest.warnings.push(warning);
        }
    }
}

/// What the copy has done so far: whether this run created the image file,
/// and how many bytes of memory it handed to the writer.
#[derive(Default)]
struct Tracker {
    image_created: bool,
    bytes_read: u64,
}

/// What can be checked before any file is created: a run refused here
/// leaves nothing behind.
fn check_before_writing(
    job: &Job<'_>,
    format: Format,
    image: Option<&Path>,
    symbols: Option<&Path>,
) -> Result<()> {
    if !job.sink.overwrite {
        let manifest = job.manifest_path.as_deref();
        for path in image.iter().chain(manifest.iter()).chain(symbols.iter()) {
            if path.symlink_metadata().is_ok() {
                anyhow::bail!(
                    "{} already exists: choose another name or pass --force",
                    path.display()
                );
            }
        }
    }
    if format == Format::Dmp {
        // A crash dump needs Windows metadata and an x86 machine: its
        // header says whether the plan has them.
        pmem_formats::dmp::header(&job.plan, None).context("--format dmp")?;
    }
    Ok(())
}

/// Puts the bundle where `place` says: into the plan (the writer embeds
/// it), or returns the sidecar's bytes (sealed like the manifest when the
/// image is encrypted) for the caller to write. Also returns the
/// manifest's record.
fn place_symbols(
    job: &mut Job<'_>,
    symbols: CarriedSymbols,
    place: &SymbolsPlace,
) -> Result<(SymbolsJson, Option<Vec<u8>>)> {
    match place {
        SymbolsPlace::Image => {
            let record = symbols.manifest_record("image", None);
            job.plan.symbols = Some(symbols.tar);
            Ok((record, None))
        }
        SymbolsPlace::File(_) | SymbolsPlace::Remote(_) => {
            let record = symbols.manifest_record("sidecar", place.sidecar_name());
            // Moved, not copied: the sidecar is the capture's own buffer.
            let sealed = destination::seal(symbols.tar, job.encryption.as_ref(), "the symbols")?;
            Ok((record, Some(sealed)))
        }
        SymbolsPlace::NotKept => {
            let how = match job.destination {
                Destination::PresignedPut(_) => "--symbols-url URL or --symbols-file FILE",
                _ => "--symbols-file FILE",
            };
            eprintln!(
                "pmem: note: the kernel's symbols are not kept: a {} image has no room for them \
                 and {} has nothing beside it; give {how}, or write elf, macho or aff4",
                job.format,
                job.destination.display()
            );
            Ok((symbols.manifest_record("not_kept", None), None))
        }
    }
}

/// One copy of the job's source into a fresh output. It spends the plan's
/// symbol bundle (`copy_memory` drops it once the writer has placed it);
/// the only second copy, AVML's fallback to LiME, has none to place (both
/// keep the bundle beside the image).
fn copy_once(
    job: &mut Job<'_>,
    encoding: Encoding,
    sink_options: &SinkOptions,
    progress: &ProgressBar,
    tracker: &mut Tracker,
    options: &CopyOptions,
) -> Result<CopyReport> {
    let planned_len = ImageLength::planned(&encoding, &job.plan);
    let opened = job.destination.open(sink_options, &planned_len)?;
    tracker.image_created = true;
    let writer = encoding.writer(opened.into_sink(job.encryption.as_mut(), sink_options.hash)?);
    copy_memory(
        &mut *job.source,
        writer,
        &mut job.plan,
        options,
        &mut |done| {
            tracker.bytes_read = tracker.bytes_read.max(done);
            progress.set_position(done)
        },
    )
    .with_context(|| {
        format!(
            "writing {} image {}",
            encoding.format,
            job.destination.display()
        )
    })
}

/// The message of a copy that failed because the format cannot hold the memory.
fn unrepresentable(result: &Result<CopyReport>) -> Option<String> {
    let err = result.as_ref().err()?;
    match err.downcast_ref::<CopyError>() {
        Some(CopyError::Write(WriteError::Unrepresentable { .. })) => Some(error_text(err)),
        _ => None,
    }
}

fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{bytes:>10}/{total_bytes} [{wide_bar}] {bytes_per_sec} eta {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar
}

/// One line for stderr summing up a finished job.
pub fn summary_line(manifest: &Manifest, destination: &Destination) -> String {
    let mib = manifest.bytes.memory as f64 / (1 << 20) as f64;
    let secs = manifest.seconds.unwrap_or(0.0);
    let mut line = format!(
        "pmem: wrote {:.1} MiB of memory in {} range(s) to {} ({} bytes, {:.1} s, {:.0} MiB/s), {}",
        mib,
        manifest.ranges.len(),
        destination.display(),
        manifest.bytes.image,
        secs,
        if secs > 0.0 { mib / secs } else { 0.0 },
        manifest.image_hash().map_or_else(
            || "not hashed".into(),
            |h| format!("{} {}", h.algorithm, h.hex)
        ),
    );
    if manifest.unreadable_page_count > 0 {
        line.push_str(&format!(
            "\npmem: warning: {} page(s) could not be read and were written as zeros (listed in the manifest)",
            manifest.unreadable_page_count
        ));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destination::UploadArgs;
    use crate::manifest::{HostJson, SourceJson};
    use pmem_core::sink::hex;
    use pmem_core::{Arch, MemoryMap, Range, ReadError};
    use sha2::{Digest, Sha256};

    /// Memory held in a vector: each byte is its address's low byte plus
    /// its page number, so a misplaced page shows.
    struct VecMemory {
        map: MemoryMap,
        bytes: Vec<u8>,
    }

    impl VecMemory {
        fn new(ranges: &[(u64, u64)]) -> VecMemory {
            let map = MemoryMap::new(
                ranges
                    .iter()
                    .map(|&(start, end)| Range::new(start, end).unwrap())
                    .collect(),
            )
            .unwrap();
            let end = map.ranges().last().unwrap().end;
            let bytes = (0..end)
                .map(|a| (a as u8).wrapping_add((a >> 12) as u8))
                .collect();
            VecMemory { map, bytes }
        }
    }

    impl PhysicalMemory for VecMemory {
        fn memory_map(&self) -> &MemoryMap {
            &self.map
        }
        fn read_at(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
            let start = addr as usize;
            buf.copy_from_slice(&self.bytes[start..start + buf.len()]);
            Ok(())
        }
    }

    fn origin() -> Origin {
        Origin {
            pmem_version: "test".into(),
            host: HostJson {
                hostname: "test".into(),
                kernel_release: String::new(),
                arch: Arch::X86_64.name(),
            },
            source: SourceJson {
                kind: "test".into(),
                path: "memory".into(),
                format: None,
                skipped: Vec::new(),
                direct_map_offset: None,
                vmcoreinfo: false,
                module_version: None,
            },
            system_ram: Vec::new(),
            not_acquired: Vec::new(),
            started_at: crate::host::now(),
            windows: None,
            macos: None,
        }
    }

    #[test]
    fn run_writes_an_image_and_its_manifest_from_values_alone() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("memory.lime");
        let mut memory = VecMemory::new(&[(0x1000, 0x9f000), (0x100000, 0x180000)]);
        let plan = Plan::new(memory.map.clone(), Arch::X86_64);
        let destination = Destination::parse(&image, &UploadArgs::default());
        let manifest_path = destination.local_manifest_path(None);
        let watch = Watch::default();
        let manifest = run(Job {
            source: &mut memory,
            plan,
            format: Format::Lime,
            destination,
            encryption: None,
            manifest_path: manifest_path.clone(),
            origin: origin(),
            inherited_unreadable: Vec::new(),
            inherited_reread: None,
            compression: None,
            sink: SinkOptions {
                overwrite: false,
                hash: Some(pmem_core::HashAlgorithm::Sha256),
                max_disk_usage: None,
            },
            quiet: true,
            memory_hash: true,
            watch: &watch,
            symbols: Some(sample_symbols()),
            symbols_file: None,
            reread: false,
            order: ReadOrder::Address,
        })
        .unwrap();
        // The job is over: nothing is left for a signal to record.
        assert!(watch.with(|watched| watched.is_none()));

        let written = std::fs::read(&image).unwrap();
        assert!(manifest.complete);
        assert_eq!(manifest.format, "lime");
        assert_eq!(manifest.bytes.image, written.len() as u64);
        assert_eq!(
            manifest.image_sha256.as_deref(),
            Some(hex(&Sha256::digest(&written)).as_str())
        );
        let stored = crate::image::read_manifest(&manifest_path.unwrap(), None).unwrap();
        assert!(stored.complete);
        assert_eq!(stored.image_hash, manifest.image_hash);
        assert_eq!(stored.image_sha256, manifest.image_sha256);
        assert_eq!(stored.memory_sha256, manifest.memory_sha256);
        assert_eq!(
            stored.memory_hash.as_ref().map(|h| h.hex.as_str()),
            manifest.memory_sha256.as_deref()
        );
        assert_eq!(stored.ranges, manifest::ranges_json(&memory.map));

        // The image holds the memory, read back at its addresses.
        let mut reader = pmem_formats::open_image(&image, None).unwrap();
        assert_eq!(reader.memory_map(), &memory.map);
        let mut content = Sha256::new();
        for range in memory.map.ranges() {
            let mut buf = vec![0u8; range.len() as usize];
            reader.read_at(range.start, &mut buf).unwrap();
            assert_eq!(buf, memory.bytes[range.start as usize..range.end as usize]);
            content.update(&buf);
        }
        assert_eq!(
            manifest.memory_sha256.as_deref(),
            Some(hex(&content.finalize()).as_str())
        );

        // LiME has no room for the symbols: they lie beside it, as recorded.
        let sidecar = dir.path().join("memory.lime.symbols");
        let record = stored.symbols.expect("the manifest records the symbols");
        assert_eq!(record.carried, "sidecar");
        assert_eq!(record.file.as_deref(), Some(sidecar.to_str().unwrap()));
        let tar = std::fs::read(&sidecar).unwrap();
        assert_eq!(record.sha256, hex(&Sha256::digest(&tar)));
        assert_eq!(tar, sample_symbols().tar);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&sidecar).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "kallsyms addresses are secrets");
        }
    }

    /// A bundle as a capture makes it, with made-up members.
    fn sample_symbols() -> CarriedSymbols {
        let mut bundle = pmem_symbols::bundle::Bundle::default();
        bundle.record.kind = pmem_symbols::bundle::BUNDLE_KIND.into();
        bundle.record.version = pmem_symbols::bundle::BUNDLE_VERSION;
        bundle
            .members
            .insert("kallsyms".into(), b"ffffffff81000000 T _text\n".to_vec());
        CarriedSymbols::from_tar(bundle.into_tar(), "sample").unwrap()
    }
}
