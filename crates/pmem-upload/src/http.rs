//! The HTTP client shared by the S3, pre-signed PUT and Azure
//! destinations: ureq over rustls (ring), bounded timeouts, and errors that
//! never carry a URL's query string.

use crate::UploadError;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

/// One agent per destination; connections are reused between parts.
pub fn agent(ca_file: Option<&Path>, timeout: Duration) -> Result<ureq::Agent, UploadError> {
    let mut config = ureq::Agent::config_builder()
        // Status codes are inspected by the callers (retry on 5xx).
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        // A stalled server must not hang pmem: every read and write of a
        // request has to make progress within this time.
        .timeout_per_read(Some(timeout))
        .timeout_per_write(Some(timeout))
        .max_idle_connections_per_host(16);
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)?;
        let certs = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect::<Vec<_>>();
        if certs.is_empty() {
            return Err(UploadError::tls(format!(
                "{} holds no certificate",
                path.display()
            )));
        }
        config = config.tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                .build(),
        );
    }
    Ok(config.build().into())
}

/// What came back from a request: status, selected headers, body text.
pub struct Reply {
    /// The HTTP status code.
    pub status: u16,
    /// The `ETag` header, quotes included (S3 lists it per part).
    pub etag: Option<String>,
    /// The body as text, at most 64 KiB of it (error bodies are small XML).
    pub body: String,
}

/// Turns a ureq result into a [`Reply`]; `what` names the request without
/// secrets.
pub fn reply(
    what: &str,
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Reply, UploadError> {
    let mut response = result.map_err(|e| UploadError::Transport {
        what: what.to_string(),
        // ureq's messages can include the URL: keep only the kind.
        detail: crate::redact::redact_text(&e.to_string()),
        // Not kept as the source: its text is what was just redacted.
        source: None,
    })?;
    let status = response.status().as_u16();
    let etag = response
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut body = String::new();
    // Error bodies are small XML documents; cap what is read.
    let _ = response
        .body_mut()
        .as_reader()
        .take(64 * 1024)
        .read_to_string(&mut body);
    Ok(Reply { status, etag, body })
}

/// An HTTP error for `reply`, with S3's or Azure's error code if any.
pub fn status_error(what: &str, reply: &Reply) -> UploadError {
    let code = xml_value(&reply.body, "Code")
        .map(|c| format!(" ({c})"))
        .unwrap_or_default();
    UploadError::Http {
        what: what.to_string(),
        status: reply.status,
        detail: code,
    }
}

/// The text of the first `<tag>...</tag>` in a small XML reply.
pub fn xml_value(body: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = body.find(&open)? + open.len();
    let end = body[start..].find(&close)? + start;
    Some(body[start..end].trim().to_string())
}
