//! Writes smaller than a 4 KiB block from several threads into the same blocks, each thread
//! its own 1 KiB slot of every block, while another thread flushes — what the kernel's NBD
//! client sends for ext4 with 1 KiB blocks (neighbouring block bitmaps are separate 1 KiB
//! writes, on different connections, with a FLUSH from jbd2 among them). Every slot must
//! read back as its owner last wrote it: right after each write (another slot of the
//! thread's, written earlier, is read back) and at the end, also after a member failed and
//! a spare was rebuilt under the writes.
//!
//! It found a lost write: a partial-block write read the block's other bytes, a write of
//! another slot of that block came meanwhile and a commit took it away with the open set,
//! and the block as read (without that slot) was then put in the open set over it.

mod common;

use common::*;
use damocles_engine::{Array, CreateOptions, Dev, JobControl, Level};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const SLOT: usize = 1024;
const SLOTS: usize = 4;

/// Volume offset of the test's block `b`: spread over the first 4 chunks (1 MiB each), so
/// several chunks are rebuilt under the writes.
fn block_off(b: usize) -> usize {
    ((b % 4) << 20) + (b / 4) * 4096
}

/// A directory in tmpfs (the cached-read path of file members), else the temp dir.
fn tmpfs_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    tempfile::Builder::new()
        .prefix("damocles-subblock.")
        .tempdir_in(base)
        .unwrap()
}

#[test]
fn sub_block_writes_racing_flushes_are_all_kept() {
    run(None, 8, 20_000, false);
}

#[test]
fn the_same_on_file_members_in_tmpfs() {
    let dir = tmpfs_dir();
    run(Some(dir.path()), 8, 10_000, false);
}

#[test]
fn the_same_across_a_failure_and_the_rebuild_onto_a_spare() {
    let dir = tmpfs_dir();
    run(Some(dir.path()), 64, 10_000, true);
}

/// `writes` writes per thread over `blocks` blocks; with `fail`, member 1 fails and a spare
/// is rebuilt meanwhile.
fn run(dir: Option<&std::path::Path>, blocks: usize, writes: u64, fail: bool) {
    let devs = members_in(dir, 5);
    let mut o = CreateOptions::new(Level::Raid5);
    o.stripe_unit = 16 << 10;
    o.chunk_size = Some(1 << 20);
    let a = Arc::new(Array::create(devs[..4].to_vec(), &o).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let flusher = {
        let (a, stop) = (a.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                a.flush().unwrap();
            }
        })
    };
    let writers: Vec<_> = (0..SLOTS)
        .map(|t| {
            let a = a.clone();
            std::thread::spawn(move || {
                let mut last = vec![0u64; blocks];
                for n in 1..=writes {
                    let b = (n as usize * 7 + t) % blocks;
                    let v = n * 16 + t as u64;
                    a.write_at(&pattern(v, SLOT), (block_off(b) + t * SLOT) as u64)
                        .unwrap();
                    last[b] = v;
                    let c = (b + 3) % blocks;
                    if last[c] != 0 {
                        let mut got = vec![0u8; SLOT];
                        a.read_at(&mut got, (block_off(c) + t * SLOT) as u64)
                            .unwrap();
                        assert!(
                            got == pattern(last[c], SLOT),
                            "thread {t}, write {n}: slot {t} of block {c} lost write {}",
                            last[c]
                        );
                    }
                }
                last
            })
        })
        .collect();
    if fail {
        std::thread::sleep(std::time::Duration::from_millis(100));
        a.fail_member(1, "test", false).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        a.add_member(devs[4].clone(), false).unwrap();
        a.rebuild(Arc::new(JobControl::new(8 << 20))).unwrap();
    }
    let lasts: Vec<Vec<u64>> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    flusher.join().unwrap();
    a.flush().unwrap();
    let check = |a: &Array, what: &str| {
        for (t, last) in lasts.iter().enumerate() {
            for (b, &v) in last.iter().enumerate() {
                let mut got = vec![0u8; SLOT];
                a.read_at(&mut got, (block_off(b) + t * SLOT) as u64)
                    .unwrap();
                assert!(got == pattern(v, SLOT), "{what}: slot {t} of block {b}");
            }
        }
    };
    check(&a, "at the end");
    drop(a);
    // Assembled again (journal replayed), and after a failure without the spare, without
    // member 0: what the members hold, through the rebuilt spare.
    let again: Vec<Dev> = if fail {
        vec![devs[2].clone(), devs[3].clone(), devs[4].clone()]
    } else {
        devs[1..4].to_vec()
    };
    let a = Array::assemble(again, Default::default()).unwrap();
    check(&a, "assembled again without member 0");
}
