//! `pmem decrypt` and `pmem receive`: the commands that take back what an
//! acquisition encrypted or streamed (destination.rs sends it).

use anyhow::{Context, Result};
use pmem_core::sink::hex;
use pmem_upload::encrypt::Identities;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct DecryptArgs {
    /// age identity file (as age-keygen writes it).
    #[arg(long, short)]
    identity: PathBuf,
    /// Overwrite an existing output.
    #[arg(long)]
    force: bool,
    /// Encrypted image or manifest, or - for standard input.
    input: PathBuf,
    /// Where the plaintext goes, or - for standard output.
    output: PathBuf,
}

/// `pmem decrypt`: what `age -d -i IDENTITY` does, without needing age.
pub fn decrypt(args: DecryptArgs) -> Result<ExitCode> {
    let identities = Identities::from_file(&args.identity)?;
    let input: Box<dyn Read> = if args.input == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(
            std::fs::File::open(&args.input)
                .with_context(|| format!("opening {}", args.input.display()))?,
        )
    };
    let mut reader = identities
        .decrypt(std::io::BufReader::with_capacity(1 << 20, input))
        .with_context(|| format!("decrypting {}", args.input.display()))?;
    let mut output: Box<dyn Write> = if args.output == Path::new("-") {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(
            pmem_core::sink::create_image_file(&args.output, args.force)
                .with_context(|| format!("creating {}", args.output.display()))?,
        )
    };
    // A cut or tampered ciphertext fails here (age authenticates each
    // 64 KiB chunk and marks the last one): never a silent short output.
    let bytes = std::io::copy(&mut reader, &mut output)
        .with_context(|| format!("decrypting {}", args.input.display()))?;
    output.flush()?;
    eprintln!("pmem: decrypted {bytes} bytes");
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct ReceiveArgs {
    /// Address to listen on, e.g. 0.0.0.0:4433 (port 0: any free port).
    #[arg(long)]
    listen: String,
    /// PEM certificate (chain) the sender pins or verifies.
    #[arg(long)]
    cert: PathBuf,
    /// PEM private key of the certificate.
    #[arg(long)]
    key: PathBuf,
    /// Overwrite an existing image, symbols and manifest.
    #[arg(long)]
    force: bool,
    /// Where the image goes; its manifest goes to OUT.json, the kernel's
    /// symbols (when the image format has no room for them) to OUT.symbols.
    out: PathBuf,
}

/// `pmem receive`: the responder's side of `tls://`. Receives one image,
/// its symbols if they come, and its manifest, each written (mode 0600) to
/// NAME.partial and renamed only when its trailer (length and hash, in the
/// algorithm the sender named; SHA-256 from a version-1 sender) matches; a
/// cut stream exits non-zero.
pub fn receive(args: ReceiveArgs) -> Result<ExitCode> {
    let config = pmem_upload::tls::server_config(&args.cert, &args.key)?;
    let chain = pmem_upload::tls::read_certs(&args.cert)?;
    let fingerprint = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(
        chain[0].as_ref(),
    ));
    let listener = std::net::TcpListener::bind(&args.listen)
        .with_context(|| format!("listening on {}", args.listen))?;
    eprintln!(
        "pmem: listening on {} (certificate sha256 {})",
        listener.local_addr()?,
        hex(&fingerprint)
    );
    pmem_upload::tls::serve(&listener, config, &args.out, args.force, |got| match got {
        Ok(got) => eprintln!(
            "pmem: received {} bytes into {}, {} {}{}",
            got.bytes,
            got.path.display(),
            got.hash.algorithm,
            got.hash.hex(),
            if got.version == 1 {
                " (a version-1 sender)"
            } else {
                ""
            }
        ),
        Err(err) => eprintln!("pmem: {err}; still listening"),
    })
    .context("receiving")?;
    Ok(ExitCode::SUCCESS)
}
