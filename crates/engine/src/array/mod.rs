//! The façade: [`Array`] is the jobs layer over the commit layer over the data layer over
//! the metadata layer, each owning its state (`docs/architecture.md`). It creates and
//! assembles arrays (replaying the journal), holds the volume's entry points (`io`), says
//! what `status` shows (`status`), and starts the threads that need an owning reference:
//! the background flusher and jobs that start by themselves.

mod io;
mod labels;
mod status;
mod volio;
mod volumes;

pub use status::{
    ErrorCounts, Health, JobStatus, LostRange, MemberHealth, MemberStatus, ScrubStatus, Status,
};
pub use volio::{VolumeIo, VolumeIoCounts, VolumeStatus};
pub use volumes::{VolumeForecast, VolumeSize, VolumeSpec};

use crate::data::Data;
use crate::error::{Error, JobKind, Result};
use crate::jobs::{JobControl, Jobs};
use crate::member::{execute, Dev, Overlay};
use crate::meta::{self, AssembleOptions, CreateOptions, Meta, Watch};
use crate::txg::{default_budget, Txg};
use std::ops::Deref;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// An open array. Its methods are those of the layers it is made of (through `Deref`):
/// volume I/O here, jobs, commits, data and metadata below.
pub struct Array {
    inner: Jobs,
    volume_io: volio::VolumeIoTable,
}

impl Deref for Array {
    type Target = Jobs;
    fn deref(&self) -> &Jobs {
        &self.inner
    }
}

impl Array {
    /// Creates a new array on `devs`, then assembles it.
    pub fn create(devs: Vec<Dev>, opts: &CreateOptions) -> Result<Array> {
        let all = meta::create(devs, opts)?;
        Array::assemble(all, AssembleOptions::default())
    }

    /// Assembles an array from the members given; missing members make it degraded. Writes
    /// still in the journal are replayed (shown through an overlay when read-only).
    pub fn assemble(devs: Vec<Dev>, opts: AssembleOptions) -> Result<Array> {
        let mut found = meta::assemble(devs, &opts)?;
        let journal = found.journal.take();
        let budget = opts.dirty_budget.unwrap_or_else(default_budget).max(4096);
        let checksums = found.checksums;
        let data = Data::new(Meta::new(found, opts.read_only), checksums);
        let array = Array {
            inner: Jobs::new(Txg::new(data, journal, budget)),
            volume_io: Default::default(),
        };
        let (next_txg, replay) = array.replay_journal()?;
        *array.cache.next_txg.lock() = next_txg;
        if !replay.is_empty() {
            let bytes: usize = replay.iter().map(|w| w.data.len()).sum();
            let members = array.members();
            if array.read_only {
                // Do not write: show the replayed state through an overlay instead.
                let wrapped: Vec<Option<Dev>> = members
                    .iter()
                    .enumerate()
                    .map(|(m, d)| {
                        d.clone().map(|d| {
                            let mine: Vec<_> = replay
                                .iter()
                                .filter(|w| w.member as usize == m)
                                .cloned()
                                .collect();
                            Arc::new(Overlay::new(d, mine)) as Dev
                        })
                    })
                    .collect();
                array.set.set_usable(Arc::new(wrapped));
                array.tel.note(format!(
                    "the journal holds {bytes} bytes of writes not known to be in place; \
                 shown as replayed, applied when the array is next opened for writing"
                ));
            } else {
                // A member that misses the replay misses writes: it must not come back as
                // in sync.
                array.record_missing()?;
                execute(&members, &replay)?;
                array.retire_journal()?;
                tracing::info!("replayed {bytes} bytes from the journal");
                array
                    .tel
                    .note(format!("replayed {bytes} bytes of writes from the journal"));
            }
        }
        array.upgrade_format()?;
        Ok(array)
    }

    /// Writes a format-1 array's metadata again as format 2 (the volume table: one volume
    /// holding the whole virtual disk). One metadata commit: the other slot keeps the
    /// format-1 generation until the new one is on every member, so a crash leaves one or
    /// the other, and this code reads both.
    fn upgrade_format(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        let mut st = self.store.lock();
        if st.meta.format_version >= crate::ondisk::metadata::PAYLOAD_VERSION {
            return Ok(());
        }
        let meta = st.meta.clone();
        self.commit_meta(&mut st, meta)?;
        tracing::info!("upgraded the array's metadata from format 1 to format 2 (volumes)");
        self.tel.note(
            "metadata upgraded from format 1 to format 2 (one volume: the whole array)".into(),
        );
        Ok(())
    }

    /// Lets the array start rebuilds by itself (at `rate` bytes/s) when a member fails or a
    /// spare is added, and resume a reshape the metadata says is under way.
    pub fn set_auto_rebuild(self: &Arc<Self>, rate: u64) {
        let weak = Arc::downgrade(self);
        self.set_rebuild_hook(Arc::new(move || {
            if let Some(a) = weak.upgrade() {
                a.kick_rebuild();
            }
        }));
        let weak = Arc::downgrade(self);
        self.set_auto(
            Arc::new(move |kind, ctl| spawn_job(weak.clone(), kind, ctl)),
            rate,
        );
        self.kick_rebuild();
        self.kick_reshape();
    }

    /// Starts the background committer: it commits when the open set passes a quarter of
    /// the dirty budget (writes go on into a fresh set meanwhile) and at least every
    /// `interval`. It ends with the array (it looks at least once a second). Also starts
    /// the applier, which writes in place what a commit left pending once its journal was
    /// durable, so the client's next writes overlap it and the next FLUSH need not.
    pub fn spawn_flusher(self: &Arc<Self>, interval: Duration) {
        if self.journal.is_none() || self.read_only {
            return;
        }
        let weak: Weak<Array> = Arc::downgrade(self);
        self.defer_in_place(true);
        std::thread::Builder::new()
            .name("damocles-apply".into())
            .spawn(move || loop {
                let kick = {
                    let Some(a) = weak.upgrade() else { return };
                    a.cache.apply_kick.clone()
                };
                if kick.wait(Duration::from_secs(1)) {
                    let Some(a) = weak.upgrade() else { return };
                    drop(a.commit_lock());
                }
            })
            .ok();
        let weak: Weak<Array> = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("damocles-txg".into())
            .spawn(move || {
                let mut last = std::time::Instant::now();
                loop {
                    let kick = {
                        let Some(a) = weak.upgrade() else { return };
                        a.cache.kick.clone()
                    };
                    // Holds no reference to the array while it waits, so it can close.
                    let asked = kick.wait(interval.min(Duration::from_secs(1)));
                    if !asked && last.elapsed() < interval {
                        continue;
                    }
                    let Some(a) = weak.upgrade() else { return };
                    last = std::time::Instant::now();
                    if let Err(e) = a.commit() {
                        tracing::error!("background commit failed: {e}");
                    }
                    if !asked {
                        // After a whole period without a write, memory kept for writes
                        // goes back.
                        a.idle();
                    }
                }
            })
            .ok();
    }
}

impl Array {
    /// Starts a thread that holds member requests to the limits (see `meta::Watch`): a
    /// member past the fail limit is failed, a slow one reported. It ends with the array.
    pub fn spawn_watch(self: &Arc<Self>) {
        let weak: Weak<Array> = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("damocles-watch".into())
            .spawn(move || {
                let mut watch = Watch::default();
                loop {
                    std::thread::sleep(Duration::from_millis(250));
                    let Some(a) = weak.upgrade() else { return };
                    watch.tick(&a);
                }
            })
            .ok();
    }
}

/// Runs a job that started by itself on its own thread.
fn spawn_job(weak: Weak<Array>, kind: JobKind, ctl: Arc<JobControl>) {
    let Some(me) = weak.upgrade() else { return };
    let name = format!("damocles-{kind}");
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let r = match kind {
                JobKind::Rebuild => me.run_rebuild(ctl).map(|_| ()),
                JobKind::Reshape => me.reshape(ctl).map(|_| ()),
                JobKind::Scrub => me.scrub(ctl).map(|_| ()),
            };
            match r {
                // Another start of the same job won the race: that one runs.
                Err(Error::Busy(_)) => tracing::debug!("{kind} already running"),
                Err(e) => tracing::error!("{kind} failed: {e}"),
                Ok(()) => {}
            }
        })
        .ok();
}

impl std::fmt::Debug for Array {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Array")
            .field("uuid", &self.uuid())
            .field("size", &self.size())
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

impl Drop for Array {
    /// A clean close commits what is still buffered.
    fn drop(&mut self) {
        if self.journal.is_some() && !self.read_only {
            match self.commit().and_then(|()| self.retire_journal()) {
                // Everything is in the members: the write log has nothing left to give.
                Ok(()) => {
                    if let Some(l) = self.wlog.get() {
                        l.remove();
                    }
                }
                Err(e) => tracing::error!("committing buffered writes on close failed: {e}"),
            }
        }
    }
}
