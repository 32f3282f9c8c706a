//! The `single` profile: each chunk whole on one member, no redundancy. Members of mixed
//! sizes fill up completely; a lost member loses only the chunks on it (EIO, listed by
//! `status`), and everything else reads back as written; conversions to and from single
//! keep the data.

mod common;
use common::*;

use damocles_engine::{
    Array, AssembleOptions, Change, CreateOptions, Dev, Error, FaultMember, Health, JobControl,
    Level, LostRange, MemberDevice, MemberHealth, Template, VolumeSize, VolumeSpec,
};
use std::sync::Arc;

const CHUNK: u64 = 1 << 20;

fn create_single(rig: &Rig, journal: bool, size: Option<u64>) -> Array {
    let mut o = CreateOptions::new(Level::Single);
    o.stripe_unit = 64 << 10;
    o.chunk_size = Some(CHUNK);
    o.journal = journal;
    o.size = size;
    o.name = "media".into();
    Array::create(rig.devs(&[]), &o).expect("create single")
}

/// Writes pattern `seed` over the whole volume in unaligned pieces (so writes straddle
/// chunks and stripe rows), flushes, and returns the model.
fn fill(a: &Array, seed: u64) -> Vec<u8> {
    let size = a.size() as usize;
    let model = pattern(seed, size);
    let piece = 3 * CHUNK as usize / 2 + 4096 + 512;
    let mut off = 0;
    while off < size {
        let n = piece.min(size - off);
        a.write_at(&model[off..off + n], off as u64).expect("write");
        off += n;
    }
    a.flush().expect("flush");
    model
}

/// Reads chunk by chunk: the ranges that fail (merged), checking that every chunk that
/// reads reads as the model and that every failure is EIO (`Unavailable`: its member is
/// gone; `Lost`: recorded lost).
fn readable_except(a: &Array, model: &[u8], what: &str) -> Vec<(u64, u64)> {
    let mut failed: Vec<(u64, u64)> = Vec::new();
    let mut buf = vec![0u8; CHUNK as usize];
    for i in 0..a.size() / CHUNK {
        let off = i * CHUNK;
        match a.read_at(&mut buf, off) {
            Ok(()) => assert!(
                buf[..] == model[off as usize..(off + CHUNK) as usize],
                "{what}: chunk {i} reads back other data"
            ),
            Err(Error::Unavailable(_) | Error::Lost(_)) => match failed.last_mut() {
                Some((o, l)) if *o + *l == off => *l += CHUNK,
                _ => failed.push((off, CHUNK)),
            },
            Err(e) => panic!("{what}: chunk {i}: {e}"),
        }
    }
    failed
}

fn ranges(v: &[LostRange]) -> Vec<(u64, u64)> {
    v.iter().map(|r| (r.offset, r.len)).collect()
}

/// Every member is filled to within a chunk: what each has left (its data area's end less
/// the bytes of slices on it) differs by less than a chunk from member to member, and is
/// no more than the metadata area in front of the data.
fn assert_full(a: &Array) {
    let st = a.status();
    let left: Vec<u64> = st.members.iter().map(|m| m.size - m.used).collect();
    let (lo, hi) = (*left.iter().min().unwrap(), *left.iter().max().unwrap());
    assert!(hi - lo < CHUNK, "members not filled evenly: {left:?}");
    assert!(lo < 4 * MIB, "members left with room: {left:?}");
    let used: u64 = st.members.iter().map(|m| m.used).sum();
    assert_eq!(used, a.size(), "one slice of a chunk's size per chunk");
    assert_eq!(st.chunks_allocated as u64 * CHUNK, a.size());
}

#[test]
fn single_fills_mixed_members_and_a_failed_member_loses_only_its_chunks() {
    for journal in [true, false] {
        let what = |s: &str| format!("journal {journal}: {s}");
        let sizes = [16 * MIB, 24 * MIB, 40 * MIB, 28 * MIB];
        let rig = Rig::sized(&sizes);
        let a = create_single(&rig, journal, None);
        let st = a.status();
        assert_eq!((st.level, st.tolerance), (Level::Single, 0));
        // Every member's space counts: the volume is nearly the sum of the members.
        let total: u64 = sizes.iter().sum();
        assert!(
            a.size() + 4 * 4 * MIB > total,
            "size {} of {total}",
            a.size()
        );
        let model = fill(&a, 11);
        assert_full(&a);
        assert_eq!(a.health(), Health::Ok);
        assert!(readable_except(&a, &model, &what("healthy")).is_empty());

        // Failing a member that holds data loses data: refused unless forced.
        let on_1 = a.status().members[1].used;
        assert!(on_1 > 0);
        let e = a.fail_member(1, "test", false).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        a.fail_member(1, "test", true).unwrap();

        // The array stays up: the chunks on the other members read back as written, those
        // on member 1 give EIO, and status lists exactly those as unreadable.
        let st = a.status();
        assert_eq!(st.members[1].state, MemberHealth::Failed);
        assert_eq!(st.health, Health::Failed);
        let failed = readable_except(&a, &model, &what("member 1 failed"));
        assert_eq!(failed.iter().map(|r| r.1).sum::<u64>(), on_1);
        assert_eq!(ranges(&st.unreadable), failed, "{}", what("status lists"));
        assert!(st.lost.is_empty());
        assert!(st.needs.unwrap().contains("single chunks"));
        // A write to an unreadable chunk is refused; to a readable one it works.
        let (bad, _) = failed[0];
        assert!(matches!(
            a.write_at(&[7u8; 4096], bad),
            Err(Error::Unavailable(_))
        ));
        let good = (0..a.size() / CHUNK)
            .map(|i| i * CHUNK)
            .find(|o| !failed.iter().any(|&(f, l)| (f..f + l).contains(o)))
            .unwrap();
        let mut model = model;
        model[good as usize..good as usize + 4096].fill(9);
        a.write_at(&[9u8; 4096], good).unwrap();
        a.flush().unwrap();

        // A rebuild cannot bring single chunks back: it records them lost and gives them
        // up, so the failed member holds nothing any more.
        let report = a.rebuild(Arc::new(JobControl::new(0))).unwrap();
        assert_eq!(report.lost, failed, "{}", what("rebuild report"));
        let st = a.status();
        assert_eq!(ranges(&st.lost), failed);
        assert!(st.unreadable.is_empty(), "{:?}", st.unreadable);
        assert_eq!(st.members[1].used, 0);
        assert_eq!(readable_except(&a, &model, &what("after rebuild")), failed);
        // The members left are full: a lost chunk cannot be written again until there is
        // room (the failed member stays, counted for the volume, until a spare comes).
        assert!(matches!(
            a.write_at(&[5u8; 4096], bad),
            Err(Error::NoSpace(_))
        ));
        assert_eq!(st.members[1].state, MemberHealth::Failed);
        drop(a);

        // All of it holds across a restart without the failed member.
        let a = Array::assemble(rig.devs(&[1]), AssembleOptions::default()).unwrap();
        assert_eq!(ranges(&a.status().lost), failed);
        assert_eq!(readable_except(&a, &model, &what("reopened")), failed);
    }
}

#[test]
fn a_missing_member_makes_its_chunks_unreadable_until_it_returns() {
    let rig = Rig::sized(&[12 * MIB, 20 * MIB, 16 * MIB]);
    let a = create_single(&rig, true, None);
    let model = fill(&a, 5);
    drop(a);
    let a = rig.assemble(&[2]);
    let st = a.status();
    let failed = readable_except(&a, &model, "member 2 missing");
    assert!(!failed.is_empty());
    assert_eq!(ranges(&st.unreadable), failed);
    assert_eq!(
        failed.iter().map(|r| r.1).sum::<u64>(),
        st.members[2].used,
        "exactly the chunks on the missing member"
    );
    drop(a);
    let a = rig.assemble(&[]);
    assert!(a.status().unreadable.is_empty());
    assert!(readable_except(&a, &model, "member back").is_empty());
    assert_eq!(a.health(), Health::Ok);
    drop(a);
    // A write while it is missing makes it stale (it is not read again): its chunks stay
    // unreadable, EIO, never old or wrong data; the write to one of them is refused.
    let a = rig.assemble(&[2]);
    assert!(matches!(
        a.write_at(&[1u8; 512], failed[0].0 + 100),
        Err(Error::Unavailable(_))
    ));
    drop(a);
    let a = rig.assemble(&[]);
    assert_eq!(a.status().members[2].state, MemberHealth::Stale);
    assert_eq!(readable_except(&a, &model, "stale member back"), failed);
}

/// With room left, new single chunks go only to members that are there.
#[test]
fn new_chunks_avoid_a_failed_member() {
    let rig = Rig::sized(&[16 * MIB, 16 * MIB, 48 * MIB]);
    let a = create_single(&rig, true, Some(24 * MIB));
    let part = pattern(3, 4 * MIB as usize);
    a.write_at(&part, 0).unwrap();
    a.flush().unwrap();
    // Member 2 (the largest) took the first chunks; fail it and write on.
    assert!(a.status().members[2].used > 0);
    a.fail_member(2, "test", true).unwrap();
    let more = pattern(4, 8 * MIB as usize);
    a.write_at(&more, 8 * MIB).unwrap();
    a.flush().unwrap();
    let mut back = vec![0u8; more.len()];
    a.read_at(&mut back, 8 * MIB).unwrap();
    assert!(back == more);
    let st = a.status();
    assert!(st.members[0].used + st.members[1].used >= 8 * MIB);
    let lost = ranges(&st.unreadable);
    assert_eq!(lost.iter().map(|r| r.1).sum::<u64>(), st.members[2].used);

    // The rebuild gives member 2's chunks up (lost); there is room on the others, so the
    // failed member, holding nothing, leaves the array, and a lost chunk written whole is
    // good again.
    let report = a.rebuild(Arc::new(JobControl::new(0))).unwrap();
    assert_eq!(report.lost, lost);
    let st = a.status();
    assert_eq!(ranges(&st.lost), lost);
    assert_eq!(st.members[2].state, MemberHealth::Removed);
    let (bad, _) = lost[0];
    let mut buf = vec![0u8; 4096];
    assert!(matches!(a.read_at(&mut buf, bad), Err(Error::Lost(_))));
    // Out of the map, yet no hole: a client told "zeros here" would not read the EIO.
    assert!(!a.is_unallocated(bad, CHUNK));
    assert_eq!(a.allocation_runs(bad, CHUNK), vec![(CHUNK, true)]);
    let fresh = pattern(99, CHUNK as usize);
    a.write_at(&fresh, bad).unwrap();
    a.flush().unwrap();
    let mut left = lost.clone();
    left[0] = (bad + CHUNK, left[0].1 - CHUNK);
    left.retain(|r| r.1 > 0);
    assert_eq!(ranges(&a.status().lost), left);
    drop(a);
    let a = Array::assemble(rig.devs(&[2]), AssembleOptions::default()).unwrap();
    let mut back = vec![0u8; CHUNK as usize];
    a.read_at(&mut back, bad).unwrap();
    assert!(back == fresh);
    assert_eq!(ranges(&a.status().lost), left);
    a.read_at(&mut back[..more.len().min(CHUNK as usize)], 8 * MIB)
        .unwrap();
    assert!(back[..] == more[..CHUNK as usize]);
}

fn template(level: Level) -> Template {
    Template {
        level,
        copies: level.default_copies(),
        stripe_unit: 64 << 10,
    }
}

fn convert(a: &Array, level: Level, force: bool) {
    let change = Change {
        template: Some(template(level)),
        remove: Vec::new(),
        balance: false,
        grow: false,
        no_spares: false,
        volume: None,
    };
    a.start_reshape(&change, force).unwrap();
    let plan = a.reshape(Arc::new(JobControl::new(0))).unwrap();
    assert_eq!(plan.stuck, 0);
    assert!(!a.reshape_pending());
    let st = a.status();
    assert_eq!((st.level, st.chunks_to_move), (level, 0));
}

#[test]
fn convert_single_to_raid1_and_raid5_and_back() {
    let rig = Rig::sized(&[24 * MIB, 32 * MIB, 24 * MIB, 28 * MIB]);
    // A volume raid1 can hold too: half of what the members have, less room to work in.
    let a = create_single(&rig, true, Some(40 * MIB));
    let model = fill(&a, 21);

    convert(&a, Level::Raid1, false);
    assert_eq!(a.status().tolerance, 1);
    assert!(readable_except(&a, &model, "raid1").is_empty());
    // The redundancy is real: without any one member every chunk reads.
    drop(a);
    for gone in 0..4 {
        let a = rig.assemble(&[gone]);
        assert!(readable_except(&a, &model, &format!("raid1 without {gone}")).is_empty());
    }
    let a = rig.assemble(&[]);

    // Back to single lowers redundancy: refused without force.
    let change = Change {
        template: Some(template(Level::Single)),
        remove: Vec::new(),
        balance: false,
        grow: false,
        no_spares: false,
        volume: None,
    };
    assert!(a.start_reshape(&change, false).is_err());
    convert(&a, Level::Single, true);
    let st = a.status();
    assert_eq!(st.tolerance, 0);
    assert!(readable_except(&a, &model, "single again").is_empty());
    // Each chunk is one slice again: the slices add up to the volume.
    assert_eq!(st.members.iter().map(|m| m.used).sum::<u64>(), a.size());

    convert(&a, Level::Raid5, false);
    assert_eq!(a.status().tolerance, 1);
    assert!(readable_except(&a, &model, "raid5").is_empty());
    drop(a);
    let a = rig.assemble(&[1]);
    assert!(readable_except(&a, &model, "raid5 without 1").is_empty());
}

/// Scrub verifies single chunks by their checksums; with no redundancy a bad block cannot
/// be repaired: it is counted, recorded lost and reads as EIO, never as the bad bytes.
#[test]
fn scrub_finds_a_bad_block_and_cannot_repair_it() {
    let rig = Rig::new(2, 16 * MIB);
    let a = create_single(&rig, true, None);
    let model = fill(&a, 31);
    // Find a data block on member 0 by its contents (the pattern's blocks are unique) and
    // flip a byte of it.
    let by_content: std::collections::HashMap<&[u8], u64> = model
        .chunks(4096)
        .enumerate()
        .map(|(b, d)| (d, b as u64 * 4096))
        .collect();
    let snap = rig.members[0].snapshot();
    let (at, voff) = snap
        .chunks(4096)
        .enumerate()
        .find_map(|(b, d)| by_content.get(d).map(|&v| (b as u64 * 4096, v)))
        .expect("a data block on member 0");
    rig.members[0]
        .write_at(&[snap[at as usize + 100] ^ 0x40], at + 100)
        .unwrap();
    let report = a.scrub(Arc::new(JobControl::new(0))).unwrap();
    assert!(report.complete);
    assert_eq!((report.repaired, report.unrecoverable), (0, 1));
    assert_eq!(ranges(&a.status().lost), vec![(voff, 4096)]);
    let mut buf = vec![0u8; 4096];
    assert!(a.read_at(&mut buf, voff).is_err());
    // The block's neighbours are fine.
    a.read_at(&mut buf, voff ^ 4096).unwrap();
    assert!(buf[..] == model[(voff ^ 4096) as usize..][..4096]);
}

/// Writes taken but not yet committed when their chunk's member fails cannot reach it:
/// they leave the commit, which goes on for the rest, and their range is recorded lost —
/// it reads as EIO, never as the older data nor as zeros.
#[test]
fn dirty_blocks_of_a_chunk_whose_member_fails_are_lost_not_stale() {
    let rig = Rig::sized(&[16 * MIB, 16 * MIB]);
    let a = create_single(&rig, true, None);
    let model = fill(&a, 41);
    let st = a.status();
    assert!(st.members[0].used > 0 && st.members[1].used > 0);
    // A chunk on member 0 and one on member 1, found by their first blocks' contents.
    let first_on = |m: usize| {
        let snap = rig.members[m].snapshot();
        let heads: std::collections::HashSet<&[u8]> = snap.chunks(4096).collect();
        (0..a.size() / CHUNK)
            .map(|i| i * CHUNK)
            .find(|&o| heads.contains(&model[o as usize..o as usize + 4096]))
            .expect("a chunk on the member")
    };
    let (x, y) = (first_on(0), first_on(1));
    a.write_at(&[3u8; 8192], x + 4096).unwrap();
    a.write_at(&[4u8; 8192], y + 4096).unwrap();
    a.fail_member(0, "test", true).unwrap();
    a.flush().unwrap();
    let st = a.status();
    assert_eq!(ranges(&st.lost), vec![(x + 4096, 8192)]);
    let mut buf = vec![0u8; 8192];
    assert!(matches!(a.read_at(&mut buf, x + 4096), Err(Error::Lost(_))));
    a.read_at(&mut buf, y + 4096).unwrap();
    assert!(buf.iter().all(|&b| b == 4));
    // The neighbours of y's write are as they were.
    a.read_at(&mut buf[..4096], y).unwrap();
    assert!(buf[..4096] == model[y as usize..y as usize + 4096]);
}

/// Two single volumes on two members, each filled with a pattern of its own; returns the
/// array, the volumes' ids, a volume offset of the first whose chunk is on member 0 and
/// one of the second whose chunk is on member 1.
fn two_volumes(rig: &Rig) -> (Arc<Array>, u32, u32, u64, u64) {
    two_volumes_on(rig, rig.devs(&[]))
}

/// [`two_volumes`] on `devs` (the rig's members, wrapped).
fn two_volumes_on(rig: &Rig, devs: Vec<Dev>) -> (Arc<Array>, u32, u32, u64, u64) {
    let mut o = CreateOptions::new(Level::Single);
    o.chunk_size = Some(CHUNK);
    o.name = "tank".into();
    o.no_volume = true;
    let a = Array::create(devs, &o).expect("create");
    let spec = |name: &str| VolumeSpec {
        name: name.into(),
        template: Template {
            level: Level::Single,
            copies: 1,
            stripe_unit: 64 << 10,
        },
        size: VolumeSize::Bytes(8 * MIB),
        thin: false,
    };
    a.create_volume(&spec("a")).unwrap();
    a.create_volume(&spec("b")).unwrap();
    let ids: Vec<u32> = a.volume_list().iter().map(|v| v.id).collect();
    let models: Vec<Vec<u8>> = (0..2).map(|k| pattern(51 + k, 8 * MIB as usize)).collect();
    for (&id, model) in ids.iter().zip(&models) {
        a.volume_write(id, model, 0).unwrap();
    }
    a.flush().unwrap();
    let on = |m: usize, model: &[u8]| {
        let snap = rig.members[m].snapshot();
        let heads: std::collections::HashSet<&[u8]> = snap.chunks(4096).collect();
        (0..8 * MIB / CHUNK)
            .map(|i| i * CHUNK)
            .find(|&o| heads.contains(&model[o as usize..o as usize + 4096]))
            .expect("a chunk of the volume on the member")
    };
    let (x, y) = (on(0, &models[0]), on(1, &models[1]));
    (Arc::new(a), ids[0], ids[1], x, y)
}

/// A FLUSH must not answer success when a commit dropped writes it covers (their chunk's
/// only member failed after they were taken): each observer's next flush fails once —
/// whether that flush's commit dropped them or an earlier one did — an observer that came
/// after the loss is not told of it, another volume's observers are not either, and the
/// range reads as EIO.
#[test]
fn a_flush_fails_once_per_observer_after_a_commit_dropped_its_writes() {
    let rig = Rig::sized(&[24 * MIB, 24 * MIB]);
    let (a, va, vb, x, y) = two_volumes(&rig);
    let (conn, other_conn, b_conn) = (a.flush_token(va), a.flush_token(va), a.flush_token(vb));
    a.volume_write(va, &[3u8; 8192], x + 4096).unwrap();
    a.volume_write(vb, &[4u8; 8192], y + 4096).unwrap();
    a.fail_member(0, "test", true).unwrap();
    let e = a
        .flush_with(&conn)
        .expect_err("the flush that dropped the writes");
    assert!(matches!(e, Error::Lost(_)), "{e}");
    a.flush_with(&conn).expect("told once");
    a.flush_with(&a.flush_token(va)).expect("a later observer");
    assert!(
        matches!(a.flush_with(&other_conn), Err(Error::Lost(_))),
        "another observer there at the loss is told too"
    );
    a.flush_with(&other_conn).unwrap();
    a.flush_with(&b_conn).expect("volume b lost nothing");
    let mut buf = vec![0u8; 8192];
    assert!(matches!(
        a.volume_read(va, &mut buf, x + 4096),
        Err(Error::Lost(_))
    ));
    a.volume_read(vb, &mut buf, y + 4096).unwrap();
    assert!(buf.iter().all(|&b| b == 4));
}

/// A commit of the background committer (no FLUSH asked for it) that drops writes makes
/// the next flush of each observer fail.
#[test]
fn a_background_commit_that_drops_writes_fails_the_next_flush() {
    let rig = Rig::sized(&[24 * MIB, 24 * MIB]);
    let (a, va, _, x, _) = two_volumes(&rig);
    let conn = a.flush_token(va);
    a.spawn_flusher(std::time::Duration::from_millis(20));
    a.volume_write(va, &[3u8; 8192], x + 4096).unwrap();
    a.fail_member(0, "test", true).unwrap();
    let t = std::time::Instant::now();
    while a.status().lost.is_empty() {
        assert!(t.elapsed().as_secs() < 20, "no background commit");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(matches!(a.flush_with(&conn), Err(Error::Lost(_))));
    a.flush_with(&conn).unwrap();
    let mut buf = vec![0u8; 8192];
    assert!(matches!(
        a.volume_read(va, &mut buf, x + 4096),
        Err(Error::Lost(_))
    ));
}

/// Writes buffered for a chunk whose member fails and that a rebuild then gives up (before
/// any commit took them) are lost with it: the next flush of each observer fails, the
/// range reads as EIO, and no fresh chunk is allocated for them.
#[test]
fn a_rebuild_giving_up_a_chunk_with_buffered_writes_fails_the_next_flush() {
    let rig = Rig::sized(&[24 * MIB, 24 * MIB]);
    let (a, va, vb, x, _) = two_volumes(&rig);
    let (conn, b_conn) = (a.flush_token(va), a.flush_token(vb));
    a.volume_write(va, &[3u8; 8192], x + 4096).unwrap();
    a.fail_member(0, "test", true).unwrap();
    let chunks = a.status().chunks_allocated;
    let report = a.rebuild(Arc::new(JobControl::new(0))).unwrap();
    assert!(!report.lost.is_empty());
    assert!(matches!(a.flush_with(&conn), Err(Error::Lost(_))));
    a.flush_with(&conn).unwrap();
    // b's chunks on member 0 were given up too, but nothing written to b was buffered.
    a.flush_with(&b_conn).expect("nothing of b's was dropped");
    let st = a.status();
    assert!(st.chunks_allocated < chunks, "given-up chunks left the map");
    let mut buf = vec![0u8; 8192];
    assert!(matches!(
        a.volume_read(va, &mut buf, x + 4096),
        Err(Error::Lost(_))
    ));
    assert_eq!(
        a.status().chunks_allocated,
        st.chunks_allocated,
        "no fresh chunk for the dropped writes"
    );
}

/// A member failed (`fail --force`) while a commit writes to it, a `single` chunk's only
/// member: what the commit wrote there is lost with the chunk, so the flush fails although
/// the commit went through.
#[test]
fn a_member_failed_during_the_commit_fails_the_flush() {
    let rig = Rig::sized(&[24 * MIB, 24 * MIB]);
    let faults: Vec<Arc<FaultMember>> = rig.devs(&[]).into_iter().map(FaultMember::new).collect();
    let devs = faults.iter().map(|f| f.clone() as Dev).collect();
    let (a, va, _, x, _) = two_volumes_on(&rig, devs);
    let conn = a.flush_token(va);
    a.volume_write(va, &[3u8; 8192], x + 4096).unwrap();
    // Each request to member 0 takes a second: the failure lands inside the commit.
    faults[0].set_delay(std::time::Duration::from_secs(1));
    let flush = {
        let a = a.clone();
        std::thread::spawn(move || a.flush_with(&conn).map(|()| conn))
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    a.fail_member(0, "test", true).unwrap();
    faults[0].set_delay(std::time::Duration::ZERO);
    let r = flush.join().unwrap();
    assert!(matches!(r, Err(Error::Lost(_))), "{r:?}");
    let mut buf = vec![0u8; 8192];
    assert!(a.volume_read(va, &mut buf, x + 4096).is_err());
}
