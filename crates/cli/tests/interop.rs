//! Interop: real NBD clients (libnbd's nbdinfo/nbdcopy/nbdfuse, qemu-img/qemu-io, fio, and
//! the kernel's ext4 through a loop device) against `damocles serve` on a raid5 of 4 file
//! members, once clean and once with a member left out.
//!
//! Tools come from Debian packages (see `.ci/install-test-deps.sh`). A missing tool skips a
//! test with a printed reason, unless the environment variable CI is set: then it fails.

mod interop_support;

use interop_support::*;
use std::process::Command;

const CLEAN: Mode = Mode::Clean;

// ---------------------------------------------------------------------------------------
// 1. nbdinfo: size, export name, flags; --read-only

fn nbdinfo_reports(mode: Mode) {
    if !require_tools("nbdinfo", &["nbdinfo", "qemu-io"]) {
        return;
    }
    // Clean: export name comes from the array's name. Degraded: from --export.
    let (arr, extra, export) = match mode {
        Mode::Clean => (Array::raid5(Some("tank")), vec![], "tank"),
        Mode::Degraded(_) => (
            Array::raid5(None),
            vec!["--export", "other-name"],
            "other-name",
        ),
    };
    let size = arr.size(mode);
    let srv = arr.serve(mode, &extra);
    assert!(srv.uri.starts_with("nbd+unix:///"), "{}", srv.uri);
    assert!(srv.line.contains(&format!("'{export}'")), "{}", srv.line);

    // --json
    let out = run_ok(Command::new("nbdinfo").arg("--json").arg(&srv.uri));
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    let exports = j["exports"].as_array().unwrap();
    assert_eq!(exports.len(), 1, "{out}");
    let e = &exports[0];
    assert_eq!(e["export-name"], export, "{out}");
    assert_eq!(e["export-size"].as_u64(), Some(size), "{out}");
    for flag in [
        "can_flush",
        "can_fua",
        "can_trim",
        "can_zero",
        "can_multi_conn",
    ] {
        assert_eq!(e[flag], true, "{flag} in {out}");
    }
    assert_eq!(e["is_read_only"], false, "{out}");

    // --list (with the empty name, which the server maps to its export)
    let base = srv.uri.replacen(&format!("/{export}?"), "/?", 1);
    let out = run_ok(Command::new("nbdinfo").arg("--list").arg(&base));
    assert!(out.contains(&format!("export=\"{export}\"")), "{out}");
    assert_eq!(out.matches("export=").count(), 1, "{out}");
    assert!(
        out.contains(&format!("export-size: {size} ")),
        "size {size} in {out}"
    );
    assert!(out.contains("is_read_only: false"), "{out}");

    // Write 1 MiB at 8 MiB so the map has data in it.
    let qo = run_ok(
        Command::new("qemu-io")
            .args(["-f", "raw", &srv.uri])
            .args(["-c", "write -P 0x5c 8M 1M"]),
    );
    assert!(qo.contains("wrote 1048576/1048576"), "{qo}");

    // --map: extents tile [0, size), and none claims "zero" over the data just written.
    let out = run_ok(
        Command::new("nbdinfo")
            .args(["--map", "--json"])
            .arg(&srv.uri),
    );
    let m: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut next = 0u64;
    for ext in m.as_array().unwrap() {
        let off = ext["offset"].as_u64().unwrap();
        let len = ext["length"].as_u64().unwrap();
        let ty = ext["type"].as_u64().unwrap();
        assert_eq!(off, next, "map not contiguous: {out}");
        assert!(len > 0, "{out}");
        if off < 9 * MIB && off + len > 8 * MIB {
            assert_eq!(ty & 2, 0, "written data reported as zero: {out}");
        }
        next = off + len;
    }
    assert_eq!(next, size, "map covers {next} of {size}: {out}");
    // Plain --map text form agrees on the end.
    let out = run_ok(Command::new("nbdinfo").arg("--map").arg(&srv.uri));
    assert!(!out.trim().is_empty(), "empty --map");
    srv.stop();

    // --read-only: flag set, writes refused, data unchanged.
    let srv = arr.serve(mode, &[&extra[..], &["--read-only"]].concat());
    assert!(srv.line.contains("read-only"), "{}", srv.line);
    let out = run_ok(Command::new("nbdinfo").arg("--json").arg(&srv.uri));
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["exports"][0]["is_read_only"], true, "{out}");
    assert_eq!(j["exports"][0]["export-size"].as_u64(), Some(size), "{out}");
    let o = run(Command::new("qemu-io")
        .args(["-f", "raw", &srv.uri])
        .args(["-c", "write -P 0x11 8M 64k"]));
    let t = text(&o);
    assert!(
        !o.status.success() || t.contains("failed") || t.contains("read-only"),
        "write to a read-only export did not fail:\n{t}"
    );
    assert!(!t.contains("wrote 65536/65536"), "{t}");
    let src = arr.path("ro-src");
    std::fs::write(&src, random_bytes(1 << 20, 1)).unwrap();
    let o = run(Command::new("nbdcopy").arg(&src).arg(&srv.uri));
    assert!(
        !o.status.success(),
        "nbdcopy into read-only export succeeded\n{}",
        text(&o)
    );
    let qo = run_ok(
        Command::new("qemu-io")
            .args(["-f", "raw", "-r", &srv.uri])
            .args(["-c", "read -P 0x5c 8M 1M"]),
    );
    assert!(!qo.contains("Pattern verification failed"), "{qo}");
    srv.stop();
}

#[test]
fn nbdinfo_clean() {
    nbdinfo_reports(CLEAN);
}

#[test]
fn nbdinfo_degraded() {
    nbdinfo_reports(Mode::Degraded(0));
}

// ---------------------------------------------------------------------------------------
// 2. nbdcopy in and out, qemu-img compare

fn nbdcopy_round_trip(mode: Mode) {
    if !require_tools("nbdcopy", &["nbdcopy", "qemu-img"]) {
        return;
    }
    let arr = Array::raid5(None);
    let size = arr.size(mode);
    let data = random_bytes(40 << 20, 2);
    let src = arr.path("src.bin");
    std::fs::write(&src, &data).unwrap();
    let srv = arr.serve(mode, &[]);
    run_ok(
        Command::new("nbdcopy")
            .arg("--flush")
            .arg(&src)
            .arg(&srv.uri),
    );

    // Out using the server's extents (holes are skipped) ...
    let out = arr.path("out.img");
    run_ok(Command::new("nbdcopy").arg(&srv.uri).arg(&out));
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got.len() as u64, size);
    assert_same("nbdcopy out", &got[..data.len()], &data);
    assert!(
        got[data.len()..].iter().all(|&b| b == 0),
        "bytes past the copied file are not zero"
    );
    drop(got);
    // ... and reading every byte, which must agree with the extents-based copy.
    let out2 = arr.path("out2.img");
    run_ok(
        Command::new("nbdcopy")
            .arg("--no-extents")
            .arg(&srv.uri)
            .arg(&out2),
    );
    let o = run(Command::new("cmp").arg(&out).arg(&out2));
    assert!(
        o.status.success(),
        "extents vs full read differ\n{}",
        text(&o)
    );

    // qemu-img compare: the source against the export (the rest of it must be zero).
    let o = run(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&src)
        .arg(&srv.uri));
    let t = text(&o);
    assert!(o.status.success(), "qemu-img compare\n{t}");
    assert!(t.contains("Images are identical"), "{t}");
    srv.stop();
}

#[test]
fn nbdcopy_clean() {
    nbdcopy_round_trip(CLEAN);
}

#[test]
fn nbdcopy_degraded() {
    nbdcopy_round_trip(Mode::Degraded(1));
}

// ---------------------------------------------------------------------------------------
// 3. qemu-io: write/read patterns, FUA, write zeroes, discard, flush

fn qemu_io(uri: &str, cmds: &[&str]) -> String {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw", uri]);
    for x in cmds {
        c.args(["-c", x]);
    }
    let desc = format!("{c:?}");
    let o = run(&mut c);
    let t = text(&o);
    assert!(o.status.success(), "{desc}\n{t}");
    for bad in ["Pattern verification failed", "failed:", "error"] {
        assert!(!t.contains(bad), "{desc}: {bad:?} in\n{t}");
    }
    t
}

fn qemu_io_patterns(mode: Mode) {
    if !require_tools("qemu-io", &["qemu-io"]) {
        return;
    }
    let arr = Array::raid5(None);
    let size = arr.size(mode);
    let srv = arr.serve(mode, &[]);
    let u = &srv.uri;
    // Offsets chosen to straddle stripe units (64K) and full stripes (3 × 64K).
    let t = qemu_io(
        u,
        &[
            "write -P 0xab 0 1M",
            "read -P 0xab 0 1M",
            "write -f -P 0xcd 1M 1M",
            "read -P 0xcd 1M 1M",
            "write -P 0x11 2M 2M",
            "write -z 3145000 300000",
            "read -P 0x11 2M 1047848",
            "read -P 0 3145000 300000",
            "read -P 0x11 3445000 749304",
            "write -P 0x22 5M 2M",
            "discard 5M 1M",
            "read -P 0x22 6M 1M",
            "write -P 0x33 100000 5000",
            "read -P 0xab 0 100000",
            "read -P 0x33 100000 5000",
            "read -P 0xab 105000 943576",
            "flush",
        ],
    );
    assert_eq!(t.matches("wrote ").count(), 6, "{t}");
    // The last bytes of the export, and a write running up to its very end.
    let end = size - 70_000;
    let t = qemu_io(
        u,
        &[
            &format!("write -P 0x77 {end} 70000"),
            &format!("read -P 0x77 {end} 70000"),
            &format!("read -P 0 {} 65536", end - 65536),
        ],
    );
    assert!(t.contains("read 70000/70000"), "{t}");
    srv.stop();

    // Everything is still there after a restart (FUA/flush data on the members).
    let srv = arr.serve(mode, &[]);
    qemu_io(
        &srv.uri,
        &[
            "read -P 0xab 0 100000",
            "read -P 0x33 100000 5000",
            "read -P 0xcd 1M 1M",
            "read -P 0x11 2M 1047848",
            "read -P 0 3145000 300000",
            "read -P 0x11 3445000 749304",
            "read -P 0x22 6M 1M",
            &format!("read -P 0x77 {end} 70000"),
        ],
    );
    srv.stop();
}

#[test]
fn qemu_io_clean() {
    qemu_io_patterns(CLEAN);
}

#[test]
fn qemu_io_degraded() {
    qemu_io_patterns(Mode::Degraded(2));
}

// ---------------------------------------------------------------------------------------
// 4. fio with crc32c verification

fn fio(dir: &std::path::Path, uri: &str, name: &str, args: &[&str]) {
    let mut c = Command::new("fio");
    // Jobs as threads of one process: killing it leaves no job process behind.
    c.arg("--thread");
    // fio drops *-verify.state files in its working directory: keep them in the tempdir.
    c.current_dir(dir)
        .arg(format!("--name={name}"))
        .args([
            "--ioengine=nbd",
            "--bs=4k",
            "--verify=crc32c",
            "--do_verify=1",
        ])
        .args([
            "--output-format=json",
            "--verify_fatal=1",
            "--verify_state_save=0",
        ])
        .arg(format!("--uri={uri}"))
        .args(args);
    let desc = format!("{c:?}");
    let o = run(&mut c);
    let t = text(&o);
    assert!(o.status.success(), "{desc}\n{t}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !stderr.contains("verify") && !stdout.contains("verify:"),
        "fio verify error:\n{t}"
    );
    let js = &stdout[stdout
        .find('{')
        .unwrap_or_else(|| panic!("no fio json\n{t}"))..];
    let j: serde_json::Value =
        serde_json::from_str(js).unwrap_or_else(|e| panic!("fio json: {e}\n{t}"));
    let jobs = j["jobs"].as_array().unwrap();
    assert!(!jobs.is_empty(), "{t}");
    for job in jobs {
        assert_eq!(job["error"], 0, "job error\n{t}");
        let w = job["write"]["io_bytes"].as_u64().unwrap();
        let r = job["read"]["io_bytes"].as_u64().unwrap();
        assert!(w > 0, "nothing written\n{t}");
        assert_eq!(r, w, "verify pass read {r} bytes but {w} were written\n{t}");
    }
}

fn fio_verify(mode: Mode) {
    if !require_tools("fio", &["fio"]) {
        return;
    }
    let arr = Array::raid5(None);
    arr.size(mode);
    let srv = arr.serve(mode, &[]);
    let u = &srv.uri;
    let d = arr.dir.path();
    fio(
        d,
        u,
        "rand-qd1",
        &["--rw=randwrite", "--iodepth=1", "--size=16M"],
    );
    fio(
        d,
        u,
        "rand-qd16-2jobs",
        &[
            "--rw=randwrite",
            "--iodepth=16",
            "--size=32M",
            "--offset=64M",
            "--numjobs=2",
            "--offset_increment=64M",
        ],
    );
    fio(
        d,
        u,
        "seq-qd16-2jobs",
        &[
            "--rw=write",
            "--iodepth=16",
            "--bs=64k",
            "--size=32M",
            "--offset=256M",
            "--numjobs=2",
            "--offset_increment=32M",
        ],
    );
    fio(
        d,
        u,
        "seq-unaligned-qd16",
        &[
            "--rw=write",
            "--iodepth=16",
            "--bs=12k",
            "--size=12M",
            "--offset=400M",
        ],
    );
    srv.stop();
}

#[test]
fn fio_clean() {
    fio_verify(CLEAN);
}

#[test]
fn fio_degraded() {
    fio_verify(Mode::Degraded(3));
}

// ---------------------------------------------------------------------------------------
// 5. ext4 on nbdfuse + loop device

fn ext4_on_loop(mode: Mode) {
    if !require_tools(
        "ext4",
        &[
            "nbdfuse",
            "fusermount3",
            "losetup",
            "mkfs.ext4",
            "e2fsck",
            "mount",
            "umount",
        ],
    ) {
        return;
    }
    if let Some(why) = mount_unavailable() {
        skip(&format!("ext4 ({mode:?}): {why}"));
        return;
    }
    let arr = Array::raid5(None);
    arr.size(mode);
    let fuse_dir = arr.path("fuse");
    let mnt = arr.path("mnt");
    let files: Vec<(String, Vec<u8>)> = (0..5u64)
        .map(|i| {
            let len = [3 << 20, 1 << 20, 4096, 777_777, 2 << 20][i as usize];
            (format!("dir{}/file{i}", i % 2), random_bytes(len, 100 + i))
        })
        .collect();

    let srv = arr.serve(mode, &[]);
    {
        let mut st = BlockStack::new(&srv.uri, &fuse_dir, &mnt);
        run_ok(Command::new("mkfs.ext4").args(["-q", "-F", st.dev()]));
        st.mount();
        for (name, data) in &files {
            let p = mnt.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, data).unwrap();
        }
        run_ok(Command::new("sync").arg("-f").arg(&mnt));
        st.umount();
        let out = run_ok(Command::new("e2fsck").args(["-fn", st.dev()]));
        assert!(out.contains("files"), "{out}");
        st.mount();
        for (name, data) in &files {
            assert_same(name, &std::fs::read(mnt.join(name)).unwrap(), data);
        }
        st.close();
    }
    srv.stop();

    // Again from a fresh server process: nothing comes from any cache now.
    let srv = arr.serve(mode, &[]);
    {
        let mut st = BlockStack::new(&srv.uri, &fuse_dir, &mnt);
        run_ok(Command::new("e2fsck").args(["-fn", st.dev()]));
        st.mount();
        for (name, data) in &files {
            assert_same(name, &std::fs::read(mnt.join(name)).unwrap(), data);
        }
        st.close();
    }
    srv.stop();
}

#[test]
fn ext4_clean() {
    ext4_on_loop(CLEAN);
}

#[test]
fn ext4_degraded() {
    ext4_on_loop(Mode::Degraded(1));
}

// ---------------------------------------------------------------------------------------
// 6. Restart keeps data; written clean, read back clean and with each member missing.

#[test]
fn restart_keeps_data() {
    if !require_tools("restart", &["nbdcopy"]) {
        return;
    }
    let arr = Array::raid5(None);
    let data = random_bytes(24 << 20, 6);
    let src = arr.path("src.bin");
    std::fs::write(&src, &data).unwrap();

    let srv = arr.serve(CLEAN, &[]);
    // No --flush: the server's SIGTERM path must flush by itself.
    run_ok(Command::new("nbdcopy").arg(&src).arg(&srv.uri));
    srv.stop();

    let read_back = |mode: Mode, tag: &str| {
        let srv = arr.serve(mode, &[]);
        let out = arr.path(&format!("out-{tag}.img"));
        run_ok(Command::new("nbdcopy").arg(&srv.uri).arg(&out));
        let got = std::fs::read(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        assert_same(&format!("read back {mode:?}"), &got[..data.len()], &data);
        assert!(
            got[data.len()..].iter().all(|&b| b == 0),
            "{mode:?}: tail not zero"
        );
        srv.stop();
    };
    read_back(CLEAN, "clean");
    for skip in 0..4 {
        read_back(Mode::Degraded(skip), &format!("without-{skip}"));
    }
    // And the members are still clean afterwards (read-only visits change nothing).
    assert_eq!(arr.status(CLEAN)["health"], "ok");
}
