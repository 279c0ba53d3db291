//! `churn`: memory that changes at a known rate while pmem copies, for the
//! guest suite's smear checks (`testing/guest/windowcheck.py`).
//!
//! ```text
//! pmem-guest-agent churn --mib 160 --rate-mib 4 --ready PATH --stop PATH --report PATH
//! ```
//!
//! Maps `--mib` MiB of anonymous memory, touches and locks it, creates
//! `--ready`, then rewrites `--rate-mib` MiB of it per second, one page
//! after the other (8 bytes per page: a counter that never repeats, so every
//! rewrite changes the page's content), until `--stop` appears. The report
//! says how many pages were rewritten over how long, and whether the
//! rewrites went round the buffer (then a page may have been rewritten
//! twice and the host's arithmetic no longer holds).

use crate::agent::Planted;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const PAGE: usize = 4096;
/// Pacing step: the churn catches up with its rate every tick.
const TICK: Duration = Duration::from_millis(10);

struct Args {
    mib: usize,
    rate_mib: f64,
    ready: PathBuf,
    stop: PathBuf,
    report: PathBuf,
    timeout: Duration,
}

const USAGE: &str = "usage: pmem-guest-agent churn --mib N --rate-mib N --ready PATH \
--stop PATH --report PATH [--timeout-secs N]";

fn parse(argv: &[String]) -> Result<Args, String> {
    let (mut mib, mut rate, mut ready, mut stop, mut report) = (None, None, None, None, None);
    let mut timeout = Duration::from_secs(1800);
    let mut it = argv.iter().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = || {
            value
                .parse::<f64>()
                .map_err(|e| format!("{flag} {value}: {e}"))
        };
        match flag.as_str() {
            "--mib" => mib = Some(number()? as usize),
            "--rate-mib" => rate = Some(number()?),
            "--ready" => ready = Some(PathBuf::from(value)),
            "--stop" => stop = Some(PathBuf::from(value)),
            "--report" => report = Some(PathBuf::from(value)),
            "--timeout-secs" => timeout = Duration::from_secs_f64(number()?),
            _ => return Err(format!("unknown option {flag}\n{USAGE}")),
        }
    }
    let missing = |name: &str| format!("missing {name}\n{USAGE}");
    Ok(Args {
        mib: mib.filter(|&m| m > 0).ok_or_else(|| missing("--mib"))?,
        rate_mib: rate
            .filter(|&r| r > 0.0)
            .ok_or_else(|| missing("--rate-mib"))?,
        ready: ready.ok_or_else(|| missing("--ready"))?,
        stop: stop.ok_or_else(|| missing("--stop"))?,
        report: report.ok_or_else(|| missing("--report"))?,
        timeout,
    })
}

/// Runs the churn; the report's text, or why it could not run.
pub fn main(argv: &[String]) -> Result<(), String> {
    let args = parse(argv)?;
    let len = args.mib << 20;
    let pages = len / PAGE;
    let mut buffer = Planted::map(pages)?;
    let base = buffer.bytes_mut().as_mut_ptr();
    // Every page holds something before the copy (no shared zero page).
    for page in 0..pages {
        // SAFETY: inside the mapping, 8-byte aligned (page-aligned).
        unsafe { std::ptr::write_volatile(base.add(page * PAGE).cast::<u64>(), u64::MAX) };
    }
    buffer.lock()?;
    std::fs::write(&args.ready, "ready\n")
        .map_err(|e| format!("write {}: {e}", args.ready.display()))?;
    let per_second = args.rate_mib * (1 << 20) as f64 / PAGE as f64;
    let started = Instant::now();
    let mut written: u64 = 0;
    while !args.stop.exists() {
        let elapsed = started.elapsed();
        if elapsed > args.timeout {
            return Err(format!("{} did not appear in time", args.stop.display()));
        }
        let due = (elapsed.as_secs_f64() * per_second) as u64;
        while written < due {
            let page = (written % pages as u64) as usize;
            // SAFETY: inside the mapping, page-aligned.
            unsafe { std::ptr::write_volatile(base.add(page * PAGE).cast::<u64>(), written) };
            written += 1;
        }
        std::thread::sleep(TICK);
    }
    let seconds = started.elapsed().as_secs_f64();
    let report = format!(
        "buffer_pages {pages}\npages_written {written}\nseconds {seconds:.3}\nrate_pages_per_s {:.1}\nwrapped {}\n",
        written as f64 / seconds,
        written > pages as u64
    );
    std::fs::write(&args.report, &report)
        .map_err(|e| format!("write {}: {e}", args.report.display()))?;
    eprint!("pmem-guest-agent churn: {}", report.replace('\n', "; "));
    eprintln!();
    drop(buffer);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churn_rewrites_at_its_rate_until_stopped() {
        let dir = std::env::temp_dir().join(format!("pmem-churn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = |name: &str| dir.join(name).display().to_string();
        let argv: Vec<String> = [
            "churn",
            "--mib",
            "4",
            "--rate-mib",
            "8",
            "--ready",
            &path("ready"),
            "--stop",
            &path("stop"),
            "--report",
            &path("report"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let stop = dir.join("stop");
        let ready = dir.join("ready");
        let run = std::thread::spawn(move || main(&argv));
        while !ready.exists() {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(250));
        std::fs::write(&stop, "").unwrap();
        // mlock may be refused to an unprivileged test: that is an error,
        // not a churn.
        match run.join().unwrap() {
            Ok(()) => {
                let report = std::fs::read_to_string(dir.join("report")).unwrap();
                let field = |name: &str| -> f64 {
                    report
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .unwrap()
                        .trim()
                        .parse()
                        .unwrap()
                };
                assert_eq!(field("buffer_pages"), 1024.0);
                // 8 MiB/s = 2048 pages/s, give or take the pacing tick.
                let rate = field("rate_pages_per_s");
                assert!((1200.0..=2100.0).contains(&rate), "{report}");
                assert!(report.contains("wrapped false"), "{report}");
            }
            Err(e) => assert!(e.contains("mlock"), "{e}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn arguments_are_required() {
        assert!(parse(&["churn".to_string()]).is_err());
    }
}
