//! Space accounting across volumes: what the members hold raw, what allocated chunks
//! take, what reserved (not thin) volumes still need for the chunks they have not written,
//! and whether a new chunk or volume fits without eating into another's reservation.
//!
//! "Fits" is answered the way the space will really be taken: the allocator's greedy
//! step run on a copy of the free lists, chunk by chunk (arrays hold about a thousand
//! chunks, so this is cheap), not by dividing raw bytes — mixed member sizes and wide
//! stripes make raw byte counts an over-promise.

use super::health::{alloc_candidates, member_spaces};
use super::Meta;
use crate::error::Error;
use crate::events::EventKind;
use crate::layout::chunkmap::{Allocator, Template};
use crate::layout::volumes::Volume;
use crate::ondisk::metadata::{ArrayMeta, MemberState};
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;

/// What `status` shows of the array's raw space, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceUsage {
    /// Data areas of the members new chunks may use.
    pub raw: u64,
    /// Taken by allocated chunks (every slice, data and redundancy).
    pub allocated: u64,
    /// Promised to reserved volumes for chunks they have not written yet.
    pub reserved: u64,
    /// Neither allocated nor reserved.
    pub free: u64,
}

impl SpaceUsage {
    /// Allocated and reserved, in percent of raw (rounded down).
    pub fn percent_used(&self) -> u64 {
        if self.raw == 0 {
            return 100;
        }
        ((self.allocated + self.reserved) as u128 * 100 / self.raw as u128) as u64
    }
}

/// Chunks each reserved volume of `meta` has not written yet, with its template.
pub(crate) fn unwritten_reserved(meta: &ArrayMeta) -> Vec<(Template, usize)> {
    crate::layout::volumes::unwritten_reserved(&meta.volumes, &meta.map)
}

pub(crate) use crate::layout::volumes::room_for;

/// Raw bytes one chunk of `t` takes, laid out as the allocator would now (at its
/// narrowest width when it does not fit).
pub(crate) fn raw_per_chunk(alloc: &Allocator, t: &Template, chunk_size: u64, cand: &[u16]) -> u64 {
    match alloc.clone().allocate(t, chunk_size, cand) {
        Some(c) => c.slice_len * c.profile.width as u64,
        None => {
            let p = t.narrowest();
            p.slice_len(chunk_size) * p.width as u64
        }
    }
}

impl Meta {
    /// The allocator over `meta`'s map and the members new chunks may use.
    pub(crate) fn allocator_of(&self, meta: &ArrayMeta) -> (Allocator, Vec<u16>) {
        let spaces = member_spaces(&meta.members, self.sb_layout.data_offset);
        (Allocator::new(&spaces, &meta.map), alloc_candidates(meta))
    }

    /// Raw, allocated, reserved and free bytes of `meta`.
    pub(crate) fn space_of(&self, meta: &ArrayMeta) -> SpaceUsage {
        let (alloc, cand) = self.allocator_of(meta);
        let raw: u64 = cand
            .iter()
            .map(|&m| {
                let info = &meta.members[m as usize];
                debug_assert!(info.state != MemberState::Removed);
                info.size.saturating_sub(self.sb_layout.data_offset)
            })
            .sum();
        let allocated: u64 = meta
            .map
            .allocated()
            .map(|(_, c)| c.slice_len * c.profile.width as u64)
            .sum();
        let reserved: u64 = unwritten_reserved(meta)
            .iter()
            .map(|(t, n)| *n as u64 * raw_per_chunk(&alloc, t, self.chunk_size, &cand))
            .sum();
        SpaceUsage {
            raw,
            allocated,
            reserved,
            free: raw.saturating_sub(allocated + reserved),
        }
    }

    /// Sends a `space-low` event when allocated and reserved space first passes 80, 90 or
    /// 100 % of the raw space (again after it fell back below).
    pub(crate) fn note_space(&self, usage: SpaceUsage) {
        let pct = usage.percent_used();
        let level: u8 = match pct {
            100.. => 100,
            90.. => 90,
            80.. => 80,
            _ => 0,
        };
        let was = self.space_alarm.swap(level, Ordering::AcqRel);
        if level > was {
            self.emit(
                EventKind::SpaceLow,
                None,
                None,
                format!(
                    "{pct} % of the raw space is allocated or reserved ({} of {} bytes free)",
                    usage.free, usage.raw
                ),
            );
        }
    }

    /// The error for a chunk that found no room, with an event: the volume gets ENOSPC.
    pub(crate) fn out_of_space(&self, volume: Option<&Volume>, idx: usize) -> Error {
        let what = volume.map_or(format!("chunk {idx}"), |v| format!("volume {:?}", v.name));
        let msg = format!("no room on the members for a new chunk of {what}");
        if self.space_alarm.swap(100, Ordering::AcqRel) < 100 {
            self.emit(EventKind::SpaceLow, None, None, msg.clone());
        }
        Error::NoSpace(msg)
    }

    /// The array's space as last committed.
    pub fn space(&self) -> SpaceUsage {
        let st = self.store.committed();
        self.space_of(&st.meta)
    }
}
