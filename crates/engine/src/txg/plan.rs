//! Planning a commit: which chunks it holds whole, the segments of one stripe row joined
//! where they continue each other, and the rows of one txg with each member's journal
//! bytes so far.

use crate::data::Seg;
use crate::ondisk::journal;
use crate::units::MemberWrite;
use std::collections::HashMap;

/// The chunks `pieces` (chunk, offset in chunk, bytes; in order, not overlapping) cover
/// whole, and the others.
pub(super) fn whole_chunks(
    pieces: &[(usize, u64, &[u8])],
    chunk_size: u64,
) -> (Vec<usize>, Vec<usize>) {
    let (mut whole, mut partial) = (Vec::new(), Vec::new());
    let mut k = 0;
    while k < pieces.len() {
        let idx = pieces[k].0;
        let mut bytes = 0;
        while k < pieces.len() && pieces[k].0 == idx {
            bytes += pieces[k].2.len() as u64;
            k += 1;
        }
        if bytes == chunk_size {
            whole.push(idx);
        } else {
            partial.push(idx);
        }
    }
    (whole, partial)
}

/// Segments of one row that continue each other in one data block (pieces of separate
/// extents), joined: (first segment, last + 1, the joined bytes). Planning a row sees a block
/// written whole as one segment, as if the extents were one.
pub(super) fn join_adjacent(segs: &[Seg]) -> Vec<(usize, usize, Vec<u8>)> {
    let mut out = Vec::new();
    let mut k = 0;
    while k < segs.len() {
        let mut e = k + 1;
        while e < segs.len()
            && segs[e].i == segs[k].i
            && segs[e - 1].col + segs[e - 1].data.len() as u64 == segs[e].col
        {
            e += 1;
        }
        if e - k > 1 {
            let mut v = Vec::with_capacity(segs[k..e].iter().map(|s| s.data.len()).sum());
            for s in &segs[k..e] {
                v.extend_from_slice(s.data);
            }
            out.push((k, e, v));
        }
        k = e;
    }
    out
}

/// `segs` with the runs of [`join_adjacent`] replaced by their joined bytes.
pub(super) fn with_joined<'a>(
    segs: &[Seg<'a>],
    joined: &'a [(usize, usize, Vec<u8>)],
) -> Vec<Seg<'a>> {
    let mut out = Vec::with_capacity(segs.len());
    let mut k = 0;
    let mut runs = joined.iter().peekable();
    while k < segs.len() {
        match runs.peek() {
            Some((a, b, v)) if *a == k => {
                out.push(Seg {
                    i: segs[k].i,
                    col: segs[k].col,
                    data: v,
                });
                k = *b;
                runs.next();
            }
            _ => {
                out.push(Seg {
                    i: segs[k].i,
                    col: segs[k].col,
                    data: segs[k].data,
                });
                k += 1;
            }
        }
    }
    out
}

/// Rows planned for one txg, and each member's journal bytes so far.
#[derive(Default)]
pub(super) struct TxgPlan {
    pub rows: Vec<(u32, u64, Vec<MemberWrite>)>,
    pub bytes: HashMap<u16, (usize, usize)>,
}

impl TxgPlan {
    pub fn fits(
        &self,
        writes: &[MemberWrite],
        half: u64,
        member_count: usize,
        one_record: bool,
    ) -> bool {
        let owner = |m: u16| if one_record { journal::EXTERNAL } else { m };
        let mut extra: HashMap<u16, (usize, usize)> = HashMap::new();
        for w in writes {
            let e = extra.entry(owner(w.member)).or_default();
            // Room for its checksum entries (a second journal entry).
            e.0 += 2;
            e.1 += w.data.len() + w.data.len() / 1024 + 16;
        }
        extra.iter().all(|(m, (n, d))| {
            let (n0, d0) = self.bytes.get(m).copied().unwrap_or_default();
            journal::encoded_len(member_count, n0 + n, d0 + d) as u64 <= half
        })
    }

    pub fn add(&mut self, idx: u32, row: u64, writes: Vec<MemberWrite>, one_record: bool) {
        for w in &writes {
            let owner = if one_record {
                journal::EXTERNAL
            } else {
                w.member
            };
            let e = self.bytes.entry(owner).or_default();
            e.0 += 2;
            e.1 += w.data.len() + w.data.len() / 1024 + 16;
        }
        self.rows.push((idx, row, writes));
    }
}
