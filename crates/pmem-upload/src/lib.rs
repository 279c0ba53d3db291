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
//! - [`redact`](mod@redact): the one helper that makes URLs safe to print or store.

#![warn(missing_docs)]

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

/// A small object that travels beside the image and is named after it: the
/// image's key, blob or file name plus [`suffix`](Companion::suffix). Every
/// destination stores both the same way, so one code path serves both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Companion {
    /// The acquisition's manifest: `IMAGE.json`.
    Manifest,
    /// The kernel's symbol bundle (a tar of BTF, kallsyms, the banner...)
    /// for image formats with no room for it: `IMAGE.symbols`.
    Symbols,
}

impl Companion {
    /// What is appended to the image's name.
    pub fn suffix(self) -> &'static str {
        match self {
            Companion::Manifest => ".json",
            Companion::Symbols => ".symbols",
        }
    }

    /// What it is, for messages: "the manifest", "the symbols".
    pub fn description(self) -> &'static str {
        match self {
            Companion::Manifest => "the manifest",
            Companion::Symbols => "the symbols",
        }
    }
}

/// The error an [`UploadError`] was made from, kept as its `source()`.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why an upload, an encryption or a receive failed. Messages never hold a
/// secret: URLs are passed through [`redact()`] before they get here.
///
/// A variant with a `source` keeps the error it was made from; the message
/// already quotes that error's text (as it always has: the messages users
/// see are the same), and an error report that prints each cause once (the
/// CLI's) shows nothing twice.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// A read or write of this machine's side failed (a socket, a file).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The destination given cannot be used: a malformed or unsupported
    /// URL, a missing option. Nothing was sent.
    #[error("invalid destination {message}")]
    Destination {
        /// What is wrong, naming the destination only redacted.
        message: String,
        /// The error this one was made from, if kept.
        #[source]
        source: Option<Cause>,
    },
    /// age encryption or decryption failed: a bad recipient or identity,
    /// or a ciphertext that does not decrypt.
    #[error("age: {message}")]
    Age {
        /// What failed.
        message: String,
        /// The error this one was made from, if kept.
        #[source]
        source: Option<Cause>,
    },
    /// Setting up TLS failed: certificates, keys, the handshake.
    #[error("TLS: {message}")]
    Tls {
        /// What failed.
        message: String,
        /// The error this one was made from, if kept.
        #[source]
        source: Option<Cause>,
    },
    /// A server answered with an error status. 5xx, 429 and 408 are
    /// retried ([`retry::retryable`]); others are final.
    #[error("{what}: HTTP {status}{detail}")]
    Http {
        /// The request, named without secrets (e.g. `part 3 of s3://b/k`).
        what: String,
        /// The HTTP status code.
        status: u16,
        /// S3's or Azure's error code as ` (Code)`, or empty.
        detail: String,
    },
    /// A request that got no reply. `detail` is the transport's error text,
    /// redacted where it can name the URL; `source` is kept only where it
    /// cannot (an HTTP client's error may carry the URL's secret).
    #[error("{what}: {detail}")]
    Transport {
        /// The request, named without secrets.
        what: String,
        /// The transport's error text, redacted.
        detail: String,
        /// The error this one was made from, if kept.
        #[source]
        source: Option<Cause>,
    },
    /// No usable S3 credentials (environment or profile file).
    #[error("credentials: {message}")]
    Credentials {
        /// What is missing or unreadable.
        message: String,
        /// The error this one was made from, if kept.
        #[source]
        source: Option<Cause>,
    },
    /// The transfer itself went wrong after it started: a TLS stream cut
    /// or malformed, an upload worker that stopped, a part missing, a PUT
    /// that ended early.
    #[error("stream: {message}")]
    Protocol {
        /// What went wrong.
        message: String,
        /// The error this one was made from, if kept.
        #[source]
        source: Option<Cause>,
    },
    /// A connection refused before any data (handshake, not pmem).
    #[error("connection rejected {message}")]
    Rejected {
        /// Why the connection was turned away.
        message: String,
        /// The error this one was made from, if kept.
        #[source]
        source: Option<Cause>,
    },
}

impl UploadError {
    /// [`UploadError::Destination`] without a source (add one with
    /// [`because`](Self::because)).
    pub fn destination(message: impl Into<String>) -> UploadError {
        UploadError::Destination {
            message: message.into(),
            source: None,
        }
    }

    /// [`UploadError::Age`] without a source.
    pub fn age(message: impl Into<String>) -> UploadError {
        UploadError::Age {
            message: message.into(),
            source: None,
        }
    }

    /// [`UploadError::Tls`] without a source.
    pub fn tls(message: impl Into<String>) -> UploadError {
        UploadError::Tls {
            message: message.into(),
            source: None,
        }
    }

    /// [`UploadError::Credentials`] without a source.
    pub fn credentials(message: impl Into<String>) -> UploadError {
        UploadError::Credentials {
            message: message.into(),
            source: None,
        }
    }

    /// [`UploadError::Protocol`] without a source.
    pub fn protocol(message: impl Into<String>) -> UploadError {
        UploadError::Protocol {
            message: message.into(),
            source: None,
        }
    }

    /// [`UploadError::Rejected`] without a source.
    pub fn rejected(message: impl Into<String>) -> UploadError {
        UploadError::Rejected {
            message: message.into(),
            source: None,
        }
    }

    /// Keeps `cause` as this error's source (the message already says what
    /// it is). Errors without a source field (`Io`, `Http`) stay as they are.
    pub fn because(mut self, cause: impl Into<Cause>) -> UploadError {
        match &mut self {
            UploadError::Destination { source, .. }
            | UploadError::Age { source, .. }
            | UploadError::Tls { source, .. }
            | UploadError::Transport { source, .. }
            | UploadError::Credentials { source, .. }
            | UploadError::Protocol { source, .. }
            | UploadError::Rejected { source, .. } => *source = Some(cause.into()),
            UploadError::Io(_) | UploadError::Http { .. } => {}
        }
        self
    }
}

impl From<UploadError> for std::io::Error {
    fn from(err: UploadError) -> Self {
        match err {
            UploadError::Io(e) => e,
            other => std::io::Error::other(other),
        }
    }
}
