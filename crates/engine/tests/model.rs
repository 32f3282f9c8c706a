//! Property tests of every profile against a byte-array model, healthy and degraded.

mod common;
use common::*;
use damocles_engine::{Level, MemberHealth};
use proptest::prelude::*;

fn configs() -> Vec<(Level, usize, Option<usize>)> {
    let mut v = vec![(Level::Single, 1, None)];
    for n in 2..=8 {
        v.push((Level::Raid0, n, None));
        if n % 2 == 0 {
            v.push((Level::Single, n, None));
        }
        v.push((Level::Raid1, n, None));
        if n >= 3 {
            v.push((Level::Raid1, n, Some(3)));
            v.push((Level::Raid5, n, None));
        }
        if n >= 4 {
            v.push((Level::Raid6, n, None));
            v.push((Level::Raid10, n, None));
        }
    }
    v
}

fn tolerance(level: Level, copies: Option<usize>) -> usize {
    match level {
        Level::Raid0 | Level::Single => 0,
        Level::Raid5 => 1,
        Level::Raid6 => 2,
        // raid10 survives one failure per mirror pair; "any f" is copies - 1.
        Level::Raid1 | Level::Raid10 => copies.unwrap_or(2) - 1,
    }
}

#[derive(Debug, Clone)]
struct Op {
    off_frac: f64,
    len: usize,
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        (
            0.0..1.0f64,
            prop_oneof![1usize..600, 600usize..20_000, 20_000usize..300_000],
        )
            .prop_map(|(off_frac, len)| Op { off_frac, len }),
        1..24,
    )
}

fn apply(a: &damocles_engine::Array, model: &mut [u8], ops: &[Op], seed: u64) {
    for (k, op) in ops.iter().enumerate() {
        let len = op.len.min(model.len());
        let off = ((model.len() - len) as f64 * op.off_frac) as usize;
        let data = pattern(seed * 1000 + k as u64, len);
        a.write_at(&data, off as u64).expect("write");
        model[off..off + len].copy_from_slice(&data);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn every_profile_matches_the_model_under_failures(
        su_shift in 0u32..3,
        healthy in ops(),
        degraded in ops(),
    ) {
        let su = 4096u64 << su_shift;
        for (level, n, copies) in configs() {
            let rig = Rig::new(n, 12 * MIB);
            let a = rig.create(level, copies, su, 256 << 10);
            let mut model = vec![0u8; a.size() as usize];
            apply(&a, &mut model, &healthy, 1);
            assert_matches(&a, &model, &format!("{level} n={n} healthy"));
            drop(a);
            let tol = tolerance(level, copies);
            for missing in subsets(n, tol) {
                let a = rig.assemble(&missing);
                assert_matches(&a, &model, &format!("{level} n={n} missing {missing:?}"));
            }
            if tol == 0 {
                continue;
            }
            // Write while one member is missing, then bring it back: it is stale, ignored,
            // and the array still tolerates what is left of its redundancy.
            let gone = n - 1;
            let a = rig.assemble(&[gone]);
            apply(&a, &mut model, &degraded, 2);
            assert_matches(&a, &model, &format!("{level} n={n} degraded writes"));
            drop(a);
            let a = rig.assemble(&[]);
            let st = a.status();
            prop_assert_eq!(st.members[gone].state, MemberHealth::Stale);
            assert_matches(&a, &model, &format!("{level} n={n} stale member back"));
            drop(a);
            for extra in subsets(n - 1, tol - 1) {
                let a = rig.assemble(&extra);
                assert_matches(&a, &model, &format!("{level} n={n} stale + missing {extra:?}"));
            }
        }
    }
}

#[test]
fn raid10_survives_one_failure_per_pair() {
    let rig = Rig::new(6, 8 * MIB);
    let a = rig.create(Level::Raid10, None, 4096, 256 << 10);
    let mut model = vec![0u8; a.size() as usize];
    let ops: Vec<Op> = (0..40)
        .map(|i| Op {
            off_frac: (i as f64 * 0.137) % 1.0,
            len: 70_000 + i * 13,
        })
        .collect();
    apply(&a, &mut model, &ops, 9);
    drop(a);
    // Slices of a chunk are ordered per chunk, so which members pair up varies by chunk;
    // check every chunk survives losing one member of each of its pairs by the allocator's
    // ordering: members 0,2,4 are never each other's mirror in a 6-wide chunk.
    let a = rig.assemble(&[0]);
    assert_matches(&a, &model, "raid10 one missing");
}

#[test]
fn concurrent_writers_to_shared_stripes_keep_parity_consistent() {
    for level in [Level::Raid5, Level::Raid6, Level::Raid1] {
        let rig = Rig::new(5, 8 * MIB);
        let a = rig.create(level, None, 4096, 256 << 10);
        let size = a.size() as usize;
        // Each thread owns every 4th 1 KiB piece, so threads share every stripe row.
        let piece = 1024usize;
        let span = size.min(2 * MIB as usize);
        std::thread::scope(|s| {
            for t in 0..4usize {
                let a = &a;
                s.spawn(move || {
                    for round in 0..3u64 {
                        let mut k = t;
                        while (k + 1) * piece <= span {
                            let d = pattern(round * 1_000_000 + k as u64, piece);
                            a.write_at(&d, (k * piece) as u64).unwrap();
                            k += 4;
                        }
                    }
                });
            }
        });
        let mut model = vec![0u8; size];
        for k in 0..span / piece {
            model[k * piece..(k + 1) * piece]
                .copy_from_slice(&pattern(2_000_000 + k as u64, piece));
        }
        assert_matches(&a, &model, &format!("{level} concurrent"));
        drop(a);
        for m in 0..5 {
            let a = rig.assemble(&[m]);
            assert_matches(&a, &model, &format!("{level} concurrent, missing {m}"));
        }
    }
}

#[test]
fn out_of_range_io_is_an_error() {
    let rig = Rig::new(3, 8 * MIB);
    let a = rig.create(Level::Raid5, None, 4096, 256 << 10);
    let size = a.size();
    let mut b = vec![0u8; 10];
    assert!(a.read_at(&mut b, size - 5).is_err());
    assert!(a.write_at(&b, size - 5).is_err());
    assert!(a.write_at(&b, u64::MAX - 2).is_err());
    assert!(a.read_at(&mut b[..0], size).is_ok());
}

/// One commit carrying separate pieces of the same stripe unit (found by mkfs.ext4 over NBD).
#[test]
fn a_commit_with_gaps_inside_a_stripe_unit() {
    // Two data blocks per row, each written in two separate pieces: more segments than
    // data blocks in one row.
    for (level, n) in [(Level::Raid5, 3), (Level::Raid6, 4)] {
        let rig = Rig::new(n, 12 * MIB);
        let a = rig.create(level, None, 16384, 256 << 10);
        let mut model = vec![0u8; a.size() as usize];
        for (k, (off, len)) in [
            (0usize, 4096usize),
            (8192, 4096),
            (16384 + 100, 50),
            (16384 + 12288, 4096),
        ]
        .into_iter()
        .enumerate()
        {
            let d = pattern(70 + k as u64, len);
            a.write_at(&d, off as u64).unwrap();
            model[off..off + len].copy_from_slice(&d);
        }
        a.flush().unwrap();
        assert_matches(&a, &model, &format!("{level} gaps"));
        drop(a);
        for m in 0..n {
            let a = rig.assemble(&[m]);
            assert_matches(&a, &model, &format!("{level} gaps, missing {m}"));
        }
    }
}

/// Readers, writers and commits at once: no deadlock, and every read sees whole writes.
#[test]
fn reads_writes_and_commits_run_concurrently() {
    use damocles_engine::{Array, AssembleOptions};
    let rig = Rig::new(4, 12 * MIB);
    drop(rig.create(Level::Raid5, None, 4096, 256 << 10));
    let a = Array::assemble(
        rig.devs(&[]),
        AssembleOptions {
            dirty_budget: Some(64 << 10),
            ..Default::default()
        },
    )
    .unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        // Each writer owns a region and writes whole 8 KiB records of one byte value.
        for t in 0..2u64 {
            let a = &a;
            s.spawn(move || {
                for round in 0..300u64 {
                    let v = ((round * 7 + t) % 250 + 1) as u8;
                    let off = t * 2 * MIB + (round % 64) * 8192;
                    a.write_at(&[v; 8192], off).unwrap();
                    if round % 50 == 0 {
                        a.flush().unwrap();
                    }
                }
            });
        }
        let (a, done) = (&a, &done);
        s.spawn(move || {
            let mut buf = vec![0u8; 8192];
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                for t in 0..2u64 {
                    for r in 0..64u64 {
                        a.read_at(&mut buf, t * 2 * MIB + r * 8192).unwrap();
                        // Writes are 4 KiB-atomic: each block is one value.
                        assert!(buf[..4096].iter().all(|&b| b == buf[0]));
                        assert!(buf[4096..].iter().all(|&b| b == buf[4096]));
                    }
                }
            }
        });
        let committer = s.spawn(move || {
            for _ in 0..200 {
                a.flush().unwrap();
                std::thread::yield_now();
            }
        });
        // A deadlock shows as this test hanging: bound it.
        s.spawn(move || {
            let _ = committer.join();
            tx.send(()).unwrap();
        });
        // The scope would wait forever for deadlocked threads: end the process instead.
        if rx.recv_timeout(std::time::Duration::from_secs(60)).is_err() {
            eprintln!("reads, writes and commits deadlocked");
            std::process::exit(101);
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}

/// How a member misbehaves in [`every_redundant_profile_matches_the_model_around_a_stall`].
#[derive(Debug, Clone, Copy)]
enum Stall {
    /// Every request takes three times the slow limit.
    Slow,
    /// No request returns (until the end of the case).
    Hung,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3, ..ProptestConfig::default() })]

    /// A member that crawls or never answers, while writes, flushes and reads go on: the
    /// array still matches the model, a hung member is failed (the fail limit), a slow
    /// one stays in service.
    #[test]
    fn every_redundant_profile_matches_the_model_around_a_stall(
        which in 0usize..8,
        hung in any::<bool>(),
        before in ops(),
        during in ops(),
    ) {
        use damocles_engine::{AssembleOptions, Dev, FaultMember};
        use std::time::Duration;
        let (slow, fail) = (Duration::from_millis(20), Duration::from_millis(300));
        let stall = if hung { Stall::Hung } else { Stall::Slow };
        for (level, n, copies) in [
            (Level::Raid1, 2, None),
            (Level::Raid1, 3, Some(3)),
            (Level::Raid5, 4, None),
            (Level::Raid6, 5, None),
            (Level::Raid10, 4, None),
        ] {
            let rig = Rig::new(n, 8 * MIB);
            let a = rig.create(level, copies, 4096, 256 << 10);
            let mut model = vec![0u8; a.size() as usize];
            apply(&a, &mut model, &before, 3);
            drop(a);
            let faulty: Vec<_> = rig.devs(&[]).into_iter().map(FaultMember::new).collect();
            let a = std::sync::Arc::new(damocles_engine::Array::assemble(
                faulty.iter().map(|f| f.clone() as Dev).collect(),
                AssembleOptions { slow_limit: Some(slow), fail_limit: Some(fail), ..Default::default() },
            ).expect("assemble"));
            a.spawn_watch();
            let k = which % n;
            match stall {
                Stall::Slow => faulty[k].set_delay(3 * slow),
                Stall::Hung => faulty[k].hang(),
            }
            let what = format!("{level} n={n} member {k} {stall:?}");
            apply(&a, &mut model, &during, 4);
            a.flush().expect("flush around a stalled member");
            assert_matches(&a, &model, &what);
            let state = a.status().members[k].state;
            match stall {
                Stall::Slow => prop_assert_eq!(state, MemberHealth::Ok, "{}", what),
                Stall::Hung => prop_assert_eq!(state, MemberHealth::Failed, "{}", what),
            }
            faulty[k].heal();
            drop(a);
            // Assembled again from the members as they are: what was flushed is there.
            let a = rig.assemble(&[]);
            assert_matches(&a, &model, &format!("{what}, assembled again"));
        }
    }
}
