//! The volume's entry points: reads, writes and flushes of the virtual disk, checked
//! against its size, its lost ranges and a poisoned commit; served through the commit
//! layer's buffer when the array has a journal, straight from the members when not, and
//! retried degraded when a member fails.

use super::Array;
use crate::error::{Error, Result};
use crate::layout::stripe::pieces;
use crate::member::flush_all;
use crate::txg::{FlushToken, Payload};

impl Array {
    /// Writes the virtual disk. With a journal the write is buffered until the next commit
    /// (`flush`, the dirty budget, or the background flusher); durable after `flush`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.write_payload(Payload::Borrowed(buf), offset)
            .map(|_| ())
    }

    /// [`Array::write_at`] that may keep `buf` instead of copying it (a write of whole
    /// 4 KiB blocks with the journal). Returns buffers no longer needed — `buf` itself or
    /// older writes it replaced — for the caller to reuse.
    pub fn write_owned(&self, buf: Vec<u8>, offset: u64) -> Result<Vec<Vec<u8>>> {
        self.write_payload(Payload::Owned(buf), offset)
    }

    fn write_payload(&self, buf: Payload, offset: u64) -> Result<Vec<Vec<u8>>> {
        let len = buf.len();
        self.check_range(offset, len)?;
        self.check_usable()?;
        let mut payload = Some(buf);
        let spare = self.with_failover(|| {
            self.record_missing()?;
            if self.journal.is_some() {
                // Allocate now, so allocation status is true while the data is still dirty.
                for (idx, ..) in pieces(self.chunk_size, offset, len) {
                    self.chunk_for_write(idx)?;
                }
                self.write_cached(&mut payload, offset)
            } else {
                let _gate = self.chunk_gate.read();
                let buf = payload.as_ref().expect("payload").as_slice();
                self.write_direct(buf, offset).map(|()| Vec::new())
            }
        })?;
        self.forget_lost(offset, len as u64)?;
        Ok(match payload {
            Some(Payload::Owned(v)) => vec![v],
            _ => spare,
        })
    }

    /// Keeps every write acknowledged but not yet committed in a write log under `dir` (a
    /// memory filesystem: it outlives this process, not the machine), so a server killed
    /// while its client stays connected loses none of them (`txg/wlog.rs`). First replays
    /// and commits what a previous process left there; returns how many writes that was
    /// (an error only when that replay fails: then nothing may be written before it
    /// succeeds). A log that cannot be created is reported and done without. Arrays
    /// without a journal write in place at once and need no log.
    pub fn attach_write_log(&self, dir: &std::path::Path) -> Result<usize> {
        if self.journal.is_none() || self.read_only || self.wlog.get().is_some() {
            return Ok(0);
        }
        let found = crate::txg::wlog::recover(dir, &self.uuid);
        let n = found.len();
        for (off, data) in &found {
            if off.saturating_add(data.len() as u64) > self.size() {
                tracing::warn!("write log: a write at {off} lies beyond the volume; skipped");
                continue;
            }
            let held = {
                let meta = &self.store.committed().meta;
                let cs = self.chunk_size;
                (*off / cs..=(off + data.len().max(1) as u64 - 1) / cs)
                    .all(|i| meta.volume_of(i as usize).is_some())
            };
            if !held {
                tracing::warn!("write log: a write at {off} lies in no volume (deleted); skipped");
                continue;
            }
            self.write_at(data, *off)?;
        }
        if n > 0 {
            self.flush()?;
            tracing::warn!(
                "replayed {n} writes that a previous server acknowledged but had not yet \
                 committed when it stopped"
            );
        }
        // A file grows by about what a commit takes (the committer starts one at a quarter
        // of the budget); it keeps that much memory for the next round.
        let retain = (self.cache.budget / 4).clamp(1 << 20, 256 << 20);
        match crate::txg::wlog::WriteLog::create(dir, &self.uuid, retain) {
            Ok(log) => {
                let _ = self.wlog.set(log);
            }
            // Serving goes on, as it did before the log existed; the log says what is lost.
            Err(e) => tracing::warn!(
                "no write log in {}: {e}; writes acknowledged but not yet flushed will die \
                 with this process",
                dir.display()
            ),
        }
        Ok(n)
    }

    /// Makes every completed write durable — those a commit had to drop (their chunk's
    /// only member failed first; recorded lost) excepted: this says nothing of them. A
    /// flush answered to a client is [`Array::flush_with`].
    pub fn flush(&self) -> Result<()> {
        if self.journal.is_some() && !self.read_only {
            self.check_usable()?;
            return self.commit();
        }
        self.with_failover(|| flush_all(&self.members()))
    }

    /// A new observer of volume `id`'s write-back errors, for [`Array::flush_with`]: one
    /// per client (an NBD connection), taken when it connects. Losses before it was taken
    /// are not its own.
    pub fn flush_token(&self, id: u32) -> FlushToken {
        self.errseq.token(id)
    }

    /// [`Array::flush`] for the observer `token`: fails (with [`Error::Lost`], EIO) when a
    /// commit since the token last looked — this flush's own or an earlier one — dropped
    /// data of its volume; then the token has seen it, and its next flush succeeds. A
    /// FLUSH so fails on every connection that was there when the data was lost, once.
    pub fn flush_with(&self, token: &FlushToken) -> Result<()> {
        let flushed = self.flush();
        // Looked at after the flush (which waited for any commit under way), and taken
        // even when the flush failed: its error covers the loss too.
        let dropped = token.take_errors();
        flushed?;
        if dropped > 0 {
            let name = self
                .volume_by_id(token.volume())
                .map_or_else(|| format!("id {}", token.volume()), |v| v.name);
            return Err(Error::Lost(format!(
                "writes to volume {name} were lost before they could be committed (their \
                 chunk's only member failed); status lists the lost ranges, which read as EIO"
            )));
        }
        Ok(())
    }

    /// Whole 4 KiB blocks written over a lost range hold good data again.
    fn forget_lost(&self, offset: u64, len: u64) -> Result<()> {
        let (lo, hi) = (offset.next_multiple_of(4096), (offset + len) / 4096 * 4096);
        let mut st = self.store.lock();
        if hi <= lo
            || !st
                .meta
                .health
                .lost
                .iter()
                .any(|&(o, l)| o < hi && lo < o + l)
        {
            return Ok(());
        }
        // Durable first: the range must not read as good before its new data is.
        drop(st);
        self.flush()?;
        st = self.store.lock();
        let mut meta = st.meta.clone();
        meta.health.forget_lost(lo, hi);
        self.commit_meta(&mut st, meta)
    }

    /// Writes are refused after a failure left the members' state unknown in memory.
    fn check_usable(&self) -> Result<()> {
        if self.poisoned.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Error::Unavailable(
                "an earlier commit failed midway; restart to replay the journal".into(),
            ));
        }
        Ok(())
    }

    fn write_direct(&self, buf: &[u8], offset: u64) -> Result<()> {
        for (idx, co, pos, n) in pieces(self.chunk_size, offset, buf.len()) {
            let chunk = self.chunk_for_write(idx)?;
            self.write_chunk(idx, &chunk, co, &buf[pos..pos + n])?;
        }
        Ok(())
    }

    /// Whether `[offset, offset+len)` lies in chunks never written (reads as zeros).
    pub fn is_unallocated(&self, offset: u64, len: u64) -> bool {
        let chunks = self.store.chunks();
        let c = self.chunk_size;
        let end = (offset + len).min(self.size());
        let lost = self.lost_chunks();
        (offset / c..end.div_ceil(c)).all(|i| chunks[i as usize].is_none() && !lost(i as usize))
    }

    /// Whether chunk `i` holds a lost range: no hole even if it left the map (a `single`
    /// chunk given up by a rebuild) — it reads as EIO, not zeros.
    fn lost_chunks(&self) -> impl Fn(usize) -> bool {
        let lost = self.store.lock().meta.health.lost.clone();
        let c = self.chunk_size;
        move |i| {
            let (lo, hi) = (i as u64 * c, (i as u64 + 1) * c);
            lost.iter().any(|&(o, l)| o < hi && lo < o + l)
        }
    }

    /// Splits `[offset, offset+len)` into runs of allocated (`true`; also lost chunks) and
    /// never-written (`false`, reads as zeros) space, at chunk granularity.
    pub fn allocation_runs(&self, offset: u64, len: u64) -> Vec<(u64, bool)> {
        let chunks = self.store.chunks();
        let c = self.chunk_size;
        let end = offset.saturating_add(len).min(self.size());
        let lost = self.lost_chunks();
        let mut runs: Vec<(u64, bool)> = Vec::new();
        let mut off = offset;
        while off < end {
            let n = (c - off % c).min(end - off);
            let alloc = chunks[(off / c) as usize].is_some() || lost((off / c) as usize);
            match runs.last_mut() {
                Some((l, a)) if *a == alloc => *l += n,
                _ => runs.push((n, alloc)),
            }
            off += n;
        }
        runs
    }
}
