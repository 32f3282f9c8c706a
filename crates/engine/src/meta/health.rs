//! What the metadata says about the array's health, and where new chunks may go: pure
//! functions of the committed metadata and the usable members.

use super::Meta;
use crate::layout::chunkmap::{Allocator, Chunk, MemberSpace, Template};
use crate::layout::profile::{Level, Profile};
use crate::member::Dev;
use crate::ondisk::metadata::{ArrayMeta, MemberInfo, MemberState};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Ok,
    Degraded,
    Failed,
}

/// Whether a chunk can still serve every block (within its tolerance of missing slices).
pub(crate) fn chunk_intact(c: &Chunk, members: &[Option<Dev>]) -> bool {
    let gone = |pos: usize| members[c.slices[pos].member as usize].is_none();
    let p = &c.profile;
    match p.level {
        Level::Raid5 | Level::Raid6 => (0..p.width).filter(|&i| gone(i)).count() <= p.tolerance(),
        _ => (0..p.data_count()).all(|i| p.data_positions(0, i).any(|pos| !gone(pos))),
    }
}

/// How many more of its members chunk `c` can lose and still serve every block (`None`:
/// some block is unreadable now).
pub(crate) fn spare_failures(c: &Chunk, members: &[Option<Dev>]) -> Option<usize> {
    let p: &Profile = &c.profile;
    let present = |pos: usize| members[c.slices[pos].member as usize].is_some();
    match p.level {
        Level::Raid5 | Level::Raid6 => {
            let gone = (0..p.width).filter(|&i| !present(i)).count();
            p.tolerance().checked_sub(gone)
        }
        _ => (0..p.data_count())
            .map(|i| p.data_positions(0, i).filter(|&pos| present(pos)).count())
            .min()
            .and_then(|n| n.checked_sub(1)),
    }
}

impl Meta {
    /// Whether every chunk never written yet still fits in what `alloc` leaves free, placed
    /// as `chunk_for_write` would place it (on `candidates`, see [`alloc_candidates`]).
    /// Only reserved volumes count: a thin one was promised nothing.
    pub(crate) fn room_for_unwritten(&self, alloc: &Allocator, candidates: &[u16]) -> bool {
        let meta = &self.store.committed().meta;
        super::room_for(
            alloc,
            &super::unwritten_reserved(meta),
            self.chunk_size,
            candidates,
        )
    }

    /// Failed: some data written is beyond the redundancy left (or, for an empty array, more
    /// members are gone than the level tolerates). Degraded: data lacks some of its
    /// redundancy, or a member the array counts on is missing.
    pub fn health(&self) -> Health {
        let members = self.members();
        let st = self.store.committed();
        let counted = |i: usize| {
            matches!(
                st.meta.members[i].state,
                MemberState::Active | MemberState::Faulty
            )
        };
        let unavailable = (0..members.len())
            .filter(|&i| counted(i) && members[i].is_none())
            .count();
        let mut allocated = st.meta.map.allocated().peekable();
        let lost = if allocated.peek().is_none() {
            let t = st.meta.templates().iter().map(template_tolerance).min();
            unavailable > t.unwrap_or(0)
        } else {
            allocated.any(|(_, c)| !chunk_intact(c, &members))
        };
        let degraded_chunk = st.meta.map.allocated().any(|(_, c)| {
            c.slices
                .iter()
                .any(|s| members[s.member as usize].is_none())
        });
        if lost || !st.meta.health.lost.is_empty() {
            Health::Failed
        } else if degraded_chunk || unavailable > 0 {
            Health::Degraded
        } else {
            Health::Ok
        }
    }
}

/// Members new chunks go on: active and failed ones (a chunk is born degraded on a failed
/// member, so the capacity `create` promised stays reachable); spares wait for a failure,
/// members being removed are on their way out, removed members are gone for good.
pub(crate) fn alloc_candidates(meta: &ArrayMeta) -> Vec<u16> {
    (0..meta.members.len() as u16)
        .filter(|&i| {
            let m = &meta.members[i as usize];
            matches!(m.state, MemberState::Active | MemberState::Faulty) && !m.leaving
        })
        .collect()
}

/// The members of `candidates` a new chunk of template `t` goes on. A chunk without
/// redundancy (`single`, `raid0`) has none to be born degraded with: only active members
/// that are there (in `members`) take it, so it is laid out narrower rather than over a
/// member that is missing or failed (where it could not be read back).
pub(crate) fn candidates_for(
    t: &Template,
    candidates: &[u16],
    meta: &ArrayMeta,
    members: &[Option<Dev>],
) -> Vec<u16> {
    let mut c = candidates.to_vec();
    if t.level == Level::Single || template_tolerance(t) == 0 {
        c.retain(|&i| {
            meta.members[i as usize].state == MemberState::Active
                && members.get(i as usize).is_some_and(Option::is_some)
        });
    }
    c
}

/// The array byte ranges of chunks that cannot be read with `members` (a `single` chunk whose
/// member is gone, or any chunk past its redundancy), joined where they touch.
pub(crate) fn unreadable_ranges(meta: &ArrayMeta, members: &[Option<Dev>]) -> Vec<(u64, u64)> {
    let cs = meta.map.chunk_size;
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (i, c) in meta.map.allocated() {
        if chunk_intact(c, members) {
            continue;
        }
        let off = i as u64 * cs;
        match out.last_mut() {
            Some((o, l)) if *o + *l == off => *l += cs,
            _ => out.push((off, cs)),
        }
    }
    out
}

pub(crate) fn member_spaces(members: &[MemberInfo], data_offset: u64) -> Vec<MemberSpace> {
    members
        .iter()
        .enumerate()
        .map(|(i, m)| MemberSpace {
            member: i as u16,
            start: data_offset,
            end: m.size.max(data_offset),
        })
        .collect()
}

pub(crate) fn template_tolerance(t: &Template) -> usize {
    Profile {
        level: t.level,
        width: t.level.min_width(t.copies),
        copies: t.copies,
        stripe_unit: t.stripe_unit,
    }
    .tolerance()
}
