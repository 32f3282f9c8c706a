//! Repair: recreating what a slice position must hold from the other positions of its row
//! (each source verified against its checksum) — the one implementation rebuild, scrub,
//! reads and heal share — and putting checksum blocks back on their members.

use super::Data;
use crate::error::Result;
use crate::layout::chunkmap::Chunk;
use crate::layout::profile::Level;
use crate::member::{read, write, Dev};
use std::collections::HashMap;
use std::sync::atomic::Ordering;

/// What one slice position of a chunk needs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Need {
    /// Its member is gone: reconstruct from the others.
    Reconstruct,
    /// Its member is being replaced by `to`: copy (reconstruct where it fails to read).
    Copy { to: u16 },
}

/// Buffers a rebuild thread reuses from batch to batch: per slice position, its bytes for
/// the batch and which rows of them verified; and the batch's output.
#[derive(Default)]
pub(crate) struct Scratch {
    pub bufs: Vec<Vec<u8>>,
    pub ok: Vec<Vec<bool>>,
    pub out: Vec<u8>,
}

impl Data {
    /// Fills `out` (rows `row0..` of slice position `pos`, whole stripe units) the fast way:
    /// one read per source for all rows, each verified. Returns which rows it did; the
    /// others (a read error or checksum failure among their sources) need the slow path.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn rebuild_rows(
        &self,
        c: &Chunk,
        members: &[Option<Dev>],
        pos: usize,
        need: Need,
        row0: u64,
        out: &mut [u8],
        scratch: &mut Scratch,
    ) -> Vec<bool> {
        let p = &c.profile;
        let su = p.stripe_unit as usize;
        let len = out.len();
        let nrows = len / su;
        // Reads source position `q` for these rows into `b`; which rows are trustworthy
        // (none if it cannot be read).
        let fetch = |q: usize, b: &mut [u8], ok: &mut Vec<bool>| {
            ok.clear();
            let m = c.slices[q].member;
            let Some(d) = members[m as usize].as_ref() else {
                ok.resize(nrows, false);
                return;
            };
            let off = c.slices[q].offset + row0 * p.stripe_unit;
            if read(d.as_ref(), b, off).is_err() {
                ok.resize(nrows, false);
                return;
            }
            ok.extend((0..nrows).map(|r| {
                self.csums.as_ref().is_none_or(|cs| {
                    cs.first_bad(m, d, off + (r * su) as u64, &b[r * su..(r + 1) * su])
                        .is_none()
                })
            }));
        };
        let mut done = Vec::new();
        if matches!(need, Need::Copy { .. }) {
            fetch(pos, out, &mut done);
            if done.iter().all(|&g| g) {
                return done;
            }
            // Reconstruct the rows the old member could not give.
        } else {
            done.resize(nrows, false);
        }
        scratch.bufs.resize_with(p.width, Vec::new);
        scratch.ok.resize_with(p.width, Vec::new);
        for q in 0..p.width {
            let (b, ok) = (&mut scratch.bufs[q], &mut scratch.ok[q]);
            if q == pos {
                ok.clear();
                ok.resize(nrows, false);
                continue;
            }
            // Grown, never shrunk: batches of other sizes need no zeroing.
            if b.len() < len {
                b.resize(len, 0);
            }
            fetch(q, &mut b[..len], ok);
        }
        let sources = &*scratch;
        let col = |q: usize, r: usize| -> Option<&[u8]> {
            (sources.ok[q][r]).then(|| &sources.bufs[q][r * su..(r + 1) * su])
        };
        for r in 0..nrows {
            if done[r] {
                continue;
            }
            let row = row0 + r as u64;
            let dst = &mut out[r * su..(r + 1) * su];
            if p.level == Level::Raid5 {
                // Data or parity alike: the XOR of every other position.
                let views: Option<Vec<&[u8]>> = (0..p.width)
                    .filter(|&q| q != pos)
                    .map(|q| col(q, r))
                    .collect();
                if let Some(views) = views {
                    self.parity.gen_p(&views, dst);
                    done[r] = true;
                }
                continue;
            }
            if p.level != Level::Raid6 {
                let i = (0..p.data_count()).find(|&i| p.data_positions(row, i).contains(&pos));
                if let Some(src) = i.and_then(|i| {
                    p.data_positions(row, i)
                        .filter(|&q| q != pos)
                        .find_map(|q| col(q, r))
                }) {
                    dst.copy_from_slice(src);
                    done[r] = true;
                }
                continue;
            }
            let d = p.data_count();
            let dpos: Vec<usize> = (0..d).map(|i| p.data_positions(row, i).start).collect();
            let ppos = p.parity_position(row);
            let qpos = p.q_position(row);
            let owned = |q: usize| col(q, r).map(<[u8]>::to_vec);
            let mut sub = super::stripe::SubRow {
                data: dpos.iter().map(|&q| owned(q)).collect(),
                p: owned(ppos),
                q: owned(qpos),
            };
            if !self.reconstruct(p, &mut sub) {
                continue;
            }
            if let Some(i) = dpos.iter().position(|&q| q == pos) {
                dst.copy_from_slice(sub.data[i].as_ref().expect("reconstructed"));
            } else {
                let views: Vec<&[u8]> = sub
                    .data
                    .iter()
                    .map(|b| b.as_deref().expect("complete"))
                    .collect();
                let mut pb = vec![0u8; su];
                let mut qb = vec![0u8; su];
                self.parity.gen_pq(&views, &mut pb, &mut qb);
                dst.copy_from_slice(if pos == ppos { &pb } else { &qb });
            }
            done[r] = true;
        }
        done
    }

    /// Rebuilds the block of slice position `pos` at (`row`, `col`) from the other
    /// positions (each verified against its checksum); `false` if it cannot.
    pub(crate) fn rebuild_block_checked(
        &self,
        c: &Chunk,
        members: &[Option<Dev>],
        pos: usize,
        row: u64,
        col: u64,
        out: &mut [u8],
    ) -> bool {
        self.rebuild_block(c, members, pos, Need::Reconstruct, row, col, out)
    }

    /// Fills `out` with the content slice position `pos` must hold at (`row`, `col`).
    /// `false` when it cannot be known (too many unreadable blocks).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn rebuild_block(
        &self,
        c: &Chunk,
        members: &[Option<Dev>],
        pos: usize,
        need: Need,
        row: u64,
        col: u64,
        out: &mut [u8],
    ) -> bool {
        let p = &c.profile;
        let at = row * p.stripe_unit + col;
        // A source counts only if it reads and (with checksums) verifies.
        let get = |q: usize, buf: &mut [u8]| -> bool {
            let m = c.slices[q].member;
            match &members[m as usize] {
                Some(d) => {
                    let off = c.slices[q].offset + at;
                    // What goes wrong here is counted as on any other read: rebuild and
                    // scrub errors show in the member's error counts too.
                    if read(d.as_ref(), buf, off).is_err() {
                        self.tel
                            .counters
                            .read_errors
                            .fetch_add(1, Ordering::Relaxed);
                        return false;
                    }
                    let good = self
                        .csums
                        .as_ref()
                        .is_none_or(|cs| cs.first_bad(m, d, off, buf).is_none());
                    if !good {
                        self.count_checksum_error(m);
                    }
                    good
                }
                None => false,
            }
        };
        if matches!(need, Need::Copy { .. }) && get(pos, out) {
            return true;
        }
        match p.level {
            Level::Raid5 | Level::Raid6 => {
                // Every other position of the row, read block by block; None = unknown.
                let width = p.width;
                let mut cols: Vec<Option<Vec<u8>>> = (0..width)
                    .map(|q| {
                        if q == pos {
                            return None;
                        }
                        let mut b = vec![0u8; out.len()];
                        get(q, &mut b).then_some(b)
                    })
                    .collect();
                let d = p.data_count();
                let dpos: Vec<usize> = (0..d).map(|i| p.data_positions(row, i).start).collect();
                let ppos = p.parity_position(row);
                let qpos = (p.level == Level::Raid6).then(|| p.q_position(row));
                let mut sub = super::stripe::SubRow {
                    data: dpos.iter().map(|&q| cols[q].take()).collect(),
                    p: cols[ppos].take(),
                    q: qpos.and_then(|q| cols[q].take()),
                };
                if !self.reconstruct(p, &mut sub) {
                    return false;
                }
                if let Some(i) = dpos.iter().position(|&q| q == pos) {
                    out.copy_from_slice(sub.data[i].as_ref().expect("reconstructed"));
                    return true;
                }
                let views: Vec<&[u8]> = sub
                    .data
                    .iter()
                    .map(|b| b.as_deref().expect("complete"))
                    .collect();
                let mut pb = vec![0u8; out.len()];
                let mut qb = vec![0u8; out.len()];
                if qpos.is_some() {
                    self.parity.gen_pq(&views, &mut pb, &mut qb);
                } else {
                    self.parity.gen_p(&views, &mut pb);
                }
                out.copy_from_slice(if pos == ppos { &pb } else { &qb });
                true
            }
            _ => {
                let Some(i) =
                    (0..p.data_count()).find(|&i| p.data_positions(row, i).contains(&pos))
                else {
                    return false;
                };
                p.data_positions(row, i)
                    .filter(|&q| q != pos)
                    .any(|q| get(q, out))
            }
        }
    }

    /// Puts cached checksum blocks on their members (caller holds the commit lock; the
    /// members are flushed by the caller before anything refers to the data).
    pub(crate) fn write_csum_blocks(
        &self,
        members: &[Option<Dev>],
        blocks: HashMap<u16, Vec<u64>>,
    ) -> Result<()> {
        let Some(cs) = &self.csums else {
            return Ok(());
        };
        for (m, cbs) in blocks {
            let Some(d) = &members[m as usize] else {
                continue;
            };
            for w in cs.block_writes(m, &cbs) {
                write(d.as_ref(), &w.data, w.offset)?;
            }
        }
        Ok(())
    }
}
