//! `https://...` pre-signed PUT URLs (S3 `X-Amz-Signature`, GCS
//! `X-Goog-Signature`, any service that takes one PUT of a whole object):
//! the image is sent while it is produced, as ONE request with a
//! `Content-Length` (S3 refuses `Transfer-Encoding: chunked` with 501), so
//! the length must be known before the first byte: the format's
//! `pmem_formats::image_size` plus age's overhead when encrypting.
//!
//! Never a truncated object that looks complete:
//! - the request declares the exact length; a server stores an object
//!   only when that many bytes arrived;
//! - the last buffer of the image is held back until [`Upload::finish`]
//!   has checked that the image is exactly the declared length, so a job
//!   that fails (or produces a different length) never sends the final
//!   byte: the request is cut short and the server discards it;
//! - the body reader returns an error, never `Ok(0)`, when the image ends
//!   early (ureq 3.5 loops forever on a body that ends before its declared
//!   Content-Length), and refuses bytes beyond it.
//!
//! A single streamed request cannot be retried once bytes are sent (the
//! image is not kept); use `s3://` (multipart, per-part retries) where
//! that matters. Memory: about 4 MiB (1 MiB held back, 2 MiB in the
//! hand-over channel, 1 MiB being sent).

use crate::http;
use crate::remote::Upload;
use crate::UploadError;
use pmem_core::SinkSummary;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

/// Bytes handed to the request at a time.
const BUFFER: usize = 1 << 20;
/// Buffers queued between the image writer and the request.
const QUEUE: usize = 2;

/// Where and how to PUT.
#[derive(Debug, Clone)]
pub struct PutConfig {
    /// The pre-signed URL (secret: printed only through [`crate::redact()`]).
    pub url: String,
    /// PEM file of CA certificates to trust instead of the built-in roots.
    pub ca_file: Option<PathBuf>,
    /// How long one read or write of the request may stall.
    pub timeout: Duration,
}

/// True for URLs this destination handles: `https://`, or `http://` to
/// this machine only (plain HTTP would send the memory image, and the
/// URL's signature, in clear over the network).
pub fn check_scheme(url: &str) -> Result<(), UploadError> {
    if url.starts_with("https://") {
        return Ok(());
    }
    if let Some(rest) = url.strip_prefix("http://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let host = if let Some(v6) = host.strip_prefix('[') {
            v6.split(']').next().unwrap_or("")
        } else {
            host.rsplit_once(':').map_or(host, |(h, _)| h)
        };
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if loopback {
            return Ok(());
        }
        return Err(UploadError::destination(format!(
            "{}: plain http:// would send the memory image and the URL's signature \
             unencrypted; use an https:// URL (http:// is accepted only for 127.0.0.1, \
             ::1 or localhost)",
            crate::redact(url)
        )));
    }
    Err(UploadError::destination(format!(
        "{}: not an http(s):// URL",
        crate::redact(url)
    )))
}

/// The running request: where buffers go, and the thread sending them.
type Request = (SyncSender<Vec<u8>>, JoinHandle<Result<(), UploadError>>);

/// One PUT of the whole image. The declared length may be set after the
/// upload is created (age writes its header before the ciphertext length
/// is known): bytes are kept until then.
pub struct PutUpload {
    config: PutConfig,
    length: Arc<OnceLock<u64>>,
    /// Bytes not yet handed to the request; the last buffer of the image
    /// always waits here until `finish`.
    pending: Vec<u8>,
    /// Bytes handed to the request.
    sent: u64,
    request: Option<Request>,
}

impl PutUpload {
    /// An upload whose length is set through the returned cell (once).
    pub fn new(config: PutConfig) -> Result<(PutUpload, Arc<OnceLock<u64>>), UploadError> {
        check_scheme(&config.url)?;
        let length = Arc::new(OnceLock::new());
        Ok((
            PutUpload {
                config,
                length: length.clone(),
                pending: Vec::with_capacity(BUFFER),
                sent: 0,
                request: None,
            },
            length,
        ))
    }

    fn display(&self) -> String {
        crate::redact(&self.config.url)
    }

    fn declared(&self) -> Result<u64, UploadError> {
        self.length.get().copied().ok_or_else(|| {
            UploadError::protocol(format!(
                "{}: the image length was not declared before its bytes",
                self.display()
            ))
        })
    }

    /// Starts the request (in its own thread) once the length is known.
    fn start(&mut self) -> Result<(), UploadError> {
        if self.request.is_some() {
            return Ok(());
        }
        let length = self.declared()?;
        let agent = http::agent(self.config.ca_file.as_deref(), self.config.timeout)?;
        let uri: ureq::http::Uri =
            self.config.url.parse().map_err(|e| {
                UploadError::destination(format!("{}: {e}", self.display())).because(e)
            })?;
        let (tx, rx) = sync_channel(QUEUE);
        let what = format!("PUT {}", self.display());
        let thread = std::thread::Builder::new()
            .name("pmem-put".into())
            .spawn(move || {
                let body = ureq::SendBody::from_owned_reader(BodyReader {
                    rx,
                    current: Vec::new(),
                    at: 0,
                    remaining: length,
                });
                let request = ureq::http::Request::builder()
                    .method("PUT")
                    .uri(uri)
                    .header("content-length", length)
                    .header("content-type", "application/octet-stream")
                    .body(body)
                    .map_err(|e| UploadError::destination(e.to_string()).because(e))?;
                let reply = http::reply(&what, agent.run(request))?;
                if !(200..300).contains(&reply.status) {
                    return Err(http::status_error(&what, &reply));
                }
                Ok(())
            })?;
        self.request = Some((tx, thread));
        Ok(())
    }

    /// Hands the pending buffer to the request.
    fn flush(&mut self) -> Result<(), UploadError> {
        self.start()?;
        let data = std::mem::replace(&mut self.pending, Vec::with_capacity(BUFFER));
        let n = data.len() as u64;
        let sent = match &self.request {
            Some((tx, _)) => tx.send(data).is_ok(),
            None => false,
        };
        if !sent {
            // The request ended early: its error says why.
            return Err(self.stop().err().unwrap_or_else(|| {
                UploadError::protocol(format!("{}: the request ended early", self.display()))
            }));
        }
        self.sent += n;
        Ok(())
    }

    /// Closes the hand-over channel and waits for the request's outcome.
    fn stop(&mut self) -> Result<(), UploadError> {
        match self.request.take() {
            Some((tx, thread)) => {
                drop(tx);
                thread
                    .join()
                    .unwrap_or_else(|_| Err(UploadError::protocol("the upload thread panicked")))
            }
            None => Ok(()),
        }
    }
}

impl Upload for PutUpload {
    fn write(&mut self, mut buf: &[u8]) -> Result<(), UploadError> {
        let total = self.sent + (self.pending.len() + buf.len()) as u64;
        if let Some(&length) = self.length.get() {
            if total > length {
                return Err(UploadError::protocol(format!(
                    "{}: the image grew past the {length} bytes declared in the \
                     request's Content-Length; upload abandoned (no object is stored)",
                    self.display()
                )));
            }
        }
        while !buf.is_empty() {
            if self.pending.len() == BUFFER {
                self.flush()?;
            }
            let n = (BUFFER - self.pending.len()).min(buf.len());
            self.pending.extend_from_slice(&buf[..n]);
            buf = &buf[n..];
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>, summary: &SinkSummary) -> Result<(), UploadError> {
        let length = self.declared()?;
        let total = self.sent + self.pending.len() as u64;
        if summary.bytes != length || total != length {
            // Dropping the channel cuts the request short of its length.
            let _ = self.stop();
            return Err(UploadError::protocol(format!(
                "{}: the image is {} bytes but {length} were declared in the request's \
                 Content-Length; upload abandoned (no object is stored)",
                self.display(),
                summary.bytes
            )));
        }
        if !self.pending.is_empty() || self.request.is_none() {
            self.flush()?;
        }
        self.stop()
    }
}

/// The request body: buffers from the writer, exactly `remaining` bytes.
struct BodyReader {
    rx: Receiver<Vec<u8>>,
    current: Vec<u8>,
    at: usize,
    remaining: u64,
}

impl Read for BodyReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.at == self.current.len() {
            if self.remaining == 0 || out.is_empty() {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(data) if data.len() as u64 > self.remaining => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the image is longer than the declared Content-Length",
                    ))
                }
                Ok(data) => {
                    self.current = data;
                    self.at = 0;
                }
                // Never Ok(0) before the declared length: ureq would wait
                // for the rest forever. An error cuts the request.
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the image ended before the declared Content-Length (upload abandoned)",
                    ))
                }
            }
        }
        let n = out.len().min(self.current.len() - self.at);
        out[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_this_machine() {
        for ok in [
            "https://bucket.s3.amazonaws.com/k?X-Amz-Signature=1",
            "http://127.0.0.1:8333/b/k?x=1",
            "http://localhost/b/k",
            "http://[::1]:9000/b/k",
            "http://127.1.2.3/k",
        ] {
            assert!(check_scheme(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.5/b/k?X-Amz-Signature=SECRET",
            "http://127.0.0.1.evil.example/k",
            "http://localhost@evil.example/k",
            "ftp://h/k",
        ] {
            let err = check_scheme(bad).unwrap_err().to_string();
            assert!(!err.contains("SECRET"), "{err}");
        }
    }

    #[test]
    fn the_body_errors_instead_of_ending_early() {
        let (tx, rx) = sync_channel(4);
        tx.send(vec![1u8; 10]).unwrap();
        drop(tx);
        let mut body = BodyReader {
            rx,
            current: Vec::new(),
            at: 0,
            remaining: 20,
        };
        let mut out = Vec::new();
        let err = body.read_to_end(&mut out).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(out.len(), 10);

        let (tx, rx) = sync_channel(4);
        tx.send(vec![1u8; 30]).unwrap();
        let mut body = BodyReader {
            rx,
            current: Vec::new(),
            at: 0,
            remaining: 20,
        };
        assert!(body.read(&mut [0u8; 64]).is_err(), "longer than declared");
    }

    #[test]
    fn a_wrong_length_never_completes() {
        let (mut put, length) = PutUpload::new(PutConfig {
            // Nothing listens there: no byte may be needed to fail.
            url: "http://127.0.0.1:9/b/k?X-Amz-Signature=SECRET".into(),
            ca_file: None,
            timeout: Duration::from_secs(2),
        })
        .unwrap();
        length.set(10).unwrap();
        put.write(b"0123456789").unwrap();
        let err = put.write(b"x").unwrap_err().to_string();
        assert!(
            err.contains("grew past") && !err.contains("SECRET"),
            "{err}"
        );
        let summary = SinkSummary {
            bytes: 9,
            hash: None,
        };
        let err = Box::new(put).finish(&summary).unwrap_err().to_string();
        assert!(err.contains("abandoned"), "{err}");
    }
}
