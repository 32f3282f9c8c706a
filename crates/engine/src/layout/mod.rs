//! Pure geometry, no I/O and no state: RAID profiles (`profile`), the chunk map and the
//! allocator that places chunks on members (`chunkmap`), how a stretch of a chunk splits
//! into stripe rows (`stripe`), and the reshape planner (`planner`).
//!
//! It sits below `ondisk` because the metadata codec encodes the chunk map.

pub mod chunkmap;
pub(crate) mod planner;
pub mod profile;
pub(crate) mod stripe;
pub mod volumes;

pub use chunkmap::{Chunk, ChunkMap, Slice, Template};
pub use profile::{Level, Profile};
