//! The damocles array engine: member devices, the on-disk format, the chunk map and its
//! allocator, RAID profiles, and volume reads and writes (also degraded).
//!
//! Layers, lowest first; a module uses only those below it (`docs/architecture.md`, checked
//! by `tests/layers.rs`):
//!
//! - `units`, `error`, `events`, `telemetry` — shared pieces;
//! - `layout` — pure geometry: profiles, the chunk map and allocator, stripe rows, the
//!   reshape planner;
//! - `ondisk` — pure codecs of what is written to a device;
//! - `member` — member devices, positioned I/O, the member set;
//! - `meta` — identity, the metadata store, create/assemble, membership changes;
//! - `data` — the read and write paths and the one stripe module;
//! - `txg` — dirty sets, commits, the journal;
//! - `jobs` — the job registry; rebuild, reshape, scrub, grow;
//! - `array` — the [`Array`] façade composed of the parts above.

mod array;
mod data;
pub mod error;
pub mod events;
mod jobs;
pub mod layout;
pub mod member;
mod meta;
pub mod ondisk;
mod telemetry;
#[cfg(feature = "test-util")]
pub mod testing;
mod txg;
pub mod units;

pub use array::{
    Array, ErrorCounts, Health, JobStatus, LostRange, MemberHealth, MemberStatus, ScrubStatus,
    Status, VolumeForecast, VolumeIo, VolumeIoCounts, VolumeSize, VolumeSpec, VolumeStatus,
};
pub use error::{Error, JobKind, Op, Result};
pub use events::{Event, EventKind, EventSink};
pub use jobs::{
    Change, Forecast, GrowForecast, JobControl, Plan, Progress, RebuildReport, ScrubReport,
    DEFAULT_RATE,
};
pub use layout::chunkmap::Template;
pub use layout::profile::{Level, Profile};
pub use layout::volumes::Volume;
pub use member::{
    filesystem_free, reserve_file, unallocated_bytes, AlignedBuf, Dev, DirectIo, FileMember,
    Guarded, MemMember, MemberDevice, MemberIo, OpenMode, DEFAULT_FAIL, DEFAULT_SLOW,
};
pub use meta::backup;
pub use meta::SpaceUsage;
pub use meta::{
    read_copies, read_label, read_superblock, repair_labels, AssembleOptions, CopyReport,
    CopyState, CreateOptions, Label, LabelRepair, SuperblockCopies, DEFAULT_STRIPE_UNIT,
};
pub use ondisk::metadata::MemberState;
#[cfg(feature = "test-util")]
pub use testing::{fault, powercut, FaultMember, SERIAL_FLUSHES};
pub use txg::FlushToken;
pub use units::MemberWrite;
