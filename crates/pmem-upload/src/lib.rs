//! Destinations for pmem images that are not a local file: the image is
//! streamed off the machine while it is acquired (a responder must not write
//! gigabytes to the suspect's own disk) and optionally encrypted with age
//! before it leaves the process.
//!
//! Every destination is a [`pmem_core::ByteSink`], so the format writers and
//! the copy pipeline do not know where their bytes go, and the image hash in
//! the manifest is the same as for a local file.
//!
//! - [`encrypt`]: age (X25519 recipients) around any other sink.
//! - [`tls`]: a TLS stream to `pmem receive`, with an explicit trailer.
//! - [`s3`]: S3 multipart upload with bounded memory and per-part retries.
//! - [`azure`]: Azure Blob with a SAS URL (Put Block, Put Block List).
//! - [`put`]: one PUT of the whole image to a pre-signed https:// URL.
//! - [`redact`]: the one helper that makes URLs safe to print or store.

pub mod azure;
pub mod encrypt;
pub mod http;
pub mod parts;
pub mod put;
pub mod redact;
pub mod remote;
pub mod retry;
pub mod s3;
pub mod sigv4;
pub mod tls;

pub use redact::redact;

/// Why an upload, an encryption or a receive failed. Messages never hold a
/// secret: URLs are passed through [`redact`] before they get here.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("invalid destination {0}")]
    Destination(String),
    #[error("age: {0}")]
    Age(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{what}: HTTP {status}{detail}")]
    Http {
        what: String,
        status: u16,
        detail: String,
    },
    #[error("{what}: {detail}")]
    Transport { what: String, detail: String },
    #[error("credentials: {0}")]
    Credentials(String),
    #[error("stream: {0}")]
    Protocol(String),
    /// A connection refused before any data (handshake, not pmem).
    #[error("connection rejected {0}")]
    Rejected(String),
}

impl From<UploadError> for std::io::Error {
    fn from(err: UploadError) -> Self {
        match err {
            UploadError::Io(e) => e,
            other => std::io::Error::other(other),
        }
    }
}
