//! Writes that race a failure and the rebuild onto a spare: two writers keep writing
//! (each its own blocks, so the last write of every block is known) and flushing while a
//! member is failed, a spare is added and the rebuild runs at a low rate. Afterwards every
//! block reads back as last written — also with another member left out, so the rebuilt
//! spare's contents are what answers.

mod common;

use common::*;
use damocles_engine::{Array, CreateOptions, Dev, JobControl, Level};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

const BLK: usize = 4096;

#[test]
fn writes_during_a_failure_and_its_rebuild_are_all_kept() {
    run(None);
}

#[test]
fn the_same_on_file_members_in_tmpfs() {
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let dir = tempfile::Builder::new()
        .prefix("damocles-rebuild.")
        .tempdir_in(base)
        .unwrap();
    run(Some(dir.path()));
}

fn run(dir: Option<&std::path::Path>) {
    for round in 0..3u64 {
        let sub = dir.map(|d| d.join(format!("r{round}")));
        if let Some(s) = &sub {
            std::fs::create_dir_all(s).unwrap();
        }
        let devs = members_in(sub.as_deref(), 5);
        let mut o = CreateOptions::new(Level::Raid5);
        o.stripe_unit = 16 << 10;
        o.chunk_size = Some(1 << 20);
        let a = Arc::new(Array::create(devs[..4].to_vec(), &o).unwrap());
        let size = a.size() as usize;
        let model = Arc::new(Mutex::new(pattern(round, size)));
        a.write_at(&model.lock().unwrap(), 0).unwrap();
        a.flush().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..2u64)
            .map(|t| {
                let (a, model, stop) = (a.clone(), model.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut x = round * 1000 + t * 77 + 1;
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) || n < 200 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        // Runs of 1..16 blocks, only blocks b with b % 2 == t.
                        let blocks = size / BLK;
                        let b0 = (x as usize % (blocks / 2)) * 2 + t as usize;
                        let data = pattern(x, BLK);
                        a.write_at(&data, (b0 * BLK) as u64).unwrap();
                        model.lock().unwrap()[b0 * BLK..(b0 + 1) * BLK].copy_from_slice(&data);
                        n += 1;
                        if n.is_multiple_of(16) {
                            a.flush().unwrap();
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(50));
        a.fail_member(1, "test", false).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let spare = devs[4].clone();
        a.add_member(spare.clone(), false).unwrap();
        // Slow, so the writes run under it.
        let report = a.rebuild(Arc::new(JobControl::new(8 << 20)));
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
        report.expect("rebuild");
        a.flush().unwrap();
        let model = model.lock().unwrap().clone();
        assert_matches(&a, &model, &format!("round {round}, after the rebuild"));
        drop(a);
        // Without member 0: the rebuilt spare must hold what it should.
        let again: Vec<Dev> = vec![devs[2].clone(), devs[3].clone(), spare];
        let a = Array::assemble(again, Default::default()).unwrap();
        assert_matches(
            &a,
            &model,
            &format!("round {round}, spare without member 0"),
        );
    }
}
