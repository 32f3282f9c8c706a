//! Arrays on members opened with `O_DIRECT`: files on a disk-backed file system
//! (/var/tmp) and loop devices (block devices are direct by default). Writes of every
//! shape — whole stripes, single blocks, sizes and offsets off the 4 KiB block — read back
//! as written, after a flush and after the array is assembled again, and the data goes
//! to the members direct (only small journal records go through the page cache).

mod common;

use common::*;
use damocles_engine::{
    Array, AssembleOptions, CreateOptions, Dev, DirectIo, FileMember, Level, MemberDevice, OpenMode,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

fn disk_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("damocles-direct.")
        .tempdir_in("/var/tmp")
        .unwrap()
}

/// Opens the members. Until the worker threads of an array just dropped have finished
/// (they stop on their own, asynchronously) a member is still open and locked (and a block
/// device claimed by its `O_EXCL`), so that is retried for a while.
fn open(paths: &[PathBuf], direct: DirectIo) -> Vec<Arc<FileMember>> {
    paths
        .iter()
        .map(|p| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                match FileMember::open_with(p, OpenMode::ReadWrite, direct) {
                    Ok(m) => break Arc::new(m),
                    Err(e)
                        if e.kind() == std::io::ErrorKind::ResourceBusy
                            && std::time::Instant::now() < deadline =>
                    {
                        std::thread::sleep(std::time::Duration::from_millis(20))
                    }
                    Err(e) => panic!("{}: {e}", p.display()),
                }
            }
        })
        .collect()
}

fn devs(ms: &[Arc<FileMember>]) -> Vec<Dev> {
    ms.iter().map(|m| m.clone() as Dev).collect()
}

/// Creates a raid5 on `paths`, writes every shape, checks, assembles again and checks.
fn exercise(paths: &[PathBuf], direct: DirectIo, block: u64) {
    let ms = open(paths, direct);
    for m in &ms {
        assert!(m.is_direct(), "{} not direct", m.name());
        assert_eq!(m.direct_block(), Some(block), "{}", m.name());
    }
    let mut o = CreateOptions::new(Level::Raid5);
    o.stripe_unit = 64 << 10;
    o.chunk_size = Some(4 * MIB);
    o.name = "direct".into();
    let a = Array::create(devs(&ms), &o).unwrap();
    let size = a.size() as usize;
    let mut model = pattern(1, size);
    a.write_at(&model, 0).unwrap();
    // Whole stripes, one block, and shapes off the block: a sector, odd lengths.
    let shapes: &[(usize, usize)] = &[
        (0, 3 * (64 << 10)),
        (MIB as usize, 4096),
        (512, 512),
        (5 * MIB as usize + 100, 70_001),
        (size - 4096 - 7, 4096 + 7),
        (2 * MIB as usize, 3 * MIB as usize),
    ];
    for (i, &(off, len)) in shapes.iter().enumerate() {
        let data = pattern(10 + i as u64, len);
        a.write_at(&data, off as u64).unwrap();
        model[off..off + len].copy_from_slice(&data);
        if i % 2 == 1 {
            a.flush().unwrap();
        }
    }
    a.flush().unwrap();
    assert_matches(&a, &model, "after the writes");
    drop(a);
    // The data goes direct; only the journal's small records (64 and 128 bytes) are off
    // the block and go through the page cache.
    let (direct_bytes, buffered) = ms
        .iter()
        .map(|m| m.direct_written())
        .fold((0u64, 0u64), |(a, b), (c, d)| (a + c, b + d));
    assert!(
        direct_bytes >= size as u64,
        "only {direct_bytes} bytes written direct"
    );
    assert!(
        buffered * 100 < direct_bytes,
        "{buffered} bytes through the page cache beside {direct_bytes} direct"
    );
    drop(ms);
    let a = Array::assemble(devs(&open(paths, direct)), AssembleOptions::default()).unwrap();
    assert_matches(&a, &model, "assembled again");
}

#[test]
fn raid5_on_direct_file_members() {
    let dir = disk_dir();
    let paths: Vec<PathBuf> = (0..4)
        .map(|i| {
            let p = dir.path().join(format!("m{i}.img"));
            std::fs::File::create(&p)
                .unwrap()
                .set_len(24 * MIB)
                .unwrap();
            p
        })
        .collect();
    exercise(&paths, DirectIo::Always, 4096);
}

/// A loop device over a file in `dir`, detached on drop.
struct Loop(String);

impl Loop {
    fn new(dir: &Path, i: usize, sector: u32) -> Loop {
        let f = dir.join(format!("loop{i}.img"));
        std::fs::File::create(&f)
            .unwrap()
            .set_len(24 * MIB)
            .unwrap();
        let o = Command::new("losetup")
            .args(["--find", "--show", "--sector-size", &sector.to_string()])
            .arg(&f)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Loop(String::from_utf8(o.stdout).unwrap().trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// Whether loop devices can be made here; a skip note when not, a failure under CI.
fn loops_available(test: &str) -> bool {
    let ok = Command::new("losetup")
        .arg("--find")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let msg = format!("{test}: no loop devices (losetup missing or not root)");
        assert!(
            std::env::var_os("CI").is_none(),
            "{msg}; CI is set, so this fails"
        );
        eprintln!("SKIP {msg}");
    }
    ok
}

#[test]
fn raid5_on_loop_devices_is_direct_by_default() {
    if !loops_available("raid5_on_loop_devices_is_direct_by_default") {
        return;
    }
    let dir = disk_dir();
    // 512-byte sectors (losetup's default) and 4 KiB ones: BLKSSZGET gives each.
    for sector in [512u32, 4096] {
        let loops: Vec<Loop> = (0..4).map(|i| Loop::new(dir.path(), i, sector)).collect();
        let paths: Vec<PathBuf> = loops.iter().map(|l| PathBuf::from(&l.0)).collect();
        exercise(&paths, DirectIo::Auto, u64::from(sector));
    }
}
