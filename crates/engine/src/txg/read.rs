//! Reading the volume: the newest data, whether still buffered in a transaction group or
//! already on the members, checked against the volume's size and its lost ranges.

use super::Txg;
use crate::error::{Error, Result};

impl Txg {
    pub(crate) fn check_range(&self, offset: u64, len: usize) -> Result<()> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.size() => Ok(()),
            _ => Err(Error::Invalid(format!(
                "I/O at {offset}+{len} is beyond the end of the array ({} bytes)",
                self.size()
            ))),
        }
    }

    /// Reads the virtual disk: what was written last, or an error. A member that fails to
    /// read is failed (when the array can do without it) and the read served from the rest.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len())?;
        self.check_lost(offset, buf.len() as u64)?;
        if self.csums.is_some() && (!offset.is_multiple_of(4096) || !buf.len().is_multiple_of(4096))
        {
            // Checksums cover whole blocks: read those, hand back the part asked for.
            let lo = offset / 4096 * 4096;
            let hi = (offset + buf.len() as u64).next_multiple_of(4096);
            let mut whole = vec![0u8; (hi - lo) as usize];
            self.read_at(&mut whole, lo)?;
            let at = (offset - lo) as usize;
            buf.copy_from_slice(&whole[at..at + buf.len()]);
            return Ok(());
        }
        self.with_failover(|| self.read_passing_slow(buf, offset))
    }

    /// Reads; a member that passes the slow limit where the others could answer is left
    /// out and the read done again without it (it stays in service: only the fail limit
    /// fails a member).
    fn read_passing_slow(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut view = self.members();
        loop {
            let r = if self.journal.is_some() {
                self.read_cached(buf, offset, &view)
            } else {
                self.read_members(buf, offset, &|_| false, &view)
            };
            match r {
                Err(Error::Slow { device }) => {
                    let slow = view
                        .iter()
                        .position(|d| d.as_ref().is_some_and(|d| d.name() == device));
                    let Some(i) = slow else {
                        return Err(Error::Internal(format!("a slow read of {device}")));
                    };
                    let mut less = (*view).clone();
                    less[i] = None;
                    view = std::sync::Arc::new(less);
                    tracing::debug!("{device} passed the slow limit: read from the others");
                }
                r => return r,
            }
        }
    }

    /// EIO for ranges recorded lost.
    fn check_lost(&self, offset: u64, len: u64) -> Result<()> {
        let st = self.store.lock();
        match st
            .meta
            .health
            .lost
            .iter()
            .find(|&&(o, l)| o < offset + len && offset < o + l)
        {
            Some(&(o, l)) => Err(Error::Lost(format!(
                "volume bytes {o}..{} are lost (could not be rebuilt); rewrite them to use them again",
                o + l
            ))),
            None => Ok(()),
        }
    }
}
