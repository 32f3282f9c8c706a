//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use damocles_engine::{
    Array, AssembleOptions, CreateOptions, Dev, FileMember, Level, MemMember, MemberDevice,
    OpenMode,
};
use std::sync::Arc;

pub const MIB: u64 = 1 << 20;

pub struct Rig {
    pub members: Vec<Arc<MemMember>>,
}

impl Rig {
    pub fn new(n: usize, size: u64) -> Rig {
        Rig {
            members: (0..n)
                .map(|i| Arc::new(MemMember::new(format!("m{i}"), size)))
                .collect(),
        }
    }

    pub fn sized(sizes: &[u64]) -> Rig {
        Rig {
            members: sizes
                .iter()
                .enumerate()
                .map(|(i, s)| Arc::new(MemMember::new(format!("m{i}"), *s)))
                .collect(),
        }
    }

    /// All members except those in `skip`.
    pub fn devs(&self, skip: &[usize]) -> Vec<Dev> {
        self.members
            .iter()
            .enumerate()
            .filter(|(i, _)| !skip.contains(i))
            .map(|(_, m)| m.clone() as Dev)
            .collect()
    }

    pub fn create(&self, level: Level, copies: Option<usize>, su: u64, chunk: u64) -> Array {
        let mut o = CreateOptions::new(level);
        o.copies = copies;
        o.stripe_unit = su;
        o.chunk_size = Some(chunk);
        o.name = "test".into();
        Array::create(self.devs(&[]), &o).expect("create")
    }

    pub fn assemble(&self, skip: &[usize]) -> Array {
        Array::assemble(self.devs(skip), AssembleOptions::default()).expect("assemble")
    }
}

/// Deterministic bytes for write number `n`.
pub fn pattern(n: u64, len: usize) -> Vec<u8> {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Reads the whole array in pieces and compares with the model.
pub fn assert_matches(a: &Array, model: &[u8], what: &str) {
    assert_eq!(a.size() as usize, model.len());
    let piece = 3 * MIB as usize + 4096 * 3 + 17;
    let mut buf = vec![0u8; piece];
    let mut off = 0usize;
    while off < model.len() {
        let n = piece.min(model.len() - off);
        a.read_at(&mut buf[..n], off as u64)
            .unwrap_or_else(|e| panic!("{what}: read at {off}: {e}"));
        if buf[..n] != model[off..off + n] {
            let bad = (0..n).find(|&i| buf[i] != model[off + i]).unwrap();
            panic!("{what}: mismatch at byte {}", off + bad);
        }
        off += n;
    }
}

/// Every subset of `0..n` with at most `k` elements (including the empty one).
pub fn subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
    fn grow(start: usize, n: usize, k: usize, cur: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        out.push(cur.clone());
        if cur.len() == k {
            return;
        }
        for i in start..n {
            cur.push(i);
            grow(i + 1, n, k, cur, out);
            cur.pop();
        }
    }
    let mut out = Vec::new();
    grow(0, n, k, &mut Vec::new(), &mut out);
    out
}

/// `n` members of 16 MiB: in memory, or files in `dir` (reads of cached bytes then take
/// the caller-thread path, `read_nowait`).
pub fn members_in(dir: Option<&std::path::Path>, n: usize) -> Vec<Dev> {
    (0..n)
        .map(|i| match dir {
            None => Arc::new(MemMember::new(format!("m{i}"), 16 * MIB)) as Dev,
            Some(d) => {
                let p = d.join(format!("m{i}.img"));
                std::fs::File::create(&p)
                    .unwrap()
                    .set_len(16 * MIB)
                    .unwrap();
                Arc::new(FileMember::open(&p, OpenMode::ReadWrite).unwrap()) as Dev
            }
        })
        .collect()
}

/// Rewrites every member's newest metadata as format 1 would have it: no volume table,
/// slot header version 1.
pub fn downgrade_to_format_1(members: &[Arc<MemMember>]) {
    for m in members {
        let dev = m.as_ref() as &dyn MemberDevice;
        let sb: damocles_engine::ondisk::format::Superblock =
            damocles_engine::read_superblock(dev).unwrap();
        let (gen, meta): (u64, damocles_engine::ondisk::metadata::ArrayMeta) =
            damocles_engine::read_label(dev).unwrap().newest.unwrap();
        let mut payload = meta.encode();
        // The table is last: header, records, extents.
        let table: usize = 16
            + meta
                .volumes
                .iter()
                .map(|v| 128 + 8 * v.extents.len())
                .sum::<usize>();
        payload.truncate(payload.len() - table);
        let flags = u32::from_le_bytes(payload[92..96].try_into().unwrap()) & !4;
        payload[92..96].copy_from_slice(&flags.to_le_bytes());
        let slot = (gen % 2) as u32;
        let mut bytes =
            damocles_engine::ondisk::format::encode_slot(sb.array_uuid, gen, slot, &payload);
        bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
        let crc = damocles_engine::ondisk::format::crc32c(&bytes[..124]);
        bytes[124..128].copy_from_slice(&crc.to_le_bytes());
        dev.write_at(&bytes, sb.slot_offsets()[slot as usize])
            .unwrap();
        dev.flush().unwrap();
    }
}
