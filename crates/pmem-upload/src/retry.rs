//! Bounded retries with exponential backoff for network requests: a
//! dropped connection, a timeout, HTTP 5xx, 429 or 408 are tried again; any
//! other answer is final.

use crate::UploadError;
use std::time::Duration;

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Tries in all, the first included (1: no retry).
    pub attempts: u32,
    /// Wait before the first retry; doubled before each next one.
    pub first_delay: Duration,
    /// Longest wait between two tries.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(8),
        }
    }
}

/// True for errors worth another attempt.
pub fn retryable(err: &UploadError) -> bool {
    match err {
        UploadError::Transport { .. } | UploadError::Io(_) => true,
        UploadError::Http { status, .. } => *status >= 500 || *status == 429 || *status == 408,
        _ => false,
    }
}

/// Runs `op` until it succeeds, fails for good, or runs out of attempts;
/// `stop` is checked before each retry (another part already failed).
pub fn with_retries<T>(
    policy: &RetryPolicy,
    stop: &dyn Fn() -> bool,
    mut op: impl FnMut() -> Result<T, UploadError>,
) -> Result<T, UploadError> {
    let mut delay = policy.first_delay;
    let mut attempt = 1;
    loop {
        match op() {
            Ok(v) => return Ok(v),
            Err(e) if attempt < policy.attempts && retryable(&e) && !stop() => {
                std::thread::sleep(delay);
                delay = (delay * 2).min(policy.max_delay);
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}
