//! An assembled array: its members, metadata, and the metadata commit.

use crate::chunkmap::{Allocator, Chunk, ChunkMap, MemberSpace, Template};
use crate::error::{Error, Result};
use crate::format::{self, Superblock, SB_BLOCK, SB_OFFSETS, SLOT_HEADER_LEN};
use crate::member::MemberDevice;
use crate::metadata::{ArrayMeta, MemberInfo, MemberState, MAX_NAME};
use crate::probe;
use crate::profile::{Level, Profile};
use crate::stripe_lock::StripeLocks;
use damocles_parity::Parity;
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub type Dev = Arc<dyn MemberDevice>;

/// Members usable for I/O, by member index; `None` is missing, stale or faulty.
pub(crate) type MemberSet = Arc<Vec<Option<Dev>>>;

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
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct AssembleOptions {
    pub read_only: bool,
    /// Dirty bytes buffered before a commit is forced (default: a tenth of memory, at most
    /// 1 GiB).
    pub dirty_budget: Option<u64>,
}

/// A member as found at assemble time.
pub(crate) struct MemberSlot {
    pub dev: Option<Dev>,
    /// Newest metadata generation this member holds.
    pub generation: Option<u64>,
    /// Why it failed while this process had the array open.
    pub failed: Option<String>,
}

pub(crate) struct MetaState {
    pub meta: ArrayMeta,
    pub generation: u64,
}

pub struct Array {
    pub(crate) uuid: [u8; 16],
    pub(crate) read_only: bool,
    pub(crate) sb_layout: Superblock,
    pub(crate) slots: RwLock<Vec<MemberSlot>>,
    pub(crate) state: Mutex<MetaState>,
    pub(crate) chunks: RwLock<Vec<Option<Arc<Chunk>>>>,
    pub(crate) chunk_size: u64,
    pub(crate) avail: RwLock<MemberSet>,
    pub(crate) locks: StripeLocks,
    pub(crate) parity: Parity,
    pub(crate) missing_recorded: AtomicBool,
    pub(crate) notes: Vec<String>,
    pub(crate) journal: Option<crate::txg::JournalArea>,
    pub(crate) cache: crate::txg::Cache,
    pub(crate) events: RwLock<Option<crate::events::EventSink>>,
    pub(crate) counters: crate::lifecycle::Counters,
    pub(crate) jobs: Mutex<crate::rebuild::Jobs>,
    /// Direct (journal-less) writes hold it shared; a chunk being rebuilt, exclusively.
    pub(crate) chunk_gate: RwLock<()>,
    pub(crate) control_socket: RwLock<Option<String>>,
    /// A commit failed after its journal was durable: memory no longer matches the members.
    pub(crate) poisoned: AtomicBool,
    /// Per-block checksums (arrays created with the journal).
    pub(crate) csums: Option<crate::csum::Csums>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Ok,
    Degraded,
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberHealth {
    Ok,
    /// Not given (or vanished) and not known to have missed writes.
    Missing,
    /// Came back after missing writes: never read.
    Stale,
    /// Failed while the array was open (I/O error or `fail`).
    Failed,
    /// A hot spare waiting to take over a failed member.
    Spare,
    /// Being filled to replace another member (`replace`).
    Replacing,
    /// No longer part of the array.
    Removed,
}

#[derive(Clone, Debug, Serialize)]
pub struct MemberStatus {
    pub index: usize,
    pub device: Option<String>,
    pub uuid: String,
    pub size: u64,
    pub state: MemberHealth,
    pub generation: Option<u64>,
    /// Bytes of chunk slices on this member.
    pub used: u64,
    /// Why it failed, when it failed in this session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaces: Option<usize>,
}

/// Error counters since the array was opened.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ErrorCounts {
    pub read_errors: u64,
    pub write_errors: u64,
    pub checksum_errors: u64,
    pub repaired: u64,
    pub unrecoverable: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct JobStatus {
    pub running: bool,
    #[serde(flatten)]
    pub progress: crate::jobs::Progress,
}

#[derive(Clone, Debug, Serialize)]
pub struct ScrubStatus {
    /// Progress of a scrub running now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running: Option<crate::jobs::Progress>,
    /// Chunk a scrub interrupted by a restart resumes at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume_at_chunk: Option<u32>,
    pub blocks_checked: u64,
    pub repaired: u64,
    pub unrecoverable: u64,
    /// Seconds since the epoch when the last scrub finished (0: never).
    pub last_finished: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LostRange {
    pub offset: u64,
    pub len: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub name: String,
    pub uuid: String,
    pub level: Level,
    pub copies: usize,
    pub stripe_unit: u64,
    pub size: u64,
    pub chunk_size: u64,
    pub chunks_total: usize,
    pub chunks_allocated: usize,
    /// Member failures every chunk written survives: the layout's, or less while a
    /// conversion from a weaker layout is under way.
    pub tolerance: usize,
    pub generation: u64,
    pub health: Health,
    /// "members" (striped over the members with the array's redundancy), "device PATH",
    /// "device missing", or "none".
    pub journal: String,
    /// Whether every 4 KiB block's CRC-32C is kept and verified (needs the journal).
    pub checksums: bool,
    /// Bytes written but not yet committed.
    pub dirty: u64,
    pub members: Vec<MemberStatus>,
    /// Chunks with a slice on a member that is gone (what a rebuild has left to do).
    pub chunks_degraded: usize,
    /// A rebuild in progress (or the last one this process ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rebuild: Option<JobStatus>,
    /// Chunks still to move towards the goal of a conversion, balance or member removal
    /// (0 when none is under way, or when it is done).
    pub chunks_to_move: usize,
    /// The most the volume can be with the data laid out as it is (`damocles grow`).
    pub max_size: u64,
    /// The volume grows to what the members hold when the reshape under way ends.
    pub grow_after_reshape: bool,
    /// A reshape (convert, balance, remove) in progress (or the last one this process ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reshape: Option<JobStatus>,
    pub scrub: ScrubStatus,
    pub errors: ErrorCounts,
    /// Volume ranges whose data is lost; reads of them fail with EIO.
    pub lost: Vec<LostRange>,
    /// What the array needs to be whole again, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub needs: Option<String>,
    /// Where `serve` listens for commands (set by the server).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_socket: Option<String>,
    pub notes: Vec<String>,
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn io_err(
    op: &'static str,
    dev: &dyn MemberDevice,
    offset: u64,
    e: std::io::Error,
) -> Error {
    Error::Io {
        op,
        member: dev.name().to_string(),
        offset,
        source: e,
    }
}

pub(crate) fn read(dev: &dyn MemberDevice, buf: &mut [u8], off: u64) -> Result<()> {
    dev.read_at(buf, off)
        .map_err(|e| io_err("read", dev, off, e))
}

pub(crate) fn write(dev: &dyn MemberDevice, buf: &[u8], off: u64) -> Result<()> {
    dev.write_at(buf, off)
        .map_err(|e| io_err("write", dev, off, e))
}

pub(crate) fn flush(dev: &dyn MemberDevice) -> Result<()> {
    dev.flush().map_err(|e| io_err("flush", dev, 0, e))
}

/// Test switch: when non-zero, members are flushed one after another in an order drawn from
/// this xorshift state (advanced at every call), so a simulated power cut at the N-th I/O
/// replays exactly from its seed and still sees later members durable before earlier ones,
/// as parallel flushes allow. Zero (production) flushes all members at once.
pub static SERIAL_FLUSHES: AtomicU64 = AtomicU64::new(0);

/// Flushes the members numbered in `which` (repeats allowed) with [`flush_all`].
pub(crate) fn flush_some(members: &[Option<Dev>], mut which: Vec<u16>) -> Result<()> {
    which.sort_unstable();
    which.dedup();
    let holders: Vec<Option<Dev>> = which
        .iter()
        .map(|&m| members.get(m as usize).cloned().flatten())
        .collect();
    flush_all(&holders)
}

/// Flushes every present member at once: a commit then waits for the slowest disk, not for
/// the sum of them.
pub(crate) fn flush_all(members: &[Option<Dev>]) -> Result<()> {
    let mut devs: Vec<&Dev> = members.iter().flatten().collect();
    let state = SERIAL_FLUSHES.load(Ordering::Relaxed);
    if state != 0 {
        let mut x = state;
        for i in (1..devs.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            devs.swap(i, (x % (i as u64 + 1)) as usize);
        }
        SERIAL_FLUSHES.store(x.max(1), Ordering::Relaxed);
        return devs.iter().try_for_each(|d| flush(d.as_ref()));
    }
    match devs.as_slice() {
        [] => Ok(()),
        [one] => flush(one.as_ref()),
        [first, rest @ ..] => std::thread::scope(|s| {
            let others: Vec<_> = rest
                .iter()
                .map(|d| s.spawn(move || flush(d.as_ref())))
                .collect();
            let mine = flush(first.as_ref());
            others
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Error::Unavailable("flush thread panicked".into())))
                })
                .fold(mine, |acc, r| acc.and(r))
        }),
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
fn read_best_slot(
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
    for d in members.iter().flatten() {
        write(d.as_ref(), &bytes, off)?;
    }
    flush_all(members)
}

impl Array {
    /// Creates a new array on `devs`, then assembles it.
    pub fn create(devs: Vec<Dev>, opts: &CreateOptions) -> Result<Array> {
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
        for d in &devs {
            let mut head = vec![0u8; probe::PROBE_LEN.min(d.size() as usize)];
            read(d.as_ref(), &mut head, 0)?;
            if let Some(found) = probe::describe_content(&head) {
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
            let mut head = vec![0u8; probe::PROBE_LEN.min(j.size() as usize)];
            read(j.as_ref(), &mut head, 0)?;
            if let Some(found) = probe::describe_content(&head) {
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
        let (slot_offset, journal_offset, data_offset) =
            format::member_layout(slot_size, journal_size);
        for d in &devs {
            if d.size() < data_offset + 4 * opts.stripe_unit {
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
        let data_end = |d: &Dev| {
            if checksums {
                crate::csum::data_end(d.size(), data_offset)
            } else {
                d.size() / 4096 * 4096
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
        };
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
                d.write_zeroes(end, crate::csum::area_len(end - data_offset))
                    .map_err(|e| io_err("zero", d.as_ref(), end, e))?;
            }
            flush(d.as_ref())?;
            let block = sb.encode();
            for off in SB_OFFSETS {
                write(d.as_ref(), &block, off)?;
                flush(d.as_ref())?;
            }
        }
        let mut all = devs;
        if let (Some(j), Some(juuid)) = (&opts.journal_device, meta.journal_device) {
            // At most 1 GiB of journal, in two halves, after the first MiB.
            let room = (j.size() - format::SLOT_AREA_OFFSET).min(1 << 30);
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
            };
            write(j.as_ref(), &zero_hdr, sb.journal_offset)?;
            write(j.as_ref(), &zero_hdr, sb.journal_offset + journal_size / 2)?;
            flush(j.as_ref())?;
            for off in SB_OFFSETS {
                write(j.as_ref(), &sb.encode(), off)?;
                flush(j.as_ref())?;
            }
            all.push(j.clone());
        }
        Array::assemble(all, AssembleOptions::default())
    }

    /// Assembles an array from the members given; missing members make it degraded.
    pub fn assemble(devs: Vec<Dev>, opts: AssembleOptions) -> Result<Array> {
        if devs.is_empty() {
            return Err(Error::Members("no members given".into()));
        }
        let mut sbs = Vec::with_capacity(devs.len());
        let mut journal_dev: Option<(Dev, Superblock)> = None;
        let mut members_only = Vec::with_capacity(devs.len());
        for d in devs {
            let sb = read_superblock(d.as_ref())?;
            if sb.is_journal_device() {
                if let Some((other, _)) = &journal_dev {
                    return Err(Error::Members(format!(
                        "{} and {} are both journal devices; an array has one",
                        other.name(),
                        d.name()
                    )));
                }
                journal_dev = Some((d, sb));
            } else {
                sbs.push(sb);
                members_only.push(d);
            }
        }
        let devs = members_only;
        if devs.is_empty() {
            return Err(Error::Members(
                "no members given (only a journal device)".into(),
            ));
        }
        let uuid = sbs[0].array_uuid;
        for (d, sb) in devs.iter().zip(&sbs).skip(1) {
            if sb.array_uuid != uuid {
                return Err(Error::Members(format!(
                    "{} belongs to array {}, but {} belongs to array {}",
                    d.name(),
                    uuid::Uuid::from_bytes(sb.array_uuid),
                    devs[0].name(),
                    uuid::Uuid::from_bytes(uuid)
                )));
            }
        }
        for i in 0..devs.len() {
            for j in 0..i {
                if sbs[i].member_uuid == sbs[j].member_uuid {
                    return Err(Error::Members(format!(
                        "{} and {} are the same member (given twice?)",
                        devs[j].name(),
                        devs[i].name()
                    )));
                }
            }
            let (a, b) = (&sbs[i], &sbs[0]);
            if (
                a.slot_offset,
                a.slot_size,
                a.data_offset,
                a.journal_offset,
                a.journal_size,
            ) != (
                b.slot_offset,
                b.slot_size,
                b.data_offset,
                b.journal_offset,
                b.journal_size,
            ) {
                return Err(Error::format(
                    devs[i].name(),
                    "superblock layout differs from the other members",
                ));
            }
        }
        let mut notes = Vec::new();
        let mut found = Vec::new();
        for (d, sb) in devs.iter().zip(&sbs) {
            let (best, n) = read_best_slot(d.as_ref(), sb);
            notes.extend(n);
            found.push(best);
        }
        let Some(newest) = found.iter().flatten().map(|(g, _)| *g).max() else {
            return Err(Error::Members(
                "no member holds valid array metadata (all metadata slots are damaged)".into(),
            ));
        };
        let meta = found
            .iter()
            .flatten()
            .find(|(g, _)| *g == newest)
            .map(|(_, m)| m.clone())
            .expect("newest exists");
        let mut slots: Vec<MemberSlot> = meta
            .members
            .iter()
            .map(|_| MemberSlot {
                dev: None,
                generation: None,
                failed: None,
            })
            .collect();
        for ((d, sb), f) in devs.iter().zip(&sbs).zip(&found) {
            let idx = sb.member_index as usize;
            if meta
                .members
                .get(idx)
                .is_none_or(|m| m.uuid != sb.member_uuid)
            {
                return Err(Error::Members(format!(
                    "{} is not a member of array {} (was it removed or replaced?)",
                    d.name(),
                    uuid::Uuid::from_bytes(uuid)
                )));
            }
            slots[idx].dev = Some(d.clone());
            slots[idx].generation = f.as_ref().map(|(g, _)| *g);
            if d.size() / 4096 * 4096 < meta.members[idx].size {
                return Err(Error::Members(format!(
                    "{} is smaller ({} bytes) than the array recorded ({} bytes)",
                    d.name(),
                    d.size(),
                    meta.members[idx].size
                )));
            }
        }
        let avail: Vec<Option<Dev>> = slots
            .iter()
            .zip(&meta.members)
            .map(|(s, m)| match m.state {
                MemberState::Active | MemberState::Spare => s.dev.clone(),
                MemberState::Faulty | MemberState::Removed => None,
            })
            .collect();
        for (s, m) in slots.iter().zip(&meta.members) {
            match (&s.dev, m.state) {
                (Some(d), MemberState::Faulty) => notes.push(format!(
                    "{} is stale (generation {}, array is at {newest}): it missed writes and is not used",
                    d.name(),
                    s.generation.map_or("none".into(), |g| g.to_string())
                )),
                (Some(d), MemberState::Removed) => notes.push(format!(
                    "{} was removed from the array and is not used",
                    d.name()
                )),
                _ => {}
            }
        }
        let chunk_size = meta.map.chunk_size;
        let journal = match (meta.journal_device, journal_dev) {
            (None, Some((d, _))) => {
                return Err(Error::Members(format!(
                    "{} is a journal device, but array {} keeps its journal on its members",
                    d.name(),
                    uuid::Uuid::from_bytes(uuid)
                )))
            }
            (Some(want), Some((d, jsb))) => {
                if jsb.array_uuid != uuid || jsb.member_uuid != want {
                    return Err(Error::Members(format!(
                        "{} is not the journal device of array {}",
                        d.name(),
                        uuid::Uuid::from_bytes(uuid)
                    )));
                }
                Some(crate::txg::JournalArea {
                    offset: jsb.journal_offset,
                    half: jsb.journal_size / 2,
                    device: Some(d),
                })
            }
            (Some(want), None) => {
                if !opts.read_only {
                    return Err(Error::Members(format!(
                        "the array's journal device (uuid {}) was not given: it may hold the \
                         newest writes; add it to the member list, or open the array read-only",
                        uuid::Uuid::from_bytes(want)
                    )));
                }
                notes.push(format!(
                    "journal device {} missing: writes it holds that are not yet in place are not shown",
                    uuid::Uuid::from_bytes(want)
                ));
                None
            }
            (None, None) => (sbs[0].journal_size > 0).then(|| crate::txg::JournalArea {
                offset: sbs[0].journal_offset,
                half: sbs[0].journal_size / 2,
                device: None,
            }),
        };
        let csums = (sbs[0].flags & format::SB_FLAG_CHECKSUMS != 0).then(|| {
            crate::csum::Csums::new(
                sbs[0].data_offset,
                meta.members.iter().map(|m| m.size).collect(),
            )
        });
        let budget = opts
            .dirty_budget
            .unwrap_or_else(crate::txg::default_budget)
            .max(4096);
        let mut array = Array {
            uuid,
            read_only: opts.read_only,
            sb_layout: sbs[0].clone(),
            slots: RwLock::new(slots),
            chunks: RwLock::new(meta.map.chunks.clone()),
            chunk_size,
            state: Mutex::new(MetaState {
                meta,
                generation: newest,
            }),
            avail: RwLock::new(Arc::new(avail)),
            locks: StripeLocks::default(),
            parity: Parity::best(),
            missing_recorded: AtomicBool::new(false),
            notes,
            journal,
            cache: crate::txg::Cache::new(1, budget),
            events: RwLock::new(None),
            counters: Default::default(),
            jobs: Mutex::new(Default::default()),
            chunk_gate: RwLock::new(()),
            control_socket: RwLock::new(None),
            poisoned: AtomicBool::new(false),
            csums,
        };
        let (next_txg, replay) = array.replay_journal()?;
        *array.cache.next_txg.lock() = next_txg;
        if !replay.is_empty() {
            let bytes: usize = replay.iter().map(|w| w.data.len()).sum();
            let members = array.members();
            if array.read_only {
                // Do not write: show the replayed state through an overlay instead.
                let wrapped: Vec<Option<Dev>> = members
                    .iter()
                    .enumerate()
                    .map(|(m, d)| {
                        d.clone().map(|d| {
                            let mine: Vec<_> = replay
                                .iter()
                                .filter(|w| w.member as usize == m)
                                .cloned()
                                .collect();
                            Arc::new(crate::txg::Overlay::new(d, mine)) as Dev
                        })
                    })
                    .collect();
                *array.avail.write() = Arc::new(wrapped);
                array.notes.push(format!(
                    "the journal holds {bytes} bytes of writes not known to be in place; \
                     shown as replayed, applied when the array is next opened for writing"
                ));
            } else {
                // A member that misses the replay misses writes: it must not come back as
                // in sync.
                array.record_missing()?;
                crate::io::execute(&members, &replay)?;
                array.retire_journal()?;
                tracing::info!("replayed {bytes} bytes from the journal");
                array
                    .notes
                    .push(format!("replayed {bytes} bytes of writes from the journal"));
            }
        }
        Ok(array)
    }

    pub fn size(&self) -> u64 {
        self.chunk_size * self.chunks.read().len() as u64
    }

    pub fn uuid(&self) -> uuid::Uuid {
        uuid::Uuid::from_bytes(self.uuid)
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    pub(crate) fn members(&self) -> MemberSet {
        self.avail.read().clone()
    }

    /// Writes `meta` as the next generation to every usable member, then flushes them.
    /// Only after this returns is the new metadata in force.
    pub(crate) fn commit_meta(&self, st: &mut MetaState, meta: ArrayMeta) -> Result<()> {
        let generation = st.generation + 1;
        let payload = meta.encode();
        if (payload.len() + SLOT_HEADER_LEN) as u64 > self.sb_layout.slot_size {
            return Err(Error::NoSpace(format!(
                "array metadata ({} bytes) no longer fits its {}-byte slot",
                payload.len(),
                self.sb_layout.slot_size
            )));
        }
        write_generation(
            self.uuid,
            &self.sb_layout,
            &self.members(),
            generation,
            &payload,
        )?;
        st.meta = meta;
        st.generation = generation;
        Ok(())
    }

    /// Before the first write while members are missing, records them as faulty, so that
    /// when they come back they are known to be stale.
    pub(crate) fn record_missing(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        if self.missing_recorded.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut st = self.state.lock();
        if self.missing_recorded.load(Ordering::Acquire) {
            return Ok(());
        }
        let members = self.members();
        let mut meta = st.meta.clone();
        let mut changed = false;
        for (i, m) in meta.members.iter_mut().enumerate() {
            if m.state == MemberState::Active && members[i].is_none() {
                m.state = MemberState::Faulty;
                changed = true;
            }
        }
        if changed {
            if members.iter().all(Option::is_none) {
                return Err(Error::Unavailable("no member is available".into()));
            }
            tracing::warn!("recording missing members as faulty before the first degraded write");
            self.commit_meta(&mut st, meta)?;
        }
        self.missing_recorded.store(true, Ordering::Release);
        Ok(())
    }

    /// The chunk at `idx`, allocating (and zeroing) it first if it was never written.
    pub(crate) fn chunk_for_write(&self, idx: usize) -> Result<Arc<Chunk>> {
        if let Some(c) = &self.chunks.read()[idx] {
            return Ok(c.clone());
        }
        // Zeroing checksums writes checksum blocks outside the journal: no commit may be
        // writing them meanwhile (lock order: commit lock, then metadata state). A rebuild
        // holds the commit lock while it places slices the map does not show yet.
        let _commit =
            (self.csums.is_some() || self.journal.is_some()).then(|| self.cache.next_txg.lock());
        self.chunk_for_write_locked(idx)
    }

    /// [`Array::chunk_for_write`] for a caller that holds the commit lock (or has no
    /// checksums).
    pub(crate) fn chunk_for_write_locked(&self, idx: usize) -> Result<Arc<Chunk>> {
        if let Some(c) = &self.chunks.read()[idx] {
            return Ok(c.clone());
        }
        let mut st = self.state.lock();
        if let Some(c) = &self.chunks.read()[idx] {
            return Ok(c.clone());
        }
        let members = self.members();
        let spaces = member_spaces(&st.meta.members, self.sb_layout.data_offset);
        let mut alloc = Allocator::new(&spaces, &st.meta.map);
        let all = alloc_candidates(&st.meta);
        // Always the same greedy step over all members that `create` used to size the array,
        // so the advertised capacity stays reachable; while degraded, a new chunk is born
        // degraded (its slice on the missing member is written by a later rebuild).
        let chunk = alloc
            .allocate(&st.meta.template, self.chunk_size, &all)
            .ok_or_else(|| Error::NoSpace(format!("no room on the members for chunk {idx}")))?;
        for s in &chunk.slices {
            if let Some(d) = &members[s.member as usize] {
                d.write_zeroes(s.offset, chunk.slice_len)
                    .map_err(|e| io_err("zero", d.as_ref(), s.offset, e))?;
                // Space freed by a relocation still has its old checksums.
                if let Some(c) = &self.csums {
                    for w in c.zero_range(s.member, d, s.offset, chunk.slice_len) {
                        write(d.as_ref(), &w.data, w.offset)?;
                    }
                }
            }
        }
        let holders: Vec<Option<Dev>> = chunk
            .slices
            .iter()
            .map(|s| members[s.member as usize].clone())
            .collect();
        flush_all(&holders)?;
        let chunk = Arc::new(chunk);
        let mut meta = st.meta.clone();
        meta.map.chunks[idx] = Some(chunk.clone());
        self.commit_meta(&mut st, meta)?;
        self.chunks.write()[idx] = Some(chunk.clone());
        drop(st);
        if chunk
            .slices
            .iter()
            .any(|s| members[s.member as usize].is_none())
        {
            // Born degraded: a failed member's slice waits for the rebuild.
            self.kick_rebuild();
        }
        Ok(chunk)
    }

    /// Whether every chunk never written yet still fits in what `alloc` leaves free, placed
    /// as `chunk_for_write` would place it (on `candidates`, see [`alloc_candidates`]).
    pub(crate) fn room_for_unwritten(
        &self,
        alloc: &Allocator,
        t: &Template,
        candidates: &[u16],
    ) -> bool {
        let unwritten = self.chunks.read().iter().filter(|c| c.is_none()).count();
        unwritten == 0
            || alloc.count_fitting(t, self.chunk_size, candidates, unwritten) >= unwritten
    }

    /// Whether a chunk can still serve every block (within its tolerance of missing slices).
    pub(crate) fn chunk_intact(c: &Chunk, members: &[Option<Dev>]) -> bool {
        let gone = |pos: usize| members[c.slices[pos].member as usize].is_none();
        let p = &c.profile;
        match p.level {
            Level::Raid5 | Level::Raid6 => {
                (0..p.width).filter(|&i| gone(i)).count() <= p.tolerance()
            }
            _ => (0..p.data_count()).all(|i| p.data_positions(0, i).any(|pos| !gone(pos))),
        }
    }

    /// Failed: some data written is beyond the redundancy left (or, for an empty array, more
    /// members are gone than the level tolerates). Degraded: data lacks some of its
    /// redundancy, or a member the array counts on is missing.
    pub fn health(&self) -> Health {
        let members = self.members();
        let st = self.state.lock();
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
            unavailable > template_tolerance(&st.meta.template)
        } else {
            allocated.any(|(_, c)| !Self::chunk_intact(c, &members))
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

    pub fn status(&self) -> Status {
        let health = self.health();
        let chunks_degraded = self.chunks_degraded();
        let rebuild = {
            let j = self.jobs.lock();
            j.rebuild.as_ref().map(|c| JobStatus {
                running: j.rebuild_running,
                progress: c.progress(),
            })
        };
        let (scrub_running, reshape) = {
            let j = self.jobs.lock();
            (
                j.scrub.as_ref().map(|c| c.progress()),
                j.reshape.as_ref().map(|c| JobStatus {
                    running: j.reshape_running,
                    progress: c.progress(),
                }),
            )
        };
        let (chunks_to_move, max_size) = {
            let meta = self.state.lock().meta.clone();
            let limit = self
                .chunk_limit(&meta, &meta.map)
                .max(meta.map.chunks.len());
            (
                self.chunks_to_move_in(&meta),
                limit as u64 * self.chunk_size,
            )
        };
        let members_now = self.members();
        let st = self.state.lock();
        let m = &st.meta;
        let t = m.template;
        let slots = self.slots.read();
        let used = |i: usize| m.map.used_on(i);
        let members: Vec<MemberStatus> = m
            .members
            .iter()
            .zip(slots.iter())
            .enumerate()
            .map(|(index, (info, slot))| MemberStatus {
                index,
                device: slot.dev.as_ref().map(|d| d.name().to_string()),
                uuid: uuid::Uuid::from_bytes(info.uuid).to_string(),
                size: info.size,
                state: match (&slot.dev, info.state) {
                    (_, MemberState::Removed) => MemberHealth::Removed,
                    (_, MemberState::Faulty) if slot.failed.is_some() || info.failed => {
                        MemberHealth::Failed
                    }
                    (None, _) => MemberHealth::Missing,
                    (Some(_), MemberState::Faulty) => MemberHealth::Stale,
                    (Some(_), MemberState::Spare) if info.replaces.is_some() => {
                        MemberHealth::Replacing
                    }
                    (Some(_), MemberState::Spare) => MemberHealth::Spare,
                    (Some(_), MemberState::Active) if members_now[index].is_none() => {
                        MemberHealth::Failed
                    }
                    (Some(_), MemberState::Active) => MemberHealth::Ok,
                },
                generation: slot.generation,
                used: used(index),
                reason: slot.failed.clone(),
                replaces: info.replaces.map(|r| r as usize),
            })
            .collect();
        drop(slots);
        let tolerance = m
            .map
            .allocated()
            .map(|(_, c)| c.profile.tolerance())
            .fold(template_tolerance(&t), usize::min);
        let has_spare = members
            .iter()
            .any(|x| matches!(x.state, MemberHealth::Spare | MemberHealth::Replacing));
        let needs = if m
            .map
            .allocated()
            .any(|(_, c)| !Self::chunk_intact(c, &members_now))
        {
            Some(
                "some data has lost more members than its redundancy allows: bring back the missing members (or restore from backup)"
                    .to_string(),
            )
        } else if rebuild.as_ref().is_some_and(|r| r.running) {
            None
        } else {
            let with = |h: MemberHealth| -> Vec<usize> {
                members
                    .iter()
                    .filter(|x| x.state == h && m.members[x.index].state != MemberState::Spare)
                    .map(|x| x.index)
                    .collect()
            };
            let (missing, failed) = (with(MemberHealth::Missing), with(MemberHealth::Failed));
            if !missing.is_empty() {
                Some(format!(
                    "member{} {missing:?} missing: reconnect {}, or run `damocles rebuild` to rebuild without {} (onto a spare, or free space on the other members)",
                    if missing.len() > 1 { "s are" } else { " is" },
                    if missing.len() > 1 { "them" } else { "it" },
                    if missing.len() > 1 { "them" } else { "it" },
                ))
            } else if chunks_degraded > 0 && !has_spare {
                Some(format!(
                    "{chunks_degraded} chunks lack redundancy: add a spare (`damocles add`), or run `damocles rebuild` to rebuild into free space on the other members where it fits"
                ))
            } else if !failed.is_empty() && !has_spare {
                Some(format!(
                    "failed member{} {failed:?} still count{} for the part of the volume not written yet (the others have no room for it with redundancy): add a spare (`damocles add`)",
                    if failed.len() > 1 { "s" } else { "" },
                    if failed.len() > 1 { "" } else { "s" },
                ))
            } else {
                None
            }
        };
        let h = &m.health;
        let c = &self.counters;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Status {
            name: m.name.clone(),
            uuid: self.uuid().to_string(),
            level: t.level,
            copies: t.copies,
            stripe_unit: t.stripe_unit,
            size: self.size(),
            chunk_size: self.chunk_size,
            chunks_total: m.map.chunks.len(),
            chunks_allocated: m.map.allocated().count(),
            tolerance,
            generation: st.generation,
            health,
            journal: match (&self.journal, m.journal_device) {
                (Some(a), _) => match &a.device {
                    Some(d) => format!("device {}", d.name()),
                    None => "members".into(),
                },
                (None, Some(_)) => "device missing".into(),
                (None, None) => "none".into(),
            },
            checksums: self.checksums_enabled(),
            dirty: self.dirty_bytes(),
            members,
            chunks_degraded,
            rebuild,
            chunks_to_move,
            max_size,
            grow_after_reshape: m.grow_after,
            reshape,
            scrub: ScrubStatus {
                running: scrub_running,
                resume_at_chunk: h.scrub_cursor,
                blocks_checked: h.scrub_checked,
                repaired: h.scrub_repaired,
                unrecoverable: h.scrub_unrecoverable,
                last_finished: h.scrub_finished,
            },
            errors: ErrorCounts {
                read_errors: get(&c.read_errors),
                write_errors: get(&c.write_errors),
                checksum_errors: get(&c.checksum_errors),
                repaired: get(&c.repaired),
                unrecoverable: get(&c.unrecoverable),
            },
            lost: h
                .lost
                .iter()
                .map(|&(offset, len)| LostRange { offset, len })
                .collect(),
            needs,
            control_socket: self.control_socket.read().clone(),
            notes: self.notes.clone(),
        }
    }

    /// Where `serve` listens for commands; shown in `status`.
    pub fn set_control_socket(&self, path: Option<String>) {
        *self.control_socket.write() = path;
    }

    /// Whether per-block checksums are kept (they need the journal).
    pub fn checksums_enabled(&self) -> bool {
        self.csums.is_some()
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

impl std::fmt::Debug for Array {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Array")
            .field("uuid", &self.uuid())
            .field("size", &self.size())
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
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

impl Drop for Array {
    /// A clean close commits what is still buffered.
    fn drop(&mut self) {
        if self.journal.is_some() && !self.read_only {
            if let Err(e) = self.commit().and_then(|()| self.retire_journal()) {
                tracing::error!("committing buffered writes on close failed: {e}");
            }
        }
    }
}
