//! Benchmark helpers run inside the guest by testing/bench/bench.py:
//!
//! * `measure RESULT -- CMD ARGS...`: runs CMD (stdio inherited), then
//!   writes "seconds peak_rss_kib exit_code" to RESULT. The peak RSS is the
//!   child's own high-water mark (VmHWM) from wait4's rusage: busybox
//!   `time -v` over-reports it about 4x.
//! * `read-kcore [--to-stdout | --snappy]`: the read limit: reads the
//!   System RAM segments of /proc/kcore in 16 MiB requests (as `dd bs=16M`)
//!   and discards them; prints "bytes seconds" (on stderr with
//!   `--to-stdout`). `--to-stdout` writes them to standard output (a pipe
//!   widened to 1 MiB, as pmem does): the floor of any tool that streams
//!   the bytes. `--snappy` runs pmem's AVML chunk encoder (snappy + CRC-32C)
//!   over them on this one thread: the floor of compressing on one CPU.
//! * `hash-speed MIB [blake3|sha256|xxh3|copy]`: pmem's image hash
//!   (pmem-core's digest, SHA-256 by default) over MIB MiB held in memory:
//!   the floor an acquisition that hashes its output on one CPU cannot go
//!   below. For scale, `xxh3` is the re-read's page digest (XXH3-64 of each
//!   4 KiB page, non-cryptographic: about as fast as a hash of every byte
//!   gets) and `copy` one copy of the bytes into another buffer.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Instant;

pub fn main(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("measure") => measure(&args[1..]),
        Some("read-kcore") => read_kcore(args.get(1).map(String::as_str)),
        Some("hash-speed") => hash_speed(
            args.get(1).map_or("1024", String::as_str),
            args.get(2).map_or("sha256", String::as_str),
        ),
        _ => Err(
            "usage: measure RESULT -- CMD ARGS... | read-kcore [--to-stdout | --snappy] \
             | hash-speed MIB [blake3|sha256|xxh3|copy]"
                .into(),
        ),
    }
}

fn measure(args: &[String]) -> Result<(), String> {
    let (result, cmd) = match args {
        [result, dash, cmd @ ..] if dash == "--" && !cmd.is_empty() => (result, cmd),
        _ => return Err("usage: measure RESULT -- CMD ARGS...".into()),
    };
    let started = Instant::now();
    let child = std::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .spawn()
        .map_err(|e| format!("{}: {e}", cmd[0]))?;
    let mut status = 0;
    // SAFETY: wait4 writes only into the two out-parameters we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    let seconds = started.elapsed().as_secs_f64();
    if pid < 0 {
        return Err(format!("wait4: {}", std::io::Error::last_os_error()));
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    std::fs::write(result, format!("{seconds:.3} {} {code}\n", usage.ru_maxrss))
        .map_err(|e| format!("{result}: {e}"))
}

/// Top-level "System RAM" ranges of /proc/iomem, end exclusive.
fn system_ram() -> Result<Vec<(u64, u64)>, String> {
    let text = std::fs::read_to_string("/proc/iomem").map_err(|e| format!("/proc/iomem: {e}"))?;
    let mut ram = Vec::new();
    for line in text.lines() {
        if line.starts_with(' ') || !line.ends_with(" : System RAM") {
            continue;
        }
        let range = line.split(' ').next().unwrap_or("");
        if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (
                u64::from_str_radix(a, 16).map_err(|e| e.to_string())?,
                u64::from_str_radix(b, 16).map_err(|e| e.to_string())?,
            );
            ram.push((a, b + 1));
        }
    }
    Ok(ram)
}

fn read_kcore(mode: Option<&str>) -> Result<(), String> {
    let (mut to, mut snappy) = (None, None);
    match mode {
        None => {}
        // pmem's own standard output, widened as pmem widens it.
        Some("--to-stdout") => to = Some(pmem_core::sink::stdout_stream()),
        Some("--snappy") => snappy = Some(pmem_formats::avml::FrameEncoder::default()),
        Some(other) => return Err(format!("read-kcore: unknown option {other}")),
    }
    let mut chunks = Vec::with_capacity(1 << 20);
    let mut compressed = 0u64;
    let ram = system_ram()?;
    let kcore = File::open("/proc/kcore").map_err(|e| format!("/proc/kcore: {e}"))?;
    let mut header = [0u8; 64];
    kcore
        .read_exact_at(&mut header, 0)
        .map_err(|e| e.to_string())?;
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let (phoff, phentsize, phnum) = (
        u64_at(&header, 32),
        u16_at(&header, 54),
        u16_at(&header, 56),
    );
    let mut phdrs = vec![0u8; usize::from(phentsize) * usize::from(phnum)];
    kcore
        .read_exact_at(&mut phdrs, phoff)
        .map_err(|e| e.to_string())?;
    // The RAM pieces: PT_LOAD segments whose physical address lies in RAM.
    let mut pieces = Vec::new();
    for ph in phdrs.chunks_exact(usize::from(phentsize)) {
        let (kind, offset, paddr, size) = (
            u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]),
            u64_at(ph, 8),
            u64_at(ph, 24),
            u64_at(ph, 32),
        );
        if kind != 1 || paddr == u64::MAX {
            continue;
        }
        for &(start, end) in &ram {
            let (a, b) = (start.max(paddr), end.min(paddr.saturating_add(size)));
            if a < b {
                pieces.push((offset + (a - paddr), b - a));
            }
        }
    }
    let started = Instant::now();
    let mut buf = vec![0u8; 16 << 20];
    let mut total = 0u64;
    for (offset, len) in pieces {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            kcore
                .read_exact_at(&mut buf[..n], offset + done)
                .map_err(|e| format!("/proc/kcore at {:#x}: {e}", offset + done))?;
            if let Some(out) = &mut to {
                out.write_all(&buf[..n])
                    .map_err(|e| format!("stdout: {e}"))?;
            }
            if let Some(encoder) = &mut snappy {
                for frame in buf[..n].chunks(pmem_formats::avml::FRAME) {
                    compressed += encoder.encode(frame, &mut chunks) as u64;
                    chunks.clear();
                }
            }
            done += n as u64;
        }
        total += len;
    }
    let seconds = started.elapsed().as_secs_f64();
    if snappy.is_some() {
        println!("{total} {seconds:.3} {compressed}");
    } else if to.is_some() {
        eprintln!("{total} {seconds:.3}");
    } else {
        println!("{total} {seconds:.3}");
    }
    Ok(())
}

fn hash_speed(mib: &str, algorithm: &str) -> Result<(), String> {
    use pmem_core::sink::{HashAlgorithm, ImageDigest};
    let mib: usize = mib.parse().map_err(|e| format!("{mib}: {e}"))?;
    // 4 MiB of varied bytes, hashed over and over (no candidate's cost
    // depends on the content).
    let buf: Vec<u8> = (0..4usize << 20)
        .map(|i| ((i * 2654435761) >> 13) as u8)
        .collect();
    let rounds = mib.div_ceil(4);
    let started = Instant::now();
    let check = match algorithm {
        "xxh3" => {
            let mut sum = 0u64;
            for _ in 0..rounds {
                for page in buf.chunks(4096) {
                    sum = sum.wrapping_add(pmem_core::window::page_digest(page));
                }
            }
            sum as u8
        }
        "copy" => {
            let mut to = vec![0u8; buf.len()];
            for _ in 0..rounds {
                to.copy_from_slice(std::hint::black_box(&buf));
            }
            std::hint::black_box(&to)[1]
        }
        name => {
            let algorithm = HashAlgorithm::from_name(name)
                .ok_or_else(|| format!("{name}: not blake3, sha256, xxh3 or copy"))?;
            let mut digest = ImageDigest::new(algorithm);
            for _ in 0..rounds {
                digest.update(&buf);
            }
            digest.finish().map_or(0, |h| h.hex().as_bytes()[0])
        }
    };
    println!(
        "{algorithm}: {mib} MiB in {:.3} s ({check:02x})",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
