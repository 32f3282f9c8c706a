//! A full host filesystem is not a failed disk: sparse member files on a small tmpfs,
//! filled through NBD. The client must see ENOSPC (not success, not a hang), no member may
//! be failed, and once the tmpfs is enlarged the same server takes the writes and all that
//! was written and flushed reads back identical. Also: `create` reserves member files by
//! default, so it refuses a filesystem that cannot hold them.

mod interop_support;

use interop_support::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const MIB: u64 = 1 << 20;

/// A tmpfs mounted for the test (needs root); unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let o = run(Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size}"))
            .arg("tmpfs")
            .arg(dir));
        o.status.success().then(|| Tmpfs(dir.to_path_buf()))
    }

    fn resize(&self, size: u64) {
        run_ok(
            Command::new("mount")
                .arg("-o")
                .arg(format!("remount,size={size}"))
                .arg(&self.0),
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = run(Command::new("umount").arg("-l").arg(&self.0));
    }
}

fn members_in(dir: &Path, n: usize, size: u64) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let p = dir.join(format!("m{i}.img"));
            sparse(&p, size);
            p
        })
        .collect()
}

#[test]
fn sparse_members_on_a_full_tmpfs_give_enospc_and_recover_when_it_grows() {
    if !require_tools("full disk", &["nbdcopy", "mount"]) {
        return;
    }
    let rig = Rig::create("raid1", "unused", 2, 16 * MIB);
    let Some(fs) = Tmpfs::mount(&rig.path("fs"), 160 * MIB) else {
        skip("full disk: cannot mount a tmpfs here (not root?)");
        return;
    };
    let members = members_in(&fs.0, 4, 64 * MIB);
    let out = run_ok(
        rig.cmd()
            .args(["create", "--sparse", "--level", "raid5", "--name", "full"])
            .args(&members),
    );
    assert!(
        out.contains("kept sparse"),
        "create says what --sparse risks:\n{out}"
    );
    let srv = rig.serve(&members, &[], "full");
    assert!(
        srv.stderr().contains("ENOSPC"),
        "serve warns that the sparse members do not fit:\n{}",
        srv.stderr()
    );
    let size = rig.status()["size"].as_u64().unwrap();
    let data = random_bytes(size as usize, 31);
    let src = rig.path("src.bin");
    std::fs::write(&src, &data).unwrap();
    let o = run_timeout(
        Command::new("nbdcopy")
            .arg("--flush")
            .arg(&src)
            .arg(&srv.uri),
        Duration::from_secs(120),
    );
    assert!(!o.status.success(), "filling past the tmpfs cannot succeed");
    assert!(
        text(&o).contains("No space left on device"),
        "the client is told ENOSPC:\n{}",
        text(&o)
    );
    let st = rig.status();
    for i in 0..4 {
        assert_eq!(
            state(&st, i),
            "ok",
            "no member is failed by a full disk:\n{st:#}"
        );
    }
    assert_eq!(st["health"], "ok", "{st:#}");
    // Room again: the same server takes the writes; everything reads back.
    fs.resize(512 * MIB);
    run_ok(
        Command::new("nbdcopy")
            .arg("--flush")
            .arg(&src)
            .arg(&srv.uri),
    );
    let back = rig.path("back.bin");
    run_ok(Command::new("nbdcopy").arg(&srv.uri).arg(&back));
    assert_same(
        "after the filesystem grew",
        &std::fs::read(&back).unwrap(),
        &data,
    );
    let st = rig.status();
    let no_space: u64 = (0..4)
        .map(|i| st["members"][i]["io"]["no_space"].as_u64().unwrap_or(0))
        .sum();
    assert!(no_space > 0, "the ENOSPC answers are counted:\n{st:#}");
    srv.stop();
    // After a restart too.
    let srv = rig.serve(&members, &[], "again");
    run_ok(Command::new("nbdcopy").arg(&srv.uri).arg(&back));
    assert_same("after a restart", &std::fs::read(&back).unwrap(), &data);
    srv.stop();
}

#[test]
fn create_reserves_member_files_and_refuses_a_filesystem_too_small() {
    if !require_tools("create reserves", &["mount"]) {
        return;
    }
    let rig = Rig::create("raid1", "unused", 2, 16 * MIB);
    let Some(fs) = Tmpfs::mount(&rig.path("fs"), 100 * MIB) else {
        skip("create reserves: cannot mount a tmpfs here (not root?)");
        return;
    };
    let members = members_in(&fs.0, 3, 48 * MIB);
    let o = run(rig
        .cmd()
        .args(["create", "--level", "raid5"])
        .args(&members));
    assert!(
        !o.status.success(),
        "3 x 48 MiB cannot be reserved on 100 MiB"
    );
    assert!(
        text(&o).contains("cannot hold it") && text(&o).contains("--sparse"),
        "{}",
        text(&o)
    );
    // Nothing was created: the members are still empty.
    let o = run(rig.cmd().args(["status"]).args(&members));
    assert!(!o.status.success(), "no array on the members: {}", text(&o));
    // Members that fit are reserved: fully allocated after create.
    fs.resize(200 * MIB);
    run_ok(
        rig.cmd()
            .args(["create", "--level", "raid5"])
            .args(&members),
    );
    for m in &members {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(m).unwrap();
        assert!(md.blocks() * 512 >= md.len(), "{} is reserved", m.display());
    }
}
