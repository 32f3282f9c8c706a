//! The checksum area's geometry and entries: a CRC-32C for every 4 KiB block of a member's
//! data area, data and parity alike, kept at the end of the member
//! (`docs/format.md`, "Checksum area").
//!
//! A member's data area is `[data_offset, end)`; its checksum area starts at `end` and holds
//! one little-endian u32 per data block, in block order, rounded up to whole 4 KiB blocks.
//! An entry stores `crc32c(block) ^ crc32c(zero block)`, so a zeroed area describes zeroed
//! data and fresh space needs no initialisation beyond zeroing.

use super::format::crc32c;
use crate::units::{BLOCK, BLOCK_LEN};
use std::sync::OnceLock;

/// Entries per checksum block.
pub const PER_BLOCK: u64 = BLOCK / 4;

fn zero_crc() -> u32 {
    static Z: OnceLock<u32> = OnceLock::new();
    *Z.get_or_init(|| crc32c(&[0u8; BLOCK_LEN]))
}

/// The stored form of a block's checksum.
pub fn entry(block: &[u8]) -> u32 {
    crc32c(block) ^ zero_crc()
}

/// Bytes of checksum area for a data area of `data_len` bytes.
pub fn area_len(data_len: u64) -> u64 {
    (data_len / BLOCK * 4).next_multiple_of(BLOCK)
}

/// The data area end for a member of `size` bytes whose data starts at `data_offset`: as
/// large as possible with its checksum area after it.
pub fn data_end(size: u64, data_offset: u64) -> u64 {
    let size = size / BLOCK * BLOCK;
    if size <= data_offset {
        return data_offset;
    }
    // Each data block costs 4096 + 4 bytes; round the area up and back off until it fits.
    let mut end = data_offset + (size - data_offset) / (BLOCK + 4) * BLOCK;
    while end > data_offset && end + area_len(end - data_offset) > size {
        end -= BLOCK;
    }
    end
}

/// Where the checksum entry of the data block at `off` lives on a member whose data area
/// is `[data_offset, end)`: the member offset of the entry.
pub fn entry_offset(data_offset: u64, end: u64, off: u64) -> u64 {
    end + (off - data_offset) / BLOCK * 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_area_fits_after_the_data() {
        for size in [1u64 << 20, 5 << 20, (64 << 20) + 12345, 1 << 34] {
            let off = 1 << 20;
            let end = data_end(size, off);
            assert!(end + area_len(end - off) <= size / BLOCK * BLOCK);
            // One block more would not fit.
            assert!(end + BLOCK + area_len(end + BLOCK - off) > size / BLOCK * BLOCK);
        }
        assert_eq!(entry(&[0u8; BLOCK_LEN]), 0);
    }
}
