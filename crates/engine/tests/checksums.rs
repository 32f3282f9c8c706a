//! Checksums: silent corruption in data and parity is detected, healed on read and by
//! scrub, and never returned; scrub resumes after an interruption.

mod common;

use damocles_engine::{
    Array, AssembleOptions, CreateOptions, Dev, FaultMember, JobControl, Level, MemMember,
};
use std::sync::Arc;

const MIB: u64 = 1 << 20;

fn rig(n: usize, level: Level) -> (Vec<Arc<MemMember>>, Vec<Arc<FaultMember>>, Array) {
    let mems: Vec<Arc<MemMember>> = (0..n)
        .map(|i| Arc::new(MemMember::new(format!("m{i}"), 8 * MIB)))
        .collect();
    let faults: Vec<Arc<FaultMember>> = mems
        .iter()
        .map(|m| FaultMember::new(m.clone() as Dev))
        .collect();
    let mut o = CreateOptions::new(level);
    o.stripe_unit = 16 << 10;
    o.chunk_size = Some(256 << 10);
    let a = Array::create(faults.iter().map(|f| f.clone() as Dev).collect(), &o).unwrap();
    assert!(a.checksums_enabled());
    (mems, faults, a)
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    common::pattern(seed, len)
}

fn fill(a: &Array, seed: u64) -> Vec<u8> {
    let model = pattern(a.size() as usize, seed);
    a.write_at(&model, 0).unwrap();
    a.flush().unwrap();
    model
}

fn read_all(a: &Array) -> Vec<u8> {
    let mut v = vec![0u8; a.size() as usize];
    a.read_at(&mut v, 0).unwrap();
    v
}

/// Offsets well inside a member's data area (which a full array uses).
fn spots(a: &Array, member: usize, n: u64) -> Vec<u64> {
    let end = a.status().members[member].size;
    (0..n).map(|k| end / 2 + k * 11 * 4096 + 123).collect()
}

#[test]
fn flipped_data_is_healed_on_read_and_never_returned() {
    let (_m, faults, a) = rig(4, Level::Raid5);
    let model = fill(&a, 1);
    for off in spots(&a, 1, 20) {
        faults[1].flip(off, 0x10);
    }
    assert_eq!(read_all(&a), model, "reads return the good data");
    let e = a.status().errors;
    assert!(e.checksum_errors > 0, "{e:?}");
    assert_eq!(e.checksum_errors, e.repaired, "{e:?}");
    // Healed on the member: a second pass finds nothing (scrub sees no data errors).
    let before = a.status().errors.checksum_errors;
    assert_eq!(read_all(&a), model);
    assert_eq!(a.status().errors.checksum_errors, before);
}

#[test]
fn scrub_repairs_data_and_parity() {
    let (_m, faults, a) = rig(4, Level::Raid5);
    let model = fill(&a, 2);
    let n = 30;
    for off in spots(&a, 2, n) {
        faults[2].flip(off, 0x01);
    }
    let r = a.scrub(Arc::new(JobControl::new(0))).unwrap();
    assert!(r.complete);
    assert_eq!(r.repaired, n, "{r:?}");
    assert_eq!(r.unrecoverable, 0);
    let st = a.status();
    assert_eq!(st.scrub.repaired, n);
    assert!(st.scrub.last_finished > 0 && st.scrub.resume_at_chunk.is_none());
    assert!(st.scrub.blocks_checked > 0);
    // Parity was repaired too: lose another member and everything still reads.
    faults[0].vanish();
    assert_eq!(read_all(&a), model);
    let r = a.scrub(Arc::new(JobControl::new(0))).unwrap();
    assert_eq!(r.repaired, 0, "nothing left to repair");
}

#[test]
fn raid6_and_mirrors_heal_too() {
    for level in [Level::Raid6, Level::Raid1, Level::Raid10] {
        let (_m, faults, a) = rig(4, level);
        let model = fill(&a, 3);
        for off in spots(&a, 3, 10) {
            faults[3].flip(off, 0x80);
        }
        let r = a.scrub(Arc::new(JobControl::new(0))).unwrap();
        assert_eq!(r.repaired, 10, "{level}: {r:?}");
        assert_eq!(read_all(&a), model, "{level}");
    }
}

#[test]
fn corruption_beyond_redundancy_is_an_error_not_wrong_data() {
    let (_m, faults, a) = rig(4, Level::Raid5);
    let model = fill(&a, 4);
    // The same spot on every member: that row's blocks are all bad.
    let off = spots(&a, 0, 1)[0];
    for f in &faults {
        f.flip(off, 0x04);
    }
    let size = a.size();
    let mut bad = 0;
    let mut buf = vec![0u8; 4096];
    for o in (0..size).step_by(4096) {
        match a.read_at(&mut buf, o) {
            Ok(()) => assert_eq!(&buf[..], &model[o as usize..o as usize + 4096], "at {o}"),
            Err(_) => bad += 1,
        }
    }
    assert!(bad >= 1, "the corrupt blocks fail to read");
    assert!(a.status().errors.unrecoverable >= 1);
}

#[test]
fn scrub_resumes_after_interruption() {
    let (mems, faults, a) = rig(4, Level::Raid5);
    let model = fill(&a, 5);
    faults[1].set_delay(std::time::Duration::from_micros(300));
    let ctl = Arc::new(JobControl::new(0));
    let c2 = ctl.clone();
    let stopper = std::thread::spawn(move || {
        while c2.progress().total == 0 || c2.progress().done < c2.progress().total / 3 {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        c2.cancel();
    });
    let r = a.scrub(ctl).unwrap();
    stopper.join().unwrap();
    assert!(!r.complete);
    drop(a);
    let devs: Vec<Dev> = mems.iter().map(|m| m.clone() as Dev).collect();
    let a = Array::assemble(devs, AssembleOptions::default()).unwrap();
    let at = a
        .status()
        .scrub
        .resume_at_chunk
        .expect("checkpoint recorded");
    assert!(at > 0);
    let ctl = Arc::new(JobControl::new(0));
    let r = a.scrub(ctl.clone()).unwrap();
    assert!(r.complete);
    let p = ctl.progress();
    assert!(p.done >= p.total, "{p:?}");
    assert_eq!(read_all(&a), model);
    assert!(a.status().scrub.resume_at_chunk.is_none());
}
