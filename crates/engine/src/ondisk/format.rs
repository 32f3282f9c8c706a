//! On-disk format: superblocks (version 2: four copies, two at each end) and metadata slots. Byte offsets are documented in
//! `docs/format.md`; every structure is little-endian, fixed-size and CRC-32C checked.

use crate::error::{Error, Result};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

pub const FORMAT_VERSION: u32 = 1;
/// Version of the metadata slot this code writes: 2 adds the volume table to the payload.
/// Version 1 slots are still read (an array opened for writing is upgraded at once).
pub const META_VERSION: u32 = 2;
/// Superblock version 2: as version 1, plus `tail_offset` (copies C and D near the end).
pub const SB_VERSION: u32 = 2;
/// Superblocks without tail copies (written before version 2) are still read.
pub const SB_VERSION_V1: u32 = 1;
pub const SB_MAGIC: [u8; 8] = *b"DAMOCLSB";
pub const SLOT_MAGIC: [u8; 8] = *b"DAMOCLMD";
/// Each superblock copy owns one 4 KiB block.
pub const SB_BLOCK: u64 = 4096;
/// The two superblock copies: a torn write can damage at most one.
pub const SB_OFFSETS: [u64; 2] = [0, SB_BLOCK];
/// The tail region at the end of a member: copy C at its start, copy D 4 KiB later, the
/// rest unused, so the last 64 KiB (where a GPT keeps its backup) stay clear.
pub const TAIL_RESERVE: u64 = 128 << 10;
/// The bytes at the end of a device no superblock copy may touch.
pub const TAIL_GUARD: u64 = 64 << 10;
/// Metadata slot 0 starts here; slot 1 follows it.
pub const SLOT_AREA_OFFSET: u64 = 1 << 20;
pub const MIN_SLOT_SIZE: u64 = 64 << 10;
pub const MAX_SLOT_SIZE: u64 = 64 << 20;

/// Superblock flag: this device is an array's external write journal, not a member.
pub const SB_FLAG_JOURNAL_DEVICE: u32 = 1;
/// Superblock flag: this member's array keeps its journal on a separate device.
pub const SB_FLAG_EXTERNAL_JOURNAL: u32 = 2;
/// Every member keeps a CRC-32C per 4 KiB data block after its data area (see `csum.rs`).
pub const SB_FLAG_CHECKSUMS: u32 = 4;
/// `member_index` of a journal device.
pub const JOURNAL_DEVICE_INDEX: u32 = u32::MAX;

pub fn crc32c(data: &[u8]) -> u32 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, data) as u32
}

/// Superblock: who this member is and where the metadata slots are. Written at create.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub struct SuperblockRaw {
    pub magic: [u8; 8],
    pub version: U32,
    pub sb_len: U32,
    pub array_uuid: [u8; 16],
    pub member_uuid: [u8; 16],
    pub member_index: U32,
    pub flags: U32,
    pub member_size: U64,
    pub slot_offset: U64,
    pub slot_size: U64,
    pub data_offset: U64,
    pub created: U64,
    pub sb_generation: U64,
    pub journal_offset: U64,
    pub journal_size: U64,
    /// Version 2: offset of copy C (copy D follows it); 0 = no tail copies.
    pub tail_offset: U64,
    pub reserved: [u8; 124],
    pub crc: U32,
}

/// Header at the start of each metadata slot; the payload follows it.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub struct SlotHeaderRaw {
    pub magic: [u8; 8],
    pub version: U32,
    pub header_len: U32,
    pub array_uuid: [u8; 16],
    pub generation: U64,
    pub payload_len: U64,
    pub payload_crc: U32,
    pub slot: U32,
    pub reserved: [u8; 68],
    pub crc: U32,
}

/// First payload record: the array as a whole.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub struct ArrayRaw {
    pub name: [u8; 64],
    pub level: u8,
    pub copies: u8,
    pub reserved0: [u8; 2],
    pub stripe_unit: U32,
    pub chunk_size: U64,
    pub chunk_count: U32,
    pub member_count: U32,
    pub allocated_count: U32,
    pub flags: U32,
    pub created: U64,
    pub journal_device: [u8; 16],
    pub reserved: [u8; 8],
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub struct MemberRaw {
    pub uuid: [u8; 16],
    pub size: U64,
    pub state: u8,
    /// Bit 0: failed (by an I/O error or `fail`), not merely missing.
    pub flags: u8,
    /// Index + 1 of the member this one replaces (0: none).
    pub replaces: U16,
    pub reserved1: [u8; 4],
    pub reserved: [u8; 32],
}

/// After the chunk map: scrub checkpoint and results, then `lost_count` [`LostRaw`].
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub struct HealthRaw {
    /// Chunk index + 1 where a resumed scrub starts (0: none in progress).
    pub scrub_cursor: U32,
    pub lost_count: U32,
    pub scrub_checked: U64,
    pub scrub_repaired: U64,
    pub scrub_unrecoverable: U64,
    pub scrub_finished: U64,
    pub reserved: [u8; 24],
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub struct LostRaw {
    pub offset: U64,
    pub len: U64,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub struct ChunkRaw {
    pub index: U32,
    pub level: u8,
    pub width: u8,
    pub copies: u8,
    pub flags: u8,
    pub stripe_unit: U32,
    pub reserved0: U32,
    pub slice_len: U64,
    pub reserved: U64,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub struct SliceRaw {
    pub member: U16,
    pub reserved: [u8; 6],
    pub offset: U64,
}

const _: () = {
    assert!(size_of::<SuperblockRaw>() == 256);
    assert!(size_of::<SlotHeaderRaw>() == 128);
    assert!(size_of::<ArrayRaw>() == 128);
    assert!(size_of::<MemberRaw>() == 64);
    assert!(size_of::<ChunkRaw>() == 32);
    assert!(size_of::<SliceRaw>() == 16);
    assert!(size_of::<HealthRaw>() == 64);
    assert!(size_of::<LostRaw>() == 16);
};

/// A decoded, checked superblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub array_uuid: [u8; 16],
    pub member_uuid: [u8; 16],
    pub member_index: u32,
    /// `SB_FLAG_*` bits.
    pub flags: u32,
    pub member_size: u64,
    pub slot_offset: u64,
    pub slot_size: u64,
    pub data_offset: u64,
    pub created: u64,
    pub sb_generation: u64,
    /// Write journal area (two halves); size 0 means the array runs without a journal.
    pub journal_offset: u64,
    pub journal_size: u64,
    /// Where copy C is (copy D follows it); 0: a version-1 superblock, no tail copies.
    pub tail_offset: u64,
}

/// Where the tail copies go on a device of `size` bytes: 128 KiB before its end rounded
/// down to 4 KiB. `None` when the device is too small to have them.
pub fn tail_offset_for(size: u64) -> Option<u64> {
    (size / SB_BLOCK * SB_BLOCK)
        .checked_sub(TAIL_RESERVE)
        .filter(|&t| t >= 2 * SB_BLOCK)
}

/// The end of what the data area (and checksum area) of a new member of `size` bytes may
/// use: the start of its tail region.
pub fn usable_end(size: u64) -> u64 {
    tail_offset_for(size).unwrap_or(size / SB_BLOCK * SB_BLOCK)
}

impl Superblock {
    pub fn encode(&self) -> Vec<u8> {
        let mut raw = SuperblockRaw::new_zeroed();
        raw.magic = SB_MAGIC;
        raw.version.set(if self.tail_offset == 0 {
            SB_VERSION_V1
        } else {
            SB_VERSION
        });
        raw.sb_len.set(size_of::<SuperblockRaw>() as u32);
        raw.array_uuid = self.array_uuid;
        raw.member_uuid = self.member_uuid;
        raw.member_index.set(self.member_index);
        raw.flags.set(self.flags);
        raw.member_size.set(self.member_size);
        raw.slot_offset.set(self.slot_offset);
        raw.slot_size.set(self.slot_size);
        raw.data_offset.set(self.data_offset);
        raw.created.set(self.created);
        raw.sb_generation.set(self.sb_generation);
        raw.journal_offset.set(self.journal_offset);
        raw.journal_size.set(self.journal_size);
        raw.tail_offset.set(self.tail_offset);
        let crc = crc32c(&raw.as_bytes()[..size_of::<SuperblockRaw>() - 4]);
        raw.crc.set(crc);
        let mut block = vec![0u8; SB_BLOCK as usize];
        block[..size_of::<SuperblockRaw>()].copy_from_slice(raw.as_bytes());
        block
    }

    /// Decodes one superblock copy. `Ok(None)` means "no damocles magic here".
    pub fn decode(member: &str, block: &[u8]) -> Result<Option<Superblock>> {
        let Ok((raw, _)) = SuperblockRaw::read_from_prefix(block) else {
            return Err(Error::format(member, "superblock block is too short"));
        };
        if raw.magic != SB_MAGIC {
            return Ok(None);
        }
        let version = raw.version.get();
        if version != SB_VERSION && version != SB_VERSION_V1 {
            return Err(Error::format(
                member,
                format!(
                    "superblock format version {version} is not supported (this damocles reads \
                     versions {SB_VERSION_V1} and {SB_VERSION})"
                ),
            ));
        }
        let crc = crc32c(&raw.as_bytes()[..size_of::<SuperblockRaw>() - 4]);
        if crc != raw.crc.get() || raw.sb_len.get() as usize != size_of::<SuperblockRaw>() {
            return Err(Error::format(member, "superblock checksum mismatch"));
        }
        let sb = Superblock {
            array_uuid: raw.array_uuid,
            member_uuid: raw.member_uuid,
            member_index: raw.member_index.get(),
            flags: raw.flags.get(),
            member_size: raw.member_size.get(),
            slot_offset: raw.slot_offset.get(),
            slot_size: raw.slot_size.get(),
            data_offset: raw.data_offset.get(),
            created: raw.created.get(),
            sb_generation: raw.sb_generation.get(),
            journal_offset: raw.journal_offset.get(),
            journal_size: raw.journal_size.get(),
            // Version 1 had no tail copies (those bytes were reserved).
            tail_offset: if version == SB_VERSION_V1 {
                0
            } else {
                raw.tail_offset.get()
            },
        };
        if version == SB_VERSION && sb.tail_offset == 0 {
            return Err(Error::format(
                member,
                "version 2 superblock without tail copies",
            ));
        }
        sb.check(member)?;
        Ok(Some(sb))
    }

    pub fn is_journal_device(&self) -> bool {
        self.flags & SB_FLAG_JOURNAL_DEVICE != 0
    }

    fn check(&self, member: &str) -> Result<()> {
        if self.flags & !(SB_FLAG_JOURNAL_DEVICE | SB_FLAG_EXTERNAL_JOURNAL | SB_FLAG_CHECKSUMS)
            != 0
        {
            return Err(Error::format(member, "superblock has unknown flags"));
        }
        if self.is_journal_device() {
            let ok = self.member_index == JOURNAL_DEVICE_INDEX
                && self.journal_offset >= 2 * SB_BLOCK
                && self.journal_size >= 2 * 4096
                && self.journal_size.is_multiple_of(2 * 4096)
                && self
                    .journal_offset
                    .checked_add(self.journal_size)
                    .is_some_and(|e| e <= self.member_size)
                && self.tail_ok(self.journal_offset + self.journal_size);
            return if ok {
                Ok(())
            } else {
                Err(Error::format(
                    member,
                    "journal device superblock has an impossible layout",
                ))
            };
        }
        let slots_end = self
            .slot_size
            .checked_mul(2)
            .and_then(|s| s.checked_add(self.slot_offset));
        let journal_ok = self.journal_size == 0
            || (self.journal_size.is_multiple_of(2 * 4096)
                && slots_end.is_some_and(|e| e <= self.journal_offset)
                && self
                    .journal_offset
                    .checked_add(self.journal_size)
                    .is_some_and(|e| e <= self.data_offset));
        let ok = self.slot_offset >= 2 * SB_BLOCK
            && (MIN_SLOT_SIZE..=MAX_SLOT_SIZE).contains(&self.slot_size)
            && slots_end.is_some_and(|e| e <= self.data_offset)
            && journal_ok
            && self.data_offset <= self.member_size
            && self.data_offset.is_multiple_of(4096)
            && self.tail_ok(self.data_offset);
        if ok {
            Ok(())
        } else {
            Err(Error::format(member, "superblock has an impossible layout"))
        }
    }

    /// The tail copies, if any: 4 KiB aligned, after `area_end` (what precedes them), both
    /// within the recorded device size and at least [`TAIL_GUARD`] before its end.
    fn tail_ok(&self, area_end: u64) -> bool {
        let t = self.tail_offset;
        t == 0
            || (t.is_multiple_of(SB_BLOCK)
                && t >= area_end
                && t >= 2 * SB_BLOCK
                && t.checked_add(2 * SB_BLOCK + TAIL_GUARD)
                    .is_some_and(|e| e <= self.member_size))
    }

    /// Every copy's offset: A and B at the front, then C and D when it has tail copies.
    pub fn copy_offsets(&self) -> Vec<u64> {
        let mut v = SB_OFFSETS.to_vec();
        if self.tail_offset != 0 {
            v.extend([self.tail_offset, self.tail_offset + SB_BLOCK]);
        }
        v
    }

    pub fn slot_offsets(&self) -> [u64; 2] {
        [self.slot_offset, self.slot_offset + self.slot_size]
    }
}

/// Where metadata slots, the journal and data go: (slot_offset, journal_offset, data_offset).
pub fn member_layout(slot_size: u64, journal_size: u64) -> (u64, u64, u64) {
    let journal_offset = SLOT_AREA_OFFSET + 2 * slot_size;
    (
        SLOT_AREA_OFFSET,
        journal_offset,
        journal_offset + journal_size,
    )
}

/// Encodes a slot: header then payload.
pub fn encode_slot(array_uuid: [u8; 16], generation: u64, slot: u32, payload: &[u8]) -> Vec<u8> {
    let mut hdr = SlotHeaderRaw::new_zeroed();
    hdr.magic = SLOT_MAGIC;
    hdr.version.set(META_VERSION);
    hdr.header_len.set(size_of::<SlotHeaderRaw>() as u32);
    hdr.array_uuid = array_uuid;
    hdr.generation.set(generation);
    hdr.payload_len.set(payload.len() as u64);
    hdr.payload_crc.set(crc32c(payload));
    hdr.slot.set(slot);
    let crc = crc32c(&hdr.as_bytes()[..size_of::<SlotHeaderRaw>() - 4]);
    hdr.crc.set(crc);
    let mut out = Vec::with_capacity(size_of::<SlotHeaderRaw>() + payload.len());
    out.extend_from_slice(hdr.as_bytes());
    out.extend_from_slice(payload);
    // Round up to 4 KiB so the write is whole sectors.
    out.resize(out.len().next_multiple_of(4096), 0);
    out
}

/// A slot header that checked out: its generation and payload length.
pub struct SlotHeader {
    pub generation: u64,
    pub payload_len: u64,
    pub payload_crc: u32,
}

/// Decodes a slot header. `Err` explains why the slot is not usable.
pub fn decode_slot_header(
    bytes: &[u8],
    array_uuid: &[u8; 16],
    slot_size: u64,
) -> std::result::Result<SlotHeader, String> {
    let (hdr, _) = SlotHeaderRaw::read_from_prefix(bytes).map_err(|_| "short slot".to_string())?;
    if hdr.magic != SLOT_MAGIC {
        return Err("no metadata magic".into());
    }
    let crc = crc32c(&hdr.as_bytes()[..size_of::<SlotHeaderRaw>() - 4]);
    if crc != hdr.crc.get() {
        return Err("metadata header checksum mismatch".into());
    }
    if !(1..=META_VERSION).contains(&hdr.version.get()) {
        return Err(format!(
            "metadata format version {} not supported (this damocles reads versions 1 and 2)",
            hdr.version.get()
        ));
    }
    if &hdr.array_uuid != array_uuid {
        return Err("metadata belongs to another array".into());
    }
    let payload_len = hdr.payload_len.get();
    if payload_len > slot_size - size_of::<SlotHeaderRaw>() as u64 {
        return Err("metadata payload larger than its slot".into());
    }
    Ok(SlotHeader {
        generation: hdr.generation.get(),
        payload_len,
        payload_crc: hdr.payload_crc.get(),
    })
}

pub const SLOT_HEADER_LEN: usize = size_of::<SlotHeaderRaw>();

/// A cursor over payload bytes that never panics on short input.
pub struct Reader<'a> {
    member: &'a str,
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(member: &'a str, bytes: &'a [u8]) -> Self {
        Reader { member, bytes }
    }

    pub fn take<T: FromBytes + KnownLayout + Immutable + Unaligned + Clone + 'a>(
        &mut self,
    ) -> Result<T> {
        match T::ref_from_prefix(self.bytes) {
            Ok((v, rest)) => {
                self.bytes = rest;
                Ok(v.clone())
            }
            Err(_) => Err(Error::format(self.member, "metadata payload is truncated")),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb() -> Superblock {
        Superblock {
            array_uuid: [1; 16],
            member_uuid: [2; 16],
            member_index: 3,
            flags: 0,
            member_size: 64 << 20,
            slot_offset: SLOT_AREA_OFFSET,
            slot_size: MIN_SLOT_SIZE,
            data_offset: SLOT_AREA_OFFSET + 2 * MIN_SLOT_SIZE,
            created: 1,
            sb_generation: 1,
            journal_offset: SLOT_AREA_OFFSET + 2 * MIN_SLOT_SIZE,
            journal_size: 0,
            tail_offset: (64 << 20) - TAIL_RESERVE,
        }
    }

    #[test]
    fn superblock_round_trips() {
        let b = sb().encode();
        assert_eq!(b.len(), 4096);
        assert_eq!(&b[..8], b"DAMOCLSB");
        assert_eq!(Superblock::decode("m", &b).unwrap(), Some(sb()));
    }

    #[test]
    fn superblock_rejects_damage() {
        let good = sb().encode();
        for i in 8..256 {
            let mut b = good.clone();
            b[i] ^= 0x40;
            assert!(
                Superblock::decode("m", &b).is_err(),
                "flip at byte {i} accepted"
            );
        }
        assert_eq!(Superblock::decode("m", &[0u8; 4096]).unwrap(), None);
        assert!(Superblock::decode("m", &good[..10]).is_err());
    }

    #[test]
    fn version_1_superblocks_are_read_and_tail_offsets_checked() {
        let v1 = Superblock {
            tail_offset: 0,
            ..sb()
        };
        let b = v1.encode();
        assert_eq!(u32::from_le_bytes(b[8..12].try_into().unwrap()), 1);
        assert_eq!(Superblock::decode("m", &b).unwrap(), Some(v1.clone()));
        assert_eq!(v1.copy_offsets(), vec![0, 4096]);
        let v2 = sb().encode();
        assert_eq!(u32::from_le_bytes(v2[8..12].try_into().unwrap()), 2);
        assert_eq!(sb().copy_offsets().len(), 4);
        let size = sb().member_size;
        for bad in [
            size - TAIL_RESERVE + 1,        // unaligned
            size - TAIL_GUARD,              // into the last 64 KiB
            size,                           // beyond the device
            sb().data_offset - SB_BLOCK,    // inside the metadata area
            u64::MAX / SB_BLOCK * SB_BLOCK, // overflows
        ] {
            let s = Superblock {
                tail_offset: bad,
                ..sb()
            };
            assert!(
                Superblock::decode("m", &s.encode()).is_err(),
                "tail_offset {bad} accepted"
            );
        }
        // Version 2 must have tail copies: a v2 header with the field zero is refused.
        let mut raw = v1.encode();
        raw[8] = 2;
        let crc = crc32c(&raw[..252]);
        raw[252..256].copy_from_slice(&crc.to_le_bytes());
        assert!(Superblock::decode("m", &raw).is_err());
        assert_eq!(tail_offset_for(64 << 20), Some((64 << 20) - TAIL_RESERVE));
        assert_eq!(
            tail_offset_for((64 << 20) + 100),
            Some((64 << 20) - TAIL_RESERVE)
        );
        assert_eq!(tail_offset_for(100 << 10), None);
    }

    #[test]
    fn slot_header_checks() {
        let s = encode_slot([1; 16], 7, 1, b"hello");
        let h = decode_slot_header(&s, &[1; 16], MIN_SLOT_SIZE).unwrap();
        assert_eq!((h.generation, h.payload_len), (7, 5));
        assert!(decode_slot_header(&s, &[2; 16], MIN_SLOT_SIZE).is_err());
        let mut bad = s.clone();
        bad[40] ^= 1;
        assert!(decode_slot_header(&bad, &[1; 16], MIN_SLOT_SIZE).is_err());
    }
}
