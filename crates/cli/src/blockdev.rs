//! The array as an NBD block device.

use damocles_engine::Array;
use damocles_nbd::{BlockDevice, Extent};
use std::io;
use std::sync::Arc;

pub struct ArrayDevice(pub Arc<Array>);

impl BlockDevice for ArrayDevice {
    fn size(&self) -> u64 {
        self.0.size()
    }

    fn read_only(&self) -> bool {
        self.0.is_read_only()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        Ok(self.0.read_at(buf, offset)?)
    }

    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        self.0.write_at(buf, offset)?;
        if fua {
            self.0.flush()?;
        }
        Ok(())
    }

    fn write_owned(&self, buf: Vec<u8>, offset: u64, fua: bool) -> io::Result<Vec<Vec<u8>>> {
        let spare = self.0.write_owned(buf, offset)?;
        if fua {
            self.0.flush()?;
        }
        Ok(spare)
    }

    fn flush(&self) -> io::Result<()> {
        Ok(self.0.flush()?)
    }

    fn write_zeroes(&self, offset: u64, len: u64, _may_trim: bool, fua: bool) -> io::Result<()> {
        // Chunks never written already read as zeros: only allocated runs need writing.
        const PIECE: u64 = 1 << 20;
        let zeros = vec![0u8; PIECE.min(len) as usize];
        let mut off = offset;
        for (run, allocated) in self.0.allocation_runs(offset, len) {
            if allocated {
                let mut done = 0;
                while done < run {
                    let n = PIECE.min(run - done);
                    self.0.write_at(&zeros[..n as usize], off + done)?;
                    done += n;
                }
            }
            off += run;
        }
        if fua {
            self.0.flush()?;
        }
        Ok(())
    }

    fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        Ok(self
            .0
            .allocation_runs(offset, len)
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
