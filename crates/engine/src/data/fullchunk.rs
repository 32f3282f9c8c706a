//! Whole stripe rows laid out as the slices hold them: the data blocks where the profile
//! puts them, copies for mirrors, fresh P (and Q) for parity levels. Nothing is read — the
//! caller has every byte of the rows — so a chunk written whole costs its bytes once plus
//! parity (the redirect-on-write commit, `txg/redirect.rs`).

use super::Data;
use crate::layout::chunkmap::Chunk;
use crate::layout::profile::Level;
use std::ops::{DerefMut, Range};

impl Data {
    /// Lays out rows `rows` of chunk `c` (holding `chunk_size` virtual bytes) into `bufs`,
    /// one buffer per slice position, each at least `rows.len() × stripe unit` bytes (the
    /// first that many are written): the bytes slice
    /// `pos` holds from offset `rows.start × stripe unit` on. `fill(co, dst)` copies the
    /// chunk's bytes at chunk offset `co` into `dst`; rows past the chunk's end (the last
    /// row's unused part) are zeros, so parity covers exactly what the slices hold. Every
    /// byte of `bufs` is written; their old contents do not matter.
    pub(crate) fn lay_out_rows<B: DerefMut<Target = [u8]> + Default>(
        &self,
        c: &Chunk,
        chunk_size: u64,
        rows: Range<u64>,
        bufs: &mut [B],
        fill: &mut dyn FnMut(u64, &mut [u8]),
    ) {
        let p = &c.profile;
        let su = p.stripe_unit as usize;
        let n = (rows.end - rows.start) as usize;
        assert!(
            bufs.len() == p.width && bufs.iter().all(|b| b.len() >= n * su),
            "a buffer per slice position, each of the rows' length"
        );
        let row_bytes = p.row_bytes();
        for (k, row) in rows.clone().enumerate() {
            let at = k * su..(k + 1) * su;
            for i in 0..p.data_count() {
                let positions = p.data_positions(row, i);
                let first = positions.start;
                let dst = &mut bufs[first][at.clone()];
                let co = row * row_bytes + (i * su) as u64;
                let have = chunk_size.saturating_sub(co).min(su as u64) as usize;
                if have > 0 {
                    fill(co, &mut dst[..have]);
                }
                dst[have..].fill(0);
                for pos in positions.skip(1) {
                    let (a, b) = if first < pos {
                        let (lo, hi) = bufs.split_at_mut(pos);
                        (&lo[first], &mut hi[0])
                    } else {
                        let (lo, hi) = bufs.split_at_mut(first);
                        (&hi[0], &mut lo[pos])
                    };
                    b[at.clone()].copy_from_slice(&a[at.clone()]);
                }
            }
            if matches!(p.level, Level::Raid5 | Level::Raid6) {
                let pp = p.parity_position(row);
                let mut pbuf = std::mem::take(&mut bufs[pp]);
                let mut qbuf = match p.level {
                    Level::Raid6 => Some(std::mem::take(&mut bufs[p.q_position(row)])),
                    _ => None,
                };
                {
                    let srcs: Vec<&[u8]> = (0..p.data_count())
                        .map(|i| &bufs[p.data_positions(row, i).start][at.clone()])
                        .collect();
                    match &mut qbuf {
                        Some(q) => {
                            self.parity
                                .gen_pq(&srcs, &mut pbuf[at.clone()], &mut q[at.clone()])
                        }
                        None => self.parity.gen_p(&srcs, &mut pbuf[at.clone()]),
                    }
                }
                bufs[pp] = pbuf;
                if let Some(q) = qbuf {
                    bufs[p.q_position(row)] = q;
                }
            }
        }
    }
}
