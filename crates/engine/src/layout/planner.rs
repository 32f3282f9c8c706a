//! The reshape planner: a pure function of the chunk map and a goal (template, members
//! leaving, balance) that picks the next group of chunk moves. `plan` runs the very same
//! steps on a copy of the map, so its figures are the operation's (`jobs::reshape` does
//! the moves).

use super::chunkmap::{Allocator, Chunk, ChunkMap, MemberSpace, Template};
use super::profile::Level;
use super::volumes::{room_for, template_for, unwritten_reserved, Volume};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::Arc;

/// New-slice bytes a reshape group writes before its flush and commit: few enough that
/// writes waiting on the commit lock wait briefly, many enough that the per-commit cost
/// (a flush of every member, the map commit, the journal retire) is shared.
pub(crate) const GROUP_BYTES: u64 = 64 << 20;

/// What the array is being reshaped towards, and where chunks may go.
#[derive(Clone, Debug)]
pub(crate) struct Goal {
    /// What chunks no volume holds are made of (none is allocated).
    pub template: Template,
    /// The volumes as they will be: each chunk goes to its volume's template.
    pub volumes: Vec<Volume>,
    pub leaving: Vec<u16>,
    pub balance: bool,
    /// Members a moved chunk may use: active, present, not leaving.
    pub targets: Vec<u16>,
    /// Members never-written chunks will use (see `alloc_candidates`).
    pub future: Vec<u16>,
}

/// One chunk move: `staging` moves it as it is, only to make room on full members.
#[derive(Clone, Debug)]
pub(crate) struct Move {
    pub idx: usize,
    pub to: Chunk,
    pub staging: bool,
}

#[derive(Clone)]
pub(crate) struct Planner {
    pub spaces: Vec<MemberSpace>,
    pub chunk_size: u64,
    pub goal: Goal,
    /// Balancing: bytes per member that a fresh array holding as many chunks would use
    /// (empty otherwise). Moves never change the chunk count, so it holds for a whole plan.
    pub fresh_use: Vec<u64>,
    /// New-slice bytes per group of moves ([`GROUP_BYTES`], or 0: one move per commit).
    pub group_bytes: u64,
}

/// Bytes per member the map's slices take.
fn use_of(map: &ChunkMap, members: usize) -> Vec<u64> {
    let mut used = vec![0u64; members];
    for (_, c) in map.allocated() {
        for s in &c.slices {
            if let Some(u) = used.get_mut(s.member as usize) {
                *u += c.slice_len;
            }
        }
    }
    used
}

impl Goal {
    pub fn template_for(&self, idx: usize) -> Template {
        template_for(&self.volumes, idx, self.template)
    }
}

impl Planner {
    fn converted(&self, idx: usize, c: &Chunk) -> bool {
        let (p, t) = (&c.profile, &self.goal.template_for(idx));
        p.level == t.level && p.copies == t.copies && p.stripe_unit == t.stripe_unit
    }

    fn on_leaving(&self, c: &Chunk) -> bool {
        c.slices
            .iter()
            .any(|s| self.goal.leaving.contains(&s.member))
    }

    /// Would the chunk be wider laid out afresh (its own space counted as free)? `free` is
    /// the allocator of the map that holds it: one per pass over the map, not one per chunk
    /// (rebuilding it from the whole map for every chunk made each move cost O(chunks²)).
    fn narrow(&self, free: &Allocator, idx: usize, c: &Chunk) -> bool {
        let mut a = free.clone();
        a.release(c);
        a.allocate(
            &self.goal.template_for(idx),
            self.chunk_size,
            &self.goal.targets,
        )
        .is_some_and(|n| n.profile.width > c.profile.width)
    }

    /// How far `used` is from a fresh array's use: the bytes members hold beyond it.
    fn overuse(&self, used: &[u64]) -> u64 {
        used.iter()
            .zip(&self.fresh_use)
            .map(|(u, f)| u.saturating_sub(*f))
            .sum()
    }

    /// Whether moving `c` to `to` brings the members' use closer to a fresh array's. Only
    /// strictly closer counts, so balancing by use always ends.
    fn evens_out(&self, used: &[u64], c: &Chunk, to: &Chunk) -> bool {
        let mut after = used.to_vec();
        for s in &c.slices {
            after[s.member as usize] -= c.slice_len;
        }
        for s in &to.slices {
            after[s.member as usize] += to.slice_len;
        }
        self.overuse(&after) < self.overuse(used)
    }

    /// Would the chunk, laid out afresh, leave the members' use closer to a fresh array's?
    /// (Mixed sizes: a full small member keeps slices a fresh array would put on the new
    /// large one, and that space is what the volume needs to grow.) `used`: the map's use
    /// per member (see [`use_of`]).
    fn uneven(&self, free: &Allocator, used: &[u64], idx: usize, c: &Chunk) -> bool {
        if !c
            .slices
            .iter()
            .any(|s| used[s.member as usize] > self.fresh_use[s.member as usize])
        {
            return false;
        }
        let mut a = free.clone();
        a.release(c);
        a.allocate(
            &self.goal.template_for(idx),
            self.chunk_size,
            &self.goal.targets,
        )
        .is_some_and(|to| self.evens_out(used, c, &to))
    }

    /// Whether `c`, a chunk of the map `free` was made from (and `used` counted), still
    /// wants a move.
    fn wants(&self, free: &Allocator, used: &[u64], idx: usize, c: &Chunk) -> bool {
        !self.converted(idx, c)
            || self.on_leaving(c)
            || (self.goal.balance && (self.narrow(free, idx, c) || self.uneven(free, used, idx, c)))
    }

    /// The chunks of `map` (whose allocator is `free`) that still want a move.
    fn wanting<'m>(&self, map: &'m ChunkMap, free: &Allocator) -> Vec<(usize, &'m Arc<Chunk>)> {
        let used = use_of(map, self.spaces.len());
        map.allocated()
            .filter(|(i, c)| self.wants(free, &used, *i, c))
            .collect()
    }

    /// How many chunks of `map` still want a move.
    pub fn count_wanting(&self, map: &ChunkMap) -> usize {
        self.wanting(map, &Allocator::new(&self.spaces, map)).len()
    }

    /// Whether every never-written chunk still fits in what `a` leaves free.
    fn room(&self, map: &ChunkMap, a: &Allocator) -> bool {
        let needs = unwritten_reserved(&self.goal.volumes, map);
        room_for(a, &needs, self.chunk_size, &self.goal.future)
    }

    /// The next group of moves: each the next move on the map with the group's earlier
    /// moves made, but never into their old places (that data is live until the group's
    /// commit). A group ends at `group_bytes` of new slices (0: one move per group); when
    /// nothing more fits beside the pinned places except by staging; at a second move of a
    /// chunk already in it; and after a staging move (its point is the room its commit
    /// frees). Empty when the goal is
    /// reached or nothing more can move. Deterministic, so `plan` and the reshape make the
    /// same groups.
    pub fn next_group(&self, map: &ChunkMap, staged: &HashSet<usize>) -> Vec<Move> {
        let mut map = map.clone();
        let mut pinned: Vec<Arc<Chunk>> = Vec::new();
        let mut moves: Vec<Move> = Vec::new();
        let mut bytes = 0;
        while moves.is_empty() || bytes < self.group_bytes {
            let mut alloc = Allocator::new(&self.spaces, &map);
            for c in &pinned {
                alloc.reserve(c);
            }
            let Some(m) = self.next_in(&map, staged, alloc, moves.is_empty()) else {
                break;
            };
            if moves.iter().any(|x| x.idx == m.idx) {
                break;
            }
            bytes += m.to.slice_len * m.to.slices.len() as u64;
            let old = map.chunks[m.idx].replace(Arc::new(m.to.clone()));
            pinned.extend(old);
            let staging = m.staging;
            moves.push(m);
            if staging {
                break;
            }
        }
        moves
    }

    /// The next move, or `None` when the goal is reached or nothing more can move (or, without
    /// `staging`, when only a staging move would do). `alloc`: the map's free space, less
    /// any pinned slices.
    fn next_in(
        &self,
        map: &ChunkMap,
        staged: &HashSet<usize>,
        alloc: Allocator,
        staging: bool,
    ) -> Option<Move> {
        let work = self.wanting(map, &alloc);
        let used = use_of(map, self.spaces.len());
        for &(idx, c) in &work {
            let mut a = alloc.clone();
            let t = self.goal.template_for(idx);
            if let Some(to) = a.allocate(&t, self.chunk_size, &self.goal.targets) {
                let better = !self.converted(idx, c)
                    || self.on_leaving(c)
                    || to.profile.width > c.profile.width
                    || (self.goal.balance
                        && to.profile.width == c.profile.width
                        && self.evens_out(&used, c, &to));
                if better && self.room(map, &a) {
                    return Some(Move {
                        idx,
                        to,
                        staging: false,
                    });
                }
            }
        }
        if !staging {
            return None;
        }
        // Nothing fits as wanted: move a chunk as it is to the members with the most room,
        // which frees room on the full ones (a full 2-member raid0 going to raid5 over 4).
        // Where its level needs more members with room than there are (a full raid5 on
        // small members and one large new member), it goes as mirrors of the same
        // tolerance: two members with room are enough.
        let set = |c: &Chunk| {
            let mut v: Vec<u16> = c.slices.iter().map(|s| s.member).collect();
            v.sort_unstable();
            v
        };
        for &(idx, c) in &work {
            if staged.contains(&idx) {
                continue;
            }
            let p = c.profile;
            let own = Template {
                level: p.level,
                copies: p.copies,
                stripe_unit: p.stripe_unit,
            };
            let mirrors = Template {
                level: Level::Raid1,
                copies: p.tolerance() + 1,
                stripe_unit: p.stripe_unit,
            };
            let mut ts = vec![own];
            if p.level != Level::Raid1 && p.tolerance() > 0 {
                ts.push(mirrors);
            }
            for t in ts {
                let mut a = alloc.clone();
                if let Some(to) = a.allocate(&t, self.chunk_size, &self.goal.targets) {
                    if set(&to) != set(c) && self.room(map, &a) {
                        return Some(Move {
                            idx,
                            to,
                            staging: true,
                        });
                    }
                }
            }
        }
        None
    }

    /// Runs the plan on a copy of the map: what the reshape will do. Settles the grouping
    /// (see [`Planner::simulate_to`]), so a reshape that goes on with this planner does it.
    pub fn simulate(&mut self, map: &ChunkMap) -> Plan {
        self.simulate_to(map).0
    }

    /// [`Planner::simulate`], and the map as the reshape leaves it. Moves go in groups
    /// unless that leaves chunks stuck that one move per commit would not: a group's pinned
    /// places steer its later moves elsewhere, and on members with little free space that
    /// can fragment it past use (seen in the crash harness: raid5 → raid1 on a half-full
    /// array). Then `group_bytes` becomes 0.
    pub fn simulate_to(&mut self, map: &ChunkMap) -> (Plan, ChunkMap) {
        let grouped = self.run_on_copy(map);
        if grouped.0.stuck > 0 && self.group_bytes > 0 {
            let single = Planner {
                group_bytes: 0,
                ..self.clone()
            };
            let one_by_one = single.run_on_copy(map);
            if one_by_one.0.stuck < grouped.0.stuck {
                self.group_bytes = 0;
                return one_by_one;
            }
        }
        grouped
    }

    /// The moves, group by group, on a copy of `map`: the plan and the map it leaves.
    fn run_on_copy(&self, map: &ChunkMap) -> (Plan, ChunkMap) {
        let mut map = map.clone();
        let mut staged = HashSet::new();
        let mut plan = Plan::default();
        loop {
            let group = self.next_group(&map, &staged);
            if group.is_empty() {
                break;
            }
            for m in group {
                let old = map.chunks[m.idx]
                    .clone()
                    .expect("moves are of allocated chunks");
                plan.count(&m, &old);
                if m.staging {
                    staged.insert(m.idx);
                }
                map.chunks[m.idx] = Some(Arc::new(m.to));
            }
        }
        plan.stuck = self.count_wanting(&map);
        (plan, map)
    }
}

/// What a reshape does (from [`Planner::simulate`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Chunk moves, staging moves included.
    pub moves: usize,
    pub staging_moves: usize,
    /// Member bytes read and written by the moves.
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Chunks that still need a move when it ends (no room for them).
    pub stuck: usize,
}

impl Plan {
    /// Counts one move of `old`.
    pub(crate) fn count(&mut self, m: &Move, old: &Chunk) {
        self.moves += 1;
        self.bytes_read += old.slice_len * old.slices.len() as u64;
        self.bytes_written += m.to.slice_len * m.to.slices.len() as u64;
        if m.staging {
            self.staging_moves += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::chunkmap::Slice;
    use crate::layout::profile::Profile;

    const MIB: u64 = 1 << 20;

    /// Two members filled to the last byte by raid0, two empty ones: going to raid5 over
    /// four needs chunks moved aside first, and then everything converts.
    #[test]
    fn a_full_raid0_is_converted_by_making_room_first() {
        let spaces: Vec<MemberSpace> = (0..4)
            .map(|m| MemberSpace {
                member: m,
                start: 0,
                end: 5 * MIB,
            })
            .collect();
        let raid0 = Profile {
            level: Level::Raid0,
            width: 2,
            copies: 1,
            stripe_unit: 64 << 10,
        };
        let mut map = ChunkMap::new(MIB, 10);
        for i in 0..10u64 {
            map.chunks[i as usize] = Some(Arc::new(Chunk {
                profile: raid0,
                slice_len: MIB / 2,
                slices: (0..2)
                    .map(|m| Slice {
                        member: m,
                        offset: i * MIB / 2,
                    })
                    .collect(),
            }));
        }
        let raid5 = Template {
            level: Level::Raid5,
            copies: 1,
            stripe_unit: 64 << 10,
        };
        let goal = Goal {
            template: raid5,
            volumes: vec![Volume {
                id: 0,
                name: "v".into(),
                template: raid5,
                size: map.chunks.len() as u64 * MIB,
                thin: false,
                extents: vec![(0, map.chunks.len() as u32)],
                created: 0,
            }],
            leaving: vec![],
            balance: false,
            targets: vec![0, 1, 2, 3],
            future: vec![0, 1, 2, 3],
        };
        let mut p = Planner {
            spaces,
            chunk_size: MIB,
            goal,
            fresh_use: Vec::new(),
            group_bytes: GROUP_BYTES,
        };
        let plan = p.simulate(&map);
        assert_eq!(plan.stuck, 0, "{plan:?}");
        assert!(plan.staging_moves > 0, "{plan:?}");
        assert_eq!(plan.moves, 10 + plan.staging_moves, "{plan:?}");
    }
}
