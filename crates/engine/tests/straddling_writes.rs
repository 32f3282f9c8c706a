//! Writes that are not aligned to 4 KiB blocks and straddle two of them, from four threads
//! that share every block (each thread owns 4 KiB ranges starting 2 KiB into a block, so a
//! block holds the tail of one thread's range and the head of the next one's), of 512
//! bytes to the whole range, with reads verifying each thread's own earlier writes, while
//! another thread flushes and member 1 fails and a spare is rebuilt. Every range must
//! read back as its owner last wrote it, served and assembled again without member 0.
//! File members on a disk file system (`/var/tmp`: reads of bytes not cached go to the
//! members' worker threads) and in tmpfs (cached reads on the caller's thread).

mod common;

use common::*;
use damocles_engine::{Array, CreateOptions, JobControl, Level};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const THREADS: usize = 4;
/// Ranges per thread, spread over the first four 1 MiB chunks.
const RANGES: usize = 48;
const RANGE: usize = 4096;

/// Volume offset of range `r` of thread `t`: 2 KiB into block `t` of a 16 KiB cell.
fn range_off(t: usize, r: usize) -> u64 {
    (((r % 4) << 20) + (r / 4) * 4 * RANGE + t * RANGE + RANGE / 2) as u64
}

fn dir_in(base: &str) -> tempfile::TempDir {
    let base = std::path::Path::new(base);
    let base = if base.is_dir() {
        base.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    tempfile::Builder::new()
        .prefix("damocles-straddle.")
        .tempdir_in(base)
        .unwrap()
}

#[test]
fn straddling_writes_across_a_failure_and_rebuild_on_var_tmp() {
    run(dir_in("/var/tmp").path(), 15_000);
}

#[test]
fn straddling_writes_across_a_failure_and_rebuild_in_tmpfs() {
    run(dir_in("/dev/shm").path(), 15_000);
}

fn run(dir: &std::path::Path, writes: u64) {
    let devs = members_in(Some(dir), 5);
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
    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let a = a.clone();
            std::thread::spawn(move || {
                // What this thread's ranges hold (all zeros at first).
                let mut model = vec![vec![0u8; RANGE]; RANGES];
                let mut x = 0x2545_F491_4F6C_DD1Du64 ^ (t as u64 + 1);
                for n in 1..=writes {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let r = (x % RANGES as u64) as usize;
                    // 512 bytes, 1 KiB, 3 KiB or the whole range, at a sector in it.
                    let len = [512, 1024, 3072, RANGE][(x >> 20) as usize % 4];
                    let at = ((x >> 24) as usize % ((RANGE - len) / 512 + 1)) * 512;
                    let data = pattern(n * 8 + t as u64, len);
                    a.write_at(&data, range_off(t, r) + at as u64).unwrap();
                    model[r][at..at + len].copy_from_slice(&data);
                    let c = ((x >> 32) % RANGES as u64) as usize;
                    let mut got = vec![0u8; RANGE];
                    a.read_at(&mut got, range_off(t, c)).unwrap();
                    assert!(
                        got == model[c],
                        "thread {t}, write {n}: range {c} does not read back as written"
                    );
                }
                model
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    a.fail_member(1, "test", false).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    a.add_member(devs[4].clone(), false).unwrap();
    a.rebuild(Arc::new(JobControl::new(4 << 20))).unwrap();
    let rebuilt = std::time::Instant::now();
    let models: Vec<Vec<Vec<u8>>> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    flusher.join().unwrap();
    eprintln!(
        "writes went on {:.2} s after the rebuild",
        rebuilt.elapsed().as_secs_f64()
    );
    a.flush().unwrap();
    let check = |a: &Array, what: &str| {
        for (t, model) in models.iter().enumerate() {
            for (r, want) in model.iter().enumerate() {
                let mut got = vec![0u8; RANGE];
                a.read_at(&mut got, range_off(t, r)).unwrap();
                assert!(got == *want, "{what}: range {r} of thread {t}");
            }
        }
    };
    check(&a, "at the end");
    drop(a);
    let again = vec![devs[2].clone(), devs[3].clone(), devs[4].clone()];
    let a = Array::assemble(again, Default::default()).unwrap();
    check(&a, "assembled again without member 0");
}
