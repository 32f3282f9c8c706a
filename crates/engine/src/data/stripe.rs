//! The one stripe module: reading and writing pieces of a chunk, split by stripe row;
//! mirrors copy, parity levels read-modify-write or reconstruct-write per row, degraded
//! reads reconstruct from P (and Q). Rebuild, scrub, heal and the commit call it.

use super::Data;
use crate::error::{Error, Result};
use crate::layout::chunkmap::Chunk;
use crate::layout::profile::{Level, Profile};
use crate::layout::stripe::{for_rows, pieces};
use crate::member::{execute, read, read_hedged, read_vectored, Dev};
use crate::units::MemberWrite;
use damocles_parity::gf;
use std::collections::HashMap;
use std::ops::Range;

/// One data block's part of a stripe-row write: block index, column in the block, bytes.
pub(crate) struct Seg<'a> {
    pub i: usize,
    pub col: u64,
    pub data: &'a [u8],
}

/// New P and Q of a sub-row (`None` where that parity member is missing).
type ParityBufs = (Option<Vec<u8>>, Option<Vec<u8>>);

fn unavailable(idx: usize, what: &str) -> Error {
    Error::Unavailable(format!(
        "chunk {idx}: {what}: too many members are missing for this data"
    ))
}

impl Data {
    /// Reads what the members hold. Blocks for which `dirty(volume block)` is true are not
    /// verified against their checksums (newer data is laid over them).
    /// `view`: the members to read (the usable set, less members passed over as slow).
    pub(crate) fn read_members(
        &self,
        buf: &mut [u8],
        offset: u64,
        dirty: &dyn Fn(u64) -> bool,
        view: &[Option<Dev>],
    ) -> Result<()> {
        for (idx, co, pos, n) in pieces(self.chunk_size, offset, buf.len()) {
            let chunk = self.store.chunk(idx);
            let dst = &mut buf[pos..pos + n];
            match chunk {
                None => dst.fill(0),
                Some(c) => {
                    let direct = self.read_chunk_raw(idx, &c, co, dst, view)?;
                    if self.csums.is_some() {
                        self.verify_direct(idx, &c, co, dst, &direct, dirty)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads part of a chunk (no checksum verification).
    pub(crate) fn read_chunk(&self, idx: usize, c: &Chunk, co: u64, buf: &mut [u8]) -> Result<()> {
        self.read_chunk_raw(idx, c, co, buf, &self.members())
            .map(|_| ())
    }

    fn dev<'m>(members: &'m [Option<Dev>], c: &Chunk, pos: usize) -> Option<&'m Dev> {
        members[c.slices[pos].member as usize].as_ref()
    }

    /// Reads part of a chunk; returns the pieces read directly: (member, offset, range).
    /// A member whose read passes the slow limit gives [`Error::Slow`] where the chunk's
    /// redundancy could answer without it (the caller reads again without that member).
    fn read_chunk_raw(
        &self,
        idx: usize,
        c: &Chunk,
        co: u64,
        buf: &mut [u8],
        members: &[Option<Dev>],
    ) -> Result<Vec<(u16, u64, Range<usize>)>> {
        let p = c.profile;
        let su = p.stripe_unit;
        // Pieces read as they are: (member, offset on it, range of buf). Pieces on a missing
        // member are rebuilt from their row: (row, data block, column, range of buf).
        let mut direct: Vec<(u16, u64, Range<usize>)> = Vec::new();
        let mut rebuild: Vec<(u64, usize, u64, Range<usize>)> = Vec::new();
        for_rows(&p, co, buf.len(), |row, segs| {
            for (i, col, range) in segs {
                let at = row * su + col;
                let pos = match p.level {
                    Level::Raid5 | Level::Raid6 => {
                        let pos = p.data_positions(row, i).start;
                        Self::dev(members, c, pos).is_some().then_some(pos)
                    }
                    _ => {
                        // Mirrors alternate copies every 16 rows: sequential reads spread
                        // over the copies yet stay contiguous on each.
                        let copies = p.data_positions(row, i);
                        let n = copies.len();
                        let first = (row / 16) as usize % n;
                        let pos = (0..n)
                            .map(|k| copies.start + (first + k) % n)
                            .find(|&pos| Self::dev(members, c, pos).is_some())
                            .ok_or_else(|| unavailable(idx, "every copy is missing"))?;
                        Some(pos)
                    }
                };
                match pos {
                    Some(pos) => {
                        direct.push((c.slices[pos].member, c.slices[pos].offset + at, range))
                    }
                    None => rebuild.push((row, i, col, range)),
                }
            }
            Ok(())
        })?;
        // Cut buf into the pieces (they tile it in order).
        let mut starts: Vec<usize> = direct
            .iter()
            .map(|d| d.2.start)
            .chain(rebuild.iter().map(|r| r.3.start))
            .collect();
        starts.sort_unstable();
        let mut pieces: HashMap<usize, &mut [u8]> = HashMap::with_capacity(starts.len());
        let mut rest = buf;
        let mut at = 0;
        for (k, &start) in starts.iter().enumerate() {
            debug_assert_eq!(start, at);
            let end = starts.get(k + 1).copied().unwrap_or(at + rest.len());
            let (piece, tail) = rest.split_at_mut(end - start);
            pieces.insert(start, piece);
            rest = tail;
            at = end;
        }
        // One vectored read per run of pieces that are contiguous on one member.
        direct.sort_by_key(|(m, off, _)| (*m, *off));
        let read_directly = direct.clone();
        let mut k = 0;
        while k < direct.len() {
            let (m, off, _) = direct[k];
            let mut end = off;
            let mut bufs: Vec<&mut [u8]> = Vec::new();
            while k < direct.len() && direct[k].0 == m && direct[k].1 == end && bufs.len() < 1024 {
                let piece = pieces.remove(&direct[k].2.start).expect("piece");
                end += piece.len() as u64;
                bufs.push(piece);
                k += 1;
            }
            let d = members[m as usize]
                .as_ref()
                .expect("direct pieces are on present members");
            if Self::others_can_answer(c, members, m) {
                read_hedged(d.as_ref(), &mut bufs, off)?;
            } else {
                read_vectored(d.as_ref(), &mut bufs, off)?;
            }
        }
        for (row, i, col, range) in rebuild {
            let dst = pieces.remove(&range.start).expect("piece");
            let _g = self.locks.lock(idx as u32, row);
            if self.csums.is_some() && col.is_multiple_of(4096) && dst.len().is_multiple_of(4096) {
                // Block by block, each source verified against its checksum.
                let pos = p.data_positions(row, i).start;
                for (k, out) in dst.chunks_mut(4096).enumerate() {
                    if !self.rebuild_block_checked(c, members, pos, row, col + k as u64 * 4096, out)
                    {
                        return Err(unavailable(
                            idx,
                            "cannot rebuild a block from verified data",
                        ));
                    }
                }
                continue;
            }
            let mut blocks = self.read_subrow(members, c, row, col, dst.len(), &[])?;
            if !self.reconstruct(&p, &mut blocks) {
                return Err(unavailable(idx, "cannot reconstruct a stripe"));
            }
            dst.copy_from_slice(blocks.data[i].as_ref().expect("rebuilt"));
        }
        Ok(read_directly)
    }

    /// Whether chunk `c` stays readable from `members` without member `m`.
    fn others_can_answer(c: &Chunk, members: &[Option<Dev>], m: u16) -> bool {
        let p = &c.profile;
        if p.tolerance() == 0 {
            return false;
        }
        let gone = |pos: usize| {
            let s = c.slices[pos].member;
            s == m || members[s as usize].is_none()
        };
        match p.level {
            Level::Raid5 | Level::Raid6 => {
                (0..p.width).filter(|&i| gone(i)).count() <= p.tolerance()
            }
            _ => (0..p.data_count()).all(|i| p.data_positions(0, i).any(|pos| !gone(pos))),
        }
    }

    pub(crate) fn write_chunk(&self, idx: usize, c: &Chunk, co: u64, buf: &[u8]) -> Result<()> {
        let members = self.members();
        let mut plan = Vec::new();
        for_rows(&c.profile, co, buf.len(), |row, segs| {
            let segs: Vec<Seg> = segs
                .into_iter()
                .map(|(i, col, r)| Seg {
                    i,
                    col,
                    data: &buf[r],
                })
                .collect();
            // The row lock makes concurrent writers of one row (and degraded readers)
            // see it whole, and keeps mirror copies identical.
            let _g = (c.profile.width > 1).then(|| self.locks.lock(idx as u32, row));
            plan.clear();
            self.plan_row(idx, &members, c, row, &segs, &mut plan)?;
            execute(&members, &plan)
        })
    }

    /// Appends the member writes that put `segs` into row `row` of chunk `c`, with parity.
    /// Reads what it needs from the members, which must be consistent for this row.
    pub(crate) fn plan_row(
        &self,
        idx: usize,
        members: &[Option<Dev>],
        c: &Chunk,
        row: u64,
        segs: &[Seg],
        plan: &mut Vec<MemberWrite>,
    ) -> Result<()> {
        let p = &c.profile;
        if matches!(p.level, Level::Raid5 | Level::Raid6) {
            return self.write_row(idx, members, c, row, segs, plan);
        }
        for s in segs {
            let mut any = false;
            for pos in p.data_positions(row, s.i) {
                if Self::dev(members, c, pos).is_some() {
                    plan.push(MemberWrite {
                        member: c.slices[pos].member,
                        offset: c.slices[pos].offset + row * p.stripe_unit + s.col,
                        data: s.data.to_vec(),
                    });
                    any = true;
                }
            }
            if !any {
                return Err(unavailable(idx, "every copy is missing"));
            }
        }
        Ok(())
    }

    /// `len` bytes at `at` within slice `pos`, or `None` when its member is missing.
    fn read_slice(
        members: &[Option<Dev>],
        c: &Chunk,
        pos: usize,
        at: u64,
        len: usize,
    ) -> Result<Option<Vec<u8>>> {
        match Self::dev(members, c, pos) {
            None => Ok(None),
            Some(d) => {
                let mut b = vec![0u8; len];
                read(d.as_ref(), &mut b, c.slices[pos].offset + at)?;
                Ok(Some(b))
            }
        }
    }

    /// Reads columns `[col, col+len)` of every available slice of a parity row.
    fn read_subrow(
        &self,
        members: &[Option<Dev>],
        c: &Chunk,
        row: u64,
        col: u64,
        len: usize,
        skip: &[bool],
    ) -> Result<SubRow> {
        let p = &c.profile;
        let at = row * p.stripe_unit + col;
        let get = |pos: usize| Self::read_slice(members, c, pos, at, len);
        let mut data = Vec::with_capacity(p.data_count());
        for i in 0..p.data_count() {
            if skip.get(i).copied().unwrap_or(false) {
                data.push(None);
            } else {
                data.push(get(p.data_positions(row, i).start)?);
            }
        }
        // Parity is needed only to reconstruct, i.e. when every data block is wanted.
        if !skip.is_empty() {
            return Ok(SubRow {
                data,
                p: None,
                q: None,
            });
        }
        let pbuf = get(p.parity_position(row))?;
        let qbuf = if p.level == Level::Raid6 {
            get(p.q_position(row))?
        } else {
            None
        };
        Ok(SubRow {
            data,
            p: pbuf,
            q: qbuf,
        })
    }

    /// Fills the missing data blocks of a sub-row from P (and Q); `false` when too many are
    /// missing.
    pub(crate) fn reconstruct(&self, p: &Profile, b: &mut SubRow) -> bool {
        let missing: Vec<usize> = (0..p.data_count())
            .filter(|&i| b.data[i].is_none())
            .collect();
        let len = b.len();
        match (missing.as_slice(), &b.p, &b.q) {
            ([], _, _) => {}
            ([x], Some(pp), _) => {
                let mut srcs: Vec<&[u8]> = b.data.iter().flatten().map(|v| v.as_slice()).collect();
                srcs.push(pp);
                let mut out = vec![0u8; len];
                self.parity.gen_p(&srcs, &mut out);
                b.data[*x] = Some(out);
            }
            ([x], None, Some(q)) => {
                let mut out = vec![0u8; len];
                let views: Vec<Option<&[u8]>> = b.data.iter().map(|d| d.as_deref()).collect();
                self.parity.recover_data_with_q(&views, q, &mut out);
                b.data[*x] = Some(out);
            }
            ([x, y], Some(pp), Some(q)) => {
                let (mut ox, mut oy) = (vec![0u8; len], vec![0u8; len]);
                let views: Vec<Option<&[u8]>> = b.data.iter().map(|d| d.as_deref()).collect();
                self.parity
                    .recover_two_data(&views, pp, q, &mut ox, &mut oy);
                b.data[*x] = Some(ox);
                b.data[*y] = Some(oy);
            }
            _ => return false,
        }
        true
    }

    /// Plans part of one raid5/raid6 stripe row: the data and its new parity.
    fn write_row(
        &self,
        idx: usize,
        members: &[Option<Dev>],
        c: &Chunk,
        row: u64,
        segs: &[Seg],
        plan: &mut Vec<MemberWrite>,
    ) -> Result<()> {
        let p = &c.profile;
        let d = p.data_count();
        let lo = segs.iter().map(|s| s.col).min().expect("non-empty row");
        let hi = segs
            .iter()
            .map(|s| s.col + s.data.len() as u64)
            .max()
            .expect("non-empty");
        let len = (hi - lo) as usize;
        let at = row * p.stripe_unit + lo;
        let dpos = |i: usize| p.data_positions(row, i).start;
        let ppos = p.parity_position(row);
        let qpos = (p.level == Level::Raid6).then(|| p.q_position(row));
        let covers = |s: &Seg| s.col == lo && s.data.len() == len;
        let data_missing = (0..d).any(|i| Self::dev(members, c, dpos(i)).is_none());
        let parity_present = Self::dev(members, c, ppos).is_some()
            || qpos.is_some_and(|q| Self::dev(members, c, q).is_some());

        let mut emit = |pb: Option<Vec<u8>>, qb: Option<Vec<u8>>| {
            for s in segs {
                if Self::dev(members, c, dpos(s.i)).is_some() {
                    plan.push(MemberWrite {
                        member: c.slices[dpos(s.i)].member,
                        offset: c.slices[dpos(s.i)].offset + row * p.stripe_unit + s.col,
                        data: s.data.to_vec(),
                    });
                }
            }
            for (pos, buf) in [(Some(ppos), pb), (qpos, qb)] {
                if let (Some(pos), Some(buf)) = (pos, buf) {
                    if Self::dev(members, c, pos).is_some() {
                        plan.push(MemberWrite {
                            member: c.slices[pos].member,
                            offset: c.slices[pos].offset + at,
                            data: buf,
                        });
                    }
                }
            }
        };
        if !parity_present && !data_missing {
            emit(None, None);
            return Ok(());
        }
        // A commit can bring several separate segments of one data block; count blocks.
        let touched = |i: usize| segs.iter().any(|s| s.i == i);
        let whole = |i: usize| segs.iter().any(|s| s.i == i && covers(s));
        let n_touched = (0..d).filter(|&i| touched(i)).count();
        let n_partial = (0..d).filter(|&i| touched(i) && !whole(i)).count();
        let full = (0..d).all(whole);
        if !full && !data_missing {
            let n_par = 1 + qpos.is_some() as usize;
            // RMW reads each segment's old bytes and the parity; reconstruct-write reads the
            // blocks not written and the partly written ones.
            if segs.len() + n_par < (d - n_touched) + n_partial {
                let (pb, qb) = self.rmw_parity(members, c, row, lo, len, segs)?;
                emit(pb, qb);
                return Ok(());
            }
        }
        // Reconstruct-write: the new sub-row is the written bytes over the old ones; blocks a
        // segment covers entirely are taken from the request as they are, never read.
        let covered: Vec<Option<&[u8]>> = (0..d)
            .map(|i| segs.iter().find(|s| s.i == i && covers(s)).map(|s| s.data))
            .collect();
        let mut old = if full {
            SubRow {
                data: vec![None; d],
                p: None,
                q: None,
            }
        } else if data_missing {
            let mut b = self.read_subrow(members, c, row, lo, len, &[])?;
            if !self.reconstruct(p, &mut b) {
                return Err(unavailable(idx, "cannot reconstruct a stripe"));
            }
            b
        } else {
            let skip: Vec<bool> = covered.iter().map(Option::is_some).collect();
            self.read_subrow(members, c, row, lo, len, &skip)?
        };
        for s in segs.iter().filter(|s| !covers(s)) {
            let blk = old.data[s.i].as_mut().expect("partial block was read");
            let o = (s.col - lo) as usize;
            blk[o..o + s.data.len()].copy_from_slice(s.data);
        }
        let views: Vec<&[u8]> = (0..d)
            .map(|i| covered[i].unwrap_or_else(|| old.data[i].as_deref().expect("complete")))
            .collect();
        let mut pb = vec![0u8; len];
        let mut qb = qpos.map(|_| vec![0u8; len]);
        match &mut qb {
            Some(q) => self.parity.gen_pq(&views, &mut pb, q),
            None => self.parity.gen_p(&views, &mut pb),
        }
        emit(Some(pb), qb);
        Ok(())
    }

    /// Read-modify-write: the new parity is the old one ^ (old ^ new) of each written block.
    fn rmw_parity(
        &self,
        members: &[Option<Dev>],
        c: &Chunk,
        row: u64,
        lo: u64,
        len: usize,
        segs: &[Seg],
    ) -> Result<ParityBufs> {
        let p = &c.profile;
        let at = row * p.stripe_unit + lo;
        let read_pos = |pos: usize| Self::read_slice(members, c, pos, at, len);
        let mut pb = read_pos(p.parity_position(row))?;
        let mut qb = if p.level == Level::Raid6 {
            read_pos(p.q_position(row))?
        } else {
            None
        };
        for s in segs {
            // delta = old ^ new over the written bytes only.
            let o = (s.col - lo) as usize;
            let mut delta = vec![0u8; s.data.len()];
            let pos = p.data_positions(row, s.i).start;
            let d = Self::dev(members, c, pos).expect("rmw needs all data present");
            read(
                d.as_ref(),
                &mut delta,
                c.slices[pos].offset + row * p.stripe_unit + s.col,
            )?;
            self.parity.xor_into(&mut delta, s.data);
            if let Some(pb) = &mut pb {
                self.parity.xor_into(&mut pb[o..o + delta.len()], &delta);
            }
            if let Some(qb) = &mut qb {
                self.parity
                    .mul_xor_into(&mut qb[o..o + delta.len()], &delta, gf::exp2(s.i));
            }
        }
        Ok((pb, qb))
    }
}

/// Columns of one parity row: data blocks (None = missing), P and Q.
pub(crate) struct SubRow {
    pub data: Vec<Option<Vec<u8>>>,
    pub p: Option<Vec<u8>>,
    pub q: Option<Vec<u8>>,
}

impl SubRow {
    fn len(&self) -> usize {
        self.data
            .iter()
            .flatten()
            .chain(self.p.iter())
            .chain(self.q.iter())
            .map(|b| b.len())
            .next()
            .unwrap_or(0)
    }
}
