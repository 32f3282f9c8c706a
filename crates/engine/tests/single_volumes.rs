//! The seed's layout in the engine: on four members of mixed sizes, a volume `vms`
//! (raid5) and a volume `media` (single). With one member failed, `vms` reads back
//! identical; `media` reads back identical except the ranges its status lists as lost,
//! which read as EIO; a spare rebuilds `vms`, and `media` stays as it was.

mod common;

use common::{pattern, Rig, MIB};
use damocles_engine::{
    Array, CreateOptions, Error, JobControl, Level, Template, VolumeSize, VolumeSpec, VolumeStatus,
};
use std::sync::Arc;

const CHUNK: u64 = MIB;

fn spec(name: &str, level: Level, size: VolumeSize) -> VolumeSpec {
    VolumeSpec {
        name: name.into(),
        template: Template {
            level,
            copies: level.default_copies(),
            stripe_unit: 64 << 10,
        },
        size,
        thin: false,
    }
}

fn fill(a: &Array, id: u32, size: u64, seed: u64) -> Vec<u8> {
    let model = pattern(seed, size as usize);
    let step = 3 * MIB as usize / 2 + 4096;
    let mut off = 0;
    while off < model.len() {
        let n = step.min(model.len() - off);
        a.volume_write(id, &model[off..off + n], off as u64)
            .expect("write");
        off += n;
    }
    a.flush().expect("flush");
    model
}

fn vol(a: &Array, name: &str) -> VolumeStatus {
    a.volume_statuses()
        .into_iter()
        .find(|v| v.name == name)
        .expect("volume")
}

/// Reads volume `id` chunk by chunk: the ranges that fail with EIO (merged); every chunk
/// that reads must read as the model.
fn failing(a: &Array, id: u32, model: &[u8], what: &str) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut buf = vec![0u8; CHUNK as usize];
    for off in (0..model.len() as u64).step_by(CHUNK as usize) {
        match a.volume_read(id, &mut buf, off) {
            Ok(()) => assert!(
                buf[..] == model[off as usize..(off + CHUNK) as usize],
                "{what}: volume bytes at {off} read back otherwise"
            ),
            Err(Error::Unavailable(_) | Error::Lost(_)) => match out.last_mut() {
                Some((o, l)) if *o + *l == off => *l += CHUNK,
                _ => out.push((off, CHUNK)),
            },
            Err(e) => panic!("{what}: at {off}: {e}"),
        }
    }
    out
}

fn listed(v: &VolumeStatus) -> Vec<(u64, u64)> {
    v.lost.iter().map(|r| (r.offset, r.len)).collect()
}

#[test]
fn vms_raid5_and_media_single_lose_only_medias_chunks_on_the_failed_member() {
    let rig = Rig::sized(&[24 * MIB, 32 * MIB, 40 * MIB, 28 * MIB, 48 * MIB]);
    let mut o = CreateOptions::new(Level::Raid5);
    o.chunk_size = Some(CHUNK);
    o.name = "tank".into();
    o.no_volume = true;
    // Four members; the fifth is the spare added later.
    let a = Array::create(rig.devs(&[4]), &o).expect("create");
    a.create_volume(&spec("vms", Level::Raid5, VolumeSize::Bytes(24 * MIB)))
        .unwrap();
    a.create_volume(&spec("media", Level::Single, VolumeSize::Max))
        .unwrap();
    let (vms, media) = (vol(&a, "vms"), vol(&a, "media"));
    assert_eq!((media.level, media.tolerance), (Level::Single, 0));
    let vms_model = fill(&a, vms.id, vms.size, 1);
    let media_model = fill(&a, media.id, media.size, 2);
    // media takes what raid5 left: most of the members' space (4 × ~28 MiB less vms's
    // 32 MiB raw), less metadata.
    assert!(media.size >= 60 * MIB, "media is {} bytes", media.size);

    // Member 2 (the largest) holds media chunks: failing it needs --force.
    assert!(a.fail_member(2, "test", false).is_err());
    a.fail_member(2, "test", true).unwrap();
    assert!(failing(&a, vms.id, &vms_model, "vms, member 2 failed").is_empty());
    let gone = failing(&a, media.id, &media_model, "media, member 2 failed");
    assert!(!gone.is_empty(), "member 2 held media chunks");
    assert_eq!(listed(&vol(&a, "media")), gone, "media's status lists them");
    assert_eq!(vol(&a, "media").health, "failed");
    assert_eq!(vol(&a, "vms").can_lose, 0);

    // A spare rebuilds vms; media's lost chunks stay lost (and listed), the rest intact.
    a.add_member(rig.devs(&[0, 1, 2, 3]).remove(0), false)
        .unwrap();
    a.rebuild(Arc::new(JobControl::new(0))).unwrap();
    let v = vol(&a, "vms");
    assert_eq!((v.health.as_str(), v.can_lose), ("ok", 1), "{v:?}");
    assert!(failing(&a, vms.id, &vms_model, "vms rebuilt").is_empty());
    assert_eq!(
        failing(&a, media.id, &media_model, "media after rebuild"),
        gone
    );
    assert_eq!(listed(&vol(&a, "media")), gone);
}

/// A raid0 volume's new chunks, written while a member is missing, go on the members that
/// are there (narrower) instead of over the missing one, where they could not be read.
#[test]
fn new_raid0_chunks_on_a_degraded_array_avoid_the_missing_member() {
    let rig = Rig::sized(&[32 * MIB, 32 * MIB, 32 * MIB, 32 * MIB]);
    let mut o = CreateOptions::new(Level::Raid5);
    o.chunk_size = Some(CHUNK);
    o.name = "tank".into();
    o.no_volume = true;
    let a = Array::create(rig.devs(&[]), &o).expect("create");
    a.create_volume(&spec("vms", Level::Raid5, VolumeSize::Bytes(16 * MIB)))
        .unwrap();
    let mut scratch = spec("scratch", Level::Raid0, VolumeSize::Bytes(24 * MIB));
    scratch.thin = true;
    a.create_volume(&scratch).unwrap();
    let (vms, scratch) = (vol(&a, "vms"), vol(&a, "scratch"));
    let vms_model = fill(&a, vms.id, vms.size, 5);
    drop(a);
    // Member 3 gone: vms is degraded, scratch holds nothing yet.
    let a = Array::assemble(rig.devs(&[3]), Default::default()).expect("assemble degraded");
    let held = a.status().members[3].used;
    let model = fill(&a, scratch.id, scratch.size, 6);
    assert!(failing(&a, scratch.id, &model, "scratch, member 3 missing").is_empty());
    assert!(failing(&a, vms.id, &vms_model, "vms, member 3 missing").is_empty());
    assert_eq!(
        a.status().members[3].used,
        held,
        "a scratch chunk went on member 3"
    );
    drop(a);
    // And after a restart with the member still away.
    let a = Array::assemble(rig.devs(&[3]), Default::default()).expect("assemble again");
    assert!(failing(&a, scratch.id, &model, "scratch, after a restart").is_empty());
}
