//! The rebuild pipeline: batches of rows of new slices, queued for a few threads (the
//! rebuild's own included), each row rebuilt from the other positions and written to its
//! new place; what the batches found is gathered for the group's commit.

use super::Group;
use crate::data::{Need, Scratch};
use crate::error::{Error, Result};
use crate::jobs::{JobControl, Jobs};
use crate::layout::chunkmap::{Chunk, Slice};
use crate::layout::stripe::data_volume_offset;
use crate::member::{write_owned, Usable};
use crate::units::BLOCK_LEN as BLOCK;
use parking_lot::{Condvar, Mutex};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// One batch of rows of one new slice: rows `row..row + n` of position `pos` of chunk `idx`,
/// to be written to `target`.
pub(super) struct Job {
    pub(super) idx: usize,
    pub(super) chunk: Arc<Chunk>,
    pub(super) members: Usable,
    pub(super) pos: usize,
    pub(super) need: Need,
    pub(super) target: Slice,
    pub(super) row: u64,
    pub(super) n: u64,
}

/// What jobs found: checksum blocks touched per member, volume ranges that could not be
/// rebuilt.
#[derive(Default)]
pub(super) struct Found {
    pub(super) csum_blocks: HashMap<u16, Vec<u64>>,
    pub(super) lost: Vec<(u64, u64)>,
}

/// The batches of the current group, shared by the rebuild threads, and what they found.
#[derive(Default)]
pub(super) struct PipeState {
    pub(super) queue: VecDeque<Job>,
    /// Jobs queued or running.
    pub(super) pending: usize,
    /// No more jobs: the threads end.
    pub(super) closed: bool,
    /// What the jobs done found (written before the group's flush).
    pub(super) found: Found,
    /// The first failure (the group is then not committed).
    pub(super) error: Option<Error>,
}

#[derive(Default)]
pub(super) struct Pipe {
    pub(super) st: Mutex<PipeState>,
    pub(super) cv: Condvar,
}

/// Ends the rebuild threads however the loop that feeds them ends.
pub(super) struct ClosePipe<'a>(pub(super) &'a Pipe);

impl Drop for ClosePipe<'_> {
    fn drop(&mut self) {
        self.0.st.lock().closed = true;
        self.0.cv.notify_all();
    }
}

/// Counts a job done even if it panics.
pub(super) struct JobDone<'a> {
    pub(super) pipe: &'a Pipe,
    pub(super) result: Option<(Found, Result<()>)>,
}

impl Drop for JobDone<'_> {
    fn drop(&mut self) {
        let mut st = self.pipe.st.lock();
        match self.result.take() {
            Some((found, r)) => {
                for (m, v) in found.csum_blocks {
                    st.found.csum_blocks.entry(m).or_default().extend(v);
                }
                st.found.lost.extend(found.lost);
                if let Err(e) = r {
                    st.error.get_or_insert(e);
                }
            }
            None => {
                st.error
                    .get_or_insert(Error::Invalid("a rebuild thread panicked".into()));
            }
        }
        st.pending -= 1;
        drop(st);
        self.pipe.cv.notify_all();
    }
}

impl Jobs {
    /// A rebuild thread: runs jobs until the pipe closes.
    pub(super) fn rebuild_thread(&self, pipe: &Pipe, ctl: &JobControl) {
        let mut scratch = Scratch::default();
        loop {
            let job = {
                let mut st = pipe.st.lock();
                loop {
                    if st.closed {
                        return;
                    }
                    if let Some(j) = st.queue.pop_front() {
                        break j;
                    }
                    pipe.cv.wait(&mut st);
                }
            };
            self.run_job(pipe, &job, &mut scratch, ctl);
        }
    }

    /// Runs queued jobs here too until at most `left` are pending (queued or running
    /// elsewhere); the first failure of any of them, if there was one.
    pub(super) fn drain_jobs(
        &self,
        pipe: &Pipe,
        left: usize,
        scratch: &mut Scratch,
        ctl: &JobControl,
    ) -> Result<()> {
        let mut st = pipe.st.lock();
        while st.pending > left {
            if let Some(job) = st.queue.pop_front() {
                drop(st);
                self.run_job(pipe, &job, scratch, ctl);
                st = pipe.st.lock();
            } else {
                pipe.cv.wait(&mut st);
            }
        }
        match st.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Waits for every job of the group, then writes the checksum blocks they touched (the
    /// group's flush makes them durable with the data).
    pub(super) fn finish_jobs(
        &self,
        pipe: &Pipe,
        scratch: &mut Scratch,
        ctl: &JobControl,
        group: &mut Group,
    ) -> Result<()> {
        self.drain_jobs(pipe, 0, scratch, ctl)?;
        let found = std::mem::take(&mut pipe.st.lock().found);
        self.write_csum_blocks(&self.members(), found.csum_blocks)?;
        group.lost.extend(found.lost);
        Ok(())
    }

    /// Rebuilds the rows of `job` and writes them to its target, under their row locks;
    /// records their checksums and what could not be rebuilt in the pipe.
    pub(super) fn run_job(&self, pipe: &Pipe, job: &Job, scratch: &mut Scratch, ctl: &JobControl) {
        let mut done = JobDone { pipe, result: None };
        let mut found = Found::default();
        let failed = pipe.st.lock().error.is_some();
        let r = if failed {
            // The group will not be committed: nothing left to do.
            Ok(())
        } else {
            let r = self.write_rows(job, scratch, &mut found);
            if r.is_ok() {
                ctl.advance(job.n * job.chunk.profile.stripe_unit);
            }
            r
        };
        done.result = Some((found, r));
    }

    /// The work of `run_job`: rebuilds (verified sources, per-block fallback) and writes.
    pub(super) fn write_rows(
        &self,
        job: &Job,
        scratch: &mut Scratch,
        found: &mut Found,
    ) -> Result<()> {
        let Job {
            idx,
            ref chunk,
            ref members,
            pos,
            need,
            target: t,
            row,
            n,
        } = *job;
        let su = chunk.profile.stripe_unit;
        let dst = members[t.member as usize]
            .as_ref()
            .expect("targets are present");
        let _g: Vec<_> = (row..row + n)
            .map(|r| self.locks.lock(idx as u32, r))
            .collect();
        let mut whole = std::mem::take(&mut scratch.out);
        // Batches of a chunk are even (see `queue_rows`): the buffer keeps its length and
        // needs no zeroing from one batch to the next.
        let len = (n * su) as usize;
        whole.resize(len, 0);
        let buf = &mut whole[..];
        let done = self.rebuild_rows(chunk, members, pos, need, row, buf, scratch);
        for (k, rbuf) in buf.chunks_mut(su as usize).enumerate() {
            let r = row + k as u64;
            // Rows the fast path could not do, block by block: only what cannot be
            // rebuilt is lost.
            if !done[k] {
                for (b, out) in rbuf.chunks_mut(BLOCK).enumerate() {
                    let col = (b * BLOCK) as u64;
                    if !self.rebuild_block(chunk, members, pos, need, r, col, out) {
                        out.fill(0);
                        if let Some(voff) =
                            data_volume_offset(self.chunk_size, idx, chunk, pos, r, col)
                        {
                            found.lost.push((voff, out.len() as u64));
                        }
                    }
                }
            }
        }
        let at = t.offset + row * su;
        // The buffer goes to the member's worker as it is (no copy) and comes back.
        let (r, back) = write_owned(dst.as_ref(), whole, at);
        if let (Ok(()), Some(buf)) = (&r, &back) {
            // The group's flush then mostly waits for writes already under way.
            dst.start_writeback(at, len as u64);
            if let Some(cs) = &self.csums {
                found
                    .csum_blocks
                    .entry(t.member)
                    .or_default()
                    .extend(cs.record(t.member, dst, at, &buf[..len]));
            }
        }
        scratch.out = back.unwrap_or_default();
        r
    }
}
