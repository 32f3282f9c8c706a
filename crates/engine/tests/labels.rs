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
    let plan = repair_labels(&rig.devs(&[]), true, false).unwrap();
    assert!(plan.iter().all(|r| !r.written && r.rewrites().count() == 2));
    assert!(!front_valid(rig.members[0].as_ref()));
    let done = repair_labels(&rig.devs(&[]), false, false).unwrap();
    assert!(done.iter().all(|r| r.written));
    for m in &rig.members {
        assert!(front_valid(m.as_ref()));
    }
    let again = repair_labels(&rig.devs(&[]), false, false).unwrap();
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
    let e = repair_labels(&rig.devs(&[]), false, false).unwrap_err();
    assert!(e.to_string().contains("not a damocles member"), "{e}");
}

#[test]
fn an_open_array_repairs_its_members_labels_and_stops_reporting_them() {
    let rig = Rig::new(4, 16 * MIB);
    let a = rig.create(Level::Raid6, None, 4096, 1 << 20);
    let data = pattern(3, MIB as usize);
    a.write_at(&data, 0).unwrap();
    a.flush().unwrap();
    drop(a);
    wipe_front(rig.members[0].as_ref(), 5);
    wipe_front(rig.members[3].as_ref(), 6);
    let a = rig.assemble(&[]);
    let damaged = |a: &Array| -> Vec<usize> {
        let st = a.status();
        (0..st.members.len())
            .filter(|&i| st.members[i].front_labels_damaged)
            .collect()
    };
    assert_eq!(damaged(&a), vec![0, 3]);
    // The plan names the two members' A and B copies and writes nothing.
    let plan = a.repair_labels(true, false).unwrap();
    let planned: Vec<(Option<u32>, usize)> = plan
        .iter()
        .map(|r| (r.member_index, r.rewrites().count()))
        .collect();
    assert_eq!(
        planned,
        vec![(Some(0), 2), (Some(1), 0), (Some(2), 0), (Some(3), 2)]
    );
    assert!(!front_valid(rig.members[0].as_ref()));
    assert_eq!(damaged(&a), vec![0, 3]);
    let done = a.repair_labels(false, false).unwrap();
    assert_eq!(done.iter().filter(|r| r.written).count(), 2);
    assert!(damaged(&a).is_empty());
    for m in &rig.members {
        assert!(front_valid(m.as_ref()));
    }
    // The array goes on; its data and later writes survive a restart.
    let more = pattern(4, MIB as usize);
    a.write_at(&more, MIB).unwrap();
    a.flush().unwrap();
    drop(a);
    let a = rig.assemble(&[]);
    assert!(damaged(&a).is_empty());
    let mut buf = vec![0u8; MIB as usize];
    a.read_at(&mut buf, 0).unwrap();
    assert!(buf == data);
    a.read_at(&mut buf, MIB).unwrap();
    assert!(buf == more);
}

#[test]
fn a_filesystem_over_the_front_copies_is_not_overwritten_without_force() {
    let rig = Rig::new(3, 16 * MIB);
    drop(rig.create(Level::Raid5, None, 4096, 1 << 20));
    // What mkfs.ext4 leaves: zeros, and the ext4 magic at byte 1080.
    let m = rig.members[1].as_ref();
    let mut head = vec![0u8; MIB as usize];
    head[1080..1082].copy_from_slice(&[0x53, 0xEF]);
    m.write_at(&head, 0).unwrap();
    let plan = repair_labels(&rig.devs(&[]), true, false).unwrap();
    assert!(plan[1].front_holds.as_deref().unwrap().contains("ext2/3/4"));
    assert!(plan[0].front_holds.is_none());
    let e = repair_labels(&rig.devs(&[]), false, false).unwrap_err();
    assert!(e.to_string().contains("ext2/3/4"), "{e}");
    assert!(e.to_string().contains("--force"), "{e}");
    // Refused before anything was written: the filesystem's bytes are still there.
    let mut now = vec![0u8; MIB as usize];
    m.read_at(&mut now, 0).unwrap();
    assert!(now == head);
    let done = repair_labels(&rig.devs(&[]), false, true).unwrap();
    assert!(done[1].written && !done[0].written);
    assert!(front_valid(m));
}
