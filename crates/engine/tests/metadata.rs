//! Assembly from damaged, stale, foreign and mismatched members.

mod common;
use common::*;
use damocles_engine::{
    Array, AssembleOptions, CreateOptions, Error, Health, Level, MemMember, MemberDevice,
    MemberHealth,
};
use std::sync::Arc;

/// Where each member keeps slot `k` (layout is the same on every member).
fn slot_offset(m: &MemMember, k: usize) -> u64 {
    let sb = damocles_engine::read_superblock(m).unwrap();
    sb.slot_offsets()[k]
}

fn write_some(a: &Array, n: u64) -> Vec<u8> {
    let data = pattern(n, 300_000);
    a.write_at(&data, 123_456).unwrap();
    data
}

#[test]
fn torn_newest_slot_falls_back_to_the_older_one() {
    let rig = Rig::new(4, 8 * MIB);
    let a = rig.create(Level::Raid5, None, 4096, 256 << 10);
    write_some(&a, 1);
    let generation = a.status().generation;
    assert!(generation >= 2);
    drop(a);
    // Tear the newest slot on member 0 only: it checks out the older slot, the others still
    // carry the newest, and the array assembles at the newest generation, all members ok.
    let newest = (generation % 2) as usize;
    let off = slot_offset(&rig.members[0], newest);
    rig.members[0].write_at(&[0xAA; 700], off + 100).unwrap();
    let a = rig.assemble(&[]);
    let st = a.status();
    assert_eq!(st.generation, generation);
    assert!(st.members.iter().all(|m| m.state == MemberHealth::Ok));
    assert_eq!(st.members[0].generation, Some(generation - 1));
    assert!(
        st.notes.iter().any(|n| n.contains("checksum")),
        "{:?}",
        st.notes
    );
    drop(a);
    // Tear it on every member: the whole array falls back one generation.
    for m in &rig.members {
        m.write_at(&[0x55; 64], off + 200).unwrap();
    }
    let a = rig.assemble(&[]);
    assert_eq!(a.status().generation, generation - 1);
}

#[test]
fn stale_member_is_detected_and_never_trusted() {
    let rig = Rig::new(3, 8 * MIB);
    let a = rig.create(Level::Raid1, Some(3), 4096, 256 << 10);
    let old = write_some(&a, 1);
    drop(a);
    let a = rig.assemble(&[2]);
    let new = pattern(2, old.len());
    a.write_at(&new, 123_456).unwrap();
    assert_eq!(a.health(), Health::Degraded);
    drop(a);
    // Member 2 still holds the old data and an older generation.
    let a = rig.assemble(&[]);
    let st = a.status();
    assert_eq!(st.members[2].state, MemberHealth::Stale);
    assert!(st.members[2].generation < Some(st.generation));
    assert_eq!(st.health, Health::Degraded);
    let mut buf = vec![0u8; new.len()];
    a.read_at(&mut buf, 123_456).unwrap();
    assert_eq!(buf, new);
    drop(a);
    // Even when it is the only copy left besides one, reads come from the fresh member.
    let a = rig.assemble(&[0]);
    a.read_at(&mut buf, 123_456).unwrap();
    assert_eq!(buf, new);
}

#[test]
fn garbage_and_foreign_members_are_clear_errors() {
    let rig = Rig::new(3, 8 * MIB);
    drop(rig.create(Level::Raid5, None, 4096, 256 << 10));
    // A member full of noise.
    let noise = Arc::new(MemMember::from_bytes("noise", pattern(7, 8 * MIB as usize)));
    let mut devs = rig.devs(&[]);
    devs.push(noise);
    let e = Array::assemble(devs, AssembleOptions::default()).unwrap_err();
    assert!(e.to_string().contains("not a damocles member"), "{e}");
    // An ext4 image.
    let mut img = vec![0u8; 8 * MIB as usize];
    img[1080] = 0x53;
    img[1081] = 0xEF;
    let e = Array::assemble(
        vec![Arc::new(MemMember::from_bytes("fs.img", img))],
        AssembleOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("ext2/3/4"), "{e}");
    // A member of another array.
    let other = Rig::new(3, 8 * MIB);
    drop(other.create(Level::Raid5, None, 4096, 256 << 10));
    let mut devs = rig.devs(&[2]);
    devs.push(other.members[0].clone());
    let e = Array::assemble(devs, AssembleOptions::default()).unwrap_err();
    assert!(
        matches!(e, Error::Members(_)) && e.to_string().contains("belongs to array"),
        "{e}"
    );
    // The same member twice.
    let mut devs = rig.devs(&[2]);
    devs.push(rig.members[0].clone());
    let e = Array::assemble(devs, AssembleOptions::default()).unwrap_err();
    assert!(e.to_string().contains("same member"), "{e}");
}

#[test]
fn one_damaged_superblock_copy_is_survived_two_are_an_error() {
    let rig = Rig::new(3, 8 * MIB);
    drop(rig.create(Level::Raid5, None, 4096, 256 << 10));
    rig.members[1].write_at(&[0xFF; 4096], 0).unwrap();
    let a = rig.assemble(&[]);
    assert_eq!(a.health(), Health::Ok);
    drop(a);
    let mut sb1 = vec![0u8; 4096];
    rig.members[1].read_at(&mut sb1, 4096).unwrap();
    sb1[20] ^= 1;
    rig.members[1].write_at(&sb1, 4096).unwrap();
    rig.members[1].write_at(b"DAMOCLSB", 0).unwrap();
    // Both front copies damaged: the tail copies (C, D) still find the member.
    let a = rig.assemble(&[]);
    assert_eq!(a.health(), Health::Ok);
    assert!(a.status().members[1].front_labels_damaged);
    drop(a);
    // All four damaged: refused.
    let size = rig.members[1].size();
    let t = (size / 4096 * 4096) - (128 << 10);
    for off in [t, t + 4096] {
        let mut b = vec![0u8; 4096];
        rig.members[1].read_at(&mut b, off).unwrap();
        assert_eq!(&b[..8], b"DAMOCLSB");
        b[20] ^= 1;
        rig.members[1].write_at(&b, off).unwrap();
    }
    let e = Array::assemble(rig.devs(&[]), AssembleOptions::default()).unwrap_err();
    assert!(e.to_string().contains("damaged"), "{e}");
    // Random bytes where every superblock and slot sits never panic.
    for seed in 0..50 {
        let m = MemMember::new("x", 4 * MIB);
        m.write_at(b"DAMOCLSB", 0).unwrap();
        m.write_at(&pattern(seed, 3 * MIB as usize), 8).unwrap();
        let _ = Array::assemble(vec![Arc::new(m)], AssembleOptions::default());
    }
}

#[test]
fn too_many_missing_members_fail_the_array_but_not_the_process() {
    let rig = Rig::new(4, 8 * MIB);
    let a = rig.create(Level::Raid5, None, 4096, 256 << 10);
    let data = write_some(&a, 3);
    drop(a);
    let a = Array::assemble(
        rig.devs(&[1, 2]),
        AssembleOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(a.health(), Health::Failed);
    let mut buf = vec![0u8; data.len()];
    assert!(matches!(
        a.read_at(&mut buf, 123_456),
        Err(Error::Unavailable(_))
    ));
    // Regions never written still read as zeros.
    let mut z = vec![1u8; 4096];
    a.read_at(&mut z, a.size() - 4096).unwrap();
    assert!(z.iter().all(|&b| b == 0));
    assert!(matches!(a.write_at(&z, 0), Err(Error::ReadOnly)));
}

#[test]
fn create_refuses_impossible_and_non_empty() {
    let rig = Rig::new(3, 8 * MIB);
    let e = Array::create(rig.devs(&[]), &CreateOptions::new(Level::Raid6)).unwrap_err();
    assert!(
        e.to_string().contains("raid6 needs at least 4 members"),
        "{e}"
    );
    rig.members[1].write_at(&[1], 5000).unwrap();
    let e = Array::create(rig.devs(&[]), &CreateOptions::new(Level::Raid5)).unwrap_err();
    assert!(
        matches!(e, Error::NotEmpty { .. }) && e.to_string().contains("byte 5000"),
        "{e}"
    );
    // Nothing was written to the empty members.
    assert!(rig.members[0].snapshot().iter().all(|&b| b == 0));
    let mut o = CreateOptions::new(Level::Raid5);
    o.force = true;
    drop(Array::create(rig.devs(&[]), &o).unwrap());
    // Now it holds a damocles superblock, which create names.
    let e = Array::create(rig.devs(&[]), &CreateOptions::new(Level::Raid5)).unwrap_err();
    assert!(e.to_string().contains("damocles superblock"), "{e}");
}

#[test]
fn mixed_member_sizes_reach_full_capacity() {
    // 1 : 2 : 3 "TB", scaled to 64 MiB units, plus the 7 MiB each member carries at this
    // size (superblocks, two 1 MiB metadata slots, a 4 MiB journal).
    let unit = 64 * MIB;
    let rig = Rig::sized(&[unit + 7 * MIB, 2 * unit + 7 * MIB, 3 * unit + 7 * MIB]);
    let mut o = CreateOptions::new(Level::Raid1);
    o.chunk_size = Some(4 * MIB);
    let a = Array::create(rig.devs(&[]), &o).unwrap();
    assert_eq!(a.size(), 3 * unit);
    let rig = Rig::sized(&[unit + 7 * MIB, unit + 7 * MIB, 2 * unit + 7 * MIB]);
    let mut o = CreateOptions::new(Level::Raid5);
    o.chunk_size = Some(4 * MIB);
    let a = Array::create(rig.devs(&[]), &o).unwrap();
    // 3-wide chunks of 4 MiB need 2 MiB slices: 32 fit in each small member.
    assert_eq!(a.size(), 2 * unit);
    // And the whole capacity is really writable.
    let mut model = vec![0u8; a.size() as usize];
    for k in 0..(a.size() / (4 * MIB)) {
        let d = pattern(k, 4096);
        a.write_at(&d, k * 4 * MIB + 4096).unwrap();
        model[(k * 4 * MIB + 4096) as usize..][..4096].copy_from_slice(&d);
    }
    assert_matches(&a, &model, "mixed raid5 full");
}

#[test]
fn a_journal_device_is_required_for_writing_and_must_be_the_right_one() {
    let rig = Rig::new(4, 12 * MIB);
    let journal = Arc::new(MemMember::new("j", 4 * MIB));
    let mut o = CreateOptions::new(Level::Raid5);
    o.stripe_unit = 4096;
    o.chunk_size = Some(256 << 10);
    o.journal_device = Some(journal.clone());
    let a = Array::create(rig.devs(&[]), &o).unwrap();
    assert!(
        a.status().journal.starts_with("device"),
        "{}",
        a.status().journal
    );
    let data = write_some(&a, 4);
    drop(a);
    let with_journal = || {
        let mut d = rig.devs(&[]);
        d.push(journal.clone());
        d
    };
    // Writing without it is refused; reading without it works.
    let e = Array::assemble(rig.devs(&[]), AssembleOptions::default()).unwrap_err();
    assert!(e.to_string().contains("journal device"), "{e}");
    let ro = AssembleOptions {
        read_only: true,
        ..Default::default()
    };
    let a = Array::assemble(rig.devs(&[]), ro).unwrap();
    assert_eq!(a.status().journal, "device missing");
    let mut buf = vec![0u8; data.len()];
    a.read_at(&mut buf, 123_456).unwrap();
    assert_eq!(buf, data);
    drop(a);
    // With it, degraded too.
    let mut d = with_journal();
    d.remove(1);
    let a = Array::assemble(d, AssembleOptions::default()).unwrap();
    a.read_at(&mut buf, 123_456).unwrap();
    assert_eq!(buf, data);
    drop(a);
    // Two journal devices, or another array's, are refused.
    let mut d = with_journal();
    d.push(journal.clone());
    assert!(Array::assemble(d, AssembleOptions::default()).is_err());
    let other = Rig::new(3, 12 * MIB);
    let other_j = Arc::new(MemMember::new("oj", 4 * MIB));
    let mut o2 = CreateOptions::new(Level::Raid5);
    o2.journal_device = Some(other_j.clone());
    drop(Array::create(other.devs(&[]), &o2).unwrap());
    let mut d = rig.devs(&[]);
    d.push(other_j);
    let e = Array::assemble(d, AssembleOptions::default()).unwrap_err();
    assert!(e.to_string().contains("not the journal device"), "{e}");
    // A journal device given to an array whose journal is on its members.
    let plain = Rig::new(3, 12 * MIB);
    drop(plain.create(Level::Raid5, None, 4096, 256 << 10));
    let mut d = plain.devs(&[]);
    d.push(journal.clone());
    let e = Array::assemble(d, AssembleOptions::default()).unwrap_err();
    assert!(
        e.to_string().contains("keeps its journal on its members"),
        "{e}"
    );
}
