//! Buffers of committed writes, kept for the writes that follow. A sustained write hands
//! every payload buffer to the dirty set, and a commit used to free them all at its end;
//! the next payloads were then fresh memory: zero-filled by the server and faulted in page
//! by page by the kernel (about a tenth of the server's CPU in a sequential write on
//! `O_DIRECT` members). Now a commit's buffers go to this bin, and each owned write takes
//! some back out with the buffers it displaced, so they return to the server's own pool
//! (`damocles-nbd`'s `pool`) for the next payloads.
//!
//! Bounded: at most [`Bin::new`]'s `keep` bytes (a quarter of the dirty budget: what one
//! background commit takes) and [`KEEP_BUFFERS`] buffers; the rest are freed, outside the
//! lock. A write takes one buffer back when it displaced none, so the flow matches what the
//! server's pool hands out. An idle array frees the bin (`Txg::idle`).

use parking_lot::Mutex;

/// Buffers kept, at most (whatever their size).
const KEEP_BUFFERS: usize = 1024;

#[derive(Default)]
struct Kept {
    bufs: Vec<Vec<u8>>,
    bytes: usize,
}

pub(crate) struct Bin {
    keep: usize,
    kept: Mutex<Kept>,
}

impl Bin {
    pub fn new(keep: u64) -> Bin {
        Bin {
            keep: usize::try_from(keep).unwrap_or(usize::MAX),
            kept: Mutex::default(),
        }
    }

    /// Keeps what fits of `bufs`; frees the rest (after the lock is released).
    pub fn put(&self, bufs: impl IntoIterator<Item = Vec<u8>>) {
        let mut rest = Vec::new();
        {
            let mut k = self.kept.lock();
            for b in bufs {
                if b.capacity() >= 4096
                    && k.bufs.len() < KEEP_BUFFERS
                    && k.bytes + b.capacity() <= self.keep
                {
                    k.bytes += b.capacity();
                    k.bufs.push(b);
                } else {
                    rest.push(b);
                }
            }
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
    }

    /// Frees every buffer kept.
    pub fn clear(&self) {
        let all = std::mem::take(&mut *self.kept.lock());
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
        bin.put((0..5).map(|_| vec![0u8; 1 << 20]));
        assert_eq!(bin.bytes(), 3 << 20);
        // Tiny buffers are not worth keeping.
        bin.put([vec![0u8; 100]]);
        assert_eq!(bin.bytes(), 3 << 20);
        let mut out = Vec::new();
        bin.take(2, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(bin.bytes(), 1 << 20);
        bin.take(5, &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(bin.bytes(), 0);
        bin.put(out);
        assert_eq!(bin.bytes(), 3 << 20);
        bin.clear();
        assert_eq!(bin.bytes(), 0);
    }
}
