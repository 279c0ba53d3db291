//! In-guest helper of pmem's QEMU end-to-end harness (`testing/guest`).
//!
//! It plants pages of known content in the guest's RAM, finds out where they
//! landed physically, and holds them still until the host has taken both
//! pmem's images and QEMU's ground-truth dump. The host then checks that every
//! planted page appears byte-exact at its physical address in each image.
//!
//! ```text
//! pmem-guest-agent plant --seed 0x1234 --pages 16384 --list markers.txt \
//!     --ready /tmp/ready --release /tmp/release --report report.txt
//! ```
//!
//! 1. map `--pages` anonymous pages, fill each one from (seed, index) and lock
//!    them in RAM (mlock: no swap-out, no migration by reclaim);
//! 2. read `/proc/self/pagemap` (needs root) to learn each page's frame and
//!    write the marker list to `--list`, then create `--ready`;
//! 3. wait for `--release` to appear (the host has dumped memory by then);
//! 4. read the frames again: a page that moved while the images were taken
//!    would make the comparison meaningless, so a move is reported (in
//!    `--report`) and fails the run.
//!
//! The page format is shared with `testing/guest/markers.py`, which
//! regenerates it independently on the host:
//!
//! | bytes     | content                                                   |
//! |-----------|-----------------------------------------------------------|
//! | 0..8      | `PMEMMARK`                                                |
//! | 8..16     | seed, u64 little-endian                                   |
//! | 16..24    | page index, u64 little-endian                             |
//! | 24..32    | number of pages planted, u64 little-endian                |
//! | 32..4096  | 127 blocks: block j = SHA-256(seed ‖ index ‖ j), each u64 LE |

//! The agent runs only inside the Linux test guests; on other targets it
//! builds (so `cargo build` of the whole workspace works for Windows and
//! macOS) and says so when run.

#[cfg(target_os = "linux")]
mod agent;
#[cfg(target_os = "linux")]
mod bench;
#[cfg(target_os = "linux")]
mod churn;
#[cfg(target_os = "linux")]
mod live_page;

#[cfg(target_os = "linux")]
fn main() -> std::process::ExitCode {
    agent::main()
}

#[cfg(not(target_os = "linux"))]
fn main() -> std::process::ExitCode {
    eprintln!("pmem-guest-agent runs only inside pmem's Linux test guests");
    std::process::ExitCode::FAILURE
}
