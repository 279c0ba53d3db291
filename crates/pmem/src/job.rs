//! One copy from a source (live memory or an image) into an image format,
//! with progress on stderr and a manifest that is written whatever happens.
//! Shared by `acquire` and `convert`.

use crate::compress::{self, Encoding};
use crate::interrupt::Watched;
use crate::manifest::{self, BytesJson, Manifest, Origin, PageRunJson};
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pmem_core::sink::{create_image_file, hex, HashingSink};
use pmem_core::{
    copy_memory, ByteSink, CopyError, CopyOptions, CopyReport, PhysicalMemory, Plan, WriteError,
};
use pmem_formats::Format;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where image bytes go.
#[derive(Debug, Clone)]
pub enum Output {
    Stdout,
    File(PathBuf),
    /// A network destination (tls://, s3://, https://): see upload.rs.
    Remote(crate::upload::Remote),
}

impl Output {
    pub fn parse(text: &Path) -> Output {
        if text == Path::new("-") {
            Output::Stdout
        } else if let Some(remote) = text.to_str().and_then(crate::upload::Remote::parse) {
            Output::Remote(remote)
        } else {
            Output::File(text.to_owned())
        }
    }

    /// Where this machine keeps the manifest: `explicit` (--manifest), else
    /// IMAGE.json beside a file image; none for stdout, and none for remote
    /// destinations, where the manifest travels with the image.
    pub fn local_manifest_path(&self, explicit: Option<&Path>) -> Option<PathBuf> {
        match (explicit, self) {
            (Some(path), _) => Some(path.to_owned()),
            (None, Output::File(path)) => Some(manifest::default_path(path)),
            (None, Output::Stdout | Output::Remote(_)) => None,
        }
    }

    pub fn display(&self) -> String {
        match self {
            Output::Stdout => "standard output".into(),
            Output::File(p) => p.display().to_string(),
            Output::Remote(r) => r.display(),
        }
    }

    fn open(&self, overwrite: bool, args: &compress::CompressArgs) -> Result<Box<dyn ByteSink>> {
        // --no-hash: the sink hashes nothing; the manifest records no image hash.
        let hashed = |sink: HashingSink| {
            if args.no_hash {
                sink.without_hash()
            } else {
                sink
            }
        };
        match self {
            Output::Stdout => Ok(Box::new(hashed(HashingSink::stdout()))),
            Output::Remote(remote) => remote.open(),
            Output::File(path) => {
                let file = create_image_file(path, overwrite).with_context(|| {
                    if path.exists() && !overwrite {
                        format!(
                            "{} already exists: choose another name or pass --force",
                            path.display()
                        )
                    } else {
                        format!("creating image {}", path.display())
                    }
                })?;
                let sink = hashed(HashingSink::for_file(file)?);
                Ok(Box::new(match args.max_disk_usage {
                    Some(limit) => sink.with_limit(limit).with_context(|| {
                        format!("checking free space before writing {}", path.display())
                    })?,
                    None => sink,
                }))
            }
        }
    }
}

pub struct Job<'a> {
    pub source: &'a mut dyn PhysicalMemory,
    pub plan: Plan,
    pub format: Format,
    pub output: Output,
    /// Where to write the manifest; `None` writes none (stdout without --manifest).
    pub manifest_path: Option<PathBuf>,
    pub origin: Origin,
    /// Unreadable pages known from an earlier step (an input image's manifest).
    pub inherited_unreadable: Vec<PageRunJson>,
    pub overwrite: bool,
    pub quiet: bool,
    pub compress: compress::CompressArgs,
    /// Also compute memory_sha256 (the format-independent hash of the
    /// memory content): a second hash pass.
    pub memory_hash: bool,
}

/// Copies, commits, writes the manifest. Returns the manifest of a complete
/// image, or an error after writing a manifest that says what went wrong.
pub fn run(job: Job<'_>) -> Result<Manifest> {
    let started = Instant::now();
    let mut encoding = compress::resolve(job.format, job.compress.compress)?;
    let image_path = match &job.output {
        Output::File(path) => Some(path.clone()),
        Output::Stdout | Output::Remote(_) => None,
    };
    check_before_writing(&job, encoding.format, image_path.as_deref())?;
    let mut manifest = Manifest {
        origin: job.origin,
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
        image_sha256: None,
        memory_sha256: None,
        finished_at: None,
        seconds: None,
        compression: encoding.compression(),
        warnings: Vec::new(),
        encryption: None,
    };
    crate::upload::annotate(&mut manifest);
    // A manifest that cannot be written should stop us before we write
    // gigabytes: create it first, replace it at the end. From here on a
    // signal is recorded in it.
    crate::interrupt::with(|watched| -> Result<()> {
        if let Some(path) = &job.manifest_path {
            manifest::write(path, &manifest, job.overwrite)?;
        }
        *watched = Some(Watched {
            manifest: manifest.clone(),
            manifest_path: job.manifest_path.clone(),
            image: image_path.clone(),
            started,
        });
        Ok(())
    })?;

    let progress = progress_bar(job.plan.ranges.total_bytes(), job.quiet);
    let options = CopyOptions {
        memory_hash: job.memory_hash,
        ..CopyOptions::default()
    };
    let args = &job.compress;
    let mut tracker = Tracker::default();
    let mut result = copy_once(
        job.source,
        &job.plan,
        &job.output,
        encoding,
        job.overwrite,
        &progress,
        &mut tracker,
        &options,
        args,
    );
    if let (Format::Avml, Some(err)) = (encoding.format, unrepresentable(&result)) {
        // AVML blocks of incompressible memory would hang Volatility 3:
        // start again in plain LiME, on a file. Memory is read again.
        let warning = format!("{err}; wrote plain (uncompressed) LiME instead");
        if let Output::File(_) = job.output {
            eprintln!("pmem: warning: {warning}");
            manifest.warnings.push(warning);
            encoding = Encoding::plain(Format::Lime);
            manifest.format = encoding.format.name().to_string();
            manifest.compression = None;
            crate::interrupt::with(|watched| {
                if let Some(w) = watched {
                    w.manifest = manifest.clone();
                }
            });
            progress.set_position(0);
            // The file is ours: created by this run.
            result = copy_once(
                job.source,
                &job.plan,
                &job.output,
                encoding,
                true,
                &progress,
                &mut tracker,
                &options,
                args,
            );
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
            crate::interrupt::with(|watched| {
                *watched = None;
                if let (Some(path), true) = (&image_path, tracker.image_created) {
                    let _ = std::fs::remove_file(path);
                }
                if let Some(path) = &job.manifest_path {
                    let _ = std::fs::remove_file(path);
                }
            });
            anyhow::bail!(
                "{} (nothing was written: no image, no manifest)",
                crate::error_text(&err)
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
            manifest.image_sha256 = (!args.no_hash).then(|| hex(&report.image.sha256));
            manifest.memory_sha256 = report.memory_sha256.as_ref().map(|h| hex(h));
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
        manifest.error = Some(crate::error_text(err));
    }
    manifest.unreadable_page_count = manifest.unreadable_pages.iter().map(|r| r.pages).sum();
    crate::upload::annotate(&mut manifest);
    let recorded = crate::interrupt::with(|watched| -> Result<()> {
        *watched = None;
        if let Some(path) = &job.manifest_path {
            manifest::write(path, &manifest, true)?;
        }
        Ok(())
    });
    match (recorded, &outcome) {
        (Ok(()), _) => {}
        (Err(failed), Ok(())) => return Err(failed),
        // Both failed (a full disk, say): the copy's error comes first.
        (Err(failed), Err(err)) => anyhow::bail!(
            "{}; and the manifest could not say so: {}",
            crate::error_text(err),
            crate::error_text(&failed)
        ),
    }
    if outcome.is_ok() {
        crate::upload::send_manifest(&job.output, &manifest)?;
    }
    outcome.map(|()| manifest)
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
fn check_before_writing(job: &Job<'_>, format: Format, image: Option<&Path>) -> Result<()> {
    if !job.overwrite {
        for path in image.iter().chain(job.manifest_path.as_deref().iter()) {
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

/// One copy of the job's source into a fresh output.
#[allow(clippy::too_many_arguments)]
fn copy_once(
    source: &mut dyn PhysicalMemory,
    plan: &Plan,
    output: &Output,
    encoding: Encoding,
    overwrite: bool,
    progress: &ProgressBar,
    tracker: &mut Tracker,
    options: &CopyOptions,
    args: &compress::CompressArgs,
) -> Result<CopyReport> {
    crate::upload::declare_size(encoding.format, encoding.zstd, plan);
    let sink = output.open(overwrite, args)?;
    tracker.image_created = true;
    let writer = encoding.writer(crate::upload::wrap(sink)?);
    copy_memory(source, writer, plan, options, &mut |done| {
        tracker.bytes_read = tracker.bytes_read.max(done);
        progress.set_position(done)
    })
    .with_context(|| format!("writing {} image {}", encoding.format, output.display()))
}

/// The message of a copy that failed because the format cannot hold the memory.
fn unrepresentable(result: &Result<CopyReport>) -> Option<String> {
    let err = result.as_ref().err()?;
    match err.downcast_ref::<CopyError>() {
        Some(CopyError::Write(WriteError::Unrepresentable { .. })) => Some(crate::error_text(err)),
        _ => None,
    }
}

fn progress_bar(total: u64, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
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
pub fn summary_line(manifest: &Manifest, output: &Output) -> String {
    let mib = manifest.bytes.memory as f64 / (1 << 20) as f64;
    let secs = manifest.seconds.unwrap_or(0.0);
    let mut line = format!(
        "pmem: wrote {:.1} MiB of memory in {} range(s) to {} ({} bytes, {:.1} s, {:.0} MiB/s), sha256 {}",
        mib,
        manifest.ranges.len(),
        output.display(),
        manifest.bytes.image,
        secs,
        if secs > 0.0 { mib / secs } else { 0.0 },
        manifest.image_sha256.as_deref().unwrap_or("-"),
    );
    if manifest.unreadable_page_count > 0 {
        line.push_str(&format!(
            "\npmem: warning: {} page(s) could not be read and were written as zeros (listed in the manifest)",
            manifest.unreadable_page_count
        ));
    }
    line
}
