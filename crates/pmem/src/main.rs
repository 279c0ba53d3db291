//! pmem: copy a machine's physical memory into an image file, and read,
//! convert and verify such images.

mod acquire;
mod compress;
mod convert;
mod host;
mod image;
mod info;
mod interrupt;
mod job;
mod macos;
mod manifest;
#[cfg(target_os = "linux")]
mod module;
mod upload;
mod verify;
#[cfg(windows)]
mod windows;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "pmem", version, about = "Physical memory acquisition and image tools", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Acquire this machine's physical memory into an image (needs root).
    Acquire(acquire::Args),
    /// Show an image's format, physical ranges and embedded metadata.
    Info(info::Args),
    /// Convert an image into another format.
    Convert(convert::Args),
    /// Check an image against its manifest: hashes, ranges, completeness.
    Verify(verify::Args),
    /// Decrypt an age-encrypted image or manifest (like `age -d`).
    Decrypt(upload::DecryptArgs),
    /// Receive an image streamed with `pmem acquire tls://HOST:PORT`.
    Receive(upload::ReceiveArgs),
    /// pmem's read-only kernel module for Linux machines without a usable
    /// /proc/kcore: build it for a kernel, load, unload, write its source.
    #[cfg(target_os = "linux")]
    Module(module::Args),
    /// Load or unload the WinPmem driver for live analysis tools, or
    /// extract the driver embedded at build time.
    #[cfg(windows)]
    Driver(windows::DriverArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The commands that write an image record an interruption in its
    // manifest (the others keep the default: a signal ends them).
    if matches!(cli.command, Command::Acquire(_) | Command::Convert(_)) {
        interrupt::install();
    }
    let result = match cli.command {
        Command::Acquire(args) => acquire::run(args),
        Command::Info(args) => info::run(args),
        Command::Convert(args) => convert::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Decrypt(args) => upload::decrypt(args),
        Command::Receive(args) => upload::receive(args),
        #[cfg(target_os = "linux")]
        Command::Module(args) => module::run(args),
        #[cfg(windows)]
        Command::Driver(args) => windows::driver(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("pmem: error: {}", error_text(&err));
            ExitCode::FAILURE
        }
    }
}

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
