//! A FLUSH is answered once its txg is durable in the journal; the txg's in-place writes
//! follow (the applier thread, or whoever takes the commit lock next). A power cut in that
//! window — before any in-place write, or at any I/O while they land and the next commit
//! runs — must lose nothing flushed and damage nothing, also with a member gone at restart.

use super::{assemble, grid_members, BLOCK, CHUNK, MIB};
use damocles_engine::powercut::{PowerGrid, Rng};
use damocles_engine::{Array, AssembleOptions, CreateOptions, Dev, Level, MemMember};
use std::sync::Arc;

const SU: usize = 16 << 10;

/// Partial-stripe writes of single blocks, flushed; then a second round, cut at each of its I/Os (the first: right after the first
/// flush, nothing of it in place yet).
#[test]
fn a_cut_between_the_journal_and_the_in_place_writes_loses_nothing() {
    let ms: Vec<Arc<MemMember>> = (0..4)
        .map(|i| Arc::new(MemMember::new(format!("m{i}"), 4 * MIB)))
        .collect();
    let mut o = CreateOptions::new(Level::Raid5);
    o.chunk_size = Some(CHUNK as u64);
    o.stripe_unit = SU as u64;
    drop(Array::create(ms.iter().map(|m| m.clone() as Dev).collect(), &o).unwrap());
    let base: Vec<Vec<u8>> = ms.iter().map(|m| m.snapshot()).collect();
    let mut broken = Vec::new();
    // The first pass (never cut) counts the second round's I/Os; then a cut at each.
    let mut second_ios = None;
    let mut k: u64 = 0;
    while second_ios.is_none_or(|n| k <= n) {
        // The same workload every time; only the cut moves (and how it tears).
        let mut rng = Rng::new(0x5eed);
        let grid = PowerGrid::new();
        let devs = grid_members(&grid, &base);
        let a = assemble(devs, 1 << 20).unwrap();
        a.defer_in_place(true);
        let size = a.size() as usize;
        // (offset, first round's byte, second round's byte); blocks apart.
        let blocks: Vec<usize> = (0..24)
            .map(|_| rng.below((size / BLOCK) as u64) as usize * BLOCK)
            .collect();
        let mut want = vec![0u8; size / BLOCK];
        for (n, &off) in blocks.iter().enumerate() {
            let fill = 1 + n as u8;
            a.write_at(&[fill; BLOCK], off as u64).unwrap();
            want[off / BLOCK] = fill;
        }
        a.flush().unwrap();
        let flushed = want.clone();
        let start = grid.io_count();
        if second_ios.is_some() {
            grid.cut_at_io(start + k);
        }
        let mut second = want.clone();
        let mut flushed_twice = true;
        // Every other block again, and the block one stripe unit on (mostly the same row,
        // another member): its read-modify-write must see the first round in place.
        let again = blocks.iter().step_by(2).copied();
        let beside = blocks.iter().map(|&o| (o + SU) % size);
        for (n, off) in again.chain(beside).enumerate() {
            let fill = 100 + n as u8;
            if a.write_at(&[fill; BLOCK], off as u64).is_err() {
                flushed_twice = false;
                break;
            }
            second[off / BLOCK] = fill;
        }
        flushed_twice &= a.flush().is_ok();
        if second_ios.is_none() {
            second_ios = Some(grid.io_count() - start);
        } else {
            k += 1;
        }
        let images = grid.cut_final(rng.next_u64() ^ k);
        drop(a);
        for gone in [None, Some(0), Some(1), Some(2), Some(3)] {
            let devs: Vec<Dev> = (0..4)
                .filter(|&i| Some(i) != gone)
                .map(|i| images[i].clone() as Dev)
                .collect();
            let ro = AssembleOptions {
                read_only: true,
                ..Default::default()
            };
            let a = Array::assemble(devs, ro).unwrap();
            let mut image = vec![0u8; size];
            a.read_at(&mut image, 0).unwrap();
            for (b, blk) in image.chunks(BLOCK).enumerate() {
                let ok = |v: u8| blk.iter().all(|&x| x == v);
                let good = if flushed_twice {
                    ok(second[b])
                } else {
                    ok(flushed[b]) || ok(second[b])
                };
                if !good {
                    broken.push(format!(
                        "cut at I/O {k} of the second round, without {gone:?}: block {b}"
                    ));
                    break;
                }
            }
        }
    }
    assert!(broken.is_empty(), "{broken:?}");
    // The second round wrote the first's blocks in place and committed its own.
    assert!(second_ios.unwrap() > 8, "second round: {second_ios:?} I/Os");
}
