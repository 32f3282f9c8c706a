//! The write journal: each commit (transaction group, "txg") writes every member's share of
//! the planned member writes to that member's journal area, flushes, and only then writes in
//! place. The journal is striped exactly like the data it protects, so it has the array's
//! redundancy: a member lost at restart takes only its own share, which parity then implies.
//!
//! Txg `k` goes to journal half `k mod 2`. Commit `k`'s flush also makes txg `k-1`'s
//! in-place writes durable, so replay needs at most the last two complete txgs, in order,
//! and replaying is idempotent (pure positioned writes).

use super::format::crc32c;
use crate::units::MemberWrite;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

pub const JOURNAL_MAGIC: [u8; 8] = *b"DAMOCLJR";
pub const JOURNAL_VERSION: u32 = 1;

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub struct JournalHeaderRaw {
    pub magic: [u8; 8],
    pub version: U32,
    pub header_len: U32,
    pub array_uuid: [u8; 16],
    pub txg: U64,
    pub member: U32,
    pub entry_count: U32,
    pub participant_count: U32,
    pub reserved0: U32,
    pub payload_len: U64,
    pub payload_crc: U32,
    pub reserved: [u8; 56],
    pub crc: U32,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
pub struct JournalEntryRaw {
    pub offset: U64,
    pub len: U32,
    /// Member the write is for (the record's own member, except on a journal device).
    pub member: U32,
}

/// `member` of a record on an external journal device: it holds every member's writes.
pub const EXTERNAL: u16 = u16::MAX;

fn header_member(m: u16) -> u32 {
    if m == EXTERNAL {
        u32::MAX
    } else {
        m as u32
    }
}

pub const HEADER_LEN: usize = size_of::<JournalHeaderRaw>();
const _: () = assert!(HEADER_LEN == 128 && size_of::<JournalEntryRaw>() == 16);

/// One member's share of one txg.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubRecord {
    pub txg: u64,
    pub member: u16,
    /// Every member that has a share in this txg.
    pub participants: Vec<u16>,
    pub writes: Vec<MemberWrite>,
}

fn participants_len(n: usize) -> usize {
    (n * 2).next_multiple_of(16)
}

/// Bytes a sub-record with these writes takes (before rounding to 4 KiB).
pub fn encoded_len(participants: usize, entries: usize, data: usize) -> usize {
    HEADER_LEN + participants_len(participants) + entries * 16 + data
}

pub fn encode(uuid: [u8; 16], r: &SubRecord) -> Vec<u8> {
    let data_len: usize = r.writes.iter().map(|w| w.data.len()).sum();
    let total = encoded_len(r.participants.len(), r.writes.len(), data_len);
    let mut out = Vec::with_capacity(total.next_multiple_of(4096));
    out.resize(HEADER_LEN, 0);
    for p in &r.participants {
        out.extend_from_slice(U16::new(*p).as_bytes());
    }
    out.resize(HEADER_LEN + participants_len(r.participants.len()), 0);
    for w in &r.writes {
        let mut e = JournalEntryRaw::new_zeroed();
        e.offset.set(w.offset);
        e.len.set(w.data.len() as u32);
        e.member.set(w.member as u32);
        out.extend_from_slice(e.as_bytes());
    }
    for w in &r.writes {
        out.extend_from_slice(&w.data);
    }
    let mut h = JournalHeaderRaw::new_zeroed();
    h.magic = JOURNAL_MAGIC;
    h.version.set(JOURNAL_VERSION);
    h.header_len.set(HEADER_LEN as u32);
    h.array_uuid = uuid;
    h.txg.set(r.txg);
    h.member.set(header_member(r.member));
    h.entry_count.set(r.writes.len() as u32);
    h.participant_count.set(r.participants.len() as u32);
    h.payload_len.set((out.len() - HEADER_LEN) as u64);
    h.payload_crc.set(crc32c(&out[HEADER_LEN..]));
    let crc = crc32c(&h.as_bytes()[..HEADER_LEN - 4]);
    h.crc.set(crc);
    out[..HEADER_LEN].copy_from_slice(h.as_bytes());
    out.resize(out.len().next_multiple_of(4096), 0);
    out
}

/// What a journal half's header says, if it checks out: (txg, payload length).
pub fn decode_header(
    bytes: &[u8],
    uuid: &[u8; 16],
    member: u16,
    capacity: u64,
) -> Option<(u64, u64)> {
    let (h, _) = JournalHeaderRaw::read_from_prefix(bytes).ok()?;
    let ok = h.magic == JOURNAL_MAGIC
        && h.version.get() == JOURNAL_VERSION
        && h.header_len.get() as usize == HEADER_LEN
        && crc32c(&h.as_bytes()[..HEADER_LEN - 4]) == h.crc.get()
        && &h.array_uuid == uuid
        && h.member.get() == header_member(member)
        && h.payload_len.get() <= capacity.saturating_sub(HEADER_LEN as u64);
    ok.then(|| (h.txg.get(), h.payload_len.get()))
}

/// Decodes a whole sub-record; every write must land in its member's data area, as
/// `data_area(member)` gives it (`None`: no such member).
pub fn decode(
    bytes: &[u8],
    uuid: &[u8; 16],
    member: u16,
    capacity: u64,
    data_area: &dyn Fn(u16) -> Option<(u64, u64)>,
) -> Option<SubRecord> {
    let (txg, payload_len) = decode_header(bytes, uuid, member, capacity)?;
    let (h, rest) = JournalHeaderRaw::read_from_prefix(bytes).ok()?;
    let payload = rest.get(..payload_len as usize)?;
    if crc32c(payload) != h.payload_crc.get() {
        return None;
    }
    let np = h.participant_count.get() as usize;
    let ne = h.entry_count.get() as usize;
    let plen = participants_len(np);
    let participants: Vec<u16> = payload
        .get(..np * 2)?
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    if !participants.contains(&member) {
        return None;
    }
    let table = payload.get(plen..plen.checked_add(ne.checked_mul(16)?)?)?;
    let mut data = &payload[plen + ne * 16..];
    let mut writes = Vec::with_capacity(ne);
    for e in table.chunks_exact(16) {
        let (e, _) = JournalEntryRaw::read_from_prefix(e).ok()?;
        let len = e.len.get() as usize;
        let off = e.offset.get();
        let end = off.checked_add(len as u64)?;
        let target = u16::try_from(e.member.get()).ok()?;
        if (member != EXTERNAL && target != member) || target == EXTERNAL {
            return None;
        }
        let (data_start, data_end) = data_area(target)?;
        if off < data_start || end > data_end || len > data.len() {
            return None;
        }
        writes.push(MemberWrite {
            member: target,
            offset: off,
            data: data[..len].to_vec(),
        });
        data = &data[len..];
    }
    Some(SubRecord {
        txg,
        member,
        participants,
        writes,
    })
}

/// From the sub-records found on the members that are present, the txgs to replay, oldest
/// first. `newest` is the highest txg any valid header names. Only `newest` and the txg
/// before it can hold writes that are not yet durable in place (commits are serial, and
/// commit `k`'s journal flush follows txg `k-1`'s in-place writes), so only those two are
/// candidates, each replayed if complete: every participant that is present has its share (a
/// participant that is missing is covered by the redundancy of the rest). An older record
/// that survives — on a member that sat out later txgs, or after a partial retire — is never
/// replayed: its writes are durable and newer txgs may have overwritten them.
pub fn select_replay(found: &[SubRecord], present: &[u16], newest: u64) -> Vec<u64> {
    let complete = |txg: u64| -> bool {
        let shares: Vec<&SubRecord> = found.iter().filter(|r| r.txg == txg).collect();
        let Some(first) = shares.first() else {
            return false;
        };
        first
            .participants
            .iter()
            .filter(|p| present.contains(p))
            .all(|p| {
                shares
                    .iter()
                    .any(|r| r.member == *p && r.participants == first.participants)
            })
    };
    [newest.checked_sub(1), Some(newest)]
        .into_iter()
        .flatten()
        .filter(|&t| t > 0 && complete(t))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(txg: u64, member: u16, parts: &[u16]) -> SubRecord {
        SubRecord {
            txg,
            member,
            participants: parts.to_vec(),
            writes: vec![MemberWrite {
                member,
                offset: 1 << 20,
                data: vec![txg as u8; 4096],
            }],
        }
    }

    /// Why the commit puts checksum entries before the data in a share: a 4 KiB block
    /// directly followed by its entry (`crc32c(block) ^ crc32c(zero block)`, see `csum`)
    /// differs from zeros by a CRC32C codeword, so a torn record that lost both still passes
    /// the payload CRC. With the entry first the loss is noticed.
    #[test]
    fn a_lost_block_and_its_checksum_entry_pass_the_crc_only_in_that_order() {
        let block: Vec<u8> = (0..4096u32)
            .map(|i| if i > 2900 { (i % 251) as u8 | 1 } else { 0 })
            .collect();
        let entry = (crate::ondisk::format::crc32c(&block)
            ^ crate::ondisk::format::crc32c(&[0; 4096]))
        .to_le_bytes()
        .to_vec();
        let w = |offset: u64, data: &Vec<u8>| MemberWrite {
            member: 2,
            offset,
            data: data.clone(),
        };
        let area = |_: u16| Some((0u64, 1u64 << 30));
        for entry_first in [false, true] {
            let (d, c) = (w(1 << 20, &block), w(5 << 20, &entry));
            let writes = if entry_first { vec![c, d] } else { vec![d, c] };
            let r = SubRecord {
                txg: 3,
                member: 2,
                participants: vec![1, 2],
                writes,
            };
            let mut b = encode([9; 16], &r);
            // Torn: the header sector made it, the block and the entry did not.
            let data_start = HEADER_LEN + participants_len(2) + 2 * 16;
            b[data_start..data_start + 4100].fill(0);
            let got = decode(&b, &[9; 16], 2, 1 << 20, &area);
            assert_eq!(got.is_some(), !entry_first, "entry first: {entry_first}");
        }
    }

    #[test]
    fn round_trip_and_damage() {
        let r = rec(5, 2, &[0, 2, 3]);
        let b = encode([9; 16], &r);
        let area = |_: u16| Some((0u64, 1u64 << 30));
        let cap = 1 << 20;
        assert_eq!(decode(&b, &[9; 16], 2, cap, &area), Some(r.clone()));
        assert_eq!(decode(&b, &[9; 16], 1, cap, &area), None, "wrong member");
        assert_eq!(decode(&b, &[8; 16], 2, cap, &area), None, "wrong array");
        let high = |_: u16| Some((2u64 << 20, 1u64 << 30));
        assert_eq!(
            decode(&b, &[9; 16], 2, cap, &high),
            None,
            "outside data area"
        );
        for i in [0, 40, 130, 150, 4200] {
            let mut d = b.clone();
            d[i] ^= 1;
            assert!(decode(&d, &[9; 16], 2, cap, &area).is_none(), "flip at {i}");
        }
        assert_eq!(decode(&b[..300], &[9; 16], 2, cap, &area), None);
        // An external record carries several members' writes.
        let mut ext = rec(6, EXTERNAL, &[EXTERNAL]);
        ext.writes[0].member = 1;
        ext.writes.push(MemberWrite {
            member: 3,
            offset: 2 << 20,
            data: vec![1; 512],
        });
        let b = encode([9; 16], &ext);
        assert_eq!(decode(&b, &[9; 16], EXTERNAL, cap, &area), Some(ext));
        let only_one = |m: u16| (m == 1).then_some((0u64, 1u64 << 30));
        assert_eq!(
            decode(&b, &[9; 16], EXTERNAL, cap, &only_one),
            None,
            "unknown member"
        );
    }

    #[test]
    fn replay_takes_the_newest_complete_txgs() {
        let p = [0u16, 1, 2];
        // txg 7 complete on all, txg 8 missing on member 1: 6 and 7.
        let found = vec![
            rec(6, 0, &p),
            rec(6, 1, &p),
            rec(6, 2, &p),
            rec(7, 0, &p),
            rec(7, 1, &p),
            rec(7, 2, &p),
            rec(8, 0, &p),
            rec(8, 2, &p),
        ];
        assert_eq!(select_replay(&found, &p, 8), vec![7]);
        // Member 1 is gone: txg 8 is complete among the present members.
        assert_eq!(select_replay(&found, &[0, 2], 8), vec![7, 8]);
        // Overwritten predecessor: only the newest.
        let found = vec![rec(7, 0, &p), rec(7, 1, &p), rec(7, 2, &p), rec(6, 0, &p)];
        assert_eq!(select_replay(&found, &p, 7), vec![7]);
        assert!(select_replay(&[], &p, 0).is_empty());
        // A partial retire left txg 8 on members 1 and 2 only and an old txg 5 that only
        // member 0 took part in: 8 is incomplete, and 5 is far too old to replay.
        let found = vec![rec(5, 0, &[0]), rec(8, 1, &p), rec(8, 2, &p)];
        assert!(select_replay(&found, &p, 8).is_empty());
    }
}
