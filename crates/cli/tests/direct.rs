//! `serve --direct`: member files read and written with O_DIRECT. Data written through a
//! real NBD client (nbdcopy) and flushed reads back identical, over the same server and
//! over a fresh one; and it does not stay in the page cache as a second copy (fincore
//! counts the members' cached bytes) — where the same writes served without --direct do.
//! Also a raid5 on loop devices, which are direct without asking.

mod interop_support;

use interop_support::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const DATA: usize = 48 << 20;

/// Members on a disk-backed file system: direct I/O on tmpfs would still be memory.
fn disk_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("damocles-direct.")
        .tempdir_in("/var/tmp")
        .unwrap()
}

fn create(dir: &Path, members: &[PathBuf]) {
    let out = run_ok(
        Command::new(bin())
            .current_dir(dir)
            .args(["create", "--level", "raid5"])
            .args(members),
    );
    assert!(out.contains("created raid5"), "{out}");
}

/// Bytes of `files` in the page cache (fincore).
fn cached(files: &[PathBuf]) -> u64 {
    let out = run_ok(
        Command::new("fincore")
            .args(["--bytes", "--noheadings", "--output", "RES"])
            .args(files),
    );
    out.split_whitespace()
        .map(|w| {
            w.parse::<u64>()
                .unwrap_or_else(|_| panic!("fincore said {out:?}"))
        })
        .sum()
}

/// Drops the clean cached pages of `files` (`dd iflag=nocache count=0` advises the kernel
/// to drop the whole file).
fn drop_cache(files: &[PathBuf]) {
    run_ok(&mut Command::new("sync"));
    for f in files {
        run_ok(Command::new("dd").arg(format!("if={}", f.display())).args([
            "iflag=nocache",
            "count=0",
            "status=none",
        ]));
    }
}

/// Serves `members` (with `extra` flags), writes `data` at offset 0 with nbdcopy (which
/// flushes at its end), reads it back through the same server; returns the members'
/// cached bytes after the flush.
fn write_and_check(dir: &Path, members: &[PathBuf], extra: &[&str], data: &Path) -> u64 {
    let sock = dir.join("nbd.sock");
    let mut c = Command::new(bin());
    c.arg("serve").arg("--socket").arg(&sock).args(extra);
    c.args(members);
    let server = Server::start(c, &dir.join("serve.stderr"));
    run_ok(
        Command::new("nbdcopy")
            .args(["--flush", "--synchronous"])
            .arg(data)
            .arg(&server.uri),
    );
    let res = cached(members);
    let back = dir.join("back.bin");
    run_ok(Command::new("nbdcopy").arg(&server.uri).arg(&back));
    let want = std::fs::read(data).unwrap();
    let got = std::fs::read(&back).unwrap();
    assert_same("read back over the same server", &got[..want.len()], &want);
    server.stop();
    res
}

#[test]
fn serve_direct_writes_through_nbd_and_keeps_no_second_copy() {
    if !require_tools(
        "serve_direct_writes_through_nbd_and_keeps_no_second_copy",
        &["nbdcopy", "fincore", "dd", "sync"],
    ) {
        return;
    }
    let dir = disk_dir();
    let members: Vec<PathBuf> = (0..4)
        .map(|i| dir.path().join(format!("m{i}.img")))
        .collect();
    for m in &members {
        sparse(m, 64 << 20);
    }
    create(dir.path(), &members);
    let data = dir.path().join("data.bin");
    // The NBD size is a little under 192 MiB; the data fits and ends off a stripe.
    std::fs::write(&data, random_bytes(DATA + 12345, 7)).unwrap();

    drop_cache(&members);
    let direct = write_and_check(dir.path(), &members, &["--direct"], &data);
    // A fresh server reads what the first one wrote.
    let again = write_and_check(dir.path(), &members, &["--direct"], &data);
    // Only metadata and the journal's small records (written through the page cache,
    // being off the 4 KiB block) may be cached: far below the data.
    assert!(
        direct < (DATA as u64) / 16 && again < (DATA as u64) / 16,
        "with --direct, {direct} and {again} bytes of the members stayed cached after \
         writing {DATA}"
    );
    drop_cache(&members);
    let buffered = write_and_check(dir.path(), &members, &[], &data);
    eprintln!(
        "cached after writing {DATA} bytes: direct {direct}, again {again}, buffered {buffered}"
    );
    assert!(
        buffered > (DATA as u64) / 4,
        "without --direct only {buffered} bytes were cached: the check cannot see caching"
    );
}

#[test]
fn serve_direct_refuses_buffered_with_it() {
    let o = run(Command::new(bin()).args(["serve", "--direct", "--buffered", "/nonexistent"]));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--buffered") && err.contains("cannot be used"),
        "{err}"
    );
}

/// A loop device over a file, detached on drop.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = run(Command::new("losetup").args(["-d", &self.0]));
    }
}

#[test]
fn raid5_on_loop_devices_served_direct() {
    let test = "raid5_on_loop_devices_served_direct";
    if !require_tools(test, &["losetup", "nbdcopy"]) {
        return;
    }
    if let Some(why) = mount_unavailable() {
        let msg = format!("{test}: {why}");
        assert!(
            std::env::var_os("CI").is_none(),
            "{msg}; CI is set, so this fails"
        );
        skip(&msg);
        return;
    }
    let dir = disk_dir();
    let loops: Vec<Loop> = (0..4)
        .map(|i| {
            let f = dir.path().join(format!("back{i}.img"));
            sparse(&f, 64 << 20);
            let dev = run_ok(Command::new("losetup").args(["--find", "--show"]).arg(&f));
            Loop(dev.trim().to_string())
        })
        .collect();
    let members: Vec<PathBuf> = loops.iter().map(|l| PathBuf::from(&l.0)).collect();
    create(dir.path(), &members);
    let data = dir.path().join("data.bin");
    std::fs::write(&data, random_bytes(DATA + 4097, 9)).unwrap();
    write_and_check(dir.path(), &members, &[], &data);
    write_and_check(dir.path(), &members, &["--buffered"], &data);
}
