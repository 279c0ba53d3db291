//! An in-process WinPmem driver for tests: follows the driver's documented
//! behaviour (mode before reads, 20- or 300-run tables, short reads at
//! unreadable pages, 64- and 32-bit structure layouts, the write switch of
//! builds with write support) over synthetic memory, and records what
//! happens to it and to its service.

use super::protocol::{
    Device, InfoLayout, ServiceControl, IOCTL_GET_INFO, IOCTL_SET_MODE, IOCTL_WRITE_ENABLE,
};
use crate::testing::pattern;
use pmem_core::{Range, PAGE_SIZE};
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// A shared, ordered record of device and service events.
pub type EventLog = Arc<Mutex<Vec<String>>>;

/// How a driver with more runs than its table reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// NumberOfRuns is the real count; only `capacity` entries are filled.
    RealCount,
    /// NumberOfRuns is capped at the capacity (the table looks full).
    Capped,
}

/// A fake driver over [`pattern`] memory.
pub struct FakeDriver {
    /// The structure layout IOCTL_GET_INFO answers in.
    pub layout: InfoLayout,
    /// The runs it reports.
    pub runs: Vec<Range>,
    /// 20 (2.x/3.x drivers) or 300 (4.x).
    pub capacity: usize,
    /// How NumberOfRuns reads when the runs don't fit.
    pub overflow: Overflow,
    /// Pages that cannot be read: a read stops short before them, a read
    /// starting at one fails.
    pub bad_pages: Vec<u64>,
    /// The CR3 it reports.
    pub cr3: u64,
    /// The processors (KPCR entries) it reports.
    pub processors: usize,
    /// Mode set by IOCTL_SET_MODE; reads fail before it.
    pub mode: Option<u32>,
    /// Built with write support (PMEM_WRITE_ENABLED): only then is
    /// IOCTL_WRITE_ENABLE known; released drivers are built without it.
    pub write_support: bool,
    /// The write switch IOCTL_WRITE_ENABLE flips; off when loaded.
    pub writes_enabled: bool,
    /// Where it records the calls made to it.
    pub log: EventLog,
    /// Largest read served at once (drivers return what fits their
    /// mapping window).
    pub max_read: usize,
}

impl FakeDriver {
    /// A driver with these runs, a table of `capacity`, no bad page and
    /// no mode set.
    pub fn new(layout: InfoLayout, runs: Vec<Range>, capacity: usize) -> FakeDriver {
        FakeDriver {
            layout,
            runs,
            capacity,
            overflow: Overflow::RealCount,
            bad_pages: Vec::new(),
            cr3: 0x1aa000,
            processors: 4,
            mode: None,
            write_support: false,
            writes_enabled: false,
            log: EventLog::default(),
            max_read: 1 << 20,
        }
    }

    fn info(&self, out: &mut [u8]) -> io::Result<usize> {
        let len = self.layout.len(self.capacity);
        if out.len() < len {
            return Err(io::Error::from_raw_os_error(122)); // ERROR_INSUFFICIENT_BUFFER
        }
        let out = &mut out[..len];
        out.fill(0);
        let put =
            |out: &mut [u8], at: usize, v: u64| out[at..at + 8].copy_from_slice(&v.to_le_bytes());
        let (word, kpcrs) = match self.layout {
            InfoLayout::X64 => (0xffff_f800_0000_0000_u64, 64),
            InfoLayout::X86 => (0x8000_0000_u64, 32),
        };
        put(out, 0x00, self.cr3);
        put(out, 0x08, 0xF000_4A61);
        put(out, 0x10, word + 0x0200_0000);
        put(out, 0x18, word + 0x02c0_0000);
        for i in 0..self.processors.min(kpcrs) {
            put(out, 0x20 + 8 * i, word + 0x0100_0000 + 0x1000 * i as u64);
        }
        let after = 0x20 + 8 * kpcrs;
        put(out, after, word + 0x0300_0000);
        put(out, after + 8, word + 0x0200_2a2a);
        put(out, after + 16, word + 0x0200_1e1e);
        put(out, after + 24, word + 0x0200_0abc);
        let count = match self.overflow {
            Overflow::RealCount => self.runs.len(),
            Overflow::Capped => self.runs.len().min(self.capacity),
        };
        put(out, self.layout.number_of_runs_offset(), count as u64);
        for (i, run) in self.runs.iter().take(self.capacity).enumerate() {
            let at = self.layout.runs_offset() + 16 * i;
            put(out, at, run.start);
            put(out, at + 8, run.len());
        }
        Ok(len)
    }
}

impl Device for FakeDriver {
    fn ioctl(&mut self, code: u32, input: &[u8], output: &mut [u8]) -> io::Result<usize> {
        match code {
            IOCTL_SET_MODE => {
                let mode = u32::from_le_bytes(
                    input
                        .try_into()
                        .map_err(|_| io::Error::from_raw_os_error(87))?,
                );
                if mode > 2 {
                    return Err(io::Error::from_raw_os_error(87)); // ERROR_INVALID_PARAMETER
                }
                self.log.lock().unwrap().push(format!("set mode {mode}"));
                self.mode = Some(mode);
                Ok(0)
            }
            IOCTL_GET_INFO => self.info(output),
            // No buffers are looked at; the switch flips, it is not set.
            IOCTL_WRITE_ENABLE if self.write_support => {
                self.writes_enabled = !self.writes_enabled;
                let state = if self.writes_enabled { "on" } else { "off" };
                self.log.lock().unwrap().push(format!("writes {state}"));
                Ok(0)
            }
            // WinPmem's answer to a code it has no case for (a build without
            // write support has none for IOCTL_WRITE_ENABLE):
            // STATUS_INVALID_PARAMETER.
            _ => Err(io::Error::from_raw_os_error(87)), // ERROR_INVALID_PARAMETER
        }
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if self.mode.is_none() {
            return Err(io::Error::from_raw_os_error(1));
        }
        let len = buf.len().min(self.max_read);
        let end = offset + len as u64;
        if !self.runs.iter().any(|r| r.contains(offset)) {
            return Err(io::Error::from_raw_os_error(998)); // ERROR_NOACCESS
        }
        // Stop short before the first bad page in the request.
        let stop = self
            .bad_pages
            .iter()
            .map(|&p| p * PAGE_SIZE)
            .filter(|&a| a + PAGE_SIZE > offset && a < end)
            .min()
            .map_or(end, |a| a.max(offset));
        if stop == offset {
            return Err(io::Error::from_raw_os_error(998));
        }
        let n = (stop - offset) as usize;
        buf[..n].copy_from_slice(&pattern(offset, n));
        Ok(n)
    }
}

impl Drop for FakeDriver {
    fn drop(&mut self) {
        self.log.lock().unwrap().push("close device".into());
    }
}

/// A service manager that records install and remove.
pub struct FakeService {
    /// Where it records install and remove.
    pub log: EventLog,
    /// Whether install fails (access denied).
    pub fail_install: bool,
}

impl ServiceControl for FakeService {
    fn install(&mut self, driver_path: &Path) -> io::Result<()> {
        if self.fail_install {
            return Err(io::Error::from_raw_os_error(2)); // ERROR_FILE_NOT_FOUND
        }
        self.log
            .lock()
            .unwrap()
            .push(format!("install {}", driver_path.display()));
        Ok(())
    }

    fn remove(&mut self) -> io::Result<()> {
        self.log.lock().unwrap().push("remove service".into());
        Ok(())
    }
}
