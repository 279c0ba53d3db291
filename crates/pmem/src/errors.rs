//! How an error reads on stderr and in a manifest's `error` field.

/// An error and its causes on one line, `context: cause: ...`, each cause
/// once: many error types already print their source in their own message
/// (`cannot open X: No such file`), which `{:#}` would repeat.
pub fn error_text(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_says_each_cause_once() {
        let io = std::io::Error::from_raw_os_error(libc::ENOENT);
        let err = anyhow::Error::from(pmem_sources::SourceError::Open {
            kind: pmem_sources::SourceKind::Crash,
            path: "/dev/crash".into(),
            source: io,
            hint: "; is the crash module loaded?".into(),
        })
        .context("opening the source");
        let text = error_text(&err);
        assert_eq!(text.matches("No such file").count(), 1, "{text}");
        assert!(text.starts_with("opening the source: cannot open /dev/crash (crash source): "));
        // Causes that add something are kept.
        let err = anyhow::anyhow!("not hex").context("--cr3 zz");
        assert_eq!(error_text(&err), "--cr3 zz: not hex");
    }
}
