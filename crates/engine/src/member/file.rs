//! A member that is a regular file or a block device, read and written through the page
//! cache or with `O_DIRECT` ([`DirectIo`]; see `direct.rs` for how requests that are not
//! aligned are served).

use super::aligned::AlignedBuf;
use super::direct::Direct;
use super::{check_range, write_zeroes_by_writing, MemberDevice, OpenMode};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// A regular file or a block device.
pub struct FileMember {
    name: String,
    file: File,
    size: u64,
    /// A regular file with holes when opened: zeroing punches holes. A file fully
    /// allocated (reserved by `create`) stays so: zeroing keeps its blocks.
    sparse: bool,
    /// The file refused `RWF_NOWAIT` once (EOPNOTSUPP): not asked again.
    no_nowait: std::sync::atomic::AtomicBool,
    /// Set when `file` was opened with `O_DIRECT`.
    direct: Option<Direct>,
}

/// Whether members are opened with `O_DIRECT` (no copy of their data in the page cache).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DirectIo {
    /// Block devices direct, regular files through the page cache. A block device that
    /// refuses `O_DIRECT` is opened buffered, with a warning.
    #[default]
    Auto,
    /// Regular files direct too; a file whose filesystem refuses `O_DIRECT` (ramfs, some
    /// FUSE file systems) is an error that says so.
    Always,
    /// Everything through the page cache.
    Never,
}

/// The logical block size of regular files opened direct: the page size, which every
/// filesystem block size supporting direct I/O here divides or equals.
const FILE_BLOCK: u64 = 4096;

fn refused_direct(e: &io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error())
}

/// Bytes of the regular file at `path` not backed by allocated blocks (0 for a fully
/// allocated file; `None` for anything but a regular file).
pub fn unallocated_bytes(path: &Path) -> io::Result<Option<u64>> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    if !m.is_file() {
        return Ok(None);
    }
    Ok(Some(m.len().saturating_sub(m.blocks() * 512)))
}

/// Bytes free for unprivileged users on the filesystem holding `path`; `None` when that
/// filesystem reports no capacity at all (FUSE file systems such as nbdfuse's often do),
/// so nothing can be said about its space.
pub fn filesystem_free(path: &Path) -> io::Result<Option<u64>> {
    let st = rustix::fs::statvfs(path)?;
    if st.f_blocks == 0 {
        return Ok(None);
    }
    Ok(Some(st.f_bavail.saturating_mul(st.f_frsize)))
}

/// Allocates every block of the regular file at `path` (its data unchanged), so writes to
/// it cannot fail for want of space on its filesystem. Block devices need nothing:
/// `Ok(false)`.
pub fn reserve_file(path: &Path) -> io::Result<bool> {
    let m = std::fs::metadata(path)?;
    if !m.is_file() {
        return Ok(false);
    }
    let f = OpenOptions::new().write(true).open(path)?;
    rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, m.len())?;
    Ok(true)
}

impl FileMember {
    /// Opens a member and takes an advisory lock on it (shared for reading, exclusive for
    /// writing), so two damocles processes never write the same member. Block devices are
    /// opened `O_DIRECT` ([`DirectIo::Auto`]).
    pub fn open(path: &Path, mode: OpenMode) -> io::Result<FileMember> {
        FileMember::open_with(path, mode, DirectIo::Auto)
    }

    /// [`FileMember::open`] choosing when to use `O_DIRECT`.
    pub fn open_with(path: &Path, mode: OpenMode, direct: DirectIo) -> io::Result<FileMember> {
        let meta = std::fs::metadata(path)?;
        let block_device = meta.file_type().is_block_device();
        if !block_device && !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file or block device",
            ));
        }
        let want = match direct {
            DirectIo::Auto => block_device,
            DirectIo::Always => true,
            DirectIo::Never => false,
        };
        if !want {
            return FileMember::open_as(path, mode, &meta, false);
        }
        match FileMember::open_as(path, mode, &meta, true) {
            Err(e) if refused_direct(&e) && direct == DirectIo::Auto => {
                tracing::warn!(
                    "{}: the device refuses O_DIRECT ({e}); using the page cache",
                    path.display()
                );
                FileMember::open_as(path, mode, &meta, false)
            }
            Err(e) if refused_direct(&e) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "direct I/O (O_DIRECT) refused by the file system holding it ({e}); \
                     serve it without direct I/O"
                ),
            )),
            r => r,
        }
    }

    fn open_as(
        path: &Path,
        mode: OpenMode,
        meta: &std::fs::Metadata,
        direct: bool,
    ) -> io::Result<FileMember> {
        use rustix::fs::OFlags;
        let name = path.display().to_string();
        let block_device = meta.file_type().is_block_device();
        let mut opts = OpenOptions::new();
        opts.read(true);
        let mut flags = OFlags::empty();
        if mode == OpenMode::ReadWrite {
            opts.write(true);
            if block_device {
                // O_EXCL on a block device fails while it is mounted or claimed by md/dm.
                flags |= OFlags::EXCL;
            }
        }
        if direct {
            flags |= OFlags::DIRECT;
        }
        opts.custom_flags(flags.bits() as i32);
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
        let direct = if direct {
            Some(open_direct(path, mode, &file, block_device, size)?)
        } else {
            None
        };
        use std::os::unix::fs::MetadataExt;
        let sparse = !block_device && meta.blocks() * 512 < meta.len();
        Ok(FileMember {
            name,
            file,
            size,
            sparse,
            no_nowait: std::sync::atomic::AtomicBool::new(false),
            direct,
        })
    }

    /// Whether the member was opened with `O_DIRECT`.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// The alignment of direct requests (logical block size): `None` when not direct.
    pub fn direct_block(&self) -> Option<u64> {
        self.direct.as_ref().map(|d| d.block())
    }

    /// Writes that were not aligned to the block size and so went through the page cache
    /// (0 when not direct).
    pub fn buffered_writes(&self) -> u64 {
        self.direct.as_ref().map_or(0, |d| d.buffered_writes())
    }

    /// Bytes written direct and bytes written through the page cache since opened
    /// (`(0, 0)` when not direct).
    pub fn direct_written(&self) -> (u64, u64) {
        self.direct.as_ref().map_or((0, 0), |d| d.written())
    }
}

/// The rest of a direct member: its block size, a probe that direct reads work (some file
/// systems accept the flag and refuse the reads) and the buffered descriptor for writes
/// that are not aligned (opened without `O_EXCL`: `file` holds the claim).
fn open_direct(
    path: &Path,
    mode: OpenMode,
    file: &File,
    block_device: bool,
    size: u64,
) -> io::Result<Direct> {
    let block = if block_device {
        u64::from(rustix::fs::ioctl_blksszget(file)?).max(512)
    } else {
        FILE_BLOCK
    };
    if size >= block {
        let mut probe = AlignedBuf::zeroed(block as usize);
        file.read_exact_at(&mut probe, 0)?;
    }
    let buffered = OpenOptions::new()
        .read(true)
        .write(mode == OpenMode::ReadWrite)
        .open(path)?;
    let (a, b) = (rustix::fs::fstat(file)?, rustix::fs::fstat(&buffered)?);
    if (a.st_dev, a.st_ino, a.st_rdev) != (b.st_dev, b.st_ino, b.st_rdev) {
        return Err(io::Error::other(
            "the path named another file when opened a second time",
        ));
    }
    Ok(Direct::new(buffered, block))
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
        match &self.direct {
            Some(d) => d.read(&self.file, &mut [buf], offset),
            None => self.file.read_exact_at(buf, offset),
        }
    }
    fn read_nowait(&self, bufs: &mut [&mut [u8]], offset: u64) -> bool {
        use std::sync::atomic::Ordering;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        // A direct member has nothing in the page cache to answer from.
        if self.direct.is_some()
            || self.no_nowait.load(Ordering::Relaxed)
            || check_range(self.size, offset, total).is_err()
        {
            return false;
        }
        let flags = rustix::io::ReadWriteFlags::NOWAIT;
        // One buffer (the common case) needs no vector of slices.
        let read = match bufs {
            [one] => {
                rustix::io::preadv2(&self.file, &mut [io::IoSliceMut::new(one)], offset, flags)
            }
            _ => {
                let mut iov: Vec<io::IoSliceMut> =
                    bufs.iter_mut().map(|b| io::IoSliceMut::new(b)).collect();
                rustix::io::preadv2(&self.file, &mut iov, offset, flags)
            }
        };
        match read {
            Ok(n) => n == total,
            Err(rustix::io::Errno::OPNOTSUPP) => {
                self.no_nowait.store(true, Ordering::Relaxed);
                false
            }
            Err(_) => false,
        }
    }
    fn read_vectored_at(&self, bufs: &mut [&mut [u8]], offset: u64) -> io::Result<()> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        check_range(self.size, offset, total)?;
        if let Some(d) = &self.direct {
            return d.read(&self.file, bufs, offset);
        }
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
        match &self.direct {
            Some(d) => d.write(&self.file, buf, offset),
            None => self.file.write_all_at(buf, offset),
        }
    }
    fn write_behind(&self) -> bool {
        self.direct.is_some()
    }
    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn start_writeback(&self, offset: u64, len: u64) {
        // Direct writes leave nothing dirty (but the rare unaligned one).
        if self
            .direct
            .as_ref()
            .is_some_and(|d| d.buffered_writes() == 0)
        {
            return;
        }
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
        // Punching a hole keeps sparse files sparse; ZERO_RANGE keeps the blocks of block
        // devices and of reserved files (a punched hole could not be refilled on a full
        // filesystem).
        let tries: &[F] = if self.sparse {
            &[F::PUNCH_HOLE.union(F::KEEP_SIZE), F::ZERO_RANGE]
        } else {
            &[F::ZERO_RANGE]
        };
        for &flags in tries {
            if rustix::fs::fallocate(&self.file, flags, offset, len).is_ok() {
                return Ok(());
            }
        }
        write_zeroes_by_writing(self, offset, len)
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
