//! `live-page`: one page of the agent's own memory whose content changes on
//! request, for the guest suite's `pmem mount` checks
//! (`testing/guest/mountcheck.py`): a read through the mount must see the
//! change at once.
//!
//! ```text
//! pmem-guest-agent live-page --dir DIR [--timeout-secs N]
//! ```
//!
//! Maps and locks one page and fills it with content "before"; writes
//! `DIR/frame` (the page frame number, decimal, from /proc/self/pagemap)
//! and `DIR/before`; creates `DIR/ready`. Then, until `DIR/stop` appears:
//! when `DIR/change` appears it fills the page with content "after",
//! writes `DIR/after` and creates `DIR/changed` (once); each time
//! `DIR/check` appears (the write checks of `pmem mount --write`,
//! testing/guest/module_cases.py) it removes it, writes what the page
//! holds now, as the agent sees it through its own virtual memory, to
//! `DIR/seen` and creates `DIR/checked`. On `DIR/stop` it checks that the
//! frame did not move and exits (non-zero if it did).

use crate::agent::Planted;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: pmem-guest-agent live-page --dir DIR [--timeout-secs N]";

/// Page content `tag` ("before" or "after"): the tag, then bytes that
/// differ between the two and from zero.
fn content(tag: &str) -> Vec<u8> {
    let salt = tag.len() as u8 * 37;
    let mut page: Vec<u8> = (0..4096u32)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(salt) | 1)
        .collect();
    let head = format!("pmem live page: {tag}\n");
    page[..head.len()].copy_from_slice(head.as_bytes());
    page
}

fn write(path: PathBuf, bytes: &[u8]) -> Result<(), String> {
    std::fs::write(&path, bytes).map_err(|e| format!("write {}: {e}", path.display()))
}

pub fn main(argv: &[String]) -> Result<(), String> {
    let (mut dir, mut timeout) = (None, Duration::from_secs(1800));
    let mut it = argv.iter().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--dir" => dir = Some(PathBuf::from(value)),
            "--timeout-secs" => {
                timeout = Duration::from_secs(value.parse().map_err(|e| format!("{value}: {e}"))?)
            }
            _ => return Err(format!("unknown option {flag}\n{USAGE}")),
        }
    }
    let dir = dir.ok_or_else(|| format!("missing --dir\n{USAGE}"))?;
    let deadline = Instant::now() + timeout;
    let mut page = Planted::map(1)?;
    let before = content("before");
    page.bytes_mut().copy_from_slice(&before);
    page.lock()?;
    let frame = page.frames()?[0];
    write(dir.join("frame"), format!("{frame}\n").as_bytes())?;
    write(dir.join("before"), &before)?;
    write(dir.join("ready"), b"ready\n")?;

    // Until stopped: change the page once asked to, and show what it holds
    // whenever asked.
    let (change, check, stop) = (dir.join("change"), dir.join("check"), dir.join("stop"));
    let mut changed = false;
    while !stop.exists() {
        if !changed && change.exists() {
            let after = content("after");
            page.bytes_mut().copy_from_slice(&after);
            write(dir.join("after"), &after)?;
            write(dir.join("changed"), b"changed\n")?;
            changed = true;
        }
        if check.exists() {
            std::fs::remove_file(&check).map_err(|e| format!("remove {}: {e}", check.display()))?;
            // Volatile reads: the page changes behind the compiler's back
            // (written through physical memory), so nothing read before
            // may be reused.
            let seen: Vec<u8> = page
                .bytes_mut()
                .iter()
                .map(|b| {
                    // SAFETY: `b` is a valid reference into the mapped page.
                    unsafe { std::ptr::read_volatile(b) }
                })
                .collect();
            write(dir.join("seen"), &seen)?;
            write(dir.join("checked"), b"checked\n")?;
        }
        if Instant::now() > deadline {
            return Err(format!("{} did not appear in time", stop.display()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let now = page.frames()?[0];
    if now != frame {
        return Err(format!("the page moved from frame {frame} to {now}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::content;

    #[test]
    fn before_and_after_differ_everywhere_but_the_tag_prefix() {
        let (before, after) = (content("before"), content("after"));
        assert_eq!(before.len(), 4096);
        assert!(before.iter().all(|&b| b != 0));
        let differing = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert!(differing > 4000, "{differing}");
    }
}
