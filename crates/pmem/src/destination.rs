//! Where a job's image, manifest and symbols sidecar go: a file, standard
//! output, or a network destination (`tls://`, `s3://`, an Azure SAS URL, a
//! pre-signed `https://` PUT), parsed once from OUTPUT and the upload
//! options; and the age encryption (`--encrypt-to`) around it. Both are
//! values the job carries (job.rs). Opening a destination takes the
//! image's planned length, and the sink it returns is reached only through
//! [`OpenedSink::into_sink`], which applies the encryption: the order a
//! pre-signed PUT depends on (length known, then encryption, then bytes)
//! is the order the types allow.
//!
//! This lives in the CLI crate, not in pmem-upload: it is made of the
//! command line's options (`--force`, `--max-disk-usage`, `--hash`, the
//! clap `UploadArgs`), speaks in them in its messages, and opens local files
//! and standard output too; pmem-upload stays a library of sinks that knows
//! nothing of the command line or of the manifest's schema.

use crate::compress::Encoding;
use crate::manifest::{self, EncryptionJson, Manifest};
use anyhow::{Context, Result};
use pmem_core::sink::{create_image_file, DiskLimit, HashingSink};
use pmem_core::{ByteSink, HashAlgorithm, Plan};
use pmem_upload::encrypt::{CiphertextSlot, EncryptSink, Recipients};
use pmem_upload::remote::RemoteSink;
use pmem_upload::tls::{Follows, Kind, Trust};
use pmem_upload::Companion;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Options shared by `acquire` and `convert`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct UploadArgs {
    /// Encrypt the image and the manifest with age to this X25519 public key
    /// (age1...) before they leave pmem; repeat for several recipients.
    /// `age -d` or `pmem decrypt` restores them.
    #[arg(long = "encrypt-to", value_name = "RECIPIENT")]
    pub encrypt_to: Vec<String>,
    /// tls:// destinations: the SHA-256 fingerprint (hex, colons allowed) of
    /// the receiver's certificate, trusted whoever issued it.
    #[arg(long, value_name = "HEX")]
    pub tls_fingerprint: Option<String>,
    /// tls:// destinations: a PEM file of CA certificates to verify the
    /// receiver's certificate against (it must name the host).
    #[arg(long, value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// s3:// destinations: an S3-compatible endpoint, http(s)://HOST[:PORT]
    /// (path-style). Default: AWS_ENDPOINT_URL, else AWS in AWS_REGION.
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// Upload part size in MiB (s3://; at least 5). Memory held for the
    /// upload is (--parallel + 1) x part size.
    #[arg(long, value_name = "MIB", default_value_t = 16)]
    pub part_size: usize,
    /// Parts uploaded at the same time.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub parallel: usize,
    /// Seconds a network read or write may stall before the request is
    /// retried (then the upload fails).
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub net_timeout: u64,
    /// Pre-signed https:// PUT destinations: a second pre-signed PUT URL
    /// that receives the manifest (a pre-signed URL covers one object).
    #[arg(long, value_name = "URL")]
    pub manifest_url: Option<String>,
    /// Pre-signed https:// PUT destinations: a pre-signed PUT URL that
    /// receives the kernel's symbols (IMAGE.symbols) when the image format
    /// has no room for them (lime, raw, avml...).
    #[arg(long, value_name = "URL")]
    pub symbols_url: Option<String>,
}

impl UploadArgs {
    /// The pre-signed PUT URL given for `companion`.
    fn put_url(&self, companion: Companion) -> Option<&str> {
        match companion {
            Companion::Manifest => self.manifest_url.as_deref(),
            Companion::Symbols => self.symbols_url.as_deref(),
        }
    }
}

/// The options about `companion`: the one that gives it a pre-signed PUT
/// URL of its own, and the one that keeps it on this machine.
fn options_for(companion: Companion) -> (&'static str, &'static str) {
    match companion {
        Companion::Manifest => ("--manifest-url", "--manifest"),
        Companion::Symbols => ("--symbols-url", "--symbols-file"),
    }
}

/// Says that a pre-signed PUT leaves `companion` behind, and how to keep it.
fn note_not_uploaded(companion: Companion) {
    let (url_option, keep_option) = options_for(companion);
    let (is, it) = match companion {
        Companion::Manifest => ("is", "it"),
        Companion::Symbols => ("are", "them"),
    };
    eprintln!(
        "pmem: note: a pre-signed URL covers one object: {} {is} not uploaded \
         (give {url_option} URL for {it}, or keep {it} with {keep_option} PATH)",
        companion.description()
    );
}

/// Where image bytes go.
#[derive(Debug, Clone)]
pub enum Destination {
    Stdout,
    File(PathBuf),
    /// `tls://HOST:PORT`: a stream to `pmem receive`.
    Tls(Remote),
    /// `s3://BUCKET/KEY`: a multipart upload.
    S3(Remote),
    /// An `http(s)://` URL with a SAS token (`sig=`): Azure Blob.
    Azure(Remote),
    /// Any other `http(s)://` URL: one PUT of the whole image.
    PresignedPut(Remote),
}

/// A network destination's URL and the options that apply to it.
#[derive(Debug, Clone)]
pub struct Remote {
    url: String,
    options: UploadArgs,
}

/// How the job's file or stream sink is made.
#[derive(Debug, Clone, Copy)]
pub struct SinkOptions {
    /// Replace an existing image file (--force, or a file this run made).
    pub overwrite: bool,
    /// How to hash what is written (`None` with --hash none: the manifest
    /// then records no image hash). Also the algorithm of the ciphertext's
    /// hash and of a tls:// stream's trailers (BLAKE3 there when `None`).
    pub hash: Option<HashAlgorithm>,
    pub max_disk_usage: Option<DiskLimit>,
}

/// The exact length of the image about to be written, or what makes it
/// unknown up front (a pre-signed PUT must declare it before the first byte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageLength {
    Known(u64),
    /// Depends on the content: says what image it is (e.g. "lime --compress zstd").
    Unknown(String),
}

impl ImageLength {
    /// What `encoding`'s writer produces for `plan`.
    pub fn planned(encoding: &Encoding, plan: &Plan) -> ImageLength {
        let format = encoding.format;
        if encoding.zstd {
            return ImageLength::Unknown(format!("{format} --compress zstd"));
        }
        match pmem_formats::image_size(format, plan) {
            Ok(Some(size)) => ImageLength::Known(size),
            Ok(None) => ImageLength::Unknown(format!("{format} (compressed)")),
            // The writer refuses the plan itself; it says why when it runs.
            Err(err) => ImageLength::Unknown(format!("{format} ({err})")),
        }
    }
}

impl Destination {
    /// Reads OUTPUT: `-`, a URL of a network destination, or a file name.
    pub fn parse(output: &Path, options: &UploadArgs) -> Destination {
        if output == Path::new("-") {
            return Destination::Stdout;
        }
        const SCHEMES: [&str; 4] = ["tls://", "s3://", "https://", "http://"];
        let url = match output.to_str() {
            Some(url) if SCHEMES.iter().any(|s| url.starts_with(s)) => url,
            _ => return Destination::File(output.to_owned()),
        };
        let remote = Remote {
            url: url.to_string(),
            options: options.clone(),
        };
        if pmem_upload::azure::is_sas_url(url) {
            Destination::Azure(remote)
        } else if url.starts_with("http") {
            Destination::PresignedPut(remote)
        } else if url.starts_with("s3://") {
            Destination::S3(remote)
        } else {
            Destination::Tls(remote)
        }
    }

    fn remote(&self) -> Option<&Remote> {
        match self {
            Destination::Stdout | Destination::File(_) => None,
            Destination::Tls(r)
            | Destination::S3(r)
            | Destination::Azure(r)
            | Destination::PresignedPut(r) => Some(r),
        }
    }

    /// The image file, for a file destination.
    pub fn file(&self) -> Option<&Path> {
        match self {
            Destination::File(path) => Some(path),
            _ => None,
        }
    }

    /// Whether the manifest (and the symbols sidecar) travel to the
    /// destination with the image.
    pub fn is_remote(&self) -> bool {
        self.remote().is_some()
    }

    /// Where this machine keeps the manifest: `explicit` (--manifest), else
    /// IMAGE.json beside a file image; none for stdout, and none for remote
    /// destinations, where the manifest travels with the image.
    pub fn local_manifest_path(&self, explicit: Option<&Path>) -> Option<PathBuf> {
        match (explicit, self) {
            (Some(path), _) => Some(path.to_owned()),
            (None, Destination::File(path)) => Some(manifest::default_path(path)),
            (None, _) => None,
        }
    }

    /// For messages: the file name, or the URL without secrets.
    pub fn display(&self) -> String {
        match self {
            Destination::Stdout => "standard output".into(),
            Destination::File(p) => p.display().to_string(),
            Destination::Tls(r)
            | Destination::S3(r)
            | Destination::Azure(r)
            | Destination::PresignedPut(r) => r.display(),
        }
    }

    /// Creates the file, or connects, for an image of `planned_len`.
    pub fn open(&self, options: &SinkOptions, planned_len: &ImageLength) -> Result<OpenedSink> {
        let sink: Box<dyn ByteSink> = match self {
            Destination::Stdout => Box::new(hashed(HashingSink::stdout(), options)),
            Destination::File(path) => Box::new(open_file(path, options)?),
            Destination::Azure(remote) => {
                let upload = pmem_upload::azure::start(remote.azure_config())?;
                Box::new(RemoteSink::new(Box::new(upload), options.hash))
            }
            Destination::PresignedPut(remote) => return remote.open_put(planned_len, options),
            Destination::S3(remote) => {
                let config = remote.s3_config()?;
                anyhow::ensure!(
                    config.part_size >= pmem_upload::s3::MIN_PART,
                    "--part-size must be at least 5 (MiB): S3's smallest part"
                );
                let upload = pmem_upload::s3::start(config)?;
                Box::new(RemoteSink::new(Box::new(upload), options.hash))
            }
            Destination::Tls(remote) => {
                let sender = pmem_upload::tls::TlsSender::connect(
                    remote.tls_address(),
                    &remote.tls_trust()?,
                    Kind::Image,
                    Follows::More,
                    options.hash.unwrap_or_default(),
                )
                .with_context(|| format!("connecting to {}", remote.display()))?;
                Box::new(RemoteSink::new(Box::new(sender), options.hash))
            }
        };
        Ok(OpenedSink { sink, length: None })
    }

    /// Sends the manifest (`sealed`: as [`manifest_bytes`] makes it) after
    /// the image and the symbols: S3 `KEY.json`, Azure `BLOB.json`,
    /// `--manifest-url`, or the last object on a `tls://` stream. Nothing
    /// for a file or standard output.
    /// `hash`: the job's algorithm, which a `tls://` trailer uses.
    pub fn send_manifest(&self, sealed: &[u8], hash: Option<HashAlgorithm>) -> Result<()> {
        self.send_beside(Companion::Manifest, sealed, hash)
    }

    /// Sends the symbols sidecar (`sealed`: the bundle's tar, encrypted by
    /// the caller when the image is) beside the image: S3 `KEY.symbols`,
    /// Azure `BLOB.symbols`, `--symbols-url`, or an object of kind `'S'`
    /// on a `tls://` stream, which `pmem receive` stores at OUT.symbols.
    /// Nothing for a file or standard output: the caller writes those
    /// sidecars itself.
    ///
    /// Call it once, after the image is complete and before
    /// [`send_manifest`](Self::send_manifest). On `tls://` the symbols
    /// tell the receiver that another object follows and only the
    /// manifest ends the acquisition: sent without the manifest, they
    /// leave the receiver waiting for it (with the image and the symbols
    /// complete on disk), as an image whose manifest never comes does.
    /// Elsewhere each object stands alone, and the order only keeps the
    /// manifest, which records the symbols' SHA-256, the last to appear.
    pub fn send_symbols(&self, sealed: &[u8], hash: Option<HashAlgorithm>) -> Result<()> {
        self.send_beside(Companion::Symbols, sealed, hash)
    }

    /// Where [`send_symbols`](Self::send_symbols) puts the symbols, for
    /// the manifest (no secrets); `None` where they are not uploaded: a
    /// file or standard output, a pre-signed PUT without --symbols-url.
    pub fn symbols_beside(&self) -> Option<String> {
        let suffix = Companion::Symbols.suffix();
        match self {
            Destination::Stdout | Destination::File(_) => None,
            Destination::S3(remote) => Some(format!("{}{suffix}", remote.display())),
            Destination::Azure(remote) => {
                let shown = remote.display();
                let blob = shown
                    .split_once('?')
                    .map_or(shown.as_str(), |(blob, _)| blob);
                Some(format!("{blob}{suffix}"))
            }
            Destination::Tls(remote) => Some(format!(
                "{} (the receiver's OUTPUT{suffix})",
                remote.display()
            )),
            Destination::PresignedPut(remote) => remote
                .options
                .put_url(Companion::Symbols)
                .map(pmem_upload::redact),
        }
    }

    /// Stores `companion` next to the image, named after it.
    fn send_beside(
        &self,
        companion: Companion,
        sealed: &[u8],
        hash: Option<HashAlgorithm>,
    ) -> Result<()> {
        let what = companion.description();
        match self {
            Destination::Stdout | Destination::File(_) => Ok(()),
            Destination::S3(remote) => Ok(pmem_upload::s3::put_beside(
                remote.s3_config()?,
                companion,
                sealed,
            )?),
            Destination::Azure(remote) => {
                // A SAS scoped to the image's blob cannot write a sibling
                // blob; the image is complete anyway. The manifest cannot
                // record its own failure: a warning here says it. The
                // symbols' failure goes back to the caller, which keeps
                // the acquisition and records the failure in the manifest
                // (job.rs), so the manifest never names a missing blob.
                let sent =
                    pmem_upload::azure::put_beside(&remote.azure_config(), companion, sealed);
                let hint = format!(
                    "use a container SAS or keep {what} with {} PATH",
                    options_for(companion).1
                );
                match (sent, companion) {
                    (Ok(()), _) => Ok(()),
                    (Err(err), Companion::Manifest) => {
                        eprintln!(
                            "pmem: warning: could not upload {what} beside {} ({err}); {hint}",
                            remote.display()
                        );
                        Ok(())
                    }
                    (Err(err), Companion::Symbols) => Err(anyhow::Error::new(err).context(
                        format!("uploading {what} beside {} ({hint})", remote.display()),
                    )),
                }
            }
            Destination::PresignedPut(remote) => match remote.options.put_url(companion) {
                Some(url) => remote.put_beside(url, companion, sealed),
                None => {
                    // The manifest's note came when the image started
                    // (open_put); the symbols' comes only when there are
                    // symbols to send.
                    if companion == Companion::Symbols {
                        note_not_uploaded(companion);
                    }
                    Ok(())
                }
            },
            Destination::Tls(remote) => {
                // The manifest closes the acquisition (pmem_upload::tls).
                let follows = match companion {
                    Companion::Manifest => Follows::Nothing,
                    Companion::Symbols => Follows::More,
                };
                pmem_upload::tls::TlsSender::connect(
                    remote.tls_address(),
                    &remote.tls_trust()?,
                    Kind::from(companion),
                    follows,
                    hash.unwrap_or_default(),
                )
                .and_then(|s| s.send_all(sealed))
                .with_context(|| format!("sending {what} to {}", remote.display()))
            }
        }
    }
}

/// --hash: the sink's algorithm (none: it hashes nothing, and the
/// manifest records no image hash).
fn hashed(sink: HashingSink, options: &SinkOptions) -> HashingSink {
    sink.with_hash(options.hash)
}

fn open_file(path: &Path, options: &SinkOptions) -> Result<HashingSink> {
    let file = create_image_file(path, options.overwrite).with_context(|| {
        if path.exists() && !options.overwrite {
            format!(
                "{} already exists: choose another name or pass --force",
                path.display()
            )
        } else {
            format!("creating image {}", path.display())
        }
    })?;
    let sink = hashed(HashingSink::for_file(file)?, options);
    Ok(match options.max_disk_usage {
        Some(limit) => sink
            .with_limit(limit)
            .with_context(|| format!("checking free space before writing {}", path.display()))?,
        None => sink,
    })
}

impl Remote {
    /// The URL without secrets, for messages and the manifest.
    pub fn display(&self) -> String {
        pmem_upload::redact(&self.url)
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.options.net_timeout.max(1))
    }

    fn tls_address(&self) -> &str {
        self.url
            .strip_prefix("tls://")
            .unwrap_or(&self.url)
            .trim_end_matches('/')
    }

    fn tls_trust(&self) -> Result<Trust> {
        match (&self.options.tls_fingerprint, &self.options.tls_ca) {
            (Some(fp), None) => Ok(Trust::Fingerprint(
                pmem_upload::tls::parse_fingerprint(fp).context("--tls-fingerprint")?,
            )),
            (None, Some(ca)) => Ok(Trust::CaFile(ca.clone())),
            (Some(_), Some(_)) => anyhow::bail!("give --tls-fingerprint or --tls-ca, not both"),
            (None, None) => anyhow::bail!(
                "{}: pass --tls-fingerprint HEX (pmem receive prints it) or --tls-ca FILE",
                self.display()
            ),
        }
    }

    fn s3_config(&self) -> Result<pmem_upload::s3::S3Config> {
        let (bucket, key) = pmem_upload::s3::parse_url(&self.url)?;
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Ok(pmem_upload::s3::S3Config {
            bucket,
            key,
            endpoint: self
                .options
                .endpoint
                .clone()
                .or_else(|| env("AWS_ENDPOINT_URL_S3"))
                .or_else(|| env("AWS_ENDPOINT_URL")),
            region: env("AWS_REGION")
                .or_else(|| env("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|| "us-east-1".into()),
            credentials: pmem_upload::s3::credentials_from_env()?,
            part_size: self.options.part_size.saturating_mul(1 << 20),
            workers: self.options.parallel,
            ca_file: self.options.tls_ca.clone(),
            retry: Default::default(),
            timeout: self.timeout(),
        })
    }

    fn azure_config(&self) -> pmem_upload::azure::AzureConfig {
        pmem_upload::azure::AzureConfig {
            url: self.url.clone(),
            block_size: self.options.part_size.saturating_mul(1 << 20),
            workers: self.options.parallel,
            ca_file: self.options.tls_ca.clone(),
            retry: Default::default(),
            timeout: self.timeout(),
        }
    }

    fn put_config(&self, url: &str) -> pmem_upload::put::PutConfig {
        pmem_upload::put::PutConfig {
            url: url.to_string(),
            ca_file: self.options.tls_ca.clone(),
            timeout: self.timeout(),
        }
    }

    /// A pre-signed PUT URL: one request whose Content-Length is the exact
    /// image length (plus age's overhead when encrypting, which
    /// [`OpenedSink::into_sink`] adds).
    fn open_put(&self, planned_len: &ImageLength, options: &SinkOptions) -> Result<OpenedSink> {
        let plaintext = match planned_len {
            ImageLength::Known(size) => *size,
            ImageLength::Unknown(what) => anyhow::bail!(
                "{}: a pre-signed URL takes one PUT whose Content-Length must be known \
                 before the first byte, and the length of a {what} image is not known \
                 until it is written: use s3://BUCKET/KEY (multipart upload, any length) \
                 or an uncompressed format (lime, raw, elf, dmp, macho)",
                self.display()
            ),
        };
        let (put, cell) = pmem_upload::put::PutUpload::new(self.put_config(&self.url))?;
        // Refused URLs are said before any memory is read.
        for companion in [Companion::Manifest, Companion::Symbols] {
            if let Some(url) = self.options.put_url(companion) {
                pmem_upload::put::check_scheme(url).context(options_for(companion).0)?;
            }
        }
        if self.options.manifest_url.is_none() {
            note_not_uploaded(Companion::Manifest);
        }
        Ok(OpenedSink {
            sink: Box::new(RemoteSink::new(Box::new(put), options.hash)),
            length: Some(DeclaredLength { cell, plaintext }),
        })
    }

    /// The manifest or the symbols as a pre-signed PUT of their own
    /// (--manifest-url, --symbols-url).
    fn put_beside(&self, url: &str, companion: Companion, sealed: &[u8]) -> Result<()> {
        let config = self.put_config(url);
        pmem_upload::retry::with_retries(&Default::default(), &|| false, || {
            let (mut put, length) = pmem_upload::put::PutUpload::new(config.clone())?;
            let _ = length.set(sealed.len() as u64);
            pmem_upload::remote::Upload::write(&mut put, sealed)?;
            pmem_upload::remote::Upload::finish(
                Box::new(put),
                &pmem_core::SinkSummary {
                    bytes: sealed.len() as u64,
                    hash: None,
                },
            )
        })
        .with_context(|| {
            format!(
                "uploading {} to {}",
                companion.description(),
                pmem_upload::redact(url)
            )
        })
    }
}

/// A pre-signed PUT's Content-Length cell and the plaintext image length,
/// until the encryption (or its absence) is known.
struct DeclaredLength {
    cell: Arc<OnceLock<u64>>,
    plaintext: u64,
}

/// A destination opened and not yet written to.
pub struct OpenedSink {
    sink: Box<dyn ByteSink>,
    length: Option<DeclaredLength>,
}

impl OpenedSink {
    /// The sink the image is written to: the destination's, encrypted when
    /// `encryption` is given (which then holds this sink's ciphertext
    /// summary for the manifest). A pre-signed PUT learns its length here:
    /// with encryption it depends on the age header just written.
    /// `hash`: the plaintext's algorithm (the ciphertext's is the sink's).
    pub fn into_sink(
        self,
        encryption: Option<&mut Encryption>,
        hash: Option<HashAlgorithm>,
    ) -> Result<Box<dyn ByteSink>> {
        let Some(encryption) = encryption else {
            if let Some(length) = self.length {
                let _ = length.cell.set(length.plaintext);
            }
            return Ok(self.sink);
        };
        let (sink, slot) = EncryptSink::new(self.sink, &encryption.recipients, hash)
            .context("starting age encryption")?;
        if let Some(length) = self.length {
            let _ = length.cell.set(sink.ciphertext_len(length.plaintext));
        }
        encryption.ciphertext = Some(slot);
        Ok(Box::new(sink))
    }
}

/// `--encrypt-to`: the recipients the image and its manifest are encrypted
/// to, and the summary of the image's ciphertext once it is written.
#[derive(Clone)]
pub struct Encryption {
    recipients: Recipients,
    ciphertext: Option<CiphertextSlot>,
}

impl Encryption {
    /// `None` when no recipient is given.
    pub fn parse(options: &UploadArgs) -> Result<Option<Encryption>> {
        if options.encrypt_to.is_empty() {
            return Ok(None);
        }
        let recipients = Recipients::parse(&options.encrypt_to).context("--encrypt-to")?;
        Ok(Some(Encryption {
            recipients,
            ciphertext: None,
        }))
    }

    /// The manifest's record of encryption.
    pub fn record(&self) -> EncryptionJson {
        let ciphertext = self
            .ciphertext
            .as_ref()
            .and_then(|slot| slot.lock().ok()?.clone());
        let mut record = EncryptionJson {
            scheme: "age".into(),
            recipients: self.recipients.to_strings(),
            ciphertext_bytes: ciphertext.as_ref().map(|c| c.bytes),
            ciphertext_hash: None,
            ciphertext_sha256: None,
        };
        record.set_ciphertext_hash(ciphertext.and_then(|c| c.hash));
        record
    }
}

/// The manifest's bytes as they are stored or sent: JSON, encrypted to the
/// recipients when there are some.
pub fn manifest_bytes(manifest: &Manifest, encryption: Option<&Encryption>) -> Result<Vec<u8>> {
    seal(manifest::to_json(manifest)?, encryption, "the manifest")
}

/// A small file that travels with the image (`what`: the manifest, the
/// symbols), encrypted to the recipients when there are some.
pub fn seal(bytes: Vec<u8>, encryption: Option<&Encryption>, what: &str) -> Result<Vec<u8>> {
    match encryption {
        Some(encryption) => Ok(encryption
            .recipients
            .encrypt_bytes(&bytes)
            .with_context(|| format!("encrypting {what}"))?),
        None => Ok(bytes),
    }
}

#[cfg(test)]
#[path = "../tests/common/pki.rs"]
mod test_pki;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names_parse_to_their_destination() {
        let options = UploadArgs::default();
        let parse = |text: &str| Destination::parse(Path::new(text), &options);
        assert!(matches!(parse("-"), Destination::Stdout));
        assert!(matches!(parse("img.lime"), Destination::File(_)));
        assert!(matches!(parse("tls://host:4433"), Destination::Tls(_)));
        assert!(matches!(parse("s3://bucket/key"), Destination::S3(_)));
        assert!(matches!(
            parse("https://a.blob.core.windows.net/c/img?sv=1&sig=x"),
            Destination::Azure(_)
        ));
        assert!(matches!(
            parse("https://example.com/img?X-Amz-Signature=1"),
            Destination::PresignedPut(_)
        ));
        assert_eq!(parse("tls://host:4433/").display(), "tls://host:4433/");
    }

    #[test]
    fn a_presigned_put_refuses_an_image_of_unknown_length() {
        let options = UploadArgs::default();
        let destination = Destination::parse(Path::new("https://example.com/img"), &options);
        let sink_options = SinkOptions {
            overwrite: false,
            hash: Some(HashAlgorithm::Blake3),
            max_disk_usage: None,
        };
        let err = destination
            .open(
                &sink_options,
                &ImageLength::Unknown("lime --compress zstd".into()),
            )
            .err()
            .expect("refused");
        assert!(err.to_string().contains("Content-Length"), "{err}");
    }

    fn sink_options() -> SinkOptions {
        SinkOptions {
            overwrite: false,
            hash: Some(HashAlgorithm::Blake3),
            max_disk_usage: None,
        }
    }

    #[test]
    fn a_symbols_url_is_checked_before_the_image_starts() {
        let options = UploadArgs {
            symbols_url: Some("http://example.com/img.symbols?sig=SECRET".into()),
            ..UploadArgs::default()
        };
        let destination = Destination::parse(Path::new("https://example.com/img"), &options);
        let err = destination
            .open(&sink_options(), &ImageLength::Known(4096))
            .err()
            .expect("plain http to another host is refused");
        let text = format!("{err:#}");
        assert!(text.starts_with("--symbols-url"), "{text}");
        assert!(!text.contains("SECRET"), "{text}");
    }

    #[test]
    fn local_destinations_send_no_symbols() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("img.lime");
        let options = UploadArgs::default();
        for destination in [Destination::Stdout, Destination::parse(&image, &options)] {
            destination.send_symbols(b"tar", None).unwrap();
        }
        // The caller writes the local sidecar; this writes nothing.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_presigned_put_without_a_symbols_url_keeps_going() {
        let options = UploadArgs::default();
        let destination = Destination::parse(Path::new("https://example.com/img"), &options);
        // Nothing is sent (example.com is never contacted): a note only.
        destination.send_symbols(b"tar", None).unwrap();
    }

    /// The image, the symbols and the manifest through `Destination` to
    /// `pmem_upload::tls::serve` on 127.0.0.1: each lands at its own name
    /// and the receiver stops after the manifest.
    #[test]
    fn tls_sends_the_symbols_between_the_image_and_the_manifest() {
        use pmem_upload::tls::Received;
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = super::test_pki::pki(dir.path());
        let config = pmem_upload::tls::server_config(&cert, &key).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let out = dir.path().join("received.lime");
        let serving = {
            let out = out.clone();
            std::thread::spawn(move || {
                pmem_upload::tls::serve(&listener, config, &out, false, |_| {})
            })
        };
        let options = UploadArgs {
            tls_ca: Some(ca),
            ..UploadArgs::default()
        };
        let destination =
            Destination::parse(Path::new(&format!("tls://127.0.0.1:{port}")), &options);
        let image: Vec<u8> = (0..3_000_000u32).map(|i| (i >> 3) as u8).collect();
        let symbols: Vec<u8> = (0..70_000u32).map(|i| (i % 253) as u8).collect();
        let mut sink = destination
            .open(&sink_options(), &ImageLength::Known(image.len() as u64))
            .unwrap()
            .into_sink(None, Some(HashAlgorithm::Blake3))
            .unwrap();
        sink.write_all(&image).unwrap();
        sink.finish().unwrap();
        destination.send_symbols(&symbols, None).unwrap();
        destination
            .send_manifest(b"{}", Some(HashAlgorithm::Sha256))
            .unwrap();

        let received: Vec<Received> = serving.join().unwrap().unwrap();
        let kinds: Vec<Kind> = received.iter().map(|r| r.kind).collect();
        assert_eq!(kinds, [Kind::Image, Kind::Symbols, Kind::Manifest]);
        // The trailers' algorithms: the job's, BLAKE3 when it has none.
        let algorithms: Vec<HashAlgorithm> = received.iter().map(|r| r.hash.algorithm).collect();
        assert_eq!(
            algorithms,
            [
                HashAlgorithm::Blake3,
                HashAlgorithm::Blake3,
                HashAlgorithm::Sha256
            ]
        );
        let beside = |suffix: &str| {
            let mut name = out.as_os_str().to_owned();
            name.push(suffix);
            std::fs::read(PathBuf::from(name)).unwrap()
        };
        assert_eq!(std::fs::read(&out).unwrap(), image);
        assert_eq!(beside(".symbols"), symbols);
        assert_eq!(beside(".json"), b"{}");
    }
}
