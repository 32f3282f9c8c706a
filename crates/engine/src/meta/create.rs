//! Creating an array: options checked and members probed before anything is written, the
//! chunk and slot sizes chosen, then superblocks and generation 1 of the metadata written
//! and flushed on every member (and the journal device). The caller assembles the result.

use super::health::member_spaces;
use super::labels::{describe_device, write_superblock};
use crate::error::{Error, Result};
use crate::layout::chunkmap::{Allocator, ChunkMap, Template};
use crate::layout::profile::{Level, Profile};
use crate::layout::volumes::{name_for_array, Volume};
use crate::member::{flush, write, zero, Dev, Guarded, DEFAULT_FAIL, DEFAULT_SLOW};
use crate::ondisk::csum;
use crate::ondisk::format::{self, Superblock};
use crate::ondisk::metadata::{ArrayMeta, MemberInfo, MemberState, MAX_NAME, PAYLOAD_VERSION};
use crate::units::now;

pub const DEFAULT_STRIPE_UNIT: u64 = 64 << 10;
const MIN_CHUNK: u64 = 4 << 20;
const MAX_CHUNK: u64 = 1 << 30;

#[derive(Clone)]
pub struct CreateOptions {
    pub level: Level,
    /// Copies for raid1/raid10 (default 2).
    pub copies: Option<usize>,
    pub stripe_unit: u64,
    pub name: String,
    pub force: bool,
    /// Virtual bytes per chunk; chosen from the member sizes when `None`.
    pub chunk_size: Option<u64>,
    /// Keep a write journal (the default). Without one a power cut during a write can
    /// leave that stripe's parity wrong (the RAID write hole).
    pub journal: bool,
    /// Keep the journal on this separate device (an SSD, say) instead of on the members.
    pub journal_device: Option<Dev>,
    /// Volume size (rounded down to whole chunks); all the members can hold when `None`.
    /// Room left over lets a rebuild without a spare restore redundancy on the others.
    pub size: Option<u64>,
    /// Make the array with no volume yet (`volume create` adds them); otherwise it holds
    /// one volume named after the array, of the whole size.
    pub no_volume: bool,
}

impl CreateOptions {
    pub fn new(level: Level) -> Self {
        CreateOptions {
            level,
            copies: None,
            stripe_unit: DEFAULT_STRIPE_UNIT,
            name: String::new(),
            force: false,
            chunk_size: None,
            size: None,
            journal: true,
            journal_device: None,
            no_volume: false,
        }
    }
}

/// Chunk size for members of these sizes: about a thousand chunks of raw space, a power of
/// two between 4 MiB and 1 GiB.
fn pick_chunk_size(sizes: &[u64]) -> u64 {
    let raw: u64 = sizes.iter().sum();
    let target = (raw / 1024).max(1);
    let pow = 1u64 << (63 - target.leading_zeros());
    pow.clamp(MIN_CHUNK, MAX_CHUNK)
}

/// Metadata slot size: room for the member table and a chunk map four times the size the
/// members need now (growth), up to 64 MiB.
fn pick_slot_size(sizes: &[u64], chunk_size: u64) -> u64 {
    let raw: u64 = sizes.iter().sum();
    let chunks = 4 * raw / chunk_size + 16;
    let need = 4096 + 256 * 64 + chunks * (32 + 16 * 16);
    need.next_power_of_two()
        .clamp(format::MIN_SLOT_SIZE, format::MAX_SLOT_SIZE)
}

/// Where things go on every member, and generation 1 of the metadata.
struct Plan {
    meta: ArrayMeta,
    array_uuid: [u8; 16],
    created: u64,
    checksums: bool,
    slot_offset: u64,
    slot_size: u64,
    journal_offset: u64,
    journal_size: u64,
    data_offset: u64,
}

/// Writes a new array's labels on `devs` (and its journal device); returns every device
/// written, ready to be assembled.
pub(crate) fn create(devs: Vec<Dev>, opts: &CreateOptions) -> Result<Vec<Dev>> {
    let limits = (DEFAULT_SLOW, DEFAULT_FAIL);
    let devs: Vec<Dev> = devs.into_iter().map(|d| Guarded::wrap(d, limits)).collect();
    let template = check(&devs, opts)?;
    let plan = plan(&devs, opts, template)?;
    write_labels(&devs, &plan)?;
    let mut all = devs;
    if let (Some(j), Some(juuid)) = (&opts.journal_device, plan.meta.journal_device) {
        write_journal_device(j, juuid, &plan)?;
        all.push(j.clone());
    }
    Ok(all)
}

/// Checks the options and looks at every member before anything is written.
fn check(devs: &[Dev], opts: &CreateOptions) -> Result<Template> {
    let level = opts.level;
    let copies = opts.copies.unwrap_or(level.default_copies());
    let n = devs.len();
    if opts.copies.is_some() && !matches!(level, Level::Raid1 | Level::Raid10) {
        return Err(Error::Invalid(format!(
            "--copies only applies to raid1 and raid10, not {level}"
        )));
    }
    if n < level.min_members(copies) {
        return Err(Error::Invalid(format!(
            "{level}{} needs at least {} members, got {n}",
            if copies > 1 {
                format!(" with {copies} copies")
            } else {
                String::new()
            },
            level.min_members(copies)
        )));
    }
    if n > u16::MAX as usize {
        return Err(Error::Invalid("too many members".into()));
    }
    let template = Template {
        level,
        copies,
        stripe_unit: opts.stripe_unit,
    };
    Profile {
        level,
        width: level.min_width(copies),
        copies,
        stripe_unit: opts.stripe_unit,
    }
    .validate()?;
    if opts.name.len() > MAX_NAME || opts.name.contains('\0') {
        return Err(Error::Invalid(format!(
            "array name must be at most {MAX_NAME} bytes"
        )));
    }
    // Look at every member before writing to any of them.
    for d in devs {
        if let Some(found) = describe_device(d.as_ref())? {
            if !opts.force {
                return Err(Error::NotEmpty {
                    member: d.name().to_string(),
                    found,
                });
            }
        }
    }
    if let Some(j) = &opts.journal_device {
        if !opts.journal {
            return Err(Error::Invalid("a journal device needs the journal".into()));
        }
        if let Some(found) = describe_device(j.as_ref())? {
            if !opts.force {
                return Err(Error::NotEmpty {
                    member: j.name().to_string(),
                    found,
                });
            }
        }
        if j.size() < format::SLOT_AREA_OFFSET + (1 << 20) {
            return Err(Error::Invalid(format!(
                "journal device {} is too small: it needs at least 2 MiB",
                j.name()
            )));
        }
    }
    Ok(template)
}

/// Chooses the sizes and the member layout, and builds generation 1 of the metadata.
fn plan(devs: &[Dev], opts: &CreateOptions, template: Template) -> Result<Plan> {
    let (level, n) = (opts.level, devs.len());
    let sizes: Vec<u64> = devs.iter().map(|d| d.size()).collect();
    let chunk_size = match opts.chunk_size {
        Some(c) if !c.is_power_of_two() || c < opts.stripe_unit => {
            return Err(Error::Invalid(format!(
                "chunk size {c} must be a power of two ≥ the stripe unit"
            )))
        }
        Some(c) => c,
        None => pick_chunk_size(&sizes),
    };
    let slot_size = pick_slot_size(&sizes, chunk_size);
    let smallest = sizes.iter().copied().min().unwrap_or(0);
    let journal_size = if opts.journal && opts.journal_device.is_none() {
        (1u64 << (63 - (smallest / 16).max(1).leading_zeros())).clamp(256 << 10, 256 << 20)
    } else {
        0
    };
    let (slot_offset, journal_offset, data_offset) = format::member_layout(slot_size, journal_size);
    for d in devs {
        if format::usable_end(d.size()) < data_offset + 4 * opts.stripe_unit {
            return Err(Error::Invalid(format!(
                "{} is too small: {} bytes, a member needs more than {} bytes of metadata area",
                d.name(),
                d.size(),
                data_offset
            )));
        }
    }
    let array_uuid = *uuid::Uuid::new_v4().as_bytes();
    let created = now();
    // Checksums ride on the journal (their updates must be atomic with the data's).
    let checksums = opts.journal;
    // The data (and checksum) area ends where the tail superblock copies begin.
    let data_end = |d: &Dev| {
        let end = format::usable_end(d.size());
        if checksums {
            csum::data_end(end, data_offset)
        } else {
            end
        }
    };
    let members: Vec<MemberInfo> = devs
        .iter()
        .map(|d| MemberInfo {
            uuid: *uuid::Uuid::new_v4().as_bytes(),
            size: data_end(d),
            state: MemberState::Active,
            replaces: None,
            failed: false,
            leaving: false,
        })
        .collect();
    let spaces = member_spaces(&members, data_offset);
    let ids: Vec<u16> = (0..n as u16).collect();
    let empty = ChunkMap::new(chunk_size, 0);
    let cap = (u32::MAX as usize).min(((slot_size as usize) - 4096 - n * 64) / (32 + 16 * n));
    let count = Allocator::new(&spaces, &empty).count_fitting(&template, chunk_size, &ids, cap);
    if count == 0 {
        return Err(Error::NoSpace(format!(
            "the members are too small for even one {} chunk of {} bytes",
            level, chunk_size
        )));
    }
    let count = match opts.size {
        None => count,
        Some(s) if s > count as u64 * chunk_size => {
            return Err(Error::NoSpace(format!(
                "size {s} is more than these members can hold as {level}: at most {} bytes",
                count as u64 * chunk_size
            )))
        }
        Some(s) if s < chunk_size => {
            return Err(Error::Invalid(format!(
                "size {s} is less than one chunk ({chunk_size} bytes)"
            )))
        }
        Some(s) => (s / chunk_size) as usize,
    };
    let count = if opts.no_volume { 0 } else { count };
    let volumes = if opts.no_volume {
        Vec::new()
    } else {
        vec![Volume {
            id: 0,
            name: name_for_array(&opts.name),
            template,
            size: count as u64 * chunk_size,
            thin: false,
            extents: vec![(0, count as u32)],
            created,
        }]
    };
    let meta = ArrayMeta {
        name: opts.name.clone(),
        template,
        created,
        members,
        map: ChunkMap::new(chunk_size, count),
        journal_device: opts
            .journal_device
            .as_ref()
            .map(|_| *uuid::Uuid::new_v4().as_bytes()),
        health: Default::default(),
        balancing: false,
        grow_after: false,
        volumes,
        next_volume_id: 1,
        format_version: PAYLOAD_VERSION,
    };
    Ok(Plan {
        meta,
        array_uuid,
        created,
        checksums,
        slot_offset,
        slot_size,
        journal_offset,
        journal_size,
        data_offset,
    })
}

/// Superblocks, generation 1 in slot 1, a zeroed slot 0, journal headers and checksum area.
fn write_labels(devs: &[Dev], plan: &Plan) -> Result<()> {
    let &Plan {
        ref meta,
        array_uuid,
        created,
        checksums,
        slot_offset,
        slot_size,
        journal_offset,
        journal_size,
        data_offset,
    } = plan;
    let payload = meta.encode();
    let slot = format::encode_slot(array_uuid, 1, 1, &payload);
    let zero_hdr = vec![0u8; 4096];
    for (i, d) in devs.iter().enumerate() {
        let sb = Superblock {
            array_uuid,
            member_uuid: meta.members[i].uuid,
            member_index: i as u32,
            flags: if meta.journal_device.is_some() {
                format::SB_FLAG_EXTERNAL_JOURNAL
            } else {
                0
            } | if checksums {
                format::SB_FLAG_CHECKSUMS
            } else {
                0
            },
            member_size: d.size(),
            slot_offset,
            slot_size,
            data_offset,
            created,
            sb_generation: 1,
            journal_offset,
            journal_size,
            tail_offset: format::tail_offset_for(d.size()).unwrap_or(0),
        };
        let [s0, s1] = sb.slot_offsets();
        write(d.as_ref(), &zero_hdr, s0)?;
        // Journal headers from whatever was there before must not look like ours.
        if journal_size > 0 {
            write(d.as_ref(), &zero_hdr, journal_offset)?;
            write(d.as_ref(), &zero_hdr, journal_offset + journal_size / 2)?;
        }
        write(d.as_ref(), &slot, s1)?;
        if checksums {
            let end = meta.members[i].size;
            zero(d.as_ref(), end, csum::area_len(end - data_offset))?;
        }
        flush(d.as_ref())?;
        write_superblock(d.as_ref(), &sb)?;
    }
    Ok(())
}

/// The separate journal device's superblocks and empty journal halves.
fn write_journal_device(j: &Dev, juuid: [u8; 16], plan: &Plan) -> Result<()> {
    let (array_uuid, created, zero_hdr) = (plan.array_uuid, plan.created, vec![0u8; 4096]);
    // At most 1 GiB of journal, in two halves, after the first MiB.
    let room = (format::usable_end(j.size()) - format::SLOT_AREA_OFFSET).min(1 << 30);
    let journal_size = room / (2 * 4096) * (2 * 4096);
    let sb = Superblock {
        array_uuid,
        member_uuid: juuid,
        member_index: format::JOURNAL_DEVICE_INDEX,
        flags: format::SB_FLAG_JOURNAL_DEVICE,
        member_size: j.size(),
        slot_offset: 0,
        slot_size: 0,
        data_offset: format::SLOT_AREA_OFFSET + journal_size,
        created,
        sb_generation: 1,
        journal_offset: format::SLOT_AREA_OFFSET,
        journal_size,
        tail_offset: format::tail_offset_for(j.size()).unwrap_or(0),
    };
    write(j.as_ref(), &zero_hdr, sb.journal_offset)?;
    write(j.as_ref(), &zero_hdr, sb.journal_offset + journal_size / 2)?;
    flush(j.as_ref())?;
    write_superblock(j.as_ref(), &sb)
}
