//! Chunks written whole within one commit go to fresh slices (redirect-on-write): the
//! members see each byte once plus parity — no journal copy — and the data keeps the
//! chunk's redundancy: it reads back with any member (two for raid6) left out, after
//! overwrites, and mixed with partial writes that take the journal.

mod common;

use common::*;
use damocles_engine::{Array, AssembleOptions, Level};

const CHUNK: u64 = 256 << 10;

fn written(a: &Array) -> u64 {
    a.status()
        .members
        .iter()
        .filter_map(|m| m.io.as_ref().map(|io| io.written_bytes))
        .sum()
}

/// (level, copies, members, stripe unit, members that may be missing)
const CASES: &[(Level, Option<usize>, usize, u64, usize)] = &[
    (Level::Raid1, None, 2, 64 << 10, 1),
    (Level::Raid1, Some(3), 3, 64 << 10, 2),
    (Level::Raid5, None, 4, 64 << 10, 1),
    (Level::Raid5, None, 3, 16 << 10, 1),
    (Level::Raid6, None, 5, 32 << 10, 2),
    (Level::Raid10, None, 4, 64 << 10, 1),
];

#[test]
fn whole_chunks_are_written_once_and_keep_their_redundancy() {
    for &(level, copies, n, su, tolerance) in CASES {
        let what = format!("{level} x{n} su {su}");
        let rig = Rig::new(n, 8 * MIB);
        let a = rig.create(level, copies, su, CHUNK);
        let size = a.size() as usize;
        let mut model = vec![0u8; size];
        // First writes: eight whole chunks in 1 MiB requests, one flush.
        let span = (8 * CHUNK) as usize;
        let data = pattern(1, span);
        let before = written(&a);
        for (k, piece) in data.chunks(1 << 20).enumerate() {
            a.write_at(piece, (CHUNK as usize + k * (1 << 20)) as u64)
                .unwrap();
        }
        a.flush().unwrap();
        model[CHUNK as usize..CHUNK as usize + span].copy_from_slice(&data);
        let st = a.status();
        let profile_width = n as u64;
        let data_blocks = match level {
            Level::Raid5 => n as u64 - 1,
            Level::Raid6 => n as u64 - 2,
            _ => (n / copies.unwrap_or(2).min(n)) as u64,
        };
        // Each slice is whole stripe units; the bytes the members see are the chunks'
        // slices plus one metadata generation per member — not the journal's second copy.
        let slices = 8 * CHUNK.div_ceil(su * data_blocks) * su * profile_width;
        let got = written(&a) - before;
        assert!(
            got >= slices && got < slices + slices / 8 + (n as u64) * (1 << 20),
            "{what}: members wrote {got} bytes for {slices} bytes of slices ({})",
            st.members.len()
        );
        // Overwrite four of them whole, and partly overwrite two others (journal path).
        let again = pattern(2, (4 * CHUNK) as usize);
        let at = 3 * CHUNK as usize;
        a.write_at(&again, at as u64).unwrap();
        model[at..at + again.len()].copy_from_slice(&again);
        let part = pattern(3, 40_000);
        let p_at = (CHUNK as usize) + 5000;
        a.write_at(&part, p_at as u64).unwrap();
        model[p_at..p_at + part.len()].copy_from_slice(&part);
        let before = written(&a);
        a.flush().unwrap();
        let got = written(&a) - before;
        assert!(
            got < 2 * (4 * CHUNK.div_ceil(su * data_blocks) * su * profile_width),
            "{what}: an overwrite of four chunks wrote {got} bytes"
        );
        assert_matches(&a, &model, &what);
        drop(a);
        for skip in subsets(n, tolerance) {
            let b = Array::assemble(rig.devs(&skip), AssembleOptions::default())
                .unwrap_or_else(|e| panic!("{what}: assemble without {skip:?}: {e}"));
            assert_matches(&b, &model, &format!("{what} without {skip:?}"));
        }
    }
}

#[test]
fn an_array_with_no_free_space_left_still_takes_whole_chunk_overwrites() {
    // Filled to the last chunk: no room for fresh slices, so overwrites take the journal.
    let rig = Rig::new(4, 6 * MIB);
    let a = rig.create(Level::Raid5, None, 64 << 10, CHUNK);
    let size = a.size() as usize;
    let full = pattern(7, size);
    for (k, piece) in full.chunks(1 << 20).enumerate() {
        a.write_at(piece, (k << 20) as u64).unwrap();
    }
    a.flush().unwrap();
    let mut model = full;
    let again = pattern(8, size);
    for (k, piece) in again.chunks(1 << 20).enumerate() {
        a.write_at(piece, (k << 20) as u64).unwrap();
    }
    a.flush().unwrap();
    model.copy_from_slice(&again);
    assert_matches(&a, &model, "overwritten full array");
    drop(a);
    for skip in 0..4 {
        let b = rig.assemble(&[skip]);
        assert_matches(&b, &model, &format!("full array without member {skip}"));
    }
}
