//! The damocles array engine: member devices, the on-disk format, the chunk map and its
//! allocator, RAID profiles, and volume reads and writes (also degraded).

mod array;
pub mod backup;
pub mod chunkmap;
pub mod csum;
mod dirty;
pub mod error;
pub mod events;
pub mod fault;
pub mod format;
mod grow;
mod heal;
pub mod io;
pub mod jobs;
pub mod journal;
mod lifecycle;
pub mod member;
pub mod metadata;
pub mod powercut;
pub mod probe;
pub mod profile;
mod rebuild;
mod reshape;
mod scrub;
mod stripe_lock;
mod txg;

pub use array::SERIAL_FLUSHES;
pub use array::{
    read_superblock, Array, AssembleOptions, CreateOptions, Dev, ErrorCounts, Health, JobStatus,
    LostRange, MemberHealth, MemberStatus, ScrubStatus, Status, DEFAULT_STRIPE_UNIT,
};
pub use error::{Error, Result};
pub use events::{Event, EventKind, EventSink};
pub use fault::FaultMember;
pub use grow::GrowForecast;
pub use jobs::{JobControl, Progress, DEFAULT_RATE};
pub use member::{FileMember, MemMember, MemberDevice, OpenMode};
pub use profile::{Level, Profile};
pub use rebuild::{RebuildReport, ScrubReport};
pub use reshape::{Change, Forecast, Plan};
