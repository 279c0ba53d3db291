//! `s3://bucket/key`: S3 multipart upload while the image is produced.
//!
//! Memory is bounded: the part being filled plus one part per upload
//! worker, handed over through a rendezvous channel (so at most
//! `(workers + 1) × part size` bytes are held). Each part is retried with
//! backoff; when a part fails for good, or the job fails and the sink is
//! dropped, the multipart upload is aborted so no orphaned parts (and no
//! object) remain. The object appears only when CompleteMultipartUpload
//! succeeds, so a failed acquisition never leaves a truncated object that
//! looks complete.
//!
//! Parts are sent with a Content-Length and their real SHA-256 in the
//! signature: never `Transfer-Encoding: chunked`, which S3 refuses.

use crate::http::{self, Reply};
use crate::parts::{PartSink, PartUpload};
use crate::retry::{with_retries, RetryPolicy};
use crate::sigv4::{self, Credentials};
use crate::{Companion, UploadError};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

/// S3's limits: at most 10,000 parts, each (but the last) at least 5 MiB.
const MAX_PARTS: u32 = 10_000;
/// Smallest part S3 accepts (but for the last): 5 MiB.
pub const MIN_PART: usize = 5 << 20;

/// Where and how to upload.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// Bucket name.
    pub bucket: String,
    /// Object key of the image; the manifest goes to `KEY.json`, the
    /// symbols to `KEY.symbols`.
    pub key: String,
    /// `http(s)://host[:port]` of an S3-compatible service (path-style
    /// addressing); `None` for AWS (virtual-hosted style).
    pub endpoint: Option<String>,
    /// Region the requests are signed for (e.g. `us-east-1`).
    pub region: String,
    /// Keys the requests are signed with.
    pub credentials: Credentials,
    /// Bytes per part to begin with (at least [`MIN_PART`]); parts grow so
    /// that a large image stays under S3's 10,000 parts.
    pub part_size: usize,
    /// Parts uploaded at once; memory held is about
    /// `(workers + 1) × part size`.
    pub workers: usize,
    /// PEM file of CA certificates to trust instead of the built-in roots.
    pub ca_file: Option<PathBuf>,
    /// Retries of each request.
    pub retry: RetryPolicy,
    /// How long one read or write of a request may stall.
    pub timeout: std::time::Duration,
}

/// Parses `s3://bucket/key`.
pub fn parse_url(url: &str) -> Result<(String, String), UploadError> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| UploadError::destination(format!("{url}: not s3://")))?;
    match rest.split_once('/') {
        Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() => {
            Ok((bucket.to_string(), key.to_string()))
        }
        _ => Err(UploadError::destination(format!(
            "{url}: expected s3://BUCKET/KEY"
        ))),
    }
}

/// Credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
/// (/ AWS_SESSION_TOKEN), else from the shared credentials file
/// (AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials, profile AWS_PROFILE
/// or "default").
pub fn credentials_from_env() -> Result<Credentials, UploadError> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let (Some(access_key), Some(secret_key)) =
        (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"))
    {
        return Ok(Credentials {
            access_key,
            secret_key,
            session_token: var("AWS_SESSION_TOKEN"),
        });
    }
    let path = var("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".aws/credentials")))
        .ok_or_else(|| UploadError::credentials("no AWS_ACCESS_KEY_ID and no HOME"))?;
    let profile = var("AWS_PROFILE").unwrap_or_else(|| "default".into());
    let text = std::fs::read_to_string(&path).map_err(|e| {
        UploadError::credentials(format!(
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY are not set and {} cannot be read: {e}",
            path.display()
        ))
        .because(e)
    })?;
    parse_profile(&text, &profile).ok_or_else(|| {
        UploadError::credentials(format!(
            "profile [{profile}] in {} has no aws_access_key_id/aws_secret_access_key",
            path.display()
        ))
    })
}

/// The keys of `[profile]` in an INI credentials file.
fn parse_profile(text: &str, profile: &str) -> Option<Credentials> {
    let mut in_profile = false;
    let (mut ak, mut sk, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_profile = line.trim_matches(['[', ']']).trim() == profile;
            continue;
        }
        if !in_profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim() {
                "aws_access_key_id" => ak = Some(v),
                "aws_secret_access_key" => sk = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    Some(Credentials {
        access_key: ak?,
        secret_key: sk?,
        session_token: token,
    })
}

/// Signed requests to one object.
struct Client {
    agent: ureq::Agent,
    config: S3Config,
    /// `scheme://host[:port]`
    base: String,
    host: String,
    /// URI-encoded path of the object.
    path: String,
    display: String,
}

impl Client {
    fn new(config: S3Config) -> Result<Client, UploadError> {
        let encoded_key = sigv4::uri_encode(&config.key, true);
        let (base, path) = match &config.endpoint {
            Some(endpoint) => (
                endpoint.trim_end_matches('/').to_string(),
                format!(
                    "/{}/{encoded_key}",
                    sigv4::uri_encode(&config.bucket, false)
                ),
            ),
            None => (
                format!(
                    "https://{}.s3.{}.amazonaws.com",
                    config.bucket, config.region
                ),
                format!("/{encoded_key}"),
            ),
        };
        let host = base
            .split_once("://")
            .map(|(_, h)| h.to_string())
            .ok_or_else(|| UploadError::destination(format!("endpoint {base}: no scheme")))?;
        if host.contains('/') {
            return Err(UploadError::destination(format!(
                "endpoint {}: give only scheme://host[:port]",
                crate::redact(&base)
            )));
        }
        let agent = http::agent(config.ca_file.as_deref(), config.timeout)?;
        let display = format!("s3://{}/{}", config.bucket, config.key);
        Ok(Client {
            agent,
            config,
            base,
            host,
            path,
            display,
        })
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        body: &[u8],
        what: &str,
    ) -> Result<Reply, UploadError> {
        let payload = hex::encode(Sha256::digest(body));
        let headers = sigv4::sign(
            &sigv4::Request {
                method,
                host: &self.host,
                path,
                query,
                payload_sha256: &payload,
            },
            &self.config.credentials,
            &self.config.region,
            SystemTime::now(),
        );
        let mut url = format!("{}{path}", self.base);
        if !query.is_empty() {
            url.push('?');
            url.push_str(
                &query
                    .iter()
                    .map(|(k, v)| {
                        if v.is_empty() {
                            sigv4::uri_encode(k, false)
                        } else {
                            format!(
                                "{}={}",
                                sigv4::uri_encode(k, false),
                                sigv4::uri_encode(v, false)
                            )
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("&"),
            );
        }
        let uri: ureq::http::Uri = url.parse().map_err(|e| {
            UploadError::destination(format!("{}: {e}", crate::redact(&url))).because(e)
        })?;
        let mut builder = ureq::http::Request::builder().method(method).uri(uri);
        for (k, v) in &headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let request = builder
            .body(body)
            .map_err(|e| UploadError::destination(e.to_string()).because(e))?;
        let reply = http::reply(what, self.agent.run(request))?;
        if !(200..300).contains(&reply.status) {
            return Err(http::status_error(what, &reply));
        }
        // S3 can answer 200 and put an error in the body (Complete).
        if reply.body.contains("<Error>") {
            return Err(http::status_error(what, &reply));
        }
        Ok(reply)
    }

    fn create(&self) -> Result<String, UploadError> {
        let what = format!("starting the multipart upload of {}", self.display);
        let reply = with_retries(&self.config.retry, &|| false, || {
            self.request("POST", &self.path, &[("uploads", "")], b"", &what)
        })?;
        http::xml_value(&reply.body, "UploadId")
            .ok_or_else(|| UploadError::protocol(format!("{what}: the reply has no UploadId")))
    }

    fn upload_part(
        &self,
        upload_id: &str,
        number: u32,
        data: &[u8],
        stop: &dyn Fn() -> bool,
    ) -> Result<String, UploadError> {
        let what = format!("part {number} of {}", self.display);
        let n = number.to_string();
        let reply = with_retries(&self.config.retry, stop, || {
            self.request(
                "PUT",
                &self.path,
                &[("partNumber", &n), ("uploadId", upload_id)],
                data,
                &what,
            )
        })?;
        reply
            .etag
            .ok_or_else(|| UploadError::protocol(format!("{what}: no ETag in the reply")))
    }

    fn complete(&self, upload_id: &str, parts: &[(u32, String)]) -> Result<(), UploadError> {
        let mut xml = String::from("<CompleteMultipartUpload>");
        for (n, etag) in parts {
            xml.push_str(&format!(
                "<Part><PartNumber>{n}</PartNumber><ETag>{}</ETag></Part>",
                etag.replace('&', "&amp;").replace('<', "&lt;")
            ));
        }
        xml.push_str("</CompleteMultipartUpload>");
        let what = format!("completing {}", self.display);
        with_retries(&self.config.retry, &|| false, || {
            self.request(
                "POST",
                &self.path,
                &[("uploadId", upload_id)],
                xml.as_bytes(),
                &what,
            )
        })?;
        Ok(())
    }

    fn abort(&self, upload_id: &str) -> Result<(), UploadError> {
        let what = format!("aborting the upload of {}", self.display);
        with_retries(&self.config.retry, &|| false, || {
            self.request("DELETE", &self.path, &[("uploadId", upload_id)], b"", &what)
        })?;
        Ok(())
    }

    /// One PUT of a small object (the manifest, the symbols).
    fn put(&self, path: &str, body: &[u8], what: &str) -> Result<(), UploadError> {
        with_retries(&self.config.retry, &|| false, || {
            self.request("PUT", path, &[], body, what)
        })?;
        Ok(())
    }
}

/// One S3 multipart upload as a [`PartSink`].
struct S3Parts {
    client: Client,
    upload_id: String,
}

impl PartSink for S3Parts {
    fn upload_part(
        &self,
        number: u32,
        data: &[u8],
        stop: &dyn Fn() -> bool,
    ) -> Result<String, UploadError> {
        self.client.upload_part(&self.upload_id, number, data, stop)
    }

    fn complete(&self, parts: &[(u32, String)]) -> Result<(), UploadError> {
        self.client.complete(&self.upload_id, parts)
    }

    fn abort(&self) -> Result<(), UploadError> {
        self.client.abort(&self.upload_id)
    }
}

/// Starts a multipart upload; the returned [`PartUpload`] is an
/// [`crate::remote::Upload`].
pub fn start(config: S3Config) -> Result<PartUpload, UploadError> {
    let part_size = config.part_size.max(MIN_PART);
    let workers = config.workers;
    let client = Client::new(config)?;
    let upload_id = client.create()?;
    Ok(PartUpload::start(
        Arc::new(S3Parts { client, upload_id }),
        part_size,
        workers,
        MAX_PARTS,
    ))
}

/// Uploads `companion` next to the image as KEY.json or KEY.symbols.
pub fn put_beside(config: S3Config, companion: Companion, body: &[u8]) -> Result<(), UploadError> {
    let client = Client::new(config)?;
    let suffix = companion.suffix();
    let path = format!("{}{suffix}", client.path);
    let what = format!("{} {}{suffix}", companion.description(), client.display);
    client.put(&path, body, &what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_profiles_parse() {
        assert_eq!(
            parse_url("s3://b/dir/img.lime").unwrap(),
            ("b".to_string(), "dir/img.lime".to_string())
        );
        assert!(parse_url("s3://b").is_err());
        assert!(parse_url("s3:///k").is_err());
        let text = "[default]\naws_access_key_id = A\naws_secret_access_key = S\n[other]\naws_access_key_id=B\naws_secret_access_key=T\naws_session_token=X\n";
        let c = parse_profile(text, "other").unwrap();
        assert_eq!(
            (c.access_key.as_str(), c.session_token.as_deref()),
            ("B", Some("X"))
        );
        assert!(parse_profile(text, "none").is_none());
        assert!(!format!("{c:?}").contains('T'));
    }
}
