//! pmem: copy a machine's physical memory into an image file, and read,
//! convert and verify such images.

mod acquire;
mod carried_symbols;
mod compress;
mod convert;
mod destination;
mod errors;
mod host;
mod image;
mod image_origin;
mod info;
mod interrupt;
mod job;
mod live;
mod manifest;
#[cfg(target_os = "linux")]
mod module;
#[cfg(target_os = "linux")]
mod mount;
mod output_args;
mod symbols;
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
    /// Write a Volatility 3 symbol table (ISF) from a Linux kernel's BTF and kallsyms.
    Symbols(symbols::Args),
    /// pmem's read-only kernel module for Linux machines without a usable
    /// /proc/kcore: build it for a kernel, load, unload, write its source.
    #[cfg(target_os = "linux")]
    Module(module::Args),
    /// Serve this machine's physical memory read-only as files (memory.raw,
    /// memory.lime, memory.elf, iomem, symbols) for live analysis (needs root).
    #[cfg(target_os = "linux")]
    Mount(mount::Args),
    /// Load or unload the WinPmem driver for live analysis tools, or
    /// extract the driver embedded at build time.
    #[cfg(windows)]
    Driver(windows::DriverArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The commands that write an image record an interruption in its
    // manifest (the others keep the default: a signal ends them).
    let result = match cli.command {
        Command::Acquire(args) => acquire::run(args, &interrupt::install()),
        Command::Info(args) => info::run(args),
        Command::Convert(args) => convert::run(args, &interrupt::install()),
        Command::Verify(args) => verify::run(args),
        Command::Decrypt(args) => upload::decrypt(args),
        Command::Receive(args) => upload::receive(args),
        Command::Symbols(args) => symbols::run(args),
        #[cfg(target_os = "linux")]
        Command::Module(args) => module::run(args),
        #[cfg(target_os = "linux")]
        Command::Mount(args) => mount::run(args),
        #[cfg(windows)]
        Command::Driver(args) => windows::driver(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("pmem: error: {}", errors::error_text(&err));
            ExitCode::FAILURE
        }
    }
}
