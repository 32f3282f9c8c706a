//! Metadata backup: export, import, refusals, and power cuts during an import.

mod common;
use common::*;
use damocles_engine::backup::{self, Backup};
use damocles_engine::powercut::PowerGrid;
use damocles_engine::MemberState;
use damocles_engine::{Array, Dev, Error, Level, MemMember, MemberDevice};
use std::sync::Arc;

const CHUNK: u64 = 256 << 10;
/// Written before the export (chunks 0 and 1) and after it (chunks 20 and 21, new).
const A: u64 = 100_000;
const B: u64 = 20 * CHUNK + 5000;
const LEN: usize = 400_000;

fn read(a: &Array, off: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    a.read_at(&mut buf, off).unwrap();
    buf
}

/// A raid5 with data at A, exported, then more data at B in chunks the export does not have.
fn rig_with_backup() -> (Rig, Backup, u64) {
    let rig = Rig::new(4, 8 * MIB);
    let a = rig.create(Level::Raid5, None, 16 << 10, CHUNK);
    a.write_at(&pattern(1, LEN), A).unwrap();
    a.flush().unwrap();
    drop(a);
    let b = backup::export(&rig.devs(&[])).unwrap();
    let a = rig.assemble(&[]);
    assert_eq!(b.generation, a.status().generation);
    a.write_at(&pattern(2, LEN), B).unwrap();
    a.flush().unwrap();
    let generation = a.status().generation;
    assert!(generation > b.generation);
    drop(a);
    (rig, b, generation)
}

fn snapshots(rig: &Rig) -> Vec<Vec<u8>> {
    rig.members.iter().map(|m| m.snapshot()).collect()
}

#[test]
fn export_then_import_round_trips() {
    let rig = Rig::new(4, 8 * MIB);
    let a = rig.create(Level::Raid6, None, 16 << 10, CHUNK);
    a.write_at(&pattern(1, LEN), A).unwrap();
    a.flush().unwrap();
    let st = a.status();
    drop(a);
    let b = backup::export(&rig.devs(&[])).unwrap();
    let s = b.summary();
    assert_eq!(
        (s.generation, s.chunks_allocated, s.name.as_str()),
        (st.generation, st.chunks_allocated, "test")
    );
    assert_eq!(s.members.len(), 4);
    let b = Backup::decode("f", &b.encode()).unwrap();
    let plan = backup::import(&rig.devs(&[]), &b, false).unwrap();
    assert!(!plan.rolls_back());
    assert_eq!(plan.current_generation, Some(st.generation));
    assert_eq!(plan.new_generation, st.generation + 1);
    assert!(plan.forgotten.is_empty() && plan.moved.is_empty() && plan.restored.is_empty());
    let a = rig.assemble(&[]);
    let st2 = a.status();
    assert_eq!(st2.generation, st.generation + 1);
    assert!(st2
        .members
        .iter()
        .all(|m| m.generation == Some(st2.generation)));
    assert_eq!(read(&a, A, LEN), pattern(1, LEN));
}

#[test]
fn import_after_further_writes_needs_force_and_then_restores_the_older_map() {
    let (rig, b, generation) = rig_with_backup();
    let before = snapshots(&rig);
    let plan = backup::plan_import(&rig.devs(&[]), &b).unwrap();
    assert!(plan.rolls_back());
    assert_eq!(plan.forgotten, vec![20, 21]);
    assert_eq!(plan.chunks_file + 2, plan.chunks_now.unwrap());
    let e = plan.apply(false).unwrap_err();
    assert!(
        matches!(e, Error::Invalid(_))
            && e.to_string()
                .contains("2 chunks allocated since the export")
            && e.to_string().contains("--force"),
        "{e}"
    );
    assert_eq!(snapshots(&rig), before, "a refused import wrote something");
    plan.apply(true).unwrap();
    // Only the metadata slots changed.
    let layout = damocles_engine::read_superblock(rig.members[0].as_ref()).unwrap();
    let slot = layout.slot_offsets()[((generation + 1) % 2) as usize] as usize;
    for (m, old) in rig.members.iter().zip(&before) {
        let now = m.snapshot();
        assert_eq!(now[..slot], old[..slot]);
        assert_eq!(
            now[slot + layout.slot_size as usize..],
            old[slot + layout.slot_size as usize..]
        );
    }
    let a = rig.assemble(&[]);
    let st = a.status();
    assert_eq!(st.generation, generation + 1);
    assert_eq!(st.chunks_allocated, plan.chunks_file);
    assert_eq!(read(&a, A, LEN), pattern(1, LEN));
    assert_eq!(
        read(&a, B, LEN),
        vec![0; LEN],
        "chunks after the export are forgotten"
    );
    // The restored array works: new writes land and stay.
    a.write_at(&pattern(3, LEN), B).unwrap();
    a.flush().unwrap();
    drop(a);
    let a = rig.assemble(&[]);
    assert_eq!(read(&a, B, LEN), pattern(3, LEN));
    assert_eq!(read(&a, A, LEN), pattern(1, LEN));
}

#[test]
fn overwrites_in_chunks_the_backup_has_are_kept() {
    let (rig, b, _) = rig_with_backup();
    let a = rig.assemble(&[]);
    a.write_at(&pattern(4, LEN), A).unwrap();
    drop(a);
    backup::import(&rig.devs(&[]), &b, true).unwrap();
    let a = rig.assemble(&[]);
    assert_eq!(read(&a, A, LEN), pattern(4, LEN));
}

#[test]
fn a_member_failed_since_the_export_is_a_roll_back() {
    let rig = Rig::new(4, 8 * MIB);
    drop(rig.create(Level::Raid5, None, 16 << 10, CHUNK));
    let b = backup::export(&rig.devs(&[])).unwrap();
    let a = rig.assemble(&[]);
    a.fail_member(2, "test", false).unwrap();
    drop(a);
    let plan = backup::plan_import(&rig.devs(&[]), &b).unwrap();
    assert_eq!(plan.revived, vec![2]);
    assert_eq!(plan.members[2].now, Some(MemberState::Faulty));
    assert_eq!(plan.members[2].file, Some(MemberState::Active));
    assert!(plan
        .apply(false)
        .unwrap_err()
        .to_string()
        .contains("trusted again"));
}

#[test]
fn missing_members_are_refused_without_force_and_never_written() {
    let (rig, b, generation) = rig_with_backup();
    let before = snapshots(&rig);
    let plan = backup::plan_import(&rig.devs(&[1]), &b).unwrap();
    assert_eq!(plan.missing, vec![1]);
    assert_eq!(plan.written, vec![0, 2, 3]);
    let why = plan.refusal().unwrap();
    let uuid = plan.members[1].uuid;
    assert!(
        why.contains(&format!(
            "member 1 (uuid {uuid}, active in the backup) is in the backup but not in the member list"
        )) && why.contains("rolls the array back")
            && why.contains("it then writes members 0, 2, 3 only"),
        "{why}"
    );
    let e = plan.apply(false).unwrap_err();
    assert!(
        matches!(e, Error::Members(_)) && e.to_string() == why,
        "{e}"
    );
    assert_eq!(snapshots(&rig), before, "a refused import wrote something");
    let plan = backup::import(&rig.devs(&[1]), &b, true).unwrap();
    assert_eq!(plan.missing, vec![1]);
    assert_eq!(plan.members[1].device, None);
    assert_eq!(plan.members[0].device.as_deref(), Some("m0"));
    assert_eq!(
        rig.members[1].snapshot(),
        before[1],
        "a member not given was written"
    );
    let a = rig.assemble(&[]);
    let st = a.status();
    assert_eq!(st.generation, generation + 1);
    assert_eq!(st.members[1].generation, Some(generation));
    assert_eq!(read(&a, A, LEN), pattern(1, LEN));
}

#[test]
fn wrong_array_and_late_members_are_refused() {
    let (rig, b, _) = rig_with_backup();
    let other = Rig::new(4, 8 * MIB);
    drop(other.create(Level::Raid5, None, 16 << 10, CHUNK));
    let before = snapshots(&other);
    let e = backup::import(&other.devs(&[]), &b, true).err().unwrap();
    assert!(
        matches!(e, Error::Members(_)) && e.to_string().contains("the backup is of array"),
        "{e}"
    );
    assert_eq!(snapshots(&other), before);
    // A member added after the export is not in the backup.
    let spare = Arc::new(MemMember::new("spare", 8 * MIB));
    let a = rig.assemble(&[]);
    a.add_member(spare.clone(), false).unwrap();
    drop(a);
    let mut devs = rig.devs(&[]);
    devs.push(spare);
    let e = backup::plan_import(&devs, &b).err().unwrap();
    assert!(
        e.to_string().contains("joined the array after the export"),
        "{e}"
    );
}

#[test]
fn damaged_files_are_rejected_on_load() {
    let (_rig, b, _) = rig_with_backup();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("meta.bak");
    b.save(&p, false).unwrap();
    let e = b.save(&p, false).unwrap_err();
    assert!(e.to_string().contains("exists"), "{e}");
    b.save(&p, true).unwrap();
    assert_eq!(Backup::load(&p).unwrap(), b);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[200] ^= 1;
    std::fs::write(&p, &bytes).unwrap();
    let e = Backup::load(&p).unwrap_err().to_string();
    assert!(e.contains("checksum mismatch"), "{e}");
    std::fs::write(&p, &b.encode()[..500]).unwrap();
    let e = Backup::load(&p).unwrap_err().to_string();
    assert!(e.contains("truncated"), "{e}");
}

/// A power cut at every I/O of an import: the members assemble at the old generation (old
/// map) or the new one (imported map), and the data the backup has reads back.
#[test]
fn power_cut_during_import_leaves_the_old_or_the_imported_metadata() {
    let (rig, b, generation) = rig_with_backup();
    let images = snapshots(&rig);
    let run = |cut: Option<u64>, seed: u64| -> (u64, Vec<Arc<MemMember>>) {
        damocles_engine::SERIAL_FLUSHES.store(seed | 1, std::sync::atomic::Ordering::Relaxed);
        let grid = PowerGrid::new();
        let devs: Vec<Dev> = images
            .iter()
            .enumerate()
            .map(|(i, img)| grid.member(format!("m{i}"), img.clone()) as Dev)
            .collect();
        if let Some(n) = cut {
            grid.cut_at_io(n);
        }
        let r = backup::import(&devs, &b, true);
        assert_eq!(r.is_err(), grid.is_dead(), "{:?}", r.err());
        (grid.io_count(), grid.cut(seed))
    };
    let (total, _) = run(None, 1);
    assert!(total > 8, "{total}");
    let mut seen = [false; 2];
    for n in 0..total {
        for seed in 0..2 {
            let (_, after) = run(Some(n), n * 7 + seed);
            let devs: Vec<Dev> = after.iter().map(|m| m.clone() as Dev).collect();
            let a = Array::assemble(devs, Default::default())
                .unwrap_or_else(|e| panic!("cut at I/O {n}, seed {seed}: {e}"));
            let st = a.status();
            let imported = st.generation == generation + 1;
            assert!(imported || st.generation == generation, "{}", st.generation);
            seen[imported as usize] = true;
            assert_eq!(
                st.chunks_allocated,
                if imported {
                    b.meta.map.allocated().count()
                } else {
                    b.meta.map.allocated().count() + 2
                }
            );
            assert_eq!(read(&a, A, LEN), pattern(1, LEN), "cut at I/O {n}");
            let at_b = if imported {
                vec![0; LEN]
            } else {
                pattern(2, LEN)
            };
            assert_eq!(read(&a, B, LEN), at_b, "cut at I/O {n}");
            assert_eq!(a.status().errors.checksum_errors, 0);
        }
    }
    assert!(seen[0] && seen[1]);
}

#[test]
fn no_valid_metadata_on_the_members_is_what_import_repairs() {
    let (rig, b, _) = rig_with_backup();
    let layout = damocles_engine::read_superblock(rig.members[0].as_ref()).unwrap();
    for m in &rig.members {
        for off in layout.slot_offsets() {
            m.write_at(&[0xEE; 512], off).unwrap();
        }
    }
    assert!(Array::assemble(rig.devs(&[]), Default::default()).is_err());
    assert!(backup::export(&rig.devs(&[])).is_err());
    let plan = backup::import(&rig.devs(&[]), &b, false).unwrap();
    assert_eq!(plan.current_generation, None);
    assert_eq!(plan.new_generation, b.generation + 1);
    let a = rig.assemble(&[]);
    assert_eq!(read(&a, A, LEN), pattern(1, LEN));
}

#[test]
fn only_members_missing_is_refused_alone_and_faulty_ones_may_be_left_out() {
    let rig = Rig::new(4, 8 * MIB);
    let a = rig.create(Level::Raid5, None, 16 << 10, CHUNK);
    a.write_at(&pattern(1, LEN), A).unwrap();
    a.flush().unwrap();
    a.fail_member(2, "test", false).unwrap();
    drop(a);
    let b = backup::export(&rig.devs(&[])).unwrap();
    // Member 3 (active in the backup) left out: refused for that alone.
    let plan = backup::plan_import(&rig.devs(&[3]), &b).unwrap();
    assert!(!plan.rolls_back());
    let why = plan.refusal().unwrap();
    assert!(
        why.contains("member 3 (uuid")
            && why.contains("give every member, or use --force")
            && !why.contains("roll"),
        "{why}"
    );
    // Member 2 (faulty in the backup) left out: nothing is missing, nothing refused.
    let plan = backup::plan_import(&rig.devs(&[2]), &b).unwrap();
    assert!(plan.missing.is_empty(), "{:?}", plan.missing);
    assert_eq!(plan.refusal(), None);
    assert_eq!(plan.written, vec![0, 1, 3]);
    plan.apply(false).unwrap();
    let a = Array::assemble(rig.devs(&[2]), Default::default()).unwrap();
    assert_eq!(read(&a, A, LEN), pattern(1, LEN));
}

#[test]
fn a_member_given_twice_and_foreign_members_are_refused_even_with_force() {
    let (rig, b, _) = rig_with_backup();
    let other = Rig::new(4, 8 * MIB);
    drop(other.create(Level::Raid5, None, 16 << 10, CHUNK));
    let before = (snapshots(&rig), snapshots(&other));
    let mut twice = rig.devs(&[]);
    twice.push(rig.members[2].clone());
    let e = backup::import(&twice, &b, true).err().unwrap().to_string();
    assert!(
        e.contains("m2 and m2 are the same member") && e.contains("given only once"),
        "{e}"
    );
    // The foreign member is named wherever it is in the list.
    for at in [0, 1, 3] {
        let mut mixed = rig.devs(&[1]);
        mixed.insert(at, other.members[1].clone());
        let e = backup::import(&mixed, &b, true).err().unwrap();
        let uuid = uuid::Uuid::from_bytes(b.array_uuid);
        assert!(
            matches!(e, Error::Members(_))
                && e.to_string().starts_with("m1 (array ")
                && e.to_string()
                    .contains(&format!("is not of array {uuid}, the backup's")),
            "{e}"
        );
    }
    assert_eq!((snapshots(&rig), snapshots(&other)), before);
}
