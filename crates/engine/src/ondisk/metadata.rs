//! Array metadata: the member table and the chunk map, as stored in each metadata slot.

use super::format::{ArrayRaw, ChunkRaw, HealthRaw, LostRaw, MemberRaw, Reader, SliceRaw};
use crate::error::{Error, Result};
use crate::layout::volumes::{name_for_array, Volume};
use crate::layout::{Chunk, ChunkMap, Level, Profile, Slice, Template};
use serde::Serialize;
use std::sync::Arc;
use zerocopy::{FromZeros, IntoBytes};

/// What the array knows about a member, whether or not it is present.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// In sync with the array.
    Active,
    /// Missed writes (missing while the array was written, or failed); never trusted.
    Faulty,
    /// A hot spare: holds no slices until a rebuild puts some on it.
    Spare,
    /// Removed from the array; its index stays reserved so slice references stay stable.
    Removed,
}

impl MemberState {
    /// The state as `status` and the JSON output spell it: "active", "faulty", ...
    pub fn name(self) -> &'static str {
        match self {
            MemberState::Active => "active",
            MemberState::Faulty => "faulty",
            MemberState::Spare => "spare",
            MemberState::Removed => "removed",
        }
    }

    fn code(self) -> u8 {
        match self {
            MemberState::Active => 0,
            MemberState::Faulty => 1,
            MemberState::Spare => 2,
            MemberState::Removed => 3,
        }
    }
    fn from_code(c: u8) -> Option<MemberState> {
        match c {
            0 => Some(MemberState::Active),
            1 => Some(MemberState::Faulty),
            2 => Some(MemberState::Spare),
            3 => Some(MemberState::Removed),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    pub uuid: [u8; 16],
    pub size: u64,
    pub state: MemberState,
    /// For a member added by `replace`: the member whose slices it takes over.
    pub replaces: Option<u16>,
    /// Faulty because it failed (an I/O error, or `damocles fail`), not because it was
    /// missing while the array was written: a rebuild starts by itself only for these.
    pub failed: bool,
    /// Being removed: its slices move to the other members, and new chunks avoid it.
    pub leaving: bool,
}

/// Progress and results that must survive a restart, and blocks known lost.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// Next chunk a resumed scrub starts at (`None`: no scrub in progress).
    pub scrub_cursor: Option<u32>,
    /// Results of the last (or current) scrub.
    pub scrub_checked: u64,
    pub scrub_repaired: u64,
    pub scrub_unrecoverable: u64,
    /// When the last scrub finished (seconds since the epoch; 0: never).
    pub scrub_finished: u64,
    /// Volume byte ranges `(offset, len)` whose content is lost (reads give EIO).
    pub lost: Vec<(u64, u64)>,
}

impl Health {
    /// Forgets the lost ranges' parts inside `[lo, hi)` (good data again, or freed).
    pub fn forget_lost(&mut self, lo: u64, hi: u64) {
        let mut kept = Vec::with_capacity(self.lost.len());
        for &(o, l) in &self.lost {
            let e = o + l;
            if e <= lo || hi <= o {
                kept.push((o, l));
                continue;
            }
            if o < lo {
                kept.push((o, lo - o));
            }
            if hi < e {
                kept.push((hi, e - hi));
            }
        }
        self.lost = kept;
    }
}

/// Most lost ranges the metadata records (beyond that the array is beyond saving anyway).
pub const MAX_LOST: usize = 4096;

/// Everything a metadata slot holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArrayMeta {
    pub name: String,
    pub template: Template,
    pub created: u64,
    pub members: Vec<MemberInfo>,
    pub map: ChunkMap,
    /// UUID of the external journal device, if the array has one.
    pub journal_device: Option<[u8; 16]>,
    pub health: Health,
    /// A `balance` is under way (resumed after a restart until every chunk is as wide as
    /// the members allow).
    pub balancing: bool,
    /// When the reshape under way ends, the volume grows to what the members then hold
    /// (`add --grow`, `balance --grow`).
    pub grow_after: bool,
    /// The volumes, each owning runs of chunk indexes (format 2; a format-1 payload reads
    /// as one volume holding the whole virtual disk).
    pub volumes: Vec<Volume>,
    /// The id the next volume created gets.
    pub next_volume_id: u32,
    /// Format version of the payload as read (1 or 2); every commit writes version 2.
    pub format_version: u32,
}

/// The payload format this code writes.
pub const PAYLOAD_VERSION: u32 = 2;
/// Array flag: a volume table follows the health record (format 2).
const FLAG_VOLUMES: u32 = 4;

pub const MAX_NAME: usize = 64;
/// Upper bound on chunks in one array (the map is held in memory).
pub const MAX_CHUNKS: usize = 1 << 22;

impl ArrayMeta {
    pub fn encode(&self) -> Vec<u8> {
        let mut a = ArrayRaw::new_zeroed();
        let name = self.name.as_bytes();
        a.name[..name.len().min(MAX_NAME)].copy_from_slice(&name[..name.len().min(MAX_NAME)]);
        a.level = self.template.level.code();
        a.copies = self.template.copies as u8;
        a.stripe_unit.set(self.template.stripe_unit as u32);
        a.chunk_size.set(self.map.chunk_size);
        a.chunk_count.set(self.map.chunks.len() as u32);
        a.member_count.set(self.members.len() as u32);
        a.allocated_count.set(self.map.allocated().count() as u32);
        a.created.set(self.created);
        a.flags
            .set(u32::from(self.balancing) | (u32::from(self.grow_after) << 1) | FLAG_VOLUMES);
        a.journal_device = self.journal_device.unwrap_or([0; 16]);
        let mut out = a.as_bytes().to_vec();
        for m in &self.members {
            let mut r = MemberRaw::new_zeroed();
            r.uuid = m.uuid;
            r.size.set(m.size);
            r.state = m.state.code();
            r.replaces.set(m.replaces.map_or(0, |i| i + 1));
            r.flags = u8::from(m.failed) | (u8::from(m.leaving) << 1);
            out.extend_from_slice(r.as_bytes());
        }
        for (i, c) in self.map.allocated() {
            let mut r = ChunkRaw::new_zeroed();
            r.index.set(i as u32);
            r.level = c.profile.level.code();
            r.width = c.profile.width as u8;
            r.copies = c.profile.copies as u8;
            r.stripe_unit.set(c.profile.stripe_unit as u32);
            r.slice_len.set(c.slice_len);
            out.extend_from_slice(r.as_bytes());
            for s in &c.slices {
                let mut sr = SliceRaw::new_zeroed();
                sr.member.set(s.member);
                sr.offset.set(s.offset);
                out.extend_from_slice(sr.as_bytes());
            }
        }
        let h = &self.health;
        let mut e = HealthRaw::new_zeroed();
        e.scrub_cursor.set(h.scrub_cursor.map_or(0, |c| c + 1));
        e.scrub_checked.set(h.scrub_checked);
        e.scrub_repaired.set(h.scrub_repaired);
        e.scrub_unrecoverable.set(h.scrub_unrecoverable);
        e.scrub_finished.set(h.scrub_finished);
        let lost = &h.lost[..h.lost.len().min(MAX_LOST)];
        e.lost_count.set(lost.len() as u32);
        out.extend_from_slice(e.as_bytes());
        for &(o, l) in lost {
            let mut r = LostRaw::new_zeroed();
            r.offset.set(o);
            r.len.set(l);
            out.extend_from_slice(r.as_bytes());
        }
        super::volumes::encode(&mut out, &self.volumes, self.next_volume_id);
        out
    }

    /// The volume that holds chunk `idx`, if any.
    pub fn volume_of(&self, idx: usize) -> Option<&Volume> {
        self.volumes.iter().find(|v| v.owns(idx))
    }

    /// What chunk `idx` is made of when it is (re)laid out: its volume's template (the
    /// array's default for an index no volume holds).
    pub fn template_for(&self, idx: usize) -> Template {
        crate::layout::volumes::template_for(&self.volumes, idx, self.template)
    }

    /// The distinct templates of the volumes (the array's default when it has none).
    pub fn templates(&self) -> Vec<Template> {
        let mut out: Vec<Template> = Vec::new();
        for v in &self.volumes {
            if !out.contains(&v.template) {
                out.push(v.template);
            }
        }
        if out.is_empty() {
            out.push(self.template);
        }
        out
    }

    /// Decodes and checks a payload; `data_offset` is where member data areas start.
    pub fn decode(member: &str, payload: &[u8], data_offset: u64) -> Result<ArrayMeta> {
        let bad = |m: String| bad(member, m);
        let mut r = Reader::new(member, payload);
        let a: ArrayRaw = r.take()?;
        let name_len = a.name.iter().position(|&b| b == 0).unwrap_or(MAX_NAME);
        let name = std::str::from_utf8(&a.name[..name_len])
            .map_err(|_| bad("array name is not UTF-8".into()))?
            .to_string();
        if a.flags.get() & !7 != 0 {
            return Err(bad(format!("unknown array flags {:#x}", a.flags.get())));
        }
        let template = decode_template(member, &a)?;
        let chunk_size = a.chunk_size.get();
        if !chunk_size.is_power_of_two() || chunk_size < template.stripe_unit {
            return Err(bad(format!("bad chunk size {chunk_size}")));
        }
        let member_count = a.member_count.get() as usize;
        if member_count == 0 || member_count > u16::MAX as usize {
            return Err(bad(format!("bad member count {member_count}")));
        }
        let chunk_count = a.chunk_count.get() as usize;
        if (chunk_count as u64).checked_mul(chunk_size).is_none() {
            return Err(bad("virtual size overflows".into()));
        }
        let members = decode_members(member, &mut r, member_count)?;
        // The virtual disk can never be larger than the raw space under it.
        let raw: u64 = members.iter().map(|m| m.size).fold(0, u64::saturating_add);
        // With volumes, thin ones may together be larger than the members (overcommit).
        let v2 = a.flags.get() & FLAG_VOLUMES != 0;
        if chunk_count > MAX_CHUNKS || (!v2 && chunk_count as u64 > raw / chunk_size) {
            return Err(bad(format!(
                "{chunk_count} chunks of {chunk_size} bytes do not fit the members"
            )));
        }
        let allocated = a.allocated_count.get() as usize;
        if allocated > chunk_count {
            return Err(bad("more allocated chunks than chunks".into()));
        }
        let geometry = Geometry {
            chunk_count,
            chunk_size,
            data_offset,
        };
        let (mut chunks, extents) = decode_chunks(member, &mut r, allocated, &geometry, &members)?;
        let health = decode_health(member, &mut r, chunk_count, chunk_size)?;
        let (volumes, next_volume_id) = if v2 {
            super::volumes::decode(member, &mut r, chunk_count, chunk_size)?
        } else {
            // Format 1: one volume, the whole virtual disk, shaped as the array.
            let whole = Volume {
                id: 0,
                name: name_for_array(&name),
                template,
                size: chunk_count as u64 * chunk_size,
                thin: false,
                extents: if chunk_count > 0 {
                    vec![(0, chunk_count as u32)]
                } else {
                    Vec::new()
                },
                created: a.created.get(),
            };
            (
                if chunk_count > 0 {
                    vec![whole]
                } else {
                    Vec::new()
                },
                1,
            )
        };
        if let Some((i, _)) = chunks
            .iter()
            .enumerate()
            .find(|(i, c)| c.is_some() && !volumes.iter().any(|v| v.owns(*i)))
        {
            return Err(bad(format!(
                "chunk {i} is allocated but no volume holds it"
            )));
        }
        if !r.is_empty() {
            return Err(bad("trailing bytes after the chunk map".into()));
        }
        check_no_overlap(member, extents)?;
        let mut map = ChunkMap::new(chunk_size, 0);
        chunks.resize(chunk_count, None);
        map.chunks = chunks;
        Ok(ArrayMeta {
            name,
            template,
            created: a.created.get(),
            members,
            map,
            journal_device: (a.journal_device != [0; 16]).then_some(a.journal_device),
            health,
            balancing: a.flags.get() & 1 != 0,
            grow_after: a.flags.get() & 2 != 0,
            volumes,
            next_volume_id,
            format_version: if v2 { 2 } else { 1 },
        })
    }
}

/// A metadata format error on `member`.
fn bad(member: &str, m: String) -> Error {
    Error::format(member, format!("metadata: {m}"))
}

/// The volume's shape as the array record gives it, for checking the chunk records.
struct Geometry {
    chunk_count: usize,
    chunk_size: u64,
    /// Where member data areas start: no slice lies below.
    data_offset: u64,
}

/// Where a slice lies: `(member, start, end)`.
type Extent = (u16, u64, u64);

/// The chunk map by index (`None`: not allocated).
type ChunkSlots = Vec<Option<Arc<Chunk>>>;

/// The template of new chunks, checked to be valid as a chunk profile at its narrowest.
fn decode_template(member: &str, a: &ArrayRaw) -> Result<Template> {
    let level = Level::from_code(a.level)
        .ok_or_else(|| bad(member, format!("unknown level {}", a.level)))?;
    let template = Template {
        level,
        copies: a.copies as usize,
        stripe_unit: a.stripe_unit.get() as u64,
    };
    // A template is a chunk profile at its narrowest width; it must be valid as such.
    template
        .validate()
        .map_err(|e| bad(member, e.to_string()))?;
    Ok(template)
}

/// The member table: `member_count` member records.
fn decode_members(
    member: &str,
    r: &mut Reader<'_>,
    member_count: usize,
) -> Result<Vec<MemberInfo>> {
    let bad = |m: String| bad(member, m);
    let mut members = Vec::with_capacity(member_count.min(1024));
    for _ in 0..member_count {
        let m: MemberRaw = r.take()?;
        let state = MemberState::from_code(m.state)
            .ok_or_else(|| bad(format!("unknown member state {}", m.state)))?;
        let replaces = match m.replaces.get() {
            0 => None,
            r if (r as usize) <= member_count => Some(r - 1),
            r => return Err(bad(format!("member replaces unknown member {}", r - 1))),
        };
        if m.flags & !3 != 0 {
            return Err(bad(format!("unknown member flags {:#x}", m.flags)));
        }
        members.push(MemberInfo {
            uuid: m.uuid,
            size: m.size.get(),
            state,
            replaces,
            failed: m.flags & 1 != 0,
            leaving: m.flags & 2 != 0,
        });
    }
    Ok(members)
}

/// The chunk map: `allocated` chunk records in index order, each followed by its slices.
/// Returns the chunks up to the last allocated one, and every slice's extent for
/// [`check_no_overlap`].
fn decode_chunks(
    member: &str,
    r: &mut Reader<'_>,
    allocated: usize,
    g: &Geometry,
    members: &[MemberInfo],
) -> Result<(ChunkSlots, Vec<Extent>)> {
    let bad = |m: String| bad(member, m);
    let mut chunks: ChunkSlots = Vec::new();
    let mut extents: Vec<Extent> = Vec::new();
    for _ in 0..allocated {
        let c: ChunkRaw = r.take()?;
        let index = c.index.get() as usize;
        if index >= g.chunk_count || index < chunks.len() {
            return Err(bad(format!("chunk index {index} out of order or range")));
        }
        let level = Level::from_code(c.level)
            .ok_or_else(|| bad(format!("chunk {index}: unknown level {}", c.level)))?;
        let profile = Profile {
            level,
            width: c.width as usize,
            copies: c.copies as usize,
            stripe_unit: c.stripe_unit.get() as u64,
        };
        profile
            .validate()
            .map_err(|e| bad(format!("chunk {index}: {e}")))?;
        let slice_len = c.slice_len.get();
        if slice_len != profile.slice_len(g.chunk_size) {
            return Err(bad(format!(
                "chunk {index}: slice length {slice_len} is wrong"
            )));
        }
        let mut slices = Vec::with_capacity(profile.width);
        for _ in 0..profile.width {
            let s: SliceRaw = r.take()?;
            let m = s.member.get();
            let off = s.offset.get();
            let end = off.checked_add(slice_len);
            let fits = (m as usize) < members.len()
                && off >= g.data_offset
                && end.is_some_and(|e| e <= members[m as usize].size);
            if !fits || slices.iter().any(|x: &Slice| x.member == m) {
                return Err(bad(format!("chunk {index}: bad slice on member {m}")));
            }
            extents.push((m, off, off + slice_len));
            slices.push(Slice {
                member: m,
                offset: off,
            });
        }
        chunks.resize(index, None);
        chunks.push(Some(Arc::new(Chunk {
            profile,
            slice_len,
            slices,
        })));
    }
    Ok((chunks, extents))
}

/// The health record and its lost ranges (absent in payloads written before it existed).
fn decode_health(
    member: &str,
    r: &mut Reader<'_>,
    chunk_count: usize,
    chunk_size: u64,
) -> Result<Health> {
    let bad = |m: String| bad(member, m);
    // Payloads written before the health record existed end with the chunk map.
    let e: HealthRaw = if r.is_empty() {
        HealthRaw::new_zeroed()
    } else {
        r.take()?
    };
    let lost_count = e.lost_count.get() as usize;
    if lost_count > MAX_LOST {
        return Err(bad(format!("{lost_count} lost ranges recorded")));
    }
    let size = chunk_count as u64 * chunk_size;
    let mut lost = Vec::with_capacity(lost_count);
    for _ in 0..lost_count {
        let l: LostRaw = r.take()?;
        let (o, n) = (l.offset.get(), l.len.get());
        if o.checked_add(n).is_none_or(|end| end > size) || n == 0 {
            return Err(bad(format!("lost range {o}+{n} is outside the volume")));
        }
        lost.push((o, n));
    }
    let cursor = e.scrub_cursor.get();
    if cursor as usize > chunk_count + 1 {
        return Err(bad(format!("scrub cursor {cursor} out of range")));
    }
    Ok(Health {
        scrub_cursor: cursor.checked_sub(1),
        scrub_checked: e.scrub_checked.get(),
        scrub_repaired: e.scrub_repaired.get(),
        scrub_unrecoverable: e.scrub_unrecoverable.get(),
        scrub_finished: e.scrub_finished.get(),
        lost,
    })
}

/// Refuses two slices that overlap on one member.
fn check_no_overlap(member: &str, mut extents: Vec<Extent>) -> Result<()> {
    extents.sort_unstable();
    if extents
        .windows(2)
        .any(|w| w[0].0 == w[1].0 && w[0].2 > w[1].1)
    {
        return Err(bad(member, "two slices overlap on one member".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::chunkmap::{Allocator, MemberSpace};

    pub(crate) fn sample() -> ArrayMeta {
        let t = Template {
            level: Level::Raid5,
            copies: 1,
            stripe_unit: 65536,
        };
        let members: Vec<MemberInfo> = (0..4)
            .map(|i| MemberInfo {
                uuid: [i; 16],
                size: 64 << 20,
                state: MemberState::Active,
                replaces: None,
                failed: i == 2,
                leaving: i == 3,
            })
            .collect();
        let mut map = ChunkMap::new(4 << 20, 12);
        let spaces: Vec<MemberSpace> = (0..4)
            .map(|i| MemberSpace {
                member: i,
                start: 3 << 20,
                end: 64 << 20,
            })
            .collect();
        let mut alloc = Allocator::new(&spaces, &map);
        for i in [0, 3, 4, 11] {
            map.chunks[i] = Some(Arc::new(
                alloc.allocate(&t, 4 << 20, &[0, 1, 2, 3]).unwrap(),
            ));
        }
        ArrayMeta {
            name: "tank".into(),
            template: t,
            created: 5,
            members,
            map,
            journal_device: Some([7; 16]),
            health: Health {
                scrub_cursor: Some(3),
                scrub_checked: 10,
                scrub_repaired: 2,
                scrub_unrecoverable: 1,
                scrub_finished: 99,
                lost: vec![(8192, 4096)],
            },
            balancing: true,
            grow_after: true,
            volumes: vec![
                Volume {
                    id: 0,
                    name: "vms".into(),
                    template: t,
                    size: 10 << 20,
                    thin: false,
                    extents: vec![(0, 2), (4, 1)],
                    created: 5,
                },
                Volume {
                    id: 3,
                    name: "media".into(),
                    template: Template {
                        level: Level::Raid1,
                        copies: 2,
                        stripe_unit: 65536,
                    },
                    size: (36 << 20) - 4096,
                    thin: true,
                    extents: vec![(3, 1), (5, 7), (2, 1)],
                    created: 6,
                },
            ],
            next_volume_id: 4,
            format_version: 2,
        }
    }

    #[test]
    fn a_chunk_no_volume_holds_is_refused() {
        let mut m = sample();
        m.volumes[1].extents = vec![(5, 7), (2, 1)];
        m.volumes[1].size = 32 << 20;
        let e = ArrayMeta::decode("x", &m.encode(), 3 << 20).unwrap_err();
        assert!(e.to_string().contains("chunk 3 is allocated"), "{e}");
    }

    #[test]
    fn volumes_that_share_a_chunk_or_a_name_are_refused() {
        let mut m = sample();
        m.volumes[1].extents = vec![(4, 1), (5, 7), (2, 1)];
        assert!(ArrayMeta::decode("x", &m.encode(), 3 << 20).is_err());
        let mut m = sample();
        m.volumes[1].name = "vms".into();
        assert!(ArrayMeta::decode("x", &m.encode(), 3 << 20).is_err());
        let mut m = sample();
        m.volumes[1].size = 40 << 20;
        assert!(ArrayMeta::decode("x", &m.encode(), 3 << 20).is_err());
        let mut m = sample();
        m.volumes[1].id = 4;
        assert!(ArrayMeta::decode("x", &m.encode(), 3 << 20).is_err());
    }

    #[test]
    fn round_trips() {
        let m = sample();
        let bytes = m.encode();
        assert_eq!(ArrayMeta::decode("x", &bytes, 3 << 20).unwrap(), m);
    }

    #[test]
    fn garbage_and_truncation_are_errors_not_panics() {
        let bytes = sample().encode();
        for n in 0..bytes.len() {
            let _ = ArrayMeta::decode("x", &bytes[..n], 3 << 20);
        }
        assert!(ArrayMeta::decode("x", &bytes[..bytes.len() - 1], 3 << 20).is_err());
        let mut rng = 0x1234_5678_u64;
        for _ in 0..2000 {
            let mut b = bytes.clone();
            for _ in 0..4 {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let i = (rng >> 33) as usize % b.len();
                b[i] = (rng >> 13) as u8;
            }
            let _ = ArrayMeta::decode("x", &b, 3 << 20);
        }
    }

    #[test]
    fn overlapping_slices_are_rejected() {
        let mut m = sample();
        let c0 = m.map.chunks[0].clone().unwrap();
        m.map.chunks[1] = Some(c0);
        assert!(ArrayMeta::decode("x", &m.encode(), 3 << 20).is_err());
    }
}
