//! Superblock copies at both ends: a member whose first MiB was overwritten is found by
//! its tail copies, `repair_labels` restores the front, and all four gone is refused.

mod common;
use common::*;
use damocles_engine::{
    read_copies, repair_labels, Array, AssembleOptions, CopyState, Health, Level, MemberDevice,
};

fn wipe_front(m: &dyn MemberDevice, seed: u64) {
    m.write_at(&pattern(seed, MIB as usize), 0).unwrap();
}

fn front_valid(m: &dyn MemberDevice) -> bool {
    let c = read_copies(m).unwrap();
    c.copies[..2]
        .iter()
        .all(|(_, st)| matches!(st, CopyState::Valid(_)))
}

#[test]
fn first_mib_overwritten_on_one_then_every_member_assembles_and_repairs() {
    let rig = Rig::new(4, 16 * MIB);
    let a = rig.create(Level::Raid5, None, 4096, 1 << 20);
    let data = pattern(7, 2 * MIB as usize);
    a.write_at(&data, 4096 * 3).unwrap();
    a.flush().unwrap();
    drop(a);
    for m in &rig.members {
        assert_eq!(read_copies(m.as_ref()).unwrap().copies.len(), 4);
        assert!(front_valid(m.as_ref()));
    }
    // One member.
    wipe_front(rig.members[2].as_ref(), 1);
    assert!(!front_valid(rig.members[2].as_ref()));
    let a = rig.assemble(&[]);
    assert_eq!(a.health(), Health::Ok);
    let st = a.status();
    assert!(st.members[2].front_labels_damaged);
    assert!(!st.members[0].front_labels_damaged);
    assert!(st
        .notes
        .iter()
        .any(|n| n.contains("front superblock copies are damaged")));
    let mut buf = vec![0u8; data.len()];
    a.read_at(&mut buf, 4096 * 3).unwrap();
    assert!(buf == data);
    drop(a);
    // Every member.
    for (i, m) in rig.members.iter().enumerate() {
        wipe_front(m.as_ref(), 10 + i as u64);
    }
    let a = rig.assemble(&[]);
    assert_eq!(a.health(), Health::Ok);
    assert!(a.status().members.iter().all(|m| m.front_labels_damaged));
    let mut buf = vec![0u8; data.len()];
    a.read_at(&mut buf, 4096 * 3).unwrap();
    assert!(buf == data);
    drop(a);
    // A plan writes nothing; the repair rewrites exactly A and B.
    let plan = repair_labels(&rig.devs(&[]), true).unwrap();
    assert!(plan.iter().all(|r| !r.written && r.rewrites().count() == 2));
    assert!(!front_valid(rig.members[0].as_ref()));
    let done = repair_labels(&rig.devs(&[]), false).unwrap();
    assert!(done.iter().all(|r| r.written));
    for m in &rig.members {
        assert!(front_valid(m.as_ref()));
    }
    let again = repair_labels(&rig.devs(&[]), false).unwrap();
    assert!(again
        .iter()
        .all(|r| !r.written && r.rewrites().count() == 0));
    let a = rig.assemble(&[]);
    assert!(a.status().members.iter().all(|m| !m.front_labels_damaged));
    let mut buf = vec![0u8; data.len()];
    a.read_at(&mut buf, 4096 * 3).unwrap();
    assert!(buf == data);
}

#[test]
fn a_member_with_all_four_copies_destroyed_is_refused() {
    let rig = Rig::new(3, 16 * MIB);
    drop(rig.create(Level::Raid5, None, 4096, 1 << 20));
    let m = rig.members[1].as_ref();
    let t = m.size() / 4096 * 4096 - (128 << 10);
    m.write_at(&vec![0u8; MIB as usize], 0).unwrap();
    m.write_at(&vec![0u8; 8192], t).unwrap();
    let e = Array::assemble(rig.devs(&[]), AssembleOptions::default()).unwrap_err();
    assert!(e.to_string().contains("not a damocles member"), "{e}");
    let e = repair_labels(&rig.devs(&[]), false).unwrap_err();
    assert!(e.to_string().contains("not a damocles member"), "{e}");
}
