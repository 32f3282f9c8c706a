//! Volumes: several virtual disks with their own profiles on one set of members, sharing
//! the free space; reservations, thin volumes, resize, delete, rename, a per-volume
//! conversion that leaves the other volume's chunks where they are, and the upgrade of a
//! format-1 array.

mod common;

use common::{downgrade_to_format_1, pattern, Rig, MIB};
use damocles_engine::{
    read_label, Array, AssembleOptions, Change, CreateOptions, Dev, Error, JobControl, Level,
    MemMember, MemberDevice, Template, VolumeSize, VolumeSpec,
};
use std::sync::Arc;

const CHUNK: u64 = 4 * MIB;

fn t(level: Level) -> Template {
    Template {
        level,
        copies: level.default_copies(),
        stripe_unit: 64 << 10,
    }
}

fn spec(name: &str, level: Level, size: VolumeSize, thin: bool) -> VolumeSpec {
    VolumeSpec {
        name: name.into(),
        template: t(level),
        size,
        thin,
    }
}

/// Four members of mixed sizes, no volume yet.
fn empty_array(rig: &Rig) -> Array {
    let mut o = CreateOptions::new(Level::Raid5);
    o.chunk_size = Some(CHUNK);
    o.name = "tank".into();
    o.no_volume = true;
    Array::create(rig.devs(&[]), &o).expect("create")
}

fn id_of(a: &Array, name: &str) -> u32 {
    a.volume_named(name).expect("volume").id
}

fn fill(a: &Array, id: u32, size: u64, seed: u64) -> Vec<u8> {
    let mut model = vec![0u8; size as usize];
    let step = 3 * MIB as usize + 4096;
    let mut off = 0usize;
    let mut n = seed;
    while off < model.len() {
        let len = step.min(model.len() - off);
        let data = pattern(n, len);
        a.volume_write(id, &data, off as u64).expect("write");
        model[off..off + len].copy_from_slice(&data);
        off += len;
        n += 1;
    }
    a.flush().expect("flush");
    model
}

fn check(a: &Array, id: u32, model: &[u8], what: &str) {
    let mut got = vec![0u8; model.len()];
    a.volume_read(id, &mut got, 0).expect("read");
    assert!(got == model, "{what}: volume data differs");
}

#[test]
fn two_volumes_keep_their_data_and_profiles_across_a_restart() {
    let rig = Rig::sized(&[96 * MIB, 96 * MIB, 128 * MIB, 160 * MIB]);
    let a = empty_array(&rig);
    assert!(a.volume_list().is_empty());
    a.create_volume(&spec(
        "vms",
        Level::Raid5,
        VolumeSize::Bytes(40 * MIB),
        false,
    ))
    .unwrap();
    a.create_volume(&spec(
        "media",
        Level::Raid1,
        VolumeSize::Bytes(30 * MIB + 4096),
        true,
    ))
    .unwrap();
    let (vms, media) = (id_of(&a, "vms"), id_of(&a, "media"));
    let m1 = fill(&a, vms, 40 * MIB, 1);
    let m2 = fill(&a, media, 30 * MIB + 4096, 100);
    check(&a, vms, &m1, "vms");
    check(&a, media, &m2, "media");
    // Beyond a volume's end is refused, not served from the neighbour.
    let mut b = vec![0u8; 8192];
    assert!(a.volume_read(media, &mut b, 30 * MIB).is_err());
    assert!(a.volume_write(vms, &b, 40 * MIB - 4096).is_err());
    let st = a.status();
    assert_eq!(st.format_version, 2);
    assert_eq!(st.volumes.len(), 2);
    let v = st.volumes.iter().find(|v| v.name == "media").unwrap();
    assert_eq!(
        (v.level, v.thin, v.size),
        (Level::Raid1, true, 30 * MIB + 4096)
    );
    assert_eq!(v.tolerance, 1);
    drop(a);
    // Each chunk is laid out in its volume's profile.
    let label = read_label(rig.members[0].as_ref() as &dyn MemberDevice).unwrap();
    let (_, meta) = label.newest.unwrap();
    for v in &meta.volumes {
        for i in v.chunk_indexes() {
            if let Some(c) = &meta.map.chunks[i] {
                assert_eq!(c.profile.level, v.template.level, "chunk {i} of {}", v.name);
            }
        }
    }
    let a = rig.assemble(&[]);
    check(&a, id_of(&a, "vms"), &m1, "vms after restart");
    check(&a, id_of(&a, "media"), &m2, "media after restart");
    // One member gone: both volumes still read back (raid5 and raid1 survive one).
    drop(a);
    let a = rig.assemble(&[2]);
    check(&a, id_of(&a, "vms"), &m1, "vms degraded");
    check(&a, id_of(&a, "media"), &m2, "media degraded");
    for v in a.status().volumes {
        assert_eq!(v.can_lose, 0, "{}: one more failure loses data", v.name);
        assert_eq!(v.health, "degraded");
    }
}

#[test]
fn a_reserved_volume_that_does_not_fit_is_refused_with_the_numbers() {
    let rig = Rig::new(4, 64 * MIB);
    let a = empty_array(&rig);
    a.create_volume(&spec("big", Level::Raid5, VolumeSize::Max, false))
        .unwrap();
    let free = a.space_usage().free;
    let e = a
        .create_volume(&spec(
            "more",
            Level::Raid1,
            VolumeSize::Bytes(16 * MIB),
            false,
        ))
        .unwrap_err();
    assert!(matches!(e, Error::NoSpace(_)), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("raw space") && msg.contains("free"), "{msg}");
    assert!(free < 32 * MIB, "max left {free} bytes free");
    // A plan says the same without changing anything.
    let f = a
        .plan_volume(&spec(
            "more",
            Level::Raid1,
            VolumeSize::Bytes(16 * MIB),
            false,
        ))
        .unwrap();
    assert!(!f.refusals.is_empty());
    assert_eq!(a.volume_list().len(), 1);
    // Bad names are refused.
    for bad in ["", "a b", "x/y", &"n".repeat(65)] {
        assert!(a
            .create_volume(&spec(bad, Level::Raid1, VolumeSize::Bytes(MIB), true))
            .is_err());
    }
    assert!(a
        .create_volume(&spec("big", Level::Raid1, VolumeSize::Bytes(MIB), true))
        .is_err());
}

#[test]
fn a_thin_volume_fills_up_to_enospc_while_a_reserved_one_keeps_writing() {
    let rig = Rig::new(4, 64 * MIB);
    let a = empty_array(&rig);
    // Reserved raid5: half the space; thin raid1 larger than everything.
    a.create_volume(&spec(
        "vms",
        Level::Raid5,
        VolumeSize::Bytes(64 * MIB),
        false,
    ))
    .unwrap();
    a.create_volume(&spec(
        "scratch",
        Level::Raid1,
        VolumeSize::Bytes(400 * MIB),
        true,
    ))
    .unwrap();
    let (vms, scratch) = (id_of(&a, "vms"), id_of(&a, "scratch"));
    let chunk = vec![0x5au8; CHUNK as usize];
    let mut written = 0u64;
    let e = loop {
        match a.volume_write(scratch, &chunk, written) {
            Ok(()) => written += CHUNK,
            Err(e) => break e,
        }
        assert!(
            written < 400 * MIB,
            "the thin volume never ran out of space"
        );
    };
    assert!(matches!(e, Error::NoSpace(_)), "{e}");
    assert!(written > 0);
    // The reserved volume still has all of its space.
    let model = fill(&a, vms, 64 * MIB, 7);
    check(&a, vms, &model, "vms beside a full thin volume");
    // Trimming the thin volume's chunks gives the space back.
    let before = a.space_usage();
    a.volume_trim(scratch, 0, written).unwrap();
    let after = a.space_usage();
    assert!(
        after.allocated < before.allocated,
        "{before:?} -> {after:?}"
    );
    let mut back = vec![1u8; 4096];
    a.volume_read(scratch, &mut back, 0).unwrap();
    assert!(
        back.iter().all(|&b| b == 0),
        "a trimmed chunk reads as zeros"
    );
    a.volume_write(scratch, &chunk, 0).unwrap();
}

#[test]
fn resize_rename_and_delete() {
    let rig = Rig::new(4, 64 * MIB);
    let a = empty_array(&rig);
    a.create_volume(&spec("a", Level::Raid1, VolumeSize::Bytes(8 * MIB), false))
        .unwrap();
    a.create_volume(&spec("b", Level::Raid5, VolumeSize::Bytes(8 * MIB), false))
        .unwrap();
    let ma = fill(&a, id_of(&a, "a"), 8 * MIB, 1);
    let mb = fill(&a, id_of(&a, "b"), 8 * MIB, 50);
    // Growing "a" cannot extend in place ("b" follows it): it takes new chunks elsewhere.
    assert_eq!(
        a.resize_volume("a", VolumeSize::Bytes(20 * MIB), false)
            .unwrap(),
        (8 * MIB, 20 * MIB)
    );
    let ida = id_of(&a, "a");
    let mut grown = ma.clone();
    grown.resize(20 * MIB as usize, 0);
    check(&a, ida, &grown, "a grown");
    let tail = pattern(999, 12 * MIB as usize);
    a.volume_write(ida, &tail, 8 * MIB).unwrap();
    grown[8 * MIB as usize..].copy_from_slice(&tail);
    // Smaller needs force.
    assert!(a
        .resize_volume("a", VolumeSize::Bytes(4 * MIB), false)
        .is_err());
    a.resize_volume("a", VolumeSize::Bytes(12 * MIB), true)
        .unwrap();
    check(&a, ida, &grown[..12 * MIB as usize], "a shrunk");
    a.rename_volume("a", "alpha").unwrap();
    assert!(a.rename_volume("b", "alpha").is_err());
    assert_eq!(id_of(&a, "alpha"), ida);
    let used = a.space_usage();
    a.delete_volume("b").unwrap();
    assert!(a.volume_named("b").is_err());
    assert!(a.space_usage().allocated < used.allocated);
    assert!(a.space_usage().free > used.free);
    // The freed space is reused by a new volume; old data does not show through.
    a.create_volume(&spec("c", Level::Raid5, VolumeSize::Bytes(8 * MIB), false))
        .unwrap();
    let mut z = vec![1u8; 8 * MIB as usize];
    a.volume_read(id_of(&a, "c"), &mut z, 0).unwrap();
    assert!(z.iter().all(|&b| b == 0), "a new volume reads as zeros");
    drop(mb);
    drop(a);
    let a = rig.assemble(&[]);
    check(
        &a,
        id_of(&a, "alpha"),
        &grown[..12 * MIB as usize],
        "alpha after restart",
    );
    assert_eq!(
        a.volume_list()
            .iter()
            .map(|v| v.name.clone())
            .collect::<Vec<_>>(),
        vec!["alpha", "c"]
    );
}

#[test]
fn converting_one_volume_leaves_the_others_chunks_where_they_are() {
    let rig = Rig::new(4, 64 * MIB);
    let a = empty_array(&rig);
    a.create_volume(&spec(
        "vms",
        Level::Raid5,
        VolumeSize::Bytes(24 * MIB),
        false,
    ))
    .unwrap();
    a.create_volume(&spec(
        "media",
        Level::Raid0,
        VolumeSize::Bytes(16 * MIB),
        false,
    ))
    .unwrap();
    let m1 = fill(&a, id_of(&a, "vms"), 24 * MIB, 3);
    let m2 = fill(&a, id_of(&a, "media"), 16 * MIB, 30);
    let before = a.status();
    let vms_before = chunks_of(&rig, "vms");
    // Without naming a volume, a conversion of a multi-volume array is refused.
    let to_raid1 = Change {
        template: Some(t(Level::Raid1)),
        ..Default::default()
    };
    let e = a.forecast(&to_raid1).unwrap_err().to_string();
    assert!(e.contains("vms") && e.contains("media"), "{e}");
    let change = Change {
        volume: Some("media".into()),
        ..to_raid1
    };
    let f = a.forecast(&change).unwrap();
    assert_eq!((f.tolerance_before, f.tolerance_after), (0, 1));
    a.start_reshape(&change, false).unwrap();
    let ctl = std::sync::Arc::new(damocles_engine::JobControl::new(0));
    a.reshape(ctl).unwrap();
    check(&a, id_of(&a, "vms"), &m1, "vms after converting media");
    check(&a, id_of(&a, "media"), &m2, "media after its conversion");
    drop(a);
    assert_eq!(chunks_of(&rig, "vms"), vms_before, "a chunk of vms moved");
    let (_, meta) = read_label(rig.members[0].as_ref() as &dyn MemberDevice)
        .unwrap()
        .newest
        .unwrap();
    let media = meta.volumes.iter().find(|v| v.name == "media").unwrap();
    assert_eq!(media.template.level, Level::Raid1);
    for i in media.chunk_indexes() {
        assert_eq!(
            meta.map.chunks[i].as_ref().unwrap().profile.level,
            Level::Raid1
        );
    }
    drop(before);
}

/// The chunk records of volume `name` as the members' newest metadata has them.
fn chunks_of(rig: &Rig, name: &str) -> Vec<String> {
    let (_, meta) = read_label(rig.members[0].as_ref() as &dyn MemberDevice)
        .unwrap()
        .newest
        .unwrap();
    let v = meta.volumes.iter().find(|v| v.name == name).unwrap();
    v.chunk_indexes()
        .map(|i| format!("{i}: {:?}", meta.map.chunks[i]))
        .collect()
}

#[test]
fn a_format_1_array_opens_as_one_volume_and_is_upgraded() {
    let rig = Rig::new(3, 32 * MIB);
    let a = rig.create(Level::Raid5, None, 64 << 10, CHUNK);
    let size = a.size();
    let model = fill(&a, 0, size, 11);
    drop(a);
    downgrade_to_format_1(&rig.members);
    // Read-only: shown as format 1 with one volume, nothing written.
    let ro = Array::assemble(
        rig.devs(&[]),
        AssembleOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let st = ro.status();
    assert_eq!(st.format_version, 1);
    assert_eq!(st.volumes.len(), 1);
    assert_eq!(
        (st.volumes[0].name.as_str(), st.volumes[0].size),
        ("test", size)
    );
    check(&ro, st.volumes[0].id, &model, "format 1, read-only");
    drop(ro);
    let a = rig.assemble(&[]);
    assert_eq!(a.status().format_version, 2);
    check(&a, id_of(&a, "test"), &model, "upgraded");
    drop(a);
    let (_, meta) = read_label(rig.members[1].as_ref() as &dyn MemberDevice)
        .unwrap()
        .newest
        .unwrap();
    assert_eq!(meta.format_version, 2);
    assert_eq!(meta.volumes.len(), 1);
}

/// Found by the crash harness: a shrink to a size inside a chunk keeps that chunk, and
/// growing the volume again showed the bytes the shrink cut off instead of zeros.
#[test]
fn growing_after_a_shrink_inside_a_chunk_reads_zeros_past_the_old_end() {
    let rig = Rig::new(4, 64 * MIB);
    let a = empty_array(&rig);
    a.create_volume(&spec(
        "v",
        Level::Raid5,
        VolumeSize::Bytes(2 * CHUNK),
        false,
    ))
    .unwrap();
    let id = id_of(&a, "v");
    let model = fill(&a, id, 2 * CHUNK, 5);
    let cut = CHUNK + 3 * 4096;
    a.resize_volume("v", VolumeSize::Bytes(cut), true).unwrap();
    a.resize_volume("v", VolumeSize::Bytes(2 * CHUNK), false)
        .unwrap();
    let mut want = model[..cut as usize].to_vec();
    want.resize(2 * CHUNK as usize, 0);
    check(&a, id, &want, "grown again");
    drop(a);
    let a = rig.assemble(&[]);
    check(&a, id, &want, "grown again, after a restart");
}

/// Where the rebuilt slices of volume `name` sit on member `member` (per chunk of the
/// volume, in volume order), from that member's newest metadata.
fn offsets_on(dev: &dyn MemberDevice, name: &str, member: u16) -> Vec<u64> {
    let (_, meta) = read_label(dev).unwrap().newest.unwrap();
    let v = meta.volumes.iter().find(|v| v.name == name).unwrap();
    v.chunk_indexes()
        .map(|i| {
            let c = meta.map.chunks[i].as_ref().expect("chunk written");
            c.slices
                .iter()
                .find(|s| s.member == member)
                .unwrap_or_else(|| panic!("chunk {i} of {name} has no slice on the spare"))
                .offset
        })
        .collect()
}

#[test]
fn a_rebuild_restores_the_volume_with_the_least_redundancy_left_first() {
    // raid6 made first: its chunks have the lower indexes, so an order by index alone
    // would rebuild it first. With one member failed, raid6 can still lose one and raid5
    // none: every raid5 chunk must be rebuilt before any raid6 chunk.
    let rig = Rig::new(4, 64 * MIB);
    let mut o = CreateOptions::new(Level::Raid5);
    o.chunk_size = Some(CHUNK);
    o.name = "tank".into();
    o.no_volume = true;
    let a = Array::create(rig.devs(&[]), &o).expect("create");
    let size = 40 * MIB;
    for (name, level) in [("safer", Level::Raid6), ("weaker", Level::Raid5)] {
        a.create_volume(&spec(name, level, VolumeSize::Bytes(size), false))
            .unwrap();
    }
    let (safer, weaker) = (id_of(&a, "safer"), id_of(&a, "weaker"));
    let first_weaker = a.volume_by_id(weaker).unwrap().extents[0].0;
    assert!(
        a.volume_by_id(safer).unwrap().extents[0].0 < first_weaker,
        "the raid6 volume's chunks come first in the map"
    );
    let m_safer = fill(&a, safer, size, 1);
    let m_weaker = fill(&a, weaker, size, 2);

    a.fail_member(1, "test", false).unwrap();
    let by_name = |n: &str| {
        a.status()
            .volumes
            .into_iter()
            .find(|v| v.name == n)
            .unwrap()
    };
    assert_eq!(
        (by_name("safer").can_lose, by_name("weaker").can_lose),
        (1, 0)
    );
    let spare = Arc::new(MemMember::new("spare", 64 * MIB));
    let si = a.add_member(spare.clone() as Dev, false).unwrap();
    let r = a.rebuild(Arc::new(JobControl::new(0))).unwrap();
    let chunks = (size / CHUNK) as usize;
    assert_eq!(r.chunks_rebuilt, 2 * chunks, "{r:?}");

    // The spare was empty and takes slices lowest offset first, in the order the rebuild
    // placed them: that order is the order of the offsets.
    let dev = spare.as_ref() as &dyn MemberDevice;
    let weak_at = offsets_on(dev, "weaker", si as u16);
    let safe_at = offsets_on(dev, "safer", si as u16);
    let last_weak = *weak_at.iter().max().unwrap();
    let first_safe = *safe_at.iter().min().unwrap();
    assert!(
        last_weak < first_safe,
        "a raid6 chunk was rebuilt before a raid5 one: raid5 at {weak_at:?}, raid6 at {safe_at:?}"
    );
    assert_eq!(by_name("weaker").can_lose, 1);
    assert_eq!(by_name("safer").can_lose, 2);
    check(&a, safer, &m_safer, "raid6 after the rebuild");
    check(&a, weaker, &m_weaker, "raid5 after the rebuild");
}
