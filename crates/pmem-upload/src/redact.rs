//! Making URLs safe to print, log or store in a manifest.
//!
//! Pre-signed S3/GCS URLs and Azure SAS URLs carry their credential in the
//! query string (`X-Amz-Signature`, `sig=`), and a URL may carry
//! `user:password@`. Both are replaced: whoever reads pmem's stderr or
//! manifest must not be able to upload to (or read) the destination.

/// The URL with its query string and user information replaced by
/// `REDACTED`. Text that is not a URL is returned unchanged.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let (scheme, rest) = url.split_at(scheme_end + 3);
    // A fragment could carry a secret too: cut at the first '?' or '#'.
    let (before_query, had_query) = match rest.find(['?', '#']) {
        Some(i) => (&rest[..i], true),
        None => (rest, false),
    };
    let authority_end = before_query.find('/').unwrap_or(before_query.len());
    let (authority, path) = before_query.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => format!("REDACTED@{}", &authority[at + 1..]),
        None => authority.to_string(),
    };
    let mut out = format!("{scheme}{authority}{path}");
    if had_query {
        out.push_str("?REDACTED");
    }
    out
}

/// Redacts every URL inside a free-form message (an HTTP library's
/// error text may quote the URL it was given).
pub fn redact_text(text: &str) -> String {
    text.split(' ')
        .map(|word| {
            if word.contains("://") {
                let start = word.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(0);
                format!("{}{}", &word[..start], redact(&word[start..]))
            } else {
                word.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::{redact, redact_text};

    #[test]
    fn urls_inside_messages_are_redacted() {
        assert_eq!(
            redact_text("io error for https://h/c/b?sig=abc: reset"),
            "io error for https://h/c/b?REDACTED reset"
        );
    }

    #[test]
    fn query_strings_and_user_info_are_removed() {
        assert_eq!(
            redact("https://acct.blob.core.windows.net/c/img.lime?sv=2021&sig=SECRET%3D"),
            "https://acct.blob.core.windows.net/c/img.lime?REDACTED"
        );
        assert_eq!(
            redact("https://u:pw@host:9000/b/k?X-Amz-Signature=abc"),
            "https://REDACTED@host:9000/b/k?REDACTED"
        );
        assert_eq!(redact("s3://bucket/key"), "s3://bucket/key");
        assert_eq!(redact("tls://10.0.0.1:4433"), "tls://10.0.0.1:4433");
        assert_eq!(redact("memory.lime"), "memory.lime");
        assert_eq!(redact("http://h/p#tok=1"), "http://h/p?REDACTED");
    }
}
