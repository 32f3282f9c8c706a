//! Scrub: read every block of every allocated chunk, verify checksums and parity, repair
//! from redundancy; resumable from a checkpoint in the metadata.

use super::JobControl;
use super::Jobs;
use crate::error::JobKind;
use crate::error::Result;
use crate::events::EventKind;
use crate::layout::chunkmap::Chunk;
use crate::layout::profile::{Level, Profile};
use crate::layout::stripe::data_volume_offset;
use crate::member::{read, write, Dev, Usable};
use crate::units::merge_ranges;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::units::BLOCK_LEN as BLOCK;
/// How often the checkpoint goes to the metadata.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);

/// What one row's scrub found.
#[derive(Default)]
struct RowResult {
    checked: u64,
    repaired: u64,
    unrecoverable: u64,
    lost: Vec<(u64, u64)>,
    /// Parity (or a mirror copy) disagrees with verified data and must be rewritten.
    rewrite: bool,
}

/// What a scrub found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// 4 KiB blocks (data and parity) read and verified.
    pub blocks_checked: u64,
    pub repaired: u64,
    pub unrecoverable: u64,
    /// Whether it ran to the end (not cancelled).
    pub complete: bool,
}

impl Jobs {
    /// The scrub running now, if any.
    pub fn scrub_job(&self) -> Option<Arc<JobControl>> {
        self.running(JobKind::Scrub)
    }

    /// Scrubs the array (resuming an interrupted scrub where it stopped).
    pub fn scrub(&self, ctl: Arc<JobControl>) -> Result<ScrubReport> {
        let _claim = self.claim(JobKind::Scrub, &ctl)?;
        // Resume, or start afresh with the results zeroed.
        let (start, mut report) = {
            let mut st = self.store.lock();
            let h = st.meta.health.clone();
            match h.scrub_cursor {
                Some(c) => (
                    c as usize,
                    ScrubReport {
                        blocks_checked: h.scrub_checked,
                        repaired: h.scrub_repaired,
                        unrecoverable: h.scrub_unrecoverable,
                        complete: false,
                    },
                ),
                None => {
                    let mut meta = st.meta.clone();
                    meta.health.scrub_cursor = Some(0);
                    meta.health.scrub_checked = 0;
                    meta.health.scrub_repaired = 0;
                    meta.health.scrub_unrecoverable = 0;
                    self.commit_meta(&mut st, meta)?;
                    (0, ScrubReport::default())
                }
            }
        };
        let chunks: Vec<(usize, Arc<Chunk>)> = {
            let st = self.store.lock();
            st.meta
                .map
                .allocated()
                .map(|(i, c)| (i, c.clone()))
                .collect()
        };
        let raw = |c: &Chunk| c.slice_len * c.slices.len() as u64;
        ctl.set_total(chunks.iter().map(|(_, c)| raw(c)).sum());
        ctl.advance_uncounted(
            chunks
                .iter()
                .filter(|(i, _)| *i < start)
                .map(|(_, c)| raw(c))
                .sum(),
        );
        self.emit(
            EventKind::ScrubStarted,
            None,
            None,
            if start > 0 {
                format!("scrub resumed at chunk {start}")
            } else {
                "scrub started".into()
            },
        );
        let mut last_checkpoint = Instant::now();
        let mut lost: Vec<(u64, u64)> = Vec::new();
        let mut next = start;
        for (idx, _) in chunks.iter().filter(|(i, _)| *i >= start) {
            if ctl.is_cancelled() {
                break;
            }
            // The map may have changed (rebuild): scrub what is there now.
            let Some(c) = self.store.chunk(*idx) else {
                continue;
            };
            self.scrub_chunk(*idx, &c, &ctl, &mut report, &mut lost)?;
            next = idx + 1;
            if last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
                self.scrub_checkpoint(Some(next as u32), &report, &mut lost, false)?;
                last_checkpoint = Instant::now();
            }
        }
        report.complete = !ctl.is_cancelled();
        let cursor = (!report.complete).then_some(next as u32);
        self.scrub_checkpoint(cursor, &report, &mut lost, report.complete)?;
        self.emit(
            EventKind::ScrubFinished,
            None,
            None,
            format!(
                "scrub {}: {} blocks checked, {} repaired, {} unrecoverable",
                if report.complete {
                    "finished"
                } else {
                    "stopped"
                },
                report.blocks_checked,
                report.repaired,
                report.unrecoverable
            ),
        );
        Ok(report)
    }

    /// Scrubs every row of chunk `idx`, about 1 MiB per member at a time; rows with any
    /// trouble go one by one.
    fn scrub_chunk(
        &self,
        idx: usize,
        c: &Chunk,
        ctl: &JobControl,
        report: &mut ScrubReport,
        lost: &mut Vec<(u64, u64)>,
    ) -> Result<()> {
        let su = c.profile.stripe_unit;
        let rows = c.slice_len / su;
        // About 1 MiB per member at a time; rows with any trouble go one by one.
        let batch = ((1u64 << 20) / su).max(1);
        let mut row = 0;
        while row < rows {
            let n = batch.min(rows - row);
            if let Some(checked) = self.scrub_rows_clean(idx, c, row, n) {
                report.blocks_checked += checked;
            } else {
                for r in row..row + n {
                    let r = self.scrub_row(idx, c, r)?;
                    report.blocks_checked += r.checked;
                    report.repaired += r.repaired;
                    report.unrecoverable += r.unrecoverable;
                    lost.extend(r.lost);
                }
            }
            ctl.advance(n * su * c.slices.len() as u64);
            row += n;
        }
        Ok(())
    }

    fn scrub_checkpoint(
        &self,
        cursor: Option<u32>,
        r: &ScrubReport,
        lost: &mut Vec<(u64, u64)>,
        finished: bool,
    ) -> Result<()> {
        let mut st = self.store.lock();
        let mut meta = st.meta.clone();
        let h = &mut meta.health;
        h.scrub_cursor = cursor;
        h.scrub_checked = r.blocks_checked;
        h.scrub_repaired = r.repaired;
        h.scrub_unrecoverable = r.unrecoverable;
        if finished {
            h.scrub_finished = crate::units::now();
        }
        h.lost.append(lost);
        h.lost = merge_ranges(std::mem::take(&mut h.lost));
        self.commit_meta(&mut st, meta)
    }

    /// The common case, fast: rows `row0..row0+n` read with one read per member, every block
    /// matching its checksum and the redundancy agreeing. `Some(blocks checked)` if so;
    /// `None` if anything needs a closer look (then nothing was changed).
    fn scrub_rows_clean(&self, idx: usize, c: &Chunk, row0: u64, n: u64) -> Option<u64> {
        let _g: Vec<_> = (row0..row0 + n)
            .map(|r| self.locks.lock(idx as u32, r))
            .collect();
        let members = self.members();
        let p = &c.profile;
        let su = p.stripe_unit as usize;
        let len = su * n as usize;
        let mut bufs = Vec::with_capacity(p.width);
        for (q, sl) in c.slices.iter().enumerate() {
            let d = members[sl.member as usize].as_ref()?;
            let off = sl.offset + row0 * p.stripe_unit;
            let mut b = vec![0u8; len];
            read(d.as_ref(), &mut b, off).ok()?;
            if let Some(cs) = &self.csums {
                if cs.first_bad(sl.member, d, off, &b).is_some() {
                    return None;
                }
            }
            debug_assert_eq!(bufs.len(), q);
            bufs.push(b);
        }
        let mut pb = vec![0u8; su];
        let mut qb = vec![0u8; su];
        for r in 0..n as usize {
            let row = row0 + r as u64;
            let at = |q: usize| &bufs[q][r * su..(r + 1) * su];
            match p.level {
                Level::Raid5 | Level::Raid6 => {
                    let views: Vec<&[u8]> = (0..p.data_count())
                        .map(|i| at(p.data_positions(row, i).start))
                        .collect();
                    if p.level == Level::Raid6 {
                        self.parity.gen_pq(&views, &mut pb, &mut qb);
                        if at(p.q_position(row)) != qb.as_slice() {
                            return None;
                        }
                    } else {
                        self.parity.gen_p(&views, &mut pb);
                    }
                    if at(p.parity_position(row)) != pb.as_slice() {
                        return None;
                    }
                }
                _ => {
                    for i in 0..p.data_count() {
                        let copies = p.data_positions(row, i);
                        let first = at(copies.start);
                        if copies.skip(1).any(|q| at(q) != first) {
                            return None;
                        }
                    }
                }
            }
        }
        Some((p.width * len / BLOCK) as u64)
    }

    /// Verifies one stripe row of a chunk and repairs what it can.
    fn scrub_row(&self, idx: usize, c: &Chunk, row: u64) -> Result<RowResult> {
        let r = {
            let _g = self.locks.lock(idx as u32, row);
            self.check_row(idx, c, row, false)?
        };
        if !r.rewrite {
            return Ok(r);
        }
        // Rewriting parity changes checksums outside the journal: take the commit lock
        // first (lock order: commit, then row), then look again.
        let _commit = self.journal.as_ref().map(|_| self.commit_lock());
        let _g = self.locks.lock(idx as u32, row);
        // A commit may have moved the chunk to fresh slices meanwhile (redirect-on-write)
        // and its old ones may hold another chunk by now: repair only what the map names.
        if !self
            .store
            .chunk(idx)
            .is_some_and(|now| std::ptr::eq(&*now, c))
        {
            return Ok(RowResult {
                rewrite: false,
                ..r
            });
        }
        let again = self.check_row(idx, c, row, true)?;
        Ok(RowResult {
            checked: r.checked,
            repaired: r.repaired + again.repaired,
            unrecoverable: r.unrecoverable + again.unrecoverable,
            lost: [r.lost, again.lost].concat(),
            rewrite: false,
        })
    }

    /// Reads a row from every present member, heals blocks that fail their checksums, and
    /// checks that parity (or mirror copies) agree. With `fix_parity`, rewrites disagreeing
    /// parity or copies from the verified data (caller holds the commit lock).
    fn check_row(&self, idx: usize, c: &Chunk, row: u64, fix_parity: bool) -> Result<RowResult> {
        let members = self.members();
        let p = &c.profile;
        let su = p.stripe_unit as usize;
        let mut res = RowResult::default();
        let dev = |q: usize| -> Option<&Dev> { members[c.slices[q].member as usize].as_ref() };
        let off = |q: usize| c.slices[q].offset + row * p.stripe_unit;
        let mut bufs: Vec<Option<Vec<u8>>> = (0..p.width)
            .map(|q| {
                let d = dev(q)?;
                let mut b = vec![0u8; su];
                read(d.as_ref(), &mut b, off(q)).ok().map(|_| b)
            })
            .collect();
        self.heal_row_blocks(idx, c, row, &members, &mut bufs, &mut res)?;
        if bufs.iter().any(Option::is_none) {
            return Ok(res); // degraded row: nothing to compare parity with
        }
        let bufs: Vec<Vec<u8>> = bufs.into_iter().flatten().collect();
        // Redundancy agrees with the (verified) data?
        let fixes = self.redundancy_fixes(p, row, &bufs);
        if fixes.is_empty() {
            return Ok(res);
        }
        if !fix_parity {
            res.rewrite = true;
            return Ok(res);
        }
        let mut touched: HashMap<u16, Vec<u64>> = HashMap::new();
        for (q, data) in fixes {
            let d = dev(q).cloned().expect("present");
            let m = c.slices[q].member;
            write(d.as_ref(), &data, off(q))?;
            if let Some(cs) = &self.csums {
                touched
                    .entry(m)
                    .or_default()
                    .extend(cs.record(m, &d, off(q), &data));
            }
            res.repaired += 1;
            self.tel.counters.repaired.fetch_add(1, Ordering::Relaxed);
            self.emit(
                EventKind::ChecksumRepaired,
                Some(m as usize),
                None,
                format!("scrub rewrote redundancy of chunk {idx} row {row} on member {m}"),
            );
        }
        self.write_csum_blocks(&members, touched)?;
        Ok(res)
    }

    /// Verifies every block of row `row` of `c` (read into `bufs`) against its checksum;
    /// a block that fails or could not be read is rebuilt from the others, checked again
    /// and written back, or counted unrecoverable.
    fn heal_row_blocks(
        &self,
        idx: usize,
        c: &Chunk,
        row: u64,
        members: &Usable,
        bufs: &mut [Option<Vec<u8>>],
        res: &mut RowResult,
    ) -> Result<()> {
        let p = &c.profile;
        let su = p.stripe_unit as usize;
        let dev = |q: usize| -> Option<&Dev> { members[c.slices[q].member as usize].as_ref() };
        let off = |q: usize| c.slices[q].offset + row * p.stripe_unit;
        // Checksums: heal each block that fails (or that could not be read).
        #[allow(clippy::needless_range_loop)] // q also indexes slices and the row view
        for q in 0..p.width {
            let Some(d) = dev(q).cloned() else { continue };
            let m = c.slices[q].member;
            for k in 0..su / BLOCK {
                res.checked += 1;
                let at = off(q) + (k * BLOCK) as u64;
                let ok = match (&bufs[q], &self.csums) {
                    (None, _) => false,
                    (Some(b), Some(cs)) => cs
                        .first_bad(m, &d, at, &b[k * BLOCK..(k + 1) * BLOCK])
                        .is_none(),
                    (Some(_), None) => true,
                };
                if ok {
                    continue;
                }
                if self.csums.is_some() {
                    self.count_checksum_error(m);
                }
                let mut view = (**members).clone();
                view[m as usize] = None;
                let mut good = vec![0u8; BLOCK];
                let rebuilt =
                    self.rebuild_block_checked(c, &view, q, row, (k * BLOCK) as u64, &mut good);
                let verified = rebuilt
                    && self
                        .csums
                        .as_ref()
                        .is_none_or(|cs| cs.first_bad(m, &d, at, &good).is_none());
                if verified {
                    write(d.as_ref(), &good, at)?;
                    bufs[q].get_or_insert_with(|| vec![0u8; su])[k * BLOCK..(k + 1) * BLOCK]
                        .copy_from_slice(&good);
                    res.repaired += 1;
                    self.tel.counters.repaired.fetch_add(1, Ordering::Relaxed);
                    self.emit(
                        EventKind::ChecksumRepaired,
                        Some(m as usize),
                        None,
                        format!("scrub repaired chunk {idx} row {row} block {k} on member {m}"),
                    );
                } else {
                    res.unrecoverable += 1;
                    self.tel
                        .counters
                        .unrecoverable
                        .fetch_add(1, Ordering::Relaxed);
                    if let Some(v) =
                        data_volume_offset(self.chunk_size, idx, c, q, row, (k * BLOCK) as u64)
                    {
                        res.lost.push((v, BLOCK as u64));
                    }
                    self.emit(
                        EventKind::Unrecoverable,
                        Some(m as usize),
                        None,
                        format!(
                            "scrub: chunk {idx} row {row} block {k} on member {m} is bad and \
                             cannot be rebuilt"
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    /// What the row's redundancy should be given its (verified) data: (position, content)
    /// for each parity block or copy that differs.
    fn redundancy_fixes(&self, p: &Profile, row: u64, bufs: &[Vec<u8>]) -> Vec<(usize, Vec<u8>)> {
        let su = p.stripe_unit as usize;
        let mut fixes: Vec<(usize, Vec<u8>)> = Vec::new();
        match p.level {
            Level::Raid5 | Level::Raid6 => {
                let d = p.data_count();
                let views: Vec<&[u8]> = (0..d)
                    .map(|i| bufs[p.data_positions(row, i).start].as_slice())
                    .collect();
                let mut pb = vec![0u8; su];
                let mut qb = vec![0u8; su];
                let ppos = p.parity_position(row);
                if p.level == Level::Raid6 {
                    self.parity.gen_pq(&views, &mut pb, &mut qb);
                    let qpos = p.q_position(row);
                    if bufs[qpos] != qb {
                        fixes.push((qpos, qb));
                    }
                } else {
                    self.parity.gen_p(&views, &mut pb);
                }
                if bufs[ppos] != pb {
                    fixes.push((ppos, pb));
                }
            }
            _ => {
                for i in 0..p.data_count() {
                    let copies = p.data_positions(row, i);
                    let first = copies.start;
                    for q in copies.skip(1) {
                        if bufs[q] != bufs[first] {
                            fixes.push((q, bufs[first].clone()));
                        }
                    }
                }
            }
        }
        fixes
    }
}
