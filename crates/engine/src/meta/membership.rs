//! Membership changes while the array is open: fail and remove members, I/O errors that
//! fail a member (and retry degraded), events. Adding members is in `data::attach` (a new
//! member needs its checksum area).

use super::{alloc_candidates, candidates_for, chunk_intact, member_spaces, Meta};
use crate::error::{Error, Op, Result};
use crate::events::{Event, EventKind, EventSink};
use crate::layout::chunkmap::Allocator;
use crate::member::Dev;
use crate::ondisk::metadata::{ArrayMeta, MemberState};
use crate::units::now;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// ENOSPC (or a quota): the member's filesystem is full, the member is fine.
pub(crate) fn is_no_space(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

impl Meta {
    /// Where events go besides the log (`serve --on-event`).
    pub fn set_event_sink(&self, sink: EventSink) {
        self.tel.set_sink(sink);
    }

    pub(crate) fn emit(
        &self,
        event: EventKind,
        member: Option<usize>,
        offset: Option<u64>,
        message: String,
    ) {
        let device = member.and_then(|m| self.set.device_name(m));
        // The log does not show the name: take the metadata lock only for a sink.
        let array = if self.tel.has_sink() {
            self.store.lock().meta.name.clone()
        } else {
            String::new()
        };
        self.tel.send(Event {
            event,
            array,
            uuid: self.uuid().to_string(),
            time: now(),
            member,
            device,
            offset,
            message,
        });
    }

    /// A member by index, device path, or UUID.
    pub fn find_member(&self, spec: &str) -> Result<usize> {
        let st = self.store.lock();
        let slots = self.set.slots();
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
        self.set.index_of_device(name)
    }

    /// Would every allocated chunk still be readable without these members too?
    fn survives_without_locked(&self, meta: &ArrayMeta, extra: &[usize]) -> bool {
        let members = self.members();
        let view: Vec<Option<Dev>> = members
            .iter()
            .enumerate()
            .map(|(i, d)| if extra.contains(&i) { None } else { d.clone() })
            .collect();
        if !meta.map.allocated().all(|(_, c)| chunk_intact(c, &view)) {
            return false;
        }
        // Chunks not written yet must still have somewhere to go: a first write lays a
        // chunk out over every member (a missing one's slice born degraded), so that chunk
        // must be intact too. Without this, an array with nothing written yet (or one whose
        // members all vanish at once, as a power cut looks) could fail every member, and
        // commits and flushes would then "succeed" writing to nobody.
        let spaces = member_spaces(&meta.members, self.sb_layout.data_offset);
        let alloc = Allocator::new(&spaces, &meta.map);
        // Every volume's kind of chunk (the array's default when it has no volume); a
        // `single` chunk only on a member that is there (see `candidates_for`).
        meta.templates().iter().all(|t| {
            let candidates = candidates_for(t, &alloc_candidates(meta), meta, &view);
            match alloc.clone().allocate(t, self.chunk_size, &candidates) {
                Some(fresh) => chunk_intact(&fresh, &view),
                None => view.iter().any(Option::is_some),
            }
        })
    }

    /// Marks a member failed: it is no longer read or written, and the metadata says so on
    /// every other member before this returns. Refused when the array could not serve its
    /// data without it, unless `force`. A member that fails while the metadata is being
    /// written is failed along with it.
    pub fn fail_member(&self, index: usize, reason: &str, force: bool) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        let mut st = self.store.lock();
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
                self.set.set_usable(before);
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
            self.set.set_usable(Arc::new(avail));
            let mut meta = st.meta.clone();
            for &i in &idxs {
                meta.members[i].state = MemberState::Faulty;
                meta.members[i].failed = true;
            }
            match self.commit_meta(&mut st, meta) {
                Ok(()) => break,
                Err(e) => {
                    let other = match &e {
                        Error::Io { device, .. } => {
                            self.member_by_device(device).filter(|i| !idxs.contains(i))
                        }
                        _ => None,
                    };
                    match other {
                        Some(o) => failing.push((o, e.to_string())),
                        None => {
                            self.set.set_usable(before);
                            return Err(e);
                        }
                    }
                }
            }
        }
        drop(st);
        for (i, why) in failing {
            self.set.set_failed(i, why.clone());
            self.emit(
                EventKind::MemberFailed,
                Some(i),
                None,
                format!("member {i} failed: {why}"),
            );
        }
        self.request_rebuild();
        Ok(())
    }

    /// Counts a block of member `m` that failed its checksum (array and member figures).
    pub(crate) fn count_checksum_error(&self, m: u16) {
        self.tel
            .counters
            .checksum_errors
            .fetch_add(1, Ordering::Relaxed);
        if let Some(Some(d)) = self.members().get(m as usize) {
            if let Some(g) = d.guard() {
                g.count_checksum_error();
            }
        }
    }

    /// What to do with an error from a member: if it is an I/O error of a member the array
    /// can do without, fail that member and say so (`true`: retry the operation degraded).
    pub(crate) fn absorb(&self, e: &Error) -> bool {
        let Error::Io {
            op, device, source, ..
        } = e
        else {
            return false;
        };
        if self.read_only || is_no_space(source) {
            // A full host filesystem is not a failed disk: the request gets ENOSPC.
            return false;
        }
        let Some(index) = self.member_by_device(device) else {
            return false;
        };
        let c = if *op == Op::Read {
            &self.tel.counters.read_errors
        } else {
            &self.tel.counters.write_errors
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

    /// Removes a spare, a failed member, or a member that holds no data. A failed member
    /// that still holds data may be removed (its data is rebuilt from redundancy); a working
    /// member that holds data is refused (moving data off a member is a migration).
    pub fn remove_member(&self, index: usize) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        let mut st = self.store.lock();
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
        self.set.set_usable(Arc::new(avail));
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
