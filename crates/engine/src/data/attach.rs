//! Attaching a member to an open array: as a hot spare, as the replacement of a member, or
//! active for growth. Its labels and (with checksums) its zeroed checksum area are written
//! and flushed before the metadata that names it is committed.

use super::Data;
use crate::error::{Error, Result};
use crate::events::EventKind;
use crate::member::{flush, write, zero, Dev};
use crate::ondisk::format::{self, Superblock};
use crate::ondisk::metadata::{MemberInfo, MemberState};

impl Data {
    /// Adds a member as a hot spare (or, with `replaces`, as the replacement of that
    /// member). Refuses a device that holds data unless `force`.
    pub fn add_member(&self, dev: Dev, force: bool) -> Result<usize> {
        self.add(dev, force, None)
    }

    /// Starts replacing member `old` by `new`: `new` joins, and the rebuild copies `old`'s
    /// data to it while `old` stays in service (reading parity only where `old` fails).
    pub fn replace_member(&self, old: usize, new: Dev, force: bool) -> Result<usize> {
        {
            let st = self.store.lock();
            match st.meta.members.get(old).map(|m| m.state) {
                None => return Err(Error::Invalid(format!("no member {old}"))),
                Some(MemberState::Removed | MemberState::Spare) => {
                    return Err(Error::Invalid(format!(
                        "member {old} holds no data to replace"
                    )))
                }
                _ => {}
            }
            if st
                .meta
                .members
                .iter()
                .any(|m| m.replaces == Some(old as u16))
            {
                return Err(Error::Invalid(format!(
                    "member {old} is already being replaced"
                )));
            }
        }
        let i = self.add(new, force, Some(old as u16))?;
        self.request_rebuild();
        Ok(i)
    }

    /// Adds a member that holds data from the start (active), for growth: new chunks use it
    /// at once, and a `balance` spreads the old ones over it.
    pub fn add_member_grow(&self, dev: Dev, force: bool) -> Result<usize> {
        self.add_as(dev, force, None, true)
    }

    fn add(&self, dev: Dev, force: bool, replaces: Option<u16>) -> Result<usize> {
        self.add_as(dev, force, replaces, false)
    }

    fn add_as(&self, dev: Dev, force: bool, replaces: Option<u16>, grow: bool) -> Result<usize> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        let dev = self.set.guarded(dev);
        let sb0 = &self.sb_layout;
        if format::usable_end(dev.size()) < sb0.data_offset + (4 << 20) {
            return Err(Error::Invalid(format!(
                "{} is too small: {} bytes, a member needs more than {} bytes",
                dev.name(),
                dev.size(),
                sb0.data_offset + (4 << 20)
            )));
        }
        if self.set.index_of_device(dev.name()).is_some() {
            return Err(Error::Invalid(format!(
                "{} is already a member of this array",
                dev.name()
            )));
        }
        if let Some(found) = crate::meta::describe_device(dev.as_ref())? {
            if !force {
                return Err(Error::NotEmpty {
                    member: dev.name().to_string(),
                    found,
                });
            }
        }
        let mut st = self.store.lock();
        let index = st.meta.members.len();
        if index >= u16::MAX as usize {
            return Err(Error::Invalid("too many members".into()));
        }
        // The data (and checksum) area ends where the tail superblock copies begin.
        let end = format::usable_end(dev.size());
        let size = match &self.csums {
            Some(_) => crate::ondisk::csum::data_end(end, sb0.data_offset),
            None => end,
        };
        let info = MemberInfo {
            uuid: *uuid::Uuid::new_v4().as_bytes(),
            size,
            state: if grow {
                MemberState::Active
            } else {
                MemberState::Spare
            },
            replaces,
            failed: false,
            leaving: false,
        };
        let sb = Superblock {
            member_uuid: info.uuid,
            member_index: index as u32,
            member_size: dev.size(),
            sb_generation: 1,
            tail_offset: format::tail_offset_for(dev.size()).unwrap_or(0),
            ..sb0.clone()
        };
        let zeros = vec![0u8; 4096];
        for off in sb.slot_offsets() {
            write(dev.as_ref(), &zeros, off)?;
        }
        if sb.journal_size > 0 && sb.flags & format::SB_FLAG_EXTERNAL_JOURNAL == 0 {
            write(dev.as_ref(), &zeros, sb.journal_offset)?;
            write(
                dev.as_ref(),
                &zeros,
                sb.journal_offset + sb.journal_size / 2,
            )?;
        }
        if self.csums.is_some() {
            zero(
                dev.as_ref(),
                size,
                crate::ondisk::csum::area_len(size - sb0.data_offset),
            )?;
        }
        flush(dev.as_ref())?;
        crate::meta::write_superblock(dev.as_ref(), &sb)?;
        let mut meta = st.meta.clone();
        meta.members.push(info);
        if let Some(c) = &self.csums {
            c.ends.write().push(size);
        }
        // Present before the commit, so the new metadata reaches the new member too.
        self.set.push(dev.clone());
        if let Err(e) = self.commit_meta(&mut st, meta) {
            self.set.pop();
            if let Some(c) = &self.csums {
                c.ends.write().pop();
            }
            return Err(e);
        }
        let generation = st.generation;
        drop(st);
        self.set.set_generation(index, generation);
        let what = match replaces {
            Some(old) => format!(
                "{} added as member {index}, to replace member {old}",
                dev.name()
            ),
            None if grow => format!("{} added as member {index}", dev.name()),
            None => format!("{} added as hot spare (member {index})", dev.name()),
        };
        self.emit(EventKind::MemberAdded, Some(index), None, what);
        self.request_rebuild();
        Ok(index)
    }
}
