//! Positioned I/O on members with errors that say what failed (operation, device, offset),
//! planned writes, and flushes of several members at once.

use super::{fanout, AlignedBuf, Dev, MemberDevice};
use crate::error::{Error, Op, Result};
use crate::units::MemberWrite;
use std::sync::Arc;

fn io_err(op: Op, dev: &dyn MemberDevice, offset: u64, e: std::io::Error) -> Error {
    Error::Io {
        op,
        device: dev.name().to_string(),
        offset,
        source: e,
    }
}

pub(crate) fn read(dev: &dyn MemberDevice, buf: &mut [u8], off: u64) -> Result<()> {
    dev.read_at(buf, off)
        .map_err(|e| io_err(Op::Read, dev, off, e))
}

/// Reads consecutive bytes at `off` into `bufs`, one after another (one `preadv`).
pub(crate) fn read_vectored(
    dev: &dyn MemberDevice,
    bufs: &mut [&mut [u8]],
    off: u64,
) -> Result<()> {
    dev.read_vectored_at(bufs, off)
        .map_err(|e| io_err(Op::Read, dev, off, e))
}

/// [`read_vectored`] that gives up at the slow limit with [`Error::Slow`] (the caller
/// answers from the other members).
pub(crate) fn read_hedged(dev: &dyn MemberDevice, bufs: &mut [&mut [u8]], off: u64) -> Result<()> {
    dev.read_hedged(bufs, off).map_err(|e| {
        if super::is_slow(&e) {
            Error::Slow {
                device: dev.name().to_string(),
            }
        } else {
            io_err(Op::Read, dev, off, e)
        }
    })
}

pub(crate) fn write(dev: &dyn MemberDevice, buf: &[u8], off: u64) -> Result<()> {
    dev.write_at(buf, off)
        .map_err(|e| io_err(Op::Write, dev, off, e))
}

/// [`write`] handing the buffer to the member ([`MemberDevice::write_owned`]): the result,
/// and the buffer when it came back.
pub(crate) fn write_owned(
    dev: &dyn MemberDevice,
    buf: Vec<u8>,
    off: u64,
) -> (Result<()>, Option<Vec<u8>>) {
    let (r, b) = dev.write_owned(buf, off);
    (r.map_err(|e| io_err(Op::Write, dev, off, e)), b)
}

pub(crate) fn zero(dev: &dyn MemberDevice, off: u64, len: u64) -> Result<()> {
    dev.write_zeroes(off, len)
        .map_err(|e| io_err(Op::Zero, dev, off, e))
}

pub(crate) fn flush(dev: &dyn MemberDevice) -> Result<()> {
    dev.flush().map_err(|e| io_err(Op::Flush, dev, 0, e))
}

/// Performs planned writes on the members (skipping members no longer present).
pub(crate) fn execute(members: &[Option<Dev>], plan: &[MemberWrite]) -> Result<()> {
    for w in plan {
        if let Some(d) = &members[w.member as usize] {
            write(d.as_ref(), &w.data, w.offset)?;
        }
    }
    Ok(())
}

/// One member's writes: (offset, bytes).
pub(crate) type OwnedWrites = Vec<(u64, Vec<u8>)>;

/// A buffer a member write takes, handed back when the member returns it.
pub(crate) trait OwnedBuf: Send + Sized {
    fn write_to(self, dev: &dyn MemberDevice, off: u64) -> (Result<()>, Option<Self>);
}

impl OwnedBuf for Vec<u8> {
    fn write_to(self, dev: &dyn MemberDevice, off: u64) -> (Result<()>, Option<Self>) {
        write_owned(dev, self, off)
    }
}

/// The first `.1` bytes of an aligned buffer the member lent
/// ([`MemberDevice::aligned_buffer`]); it goes back to the member, not to the caller.
pub(crate) struct Lent(pub AlignedBuf, pub usize);

impl OwnedBuf for Lent {
    fn write_to(self, dev: &dyn MemberDevice, off: u64) -> (Result<()>, Option<Self>) {
        let r = dev.write_aligned(self.0, self.1, off);
        (r.map_err(|e| io_err(Op::Write, dev, off, e)), None)
    }
}

/// Writes owned buffers, `(member, offset, bytes)`, each member's in the order given, all
/// members at once (a pool thread per member beyond the first: `fanout.rs`). Skips members no longer
/// present. Returns the buffers that came back (for reuse) or the first error, once every
/// member is done. Under [`SERIAL_FLUSHES`] everything is written on this thread, in order,
/// so a simulated power cut at the N-th I/O replays exactly.
pub(crate) fn write_parallel<B: OwnedBuf + 'static>(
    members: &[Option<Dev>],
    writes: Vec<(u16, u64, B)>,
) -> Result<Vec<B>> {
    let mut by_member: Vec<(Dev, Vec<(u64, B)>)> = Vec::new();
    for (m, off, b) in writes {
        let Some(d) = members.get(m as usize).cloned().flatten() else {
            continue;
        };
        match by_member.iter_mut().find(|(x, _)| Arc::ptr_eq(x, &d)) {
            Some((_, list)) => list.push((off, b)),
            None => by_member.push((d, vec![(off, b)])),
        }
    }
    let run = |d: &Dev, list: Vec<(u64, B)>| -> Result<Vec<B>> {
        let mut back = Vec::with_capacity(list.len());
        for (off, b) in list {
            let (r, b) = b.write_to(d.as_ref(), off);
            r?;
            back.extend(b);
        }
        Ok(back)
    };
    if serial_writes() || by_member.len() < 2 {
        let mut back = Vec::new();
        for (d, list) in by_member {
            back.extend(run(&d, list)?);
        }
        return Ok(back);
    }
    let mut it = by_member.into_iter();
    let (d0, l0) = it.next().expect("two members or more");
    let others: Vec<_> = it.map(|(d, l)| fanout::spawn(move || run(&d, l))).collect();
    let mut acc = run(&d0, l0);
    for h in others {
        let r = h
            .join()
            .unwrap_or_else(|_| Err(Error::Internal("a write thread panicked".into())));
        acc = match (acc, r) {
            (Ok(mut a), Ok(b)) => {
                a.extend(b);
                Ok(a)
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
    }
    acc
}

/// Each member's list of writes `(offset, bytes)` with [`MemberDevice::write_many`] (one
/// hand-off per member), all members at once. Returns every member's result (an error
/// names the offset of the write that met it), in the order given. Serial, in that order,
/// under [`SERIAL_FLUSHES`].
pub(crate) fn write_many_parallel(lists: Vec<(u16, Dev, OwnedWrites)>) -> Vec<(u16, Result<()>)> {
    let run = |d: &Dev, list: OwnedWrites| -> Result<()> {
        d.write_many(list)
            .map_err(|(off, e)| io_err(Op::Write, d.as_ref(), off, e))
    };
    if serial_writes() || lists.len() < 2 {
        return lists.into_iter().map(|(m, d, l)| (m, run(&d, l))).collect();
    }
    let mut it = lists.into_iter();
    let (m0, d0, l0) = it.next().expect("two members or more");
    let others: Vec<_> = it
        .map(|(m, d, l)| (m, fanout::spawn(move || run(&d, l))))
        .collect();
    let mut out = vec![(m0, run(&d0, l0))];
    for (m, h) in others {
        let r = h
            .join()
            .unwrap_or_else(|_| Err(Error::Internal("a write thread panicked".into())));
        out.push((m, r));
    }
    out
}

#[cfg(feature = "test-util")]
fn serial_writes() -> bool {
    SERIAL_FLUSHES.load(std::sync::atomic::Ordering::Relaxed) != 0
}

#[cfg(not(feature = "test-util"))]
fn serial_writes() -> bool {
    false
}

/// Test switch: when non-zero, members are flushed one after another in an order drawn from
/// this xorshift state (advanced at every call), so a simulated power cut at the N-th I/O
/// replays exactly from its seed and still sees later members durable before earlier ones,
/// as parallel flushes allow. Zero flushes all members at once.
#[cfg(feature = "test-util")]
pub static SERIAL_FLUSHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Flushes the members numbered in `which` (repeats allowed) with [`flush_all`].
pub(crate) fn flush_some(members: &[Option<Dev>], mut which: Vec<u16>) -> Result<()> {
    which.sort_unstable();
    which.dedup();
    let holders: Vec<Option<Dev>> = which
        .iter()
        .map(|&m| members.get(m as usize).cloned().flatten())
        .collect();
    flush_all(&holders)
}

/// With [`SERIAL_FLUSHES`] set: flushes `devs` one by one in the seeded order.
#[cfg(feature = "test-util")]
fn flush_serially(devs: &mut [&Dev]) -> Option<Result<()>> {
    use std::sync::atomic::Ordering;
    let state = SERIAL_FLUSHES.load(Ordering::Relaxed);
    if state == 0 {
        return None;
    }
    let mut x = state;
    for i in (1..devs.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        devs.swap(i, (x % (i as u64 + 1)) as usize);
    }
    SERIAL_FLUSHES.store(x.max(1), Ordering::Relaxed);
    Some(devs.iter().try_for_each(|d| flush(d.as_ref())))
}

#[cfg(not(feature = "test-util"))]
fn flush_serially(_: &mut [&Dev]) -> Option<Result<()>> {
    None
}

/// Flushes every present member at once: a commit then waits for the slowest disk, not for
/// the sum of them.
pub(crate) fn flush_all(members: &[Option<Dev>]) -> Result<()> {
    let mut devs: Vec<&Dev> = members.iter().flatten().collect();
    if let Some(r) = flush_serially(&mut devs) {
        return r;
    }
    match devs.as_slice() {
        [] => Ok(()),
        [one] => flush(one.as_ref()),
        [first, rest @ ..] => {
            let others: Vec<_> = rest
                .iter()
                .map(|&d| {
                    let d = d.clone();
                    fanout::spawn(move || flush(d.as_ref()))
                })
                .collect();
            let mine = flush(first.as_ref());
            others
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Error::Internal("a flush thread panicked".into())))
                })
                .fold(mine, |acc, r| acc.and(r))
        }
    }
}
