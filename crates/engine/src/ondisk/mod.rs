//! Pure codecs of everything damocles writes to a device, with no I/O: superblocks and
//! metadata slots (`format`), the metadata payload (`metadata`), journal records
//! (`journal`), the checksum area's geometry (`csum`), the metadata backup file (`backup`),
//! and what other software left on a device (`probe`). Byte layouts: `docs/format.md`.
//! Decoding anything malformed is an error, never a panic. Holds no state and no locks.

pub mod backup;
pub mod csum;
pub mod format;
pub mod journal;
pub mod metadata;
pub mod probe;
pub mod volumes;
