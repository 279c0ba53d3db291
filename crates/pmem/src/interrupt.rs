//! SIGINT and SIGTERM during `acquire` and `convert`. The signals are taken
//! by one thread (sigwait), not by an async handler, so recording them may
//! allocate and write files: the manifest is rewritten with `complete:
//! false`, `error: "interrupted by SIGINT"` and `finished_at`, the image
//! written so far is synced and kept, and pmem exits with 128 + the signal
//! number (what a shell reports for a process the signal ended).

use crate::destination::Encryption;
use crate::manifest::Manifest;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The job a signal would interrupt: its manifest as last written. (Read
/// only where signals are taken: Unix.)
#[cfg_attr(not(unix), allow(dead_code))]
pub struct Watched {
    pub manifest: Manifest,
    pub manifest_path: Option<PathBuf>,
    /// The image file (none for standard output and remote destinations).
    pub image: Option<PathBuf>,
    pub started: Instant,
    /// The manifest is encrypted like the job's (--encrypt-to).
    pub encryption: Option<Encryption>,
}

/// What the signal thread and the job share: the job leaves its manifest
/// here, the thread records an interruption in it. A value the job is
/// given (`Job::watch`), not a static: the signals are taken by a thread,
/// not by an async handler, and a thread can be handed an `Arc`.
#[derive(Default)]
pub struct Watch(Mutex<Option<Watched>>);

impl Watch {
    /// Runs `f` on the watched job. A signal arriving meanwhile is recorded
    /// only after `f` returns, so the manifest is never written by both.
    pub fn with<T>(&self, f: impl FnOnce(&mut Option<Watched>) -> T) -> T {
        let mut watched = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut watched)
    }
}

/// Routes SIGINT and SIGTERM to a thread that records them in the returned
/// watch. Call before any other thread starts: the threads started later
/// inherit the blocked mask, so only that thread sees the signals. The
/// mask is process-wide (the OS has one per process for this): a process
/// installs once.
#[cfg(unix)]
pub fn install() -> Arc<Watch> {
    let watch = Arc::new(Watch::default());
    let watched = watch.clone();
    // SAFETY: plain libc calls on a sigset_t owned here.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return watch;
        }
        let spawned = std::thread::Builder::new()
            .name("pmem-signals".into())
            .spawn(move || {
                let mut signal = 0;
                while libc::sigwait(&set, &mut signal) != 0 {}
                interrupted(&watched, signal)
            });
        if spawned.is_err() {
            // Nobody would take them: let the signals end pmem as before.
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        }
    }
    watch
}

/// Elsewhere a signal ends pmem as it always does: nobody reads the watch.
#[cfg(not(unix))]
pub fn install() -> Arc<Watch> {
    Arc::new(Watch::default())
}

#[cfg(unix)]
fn interrupted(watch: &Watch, signal: i32) -> ! {
    let name = match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    };
    // The lock is held until exit: the job cannot write its own manifest
    // after this one.
    watch.with(|watched| {
        eprintln!();
        if let Some(job) = watched.take() {
            record(job, name);
        } else {
            eprintln!("pmem: interrupted by {name}");
        }
        std::process::exit(128 + signal)
    })
}

#[cfg(unix)]
fn record(job: Watched, name: &str) {
    let mut manifest = job.manifest;
    manifest.complete = false;
    manifest.error = Some(format!("interrupted by {name}"));
    manifest.finished_at = Some(crate::host::now());
    manifest.seconds = Some(job.started.elapsed().as_secs_f64());
    if let Some(image) = &job.image {
        // Whatever reached the image is kept: synced, and its length recorded.
        if let Ok(file) = std::fs::File::open(image) {
            let _ = file.sync_all();
            if let Ok(meta) = file.metadata() {
                manifest.bytes.image = meta.len();
            }
            let _ = crate::manifest::sync_parent(image);
        }
    }
    let kept = job.image.as_ref().map_or_else(String::new, |p| {
        format!("; {} keeps what was written", p.display())
    });
    match &job.manifest_path {
        Some(path) => match crate::destination::manifest_bytes(&manifest, job.encryption.as_ref())
            .and_then(|text| {
                crate::manifest::write(path, &text, crate::manifest::Existing::Replace)
            }) {
            Ok(()) => eprintln!(
                "pmem: interrupted by {name}{kept}; {} says it is incomplete",
                path.display()
            ),
            Err(err) => eprintln!(
                "pmem: interrupted by {name}{kept}; the manifest could not be updated: {}",
                crate::errors::error_text(&err)
            ),
        },
        None => eprintln!("pmem: interrupted by {name}{kept}"),
    }
}
