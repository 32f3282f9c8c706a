//! Assembling an array from the devices given: superblocks read and checked to be one
//! array (the same layout, no member twice, no stranger), the newest metadata generation
//! any member holds taken as the truth, each device put in its member slot, and the journal
//! located. Writes nothing: replaying the journal is the commit layer's job.

use super::labels::{not_a_member, read_best_slot, read_copies};
use super::JournalArea;
use crate::error::{Error, Result};
use crate::member::{Dev, Guarded, MemberSlot, DEFAULT_FAIL, DEFAULT_SLOW};
use crate::ondisk::format::{self, Superblock};
use crate::ondisk::metadata::{ArrayMeta, MemberState};
use std::time::Duration;

#[derive(Clone, Copy, Debug, Default)]
pub struct AssembleOptions {
    pub read_only: bool,
    /// Dirty bytes buffered before a commit is forced (default: a tenth of memory, at most
    /// 1 GiB).
    pub dirty_budget: Option<u64>,
    /// A member read slower than this is answered from the others (default 2 s).
    pub slow_limit: Option<Duration>,
    /// A member that does not answer within this is failed (default 30 s).
    pub fail_limit: Option<Duration>,
}

impl AssembleOptions {
    /// The (slow, fail) limits of member requests.
    pub fn limits(&self) -> (Duration, Duration) {
        (
            self.slow_limit.unwrap_or(DEFAULT_SLOW),
            self.fail_limit.unwrap_or(DEFAULT_FAIL),
        )
    }
}

/// What assembling found: the parts an open array is built from.
pub(crate) struct Assembled {
    pub uuid: [u8; 16],
    pub sb: Superblock,
    pub meta: ArrayMeta,
    pub generation: u64,
    pub slots: Vec<MemberSlot>,
    /// Devices usable for I/O, by member index.
    pub usable: Vec<Option<Dev>>,
    pub journal: Option<JournalArea>,
    pub checksums: bool,
    pub notes: Vec<String>,
    /// Member indexes whose front superblock copies are damaged (found by the tail copies).
    pub front_labels_damaged: Vec<usize>,
    /// The member requests' (slow, fail) limits.
    pub limits: (Duration, Duration),
}

pub(crate) fn assemble(devs: Vec<Dev>, opts: &AssembleOptions) -> Result<Assembled> {
    let limits = opts.limits();
    let devs = devs.into_iter().map(|d| Guarded::wrap(d, limits)).collect();
    let mut notes = Vec::new();
    let (devs, sbs, journal_dev, damaged) = read_labels(devs, &mut notes)?;
    let uuid = sbs[0].array_uuid;
    check_one_array(&devs, &sbs)?;
    let (newest, meta, found) = newest_meta(&devs, &sbs, &mut notes)?;
    let (slots, usable) = place_members(&devs, &sbs, &found, &meta, newest, &mut notes)?;
    let journal = journal_area(&meta, journal_dev, &sbs[0], opts, &mut notes)?;
    Ok(Assembled {
        uuid,
        sb: sbs[0].clone(),
        checksums: sbs[0].flags & format::SB_FLAG_CHECKSUMS != 0,
        meta,
        generation: newest,
        slots,
        usable,
        journal,
        notes,
        front_labels_damaged: damaged
            .iter()
            .map(|&i| sbs[i].member_index as usize)
            .collect(),
        limits,
    })
}

/// Members, their superblocks, the journal device, and which members (positions in the
/// first two) were found only by their tail superblock copies.
type Labels = (
    Vec<Dev>,
    Vec<Superblock>,
    Option<(Dev, Superblock)>,
    Vec<usize>,
);

/// Every device's superblock; the journal device apart from the members. A device that
/// does not answer within the fail limit is left out (the array assembles without it).
fn read_labels(devs: Vec<Dev>, notes: &mut Vec<String>) -> Result<Labels> {
    if devs.is_empty() {
        return Err(Error::Members("no members given".into()));
    }
    let mut sbs = Vec::with_capacity(devs.len());
    let mut journal_dev: Option<(Dev, Superblock)> = None;
    let mut members_only = Vec::with_capacity(devs.len());
    let mut damaged = Vec::new();
    for d in devs {
        let found = match read_copies(d.as_ref()) {
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::TimedOut => {
                let why = format!(
                    "{} did not answer ({source}): assembled without it",
                    d.name()
                );
                tracing::warn!("{why}");
                notes.push(why);
                continue;
            }
            r => r?,
        };
        let Some(sb) = found.best.clone() else {
            return not_a_member(d.as_ref(), &found);
        };
        if found.from_tail {
            let why = format!(
                "{}: its front superblock copies are damaged (found by the copies near its \
                 end); `damocles repair --labels` rewrites them",
                d.name()
            );
            tracing::warn!("{why}");
            notes.push(why);
            if !sb.is_journal_device() {
                damaged.push(sbs.len());
            }
        }
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
    Ok((devs, sbs, journal_dev, damaged))
}

/// All of one array, each member once, all laid out alike.
fn check_one_array(devs: &[Dev], sbs: &[Superblock]) -> Result<()> {
    let uuid = sbs[0].array_uuid;
    for (d, sb) in devs.iter().zip(sbs).skip(1) {
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
    Ok(())
}

type Found = Vec<Option<(u64, ArrayMeta)>>;

/// The newest generation any member holds, its metadata, and what each member holds.
fn newest_meta(
    devs: &[Dev],
    sbs: &[Superblock],
    notes: &mut Vec<String>,
) -> Result<(u64, ArrayMeta, Found)> {
    let mut found = Vec::new();
    for (d, sb) in devs.iter().zip(sbs) {
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
    Ok((newest, meta, found))
}

/// Each device in its member slot, and which of them I/O may use.
fn place_members(
    devs: &[Dev],
    sbs: &[Superblock],
    found: &Found,
    meta: &ArrayMeta,
    newest: u64,
    notes: &mut Vec<String>,
) -> Result<(Vec<MemberSlot>, Vec<Option<Dev>>)> {
    let uuid = sbs[0].array_uuid;
    let mut slots: Vec<MemberSlot> = meta
        .members
        .iter()
        .map(|_| MemberSlot {
            dev: None,
            generation: None,
            failed: None,
        })
        .collect();
    for ((d, sb), f) in devs.iter().zip(sbs).zip(found) {
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
        let mut end = meta.members[idx].size;
        if sb.flags & format::SB_FLAG_CHECKSUMS != 0 {
            end += crate::ondisk::csum::area_len(end.saturating_sub(sb.data_offset));
        }
        if sb.tail_offset != 0 && end > sb.tail_offset {
            return Err(Error::format(
                d.name(),
                "the data area recorded runs into the superblock copies near the end",
            ));
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
    Ok((slots, avail))
}

/// Where the journal is: on the members, on the journal device given, or (read-only) nowhere.
fn journal_area(
    meta: &ArrayMeta,
    journal_dev: Option<(Dev, Superblock)>,
    sb: &Superblock,
    opts: &AssembleOptions,
    notes: &mut Vec<String>,
) -> Result<Option<JournalArea>> {
    let uuid = sb.array_uuid;
    Ok(match (meta.journal_device, journal_dev) {
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
            Some(JournalArea {
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
        (None, None) => (sb.journal_size > 0).then(|| JournalArea {
            offset: sb.journal_offset,
            half: sb.journal_size / 2,
            device: None,
        }),
    })
}
