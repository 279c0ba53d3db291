//! `pmem verify`: recompute an image's hashes and compare them, its ranges
//! and its completeness with the manifest written when it was made.

use crate::image;
use crate::manifest;
use anyhow::{Context, Result};
use pmem_core::sink::{hex, ImageDigest};
use pmem_core::{HashAlgorithm, Range};
use pmem_formats::ImageReader;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Manifest to check against (default: IMAGE.json).
    #[arg(long)]
    manifest: Option<PathBuf>,
    #[command(flatten)]
    identity: image::IdentityArgs,
    /// The image file.
    image: PathBuf,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let manifest_path = args
        .manifest
        .clone()
        .unwrap_or_else(|| manifest::default_path(&args.image));
    let identity = args.identity.load()?;
    let manifest = image::read_manifest(&manifest_path, identity.as_ref())?;
    let mut report = Report::default();

    report.check(
        "complete",
        manifest.complete,
        match &manifest.error {
            Some(err) => format!("the acquisition did not finish: {err}"),
            None if manifest.complete => "the manifest records a committed image".into(),
            None => "the manifest does not record a finished image".into(),
        },
    );
    // Opened after the completeness check is shown: an interrupted image
    // may not open at all, and the manifest says why.
    let mut opened = image::open(&args.image, Some(&manifest_path), identity.as_ref())?;
    let format = opened.reader.format().name();
    report.check(
        "format",
        format == manifest.format,
        format!("image is {format}, manifest says {}", manifest.format),
    );
    // Each hash in the algorithm the manifest names (SHA-256 in a
    // schema-1 manifest); one it does not record is shown in BLAKE3.
    let recorded_image = manifest.image_hash();
    let algorithm = report.algorithm("image hash", recorded_image.as_ref());
    // The plaintext of an encrypted image: the manifest's hash is of it.
    let plain = image::plain_reader(&args.image, identity.as_ref())?;
    let (length, image_hash) = hash_file(plain, &args.image, algorithm)?;
    report.check(
        "image length",
        length == manifest.bytes.image,
        format!("{length} bytes, manifest says {}", manifest.bytes.image),
    );
    // An acquisition made with --hash none records none: shown, not compared.
    report.hash(
        &format!("image {algorithm}"),
        &image_hash,
        recorded_image.as_ref().map(|h| h.hex.as_str()),
        "not recorded in the manifest: --hash none",
    );
    if let Some(recorded) = manifest
        .encryption
        .as_ref()
        .and_then(|e| e.ciphertext_hash())
    {
        // The file as stored: the ciphertext.
        let algorithm = report.algorithm("ciphertext hash", Some(&recorded));
        let file = std::fs::File::open(&args.image)
            .with_context(|| format!("opening {}", args.image.display()))?;
        let (_, stored) = hash_file(Box::new(file), &args.image, algorithm)?;
        report.hash(
            &format!("ciphertext {algorithm}"),
            &stored,
            Some(&recorded.hex),
            "",
        );
    }
    let ranges = manifest::ranges_json(opened.reader.memory_map());
    match &opened.ranges_unproven {
        Some(reason) => report.check("ranges", false, reason.clone()),
        None => report.check(
            "ranges",
            ranges == manifest.ranges,
            format!(
                "image holds {} range(s), manifest lists {}",
                ranges.len(),
                manifest.ranges.len()
            ),
        ),
    }
    let (ok, detail) = match check_unreadable(&manifest, opened.reader.memory_map()) {
        Ok(detail) => (true, detail),
        Err(detail) => (false, detail),
    };
    report.check("unreadable pages", ok, detail);
    // Acquisitions record memory_hash only with --memory-hash: compare
    // when recorded, always show it (it identifies the memory whatever the
    // format), in the image hash's algorithm when the memory has none.
    let recorded_memory = manifest.memory_hash();
    let algorithm = match &recorded_memory {
        Some(_) => report.algorithm("memory hash", recorded_memory.as_ref()),
        None => algorithm,
    };
    let memory_hash = hash_memory(opened.reader.as_mut(), algorithm)?;
    report.hash(
        &format!("memory {algorithm}"),
        &memory_hash,
        recorded_memory.as_ref().map(|h| h.hex.as_str()),
        "not recorded in the manifest",
    );
    check_symbols(
        &mut report,
        &manifest,
        &args.image,
        opened.reader.metadata().symbols.as_deref(),
        identity.as_ref(),
    )?;

    let failures = report.failures;
    if failures == 0 {
        println!("verified: {}", args.image.display());
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "pmem: {} does not match {}: {failures} check(s) failed",
            args.image.display(),
            manifest_path.display()
        );
        Ok(ExitCode::FAILURE)
    }
}

/// The checks' lines as they are printed, and how many failed.
#[derive(Default)]
struct Report {
    failures: usize,
}

impl Report {
    fn check(&mut self, name: &str, ok: bool, detail: String) {
        println!("{} {name}: {detail}", if ok { "ok  " } else { "FAIL" });
        if !ok {
            self.failures += 1;
        }
    }

    /// The algorithm of a recorded hash (BLAKE3 when none is recorded); an
    /// algorithm this pmem does not know fails the check named `name`,
    /// and BLAKE3 is shown instead.
    fn algorithm(&mut self, name: &str, recorded: Option<&manifest::HashJson>) -> HashAlgorithm {
        match recorded {
            None => HashAlgorithm::default(),
            Some(hash) => hash.algorithm().unwrap_or_else(|| {
                self.check(
                    name,
                    false,
                    format!(
                        "the manifest's algorithm {:?} is unknown to this pmem",
                        hash.algorithm
                    ),
                );
                HashAlgorithm::default()
            }),
        }
    }

    /// A hash compared with the one the manifest records, or only shown
    /// (with `unrecorded` saying why) when it records none.
    fn hash(&mut self, name: &str, actual: &str, recorded: Option<&str>, unrecorded: &str) {
        match recorded {
            Some(expected) => self.check(
                name,
                actual == expected,
                format!("{actual}, manifest says {expected}"),
            ),
            None => println!("     {name}: {actual} ({unrecorded})"),
        }
    }
}

/// The symbol bundle the manifest records: inside the image, or the
/// sidecar beside it (IMAGE.symbols, else the path the manifest names),
/// hashed and compared. A sidecar that is not there (an image copied
/// without it) is said, not failed: the image itself is what is verified.
fn check_symbols(
    report: &mut Report,
    manifest: &manifest::Manifest,
    image: &Path,
    embedded: Option<&[u8]>,
    identity: Option<&image::Identity>,
) -> Result<()> {
    let Some(record) = &manifest.symbols else {
        return Ok(());
    };
    let bundle = match record.carried.as_str() {
        "image" => embedded.map(<[u8]>::to_vec),
        "sidecar" => {
            let beside = crate::carried_symbols::sidecar_path(image);
            let named = record.file.as_deref().map(PathBuf::from);
            match [Some(beside), named]
                .into_iter()
                .flatten()
                .find(|p| p.is_file())
            {
                Some(path) => Some(image::read_sealed(&path, identity, "the symbols")?),
                None => {
                    println!(
                        "     symbols: {} not found beside the image (not compared)",
                        record.file.as_deref().unwrap_or("the sidecar")
                    );
                    return Ok(());
                }
            }
        }
        other => {
            println!("     symbols: {other} (the manifest records none to compare)");
            return Ok(());
        }
    };
    match bundle {
        Some(bundle) => report.hash(
            "symbols sha256",
            &hex(&Sha256::digest(&bundle)),
            Some(&record.sha256),
            "",
        ),
        None => report.check(
            "symbols sha256",
            false,
            "the manifest says the image carries the symbols; it has none".into(),
        ),
    }
    Ok(())
}

/// The length and hash of what `file` (the image at `path`) reads.
fn hash_file(
    mut file: Box<dyn Read>,
    path: &Path,
    algorithm: HashAlgorithm,
) -> Result<(u64, String)> {
    let mut hasher = ImageDigest::new(algorithm);
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {} at offset {total}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, finish(hasher)))
}

fn finish(digest: ImageDigest) -> String {
    digest.finish().map(|h| h.hex()).unwrap_or_default()
}

/// The hash of the memory content as the image's reader returns it, in
/// the same order as the pipeline hashes it during acquisition.
fn hash_memory(reader: &mut dyn ImageReader, algorithm: HashAlgorithm) -> Result<String> {
    let mut hasher = ImageDigest::new(algorithm);
    let mut buf = vec![0u8; 4 << 20];
    let ranges = reader.memory_map().ranges().to_vec();
    for range in ranges {
        let mut addr = range.start;
        while addr < range.end {
            let len = (range.end - addr).min(buf.len() as u64) as usize;
            reader.read_at(addr, &mut buf[..len])?;
            hasher.update(&buf[..len]);
            addr += len as u64;
        }
    }
    Ok(finish(hasher))
}

/// The manifest's unreadable pages: runs that add up to its count, lie
/// inside the image's ranges and do not overlap.
fn check_unreadable(
    manifest: &manifest::Manifest,
    map: &pmem_core::MemoryMap,
) -> Result<String, String> {
    let mut total = 0u64;
    let mut previous_end = 0u64;
    for run in &manifest.unreadable_pages {
        let start = manifest::parse_hex(&run.start).map_err(|e| format!("{e:#}"))?;
        let range = run
            .pages
            .checked_mul(pmem_core::PAGE_SIZE)
            .and_then(|len| Range::new(start, start.checked_add(len)?))
            .ok_or_else(|| {
                format!(
                    "the run of {} page(s) at {} is empty or passes 2^64",
                    run.pages, run.start
                )
            })?;
        if !map.covers(range.start, range.len()) {
            return Err(format!("{range} is not inside the image's ranges"));
        }
        if range.start < previous_end {
            return Err(format!("{range} overlaps or precedes the run before it"));
        }
        previous_end = range.end;
        total += run.pages;
    }
    if total != manifest.unreadable_page_count {
        return Err(format!(
            "the runs hold {total} page(s), the manifest's count says {}",
            manifest.unreadable_page_count
        ));
    }
    Ok(format!(
        "{total} page(s) in {} run(s), inside the image's ranges",
        manifest.unreadable_pages.len()
    ))
}
