//! Growing the volume: mixed-size member sets reach a fresh array's capacity after a
//! balance, a larger replacement grows capacity, and what cannot be done safely is refused.

mod common;

use damocles_engine::{
    Array, AssembleOptions, Change, CreateOptions, Dev, JobControl, Level, MemMember,
};
use std::sync::Arc;

const MIB: u64 = 1 << 20;
/// "1 TB", scaled down.
const UNIT: u64 = 16 * MIB;

fn mem(name: usize, size: u64) -> Arc<MemMember> {
    Arc::new(MemMember::new(format!("m{name}"), size))
}

fn devs(m: &[Arc<MemMember>]) -> Vec<Dev> {
    m.iter().map(|m| m.clone() as Dev).collect()
}

fn opts(level: Level) -> CreateOptions {
    let mut o = CreateOptions::new(level);
    o.stripe_unit = 16 << 10;
    o.chunk_size = Some(MIB);
    o
}

/// The size a fresh array of `level` gets on members of these sizes.
fn fresh_size(level: Level, units: &[u64]) -> u64 {
    let m: Vec<Arc<MemMember>> = units
        .iter()
        .enumerate()
        .map(|(i, u)| mem(100 + i, u * UNIT))
        .collect();
    Array::create(devs(&m), &opts(level)).unwrap().size()
}

fn read_all(a: &Array, len: u64) -> Vec<u8> {
    let mut v = vec![0u8; len as usize];
    a.read_at(&mut v, 0).unwrap();
    v
}

fn run_reshape(a: &Array) -> damocles_engine::Plan {
    a.reshape(Arc::new(JobControl::new(0))).unwrap()
}

/// 1 + 2 + 3 style: an array on the small members, full, then a big one joins with
/// `balance --grow`: the volume ends where a fresh array over all of them would be, and the
/// forecast said so.
#[test]
fn mixed_sizes_reach_a_fresh_arrays_capacity_after_balance() {
    for (level, units) in [(Level::Raid1, vec![1, 2]), (Level::Raid5, vec![1, 1, 2])] {
        let mut m: Vec<Arc<MemMember>> = units
            .iter()
            .enumerate()
            .map(|(i, u)| mem(i, u * UNIT))
            .collect();
        let a = Array::create(devs(&m), &opts(level)).unwrap();
        let before = a.size();
        let model = common::pattern(11, before as usize);
        a.write_at(&model, 0).unwrap();
        a.flush().unwrap();
        let big = mem(units.len(), 3 * UNIT);
        m.push(big.clone());
        a.add_member_grow(big as Dev, false).unwrap();
        let change = Change {
            balance: true,
            grow: true,
            ..Default::default()
        };
        let f = a.forecast(&change).unwrap();
        assert!(f.refusals.is_empty(), "{level}: {f:?}");
        a.start_reshape(&change, false).unwrap();
        assert!(a.status().grow_after_reshape);
        let done = run_reshape(&a);
        assert_eq!(done, f.plan, "{level}: the plan is what the balance did");
        assert_eq!(
            a.size(),
            f.size_after,
            "{level}: the forecast size is the size"
        );
        let all_units: Vec<u64> = units.iter().copied().chain([3]).collect();
        let want = fresh_size(level, &all_units);
        assert!(
            a.size().abs_diff(want) <= 2 * MIB && a.size() > before,
            "{level}: grew from {before} to {}, a fresh array holds {want}",
            a.size()
        );
        assert!(!a.reshape_pending() && !a.status().grow_after_reshape);
        // Old data intact, the new space reads as zeros and holds data.
        assert_eq!(read_all(&a, before), model);
        let mut tail = vec![1u8; (a.size() - before) as usize];
        a.read_at(&mut tail, before).unwrap();
        assert!(tail.iter().all(|&b| b == 0));
        let more = common::pattern(12, tail.len());
        a.write_at(&more, before).unwrap();
        a.flush().unwrap();
        let size = a.size();
        drop(a);
        let a = Array::assemble(devs(&m), AssembleOptions::default()).unwrap();
        assert_eq!(a.size(), size, "{level}: the size is in the metadata");
        let mut all = model.clone();
        all.extend_from_slice(&more);
        assert_eq!(read_all(&a, size), all);
    }
}

/// raid1 over 1 + 2 + 3: replacing the smallest member by a 3-unit one, then `grow`.
#[test]
fn replacing_the_smallest_member_grows_capacity() {
    let mut m = vec![mem(0, UNIT), mem(1, 2 * UNIT), mem(2, 3 * UNIT)];
    let a = Array::create(devs(&m), &opts(Level::Raid1)).unwrap();
    let before = a.size();
    assert_eq!(before, fresh_size(Level::Raid1, &[1, 2, 3]));
    let model = common::pattern(13, before as usize);
    a.write_at(&model, 0).unwrap();
    a.flush().unwrap();
    let g = a.grow_forecast(None).unwrap();
    assert!(!g.refusals.is_empty(), "nothing to grow into yet: {g:?}");
    assert!(a.grow(None).is_err());

    let new = mem(3, 3 * UNIT);
    m.push(new.clone());
    a.replace_member(0, new as Dev, false).unwrap();
    a.rebuild(Arc::new(JobControl::new(0))).unwrap();
    let st = a.status();
    assert_eq!(st.members[0].state, damocles_engine::MemberHealth::Removed);
    m.remove(0);

    // `grow` at once takes what fits next to the data as it lies (here only part of it,
    // a volume grown to the last byte leaves a balance no room to work in) ...
    let g = a.grow_forecast(None).unwrap();
    assert!(g.refusals.is_empty(), "{g:?}");
    assert!(g.max_now > before && g.max_balanced > g.max_now, "{g:?}");
    let done = a.grow(Some(before + 2 * MIB)).unwrap();
    assert_eq!(done.size_after, a.size());
    assert_eq!(a.size(), before + 2 * MIB);
    // ... and `balance --grow` what a fresh raid1 over 3 + 2 + 3 holds (4 units).
    let change = Change {
        balance: true,
        grow: true,
        ..Default::default()
    };
    let f = a.forecast(&change).unwrap();
    a.start_reshape(&change, false).unwrap();
    assert_eq!(run_reshape(&a), f.plan);
    assert_eq!(a.size(), f.size_after);
    let want = fresh_size(Level::Raid1, &[3, 2, 3]);
    // (Within a chunk or two: the metadata area was sized for the members at create time.)
    assert!(a.size().abs_diff(want) <= 2 * MIB, "{} vs {want}", a.size());
    assert_eq!(read_all(&a, before), model);
    // The whole new volume can be written: the growth kept room for every chunk.
    let fill = common::pattern(14, (a.size() - before) as usize);
    a.write_at(&fill, before).unwrap();
    a.flush().unwrap();
    let size = a.size();
    drop(a);
    let a = Array::assemble(devs(&m), AssembleOptions::default()).unwrap();
    assert_eq!(a.size(), size);
    let mut all = model;
    all.extend_from_slice(&fill);
    assert_eq!(read_all(&a, size), all);
}

#[test]
fn what_cannot_grow_safely_is_refused() {
    let m = vec![mem(0, 2 * UNIT), mem(1, 2 * UNIT), mem(2, 2 * UNIT)];
    let mut o = opts(Level::Raid5);
    o.size = Some(UNIT);
    let a = Array::create(devs(&m), &o).unwrap();
    assert_eq!(a.size(), UNIT);
    let g = a.grow_forecast(None).unwrap();
    assert!(g.refusals.is_empty() && g.max_now > UNIT, "{g:?}");
    // Not smaller, not more than the members hold.
    for bad in [UNIT / 2, 3, g.max_now + MIB] {
        let e = a.grow(Some(bad)).unwrap_err().to_string();
        assert!(e.contains("shrink") || e.contains("at most"), "{bad}: {e}");
    }
    assert_eq!(a.size(), UNIT, "refusals change nothing");
    // A size between: rounded down to whole chunks.
    a.grow(Some(UNIT + 3 * MIB + 5)).unwrap();
    assert_eq!(a.size(), UNIT + 3 * MIB);
    // Degraded: refused.
    drop(a);
    let a = Array::assemble(devs(&m[..2]), AssembleOptions::default()).unwrap();
    let e = a.grow(None).unwrap_err().to_string();
    assert!(e.contains("not healthy"), "{e}");
    drop(a);
    // Read-only: refused.
    let ro = AssembleOptions {
        read_only: true,
        ..Default::default()
    };
    let a = Array::assemble(devs(&m), ro).unwrap();
    assert!(a.grow(None).is_err());
    drop(a);
    // All of it: every chunk of the grown volume can be written.
    let a = Array::assemble(devs(&m), AssembleOptions::default()).unwrap();
    a.grow(None).unwrap();
    let data = common::pattern(15, a.size() as usize);
    a.write_at(&data, 0).unwrap();
    a.flush().unwrap();
    assert_eq!(read_all(&a, a.size()), data);
}
