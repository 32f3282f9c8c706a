//! Member failure while in use, hot spares, rebuild (also distributed, with read errors,
//! interrupted and resumed), and replace — on fault-injecting members.

mod common;

use damocles_engine::{
    Array, AssembleOptions, CreateOptions, Dev, FaultMember, Health, JobControl, Level, MemMember,
    MemberHealth,
};
use std::sync::Arc;

const MIB: u64 = 1 << 20;

struct Rig {
    mems: Vec<Arc<MemMember>>,
    faults: Vec<Arc<FaultMember>>,
}

impl Rig {
    fn new(n: usize, size: u64) -> Rig {
        let mems: Vec<Arc<MemMember>> = (0..n)
            .map(|i| Arc::new(MemMember::new(format!("m{i}"), size)))
            .collect();
        let faults = mems
            .iter()
            .map(|m| FaultMember::new(m.clone() as Dev))
            .collect();
        Rig { mems, faults }
    }
    fn devs(&self) -> Vec<Dev> {
        self.faults.iter().map(|f| f.clone() as Dev).collect()
    }
    fn create(&self, level: Level, chunk: u64) -> Array {
        let mut o = CreateOptions::new(level);
        o.stripe_unit = 16 << 10;
        o.chunk_size = Some(chunk);
        Array::create(self.devs(), &o).unwrap()
    }
    fn spare(&mut self, size: u64) -> Dev {
        let i = self.mems.len();
        let m = Arc::new(MemMember::new(format!("m{i}"), size));
        let f = FaultMember::new(m.clone() as Dev);
        self.mems.push(m);
        self.faults.push(f.clone());
        f as Dev
    }
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    common::pattern(seed, len)
}

fn read_all(a: &Array) -> Vec<u8> {
    let mut v = vec![0u8; a.size() as usize];
    a.read_at(&mut v, 0).unwrap();
    v
}

fn state(a: &Array, i: usize) -> MemberHealth {
    a.status().members[i].state
}

fn rebuild(a: &Array) -> damocles_engine::RebuildReport {
    a.rebuild(Arc::new(JobControl::new(0))).unwrap()
}

#[test]
fn raid5_member_vanishes_io_goes_on_spare_rebuilds() {
    let mut rig = Rig::new(4, 8 * MIB);
    let a = rig.create(Level::Raid5, 256 << 10);
    let size = a.size() as usize;
    let mut model = pattern(size, 1);
    a.write_at(&model, 0).unwrap();
    a.flush().unwrap();

    rig.faults[2].vanish();
    // Reads fail over: the member is failed and data comes from parity.
    assert_eq!(read_all(&a), model);
    assert_eq!(state(&a, 2), MemberHealth::Failed);
    assert_eq!(a.health(), Health::Degraded);
    // Writes go on degraded.
    let patch = pattern(300_000, 2);
    a.write_at(&patch, 123_457).unwrap();
    model[123_457..123_457 + patch.len()].copy_from_slice(&patch);
    a.flush().unwrap();
    assert_eq!(read_all(&a), model);
    assert!(a.status().needs.is_some(), "status says what it needs");

    let spare = rig.spare(8 * MIB);
    let si = a.add_member(spare, false).unwrap();
    assert_eq!(state(&a, si), MemberHealth::Spare);
    let r = rebuild(&a);
    assert!(r.chunks_rebuilt > 0 && r.lost.is_empty(), "{r:?}");
    let st = a.status();
    assert_eq!(st.health, Health::Ok, "{st:?}");
    assert_eq!(st.members[si].state, MemberHealth::Ok);
    assert_eq!(st.members[2].state, MemberHealth::Removed);
    assert_eq!(st.chunks_degraded, 0);
    assert_eq!(read_all(&a), model);

    // The rebuilt member really holds the data: lose another one and read everything.
    rig.faults[0].vanish();
    assert_eq!(read_all(&a), model);
    drop(a);

    // And it all survives a reassembly without the failed members.
    let devs: Vec<Dev> = [1, 3, si]
        .iter()
        .map(|&i| rig.mems[i].clone() as Dev)
        .collect();
    let a = Array::assemble(devs, AssembleOptions::default()).unwrap();
    assert_eq!(read_all(&a), model);
}

#[test]
fn raid6_two_failures_two_spares() {
    let mut rig = Rig::new(6, 8 * MIB);
    let a = rig.create(Level::Raid6, 256 << 10);
    let model = pattern(a.size() as usize, 3);
    a.write_at(&model, 0).unwrap();
    a.flush().unwrap();
    rig.faults[1].vanish();
    rig.faults[4].vanish();
    assert_eq!(read_all(&a), model);
    for _ in 0..2 {
        let s = rig.spare(8 * MIB);
        a.add_member(s, false).unwrap();
    }
    rebuild(&a);
    assert_eq!(a.health(), Health::Ok);
    rig.faults[0].vanish();
    rig.faults[5].vanish();
    assert_eq!(read_all(&a), model);
}

#[test]
fn distributed_rebuild_uses_free_space() {
    let rig = Rig::new(5, 16 * MIB);
    // A volume of half what the members hold leaves room to rebuild without a spare.
    let full = rig.create(Level::Raid5, 256 << 10).size();
    let mut o = CreateOptions::new(Level::Raid5);
    o.stripe_unit = 16 << 10;
    o.chunk_size = Some(256 << 10);
    o.size = Some(full / 2);
    o.force = true;
    let a = Array::create(rig.devs(), &o).unwrap();
    assert_eq!(a.size(), full / 2 / (256 << 10) * (256 << 10));
    let model = pattern(a.size() as usize / 2, 4);
    a.write_at(&model, 0).unwrap();
    a.flush().unwrap();
    a.fail_member(3, "test", false).unwrap();
    let r = rebuild(&a);
    assert!(r.chunks_rebuilt > 0 && r.chunks_stuck == 0, "{r:?}");
    let st = a.status();
    assert_eq!(st.chunks_degraded, 0);
    assert_eq!(st.members[3].state, MemberHealth::Removed, "{st:?}");
    assert_eq!(st.health, Health::Ok);
    assert_eq!(st.needs, None);
    let mut got = vec![0u8; model.len()];
    a.read_at(&mut got, 0).unwrap();
    assert_eq!(got, model);
    rig.faults[1].vanish();
    a.read_at(&mut got, 0).unwrap();
    assert_eq!(got, model);
}

#[test]
fn distributed_rebuild_never_takes_the_unwritten_volume_space() {
    let rig = Rig::new(5, 16 * MIB);
    let a = rig.create(Level::Raid5, 256 << 10);
    // A quarter written: the other three quarters need the space the rebuild would use.
    let model = pattern(a.size() as usize / 4, 6);
    a.write_at(&model, 0).unwrap();
    a.flush().unwrap();
    a.fail_member(3, "test", false).unwrap();
    let r = rebuild(&a);
    assert!(r.chunks_stuck > 0, "{r:?}");
    let st = a.status();
    assert_eq!(st.health, Health::Degraded);
    assert_eq!(st.members[3].state, MemberHealth::Failed);
    let needs = st.needs.expect("says what it needs");
    assert!(needs.contains("add a spare"), "{needs}");
    // The whole volume stays writable: new chunks are born degraded, none runs out.
    let rest = pattern(a.size() as usize - model.len(), 7);
    a.write_at(&rest, model.len() as u64).unwrap();
    a.flush().unwrap();
    let mut want = model.clone();
    want.extend_from_slice(&rest);
    assert_eq!(read_all(&a), want);
}

/// A rebuild into free space moved all of a failed member's data but could not remove the
/// member (the volume not written yet needs its space), so `status` asks for a spare. A
/// spare added to the served array then takes the member's place and the array is whole;
/// it used to stay degraded with the spare idle (a spare only went to members with data).
#[test]
fn a_spare_takes_over_from_a_failed_member_a_distributed_rebuild_emptied() {
    let mut rig = Rig::new(5, 16 * MIB);
    // A volume that 4 members can hold as raid5 over 5 (with one failed), not as raid5
    // over 4: the rebuild can move the written chunks but must keep the failed member.
    let full = rig.create(Level::Raid5, 256 << 10).size();
    let mut o = CreateOptions::new(Level::Raid5);
    o.stripe_unit = 16 << 10;
    o.chunk_size = Some(256 << 10);
    o.size = Some(full / 16 * 13);
    o.force = true;
    let a = Arc::new(Array::create(rig.devs(), &o).unwrap());
    let model = pattern(a.size() as usize / 4, 8);
    a.write_at(&model, 0).unwrap();
    a.flush().unwrap();
    a.fail_member(3, "test", false).unwrap();
    let r = rebuild(&a);
    assert_eq!(r.chunks_stuck, 0, "{r:?}");
    let st = a.status();
    assert_eq!(st.members[3].state, MemberHealth::Failed);
    assert_eq!(st.members[3].used, 0);
    assert_eq!(st.health, Health::Degraded);
    assert!(st.needs.is_some_and(|n| n.contains("add a spare")));
    // As `serve` runs it: adding the spare is all it takes.
    a.set_auto_rebuild(0);
    let si = a.add_member(rig.spare(16 * MIB), false).unwrap();
    let start = std::time::Instant::now();
    while a.health() != Health::Ok || a.rebuild_job().is_some() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "{:?}",
            a.status()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let st = a.status();
    assert_eq!(st.members[3].state, MemberHealth::Removed);
    assert_eq!(st.members[si].state, MemberHealth::Ok);
    assert!(st.needs.is_none(), "{:?}", st.needs);
    // The rest of the volume is written with its redundancy.
    let rest = pattern(a.size() as usize - model.len(), 9);
    a.write_at(&rest, model.len() as u64).unwrap();
    a.flush().unwrap();
    assert_eq!(a.health(), Health::Ok);
    assert_eq!(a.chunks_degraded(), 0);
    let mut want = model.clone();
    want.extend_from_slice(&rest);
    assert_eq!(read_all(&a), want);
}

#[test]
fn read_error_during_rebuild_loses_only_those_blocks() {
    let mut rig = Rig::new(4, 8 * MIB);
    let a = rig.create(Level::Raid5, 256 << 10);
    let model = pattern(a.size() as usize, 5);
    a.write_at(&model, 0).unwrap();
    a.flush().unwrap();
    a.fail_member(0, "test", false).unwrap();
    // A bad spot on member 1, inside its data area.
    let data_start = 8 * MIB - a.status().members[1].size + a.status().members[1].size / 2;
    rig.faults[1].fail_reads(data_start, 4096);
    let s = rig.spare(8 * MIB);
    a.add_member(s, false).unwrap();
    let r = rebuild(&a);
    assert!(!r.lost.is_empty(), "{r:?}");
    let lost: u64 = r.lost.iter().map(|l| l.1).sum();
    assert!(lost <= 2 * 4096, "only the affected blocks: {:?}", r.lost);
    let st = a.status();
    assert_eq!(st.lost.len(), r.lost.len().min(st.lost.len()).max(1));
    // The rebuild's read errors count as the member's read errors do.
    assert!(st.errors.read_errors >= 1, "{:?}", st.errors);
    // Reads of lost blocks fail; everything else is intact.
    let mut buf = vec![0u8; 4096];
    for &(o, l) in &r.lost {
        assert!(a.read_at(&mut buf[..l as usize], o).is_err());
    }
    rig.faults[1].heal();
    let size = a.size();
    let mut off = 0u64;
    while off < size {
        let n = 4096.min(size - off) as usize;
        let hit = r
            .lost
            .iter()
            .any(|&(o, l)| o < off + n as u64 && off < o + l);
        if !hit {
            a.read_at(&mut buf[..n], off).unwrap();
            assert_eq!(
                &buf[..n],
                &model[off as usize..off as usize + n],
                "at {off}"
            );
        }
        off += n as u64;
    }
    // Rewriting a lost block makes it good again.
    let (o, l) = r.lost[0];
    let fresh = pattern(l as usize, 6);
    a.write_at(&fresh, o).unwrap();
    a.read_at(&mut buf[..l as usize], o).unwrap();
    assert_eq!(&buf[..l as usize], &fresh[..]);
}

#[test]
fn write_error_on_the_spare_stops_the_rebuild_before_its_commit() {
    let mut rig = Rig::new(4, 8 * MIB);
    let a = rig.create(Level::Raid5, 256 << 10);
    let model = pattern(a.size() as usize, 9);
    a.write_at(&model, 0).unwrap();
    a.flush().unwrap();
    a.fail_member(0, "test", false).unwrap();
    let s = rig.spare(8 * MIB);
    a.add_member(s, false).unwrap();
    let before = a.status().chunks_degraded;
    rig.faults[4].fail_writes(4 * MIB, MIB);
    assert!(a.rebuild(Arc::new(JobControl::new(0))).is_err());
    // The chunks of the failed group still point at their old (degraded) slices.
    let left = a.status().chunks_degraded;
    assert!(left > 0 && left <= before, "{left} of {before} left");
    assert_eq!(read_all(&a), model);
    rig.faults[4].heal();
    let r = rebuild(&a);
    assert!(r.lost.is_empty(), "{r:?}");
    assert_eq!(a.health(), Health::Ok);
    rig.faults[1].vanish();
    assert_eq!(read_all(&a), model);
}

#[test]
fn replace_copies_while_old_member_serves() {
    let mut rig = Rig::new(4, 8 * MIB);
    let a = rig.create(Level::Raid5, 256 << 10);
    let model = pattern(a.size() as usize, 7);
    a.write_at(&model, 0).unwrap();
    a.flush().unwrap();
    let new = rig.spare(8 * MIB);
    let ni = a.replace_member(1, new, false).unwrap();
    assert_eq!(state(&a, ni), MemberHealth::Replacing);
    // Parts of the old member cannot be read: those come from parity instead.
    rig.faults[1].fail_reads(5 * MIB, 64 << 10);
    let r = rebuild(&a);
    assert!(r.lost.is_empty(), "{r:?}");
    let st = a.status();
    assert_eq!(st.members[1].state, MemberHealth::Removed);
    assert_eq!(st.members[ni].state, MemberHealth::Ok);
    rig.faults[1].vanish();
    rig.faults[3].vanish();
    assert_eq!(read_all(&a), model);
}

#[test]
fn interrupted_rebuild_resumes_where_it_stopped() {
    let mut rig = Rig::new(4, 16 * MIB);
    let a = rig.create(Level::Raid5, 256 << 10);
    let model = pattern(a.size() as usize, 8);
    a.write_at(&model, 0).unwrap();
    a.flush().unwrap();
    a.fail_member(2, "test", false).unwrap();
    let s = rig.spare(16 * MIB);
    a.add_member(s, false).unwrap();
    let before = a.status().chunks_degraded;
    // Slow the spare so the rebuild can be stopped midway.
    rig.faults[4].set_delay(std::time::Duration::from_millis(2));
    let ctl = Arc::new(JobControl::new(0));
    let c2 = ctl.clone();
    let stopper = std::thread::spawn(move || {
        while c2.progress().done < c2.progress().total / 2 || c2.progress().total == 0 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        c2.cancel();
    });
    a.rebuild(ctl).unwrap();
    stopper.join().unwrap();
    let left = a.status().chunks_degraded;
    assert!(left > 0 && left < before, "{left} of {before} left");
    drop(a);
    rig.faults[4].heal();
    let devs: Vec<Dev> = [0, 1, 3, 4]
        .iter()
        .map(|&i| rig.faults[i].clone() as Dev)
        .collect();
    let a = Array::assemble(devs, AssembleOptions::default()).unwrap();
    assert_eq!(a.status().chunks_degraded, left, "resumes, not restarts");
    let r = rebuild(&a);
    assert!(r.chunks_rebuilt <= left, "{r:?}");
    assert_eq!(a.health(), Health::Ok);
    assert_eq!(read_all(&a), model);
}

#[test]
fn failing_beyond_tolerance_is_refused() {
    let rig = Rig::new(4, 8 * MIB);
    let a = rig.create(Level::Raid5, 256 << 10);
    a.write_at(&pattern(1 << 20, 9), 0).unwrap();
    a.flush().unwrap();
    a.fail_member(0, "test", false).unwrap();
    let e = a.fail_member(1, "test", false).unwrap_err();
    assert!(e.to_string().contains("--force"), "{e}");
    assert!(a.remove_member(1).is_err(), "in service with data");
    a.remove_member(0).unwrap();
}

/// Every member vanishing at once (a power cut, an unplugged enclosure) before anything was
/// written: the write or the flush must fail. It once "succeeded": with an empty map,
/// failing members left "every allocated chunk readable", so all were failed one by one and
/// the commit then wrote its metadata to nobody.
#[test]
fn every_member_vanishing_on_an_empty_array_fails_the_flush() {
    for level in [Level::Raid5, Level::Raid1, Level::Raid6] {
        let rig = Rig::new(if level == Level::Raid6 { 5 } else { 4 }, 8 * MIB);
        let a = rig.create(level, 256 << 10);
        for f in &rig.faults {
            f.vanish();
        }
        let data = pattern(256 << 10, 3);
        let ok = a.write_at(&data, 0).is_ok() && a.flush().is_ok();
        assert!(!ok, "{level}: a flush with every member gone succeeded");
        let failed = (0..rig.faults.len())
            .filter(|&i| state(&a, i) == MemberHealth::Failed)
            .count();
        assert!(
            failed <= level.parity_count().max(1),
            "{level}: {failed} members failed, more than the level can lose"
        );
    }
}
