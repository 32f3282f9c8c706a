//! Reading and writing what identifies a member: its two superblock copies and the two
//! metadata slots (generation `g` goes to slot `g mod 2`; the other keeps `g - 1` until `g`
//! is durable on every member). Byte layouts: `docs/format.md`.

use crate::error::{Error, Result};
use crate::member::{flush_all, read, write, Dev, MemberDevice};
use crate::ondisk::format::{self, Superblock, SB_BLOCK, SB_OFFSETS, SLOT_HEADER_LEN};
use crate::ondisk::metadata::ArrayMeta;
use crate::ondisk::probe;

/// Reads both superblock copies; the newest valid one wins.
pub fn read_superblock(dev: &dyn MemberDevice) -> Result<Superblock> {
    let name = dev.name();
    if dev.size() < 2 * SB_BLOCK {
        return Err(Error::format(
            name,
            "too small to hold a damocles superblock",
        ));
    }
    let mut errors = Vec::new();
    let mut best: Option<Superblock> = None;
    let mut found_magic = false;
    for off in SB_OFFSETS {
        let mut block = vec![0u8; SB_BLOCK as usize];
        read(dev, &mut block, off)?;
        match Superblock::decode(name, &block) {
            Ok(Some(sb)) => {
                found_magic = true;
                if best
                    .as_ref()
                    .is_none_or(|b| sb.sb_generation > b.sb_generation)
                {
                    best = Some(sb);
                }
            }
            Ok(None) => {}
            Err(e) => {
                found_magic = true;
                errors.push(e.to_string());
            }
        }
    }
    if let Some(sb) = best {
        return Ok(sb);
    }
    if found_magic {
        return Err(Error::format(
            name,
            format!("both superblock copies are damaged ({})", errors.join("; ")),
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
