//! The metadata layer: what identifies the open array, its members (the member set), the
//! one metadata store (the committed metadata and the chunk map read from it), creating and
//! assembling arrays, and membership changes (fail, add, replace, remove).
//!
//! Owns: [`Meta`] — identity (immutable), the member set (`slots` before `usable`), the
//! store (its state lock; `chunks` is only written under it), and telemetry.
//! Lock order: metadata state, then the member set's locks. Layers above take their own
//! locks first (the commit lock of `txg` before the metadata state).
//!
//! The one call that goes up: a member failing or a spare arriving asks for a rebuild
//! through [`Meta::request_rebuild`], a hook the façade installs.

mod assemble;
pub mod backup;
mod create;
mod deadlines;
mod health;
mod labels;
mod membership;
mod probe;
mod relabel;
mod space;

pub use assemble::AssembleOptions;
pub(crate) use assemble::{assemble, Assembled};
pub(crate) use create::create;
pub use create::{CreateOptions, DEFAULT_STRIPE_UNIT};
pub(crate) use deadlines::Watch;
pub use health::Health;
pub(crate) use health::{
    alloc_candidates, candidates_for, chunk_intact, member_spaces, spare_failures,
    template_tolerance, unreadable_ranges,
};
pub(crate) use labels::{describe_device, write_superblock};
pub use labels::{read_copies, read_superblock, CopyState, SuperblockCopies};
pub(crate) use membership::is_no_space;
pub use probe::{read_label, Label};
pub use relabel::{repair_labels, CopyReport, LabelRepair};
pub use space::SpaceUsage;
pub(crate) use space::{raw_per_chunk, room_for, unwritten_reserved};

use crate::error::{Error, Result};
use crate::layout::chunkmap::Chunk;
use crate::member::{Dev, MemberSet, Usable};
use crate::ondisk::format::{Superblock, SLOT_HEADER_LEN};
use crate::ondisk::metadata::{ArrayMeta, MemberState, PAYLOAD_VERSION};
use crate::telemetry::Telemetry;
use labels::write_generation;
use parking_lot::{Mutex, MutexGuard, RwLock};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Where the journal lives: the same area on every member, or on a journal device.
#[derive(Clone)]
pub(crate) struct JournalArea {
    pub offset: u64,
    pub half: u64,
    /// An external journal device holding every member's writes.
    pub device: Option<Dev>,
}

impl JournalArea {
    pub fn half_offset(&self, txg: u64) -> u64 {
        self.offset + (txg % 2) * self.half
    }
}

/// The committed metadata and its generation. Changed only by [`Meta::commit_meta`].
#[derive(Clone)]
pub(crate) struct MetaState {
    pub meta: ArrayMeta,
    pub generation: u64,
}

/// The metadata store: the committed metadata under the state lock, and the chunk map as
/// last committed for readers that must not wait for a commit. The map is published by
/// the commit and by nothing else, so it cannot drift from the metadata.
pub(crate) struct MetaStore {
    state: Mutex<MetaState>,
    chunks: RwLock<Arc<Vec<Option<Arc<Chunk>>>>>,
    /// The metadata as last committed, for readers (`status`) that must answer while a
    /// commit waits for a member.
    committed: RwLock<Arc<MetaState>>,
    /// Missing members were recorded as faulty (before the first degraded write).
    pub missing_recorded: AtomicBool,
}

impl MetaStore {
    pub fn new(meta: ArrayMeta, generation: u64) -> MetaStore {
        MetaStore {
            chunks: RwLock::new(Arc::new(meta.map.chunks.clone())),
            committed: RwLock::new(Arc::new(MetaState {
                meta: meta.clone(),
                generation,
            })),
            state: Mutex::new(MetaState { meta, generation }),
            missing_recorded: AtomicBool::new(false),
        }
    }

    /// The state lock: held by whoever prepares and commits the next generation.
    pub fn lock(&self) -> MutexGuard<'_, MetaState> {
        self.state.lock()
    }

    /// Chunk `idx` as last committed (`None`: never written, or beyond the volume).
    pub fn chunk(&self, idx: usize) -> Option<Arc<Chunk>> {
        self.chunks.read().get(idx).cloned().flatten()
    }

    /// The chunk map as last committed.
    pub fn chunks(&self) -> Arc<Vec<Option<Arc<Chunk>>>> {
        self.chunks.read().clone()
    }

    pub fn chunk_count(&self) -> usize {
        self.chunks.read().len()
    }

    /// The metadata as last committed, without waiting for a commit under way.
    pub fn committed(&self) -> Arc<MetaState> {
        self.committed.read().clone()
    }

    fn publish(&self, st: &mut MetaState, meta: ArrayMeta, generation: u64) {
        *self.chunks.write() = Arc::new(meta.map.chunks.clone());
        *self.committed.write() = Arc::new(MetaState {
            meta: meta.clone(),
            generation,
        });
        st.meta = meta;
        st.generation = generation;
    }
}

/// Called when the metadata layer wants a rebuild looked at (installed by the façade).
pub(crate) type Hook = Arc<dyn Fn() + Send + Sync>;

/// The metadata layer of an open array.
pub struct Meta {
    pub(crate) uuid: [u8; 16],
    pub(crate) read_only: bool,
    /// The members' common superblock layout.
    pub(crate) sb_layout: Superblock,
    pub(crate) chunk_size: u64,
    pub(crate) set: MemberSet,
    pub(crate) store: MetaStore,
    pub(crate) tel: Telemetry,
    /// Members found at assembly by their tail superblock copies only (front ones damaged).
    pub(crate) front_labels_damaged: Mutex<Vec<usize>>,
    rebuild_hook: RwLock<Option<Hook>>,
    /// The highest space threshold (80, 90, 100 %) an event was sent for.
    pub(crate) space_alarm: std::sync::atomic::AtomicU8,
}

impl Meta {
    pub(crate) fn new(a: Assembled, read_only: bool) -> Meta {
        Meta {
            uuid: a.uuid,
            read_only,
            chunk_size: a.meta.map.chunk_size,
            sb_layout: a.sb,
            set: MemberSet::new(a.slots, a.usable, a.limits),
            store: MetaStore::new(a.meta, a.generation),
            tel: Telemetry::new(a.notes),
            front_labels_damaged: Mutex::new(a.front_labels_damaged),
            rebuild_hook: RwLock::new(None),
            space_alarm: std::sync::atomic::AtomicU8::new(0),
        }
    }

    pub(crate) fn set_rebuild_hook(&self, hook: Hook) {
        *self.rebuild_hook.write() = Some(hook);
    }

    /// Asks for a rebuild to be considered (a member failed, a spare or a degraded chunk
    /// appeared). Does nothing unless the array rebuilds by itself.
    pub(crate) fn request_rebuild(&self) {
        let hook = self.rebuild_hook.read().clone();
        if let Some(h) = hook {
            h();
        }
    }

    /// The volume's size in bytes.
    pub fn size(&self) -> u64 {
        self.chunk_size * self.store.chunk_count() as u64
    }

    pub fn uuid(&self) -> uuid::Uuid {
        uuid::Uuid::from_bytes(self.uuid)
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Virtual bytes per chunk.
    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// The members usable for I/O now, by member index.
    pub(crate) fn members(&self) -> Usable {
        self.set.usable()
    }

    /// Writes `meta` as the next generation to every usable member, then flushes them.
    /// Only after this returns is the new metadata in force.
    pub(crate) fn commit_meta(&self, st: &mut MetaState, mut meta: ArrayMeta) -> Result<()> {
        // Every commit writes the current format (this is how a format-1 array is upgraded).
        meta.format_version = PAYLOAD_VERSION;
        let generation = st.generation + 1;
        let payload = meta.encode();
        if (payload.len() + SLOT_HEADER_LEN) as u64 > self.sb_layout.slot_size {
            return Err(Error::NoSpace(format!(
                "array metadata ({} bytes) no longer fits its {}-byte slot",
                payload.len(),
                self.sb_layout.slot_size
            )));
        }
        write_generation(
            self.uuid,
            &self.sb_layout,
            &self.members(),
            generation,
            &payload,
        )?;
        self.store.publish(st, meta, generation);
        Ok(())
    }

    /// Before the first write while members are missing, records them as faulty, so that
    /// when they come back they are known to be stale.
    pub(crate) fn record_missing(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        if self.store.missing_recorded.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut st = self.store.lock();
        if self.store.missing_recorded.load(Ordering::Acquire) {
            return Ok(());
        }
        let members = self.members();
        let mut meta = st.meta.clone();
        let mut changed = false;
        for (i, m) in meta.members.iter_mut().enumerate() {
            if m.state == MemberState::Active && members[i].is_none() {
                m.state = MemberState::Faulty;
                changed = true;
            }
        }
        if changed {
            if members.iter().all(Option::is_none) {
                return Err(Error::Unavailable("no member is available".into()));
            }
            tracing::warn!("recording missing members as faulty before the first degraded write");
            self.commit_meta(&mut st, meta)?;
        }
        self.store.missing_recorded.store(true, Ordering::Release);
        Ok(())
    }
}
