//! `repair --labels`: rewriting a member's damaged superblock copies from a valid copy of
//! the same member (an installer, `mkfs` or a partition tool overwrote its first MiB, say).
//! Only copies that do not hold the newest valid superblock are written, one at a time,
//! front first, each flushed; nothing else on the member is touched.

use super::labels::{not_a_member, read_copies, write_copies, CopyState, SuperblockCopies};
use crate::error::{Error, Result};
use crate::member::{read, Dev, MemberDevice};
use crate::ondisk::format::Superblock;
use crate::ondisk::probe;
use serde::{Deserialize, Serialize};

/// One superblock copy of a member and what `repair --labels` does with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyReport {
    /// "A" and "B" at the front, "C" and "D" near the end.
    pub copy: String,
    pub offset: u64,
    /// "valid", "absent" (no superblock there), "older" (a valid copy of an older
    /// superblock generation) or "damaged: why".
    pub state: String,
    /// Rewritten (or, in a plan, would be).
    pub rewrite: bool,
}

/// What `repair --labels` found on one device, and what it wrote (or would write).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelRepair {
    pub device: String,
    pub array_uuid: String,
    pub member_uuid: String,
    /// `None` for the array's journal device.
    pub member_index: Option<u32>,
    /// The superblock has copies near the end (format version 2).
    pub tail_copies: bool,
    pub copies: Vec<CopyReport>,
    /// What the first MiB holds now when neither front copy is valid and it is something
    /// known (a filesystem, a partition table, ...): rewriting the front copies needs
    /// `force` then, as it overwrites that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub front_holds: Option<String>,
    /// The copies were written (false in a plan, or when none needed it).
    pub written: bool,
}

impl LabelRepair {
    /// Copies that are (or would be) rewritten.
    pub fn rewrites(&self) -> impl Iterator<Item = &CopyReport> {
        self.copies.iter().filter(|c| c.rewrite)
    }
}

fn report(
    dev: &dyn MemberDevice,
    sb: &Superblock,
    found: &SuperblockCopies,
) -> Result<LabelRepair> {
    let front_holds = if found.from_tail {
        let mut head = vec![0u8; probe::PROBE_LEN.min(dev.size() as usize)];
        read(dev, &mut head, 0)?;
        probe::signature(&head)
    } else {
        None
    };
    let bad = found.bad_offsets();
    let copies = found
        .copies
        .iter()
        .enumerate()
        .map(|(i, (off, st))| CopyReport {
            copy: ["A", "B", "C", "D"].get(i).unwrap_or(&"?").to_string(),
            offset: *off,
            state: match st {
                CopyState::Valid(s) if s == sb => "valid".into(),
                CopyState::Valid(_) => "older".into(),
                CopyState::Absent => "absent".into(),
                CopyState::Damaged(why) => format!("damaged: {why}"),
            },
            rewrite: bad.contains(off),
        })
        .collect();
    Ok(LabelRepair {
        device: dev.name().to_string(),
        array_uuid: uuid::Uuid::from_bytes(sb.array_uuid).to_string(),
        member_uuid: uuid::Uuid::from_bytes(sb.member_uuid).to_string(),
        member_index: (!sb.is_journal_device()).then_some(sb.member_index),
        tail_copies: sb.tail_offset != 0,
        copies,
        front_holds,
        written: false,
    })
}

/// Reads every superblock copy of each device and, unless `dry_run`, rewrites those that
/// do not hold the newest valid superblock of that device. Every device is read before
/// anything is written: one without any valid copy is refused, and so (without `force`)
/// is one whose first MiB now holds something known, such as a filesystem or a partition
/// table — nothing is written anywhere then.
pub fn repair_labels(devs: &[Dev], dry_run: bool, force: bool) -> Result<Vec<LabelRepair>> {
    let mut plans = Vec::with_capacity(devs.len());
    for d in devs {
        let found = read_copies(d.as_ref())?;
        let Some(sb) = found.best.clone() else {
            return not_a_member(d.as_ref(), &found);
        };
        let r = report(d.as_ref(), &sb, &found)?;
        if let (Some(what), false, false) = (&r.front_holds, dry_run, force) {
            return Err(Error::NotEmpty {
                member: d.name().to_string(),
                found: format!(
                    "{what} where its front superblock copies were (rewriting them \
                     overwrites that)"
                ),
            });
        }
        plans.push((d, sb, found, r));
    }
    let mut out = Vec::with_capacity(plans.len());
    for (d, sb, found, mut r) in plans {
        let offsets = found.bad_offsets();
        if !dry_run && !offsets.is_empty() {
            write_copies(d.as_ref(), &sb, &offsets)?;
            r.written = true;
        }
        out.push(r);
    }
    Ok(out)
}
