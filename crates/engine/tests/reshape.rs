//! Reshape: level conversion, evacuation (remove) and balance as chunk moves, checked
//! against the data written and against `plan`'s forecast.

mod common;

use damocles_engine::{
    Array, AssembleOptions, Change, CreateOptions, Dev, Health, JobControl, Level, MemMember,
    MemberHealth,
};
use std::sync::Arc;

const MIB: u64 = 1 << 20;

fn mems(n: usize, size: u64) -> Vec<Arc<MemMember>> {
    (0..n)
        .map(|i| Arc::new(MemMember::new(format!("m{i}"), size)))
        .collect()
}

fn devs(m: &[Arc<MemMember>]) -> Vec<Dev> {
    m.iter().map(|m| m.clone() as Dev).collect()
}

fn create(m: &[Arc<MemMember>], level: Level) -> Array {
    let mut o = CreateOptions::new(level);
    o.stripe_unit = 16 << 10;
    o.chunk_size = Some(1 << 20);
    Array::create(devs(m), &o).unwrap()
}

/// Adds `n` members of `size` that hold data at once (`add --grow`).
fn grow(a: &Array, m: &mut Vec<Arc<MemMember>>, n: usize, size: u64) {
    for _ in 0..n {
        let d = Arc::new(MemMember::new(format!("m{}", m.len()), size));
        m.push(d.clone());
        a.add_member_grow(d as Dev, false).unwrap();
    }
}

fn read_all(a: &Array) -> Vec<u8> {
    let mut v = vec![0u8; a.size() as usize];
    a.read_at(&mut v, 0).unwrap();
    v
}

fn template(level: Level) -> damocles_engine::layout::chunkmap::Template {
    damocles_engine::layout::chunkmap::Template {
        level,
        copies: level.default_copies(),
        stripe_unit: 16 << 10,
    }
}

fn run(a: &Array) -> damocles_engine::Plan {
    a.reshape(Arc::new(JobControl::new(0))).unwrap()
}

/// A raid0 over two members of `size`, filled with pattern `seed` and flushed, then two
/// more members of `size` added with `add --grow`: the members, the array and its data.
fn full_raid0_plus_two(size: u64, seed: u64) -> (Vec<Arc<MemMember>>, Array, Vec<u8>) {
    let mut m = mems(2, size);
    let a = create(&m, Level::Raid0);
    let model = common::pattern(seed, a.size() as usize);
    a.write_at(&model, 0).unwrap();
    a.flush().unwrap();
    grow(&a, &mut m, 2, size);
    (m, a, model)
}

/// The seed scenario in the engine: a full 2-member raid0 gets two more members and
/// becomes raid5 over four; the forecast is what happens; one more failure is survived.
#[test]
fn full_raid0_to_raid5_over_four() {
    let (m, a, model) = full_raid0_plus_two(12 * MIB, 1);
    let change = Change {
        template: Some(template(Level::Raid5)),
        ..Default::default()
    };
    let f = a.forecast(&change).unwrap();
    assert!(f.refusals.is_empty(), "{f:?}");
    assert_eq!((f.tolerance_before, f.tolerance_after), (0, 1));
    assert_eq!(f.plan.stuck, 0);
    a.start_reshape(&change, false).unwrap();
    let done = run(&a);
    assert_eq!(done, f.plan, "the plan is what the reshape did");
    let st = a.status();
    assert_eq!(st.level, Level::Raid5);
    assert_eq!(st.tolerance, 1);
    assert_eq!(read_all(&a), model);
    // Redundant now: any one member can go.
    drop(a);
    for gone in 0..4 {
        let d: Vec<Dev> = (0..4)
            .filter(|&i| i != gone)
            .map(|i| m[i].clone() as Dev)
            .collect();
        let a = Array::assemble(d, AssembleOptions::default()).unwrap();
        assert_eq!(a.health(), Health::Degraded);
        assert_eq!(read_all(&a), model, "without member {gone}");
    }
}

/// Large enough for several groups of moves (64 MiB of new slices each): each group is one
/// commit, the groups are what `plan` forecast, and a restart between them loses nothing.
#[test]
fn moves_go_in_groups_of_one_commit() {
    let (m, a, model) = full_raid0_plus_two(72 * MIB, 7);
    let change = Change {
        template: Some(template(Level::Raid5)),
        ..Default::default()
    };
    let f = a.forecast(&change).unwrap();
    assert!(f.refusals.is_empty(), "{f:?}");
    assert!(f.plan.bytes_written > 2 * 64 * MIB, "{f:?}");
    a.start_reshape(&change, false).unwrap();
    // Pausing after a few MiB commits the moves made so far: a group cut short.
    let ctl = Arc::new(JobControl::new(0));
    let pauser = {
        let ctl = ctl.clone();
        std::thread::spawn(move || {
            while ctl.progress().done < 8 * MIB {
                std::thread::yield_now();
            }
            ctl.cancel();
        })
    };
    let first = a.reshape(ctl).unwrap();
    pauser.join().unwrap();
    assert!(first.moves > 0 && first.moves < f.plan.moves, "{first:?}");
    drop(a);
    let a = Array::assemble(devs(&m), AssembleOptions::default()).unwrap();
    assert_eq!(read_all(&a), model, "after the pause");
    let gen = a.status().generation;
    let rest = a.forecast(&Change::default()).unwrap().plan;
    let done = run(&a);
    assert_eq!(done, rest, "the plan is what the reshape did");
    assert_eq!(done.moves + first.moves, f.plan.moves);
    // Groups are small while free space is (each move needs room beside the old chunk,
    // held until the commit) and grow as commits free the old places.
    let commits = a.status().generation - gen;
    assert!(
        commits < done.moves as u64 / 8,
        "{commits} commits for {} moves",
        done.moves
    );
    assert_eq!(a.status().level, Level::Raid5);
    assert_eq!(read_all(&a), model);
}

#[test]
fn lowering_redundancy_or_outgrowing_the_members_is_refused() {
    let m = mems(4, 8 * MIB);
    let a = create(&m, Level::Raid5);
    let model = common::pattern(2, a.size() as usize / 2);
    a.write_at(&model, 0).unwrap();
    a.flush().unwrap();
    let to = |l| Change {
        template: Some(template(l)),
        ..Default::default()
    };
    let e = a.start_reshape(&to(Level::Raid0), false).unwrap_err();
    assert!(e.to_string().contains("--force"), "{e}");
    let e = a.start_reshape(&to(Level::Raid6), true).unwrap_err();
    assert!(e.to_string().contains("add members"), "{e}");
    // Nothing was recorded: the array is as it was.
    assert_eq!(a.status().level, Level::Raid5);
    assert!(!a.reshape_pending());
    // With force, lowering goes ahead.
    a.start_reshape(&to(Level::Raid0), true).unwrap();
    run(&a);
    assert_eq!(a.status().tolerance, 0);
    let mut got = vec![0u8; model.len()];
    a.read_at(&mut got, 0).unwrap();
    assert_eq!(got, model);
}

#[test]
fn remove_evacuates_a_working_member() {
    let m = mems(5, 8 * MIB);
    // Room to spare: the volume is half of what the members hold.
    let full = create(&m, Level::Raid5).size();
    let mut o = CreateOptions::new(Level::Raid5);
    o.stripe_unit = 16 << 10;
    o.chunk_size = Some(1 << 20);
    o.size = Some(full / 2);
    o.force = true;
    let a = Array::create(devs(&m), &o).unwrap();
    let model = common::pattern(3, a.size() as usize / 2);
    a.write_at(&model, 0).unwrap();
    a.flush().unwrap();
    let change = Change {
        remove: vec![4],
        ..Default::default()
    };
    let f = a.forecast(&change).unwrap();
    assert!(f.refusals.is_empty(), "{f:?}");
    a.start_reshape(&change, false).unwrap();
    // Writes go on meanwhile and avoid the leaving member.
    let more = common::pattern(4, 1 << 20);
    a.write_at(&more, a.size() - (1 << 20)).unwrap();
    let done = run(&a);
    assert_eq!(done.stuck, 0);
    let st = a.status();
    assert_eq!(st.members[4].state, MemberHealth::Removed, "{st:?}");
    assert_eq!(st.members[4].used, 0);
    let mut got = vec![0u8; model.len()];
    a.read_at(&mut got, 0).unwrap();
    assert_eq!(got, model);
    let mut got = vec![0u8; more.len()];
    a.read_at(&mut got, a.size() - (1 << 20)).unwrap();
    assert_eq!(got, more);

    // Removing a member whose space the volume needs is refused, with the numbers.
    let e = a
        .start_reshape(
            &Change {
                remove: vec![0, 1],
                ..Default::default()
            },
            true,
        )
        .unwrap_err();
    assert!(e.to_string().contains("less than the volume"), "{e}");
}

#[test]
fn balance_spreads_chunks_over_added_members() {
    let mut m = mems(3, 8 * MIB);
    let a = create(&m, Level::Raid5);
    let model = common::pattern(5, a.size() as usize * 2 / 3);
    a.write_at(&model, 0).unwrap();
    a.flush().unwrap();
    grow(&a, &mut m, 2, 8 * MIB);
    let change = Change {
        balance: true,
        ..Default::default()
    };
    let f = a.forecast(&change).unwrap();
    assert!(f.plan.moves > 0, "{f:?}");
    a.start_reshape(&change, false).unwrap();
    let done = run(&a);
    assert_eq!(done, f.plan);
    let st = a.status();
    assert!(st.members[3].used > 0 && st.members[4].used > 0, "{st:?}");
    assert!(!a.reshape_pending());
    let mut got = vec![0u8; model.len()];
    a.read_at(&mut got, 0).unwrap();
    assert_eq!(got, model);
}

#[test]
fn a_paused_reshape_resumes_after_reassembly() {
    let mut m = mems(2, 12 * MIB);
    let a = create(&m, Level::Raid1);
    let model = common::pattern(6, a.size() as usize);
    a.write_at(&model, 0).unwrap();
    a.flush().unwrap();
    grow(&a, &mut m, 2, 12 * MIB);
    a.start_reshape(
        &Change {
            template: Some(template(Level::Raid5)),
            ..Default::default()
        },
        false,
    )
    .unwrap();
    // Cancel once a few moves are done.
    let ctl = Arc::new(JobControl::new(4 << 20));
    let c2 = ctl.clone();
    let stopper = std::thread::spawn(move || {
        while c2.progress().done < (3 << 20) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        c2.cancel();
    });
    let first = a.reshape(ctl).unwrap();
    stopper.join().unwrap();
    assert!(first.moves > 0);
    assert!(a.reshape_pending());
    drop(a);
    let a = Array::assemble(devs(&m), AssembleOptions::default()).unwrap();
    assert!(a.reshape_pending(), "the goal is in the metadata");
    let rest = run(&a);
    assert!(rest.moves > 0 && rest.stuck == 0, "{rest:?}");
    assert!(!a.reshape_pending());
    assert_eq!(read_all(&a), model);
    assert_eq!(a.status().level, Level::Raid5);
}

/// Hot spares added with plain `add` are taken by a conversion that needs their room (as
/// mdadm's `--grow` takes spares), and the forecast says so; a conversion that fits on the
/// active members leaves the spares alone.
#[test]
fn convert_takes_hot_spares_when_the_new_layout_needs_them() {
    let mut m = mems(2, 12 * MIB);
    let a = create(&m, Level::Raid0);
    let model = common::pattern(7, a.size() as usize);
    a.write_at(&model, 0).unwrap();
    a.flush().unwrap();
    // Spares a little larger than the members: the moves need room to work in beside the
    // full raid0 (each member also keeps its tail superblock copies).
    for _ in 0..2 {
        let d = Arc::new(MemMember::new(format!("m{}", m.len()), 13 * MIB));
        m.push(d.clone());
        a.add_member(d as Dev, false).unwrap();
    }
    assert!(a
        .status()
        .members
        .iter()
        .skip(2)
        .all(|s| s.state == MemberHealth::Spare));
    let to_raid1 = Change {
        template: Some(template(Level::Raid1)),
        ..Default::default()
    };
    // Kept out with no_spares, the refusal says how many members are missing and that
    // spares were left out.
    let f = a
        .forecast(&Change {
            no_spares: true,
            ..to_raid1.clone()
        })
        .unwrap();
    let r = f.refusals.join("; ");
    assert!(
        r.contains("2 more members as large as the largest needed")
            && r.contains("2 hot spares left out by --no-spares"),
        "{r}"
    );
    // raid1 over the two active members cannot hold the data: the spares are needed too.
    let f = a.forecast(&to_raid1).unwrap();
    assert!(f.refusals.is_empty(), "{:?}", f.refusals);
    assert!(
        f.warnings
            .iter()
            .any(|w| w.contains("hot spares [2, 3] become members")),
        "{:?}",
        f.warnings
    );
    let change = Change {
        template: Some(template(Level::Raid5)),
        ..Default::default()
    };
    let f = a.start_reshape(&change, false).unwrap();
    assert!(
        f.warnings.iter().any(|w| w.contains("hot spares")),
        "{:?}",
        f.warnings
    );
    run(&a);
    assert_eq!(read_all(&a), model);
    let st = a.status();
    assert_eq!(st.tolerance, 1);
    assert!(
        st.members.iter().all(|s| s.state == MemberHealth::Ok),
        "{st:?}"
    );
    a.fail_member(1, "test", false).unwrap();
    assert_eq!(read_all(&a), model);

    // Enough room on the active members: a spare stays a spare.
    let m = mems(4, 12 * MIB);
    let b = create(&m[..3], Level::Raid1);
    b.add_member(m[3].clone() as Dev, false).unwrap();
    let f = b
        .start_reshape(
            &Change {
                template: Some(template(Level::Raid5)),
                ..Default::default()
            },
            false,
        )
        .unwrap();
    assert!(
        !f.warnings.iter().any(|w| w.contains("hot spare")),
        "{:?}",
        f.warnings
    );
    run(&b);
    assert_eq!(b.status().members[3].state, MemberHealth::Spare);
}
