//! Member devices: the disks (or files) an array is made of.
//!
//! Everything the engine does to a member goes through [`MemberDevice`], so tests can plug in
//! an in-memory member, a power-loss simulator or a fault injector.

use parking_lot::RwLock;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// A member disk: positioned reads and writes, and a flush that makes completed writes durable.
pub trait MemberDevice: Send + Sync {
    /// Human-readable name (the path), used in messages.
    fn name(&self) -> &str;
    /// Size in bytes.
    fn size(&self) -> u64;
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Reads consecutive bytes starting at `offset` into `bufs`, one after another.
    fn read_vectored_at(&self, bufs: &mut [&mut [u8]], offset: u64) -> io::Result<()> {
        let mut off = offset;
        for b in bufs.iter_mut() {
            self.read_at(b, off)?;
            off += b.len() as u64;
        }
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every completed write durable.
    fn flush(&self) -> io::Result<()>;
    /// A hint: start writing `[offset, offset+len)` (just written) to stable storage now,
    /// without waiting, so a later `flush` has less left to do. Durability still comes only
    /// from `flush`. The default does nothing.
    fn start_writeback(&self, _offset: u64, _len: u64) {}
    /// Makes `[offset, offset+len)` read as zeros. Members that can deallocate do so.
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        write_zeroes_by_writing(self, offset, len)
    }
}

/// Fallback for [`MemberDevice::write_zeroes`]: writes zero buffers.
pub fn write_zeroes_by_writing<D: MemberDevice + ?Sized>(
    dev: &D,
    offset: u64,
    len: u64,
) -> io::Result<()> {
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

/// A regular file or a block device.
pub struct FileMember {
    name: String,
    file: File,
    size: u64,
    block_device: bool,
}

impl FileMember {
    /// Opens a member and takes an advisory lock on it (shared for reading, exclusive for
    /// writing), so two damocles processes never write the same member.
    pub fn open(path: &Path, mode: OpenMode) -> io::Result<FileMember> {
        let name = path.display().to_string();
        let meta = std::fs::metadata(path)?;
        let block_device = meta.file_type().is_block_device();
        if !block_device && !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file or block device",
            ));
        }
        let mut opts = OpenOptions::new();
        opts.read(true);
        if mode == OpenMode::ReadWrite {
            opts.write(true);
            if block_device {
                // O_EXCL on a block device fails while it is mounted or claimed by md/dm.
                opts.custom_flags(rustix::fs::OFlags::EXCL.bits() as i32);
            }
        }
        let file = opts.open(path)?;
        let lock = match mode {
            OpenMode::ReadOnly => rustix::fs::FlockOperation::NonBlockingLockShared,
            OpenMode::ReadWrite => rustix::fs::FlockOperation::NonBlockingLockExclusive,
        };
        rustix::fs::flock(&file, lock).map_err(|_| {
            io::Error::new(
                io::ErrorKind::ResourceBusy,
                "in use by another damocles process (is the array being served?)",
            )
        })?;
        let size = if block_device {
            rustix::fs::seek(&file, rustix::fs::SeekFrom::End(0))?
        } else {
            meta.len()
        };
        Ok(FileMember {
            name,
            file,
            size,
            block_device,
        })
    }
}

impl MemberDevice for FileMember {
    fn name(&self) -> &str {
        &self.name
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(self.size, offset, buf.len())?;
        self.file.read_exact_at(buf, offset)
    }
    fn read_vectored_at(&self, bufs: &mut [&mut [u8]], offset: u64) -> io::Result<()> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        check_range(self.size, offset, total)?;
        let n = {
            let mut iov: Vec<io::IoSliceMut> =
                bufs.iter_mut().map(|b| io::IoSliceMut::new(b)).collect();
            rustix::io::preadv(&self.file, &mut iov, offset)?
        };
        // A short read (rare: signals, huge requests) finishes piece by piece.
        let mut done = 0;
        for b in bufs.iter_mut() {
            let len = b.len();
            if done + len > n {
                let skip = n.saturating_sub(done);
                self.file
                    .read_exact_at(&mut b[skip..], offset + (done + skip) as u64)?;
            }
            done += len;
        }
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        check_range(self.size, offset, buf.len())?;
        self.file.write_all_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn start_writeback(&self, offset: u64, len: u64) {
        // On Linux, DONTNEED starts writeback of the range's dirty pages without waiting
        // (and drops only pages that are clean already: not these, just written).
        let _ = rustix::fs::fadvise(
            &self.file,
            offset,
            std::num::NonZeroU64::new(len),
            rustix::fs::Advice::DontNeed,
        );
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        check_range(self.size, offset, len as usize)?;
        use rustix::fs::FallocateFlags as F;
        // Punching a hole keeps test files sparse; ZERO_RANGE is the block-device path.
        let first = if self.block_device {
            F::ZERO_RANGE
        } else {
            F::PUNCH_HOLE | F::KEEP_SIZE
        };
        for flags in [first, F::ZERO_RANGE] {
            if rustix::fs::fallocate(&self.file, flags, offset, len).is_ok() {
                return Ok(());
            }
        }
        write_zeroes_by_writing(self, offset, len)
    }
}

fn check_range(size: u64, offset: u64, len: usize) -> io::Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("access {offset}+{len} beyond the end of the member ({size} bytes)"),
        )),
    }
}

/// An in-memory member, for tests and examples.
pub struct MemMember {
    name: String,
    data: RwLock<Vec<u8>>,
}

impl MemMember {
    pub fn new(name: impl Into<String>, size: u64) -> MemMember {
        MemMember {
            name: name.into(),
            data: RwLock::new(vec![0; size as usize]),
        }
    }

    /// A copy of the whole content, e.g. to corrupt it and build a new member from it.
    pub fn snapshot(&self) -> Vec<u8> {
        self.data.read().clone()
    }

    pub fn from_bytes(name: impl Into<String>, data: Vec<u8>) -> MemMember {
        MemMember {
            name: name.into(),
            data: RwLock::new(data),
        }
    }
}

impl MemberDevice for MemMember {
    fn name(&self) -> &str {
        &self.name
    }
    fn size(&self) -> u64 {
        self.data.read().len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let data = self.data.read();
        check_range(data.len() as u64, offset, buf.len())?;
        let o = offset as usize;
        buf.copy_from_slice(&data[o..o + buf.len()]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut data = self.data.write();
        check_range(data.len() as u64, offset, buf.len())?;
        let o = offset as usize;
        data[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}

impl<T: MemberDevice + ?Sized> MemberDevice for std::sync::Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_at(buf, offset)
    }
    fn read_vectored_at(&self, bufs: &mut [&mut [u8]], offset: u64) -> io::Result<()> {
        (**self).read_vectored_at(bufs, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        (**self).write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        (**self).flush()
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        (**self).write_zeroes(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_member_vectored_read_matches_plain_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let m = FileMember::open(&path, OpenMode::ReadOnly).unwrap();
        let (mut a, mut b, mut c) = (vec![0u8; 4096], vec![0u8; 1], vec![0u8; 65536 + 3]);
        m.read_vectored_at(&mut [&mut a, &mut b, &mut c], 1234)
            .unwrap();
        let got: Vec<u8> = [a, b, c].concat();
        assert_eq!(got, data[1234..1234 + got.len()]);
        let mut past = vec![0u8; 10];
        assert!(m.read_vectored_at(&mut [&mut past], 299_995).is_err());
    }
}
