//! Buffers of committed writes, kept for the writes that follow. A sustained write hands
//! every payload buffer to the dirty set, and a commit used to free them all at its end;
//! the next payloads were then fresh memory: zero-filled by the server and faulted in page
//! by page by the kernel (about a tenth of the server's CPU in a sequential write on
//! `O_DIRECT` members). Now a commit's buffers go to this bin, and each owned write takes
//! some back out with the buffers it displaced, so they return to the server's own pool
//! (`damocles-nbd`'s `pool`) for the next payloads.
//!
//! Bounded: at most [`Bin::new`]'s `keep` bytes (the dirty budget) and [`KEEP_BUFFERS`]
//! buffers, and what the bin holds counts against the dirty budget with the open and the
//! committing sets: a commit's end keeps only what fits beside the open set, and a write
//! that grows the dirty sets sheds from the bin what no longer fits (`Bin::trim_to`). The
//! rest is freed, outside the lock. So the bin never raises the peak memory of a write
//! burst; it only keeps it between bursts. A quarter of the budget used to be kept: a
//! sustained write keeps the whole budget in flight (the open set fills while a commit
//! runs), so about two thirds of each 2 GiB write's payloads were fresh memory, zeroed
//! and faulted in by the kernel. A write takes one buffer back when it displaced none, so
//! the flow matches what the server's pool hands out. An array quiet for
//! `txg::KEEP_WHILE_QUIET` frees the bin (`Txg::idle`).

use parking_lot::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Buffers kept, at most (whatever their size).
const KEEP_BUFFERS: usize = 16384;

#[derive(Default)]
struct Kept {
    bufs: Vec<Vec<u8>>,
    bytes: usize,
}

pub(crate) struct Bin {
    keep: usize,
    kept: Mutex<Kept>,
    /// `kept.bytes`, readable without the lock (every write checks it).
    held: AtomicUsize,
}

impl Bin {
    pub fn new(keep: u64) -> Bin {
        Bin {
            keep: usize::try_from(keep).unwrap_or(usize::MAX),
            kept: Mutex::default(),
            held: AtomicUsize::new(0),
        }
    }

    /// Keeps what fits of `bufs` (in all at most `room` bytes and the bin's bound); frees
    /// the rest (after the lock is released).
    pub fn put(&self, bufs: impl IntoIterator<Item = Vec<u8>>, room: usize) {
        let mut rest = Vec::new();
        {
            let mut k = self.kept.lock();
            let keep = self.keep.min(room);
            for b in bufs {
                if b.capacity() >= 4096
                    && k.bufs.len() < KEEP_BUFFERS
                    && k.bytes + b.capacity() <= keep
                {
                    k.bytes += b.capacity();
                    k.bufs.push(b);
                } else {
                    rest.push(b);
                }
            }
            self.held.store(k.bytes, Ordering::Relaxed);
        }
        drop(rest);
    }

    /// Moves up to `n` kept buffers to `out`.
    pub fn take(&self, n: usize, out: &mut Vec<Vec<u8>>) {
        let mut k = self.kept.lock();
        for _ in 0..n {
            let Some(b) = k.bufs.pop() else { break };
            k.bytes -= b.capacity();
            out.push(b);
        }
        self.held.store(k.bytes, Ordering::Relaxed);
    }

    /// Frees kept buffers until at most `max` bytes are kept (after the lock is released).
    pub fn trim_to(&self, max: usize) {
        if self.held.load(Ordering::Relaxed) <= max {
            return;
        }
        let mut rest = Vec::new();
        {
            let mut k = self.kept.lock();
            while k.bytes > max {
                let Some(b) = k.bufs.pop() else { break };
                k.bytes -= b.capacity();
                rest.push(b);
            }
            self.held.store(k.bytes, Ordering::Relaxed);
        }
        drop(rest);
    }

    /// Frees every buffer kept.
    pub fn clear(&self) {
        let all = {
            let mut k = self.kept.lock();
            self.held.store(0, Ordering::Relaxed);
            std::mem::take(&mut *k)
        };
        drop(all);
    }

    /// Bytes kept.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.kept.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_within_its_bounds_and_gives_back_what_it_kept() {
        let bin = Bin::new(3 << 20);
        bin.put((0..5).map(|_| vec![0u8; 1 << 20]), usize::MAX);
        assert_eq!(bin.bytes(), 3 << 20);
        // Tiny buffers are not worth keeping.
        bin.put([vec![0u8; 100]], usize::MAX);
        assert_eq!(bin.bytes(), 3 << 20);
        let mut out = Vec::new();
        bin.take(2, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(bin.bytes(), 1 << 20);
        bin.take(5, &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(bin.bytes(), 0);
        bin.put(out, usize::MAX);
        assert_eq!(bin.bytes(), 3 << 20);
        bin.clear();
        assert_eq!(bin.bytes(), 0);
        // Room beside the dirty sets bounds both what is kept and what stays kept.
        bin.put((0..3).map(|_| vec![0u8; 1 << 20]), 2 << 20);
        assert_eq!(bin.bytes(), 2 << 20);
        bin.trim_to(1 << 20);
        assert_eq!(bin.bytes(), 1 << 20);
        bin.trim_to(usize::MAX);
        assert_eq!(bin.bytes(), 1 << 20);
    }
}
