//! Write-behind for members whose writes wait for the device (`O_DIRECT`: nothing absorbs
//! them, as the page cache does for buffered files). The guard answers such a write as
//! soon as a worker has it, and keeps count of the writes still running here:
//!
//! - durability is unchanged: it only ever came from `flush`, which first waits for every
//!   write still running, and reports the first error one of them met;
//! - order is kept where it matters: a write overlapping one still running waits for it,
//!   and so does a read or a zeroing of an overlapping range, so everyone sees writes in
//!   the order they were made;
//! - a write's error reaches the caller at its next write, zeroing or flush of that member
//!   (as the page cache reports a failed writeback at `fsync`);
//! - memory is bounded: at most [`LIMIT`] bytes running per member, further writes wait;
//! - every wait ends at the fail limit, as requests do.
//!
//! Without it, the engine's commit, which writes its pieces one after another, runs at one
//! request in flight: a fraction of what the disks do (bench/sustained-direct.sh).

use parking_lot::{Condvar, Mutex};
use std::io;
use std::time::Instant;

/// Bytes of writes running per member, at most.
pub const LIMIT: u64 = 64 << 20;

#[derive(Default)]
struct State {
    /// Writes running: (id, offset, length).
    running: Vec<(u64, u64, u64)>,
    bytes: u64,
    next: u64,
    /// The first error of a write nobody has been told of yet.
    error: Option<io::Error>,
}

#[derive(Default)]
pub(super) struct Behind {
    state: Mutex<State>,
    done: Condvar,
}

fn overlaps(&(_, o, l): &(u64, u64, u64), offset: u64, len: u64) -> bool {
    o < offset.saturating_add(len) && offset < o + l
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{what}: writes still running past the fail limit"),
    )
}

impl Behind {
    /// Waits until `cond` is false (at most until `deadline`).
    fn wait_while(
        &self,
        deadline: Instant,
        what: &str,
        mut cond: impl FnMut(&State) -> bool,
    ) -> io::Result<parking_lot::MutexGuard<'_, State>> {
        let mut s = self.state.lock();
        while cond(&s) {
            if self.done.wait_until(&mut s, deadline).timed_out() && cond(&s) {
                return Err(timed_out(what));
            }
        }
        Ok(s)
    }

    /// Registers a write of `[offset, offset+len)` about to be handed to a worker, once
    /// no running write overlaps it and there is room; returns its id for [`Behind::done`].
    /// An error of an earlier write is returned instead (and forgotten).
    pub(super) fn begin(&self, offset: u64, len: u64, deadline: Instant) -> io::Result<u64> {
        let mut s = self.wait_while(deadline, "write", |s| {
            s.error.is_none()
                && ((!s.running.is_empty() && s.bytes + len > LIMIT)
                    || s.running.iter().any(|r| overlaps(r, offset, len)))
        })?;
        if let Some(e) = s.error.take() {
            return Err(e);
        }
        let id = s.next;
        s.next += 1;
        s.running.push((id, offset, len));
        s.bytes += len;
        Ok(id)
    }

    /// A write registered by [`Behind::begin`] has ended with `r`.
    pub(super) fn done(&self, id: u64, r: io::Result<()>) {
        let mut s = self.state.lock();
        if let Some(i) = s.running.iter().position(|w| w.0 == id) {
            let (_, _, len) = s.running.swap_remove(i);
            s.bytes -= len;
        }
        if let Err(e) = r {
            s.error.get_or_insert(e);
        }
        drop(s);
        self.done.notify_all();
    }

    /// Waits until no running write overlaps `[offset, offset+len)`.
    pub(super) fn settle(&self, offset: u64, len: u64, deadline: Instant) -> io::Result<()> {
        self.wait_while(deadline, "read", |s| {
            s.running.iter().any(|r| overlaps(r, offset, len))
        })
        .map(drop)
    }

    /// Waits until every running write has ended; returns (and forgets) the first error
    /// one of them met since the caller was last told.
    pub(super) fn drain(&self, deadline: Instant) -> io::Result<()> {
        let mut s = self.wait_while(deadline, "flush", |s| !s.running.is_empty())?;
        match s.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Takes an error of an earlier write, if any.
    pub(super) fn take_error(&self) -> Option<io::Error> {
        self.state.lock().error.take()
    }
}
