#![no_main]
//! The metadata backup file parser (`damocles metadata import`): any bytes give a backup
//! or an error, never a panic, and what parses re-encodes to the same bytes.

use damocles_engine::backup::{Backup, BACKUP_HEADER_LEN, BACKUP_MAGIC};
use libfuzzer_sys::fuzz_target;

/// Byte offset of the header's CRC field.
const CRC_AT: usize = 124;

fuzz_target!(|data: &[u8]| {
    check(data);
    // Mode byte bit 0: fix up magic, versions, length and CRC so the input reaches the
    // metadata decoder instead of stopping at the checksum.
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 || rest.len() < BACKUP_HEADER_LEN {
        return;
    }
    let mut b = rest.to_vec();
    b[..8].copy_from_slice(&BACKUP_MAGIC);
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    b[12..16].copy_from_slice(&(BACKUP_HEADER_LEN as u32).to_le_bytes());
    let payload_len = (b.len() - BACKUP_HEADER_LEN) as u64;
    b[40..48].copy_from_slice(&payload_len.to_le_bytes());
    b[48..52].copy_from_slice(&1u32.to_le_bytes());
    if mode & 2 != 0 {
        // A plausible layout: 64 KiB slots, data after them.
        b[56..64].copy_from_slice(&((1u64 << 20) + (128 << 10)).to_le_bytes());
        b[64..72].copy_from_slice(&(64u64 << 10).to_le_bytes());
    }
    b[52..56].fill(0);
    b[80..CRC_AT].fill(0);
    b[CRC_AT..CRC_AT + 4].fill(0);
    let crc = crc32c(&b);
    b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    check(&b);
});

fn check(bytes: &[u8]) {
    if let Ok(backup) = Backup::decode("fuzz", bytes) {
        assert_eq!(backup.encode(), bytes);
        let _ = backup.summary();
    }
}

/// CRC-32C, bitwise (slow, but independent of the engine's).
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &x in data {
        crc ^= u32::from(x);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
