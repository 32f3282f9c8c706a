//! Reading and writing what identifies a member: its superblock copies (A and B at the
//! front, C and D near the end since version 2) and the two
//! metadata slots (generation `g` goes to slot `g mod 2`; the other keeps `g - 1` until `g`
//! is durable on every member). Byte layouts: `docs/format.md`.

use crate::error::{Error, Result};
use crate::member::{flush, flush_all, read, write, Dev, MemberDevice};
use crate::ondisk::format::{self, Superblock, SB_BLOCK, SB_OFFSETS, SLOT_HEADER_LEN};
use crate::ondisk::metadata::ArrayMeta;
use crate::ondisk::probe;
use zerocopy::FromBytes;

/// What one superblock copy holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CopyState {
    Valid(Superblock),
    /// No damocles magic there (zeros, or something else's bytes).
    Absent,
    /// Magic, but the copy does not check out (or is not this member's): why.
    Damaged(String),
}

/// Every superblock copy of one device, as read.
#[derive(Clone, Debug)]
pub struct SuperblockCopies {
    /// (offset, what it holds): A and B, then C and D where they are (or would be).
    pub copies: Vec<(u64, CopyState)>,
    /// The newest valid superblock: a front copy's when one is valid, else a tail copy's.
    pub best: Option<Superblock>,
    /// Neither front copy is valid: `best` was found by the copies near the end.
    pub from_tail: bool,
}

impl SuperblockCopies {
    /// The copies that do not hold `best` exactly (damaged, absent or older).
    pub fn bad_offsets(&self) -> Vec<u64> {
        let Some(best) = &self.best else {
            return Vec::new();
        };
        self.copies
            .iter()
            .filter(|(_, st)| st != &CopyState::Valid(best.clone()))
            .map(|(o, _)| *o)
            .collect()
    }
}

fn read_copy(dev: &dyn MemberDevice, off: u64) -> Result<CopyState> {
    let mut block = vec![0u8; SB_BLOCK as usize];
    read(dev, &mut block, off)?;
    Ok(match Superblock::decode(dev.name(), &block) {
        Ok(Some(sb)) => CopyState::Valid(sb),
        Ok(None) => CopyState::Absent,
        Err(e) => CopyState::Damaged(e.to_string()),
    })
}

/// A tail copy read at `t` (or `t + 4 KiB`) is only trusted when it says it is there, its
/// recorded device size puts it there, and (given `owner`) it is the same member's.
fn check_tail(st: CopyState, t: u64, owner: Option<&Superblock>) -> CopyState {
    let CopyState::Valid(sb) = st else {
        return st;
    };
    if sb.tail_offset != t || format::tail_offset_for(sb.member_size) != Some(t) {
        return CopyState::Damaged(
            "a superblock copy that is not where it records its copies".into(),
        );
    }
    if owner.is_some_and(|o| (o.array_uuid, o.member_uuid) != (sb.array_uuid, sb.member_uuid)) {
        return CopyState::Damaged("a superblock copy of another member or array".into());
    }
    CopyState::Valid(sb)
}

fn newest<'a>(copies: impl Iterator<Item = &'a CopyState>) -> Option<Superblock> {
    let mut best: Option<&Superblock> = None;
    for c in copies {
        if let CopyState::Valid(sb) = c {
            if best.is_none_or(|b| sb.sb_generation > b.sb_generation) {
                best = Some(sb);
            }
        }
    }
    best.cloned()
}

/// Reads every superblock copy of `dev`. The front copies (A, B) come first; when neither
/// is valid, copies C and D are looked for where a tail region ends this device now (or
/// where the device size a damaged front copy records puts them).
pub fn read_copies(dev: &dyn MemberDevice) -> Result<SuperblockCopies> {
    let name = dev.name();
    if dev.size() < 2 * SB_BLOCK {
        return Err(Error::format(
            name,
            "too small to hold a damocles superblock",
        ));
    }
    let mut copies = Vec::with_capacity(4);
    let mut recorded_sizes = Vec::new();
    for off in SB_OFFSETS {
        copies.push((off, read_copy(dev, off)?));
        let mut block = vec![0u8; SB_BLOCK as usize];
        read(dev, &mut block, off)?;
        if let Ok((raw, _)) = format::SuperblockRaw::read_from_prefix(&block) {
            if raw.magic == format::SB_MAGIC {
                recorded_sizes.push(raw.member_size.get());
            }
        }
    }
    if let Some(sb) = newest(copies.iter().map(|(_, c)| c)) {
        let t = sb.tail_offset;
        if t != 0 {
            for off in [t, t + SB_BLOCK] {
                let st = if off + SB_BLOCK > dev.size() {
                    CopyState::Damaged("beyond the end of the device (did it shrink?)".into())
                } else {
                    check_tail(read_copy(dev, off)?, t, Some(&sb))
                };
                copies.push((off, st));
            }
        }
        return Ok(SuperblockCopies {
            copies,
            best: Some(sb),
            from_tail: false,
        });
    }
    let mut places: Vec<u64> = std::iter::once(dev.size())
        .chain(recorded_sizes)
        .filter_map(format::tail_offset_for)
        .filter(|t| t + 2 * SB_BLOCK <= dev.size())
        .collect();
    places.dedup();
    let mut first_tail = None;
    for t in places {
        let c = check_tail(read_copy(dev, t)?, t, None);
        let d = check_tail(read_copy(dev, t + SB_BLOCK)?, t, None);
        if let (CopyState::Valid(x), CopyState::Valid(y)) = (&c, &d) {
            if (x.array_uuid, x.member_uuid) != (y.array_uuid, y.member_uuid) {
                return Err(Error::format(
                    name,
                    "the superblock copies near the end disagree on which member this is",
                ));
            }
        }
        if let Some(sb) = newest([&c, &d].into_iter()) {
            copies.extend([(t, c), (t + SB_BLOCK, d)]);
            return Ok(SuperblockCopies {
                copies,
                best: Some(sb),
                from_tail: true,
            });
        }
        first_tail.get_or_insert([(t, c), (t + SB_BLOCK, d)]);
    }
    copies.extend(first_tail.into_iter().flatten());
    Ok(SuperblockCopies {
        copies,
        best: None,
        from_tail: false,
    })
}

/// The newest valid superblock copy of `dev` (front copies first, then the tail copies).
pub fn read_superblock(dev: &dyn MemberDevice) -> Result<Superblock> {
    let found = read_copies(dev)?;
    if let Some(sb) = found.best {
        return Ok(sb);
    }
    not_a_member(dev, &found)
}

/// The error for a device none of whose superblock copies is valid.
pub(crate) fn not_a_member<T>(dev: &dyn MemberDevice, found: &SuperblockCopies) -> Result<T> {
    let name = dev.name();
    let errors: Vec<String> = found
        .copies
        .iter()
        .filter_map(|(off, c)| match c {
            CopyState::Damaged(why) => Some(format!("at {off}: {why}")),
            _ => None,
        })
        .collect();
    if !errors.is_empty() {
        return Err(Error::format(
            name,
            format!(
                "every superblock copy is damaged or missing ({})",
                errors.join("; ")
            ),
        ));
    }
    let mut head = vec![0u8; probe::PROBE_LEN.min(dev.size() as usize)];
    read(dev, &mut head, 0)?;
    let what = probe::describe_content(&head).unwrap_or_else(|| "it is empty".into());
    Err(Error::format(
        name,
        format!("not a damocles member: no superblock found ({what})"),
    ))
}

/// What a device about to be written holds (`create`, `add`): what its first MiB holds,
/// else the damocles superblock copies near its end (a member whose front was wiped).
pub(crate) fn describe_device(dev: &dyn MemberDevice) -> Result<Option<String>> {
    let mut head = vec![0u8; probe::PROBE_LEN.min(dev.size() as usize)];
    read(dev, &mut head, 0)?;
    if let Some(found) = probe::describe_content(&head) {
        return Ok(Some(found));
    }
    if dev.size() < 2 * SB_BLOCK {
        return Ok(None);
    }
    Ok(read_copies(dev)?.best.map(|sb| {
        format!(
            "damocles superblock copies near its end (array {})",
            uuid::Uuid::from_bytes(sb.array_uuid)
        )
    }))
}

/// Writes `sb` to every copy it has, front first, flushing after each: a torn write or a
/// power cut damages at most one copy.
pub(crate) fn write_superblock(dev: &dyn MemberDevice, sb: &Superblock) -> Result<()> {
    write_copies(dev, sb, &sb.copy_offsets())
}

/// Writes `sb` at `offsets` (copies of it), one at a time, each flushed.
pub(crate) fn write_copies(dev: &dyn MemberDevice, sb: &Superblock, offsets: &[u64]) -> Result<()> {
    let block = sb.encode();
    for &off in offsets {
        write(dev, &block, off)?;
        flush(dev)?;
    }
    Ok(())
}

/// Reads the newest valid metadata slot of one member.
pub(crate) fn read_best_slot(
    dev: &dyn MemberDevice,
    sb: &Superblock,
) -> (Option<(u64, ArrayMeta)>, Vec<String>) {
    let (best, notes) = read_best_slot_payload(dev, sb);
    (best.map(|(g, m, _)| (g, m)), notes)
}

/// A metadata slot that checked out: generation, metadata, payload as stored.
pub(crate) type SlotRead = (u64, ArrayMeta, Vec<u8>);

/// [`read_best_slot`] that also returns the payload bytes as stored (for export).
pub(crate) fn read_best_slot_payload(
    dev: &dyn MemberDevice,
    sb: &Superblock,
) -> (Option<SlotRead>, Vec<String>) {
    let mut notes = Vec::new();
    let mut best: Option<SlotRead> = None;
    for (i, off) in sb.slot_offsets().into_iter().enumerate() {
        let mut hdr = vec![0u8; 4096];
        if let Err(e) = read(dev, &mut hdr, off) {
            notes.push(format!("{}: metadata slot {i}: {e}", dev.name()));
            continue;
        }
        let h = match format::decode_slot_header(&hdr, &sb.array_uuid, sb.slot_size) {
            Ok(h) => h,
            Err(why) => {
                // A never-used slot (all zeros) is normal right after create.
                if hdr.iter().any(|&b| b != 0) {
                    notes.push(format!("{}: metadata slot {i} ignored: {why}", dev.name()));
                }
                continue;
            }
        };
        let mut payload = vec![0u8; h.payload_len as usize];
        if let Err(e) = read(dev, &mut payload, off + SLOT_HEADER_LEN as u64) {
            notes.push(format!("{}: metadata slot {i}: {e}", dev.name()));
            continue;
        }
        if format::crc32c(&payload) != h.payload_crc {
            notes.push(format!(
                "{}: metadata slot {i} (generation {}) ignored: checksum mismatch (torn write?)",
                dev.name(),
                h.generation
            ));
            continue;
        }
        match ArrayMeta::decode(dev.name(), &payload, sb.data_offset) {
            Ok(m) => {
                if best.as_ref().is_none_or(|(g, _, _)| h.generation > *g) {
                    best = Some((h.generation, m, payload));
                }
            }
            Err(e) => notes.push(format!("metadata slot {i} ignored: {e}")),
        }
    }
    (best, notes)
}

/// Writes generation `generation` into its slot (`generation mod 2`) on every member given,
/// then flushes them: the other slot keeps the previous generation until this is durable.
pub(crate) fn write_generation(
    uuid: [u8; 16],
    layout: &Superblock,
    members: &[Option<Dev>],
    generation: u64,
    payload: &[u8],
) -> Result<()> {
    let slot = (generation % 2) as usize;
    let bytes = format::encode_slot(uuid, generation, slot as u32, payload);
    let off = layout.slot_offsets()[slot];
    if members.iter().all(Option::is_none) {
        return Err(Error::Unavailable(
            "no member is available to hold the array's metadata".into(),
        ));
    }
    for d in members.iter().flatten() {
        write(d.as_ref(), &bytes, off)?;
    }
    flush_all(members)
}
