//! Metadata backup and restore: the newest metadata of an array exported to a backup file
//! (`ondisk::backup`), and put back as a new generation through the two-slot commit, with a
//! plan of what the import changes and refusals of what it must not do silently.

use super::labels::{read_best_slot_payload, read_superblock, write_generation, SlotRead};
use crate::error::{Error, Result};
use crate::member::Dev;
pub use crate::ondisk::backup::{Backup, BACKUP_HEADER_LEN, BACKUP_MAGIC};
use crate::ondisk::format::Superblock;
use crate::ondisk::metadata::{ArrayMeta, MemberState};
use crate::units::now;
use uuid::Uuid;

/// The members given, as import and export see them.
struct Found {
    uuid: [u8; 16],
    layout: Superblock,
    members: Vec<(Dev, Superblock)>,
    /// Journal devices given (they hold no metadata).
    journals: Vec<(Dev, Superblock)>,
    /// Newest valid metadata on any of them, as assembly chooses it.
    newest: Option<SlotRead>,
    notes: Vec<String>,
}

/// Reads the superblocks and metadata slots of `devs`, checking they are one array and
/// that no member is given twice. With `expect` (an import), every device must belong to
/// that array; without it (an export), to the same array as the others. A journal device
/// is checked the same way and then skipped: it holds no metadata.
fn scan(devs: &[Dev], expect: Option<[u8; 16]>) -> Result<Found> {
    let mut all: Vec<(Dev, Superblock)> = Vec::new();
    for d in devs {
        let sb = read_superblock(d.as_ref())?;
        if let Some((other, _)) = all
            .iter()
            .find(|(_, s)| (s.array_uuid, s.member_uuid) == (sb.array_uuid, sb.member_uuid))
        {
            return Err(Error::Members(format!(
                "{} and {} are the same member (uuid {}): each member may be given only once",
                other.name(),
                d.name(),
                Uuid::from_bytes(sb.member_uuid)
            )));
        }
        all.push((d.clone(), sb));
    }
    if let Some(want) = expect {
        let foreign: Vec<&(Dev, Superblock)> =
            all.iter().filter(|(_, s)| s.array_uuid != want).collect();
        if !foreign.is_empty() && foreign.len() == all.len() {
            let arrays: Vec<String> = foreign
                .iter()
                .map(|(_, s)| Uuid::from_bytes(s.array_uuid).to_string())
                .fold(Vec::new(), |mut v, u| {
                    if !v.contains(&u) {
                        v.push(u);
                    }
                    v
                });
            return Err(Error::Members(format!(
                "the backup is of array {}, but these members belong to array {}",
                Uuid::from_bytes(want),
                arrays.join(" and ")
            )));
        }
        if !foreign.is_empty() {
            let list: Vec<String> = foreign
                .iter()
                .map(|(d, s)| format!("{} (array {})", d.name(), Uuid::from_bytes(s.array_uuid)))
                .collect();
            return Err(Error::Members(format!(
                "{} {} not of array {}, the backup's: leave {} off the list",
                list.join(", "),
                if list.len() == 1 { "is" } else { "are" },
                Uuid::from_bytes(want),
                if list.len() == 1 { "it" } else { "them" }
            )));
        }
    } else if let Some((first, fsb)) = all.first() {
        if let Some((d, sb)) = all.iter().find(|(_, s)| s.array_uuid != fsb.array_uuid) {
            return Err(Error::Members(format!(
                "{} belongs to array {}, but {} belongs to array {}",
                d.name(),
                Uuid::from_bytes(sb.array_uuid),
                first.name(),
                Uuid::from_bytes(fsb.array_uuid)
            )));
        }
    }
    let (journals, members): (Vec<_>, Vec<_>) =
        all.into_iter().partition(|(_, s)| s.is_journal_device());
    let Some((_, layout)) = members.first().cloned() else {
        return Err(Error::Members(
            "no members given (only a journal device)".into(),
        ));
    };
    let shape = |s: &Superblock| (s.slot_offset, s.slot_size, s.data_offset);
    if let Some((d, _)) = members.iter().find(|(_, s)| shape(s) != shape(&layout)) {
        return Err(Error::format(
            d.name(),
            "superblock layout differs from the other members",
        ));
    }
    let mut newest: Option<SlotRead> = None;
    let mut notes = Vec::new();
    for (d, sb) in &members {
        let (best, n) = read_best_slot_payload(d.as_ref(), sb);
        notes.extend(n);
        if let Some(b) = best {
            if newest.as_ref().is_none_or(|(g, _, _)| b.0 > *g) {
                newest = Some(b);
            }
        }
    }
    Ok(Found {
        uuid: layout.array_uuid,
        layout,
        members,
        journals,
        newest,
        notes,
    })
}

/// The newest valid metadata on `devs` (the generation assembly would use), as a backup.
pub fn export(devs: &[Dev]) -> Result<Backup> {
    let f = scan(devs, None)?;
    let Some((generation, meta, payload)) = f.newest else {
        return Err(Error::Members(
            "no member holds valid array metadata (all metadata slots are damaged): nothing to export"
                .into(),
        ));
    };
    Ok(Backup {
        array_uuid: f.uuid,
        generation,
        data_offset: f.layout.data_offset,
        slot_size: f.layout.slot_size,
        exported: now(),
        payload,
        meta,
    })
}

/// One member's state now and in the backup (`None`: not in that member table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberChange {
    pub index: usize,
    pub uuid: Uuid,
    /// The device given for it, if any.
    pub device: Option<String>,
    pub now: Option<MemberState>,
    pub file: Option<MemberState>,
}

/// What importing a backup would change, and how to write it.
pub struct ImportPlan {
    pub array_uuid: Uuid,
    /// Newest valid generation on the members (`None`: no member has valid metadata).
    pub current_generation: Option<u64>,
    pub file_generation: u64,
    /// The generation the import writes.
    pub new_generation: u64,
    pub exported: u64,
    pub members: Vec<MemberChange>,
    /// Members the backup has in service (active or spare) that were not given: the import
    /// would not reach them, so it is refused without `force`.
    pub missing: Vec<usize>,
    /// Members the import writes: those given that the backup has in service.
    pub written: Vec<usize>,
    /// Out of service now (faulty or removed), in service in the backup: they may have
    /// missed writes that the backup would have them serve.
    pub revived: Vec<usize>,
    pub chunks_now: Option<usize>,
    pub chunks_file: usize,
    /// Chunks allocated now that the backup does not have: their data would be forgotten.
    pub forgotten: Vec<usize>,
    /// Chunks in both whose slices (or profile) differ: the backup points at old places.
    pub moved: Vec<usize>,
    /// Chunks the backup has that are not allocated now.
    pub restored: Vec<usize>,
    /// Other differences and what was noticed while reading the members.
    pub notes: Vec<String>,
    layout: Superblock,
    targets: Vec<Option<Dev>>,
    payload: Vec<u8>,
}

impl ImportPlan {
    /// Whether the import would put back older state than the members hold now.
    pub fn rolls_back(&self) -> bool {
        !self.forgotten.is_empty() || !self.moved.is_empty() || !self.revived.is_empty()
    }

    /// Why [`ImportPlan::apply`] refuses without `force`, in one line (`None`: it does not).
    /// That is when a member the backup has in service was not given, or when the import
    /// rolls the array back.
    pub fn refusal(&self) -> Option<String> {
        let rolls_back = self.rolls_back();
        if self.missing.is_empty() && !rolls_back {
            return None;
        }
        let mut msg = String::new();
        if !self.missing.is_empty() {
            let list: Vec<String> = self
                .missing
                .iter()
                .map(|&i| {
                    let c = &self.members[i];
                    format!(
                        "{i} (uuid {}, {} in the backup)",
                        c.uuid,
                        c.file.map_or("-", MemberState::name)
                    )
                })
                .collect();
            msg.push_str(&format!(
                "member{} {} {} in the backup but not in the member list",
                if list.len() == 1 { "" } else { "s" },
                list.join(", "),
                if list.len() == 1 { "is" } else { "are" }
            ));
        }
        if rolls_back {
            let mut why = Vec::new();
            if !self.forgotten.is_empty() {
                why.push(format!(
                    "{} allocated since the export would be forgotten",
                    chunks(self.forgotten.len())
                ));
            }
            if !self.moved.is_empty() {
                why.push(format!(
                    "{} would point at the places they had at the export",
                    chunks(self.moved.len())
                ));
            }
            if !self.revived.is_empty() {
                why.push(format!(
                    "members {:?}, out of service now, would be trusted again",
                    self.revived
                ));
            }
            if !msg.is_empty() {
                msg.push_str(", and ");
            }
            msg.push_str(&format!(
                "importing this backup rolls the array back ({}): this can lose writes made \
                 since the export",
                why.join("; ")
            ));
        }
        if self.missing.is_empty() {
            msg.push_str("; use --force to import it anyway");
        } else {
            let written: Vec<String> = self.written.iter().map(usize::to_string).collect();
            msg.push_str(&format!(
                "; {}use --force to import it anyway: it then writes member{} {} only, and a \
                 member left out keeps its current metadata (the backup's state for it applies \
                 when it is listed again)",
                if rolls_back {
                    ""
                } else {
                    "give every member, or "
                },
                if written.len() == 1 { "" } else { "s" },
                written.join(", ")
            ));
        }
        Some(msg)
    }

    /// Writes the backup as generation `new_generation`: into one slot per member written,
    /// then a flush, so a crash leaves the old generation or the imported one. Without
    /// `force`, refuses what [`ImportPlan::refusal`] names, writing nothing.
    pub fn apply(&self, force: bool) -> Result<()> {
        if !force {
            if let Some(why) = self.refusal() {
                return Err(if self.missing.is_empty() {
                    Error::Invalid(why)
                } else {
                    Error::Members(why)
                });
            }
        }
        write_generation(
            self.array_uuid.into_bytes(),
            &self.layout,
            &self.targets,
            self.new_generation,
            &self.payload,
        )
    }
}

fn chunks(n: usize) -> String {
    format!("{n} chunk{}", if n == 1 { "" } else { "s" })
}

/// Checks `backup` against the members `devs` and works out what importing it changes.
/// Reads only.
pub fn plan_import(devs: &[Dev], backup: &Backup) -> Result<ImportPlan> {
    let f = scan(devs, Some(backup.array_uuid))?;
    if (backup.data_offset, backup.slot_size) != (f.layout.data_offset, f.layout.slot_size) {
        return Err(Error::Members(format!(
            "the backup was made with data offset {} and slot size {}, but these members have {} and {}",
            backup.data_offset, backup.slot_size, f.layout.data_offset, f.layout.slot_size
        )));
    }
    let file = &backup.meta;
    let devices = match_members(&f.members, file)?;
    check_journals(&f.journals, file)?;
    let cur = f.newest.as_ref().map(|(_, m, _)| m);
    let mut notes = f.notes;
    if cur.is_none() {
        notes.push("no member holds valid metadata now: nothing to compare the backup with".into());
    }
    let members = member_changes(cur, file, &devices);
    let revived = members
        .iter()
        .filter(|c| {
            in_service(c.file)
                && matches!(
                    c.now,
                    Some(MemberState::Faulty) | Some(MemberState::Removed)
                )
        })
        .map(|c| c.index)
        .collect();
    let missing = file
        .members
        .iter()
        .enumerate()
        .filter(|(i, m)| in_service(Some(m.state)) && devices[*i].is_none())
        .map(|(i, _)| i)
        .collect();
    let diff = match cur {
        Some(now) => compare(now, file, &mut notes),
        None => ChunkDiff::default(),
    };
    // Written where a commit with this metadata would write: members it has in service.
    let targets: Vec<Option<Dev>> = devices
        .iter()
        .zip(&file.members)
        .map(|(d, m)| d.clone().filter(|_| in_service(Some(m.state))))
        .collect();
    let written: Vec<usize> = (0..targets.len())
        .filter(|&i| targets[i].is_some())
        .collect();
    if written.is_empty() {
        return Err(Error::Members(
            "none of the members given is in service in the backup (all faulty or removed \
             there): there is nowhere to write it"
                .into(),
        ));
    }
    let current_generation = f.newest.as_ref().map(|(g, _, _)| *g);
    // Above anything on the members, so assembly takes the imported generation.
    let new_generation = current_generation.unwrap_or(0).max(backup.generation) + 1;
    Ok(ImportPlan {
        array_uuid: Uuid::from_bytes(f.uuid),
        current_generation,
        file_generation: backup.generation,
        new_generation,
        exported: backup.exported,
        members,
        missing,
        written,
        revived,
        chunks_now: cur.map(|m| m.map.allocated().count()),
        chunks_file: file.map.allocated().count(),
        forgotten: diff.forgotten,
        moved: diff.moved,
        restored: diff.restored,
        notes,
        layout: f.layout,
        targets,
        payload: backup.payload.clone(),
    })
}

/// Whether a member in this state is in service (active or spare).
fn in_service(s: Option<MemberState>) -> bool {
    matches!(s, Some(MemberState::Active) | Some(MemberState::Spare))
}

/// Places each member given at its index in the backup's member table, refusing one the
/// backup does not have (or has with another UUID, or larger than the device).
fn match_members(given: &[(Dev, Superblock)], file: &ArrayMeta) -> Result<Vec<Option<Dev>>> {
    let mut devices: Vec<Option<Dev>> = vec![None; file.members.len()];
    for (d, sb) in given {
        let idx = sb.member_index as usize;
        let Some(m) = file.members.get(idx) else {
            return Err(Error::Members(format!(
                "{} (member {idx}, uuid {}) is not in the backup: it joined the array after the \
                 export; leave it off the list to import anyway (it is then no longer a member)",
                d.name(),
                Uuid::from_bytes(sb.member_uuid)
            )));
        };
        if m.uuid != sb.member_uuid {
            return Err(Error::Members(format!(
                "{} is member {idx} with uuid {}, but the backup's member {idx} has uuid {}: \
                 it is not that member; leave it off the list",
                d.name(),
                Uuid::from_bytes(sb.member_uuid),
                Uuid::from_bytes(m.uuid)
            )));
        }
        if d.size() / 4096 * 4096 < m.size {
            return Err(Error::Members(format!(
                "{} is smaller ({} bytes) than the backup records ({} bytes)",
                d.name(),
                d.size(),
                m.size
            )));
        }
        devices[idx] = Some(d.clone());
    }
    Ok(devices)
}

/// Refuses a journal device given that is not the one the backup records.
fn check_journals(journals: &[(Dev, Superblock)], file: &ArrayMeta) -> Result<()> {
    for (d, sb) in journals {
        match file.journal_device {
            Some(want) if want == sb.member_uuid => {}
            Some(want) => {
                return Err(Error::Members(format!(
                    "{} is journal device {}, but the backup records journal device {}: \
                     leave it off the list",
                    d.name(),
                    Uuid::from_bytes(sb.member_uuid),
                    Uuid::from_bytes(want)
                )))
            }
            None => {
                return Err(Error::Members(format!(
                    "{} is a journal device, but the backup records none (the journal is on \
                     the members): leave it off the list",
                    d.name()
                )))
            }
        }
    }
    Ok(())
}

/// Every member's state now (`cur`) and in the backup, with the device given for it.
fn member_changes(
    cur: Option<&ArrayMeta>,
    file: &ArrayMeta,
    devices: &[Option<Dev>],
) -> Vec<MemberChange> {
    let n = file.members.len().max(cur.map_or(0, |m| m.members.len()));
    (0..n)
        .map(|i| {
            let (a, b) = (cur.and_then(|m| m.members.get(i)), file.members.get(i));
            MemberChange {
                index: i,
                uuid: Uuid::from_bytes(b.or(a).map_or([0; 16], |m| m.uuid)),
                device: devices
                    .get(i)
                    .and_then(|d| d.as_ref().map(|d| d.name().to_string())),
                now: a.map(|m| m.state),
                file: b.map(|m| m.state),
            }
        })
        .collect()
}

/// How the backup's chunk map differs from the one on the members.
#[derive(Default)]
struct ChunkDiff {
    forgotten: Vec<usize>,
    moved: Vec<usize>,
    restored: Vec<usize>,
}

/// Compares the metadata on the members (`now`) with the backup's: chunk by chunk, and
/// (as `notes`) the volume size, name, template and journal device.
fn compare(now: &ArrayMeta, file: &ArrayMeta, notes: &mut Vec<String>) -> ChunkDiff {
    let mut d = ChunkDiff::default();
    let chunks = now.map.chunks.len().max(file.map.chunks.len());
    for i in 0..chunks {
        let a = now.map.chunks.get(i).and_then(Option::as_ref);
        let b = file.map.chunks.get(i).and_then(Option::as_ref);
        match (a, b) {
            (Some(_), None) => d.forgotten.push(i),
            (None, Some(_)) => d.restored.push(i),
            (Some(x), Some(y)) if x != y => d.moved.push(i),
            _ => {}
        }
    }
    if now.map.chunks.len() != file.map.chunks.len() {
        notes.push(format!(
            "volume size changes from {} to {} bytes",
            now.map.virtual_size(),
            file.map.virtual_size()
        ));
    }
    if now.name != file.name {
        notes.push(format!(
            "name changes from {:?} to {:?}",
            now.name, file.name
        ));
    }
    if now.template != file.template {
        notes.push(format!(
            "level of new chunks changes from {} to {}",
            now.template.level, file.template.level
        ));
    }
    if now.journal_device != file.journal_device {
        notes.push("the journal device recorded differs".into());
    }
    d
}

/// [`plan_import`] then [`ImportPlan::apply`].
pub fn import(devs: &[Dev], backup: &Backup, force: bool) -> Result<ImportPlan> {
    let plan = plan_import(devs, backup)?;
    plan.apply(force)?;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::profile::Level;
    use crate::ondisk::backup::{file_crc, CRC_AT};
    use crate::{Array, CreateOptions, MemMember};
    use std::sync::Arc;

    fn sample() -> Backup {
        let devs: Vec<Dev> = (0..3)
            .map(|i| Arc::new(MemMember::new(format!("m{i}"), 8 << 20)) as Dev)
            .collect();
        let mut o = CreateOptions::new(Level::Raid5);
        o.chunk_size = Some(256 << 10);
        o.name = "tank".into();
        let a = Array::create(devs.clone(), &o).unwrap();
        a.write_at(&[7; 5000], 1 << 20).unwrap();
        drop(a);
        export(&devs).unwrap()
    }

    #[test]
    fn round_trips() {
        let b = sample();
        assert_eq!(b.meta.map.allocated().count(), 1);
        assert_eq!(Backup::decode("f", &b.encode()).unwrap(), b);
        assert_eq!(b.summary().name, "tank");
    }

    #[test]
    fn every_damage_is_an_error_never_a_panic() {
        let good = sample().encode();
        for n in 0..good.len() {
            let e = Backup::decode("f", &good[..n]).unwrap_err().to_string();
            assert!(e.contains("truncated"), "{n}: {e}");
        }
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0x10;
            assert!(
                Backup::decode("f", &b).is_err(),
                "flip at byte {i} accepted"
            );
        }
        let mut long = good.clone();
        long.push(0);
        let e = Backup::decode("f", &long).unwrap_err().to_string();
        assert!(e.contains("unexpected bytes"), "{e}");
        let e = Backup::decode("f", b"hello world").unwrap_err().to_string();
        assert!(e.contains("not a damocles metadata backup"), "{e}");
        let mut rng = crate::testing::powercut::Rng::new(3);
        for _ in 0..500 {
            let mut b = good.clone();
            for _ in 0..3 {
                let i = rng.below(b.len() as u64) as usize;
                b[i] = rng.next_u64() as u8;
            }
            let _ = Backup::decode("f", &b);
        }
    }

    #[test]
    fn versions_are_named() {
        let mut b = sample().encode();
        b[8] = 2;
        let e = Backup::decode("f", &b).unwrap_err().to_string();
        assert!(
            e.contains("backup format version 2 is not supported"),
            "{e}"
        );
        let mut b = sample().encode();
        b[48] = 9;
        let crc = file_crc(&b);
        b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        let e = Backup::decode("f", &b).unwrap_err().to_string();
        assert!(e.contains("on-disk format version 9"), "{e}");
    }
}
