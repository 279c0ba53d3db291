//! Azure Blob Storage with a SAS URL (what AVML supports): the image as
//! blocks (Put Block, each with a Content-Length — Azure refuses a block
//! without one with 411) committed by Put Block List only when every block
//! is stored. Until then no blob exists; uncommitted blocks are discarded
//! by the service. Blocks go through [`crate::parts`]: bounded memory,
//! concurrent, retried, and sized to stay under Azure's 50,000 blocks.

use crate::http;
use crate::parts::{PartSink, PartUpload};
use crate::retry::{with_retries, RetryPolicy};
use crate::{Companion, UploadError};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Azure's limit of blocks per blob.
pub const MAX_BLOCKS: u32 = 50_000;
const VERSION: &str = "2021-08-06";

/// Where and how to upload to Azure Blob Storage.
#[derive(Debug, Clone)]
pub struct AzureConfig {
    /// `https://ACCOUNT.blob.core.windows.net/CONTAINER/BLOB?SAS`
    /// (secret: printed only through [`crate::redact()`]).
    pub url: String,
    /// Bytes per block to begin with (at least 1 MiB); blocks grow so that
    /// a large image stays under [`MAX_BLOCKS`].
    pub block_size: usize,
    /// Blocks uploaded at once; memory held is about
    /// `(workers + 1) × block size`.
    pub workers: usize,
    /// PEM file of CA certificates to trust instead of the built-in roots.
    pub ca_file: Option<PathBuf>,
    /// Retries of each block request.
    pub retry: RetryPolicy,
    /// How long one read or write of a request may stall.
    pub timeout: Duration,
}

/// True when `url` looks like a blob URL with a SAS token.
pub fn is_sas_url(url: &str) -> bool {
    (url.starts_with("https://") || url.starts_with("http://"))
        && url
            .split_once('?')
            .is_some_and(|(_, q)| q.split('&').any(|p| p.starts_with("sig=")))
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Block ids must all have the same length: a fixed-width number.
fn block_id(number: u32) -> String {
    base64(format!("pmem-block-{number:08}").as_bytes())
}

struct Blob {
    agent: ureq::Agent,
    /// The blob URL without its query.
    base: String,
    /// The SAS query string.
    sas: String,
    display: String,
    retry: RetryPolicy,
}

impl Blob {
    fn new(config: &AzureConfig) -> Result<Blob, UploadError> {
        let (base, sas) = config
            .url
            .split_once('?')
            .ok_or_else(|| UploadError::destination("the blob URL has no SAS token"))?;
        Ok(Blob {
            agent: http::agent(config.ca_file.as_deref(), config.timeout)?,
            base: base.to_string(),
            sas: sas.to_string(),
            display: crate::redact(&config.url),
            retry: config.retry,
        })
    }

    fn put(
        &self,
        url_base: &str,
        extra_query: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        what: &str,
        stop: &dyn Fn() -> bool,
    ) -> Result<(), UploadError> {
        let url = format!("{url_base}?{}{extra_query}", self.sas);
        with_retries(&self.retry, stop, || {
            let mut request = self.agent.put(&url).header("x-ms-version", VERSION);
            for (k, v) in headers {
                request = request.header(*k, *v);
            }
            let reply = http::reply(what, request.send(body))?;
            if (200..300).contains(&reply.status) {
                Ok(())
            } else {
                Err(http::status_error(what, &reply))
            }
        })
    }

    /// Put Blob of a small object next to the image (the manifest, the
    /// symbols).
    fn put_sibling(&self, companion: Companion, body: &[u8]) -> Result<(), UploadError> {
        let suffix = companion.suffix();
        let what = format!(
            "{} {}{suffix}",
            companion.description(),
            crate::redact(&self.base)
        );
        self.put(
            &format!("{}{suffix}", self.base),
            "",
            &[("x-ms-blob-type", "BlockBlob")],
            body,
            &what,
            &|| false,
        )
    }
}

impl PartSink for Blob {
    fn upload_part(
        &self,
        number: u32,
        data: &[u8],
        stop: &dyn Fn() -> bool,
    ) -> Result<String, UploadError> {
        let id = block_id(number);
        let what = format!("block {number} of {}", self.display);
        let query = format!(
            "&comp=block&blockid={}",
            crate::sigv4::uri_encode(&id, false)
        );
        self.put(&self.base, &query, &[], data, &what, stop)?;
        Ok(id)
    }

    fn complete(&self, parts: &[(u32, String)]) -> Result<(), UploadError> {
        let mut xml = String::from(r#"<?xml version="1.0" encoding="utf-8"?><BlockList>"#);
        for (_, id) in parts {
            xml.push_str(&format!("<Latest>{id}</Latest>"));
        }
        xml.push_str("</BlockList>");
        let what = format!("committing the block list of {}", self.display);
        self.put(
            &self.base,
            "&comp=blocklist",
            &[("x-ms-blob-content-type", "application/octet-stream")],
            xml.as_bytes(),
            &what,
            &|| false,
        )
    }

    // Uncommitted blocks never become a blob and the service discards
    // them: there is nothing to delete.
    fn abort(&self) -> Result<(), UploadError> {
        Ok(())
    }
}

/// Starts a block upload to the SAS URL.
pub fn start(config: AzureConfig) -> Result<PartUpload, UploadError> {
    let blob = Blob::new(&config)?;
    Ok(PartUpload::start(
        Arc::new(blob),
        config.block_size.max(1 << 20),
        config.workers,
        MAX_BLOCKS,
    ))
}

/// Uploads `companion` as BLOB.json or BLOB.symbols with the same SAS
/// (which must then cover the container, not only the image's blob).
pub fn put_beside(
    config: &AzureConfig,
    companion: Companion,
    body: &[u8],
) -> Result<(), UploadError> {
    Blob::new(config)?.put_sibling(companion, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_ids_and_sas_detection() {
        assert_eq!(base64(b"Man"), "TWFu");
        assert_eq!(base64(b"Ma"), "TWE=");
        assert_eq!(base64(b"M"), "TQ==");
        assert_eq!(block_id(1).len(), block_id(49_999).len());
        assert!(is_sas_url(
            "https://a.blob.core.windows.net/c/b?sv=1&sig=x%3D"
        ));
        assert!(!is_sas_url(
            "https://bucket.s3.amazonaws.com/k?X-Amz-Signature=1"
        ));
    }
}
