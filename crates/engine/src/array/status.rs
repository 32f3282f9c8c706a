//! What `status` shows: the array's state as plain data (serialisable both ways, so a
//! client reads back exactly what the server sent).

use super::Array;
use crate::error::JobKind;
use crate::jobs::Progress;
use crate::layout::profile::Level;
use crate::member::{MemberIo, MemberSlot, Usable};
pub use crate::meta::Health;
use crate::meta::{chunk_intact, template_tolerance, unreadable_ranges};
use crate::ondisk::metadata::{ArrayMeta, MemberState};
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Clone, Debug, Serialize, Deserialize)]
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
    /// Its requests: in flight, latency, slow reads, timeouts, errors by kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io: Option<MemberIo>,
    /// Its front superblock copies were damaged when the array was assembled (it was found
    /// by the copies near its end): `damocles repair --labels` rewrites them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub front_labels_damaged: bool,
}

/// Error counters since the array was opened.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ErrorCounts {
    pub read_errors: u64,
    pub write_errors: u64,
    pub checksum_errors: u64,
    pub repaired: u64,
    pub unrecoverable: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobStatus {
    pub running: bool,
    #[serde(flatten)]
    pub progress: Progress,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScrubStatus {
    /// Progress of a scrub running now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running: Option<Progress>,
    /// Chunk a scrub interrupted by a restart resumes at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume_at_chunk: Option<u32>,
    pub blocks_checked: u64,
    pub repaired: u64,
    pub unrecoverable: u64,
    /// Seconds since the epoch when the last scrub finished (0: never).
    pub last_finished: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostRange {
    pub offset: u64,
    pub len: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
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
    /// Member requests: a read slower than this is answered from the others.
    #[serde(default)]
    pub slow_limit_ms: u64,
    /// Member requests: a member that does not answer within this is failed.
    #[serde(default)]
    pub fail_limit_ms: u64,
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
    /// Array byte ranges (as in `lost`) that cannot be read now: chunks whose members are
    /// gone beyond their redundancy (a `single` chunk whose one member is failed or
    /// missing). Reads of them fail with EIO; they come back with the member, or a rebuild
    /// records them lost. Each volume's `lost` gives them in its own offsets.
    #[serde(default)]
    pub unreadable: Vec<LostRange>,
    /// What the array needs to be whole again, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub needs: Option<String>,
    /// Where `serve` listens for commands (set by the server).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_socket: Option<String>,
    pub notes: Vec<String>,
    /// On-disk format version of the metadata (2: volumes).
    #[serde(default)]
    pub format_version: u32,
    /// Raw space: what the members hold, allocated, reserved for volumes, free.
    #[serde(default)]
    pub space: crate::meta::SpaceUsage,
    /// The array's volumes.
    #[serde(default)]
    pub volumes: Vec<super::VolumeStatus>,
}

impl Array {
    /// The array's state now: taken from memory, never from the members.
    pub fn status(&self) -> Status {
        let health = self.health();
        let chunks_degraded = self.chunks_degraded();
        let rebuild = {
            let j = self.jobs.lock();
            let s = j.slot(JobKind::Rebuild);
            s.ctl.as_ref().map(|c| JobStatus {
                running: s.running,
                progress: c.progress(),
            })
        };
        let (scrub_running, reshape) = {
            let j = self.jobs.lock();
            (
                j.running(JobKind::Scrub).map(|c| c.progress()),
                j.slot(JobKind::Reshape).ctl.as_ref().map(|c| JobStatus {
                    running: j.slot(JobKind::Reshape).running,
                    progress: c.progress(),
                }),
            )
        };
        // The committed metadata, not the state lock: a commit may be waiting for a member.
        let st = self.store.committed();
        let (chunks_to_move, max_size) = {
            let meta = &st.meta;
            let limit = self.chunk_limit(meta, &meta.map).max(meta.map.chunks.len());
            (self.chunks_to_move_in(meta), limit as u64 * self.chunk_size)
        };
        let members_now = self.members();
        let m = &st.meta;
        let t = m.template;
        let slots = self.set.slots();
        let mut members = member_statuses(m, &slots, &members_now);
        drop(slots);
        for &i in self.front_labels_damaged.lock().iter() {
            if let Some(ms) = members.get_mut(i) {
                ms.front_labels_damaged = true;
            }
        }
        let tolerance = m.map.allocated().map(|(_, c)| c.profile.tolerance()).fold(
            m.templates()
                .iter()
                .map(template_tolerance)
                .min()
                .unwrap_or(0),
            usize::min,
        );
        let needs = needs(m, &members, &members_now, chunks_degraded, &rebuild);
        let h = &m.health;
        let c = &self.tel.counters;
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
            slow_limit_ms: self.limits().0.as_millis() as u64,
            fail_limit_ms: self.limits().1.as_millis() as u64,
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
            unreadable: unreadable_ranges(m, &members_now)
                .into_iter()
                .map(|(offset, len)| LostRange { offset, len })
                .collect(),
            needs,
            control_socket: None,
            notes: self.tel.notes(),
            format_version: m.format_version,
            space: self.space_of(m),
            volumes: self.volume_statuses(),
        }
    }
}

fn member_statuses(m: &ArrayMeta, slots: &[MemberSlot], members_now: &Usable) -> Vec<MemberStatus> {
    let used = |i: usize| m.map.used_on(i);
    m.members
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
                (Some(_), MemberState::Spare) if info.replaces.is_some() => MemberHealth::Replacing,
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
            io: slot.dev.as_ref().and_then(|d| d.guard()).map(|g| g.io()),
            front_labels_damaged: false,
        })
        .collect()
}

/// What the array needs to be whole again, if anything.
fn needs(
    m: &ArrayMeta,
    members: &[MemberStatus],
    members_now: &Usable,
    chunks_degraded: usize,
    rebuild: &Option<JobStatus>,
) -> Option<String> {
    let has_spare = members
        .iter()
        .any(|x| matches!(x.state, MemberHealth::Spare | MemberHealth::Replacing));
    let mut broken = m
        .map
        .allocated()
        .filter(|(_, c)| !chunk_intact(c, members_now))
        .peekable();
    if broken.peek().is_some() && broken.all(|(_, c)| c.profile.level == Level::Single) {
        Some(
            "single chunks on members that are gone cannot be read (`unreadable`): bring the members back, or run `damocles rebuild` to give those chunks up (they are then listed as lost and can be written again)"
                .to_string(),
        )
    } else if m
        .map
        .allocated()
        .any(|(_, c)| !chunk_intact(c, members_now))
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
    }
}
