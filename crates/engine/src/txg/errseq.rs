//! Write-back errors told to flushes, once per observer (Linux's `errseq_t` for `fsync`
//! after writeback errors is the model). A commit that must drop dirty blocks — their
//! chunk has no member left to hold them (`unwritable.rs`) — bumps the error sequence of
//! each volume they belong to. Whoever answers flushes for a client (an NBD connection)
//! holds a [`FlushToken`]: it samples the volume's sequence when taken, and a flush that
//! returns once the sequence has moved past what the token has seen fails, once, and the
//! token then sees it. So every client that was connected when the data was lost has its
//! next FLUSH (or FUA write) fail, whether that FLUSH's own commit dropped the data or an
//! earlier one did (the background committer, the dirty budget); a client that connects
//! afterwards is not told of a loss before its time (the lost ranges still read as EIO).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Each volume's error sequence, by volume id: how many commits dropped data of it since
/// the array was opened (not kept on disk: the lost ranges are).
#[derive(Default)]
pub(crate) struct ErrSeqs(Mutex<HashMap<u32, Arc<AtomicU64>>>);

impl ErrSeqs {
    fn seq(&self, volume: u32) -> Arc<AtomicU64> {
        self.0.lock().entry(volume).or_default().clone()
    }

    /// A commit dropped data of `volume` (called under the commit lock, before the commit
    /// returns: a flush that waited for that commit sees the bump).
    pub(crate) fn bump(&self, volume: u32) {
        self.seq(volume).fetch_add(1, Ordering::AcqRel);
    }

    /// A new observer of `volume`'s errors, at the sequence as it is now.
    pub(crate) fn token(&self, volume: u32) -> FlushToken {
        let seq = self.seq(volume);
        FlushToken {
            volume,
            seen: AtomicU64::new(seq.load(Ordering::Acquire)),
            seq,
        }
    }

    /// Forgets a deleted volume's sequence (tokens still held keep theirs).
    pub(crate) fn forget(&self, volume: u32) {
        self.0.lock().remove(&volume);
    }
}

/// One observer's place in a volume's error sequence: an NBD connection holds one and
/// flushes with it (`Array::flush_with`). Shared by the threads serving the observer: each
/// loss is reported to exactly one of its flushes.
#[derive(Debug)]
pub struct FlushToken {
    volume: u32,
    seq: Arc<AtomicU64>,
    seen: AtomicU64,
}

impl FlushToken {
    /// The volume whose errors it observes.
    pub fn volume(&self) -> u32 {
        self.volume
    }

    /// How many commits dropped data of the volume since this token last looked (0:
    /// none); from now on it has seen them.
    pub(crate) fn take_errors(&self) -> u64 {
        let now = self.seq.load(Ordering::Acquire);
        let before = self.seen.fetch_max(now, Ordering::AcqRel);
        now.saturating_sub(before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_loss_is_told_once_to_each_observer_there_when_it_happened() {
        let s = ErrSeqs::default();
        let (a, b) = (s.token(1), s.token(1));
        let other = s.token(2);
        assert_eq!(a.take_errors(), 0);
        s.bump(1);
        let late = s.token(1);
        assert_eq!(a.take_errors(), 1);
        assert_eq!(a.take_errors(), 0, "told once");
        s.bump(1);
        s.bump(1);
        assert_eq!(b.take_errors(), 3, "b had seen none of the three");
        assert_eq!(a.take_errors(), 2);
        assert_eq!(late.take_errors(), 2, "not the loss before it was taken");
        assert_eq!(
            other.take_errors(),
            0,
            "another volume's losses are not its own"
        );
    }
}
