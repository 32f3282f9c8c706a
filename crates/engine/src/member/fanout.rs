//! Persistent threads for the parts of a parallel member operation ([`super::write_parallel`],
//! [`super::write_many_parallel`], [`super::flush_all`]): each member's part runs on one of
//! them while the caller does the first member's. These were scoped threads spawned for
//! every call, and a commit makes several such calls: with a FLUSH every 32 random 4 KiB
//! writes, creating and tearing down those threads (`clone3`, stack mappings, exit) took
//! about a tenth of the server's CPU.
//!
//! A part never waits for another part (it calls one member, whose own worker and deadline
//! bound it), so a part that finds no idle thread gets a new one instead of queueing
//! behind a member that hangs; threads stay for later calls. A part that panics is
//! reported to its caller as the panic, as a scoped thread's join would.

use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Threads waiting for a job.
    idle: usize,
}

#[derive(Default)]
struct Pool {
    q: Mutex<Queue>,
    cv: Condvar,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(Pool::default)
}

fn worker(p: &'static Pool) {
    let mut q = p.q.lock();
    loop {
        if let Some(job) = q.jobs.pop_front() {
            drop(q);
            job();
            q = p.q.lock();
            continue;
        }
        q.idle += 1;
        p.cv.wait(&mut q);
        q.idle -= 1;
    }
}

/// The outcome of a part, once it is done.
type Slot<R> = Arc<(Mutex<Option<std::thread::Result<R>>>, Condvar)>;

/// A part running on a pool thread.
pub(crate) struct Part<R> {
    slot: Slot<R>,
}

impl<R> Part<R> {
    /// Waits for the part; `Err` holds its panic.
    pub fn join(self) -> std::thread::Result<R> {
        let (m, cv) = &*self.slot;
        let mut g = m.lock();
        loop {
            if let Some(r) = g.take() {
                return r;
            }
            cv.wait(&mut g);
        }
    }
}

/// Runs `f` on a pool thread (a new one if none is idle).
pub(crate) fn spawn<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Part<R> {
    let slot: Slot<R> = Arc::default();
    let out = slot.clone();
    let job: Job = Box::new(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let (m, cv) = &*out;
        *m.lock() = Some(r);
        cv.notify_one();
    });
    let p = pool();
    let mut q = p.q.lock();
    q.jobs.push_back(job);
    if q.idle >= q.jobs.len() {
        p.cv.notify_one();
        return Part { slot };
    }
    drop(q);
    let started = std::thread::Builder::new()
        .name("damocles-fan".into())
        .spawn(move || worker(p));
    if started.is_err() {
        // No thread to be had: run whatever is queued here (this part included), so
        // nothing waits on a thread that never came.
        loop {
            let job = p.q.lock().jobs.pop_front();
            match job {
                Some(j) => j(),
                None => break,
            }
        }
    }
    Part { slot }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    #[test]
    fn parts_run_at_once_and_report_results_and_panics() {
        // Eight parts that each wait for all eight to be running: only true parallelism
        // (a thread for each, none queued behind another) lets them finish.
        let running = Arc::new(AtomicUsize::new(0));
        let parts: Vec<_> = (0..8)
            .map(|i| {
                let running = running.clone();
                spawn(move || {
                    running.fetch_add(1, Ordering::SeqCst);
                    let t = Instant::now();
                    while running.load(Ordering::SeqCst) < 8 {
                        assert!(t.elapsed() < Duration::from_secs(20), "parts queued");
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    i * 2
                })
            })
            .collect();
        let got: Vec<usize> = parts.into_iter().map(|p| p.join().unwrap()).collect();
        assert_eq!(got, (0..8).map(|i| i * 2).collect::<Vec<_>>());
        let bad = spawn(|| -> u32 { panic!("part failed") });
        assert!(bad.join().is_err());
        // The pool still works after a panic, on the threads it kept.
        assert_eq!(spawn(|| 5).join().unwrap(), 5);
    }
}
