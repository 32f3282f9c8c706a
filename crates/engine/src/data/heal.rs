//! Self-healing reads: a block that fails its checksum is rebuilt from redundancy, checked
//! again, written back, and the good data returned — or the read fails. Never wrong data.

use super::Data;
use crate::error::{Error, Result};
use crate::events::EventKind;
use crate::layout::chunkmap::Chunk;
use crate::member::{read, write, Dev};
use std::ops::Range;
use std::sync::atomic::Ordering;

use crate::units::BLOCK_LEN as BLOCK;

impl Data {
    /// Checks the blocks read directly from members against their checksums; repairs the
    /// ones that fail (in `buf` and on the member).
    pub(crate) fn verify_direct(
        &self,
        idx: usize,
        c: &Chunk,
        co: u64,
        buf: &mut [u8],
        direct: &[(u16, u64, Range<usize>)],
        dirty: &dyn Fn(u64) -> bool,
    ) -> Result<()> {
        let Some(cs) = &self.csums else {
            return Ok(());
        };
        let members = self.members();
        let base = idx as u64 * self.chunk_size + co;
        for (m, off, range) in direct {
            let Some(dev) = members[*m as usize].clone() else {
                continue;
            };
            let mut start = 0usize;
            while start < range.len() {
                let piece = &buf[range.start + start..range.end];
                let Some(k) = cs.first_bad(*m, &dev, off + start as u64, piece) else {
                    break;
                };
                let at = range.start + start + k * BLOCK;
                let vblock = (base + at as u64) / BLOCK as u64;
                if !dirty(vblock) {
                    let good = self.heal_block(
                        idx,
                        c,
                        *m,
                        off + (start + k * BLOCK) as u64,
                        base + at as u64,
                    )?;
                    buf[at..at + BLOCK].copy_from_slice(&good);
                }
                start += (k + 1) * BLOCK;
            }
        }
        Ok(())
    }

    /// Rebuilds the block at `phys` on member `m` (part of chunk `idx`, volume offset
    /// `voff`) from redundancy, verifies it, and writes it back.
    pub(crate) fn heal_block(
        &self,
        idx: usize,
        c: &Chunk,
        m: u16,
        phys: u64,
        voff: u64,
    ) -> Result<Vec<u8>> {
        let cs = self.csums.as_ref().expect("checksums");
        self.count_checksum_error(m);
        let members = self.members();
        let pos = c
            .slices
            .iter()
            .position(|s| s.member == m)
            .expect("member holds a slice of the chunk");
        let su = c.profile.stripe_unit;
        let rel = phys - c.slices[pos].offset;
        let (row, col) = (rel / su, rel % su);
        let _g = self.locks.lock(idx as u32, row);
        let dev: Dev = members[m as usize]
            .clone()
            .ok_or_else(|| Error::Unavailable(format!("member {m} is gone")))?;
        let mut out = vec![0u8; BLOCK];
        // A writer may have replaced it since: look again under the row lock.
        if read(dev.as_ref(), &mut out, phys).is_ok() && cs.first_bad(m, &dev, phys, &out).is_none()
        {
            return Ok(out);
        }
        let mut view = (*members).clone();
        view[m as usize] = None;
        let rebuilt = self.rebuild_block_checked(c, &view, pos, row, col, &mut out);
        if !rebuilt || cs.first_bad(m, &dev, phys, &out).is_some() {
            self.tel
                .counters
                .unrecoverable
                .fetch_add(1, Ordering::Relaxed);
            self.emit(
                EventKind::Unrecoverable,
                Some(m as usize),
                Some(voff),
                format!(
                    "block at volume offset {voff} fails its checksum on member {m} and \
                     cannot be rebuilt from redundancy"
                ),
            );
            return Err(Error::Lost(format!(
                "volume offset {voff}: data fails its checksum and redundancy cannot restore it"
            )));
        }
        if self.read_only {
            // Serve the good data; the member is repaired when opened for writing.
            return Ok(out);
        }
        write(dev.as_ref(), &out, phys)?;
        self.tel.counters.repaired.fetch_add(1, Ordering::Relaxed);
        self.emit(
            EventKind::ChecksumRepaired,
            Some(m as usize),
            Some(voff),
            format!("repaired block at volume offset {voff} on member {m} from redundancy"),
        );
        Ok(out)
    }
}
