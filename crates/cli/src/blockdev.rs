//! A volume of an array as an NBD block device.

use damocles_engine::{Array, FlushToken, Volume, VolumeIo};
use damocles_nbd::{BlockDevice, Extent};
use std::io;
use std::sync::Arc;

/// One volume, by its id (stable across renames). Requests after the volume is deleted
/// fail with EINVAL; the server stops exporting it first. Reads and writes done are
/// counted in the volume's counters (the metrics' per-volume figures).
///
/// Each NBD connection is served by a handle of its own ([`BlockDevice::for_connection`])
/// holding a [`FlushToken`] taken as it connects: a FLUSH (or FUA write) on it fails with
/// EIO, once, when a commit since dropped writes of the volume (their chunk's only member
/// failed before they were committed; see `Array::flush_with`).
pub struct VolumeDevice {
    pub array: Arc<Array>,
    pub id: u32,
    io: Arc<VolumeIo>,
    /// The connection's observer of the volume's write-back errors; `None` for the
    /// export's own device (the server's flush at shutdown), which flushes plainly.
    token: Option<FlushToken>,
}

impl VolumeDevice {
    pub fn new(array: Arc<Array>, v: &Volume) -> VolumeDevice {
        let io = array.volume_io(v.id);
        VolumeDevice {
            array,
            id: v.id,
            io,
            token: None,
        }
    }

    /// Makes every completed write durable; for a connection's handle, fails once after
    /// writes were lost (see the type's docs).
    fn flush_all(&self) -> io::Result<()> {
        match &self.token {
            Some(t) => Ok(self.array.flush_with(t)?),
            None => Ok(self.array.flush()?),
        }
    }

    /// The array's only volume; an error naming them when it has none or several.
    pub fn only(array: Arc<Array>) -> anyhow::Result<VolumeDevice> {
        match array.volume_list().as_slice() {
            [v] => Ok(VolumeDevice::new(array.clone(), v)),
            [] => anyhow::bail!(
                "the array has no volume to serve: damocles volume create NAME --level L --size SIZE"
            ),
            vols => anyhow::bail!(
                "the array holds several volumes ({}): name the one to serve",
                vols.iter()
                    .map(|v| v.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// Volume `v`'s NBD export: named after it (or `name`), described by level and size.
pub fn volume_export(
    array: &Arc<Array>,
    v: &Volume,
    name: Option<&str>,
    read_only: bool,
    stats: Option<Arc<damocles_nbd::ExportStats>>,
) -> damocles_nbd::Export {
    damocles_nbd::Export {
        name: name.unwrap_or(&v.name).to_string(),
        description: format!(
            "damocles {} volume {} of {} bytes{}",
            v.template.level,
            v.name,
            v.size,
            if v.thin { ", thin" } else { "" }
        ),
        read_only,
        device: Arc::new(VolumeDevice::new(array.clone(), v)),
        stats,
    }
}

impl BlockDevice for VolumeDevice {
    fn size(&self) -> u64 {
        self.array.volume_by_id(self.id).map_or(0, |v| v.size)
    }

    fn read_only(&self) -> bool {
        self.array.is_read_only()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.array.volume_read(self.id, buf, offset)?;
        self.io.count_read(buf.len() as u64);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        self.array.volume_write(self.id, buf, offset)?;
        self.io.count_write(buf.len() as u64);
        if fua {
            self.flush_all()?;
        }
        Ok(())
    }

    fn write_owned(&self, buf: Vec<u8>, offset: u64, fua: bool) -> io::Result<Vec<Vec<u8>>> {
        let n = buf.len() as u64;
        let spare = self.array.volume_write_owned(self.id, buf, offset)?;
        self.io.count_write(n);
        if fua {
            self.flush_all()?;
        }
        Ok(spare)
    }

    fn flush(&self) -> io::Result<()> {
        self.flush_all()
    }

    fn for_connection(&self) -> Option<Arc<dyn BlockDevice>> {
        Some(Arc::new(VolumeDevice {
            array: self.array.clone(),
            id: self.id,
            io: self.io.clone(),
            token: Some(self.array.flush_token(self.id)),
        }))
    }

    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        Ok(self.array.volume_trim(self.id, offset, len)?)
    }

    fn write_zeroes(&self, offset: u64, len: u64, _may_trim: bool, fua: bool) -> io::Result<()> {
        // Chunks never written already read as zeros: only allocated runs need writing.
        const PIECE: u64 = 1 << 20;
        let zeros = vec![0u8; PIECE.min(len) as usize];
        let mut off = offset;
        let mut written = 0;
        for (run, allocated) in self.array.volume_allocation_runs(self.id, offset, len) {
            if allocated {
                let mut done = 0;
                while done < run {
                    let n = PIECE.min(run - done);
                    self.array
                        .volume_write(self.id, &zeros[..n as usize], off + done)?;
                    done += n;
                }
                written += run;
            }
            off += run;
        }
        // One write request, of the zeros really written.
        self.io.count_write(written);
        if fua {
            self.flush_all()?;
        }
        Ok(())
    }

    fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        Ok(self
            .array
            .volume_allocation_runs(self.id, offset, len)
            .into_iter()
            .map(|(len, allocated)| Extent {
                len,
                hole: !allocated,
                zero: !allocated,
            })
            .collect())
    }

    fn preferred_block_size(&self) -> u32 {
        4096
    }
}
