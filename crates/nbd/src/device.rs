//! The block device abstraction served over NBD, plus an in-memory device.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

/// One run of the `base:allocation` status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub len: u64,
    /// Not allocated in the backing store.
    pub hole: bool,
    /// Reads as zeroes.
    pub zero: bool,
}

/// A blocking block device. The server calls every method from its own
/// blocking threads, never from async executor threads, and concurrently
/// (several threads per connection, many connections), so implementations
/// must be internally synchronised.
///
/// Durability contract (required for `NBD_FLAG_CAN_MULTI_CONN`, which the
/// server always advertises): once `flush` returns `Ok`, every write, trim
/// and write-zeroes that had *completed* (returned) before `flush` was called
/// — on any connection — is durable. Likewise a write with `fua = true` must
/// be durable when it returns. A write that completed but could not be made
/// durable (the device lost it) must make `flush` fail — once for each
/// connection that was there when it was lost (Linux's `fsync` after writeback
/// errors is the model): a device that tells connections apart gives each its
/// own handle ([`BlockDevice::for_connection`]) that remembers what it told.
///
/// The server validates ranges against [`BlockDevice::size`] before calling,
/// so implementations only see in-bounds requests. `size`, `read_only` and
/// `preferred_block_size` are called on async threads and must not block.
pub trait BlockDevice: Send + Sync + 'static {
    /// Export size in bytes; must not change while served.
    fn size(&self) -> u64;

    fn read_only(&self) -> bool {
        false
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()>;

    /// [`BlockDevice::write_at`] with a buffer the device may keep instead of copying
    /// it. Returns buffers the device no longer needs (`buf`, or others it held), which
    /// the server reuses for later requests. Default: `write_at`, then `buf` back.
    fn write_owned(&self, buf: Vec<u8>, offset: u64, fua: bool) -> io::Result<Vec<Vec<u8>>> {
        self.write_at(&buf, offset, fua)?;
        Ok(vec![buf])
    }

    /// Make all completed writes durable (see the trait docs).
    fn flush(&self) -> io::Result<()>;

    /// The device one new connection is served with, for a device that keeps
    /// state per client — which write-back errors its flushes have reported (see
    /// the trait docs). Called once per connection, as it enters transmission,
    /// on an async thread: must not block. Default: `None`, the export's device
    /// itself serves every connection.
    fn for_connection(&self) -> Option<Arc<dyn BlockDevice>> {
        None
    }

    /// Discard hint; the data afterwards is unspecified. Default: no-op.
    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }

    /// Zero a range. `may_trim` allows deallocating it instead of writing.
    /// Default: writes zero buffers in pieces.
    fn write_zeroes(&self, offset: u64, len: u64, may_trim: bool, fua: bool) -> io::Result<()> {
        let _ = may_trim;
        const PIECE: u64 = 1 << 20;
        let zeroes = vec![0u8; PIECE.min(len) as usize];
        let mut done = 0;
        while done < len {
            let n = PIECE.min(len - done);
            let last = done + n == len;
            self.write_at(&zeroes[..n as usize], offset + done, fua && last)?;
            done += n;
        }
        // Earlier pieces were written without FUA; make them durable too.
        if fua && len > PIECE {
            self.flush()?;
        }
        Ok(())
    }

    /// Allocation status for `base:allocation`: extents covering a prefix of
    /// `[offset, offset + len)`. Default: one data extent for the whole range.
    fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        let _ = offset;
        Ok(vec![Extent {
            len,
            hole: false,
            zero: false,
        }])
    }

    /// Preferred I/O granularity advertised to clients (a power of two >= 512).
    fn preferred_block_size(&self) -> u32 {
        4096
    }
}

const MEM_BLOCK: u64 = 4096;

/// A sparse in-memory device: never-written (or trimmed) 4 KiB blocks are holes.
pub struct MemDevice {
    size: u64,
    read_only: bool,
    blocks: Mutex<BTreeMap<u64, Box<[u8]>>>,
}

impl MemDevice {
    pub fn new(size: u64) -> Self {
        MemDevice {
            size,
            read_only: false,
            blocks: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn new_read_only(size: u64) -> Self {
        MemDevice {
            read_only: true,
            ..MemDevice::new(size)
        }
    }

    /// Number of allocated 4 KiB blocks.
    pub fn allocated_blocks(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Box<[u8]>>> {
        // A panic while holding the lock cannot leave the map inconsistent.
        self.blocks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check(&self, offset: u64, len: u64) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "out of range")),
        }
    }

    /// Visit each block touched by `[offset, offset+len)` as (index, start-in-block, count, pos-in-range).
    fn for_each_piece(offset: u64, len: u64, mut f: impl FnMut(u64, usize, usize, usize)) {
        let mut pos = 0u64;
        while pos < len {
            let abs = offset + pos;
            let idx = abs / MEM_BLOCK;
            let start = abs % MEM_BLOCK;
            let n = (MEM_BLOCK - start).min(len - pos);
            f(idx, start as usize, n as usize, pos as usize);
            pos += n;
        }
    }

    fn zero_range(&self, offset: u64, len: u64, dealloc: bool) {
        let mut map = self.lock();
        Self::for_each_piece(offset, len, |idx, start, n, _| {
            let whole = start == 0 && n as u64 == MEM_BLOCK;
            if whole && dealloc {
                map.remove(&idx);
            } else if let Some(b) = map.get_mut(&idx) {
                b[start..start + n].fill(0);
            } else if !dealloc {
                map.insert(idx, vec![0u8; MEM_BLOCK as usize].into_boxed_slice());
            }
        });
    }
}

impl BlockDevice for MemDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check(offset, buf.len() as u64)?;
        let map = self.lock();
        Self::for_each_piece(offset, buf.len() as u64, |idx, start, n, pos| {
            let dst = &mut buf[pos..pos + n];
            match map.get(&idx) {
                Some(b) => dst.copy_from_slice(&b[start..start + n]),
                None => dst.fill(0),
            }
        });
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64, _fua: bool) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from(io::ErrorKind::PermissionDenied));
        }
        self.check(offset, buf.len() as u64)?;
        let mut map = self.lock();
        Self::for_each_piece(offset, buf.len() as u64, |idx, start, n, pos| {
            let b = map
                .entry(idx)
                .or_insert_with(|| vec![0u8; MEM_BLOCK as usize].into_boxed_slice());
            b[start..start + n].copy_from_slice(&buf[pos..pos + n]);
        });
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check(offset, len)?;
        // Only whole blocks are dropped; partial blocks keep their data (trim is a hint).
        let mut map = self.lock();
        Self::for_each_piece(offset, len, |idx, start, n, _| {
            if start == 0 && n as u64 == MEM_BLOCK {
                map.remove(&idx);
            }
        });
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_trim: bool, _fua: bool) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from(io::ErrorKind::PermissionDenied));
        }
        self.check(offset, len)?;
        self.zero_range(offset, len, may_trim);
        Ok(())
    }

    fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        self.check(offset, len)?;
        let map = self.lock();
        let end = offset + len;
        let mut out: Vec<Extent> = Vec::new();
        let mut push = |len: u64, hole: bool| {
            if len == 0 {
                return;
            }
            match out.last_mut() {
                Some(last) if last.hole == hole => last.len += len,
                _ => out.push(Extent {
                    len,
                    hole,
                    zero: hole,
                }),
            }
        };
        let mut pos = offset;
        let first = offset / MEM_BLOCK;
        let last = end.div_ceil(MEM_BLOCK);
        for (&idx, _) in map.range(first..last) {
            let bstart = (idx * MEM_BLOCK).max(pos);
            let bend = ((idx + 1) * MEM_BLOCK).min(end);
            push(bstart - pos, true);
            push(bend - bstart, false);
            pos = bend;
        }
        push(end - pos, true);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_device_sparse() {
        let d = MemDevice::new(64 * 1024);
        let mut buf = vec![1u8; 100];
        d.read_at(&mut buf, 10).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        d.write_at(&[7u8; 10], 4090, false).unwrap();
        assert_eq!(d.allocated_blocks(), 2);
        d.read_at(&mut buf, 4085).unwrap();
        assert_eq!(&buf[..5], &[0; 5]);
        assert_eq!(&buf[5..15], &[7; 10]);
        let ext = d.block_status(0, 64 * 1024).unwrap();
        assert_eq!(
            ext,
            vec![
                Extent {
                    len: 8192,
                    hole: false,
                    zero: false
                },
                Extent {
                    len: 56 * 1024,
                    hole: true,
                    zero: true
                },
            ]
        );
        let ext = d.block_status(100, 5000).unwrap();
        assert_eq!(ext.iter().map(|e| e.len).sum::<u64>(), 5000);
        d.write_zeroes(0, 8192, true, false).unwrap();
        assert_eq!(d.allocated_blocks(), 0);
        d.write_zeroes(0, 100, false, false).unwrap();
        assert_eq!(d.allocated_blocks(), 1);
        assert!(d.read_at(&mut buf, 64 * 1024 - 10).is_err());
    }
}
