//! The members of an open array: what was found for each member index (its device, the
//! newest metadata generation it held, why it failed in this session) and the set I/O uses
//! now. Both live here and nowhere else; the metadata's member table (states, sizes) is the
//! other half of the truth and lives in the metadata store.
//!
//! Lock order: `slots` before `usable`. The usable set is handed out as an `Arc` snapshot,
//! so an I/O path never holds a lock of this set while it waits for a member.

use super::{Dev, Guarded};
use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use std::sync::Arc;
use std::time::Duration;

/// Members usable for I/O, by member index; `None` is missing, stale or faulty.
pub(crate) type Usable = Arc<Vec<Option<Dev>>>;

/// A member as found at assemble time (or added since).
pub(crate) struct MemberSlot {
    pub dev: Option<Dev>,
    /// Newest metadata generation this member holds.
    pub generation: Option<u64>,
    /// Why it failed while this process had the array open.
    pub failed: Option<String>,
}

pub(crate) struct MemberSet {
    slots: RwLock<Vec<MemberSlot>>,
    usable: RwLock<Usable>,
    /// The (slow, fail) limits of member requests, for members added later too.
    limits: Mutex<(Duration, Duration)>,
}

impl MemberSet {
    pub fn new(
        slots: Vec<MemberSlot>,
        usable: Vec<Option<Dev>>,
        limits: (Duration, Duration),
    ) -> MemberSet {
        MemberSet {
            slots: RwLock::new(slots),
            usable: RwLock::new(Arc::new(usable)),
            limits: Mutex::new(limits),
        }
    }

    /// `dev` under this set's limits (see [`Guarded`]).
    pub fn guarded(&self, dev: Dev) -> Dev {
        Guarded::wrap(dev, *self.limits.lock())
    }

    /// The (slow, fail) limits of member requests.
    pub fn limits(&self) -> (Duration, Duration) {
        *self.limits.lock()
    }

    /// Sets the limits of every member's requests, now and for members added later.
    pub fn set_limits(&self, slow: Duration, fail: Duration) {
        let mut l = self.limits.lock();
        for s in self.slots.read().iter() {
            if let Some(g) = s.dev.as_ref().and_then(|d| d.guard()) {
                g.limits().set(slow, fail);
            }
        }
        *l = (slow, fail.max(slow));
    }

    /// The members I/O uses now.
    pub fn usable(&self) -> Usable {
        self.usable.read().clone()
    }

    /// Replaces the usable set (a failure, a removal, a read-only overlay).
    pub fn set_usable(&self, usable: Usable) {
        *self.usable.write() = usable;
    }

    pub fn slots(&self) -> RwLockReadGuard<'_, Vec<MemberSlot>> {
        self.slots.read()
    }

    /// The device name of member `i`, if it was given.
    pub fn device_name(&self, i: usize) -> Option<String> {
        self.slots
            .read()
            .get(i)
            .and_then(|s| s.dev.as_ref().map(|d| d.name().to_string()))
    }

    /// The index of the member whose device has this name (for I/O errors).
    pub fn index_of_device(&self, name: &str) -> Option<usize> {
        self.slots
            .read()
            .iter()
            .position(|s| s.dev.as_ref().is_some_and(|d| d.name() == name))
    }

    /// Adds a new member (present, used for I/O at once).
    pub fn push(&self, dev: Dev) {
        let mut slots = self.slots.write();
        slots.push(MemberSlot {
            dev: Some(dev.clone()),
            generation: None,
            failed: None,
        });
        let mut usable = (*self.usable()).clone();
        usable.push(Some(dev));
        self.set_usable(Arc::new(usable));
    }

    /// Takes back the member [`MemberSet::push`] added last.
    pub fn pop(&self) {
        let mut slots = self.slots.write();
        slots.pop();
        let mut usable = (*self.usable()).clone();
        usable.pop();
        self.set_usable(Arc::new(usable));
    }

    pub fn set_failed(&self, i: usize, why: String) {
        if let Some(s) = self.slots.write().get_mut(i) {
            s.failed = Some(why);
        }
    }

    pub fn set_generation(&self, i: usize, generation: u64) {
        if let Some(s) = self.slots.write().get_mut(i) {
            s.generation = Some(generation);
        }
    }
}
