//! Fault injection for tests: a member wrapper that fails chosen ranges with EIO, flips
//! bits silently, vanishes (every I/O fails, at once or after N more I/Os), or is slow.

use crate::member::Dev;
use crate::member::MemberDevice;
use parking_lot::Mutex;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Default)]
struct Faults {
    read_errors: Vec<(u64, u64)>,
    write_errors: Vec<(u64, u64)>,
    /// Byte offsets whose stored value reads back with these bits flipped, until rewritten.
    flips: Vec<(u64, u8)>,
    delay: Duration,
}

pub struct FaultMember {
    inner: Dev,
    faults: Mutex<Faults>,
    gone: AtomicBool,
    /// Every request blocks until released, as on a disk in uninterruptible sleep.
    hung: AtomicBool,
    /// I/Os left before the member vanishes (u64::MAX: never).
    countdown: AtomicU64,
}

fn overlaps(ranges: &[(u64, u64)], off: u64, len: u64) -> bool {
    ranges.iter().any(|&(o, l)| o < off + len && off < o + l)
}

impl FaultMember {
    pub fn new(inner: Dev) -> Arc<FaultMember> {
        Arc::new(FaultMember {
            inner,
            faults: Mutex::new(Faults::default()),
            gone: AtomicBool::new(false),
            hung: AtomicBool::new(false),
            countdown: AtomicU64::new(u64::MAX),
        })
    }
    /// Reads touching `[offset, offset+len)` fail with EIO.
    pub fn fail_reads(&self, offset: u64, len: u64) {
        self.faults.lock().read_errors.push((offset, len));
    }
    /// Writes touching `[offset, offset+len)` fail with EIO.
    pub fn fail_writes(&self, offset: u64, len: u64) {
        self.faults.lock().write_errors.push((offset, len));
    }
    /// The byte at `offset` silently reads back with `mask` flipped (as rot on the media
    /// would), until it is written again.
    pub fn flip(&self, offset: u64, mask: u8) {
        self.faults.lock().flips.push((offset, mask));
    }
    /// Every I/O from now on fails, as when a disk drops off the bus.
    pub fn vanish(&self) {
        self.gone.store(true, Ordering::SeqCst);
    }
    /// Vanishes after `n` more I/Os (mid-request, for a multi-I/O operation).
    pub fn vanish_after(&self, n: u64) {
        self.countdown.store(n, Ordering::SeqCst);
    }
    pub fn set_delay(&self, d: Duration) {
        self.faults.lock().delay = d;
    }
    /// From now on no request returns until [`FaultMember::release`] (or `heal`): a
    /// member that hangs, as a dying disk or a stalled USB bridge does.
    pub fn hang(&self) {
        self.hung.store(true, Ordering::SeqCst);
    }
    /// Lets hung requests return.
    pub fn release(&self) {
        self.hung.store(false, Ordering::SeqCst);
    }
    /// Back to a healthy member (flips stay until rewritten).
    pub fn heal(&self) {
        let mut f = self.faults.lock();
        f.read_errors.clear();
        f.write_errors.clear();
        f.delay = Duration::ZERO;
        self.gone.store(false, Ordering::SeqCst);
        self.release();
        self.countdown.store(u64::MAX, Ordering::SeqCst);
    }

    fn gate(&self) -> io::Result<()> {
        while self.hung.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let left = self.countdown.load(Ordering::SeqCst);
        if left != u64::MAX {
            if left == 0 {
                self.gone.store(true, Ordering::SeqCst);
            } else {
                self.countdown.store(left - 1, Ordering::SeqCst);
            }
        }
        if self.gone.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(
                rustix::io::Errno::NODEV.raw_os_error(),
            ));
        }
        let delay = self.faults.lock().delay;
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        Ok(())
    }
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(rustix::io::Errno::IO.raw_os_error())
}

impl MemberDevice for FaultMember {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.gate()?;
        if overlaps(&self.faults.lock().read_errors, offset, buf.len() as u64) {
            return Err(eio());
        }
        self.inner.read_at(buf, offset)?;
        for &(o, mask) in &self.faults.lock().flips {
            if o >= offset && o < offset + buf.len() as u64 {
                buf[(o - offset) as usize] ^= mask;
            }
        }
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.gate()?;
        let mut f = self.faults.lock();
        if overlaps(&f.write_errors, offset, buf.len() as u64) {
            return Err(eio());
        }
        f.flips
            .retain(|&(o, _)| o < offset || o >= offset + buf.len() as u64);
        drop(f);
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.gate()?;
        self.inner.flush()
    }
    fn start_writeback(&self, offset: u64, len: u64) {
        self.inner.start_writeback(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.gate()?;
        if overlaps(&self.faults.lock().write_errors, offset, len) {
            return Err(eio());
        }
        self.faults
            .lock()
            .flips
            .retain(|&(o, _)| o < offset || o >= offset + len);
        self.inner.write_zeroes(offset, len)
    }
}
