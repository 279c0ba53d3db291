//! Glue between the CLI and pmem-upload: `--encrypt-to` and the remote
//! destinations (`tls://`, `s3://`), `pmem decrypt` and `pmem receive`.
//!
//! The settings are process-wide (set once by `acquire`/`convert` before
//! the job starts) because they touch several steps of a job — opening the
//! sink, sealing each manifest write, annotating the manifest — and a pmem
//! process runs exactly one job; threading them through every call would
//! spread small edits over files other work is changing.

use crate::manifest::Manifest;
use anyhow::{Context, Result};
use pmem_core::sink::hex;
use pmem_core::ByteSink;
use pmem_upload::encrypt::{CiphertextSlot, EncryptSink, Identities, Recipients};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, OnceLock};

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
}

struct Settings {
    recipients: Option<Recipients>,
    args: UploadArgs,
    /// The ciphertext summary of the image, left by the encrypting sink.
    ciphertext: Mutex<Option<CiphertextSlot>>,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// The image length the next output must declare (pre-signed PUT): the
/// plaintext length, or why it is not known up front.
static PLANNED_SIZE: Mutex<Option<Result<u64, String>>> = Mutex::new(None);

/// A pre-signed PUT opened with encryption on: its length cell and the
/// plaintext length, until `wrap` knows the age header's length.
type PendingLength = (Arc<OnceLock<u64>>, u64);
static PENDING_LENGTH: Mutex<Option<PendingLength>> = Mutex::new(None);

/// States the exact length of the image about to be written (call before
/// opening the output): what `format`'s writer produces for `plan`, or
/// nothing when it depends on the content (compression).
pub fn declare_size(format: pmem_formats::Format, zstd: bool, plan: &pmem_core::Plan) {
    let size = if zstd {
        Err(format!("{format} --compress zstd"))
    } else {
        match pmem_formats::image_size(format, plan) {
            Ok(Some(size)) => Ok(size),
            Ok(None) => Err(format!("{format} (compressed)")),
            // The writer refuses the plan itself; it says why when it runs.
            Err(err) => Err(format!("{format} ({err})")),
        }
    };
    if let Ok(mut planned) = PLANNED_SIZE.lock() {
        *planned = Some(size);
    }
}

/// Records the job's upload and encryption options. Call once, before the
/// job; later calls keep the first settings.
pub fn configure(args: &UploadArgs) -> Result<()> {
    let recipients = if args.encrypt_to.is_empty() {
        None
    } else {
        Some(Recipients::parse(&args.encrypt_to).context("--encrypt-to")?)
    };
    let _ = SETTINGS.set(Settings {
        recipients,
        args: args.clone(),
        ciphertext: Mutex::new(None),
    });
    Ok(())
}

fn settings() -> Option<&'static Settings> {
    SETTINGS.get()
}

/// Wraps the destination sink in age encryption when recipients are set.
pub fn wrap(sink: Box<dyn ByteSink>) -> Result<Box<dyn ByteSink>> {
    let Some(settings) = settings() else {
        return Ok(sink);
    };
    let Some(recipients) = &settings.recipients else {
        return Ok(sink);
    };
    let (sink, slot) = EncryptSink::new(sink, recipients).context("starting age encryption")?;
    if let Some((length, plaintext)) = PENDING_LENGTH.lock().ok().and_then(|mut p| p.take()) {
        let _ = length.set(sink.ciphertext_len(plaintext));
    }
    if let Ok(mut current) = settings.ciphertext.lock() {
        *current = Some(slot);
    }
    Ok(Box::new(sink))
}

/// Encrypts manifest bytes when recipients are set.
pub fn seal(text: Vec<u8>) -> Result<Vec<u8>> {
    match settings().and_then(|s| s.recipients.as_ref()) {
        Some(recipients) => Ok(recipients
            .encrypt_bytes(&text)
            .context("encrypting the manifest")?),
        None => Ok(text),
    }
}

/// The manifest's record of encryption.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncryptionJson {
    /// "age" (age-encryption.org/v1, X25519 recipients).
    pub scheme: String,
    pub recipients: Vec<String>,
    /// Length and SHA-256 of the ciphertext as stored or sent; the
    /// manifest's image_sha256 is that of the plaintext image.
    pub ciphertext_bytes: Option<u64>,
    pub ciphertext_sha256: Option<String>,
}

/// Fills the manifest's encryption record (call before each write).
pub fn annotate(manifest: &mut Manifest) {
    let Some(settings) = settings() else {
        return;
    };
    let Some(recipients) = &settings.recipients else {
        return;
    };
    let ciphertext = settings
        .ciphertext
        .lock()
        .ok()
        .and_then(|slot| slot.as_ref().and_then(|s| s.lock().ok()?.clone()));
    manifest.encryption = Some(EncryptionJson {
        scheme: "age".into(),
        recipients: recipients.to_strings(),
        ciphertext_bytes: ciphertext.as_ref().map(|c| c.bytes),
        ciphertext_sha256: ciphertext.as_ref().map(|c| hex(&c.sha256)),
    });
}

#[derive(clap::Args)]
pub struct DecryptArgs {
    /// age identity file (as age-keygen writes it).
    #[arg(long, short)]
    identity: PathBuf,
    /// Overwrite an existing output.
    #[arg(long)]
    force: bool,
    /// Encrypted image or manifest, or - for standard input.
    input: PathBuf,
    /// Where the plaintext goes, or - for standard output.
    output: PathBuf,
}

/// `pmem decrypt`: what `age -d -i IDENTITY` does, without needing age.
pub fn decrypt(args: DecryptArgs) -> Result<ExitCode> {
    let identities = Identities::from_file(&args.identity)?;
    let input: Box<dyn Read> = if args.input == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(
            std::fs::File::open(&args.input)
                .with_context(|| format!("opening {}", args.input.display()))?,
        )
    };
    let mut reader = identities
        .decrypt(std::io::BufReader::with_capacity(1 << 20, input))
        .with_context(|| format!("decrypting {}", args.input.display()))?;
    let mut output: Box<dyn Write> = if args.output == Path::new("-") {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(
            pmem_core::sink::create_image_file(&args.output, args.force)
                .with_context(|| format!("creating {}", args.output.display()))?,
        )
    };
    // A cut or tampered ciphertext fails here (age authenticates each
    // 64 KiB chunk and marks the last one): never a silent short output.
    let bytes = std::io::copy(&mut reader, &mut output)
        .with_context(|| format!("decrypting {}", args.input.display()))?;
    output.flush()?;
    eprintln!("pmem: decrypted {bytes} bytes");
    Ok(ExitCode::SUCCESS)
}

/// A destination given as a URL instead of a file name.
#[derive(Debug, Clone)]
pub struct Remote {
    url: String,
}

impl Remote {
    /// `Some` when OUTPUT names a network destination.
    pub fn parse(text: &str) -> Option<Remote> {
        const SCHEMES: [&str; 4] = ["tls://", "s3://", "https://", "http://"];
        SCHEMES
            .iter()
            .any(|s| text.starts_with(s))
            .then(|| Remote { url: text.into() })
    }

    /// The URL without secrets, for messages and the manifest.
    pub fn display(&self) -> String {
        pmem_upload::redact(&self.url)
    }

    fn tls_address(&self) -> Option<&str> {
        self.url
            .strip_prefix("tls://")
            .map(|a| a.trim_end_matches('/'))
    }

    fn tls_trust(&self) -> Result<pmem_upload::tls::Trust> {
        let args = settings().map(|s| s.args.clone()).unwrap_or_default();
        match (&args.tls_fingerprint, &args.tls_ca) {
            (Some(fp), None) => Ok(pmem_upload::tls::Trust::Fingerprint(
                pmem_upload::tls::parse_fingerprint(fp).context("--tls-fingerprint")?,
            )),
            (None, Some(ca)) => Ok(pmem_upload::tls::Trust::CaFile(ca.clone())),
            (Some(_), Some(_)) => anyhow::bail!("give --tls-fingerprint or --tls-ca, not both"),
            (None, None) => anyhow::bail!(
                "{}: pass --tls-fingerprint HEX (pmem receive prints it) or --tls-ca FILE",
                self.display()
            ),
        }
    }

    fn s3_config(&self) -> Result<Option<pmem_upload::s3::S3Config>> {
        if !self.url.starts_with("s3://") {
            return Ok(None);
        }
        let args = settings().map(|s| s.args.clone()).unwrap_or_default();
        let (bucket, key) = pmem_upload::s3::parse_url(&self.url)?;
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Ok(Some(pmem_upload::s3::S3Config {
            bucket,
            key,
            endpoint: args
                .endpoint
                .clone()
                .or_else(|| env("AWS_ENDPOINT_URL_S3"))
                .or_else(|| env("AWS_ENDPOINT_URL")),
            region: env("AWS_REGION")
                .or_else(|| env("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|| "us-east-1".into()),
            credentials: pmem_upload::s3::credentials_from_env()?,
            part_size: args.part_size.saturating_mul(1 << 20),
            workers: args.parallel,
            ca_file: args.tls_ca.clone(),
            retry: Default::default(),
            timeout: std::time::Duration::from_secs(args.net_timeout.max(1)),
        }))
    }

    fn azure_config(&self) -> Option<pmem_upload::azure::AzureConfig> {
        if !pmem_upload::azure::is_sas_url(&self.url) {
            return None;
        }
        let args = settings().map(|s| s.args.clone()).unwrap_or_default();
        Some(pmem_upload::azure::AzureConfig {
            url: self.url.clone(),
            block_size: args.part_size.saturating_mul(1 << 20),
            workers: args.parallel,
            ca_file: args.tls_ca.clone(),
            retry: Default::default(),
            timeout: std::time::Duration::from_secs(args.net_timeout.max(1)),
        })
    }

    /// Connects and returns the sink the image is written to.
    pub fn open(&self) -> Result<Box<dyn ByteSink>> {
        if let Some(config) = self.azure_config() {
            let upload = pmem_upload::azure::start(config)?;
            return Ok(Box::new(pmem_upload::remote::RemoteSink::new(Box::new(
                upload,
            ))));
        }
        if self.url.starts_with("http") {
            return self.open_put();
        }
        if let Some(config) = self.s3_config()? {
            anyhow::ensure!(
                config.part_size >= pmem_upload::s3::MIN_PART,
                "--part-size must be at least 5 (MiB): S3's smallest part"
            );
            let upload = pmem_upload::s3::start(config)?;
            return Ok(Box::new(pmem_upload::remote::RemoteSink::new(Box::new(
                upload,
            ))));
        }
        if let Some(address) = self.tls_address() {
            let sender = pmem_upload::tls::TlsSender::connect(
                address,
                &self.tls_trust()?,
                pmem_upload::tls::Kind::Image,
                true,
            )
            .with_context(|| format!("connecting to {}", self.display()))?;
            return Ok(Box::new(pmem_upload::remote::RemoteSink::new(Box::new(
                sender,
            ))));
        }
        anyhow::bail!(
            "{}: this kind of destination is not supported yet",
            self.display()
        )
    }

    fn put_config(&self, url: &str) -> pmem_upload::put::PutConfig {
        let args = settings().map(|s| s.args.clone()).unwrap_or_default();
        pmem_upload::put::PutConfig {
            url: url.to_string(),
            ca_file: args.tls_ca.clone(),
            timeout: std::time::Duration::from_secs(args.net_timeout.max(1)),
        }
    }

    /// A pre-signed PUT URL: one request whose Content-Length is the exact
    /// image length (plus age's overhead when encrypting).
    fn open_put(&self) -> Result<Box<dyn ByteSink>> {
        let planned = PLANNED_SIZE.lock().ok().and_then(|p| p.clone());
        let size = match planned {
            Some(Ok(size)) => size,
            Some(Err(what)) => anyhow::bail!(
                "{}: a pre-signed URL takes one PUT whose Content-Length must be known \
                 before the first byte, and the length of a {what} image is not known \
                 until it is written: use s3://BUCKET/KEY (multipart upload, any length) \
                 or an uncompressed format (lime, raw, elf, dmp, macho)",
                self.display()
            ),
            None => anyhow::bail!("{}: the image length was not declared", self.display()),
        };
        let (put, length) = pmem_upload::put::PutUpload::new(self.put_config(&self.url))?;
        if settings().is_some_and(|s| s.recipients.is_some()) {
            // wrap() sets the length once age's header is written.
            if let Ok(mut pending) = PENDING_LENGTH.lock() {
                *pending = Some((length, size));
            }
        } else {
            let _ = length.set(size);
        }
        let manifest_url = settings().and_then(|s| s.args.manifest_url.clone());
        match manifest_url {
            Some(url) => pmem_upload::put::check_scheme(&url).context("--manifest-url")?,
            None => eprintln!(
                "pmem: note: a pre-signed URL covers one object: the manifest is not \
                 uploaded (give --manifest-url URL for it, or keep it with --manifest PATH)"
            ),
        }
        Ok(Box::new(pmem_upload::remote::RemoteSink::new(Box::new(
            put,
        ))))
    }

    /// Sends the (sealed) manifest after the image: for tls:// as a second
    /// object to the same receiver.
    pub fn send_manifest(&self, manifest: &Manifest) -> Result<()> {
        let mut text = serde_json::to_vec_pretty(manifest)?;
        text.push(b'\n');
        let text = seal(text)?;
        if let Some(config) = self.s3_config()? {
            pmem_upload::s3::put_manifest(config, &text)?;
        }
        if let Some(config) = self.azure_config() {
            // A SAS scoped to the image's blob cannot write BLOB.json: the
            // image is complete anyway, so warn instead of failing.
            if let Err(err) = pmem_upload::azure::put_manifest(&config, &text) {
                eprintln!(
                    "pmem: warning: could not upload the manifest beside {} ({err}); \
                     use a container SAS or keep it with --manifest",
                    self.display()
                );
            }
        }
        let put_url = settings().and_then(|s| s.args.manifest_url.clone());
        if let (Some(url), false) = (put_url, self.azure_config().is_some()) {
            if self.url.starts_with("http") {
                let config = self.put_config(&url);
                pmem_upload::retry::with_retries(&Default::default(), &|| false, || {
                    let (mut put, length) = pmem_upload::put::PutUpload::new(config.clone())?;
                    let _ = length.set(text.len() as u64);
                    pmem_upload::remote::Upload::write(&mut put, &text)?;
                    pmem_upload::remote::Upload::finish(
                        Box::new(put),
                        &pmem_core::SinkSummary {
                            bytes: text.len() as u64,
                            sha256: [0; 32],
                        },
                    )
                })
                .with_context(|| {
                    format!("uploading the manifest to {}", pmem_upload::redact(&url))
                })?;
            }
        }
        if let Some(address) = self.tls_address() {
            pmem_upload::tls::TlsSender::connect(
                address,
                &self.tls_trust()?,
                pmem_upload::tls::Kind::Manifest,
                false,
            )
            .and_then(|s| s.send_all(&text))
            .with_context(|| format!("sending the manifest to {}", self.display()))?;
        }
        Ok(())
    }
}

/// Sends the manifest of a finished job to a remote destination.
pub fn send_manifest(output: &crate::job::Output, manifest: &Manifest) -> Result<()> {
    match output {
        crate::job::Output::Remote(remote) => remote.send_manifest(manifest),
        _ => Ok(()),
    }
}

#[derive(clap::Args)]
pub struct ReceiveArgs {
    /// Address to listen on, e.g. 0.0.0.0:4433 (port 0: any free port).
    #[arg(long)]
    listen: String,
    /// PEM certificate (chain) the sender pins or verifies.
    #[arg(long)]
    cert: PathBuf,
    /// PEM private key of the certificate.
    #[arg(long)]
    key: PathBuf,
    /// Overwrite an existing image and manifest.
    #[arg(long)]
    force: bool,
    /// Where the image goes; its manifest goes to OUT.json.
    out: PathBuf,
}

/// `pmem receive`: the responder's side of `tls://`. Receives one image and
/// its manifest, each written to NAME.partial and renamed only when its
/// trailer (length and SHA-256) matches; a cut stream exits non-zero.
pub fn receive(args: ReceiveArgs) -> Result<ExitCode> {
    let config = pmem_upload::tls::server_config(&args.cert, &args.key)?;
    let chain = pmem_upload::tls::read_certs(&args.cert)?;
    let fingerprint = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(
        chain[0].as_ref(),
    ));
    let listener = std::net::TcpListener::bind(&args.listen)
        .with_context(|| format!("listening on {}", args.listen))?;
    eprintln!(
        "pmem: listening on {} (certificate sha256 {})",
        listener.local_addr()?,
        hex(&fingerprint)
    );
    pmem_upload::tls::serve(&listener, config, &args.out, args.force, |got| match got {
        Ok(got) => eprintln!(
            "pmem: received {} bytes into {}, sha256 {}",
            got.bytes,
            got.path.display(),
            hex(&got.sha256)
        ),
        Err(err) => eprintln!("pmem: {err}; still listening"),
    })
    .context("receiving")?;
    Ok(ExitCode::SUCCESS)
}
