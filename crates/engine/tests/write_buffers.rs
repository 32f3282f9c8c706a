//! Buffers of committed writes are kept for the next owned writes (handed back with their
//! answer), up to the dirty budget, and what is kept counts against that budget with the
//! buffered writes: a burst's peak memory stays bounded by the budget.

mod common;

use common::*;
use damocles_engine::{Array, AssembleOptions, Level};

const BUF: usize = 64 << 10;
const BUDGET: u64 = 1 << 20;

#[test]
fn kept_buffers_come_back_to_writers_and_count_against_the_dirty_budget() {
    let rig = Rig::new(4, 16 * MIB);
    drop(rig.create(Level::Raid5, None, 4096, 256 << 10));
    let a = Array::assemble(
        rig.devs(&[]),
        AssembleOptions {
            dirty_budget: Some(BUDGET),
            ..Default::default()
        },
    )
    .unwrap();
    let at = |i: u64| i * BUF as u64;
    // Twelve owned writes (768 KiB, under the budget) and a commit: the commit's buffers
    // are kept, more than a quarter of the budget.
    for i in 0..12 {
        let back = a.write_owned(pattern(i, BUF), at(i)).unwrap();
        assert!(back.is_empty(), "write {i}: nothing was kept yet");
    }
    a.flush().unwrap();
    // Ten copied writes elsewhere (640 KiB dirty): the kept buffers shrink to the 384 KiB
    // left in the budget.
    for i in 20..30 {
        a.write_at(&pattern(i, BUF), at(i)).unwrap();
    }
    // Six owned writes fill the budget, each handed one kept buffer back.
    for i in 40..46 {
        let back = a.write_owned(pattern(i, BUF), at(i)).unwrap();
        assert_eq!(back.len(), 1, "write {i}: one kept buffer comes back");
        assert!(back[0].capacity() >= BUF);
    }
    // None is left: the seventh finds the bin empty (and commits, past the budget).
    let back = a.write_owned(pattern(46, BUF), at(46)).unwrap();
    assert!(
        back.is_empty(),
        "kept buffers beyond the budget: {}",
        back.len()
    );
    a.flush().unwrap();
    let mut got = vec![0u8; BUF];
    for i in (0..12).chain(20..30).chain(40..47) {
        a.read_at(&mut got, at(i)).unwrap();
        assert_eq!(got, pattern(i, BUF), "block run {i}");
    }
}
