//! Member devices: the disks (or files) an array is made of, the positioned I/O the
//! engine does on them (errors carry the operation, device and offset), and the set of
//! members an open array uses. Owns the member set's locks: `slots` before `usable`.
//!
//! Everything the engine does to a member goes through [`MemberDevice`], so tests can plug in
//! an in-memory member, a power-loss simulator or a fault injector.

mod aligned;
mod behind;
mod direct;
mod fanout;
mod file;
mod guard;
mod io;
mod mem;
mod overlay;
mod set;
mod stats;

pub use aligned::AlignedBuf;
pub use file::{filesystem_free, reserve_file, unallocated_bytes, DirectIo, FileMember};
pub use guard::{is_slow, Guarded, Limits, DEFAULT_FAIL, DEFAULT_SLOW};
#[cfg(feature = "test-util")]
pub use io::SERIAL_FLUSHES;
pub(crate) use io::{
    execute, flush, flush_all, flush_some, read, read_hedged, read_vectored, write,
    write_many_parallel, write_owned, write_parallel, zero, Lent, OwnedWrites,
};
pub use mem::MemMember;
pub(crate) use overlay::Overlay;
pub(crate) use set::{MemberSet, MemberSlot, Usable};
pub use stats::{MemberIo, Pending};

use std::io as stdio;
use std::sync::Arc;

/// What [`MemberDevice::write_owned`] answers: the write's result and the buffer, if it
/// came back.
pub type WriteOwned = (stdio::Result<()>, Option<Vec<u8>>);

/// A member as the engine holds it.
pub type Dev = Arc<dyn MemberDevice>;

/// A member disk: positioned reads and writes, and a flush that makes completed writes durable.
pub trait MemberDevice: Send + Sync {
    /// Human-readable name (the path), used in messages.
    fn name(&self) -> &str;
    /// Size in bytes.
    fn size(&self) -> u64;
    fn read_at(&self, buf: &mut [u8], offset: u64) -> stdio::Result<()>;
    /// Reads consecutive bytes starting at `offset` into `bufs`, one after another.
    fn read_vectored_at(&self, bufs: &mut [&mut [u8]], offset: u64) -> stdio::Result<()> {
        let mut off = offset;
        for b in bufs.iter_mut() {
            self.read_at(b, off)?;
            off += b.len() as u64;
        }
        Ok(())
    }
    /// [`MemberDevice::read_vectored_at`] for a read the array's redundancy can answer
    /// without this member: a guarded member gives up at the slow limit (see
    /// [`is_slow`]) instead of the fail limit. Others read as usual.
    fn read_hedged(&self, bufs: &mut [&mut [u8]], offset: u64) -> stdio::Result<()> {
        self.read_vectored_at(bufs, offset)
    }
    /// Reads `bufs` only if that cannot wait for the device (the bytes are in the page
    /// cache: `preadv2` with `RWF_NOWAIT`); `false` when it would have to wait, the device
    /// cannot tell, or anything went wrong — then nothing is promised about `bufs` and the
    /// caller reads the usual way. The guard answers such reads on the caller's thread,
    /// with no hand-off to a worker. The default cannot tell.
    fn read_nowait(&self, _bufs: &mut [&mut [u8]], _offset: u64) -> bool {
        false
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> stdio::Result<()>;
    /// [`MemberDevice::write_at`] that takes the buffer, so a guarded member hands it to
    /// its worker without a copy; gives it back once the write is done (`None` when the
    /// member gave up waiting for a write it still holds).
    fn write_owned(&self, buf: Vec<u8>, offset: u64) -> WriteOwned {
        let r = self.write_at(&buf, offset);
        (r, Some(buf))
    }
    /// A buffer of at least `len` bytes for [`MemberDevice::write_aligned`] (contents
    /// unspecified). A guarded member lends one its workers gave back.
    fn aligned_buffer(&self, len: usize) -> AlignedBuf {
        AlignedBuf::zeroed(len)
    }
    /// Writes the first `len` bytes of `buf` at `offset`, taking the buffer: a guarded
    /// member hands it to its worker with no copy, and keeps it for a later
    /// [`MemberDevice::aligned_buffer`].
    fn write_aligned(&self, buf: AlignedBuf, len: usize, offset: u64) -> stdio::Result<()> {
        self.write_at(&buf[..len], offset)
    }
    /// Several writes `(offset, bytes)`, done in the order given; stops at the first error
    /// and returns it with the offset of the write that met it. A guarded member hands the
    /// whole list to one worker (one hand-off, not one per write). The default writes them
    /// one by one.
    fn write_many(&self, writes: Vec<(u64, Vec<u8>)>) -> Result<(), (u64, stdio::Error)> {
        for (off, b) in &writes {
            self.write_at(b, *off).map_err(|e| (*off, e))?;
        }
        Ok(())
    }
    /// Whether the guard should answer this member's writes once a worker has them,
    /// without waiting for the device (see `behind.rs`): for members whose writes wait
    /// for the device (`O_DIRECT`). The default: no.
    fn write_behind(&self) -> bool {
        false
    }
    /// Makes every completed write durable.
    fn flush(&self) -> stdio::Result<()>;
    /// A hint: start writing `[offset, offset+len)` (just written) to stable storage now,
    /// without waiting, so a later `flush` has less left to do. Durability still comes only
    /// from `flush`. The default does nothing.
    fn start_writeback(&self, _offset: u64, _len: u64) {}
    /// Makes `[offset, offset+len)` read as zeros. Members that can deallocate do so.
    fn write_zeroes(&self, offset: u64, len: u64) -> stdio::Result<()> {
        write_zeroes_by_writing(self, offset, len)
    }
    /// The deadline guard this member's requests go through, if it is one.
    fn guard(&self) -> Option<&Guarded> {
        None
    }
}

/// Fallback for [`MemberDevice::write_zeroes`]: writes zero buffers.
pub fn write_zeroes_by_writing<D: MemberDevice + ?Sized>(
    dev: &D,
    offset: u64,
    len: u64,
) -> stdio::Result<()> {
    const PIECE: u64 = 1 << 20;
    let zeros = vec![0u8; PIECE.min(len) as usize];
    let mut done = 0;
    while done < len {
        let n = PIECE.min(len - done) as usize;
        dev.write_at(&zeros[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// How a member file is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Reading only; other readers may share the member.
    ReadOnly,
    /// Reading and writing; nobody else may have the member open through damocles.
    ReadWrite,
}

pub(crate) fn check_range(size: u64, offset: u64, len: usize) -> stdio::Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(stdio::Error::new(
            stdio::ErrorKind::InvalidInput,
            format!("access {offset}+{len} beyond the end of the member ({size} bytes)"),
        )),
    }
}

impl<T: MemberDevice + ?Sized> MemberDevice for std::sync::Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> stdio::Result<()> {
        (**self).read_at(buf, offset)
    }
    fn read_vectored_at(&self, bufs: &mut [&mut [u8]], offset: u64) -> stdio::Result<()> {
        (**self).read_vectored_at(bufs, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> stdio::Result<()> {
        (**self).write_at(buf, offset)
    }
    fn write_owned(&self, buf: Vec<u8>, offset: u64) -> WriteOwned {
        (**self).write_owned(buf, offset)
    }
    fn write_behind(&self) -> bool {
        (**self).write_behind()
    }
    fn aligned_buffer(&self, len: usize) -> AlignedBuf {
        (**self).aligned_buffer(len)
    }
    fn write_aligned(&self, buf: AlignedBuf, len: usize, offset: u64) -> stdio::Result<()> {
        (**self).write_aligned(buf, len, offset)
    }
    fn write_many(&self, writes: Vec<(u64, Vec<u8>)>) -> Result<(), (u64, stdio::Error)> {
        (**self).write_many(writes)
    }
    fn flush(&self) -> stdio::Result<()> {
        (**self).flush()
    }
    fn read_hedged(&self, bufs: &mut [&mut [u8]], offset: u64) -> stdio::Result<()> {
        (**self).read_hedged(bufs, offset)
    }
    fn read_nowait(&self, bufs: &mut [&mut [u8]], offset: u64) -> bool {
        (**self).read_nowait(bufs, offset)
    }
    fn start_writeback(&self, offset: u64, len: u64) {
        (**self).start_writeback(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> stdio::Result<()> {
        (**self).write_zeroes(offset, len)
    }
    fn guard(&self) -> Option<&Guarded> {
        (**self).guard()
    }
}
