//! Background jobs: the one job registry (which rebuild, reshape or scrub runs, and how
//! they start by themselves), rebuild, reshape (convert, balance, remove), scrub and grow.
//! Each job moves data with the layers below and checkpoints through metadata commits, so
//! a restart resumes it.
//!
//! Owns: the job registry's lock (taken last, never held across I/O).

mod control;
mod grow;
mod rebuild;
mod reshape;
mod scrub;

pub use control::{JobControl, Progress, DEFAULT_RATE};
pub use grow::GrowForecast;
pub use rebuild::RebuildReport;
pub use reshape::{Change, Forecast};
pub use scrub::ScrubReport;

pub use crate::layout::planner::Plan;

use crate::error::{Error, JobKind, Result};
use crate::txg::Txg;
use parking_lot::Mutex;
use std::ops::Deref;
use std::sync::Arc;

/// Starts a job of this kind on a thread of its own (installed by the façade, which can
/// hand the thread an owning reference to the array).
pub(crate) type Spawn = Arc<dyn Fn(JobKind, Arc<JobControl>) + Send + Sync>;

/// How jobs start by themselves, and at what rate.
#[derive(Clone)]
pub(crate) struct Auto {
    pub spawn: Spawn,
    pub rate: u64,
}

/// One kind of job: the control of the one running (or of the last one, for `status`).
#[derive(Default)]
pub(crate) struct Slot {
    pub ctl: Option<Arc<JobControl>>,
    pub running: bool,
}

/// Which jobs run, and the last ones' controls (for `status`).
#[derive(Default)]
pub(crate) struct JobState {
    slots: [Slot; 3],
    /// A rebuild was asked for while one was running: look again when it ends.
    pub rebuild_pending: bool,
    /// Start jobs by themselves when a member fails, a spare arrives or a reshape is
    /// under way (serve sets this).
    pub auto: Option<Auto>,
}

fn slot_of(kind: JobKind) -> usize {
    match kind {
        JobKind::Rebuild => 0,
        JobKind::Reshape => 1,
        JobKind::Scrub => 2,
    }
}

impl JobState {
    pub fn slot(&self, kind: JobKind) -> &Slot {
        &self.slots[slot_of(kind)]
    }

    /// The control of the job of `kind` running now, if any.
    pub fn running(&self, kind: JobKind) -> Option<&Arc<JobControl>> {
        let s = self.slot(kind);
        s.ctl.as_ref().filter(|_| s.running)
    }

    fn slot_mut(&mut self, kind: JobKind) -> &mut Slot {
        &mut self.slots[slot_of(kind)]
    }
}

/// A job of one kind running: the registry's slot is released when this is dropped,
/// however the job ends (a rebuild asked for meanwhile then starts).
pub(crate) struct Claim<'a> {
    jobs: &'a Jobs,
    kind: JobKind,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let again = {
            let mut j = self.jobs.jobs.lock();
            j.slot_mut(self.kind).running = false;
            self.kind == JobKind::Rebuild && std::mem::take(&mut j.rebuild_pending)
        };
        if again {
            self.jobs.kick_rebuild();
        }
    }
}

/// The jobs layer of an open array, over its commit layer.
pub struct Jobs {
    txg: Txg,
    pub(crate) jobs: Mutex<JobState>,
}

impl Deref for Jobs {
    type Target = Txg;
    fn deref(&self) -> &Txg {
        &self.txg
    }
}

impl Jobs {
    pub(crate) fn new(txg: Txg) -> Jobs {
        Jobs {
            txg,
            jobs: Mutex::new(JobState::default()),
        }
    }

    /// Registers a job of `kind` run by `ctl`; refused while one of that kind runs.
    pub(crate) fn claim(&self, kind: JobKind, ctl: &Arc<JobControl>) -> Result<Claim<'_>> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        let mut j = self.jobs.lock();
        let slot = j.slot_mut(kind);
        if slot.running {
            return Err(Error::Busy(kind));
        }
        *slot = Slot {
            ctl: Some(ctl.clone()),
            running: true,
        };
        Ok(Claim { jobs: self, kind })
    }

    /// The job of `kind` running now, if any.
    pub(crate) fn running(&self, kind: JobKind) -> Option<Arc<JobControl>> {
        self.jobs.lock().running(kind).cloned()
    }

    /// Lets jobs start by themselves through `spawn`, at `rate` bytes/s.
    pub(crate) fn set_auto(&self, spawn: Spawn, rate: u64) {
        self.jobs.lock().auto = Some(Auto { spawn, rate });
    }
}
