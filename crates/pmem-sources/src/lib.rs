//! Live physical-memory sources of pmem. On Linux: /proc/kcore, /dev/crash,
//! /dev/mem and pmem's own kernel module (/dev/pmem-phys), each bounded by
//! the "System RAM" of /proc/iomem; on macOS the MacPmem kext ([`macos`]);
//! on Windows the WinPmem driver ([`windows`]). [`open_live`] opens the
//! one of this OS and describes it the same way everywhere ([`LiveInfo`]).
//!
//! The parsers ([`iomem`], [`kcore`]) and the logic that turns an opened
//! file into a source are platform-neutral; only [`open`]'s device paths
//! and procfs access are Linux-only (elsewhere [`open`] says so).
//!
//! Every source reads whole pages of System RAM only: RAM that a source
//! can't give (a partial page at the end of an iomem range, RAM no kcore
//! segment covers) is listed in [`SourceInfo::not_acquired`], never dropped
//! silently.

#![warn(missing_docs)]

pub mod iomem;
pub mod kcore;
pub mod module;
pub mod reader;
// Used by the Linux opener and the tests only.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
mod devices;

#[cfg(target_os = "linux")]
mod linux;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub mod macos;
pub mod windows;

mod error;
mod info;
mod kind;
mod live;
mod open;

pub use error::SourceError;
pub use info::{NotAcquired, OpenedSource, SourceInfo};
pub use kind::{ParseSourceError, SourceKind, SourceRequest};
pub use live::{open_live, KernelFacts, LiveError, LiveInfo, LiveRequest, LiveSource};
pub use open::open;
