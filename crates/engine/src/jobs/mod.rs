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

use crate::error::JobKind;
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

/// Which jobs run, and the last ones' controls (for `status`).
#[derive(Default)]
pub(crate) struct JobState {
    pub rebuild: Option<Arc<JobControl>>,
    pub rebuild_running: bool,
    /// Asked to start while one was running: look again when it ends.
    pub rebuild_pending: bool,
    pub scrub: Option<Arc<JobControl>>,
    pub reshape: Option<Arc<JobControl>>,
    pub reshape_running: bool,
    /// Start a rebuild by itself when a member fails or a spare arrives (serve sets this).
    pub auto: Option<Auto>,
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

    /// Lets jobs start by themselves through `spawn`, at `rate` bytes/s.
    pub(crate) fn set_auto(&self, spawn: Spawn, rate: u64) {
        self.jobs.lock().auto = Some(Auto { spawn, rate });
    }
}
