//! The damocles array engine: member devices, the on-disk format, the chunk map and its
//! allocator, RAID profiles, and volume reads and writes (also degraded).

mod array;
pub mod chunkmap;
pub mod csum;
pub mod error;
pub mod events;
pub mod fault;
pub mod jobs;
mod lifecycle;
mod heal;
mod rebuild;
mod scrub;
pub mod format;
pub mod io;
pub mod journal;
pub mod member;
pub mod metadata;
pub mod powercut;
pub mod probe;
pub mod profile;
mod stripe_lock;
mod txg;

pub use array::SERIAL_FLUSHES;
pub use array::{
    read_superblock, Array, AssembleOptions, CreateOptions, Dev, ErrorCounts, Health, JobStatus,
    LostRange, MemberHealth, MemberStatus, ScrubStatus, Status, DEFAULT_STRIPE_UNIT,
};
pub use events::{Event, EventKind, EventSink};
pub use jobs::{JobControl, Progress, DEFAULT_RATE};
pub use rebuild::{RebuildReport, ScrubReport};
pub use error::{Error, Result};
pub use fault::FaultMember;
pub use member::{FileMember, MemMember, MemberDevice, OpenMode};
pub use profile::{Level, Profile};
