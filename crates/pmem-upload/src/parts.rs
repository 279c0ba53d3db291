//! Uploading an image of unknown length as numbered parts (S3 multipart
//! upload, Azure Put Block) while it is produced, with bounded memory.
//!
//! The part being filled plus one part per worker are the only buffers:
//! parts are handed over through a rendezvous channel, so no queue builds
//! up and memory stays at `(workers + 1) × part size`. Parts double in size
//! every `max_parts / 5` parts, so the service's part limit covers large
//! machines without knowing the size ahead. When a part fails for good, or
//! the upload is dropped unfinished (the job failed elsewhere), the upload
//! is aborted: nothing is committed, so no object appears.

use crate::remote::Upload;
use crate::UploadError;
use pmem_core::SinkSummary;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// A service that stores numbered parts and commits them as one object.
pub trait PartSink: Send + Sync + 'static {
    /// Uploads part `number` (from 1), with retries; returns its tag.
    fn upload_part(
        &self,
        number: u32,
        data: &[u8],
        stop: &dyn Fn() -> bool,
    ) -> Result<String, UploadError>;
    /// Makes the object from the parts, in order.
    fn complete(&self, parts: &[(u32, String)]) -> Result<(), UploadError>;
    /// Discards the parts.
    fn abort(&self) -> Result<(), UploadError>;
}

/// State shared by the writer and the part workers.
struct Shared {
    sink: Arc<dyn PartSink>,
    failed: AtomicBool,
    error: Mutex<Option<UploadError>>,
    tags: Mutex<Vec<(u32, String)>>,
}

impl Shared {
    fn fail(&self, err: UploadError) {
        self.failed.store(true, Ordering::SeqCst);
        if let Ok(mut slot) = self.error.lock() {
            slot.get_or_insert(err);
        }
    }

    fn take_error(&self) -> UploadError {
        self.error
            .lock()
            .ok()
            .and_then(|mut e| e.take())
            .unwrap_or_else(|| UploadError::protocol("an upload worker stopped"))
    }
}

/// A running part upload; an [`Upload`] for [`crate::remote::RemoteSink`].
pub struct PartUpload {
    shared: Arc<Shared>,
    sender: Option<SyncSender<(u32, Vec<u8>)>>,
    workers: Vec<JoinHandle<()>>,
    part: Vec<u8>,
    next_part: u32,
    base_part_size: usize,
    max_parts: u32,
    finished: bool,
}

impl PartUpload {
    /// Starts `workers` upload threads for `sink`.
    pub fn start(
        sink: Arc<dyn PartSink>,
        part_size: usize,
        workers: usize,
        max_parts: u32,
    ) -> PartUpload {
        let shared = Arc::new(Shared {
            sink,
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
            tags: Mutex::new(Vec::new()),
        });
        // Rendezvous: a part is handed over only when a worker is free.
        let (sender, receiver) = sync_channel::<(u32, Vec<u8>)>(0);
        let receiver = Arc::new(Mutex::new(receiver));
        let handles = (0..workers.max(1))
            .map(|_| {
                let shared = shared.clone();
                let receiver = receiver.clone();
                std::thread::spawn(move || worker(&shared, &receiver))
            })
            .collect();
        PartUpload {
            shared,
            sender: Some(sender),
            workers: handles,
            part: Vec::with_capacity(part_size),
            next_part: 1,
            base_part_size: part_size,
            max_parts,
            finished: false,
        }
    }

    fn part_size_of(&self, number: u32) -> usize {
        let per_size = (self.max_parts / 5).max(1);
        self.base_part_size << ((number - 1) / per_size).min(8)
    }

    fn send_part(&mut self) -> Result<(), UploadError> {
        if self.next_part > self.max_parts {
            return Err(UploadError::protocol(format!(
                "more than {} parts: use a larger --part-size",
                self.max_parts
            )));
        }
        let next_size = self.part_size_of(self.next_part + 1);
        let data = std::mem::replace(&mut self.part, Vec::with_capacity(next_size));
        let sender = self
            .sender
            .as_ref()
            .ok_or_else(|| self.shared.take_error())?;
        if self.shared.failed.load(Ordering::SeqCst) || sender.send((self.next_part, data)).is_err()
        {
            return Err(self.shared.take_error());
        }
        self.next_part += 1;
        Ok(())
    }

    /// Stops the workers and aborts the upload; returns `err`.
    fn fail(&mut self, err: UploadError) -> UploadError {
        self.shared.failed.store(true, Ordering::SeqCst);
        self.sender = None;
        for handle in self.workers.drain(..) {
            let _ = handle.join();
        }
        self.finished = true;
        let _ = self.shared.sink.abort();
        err
    }
}

fn worker(shared: &Shared, receiver: &Mutex<Receiver<(u32, Vec<u8>)>>) {
    loop {
        let next = match receiver.lock() {
            Ok(r) => r.recv(),
            Err(_) => return,
        };
        let Ok((number, data)) = next else { return };
        if shared.failed.load(Ordering::SeqCst) {
            return;
        }
        let stop = || shared.failed.load(Ordering::SeqCst);
        match shared.sink.upload_part(number, &data, &stop) {
            Ok(tag) => {
                if let Ok(mut tags) = shared.tags.lock() {
                    tags.push((number, tag));
                }
            }
            Err(err) => {
                shared.fail(err);
                return;
            }
        }
    }
}

impl Upload for PartUpload {
    fn write(&mut self, mut buf: &[u8]) -> Result<(), UploadError> {
        while !buf.is_empty() {
            let size = self.part_size_of(self.next_part);
            let n = (size - self.part.len()).min(buf.len());
            self.part.extend_from_slice(&buf[..n]);
            buf = &buf[n..];
            if self.part.len() == size {
                if let Err(e) = self.send_part() {
                    return Err(self.fail(e));
                }
            }
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>, _summary: &SinkSummary) -> Result<(), UploadError> {
        // The last part may be short (or the only one, even empty).
        if !self.part.is_empty() || self.next_part == 1 {
            if let Err(e) = self.send_part() {
                return Err(self.fail(e));
            }
        }
        self.sender = None;
        for handle in self.workers.drain(..) {
            let _ = handle.join();
        }
        if self.shared.failed.load(Ordering::SeqCst) {
            let err = self.shared.take_error();
            return Err(self.fail(err));
        }
        let mut parts = self
            .shared
            .tags
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default();
        parts.sort();
        if parts.len() as u32 != self.next_part - 1 {
            let err = UploadError::protocol("a part is missing");
            return Err(self.fail(err));
        }
        if let Err(e) = self.shared.sink.complete(&parts) {
            return Err(self.fail(e));
        }
        self.finished = true;
        Ok(())
    }
}

impl Drop for PartUpload {
    // A job that fails elsewhere (a read error) drops the sink without
    // finishing it: abort so no orphaned parts remain.
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.fail(UploadError::protocol("abandoned"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// Collects parts in memory; fails part `fail` if set.
    #[derive(Default)]
    struct Memory {
        parts: Mutex<Vec<(u32, Vec<u8>)>>,
        committed: Mutex<Option<Vec<u8>>>,
        aborted: AtomicBool,
        fail: Option<u32>,
    }

    impl PartSink for Memory {
        fn upload_part(
            &self,
            n: u32,
            d: &[u8],
            _: &dyn Fn() -> bool,
        ) -> Result<String, UploadError> {
            if self.fail == Some(n) {
                return Err(UploadError::protocol("injected"));
            }
            self.parts.lock().unwrap().push((n, d.to_vec()));
            Ok(hex::encode(Sha256::digest(d)))
        }
        fn complete(&self, parts: &[(u32, String)]) -> Result<(), UploadError> {
            let mut stored = self.parts.lock().unwrap().clone();
            stored.sort();
            assert_eq!(stored.len(), parts.len());
            *self.committed.lock().unwrap() =
                Some(stored.into_iter().flat_map(|(_, d)| d).collect());
            Ok(())
        }
        fn abort(&self) -> Result<(), UploadError> {
            self.aborted.store(true, Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn parts_arrive_in_order_and_grow() {
        let sink = Arc::new(Memory::default());
        let mut up = Box::new(PartUpload::start(sink.clone(), 1000, 3, 10));
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        for chunk in data.chunks(777) {
            up.write(chunk).unwrap();
        }
        let summary = SinkSummary {
            bytes: 0,
            hash: None,
        };
        up.finish(&summary).unwrap();
        assert_eq!(sink.committed.lock().unwrap().as_deref(), Some(&data[..]));
        // Parts 1-2 of 1000 bytes, 3-4 of 2000, ...: sizes double.
        let sizes: Vec<usize> = {
            let mut p = sink.parts.lock().unwrap().clone();
            p.sort();
            p.iter().map(|(_, d)| d.len()).collect()
        };
        assert_eq!(&sizes[..4], &[1000, 1000, 2000, 2000]);
    }

    #[test]
    fn a_failed_part_aborts_and_commits_nothing() {
        let sink = Arc::new(Memory {
            fail: Some(2),
            ..Memory::default()
        });
        let mut up = Box::new(PartUpload::start(sink.clone(), 1000, 2, 100));
        let mut result = Ok(());
        for _ in 0..50 {
            result = up.write(&[7u8; 500]);
            if result.is_err() {
                break;
            }
        }
        let summary = SinkSummary {
            bytes: 0,
            hash: None,
        };
        let finished = if result.is_ok() {
            up.finish(&summary)
        } else {
            drop(up);
            result
        };
        assert!(finished.is_err());
        assert!(sink.aborted.load(Ordering::SeqCst));
        assert!(sink.committed.lock().unwrap().is_none());
    }
}
