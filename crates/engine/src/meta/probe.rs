//! What one device says about itself, without assembling anything: for `damocles scan`.

use super::health::template_tolerance;
use super::labels::{read_best_slot, read_superblock};
use crate::error::Result;
use crate::member::MemberDevice;
use crate::ondisk::format::Superblock;
use crate::ondisk::metadata::ArrayMeta;

/// A damocles label read from one device.
pub struct Label {
    pub superblock: Superblock,
    /// The newest valid metadata slot on this device: its generation and contents (none:
    /// every slot is damaged).
    pub newest: Option<(u64, ArrayMeta)>,
    /// Member failures the array's layout survives, from that metadata.
    pub tolerance: Option<usize>,
    /// What was noticed while reading (damaged slots).
    pub notes: Vec<String>,
}

/// Reads the superblock and the newest metadata slot of `dev`; an error when it is not a
/// damocles member (or its superblocks are damaged).
pub fn read_label(dev: &dyn MemberDevice) -> Result<Label> {
    let superblock = read_superblock(dev)?;
    let (newest, notes) = if superblock.is_journal_device() {
        (None, Vec::new())
    } else {
        read_best_slot(dev, &superblock)
    };
    let tolerance = newest
        .as_ref()
        .and_then(|(_, m)| m.templates().iter().map(template_tolerance).min());
    Ok(Label {
        superblock,
        newest,
        tolerance,
        notes,
    })
}
