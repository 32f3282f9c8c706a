//! Member lifecycle while the array is open: fail, add (as a hot spare), remove, replace;
//! I/O errors that fail a member; events and error counters.

use crate::array::{flush, read, write, Array, Dev, MemberSlot};
use crate::error::{Error, Result};
use crate::events::{Event, EventKind, EventSink};
use crate::format::{self, Superblock, SB_OFFSETS};
use crate::metadata::{MemberInfo, MemberState};
use crate::probe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Error counters since the array was opened.
#[derive(Default)]
pub(crate) struct Counters {
    pub read_errors: AtomicU64,
    pub write_errors: AtomicU64,
    pub checksum_errors: AtomicU64,
    pub repaired: AtomicU64,
    pub unrecoverable: AtomicU64,
}

impl Array {
    /// Where events go besides the log (`serve --on-event`).
    pub fn set_event_sink(&self, sink: EventSink) {
        *self.events.write() = Some(sink);
    }

    pub(crate) fn emit(
        &self,
        event: EventKind,
        member: Option<usize>,
        offset: Option<u64>,
        message: String,
    ) {
        let device = member.and_then(|m| {
            self.slots
                .read()
                .get(m)
                .and_then(|s| s.dev.as_ref().map(|d| d.name().to_string()))
        });
        match event {
            EventKind::Unrecoverable => {
                tracing::error!(?event, ?member, ?device, ?offset, "{message}")
            }
            EventKind::MemberFailed | EventKind::ChecksumRepaired => {
                tracing::warn!(?event, ?member, ?device, ?offset, "{message}")
            }
            _ => tracing::info!(?event, ?member, ?device, "{message}"),
        }
        let sink = self.events.read().clone();
        if let Some(sink) = sink {
            let name = self.state.lock().meta.name.clone();
            sink(&Event {
                event,
                array: name,
                uuid: self.uuid().to_string(),
                time: crate::array::now(),
                member,
                device,
                offset,
                message,
            });
        }
    }

    /// A member by index, device path, or UUID.
    pub fn find_member(&self, spec: &str) -> Result<usize> {
        let st = self.state.lock();
        let slots = self.slots.read();
        let n = st.meta.members.len();
        if let Ok(i) = spec.parse::<usize>() {
            if i < n {
                return Ok(i);
            }
        }
        let canon = |p: &str| std::fs::canonicalize(p).ok();
        let want = canon(spec);
        for (i, (m, s)) in st.meta.members.iter().zip(slots.iter()).enumerate() {
            let uuid = uuid::Uuid::from_bytes(m.uuid).to_string();
            let dev = s.dev.as_ref().map(|d| d.name().to_string());
            if uuid == spec
                || dev.as_deref() == Some(spec)
                || (want.is_some() && dev.as_deref().and_then(canon) == want)
            {
                return Ok(i);
            }
        }
        Err(Error::Invalid(format!(
            "no member {spec:?} in array {} (give an index, a device path or a member UUID)",
            self.uuid()
        )))
    }

    /// The index of the member whose device has this name (for I/O errors).
    fn member_by_device(&self, name: &str) -> Option<usize> {
        self.slots
            .read()
            .iter()
            .position(|s| s.dev.as_ref().is_some_and(|d| d.name() == name))
    }

    /// Would every allocated chunk still be readable without these members too?
    fn survives_without_locked(&self, meta: &crate::metadata::ArrayMeta, extra: &[usize]) -> bool {
        let members = self.members();
        let view: Vec<Option<Dev>> = members
            .iter()
            .enumerate()
            .map(|(i, d)| if extra.contains(&i) { None } else { d.clone() })
            .collect();
        meta.map
            .allocated()
            .all(|(_, c)| Array::chunk_intact(c, &view))
    }

    /// Marks a member failed: it is no longer read or written, and the metadata says so on
    /// every other member before this returns. Refused when the array could not serve its
    /// data without it, unless `force`. A member that fails while the metadata is being
    /// written is failed along with it.
    pub fn fail_member(&self, index: usize, reason: &str, force: bool) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        let mut st = self.state.lock();
        let m = st
            .meta
            .members
            .get(index)
            .ok_or_else(|| Error::Invalid(format!("no member {index}")))?;
        // A member recorded faulty only because it was missing can still be declared
        // failed: that is what lets a rebuild replace it by itself.
        if m.state == MemberState::Removed || (m.state == MemberState::Faulty && m.failed) {
            return Err(Error::Invalid(format!(
                "member {index} is already {}",
                if m.state == MemberState::Faulty {
                    "failed"
                } else {
                    "removed"
                }
            )));
        }
        let mut failing: Vec<(usize, String)> = vec![(index, reason.to_string())];
        // What I/O used before; put back if the failure cannot be recorded.
        let before = self.members();
        loop {
            let idxs: Vec<usize> = failing.iter().map(|f| f.0).collect();
            if !force && !self.survives_without_locked(&st.meta, &idxs) {
                *self.avail.write() = before;
                return Err(Error::Unavailable(format!(
                    "failing member{} {idxs:?} would leave data with no copy left to read \
                     (use --force to fail it anyway)",
                    if idxs.len() > 1 { "s" } else { "" }
                )));
            }
            let mut avail = (*before).clone();
            for &i in &idxs {
                avail[i] = None;
            }
            *self.avail.write() = Arc::new(avail);
            let mut meta = st.meta.clone();
            for &i in &idxs {
                meta.members[i].state = MemberState::Faulty;
                meta.members[i].failed = true;
            }
            match self.commit_meta(&mut st, meta) {
                Ok(()) => break,
                Err(e) => {
                    let other = match &e {
                        Error::Io { member, .. } => {
                            self.member_by_device(member).filter(|i| !idxs.contains(i))
                        }
                        _ => None,
                    };
                    match other {
                        Some(o) => failing.push((o, e.to_string())),
                        None => {
                            *self.avail.write() = before;
                            return Err(e);
                        }
                    }
                }
            }
        }
        drop(st);
        for (i, why) in failing {
            self.slots.write()[i].failed = Some(why.clone());
            self.emit(
                EventKind::MemberFailed,
                Some(i),
                None,
                format!("member {i} failed: {why}"),
            );
        }
        self.kick_rebuild();
        Ok(())
    }

    /// What to do with an error from a member: if it is an I/O error of a member the array
    /// can do without, fail that member and say so (`true`: retry the operation degraded).
    pub(crate) fn absorb(&self, e: &Error) -> bool {
        let Error::Io { op, member, .. } = e else {
            return false;
        };
        if self.read_only {
            return false;
        }
        let Some(index) = self.member_by_device(member) else {
            return false;
        };
        let c = if *op == "read" {
            &self.counters.read_errors
        } else {
            &self.counters.write_errors
        };
        c.fetch_add(1, Ordering::Relaxed);
        if self.members()[index].is_none() {
            return true; // already failed by a concurrent request
        }
        // Another request may have failed it meanwhile: that is as good.
        self.fail_member(index, &e.to_string(), false).is_ok() || self.members()[index].is_none()
    }

    /// Runs `f`, failing members that give I/O errors and retrying, while the array can
    /// still serve without them.
    pub(crate) fn with_failover<T>(&self, mut f: impl FnMut() -> Result<T>) -> Result<T> {
        let mut tries = 0;
        loop {
            match f() {
                Err(e) if tries < 4 && self.absorb(&e) => tries += 1,
                r => return r,
            }
        }
    }

    /// Adds a member as a hot spare (or, with `replaces`, as the replacement of that
    /// member). Refuses a device that holds data unless `force`.
    pub fn add_member(&self, dev: Dev, force: bool) -> Result<usize> {
        self.add(dev, force, None)
    }

    /// Starts replacing member `old` by `new`: `new` joins, and the rebuild copies `old`'s
    /// data to it while `old` stays in service (reading parity only where `old` fails).
    pub fn replace_member(&self, old: usize, new: Dev, force: bool) -> Result<usize> {
        {
            let st = self.state.lock();
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
        self.kick_rebuild();
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
        let sb0 = &self.sb_layout;
        if dev.size() < sb0.data_offset + (4 << 20) {
            return Err(Error::Invalid(format!(
                "{} is too small: {} bytes, a member needs more than {} bytes",
                dev.name(),
                dev.size(),
                sb0.data_offset + (4 << 20)
            )));
        }
        if self
            .slots
            .read()
            .iter()
            .any(|s| s.dev.as_ref().is_some_and(|d| d.name() == dev.name()))
        {
            return Err(Error::Invalid(format!(
                "{} is already a member of this array",
                dev.name()
            )));
        }
        let mut head = vec![0u8; probe::PROBE_LEN.min(dev.size() as usize)];
        read(dev.as_ref(), &mut head, 0)?;
        if let Some(found) = probe::describe_content(&head) {
            if !force {
                return Err(Error::NotEmpty {
                    member: dev.name().to_string(),
                    found,
                });
            }
        }
        let mut st = self.state.lock();
        let index = st.meta.members.len();
        if index >= u16::MAX as usize {
            return Err(Error::Invalid("too many members".into()));
        }
        let size = match &self.csums {
            Some(_) => crate::csum::data_end(dev.size(), sb0.data_offset),
            None => dev.size() / 4096 * 4096,
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
            ..sb0.clone()
        };
        let zero = vec![0u8; 4096];
        for off in sb.slot_offsets() {
            write(dev.as_ref(), &zero, off)?;
        }
        if sb.journal_size > 0 && sb.flags & format::SB_FLAG_EXTERNAL_JOURNAL == 0 {
            write(dev.as_ref(), &zero, sb.journal_offset)?;
            write(dev.as_ref(), &zero, sb.journal_offset + sb.journal_size / 2)?;
        }
        if self.csums.is_some() {
            dev.write_zeroes(size, crate::csum::area_len(size - sb0.data_offset))
                .map_err(|e| crate::array::io_err("zero", dev.as_ref(), size, e))?;
        }
        flush(dev.as_ref())?;
        let block = sb.encode();
        for off in SB_OFFSETS {
            write(dev.as_ref(), &block, off)?;
        }
        flush(dev.as_ref())?;
        let mut meta = st.meta.clone();
        meta.members.push(info);
        if let Some(c) = &self.csums {
            c.ends.write().push(size);
        }
        // Present before the commit, so the new metadata reaches the new member too.
        let mut avail = (*self.members()).clone();
        avail.push(Some(dev.clone()));
        self.slots.write().push(MemberSlot {
            dev: Some(dev.clone()),
            generation: None,
            failed: None,
        });
        *self.avail.write() = Arc::new(avail);
        if let Err(e) = self.commit_meta(&mut st, meta) {
            let mut avail = (*self.members()).clone();
            avail.pop();
            *self.avail.write() = Arc::new(avail);
            self.slots.write().pop();
            if let Some(c) = &self.csums {
                c.ends.write().pop();
            }
            return Err(e);
        }
        let generation = st.generation;
        drop(st);
        self.slots.write()[index].generation = Some(generation);
        let what = match replaces {
            Some(old) => format!(
                "{} added as member {index}, to replace member {old}",
                dev.name()
            ),
            None if grow => format!("{} added as member {index}", dev.name()),
            None => format!("{} added as hot spare (member {index})", dev.name()),
        };
        self.emit(EventKind::MemberAdded, Some(index), None, what);
        self.kick_rebuild();
        Ok(index)
    }

    /// Removes a spare, a failed member, or a member that holds no data. A failed member
    /// that still holds data may be removed (its data is rebuilt from redundancy); a working
    /// member that holds data is refused (moving data off a member is a migration).
    pub fn remove_member(&self, index: usize) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        let mut st = self.state.lock();
        let m = st
            .meta
            .members
            .get(index)
            .cloned()
            .ok_or_else(|| Error::Invalid(format!("no member {index}")))?;
        let used = st
            .meta
            .map
            .allocated()
            .filter(|(_, c)| c.slices.iter().any(|s| s.member as usize == index))
            .count();
        match m.state {
            MemberState::Removed => {
                return Err(Error::Invalid(format!("member {index} is already removed")))
            }
            MemberState::Active if used > 0 => {
                return Err(Error::Invalid(format!(
                    "member {index} is in service and holds data of {used} chunks: fail it \
                     first (its data is then rebuilt from redundancy) or replace it"
                )))
            }
            _ => {}
        }
        let mut avail = (*self.members()).clone();
        avail[index] = None;
        *self.avail.write() = Arc::new(avail);
        let mut meta = st.meta.clone();
        meta.members[index].state = MemberState::Removed;
        for other in meta.members.iter_mut() {
            if other.replaces == Some(index as u16) {
                other.replaces = None;
            }
        }
        meta.members[index].replaces = None;
        self.commit_meta(&mut st, meta)?;
        drop(st);
        self.emit(
            EventKind::MemberRemoved,
            Some(index),
            None,
            format!("member {index} removed"),
        );
        Ok(())
    }
}
