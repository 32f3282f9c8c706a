//! A real faulty disk: one member is a file served by nbdkit with its `error` filter, seen
//! through nbdfuse. Turning the errors on must make damocles fail that member and go on
//! serving correct data (reads and writes), as a disk dying in a served array would.

mod interop_support;

use interop_support::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SIZE: u64 = 64 << 20;

/// nbdkit (file plugin + error filter, errors while `trigger` exists) and nbdfuse exposing it
/// as `dir/fuse/nbd`; both stopped on drop.
struct FaultyDisk {
    nbdkit: Child,
    fuse: Option<Child>,
    fuse_dir: PathBuf,
    trigger: PathBuf,
}

impl FaultyDisk {
    fn start(dir: &Path) -> FaultyDisk {
        let backing = dir.join("backing.img");
        std::fs::File::create(&backing)
            .unwrap()
            .set_len(SIZE)
            .unwrap();
        let sock = dir.join("nbdkit.sock");
        let trigger = dir.join("errors-on");
        let nbdkit = Command::new("nbdkit")
            .arg("--foreground")
            .arg("--exit-with-parent")
            .arg("--unix")
            .arg(&sock)
            .args(["--filter=error", "file"])
            .arg(&backing)
            .arg("error-rate=100%")
            .arg(format!("error-file={}", trigger.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nbdkit");
        let start = Instant::now();
        while !sock.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "nbdkit did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let fuse_dir = dir.join("fuse");
        std::fs::create_dir_all(&fuse_dir).unwrap();
        let fuse = Command::new("nbdfuse")
            .arg(&fuse_dir)
            .arg(format!("nbd+unix:///?socket={}", sock.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn nbdfuse");
        let file = fuse_dir.join("nbd");
        let start = Instant::now();
        while !file.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "nbdfuse did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        FaultyDisk {
            nbdkit,
            fuse: Some(fuse),
            fuse_dir,
            trigger,
        }
    }

    fn path(&self) -> PathBuf {
        self.fuse_dir.join("nbd")
    }

    fn errors_on(&self) {
        std::fs::write(&self.trigger, b"").unwrap();
    }
}

impl Drop for FaultyDisk {
    fn drop(&mut self) {
        if let Some(mut c) = self.fuse.take() {
            let start = Instant::now();
            while !run(Command::new("fusermount3").arg("-u").arg(&self.fuse_dir))
                .status
                .success()
                && start.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            if wait_bounded(&mut c, Duration::from_secs(10)).is_none() {
                let _ = run(Command::new("fusermount3").arg("-uz").arg(&self.fuse_dir));
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = self.nbdkit.kill();
        let _ = self.nbdkit.wait();
    }
}

#[test]
fn nbdkit_error_filter_member_is_failed_and_data_stays_correct() {
    if !require_tools(
        "faulty member",
        &["nbdkit", "nbdfuse", "nbdcopy", "fusermount3"],
    ) {
        return;
    }
    if let Some(why) = mount_unavailable() {
        skip(&format!("faulty member: {why}"));
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("damocles-faulty.")
        .tempdir()
        .unwrap();
    let disk = FaultyDisk::start(dir.path());
    let mut members: Vec<PathBuf> = (0..3)
        .map(|i| {
            let p = dir.path().join(format!("m{i}.img"));
            std::fs::File::create(&p).unwrap().set_len(SIZE).unwrap();
            p
        })
        .collect();
    members.push(disk.path());
    run_ok(
        Command::new(bin())
            .args(["create", "--level", "raid5"])
            .args(&members),
    );
    let sock = dir.path().join("nbd.sock");
    let mut cmd = Command::new(bin());
    cmd.env("DAMOCLES_LOG", "info")
        .arg("serve")
        .arg("--socket")
        .arg(&sock)
        .args(&members);
    let srv = Server::start(cmd, &dir.path().join("serve.stderr"));

    let data = random_bytes(40 << 20, 11);
    let src = dir.path().join("src.bin");
    std::fs::write(&src, &data).unwrap();
    run_ok(Command::new("nbdcopy").arg(&src).arg(&srv.uri));

    // The disk starts failing every request.
    disk.errors_on();
    let out = dir.path().join("out.bin");
    run_ok(Command::new("nbdcopy").arg(&srv.uri).arg(&out));
    assert_same(
        "read back after the member failed",
        &std::fs::read(&out).unwrap()[..data.len()],
        &data,
    );
    let log = srv.stderr();
    assert!(
        log.contains("member 3 failed"),
        "the server says which member failed:\n{log}"
    );
    // Writes go on too, and read back.
    let more = random_bytes(8 << 20, 12);
    std::fs::write(&src, &more).unwrap();
    run_ok(Command::new("nbdcopy").arg(&src).arg(&srv.uri));
    run_ok(Command::new("nbdcopy").arg(&srv.uri).arg(&out));
    assert_same(
        "written while degraded",
        &std::fs::read(&out).unwrap()[..more.len()],
        &more,
    );
    srv.stop();

    // The metadata on the other members records it: failed (or, once the automatic
    // rebuild has moved its data to the others, removed) — never in sync again.
    let st = run_ok(
        Command::new(bin())
            .args(["status", "--json"])
            .args(&members[..3]),
    );
    let st: serde_json::Value = serde_json::from_str(&st).unwrap();
    let state = st["members"][3]["state"].as_str().unwrap_or_default();
    assert!(state == "failed" || state == "removed", "{st}");
    assert_ne!(st["health"], "failed", "{st}");
}
