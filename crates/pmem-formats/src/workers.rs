//! An ordered worker pool, shared by the compressing writers (AVML's snappy
//! batches, the zstd sink's frames): jobs go out to threads and their
//! results are taken back in the order the jobs were submitted, whichever
//! thread finishes first, because each job carries its own reply channel
//! and the caller waits on those oldest first. Each thread keeps its own
//! state (an encoder, reused from job to job).

use std::sync::mpsc::{self, Receiver, RecvError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// What is done with one job, given the state of the thread doing it.
type Work<S, J, R> = Arc<dyn Fn(&mut S, J) -> R + Send + Sync>;

/// A job, and where to send its result.
type Request<J, R> = (J, SyncSender<R>);

/// Threads doing jobs of type `J` into results of type `R`, each with its
/// own state `S`.
pub(crate) struct Pool<S, J, R> {
    /// The queue the threads take jobs from: `None` when no thread could be
    /// spawned, and once the pool is dropped (which ends the threads).
    jobs: Option<SyncSender<Request<J, R>>>,
    threads: Vec<JoinHandle<()>>,
    new_state: fn() -> S,
    work: Work<S, J, R>,
    /// The caller's state for jobs done on its thread, made at the first.
    inline: Option<Box<S>>,
}

impl<S: 'static, J: Send + 'static, R: Send + 'static> Pool<S, J, R> {
    /// Up to `n` threads named `name-0`, `name-1`…, each doing `work` with
    /// a state of its own from `new_state`; `queue` jobs may wait for a
    /// thread. No threads when none can be spawned (or `n` is 0): then the
    /// jobs are done on the caller's thread.
    pub(crate) fn spawn(
        name: &str,
        n: usize,
        queue: usize,
        new_state: fn() -> S,
        work: impl Fn(&mut S, J) -> R + Send + Sync + 'static,
    ) -> Self {
        let work: Work<S, J, R> = Arc::new(work);
        let (jobs, requests) = mpsc::sync_channel::<Request<J, R>>(queue);
        let requests = Arc::new(Mutex::new(requests));
        let mut threads = Vec::new();
        for i in 0..n {
            let requests = requests.clone();
            let work = work.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    let mut state = new_state();
                    while let Some((job, reply)) = next_request(&requests) {
                        // The caller may have failed and gone: drop the result.
                        let _ = reply.send(work(&mut state, job));
                    }
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(_) => break,
            }
        }
        Pool {
            jobs: (!threads.is_empty()).then_some(jobs),
            threads,
            new_state,
            work,
            inline: None,
        }
    }

    /// Threads running (0: jobs are done on the caller's thread).
    pub(crate) fn threads(&self) -> usize {
        self.threads.len()
    }

    /// Hands `job` to a thread, or does it here when there are no threads.
    /// `Err(job)` when the threads have all gone (they died): the caller
    /// decides whether that is its error or whether to [`Pool::run_here`].
    pub(crate) fn submit(&mut self, job: J) -> Result<Pending<R>, J> {
        let Some(jobs) = &self.jobs else {
            return Ok(Pending::Done(self.run_here(job)));
        };
        let (reply, result) = mpsc::sync_channel(1);
        match jobs.send((job, reply)) {
            Ok(()) => Ok(Pending::Worker(result)),
            Err(mpsc::SendError((job, _))) => Err(job),
        }
    }

    /// Does `job` on the caller's thread.
    pub(crate) fn run_here(&mut self, job: J) -> R {
        let new_state = self.new_state;
        let state = self.inline.get_or_insert_with(|| Box::new(new_state()));
        (self.work)(state, job)
    }
}

/// The next job from the queue; `None` once it is closed. The lock is held
/// only to take one job, so that the others are taken while it is done.
fn next_request<T>(requests: &Mutex<Receiver<T>>) -> Option<T> {
    requests.lock().ok()?.recv().ok()
}

impl<S, J, R> Drop for Pool<S, J, R> {
    fn drop(&mut self) {
        // Threads finish the job at hand, find the queue closed and end.
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A result on its way back: from a thread, or done already on the
/// caller's.
pub(crate) enum Pending<R> {
    Worker(Receiver<R>),
    Done(R),
}

impl<R> Pending<R> {
    /// The result; an error when its thread died before sending it (its
    /// reply channel closed: never a hang).
    pub(crate) fn wait(self) -> Result<R, RecvError> {
        match self {
            Pending::Worker(result) => result.recv(),
            Pending::Done(done) => Ok(done),
        }
    }
}
