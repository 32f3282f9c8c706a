//! Disks that hang: one member is a file on a FUSE mount (nbdfuse of an nbdkit export)
//! whose FUSE server is stopped with SIGSTOP, as a dying disk or a stalled USB bridge
//! stops answering. The server must answer reads from the others within the slow limit,
//! fail the member at the fail limit, rebuild onto a spare, answer `status` at every
//! moment, and stop on SIGTERM in bounded time.

mod interop_support;

use interop_support::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SIZE: u64 = 64 << 20;
const SLOW: Duration = Duration::from_millis(500);
const FAIL: Duration = Duration::from_secs(5);

/// nbdkit (memory plugin) and nbdfuse exposing it as `dir/fuse/nbd`; `stop` and `cont`
/// send SIGSTOP/SIGCONT to the FUSE server. Unmounted and stopped on drop.
struct HangingDisk {
    nbdkit: Child,
    fuse: Option<Child>,
    fuse_dir: PathBuf,
}

impl HangingDisk {
    fn start(dir: &Path, name: &str) -> HangingDisk {
        let sock = dir.join(format!("{name}.nbdkit.sock"));
        let nbdkit = Command::new("nbdkit")
            .arg("--foreground")
            .arg("--exit-with-parent")
            .arg("--unix")
            .arg(&sock)
            .arg("memory")
            .arg(SIZE.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nbdkit");
        wait_for(&sock, "nbdkit did not listen");
        let fuse_dir = dir.join(format!("{name}.fuse"));
        std::fs::create_dir_all(&fuse_dir).unwrap();
        let fuse = Command::new("nbdfuse")
            .arg(&fuse_dir)
            .arg(format!("nbd+unix:///?socket={}", sock.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nbdfuse");
        wait_for(&fuse_dir.join("nbd"), "nbdfuse did not start");
        HangingDisk {
            nbdkit,
            fuse: Some(fuse),
            fuse_dir,
        }
    }

    fn path(&self) -> PathBuf {
        self.fuse_dir.join("nbd")
    }

    fn signal(&self, sig: i32) {
        if let Some(c) = &self.fuse {
            signal(c, sig);
        }
    }

    /// Drops the member's cached pages, so reads really go to the FUSE server, then stops
    /// the server.
    fn hang(&self) {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(self.path()).unwrap();
        // SAFETY: a plain syscall on an open descriptor.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        drop(f);
        self.signal(libc::SIGSTOP);
    }
}

impl Drop for HangingDisk {
    fn drop(&mut self) {
        if let Some(mut c) = self.fuse.take() {
            signal(&c, libc::SIGCONT);
            let _ = run_timeout(
                Command::new("fusermount3").arg("-uz").arg(&self.fuse_dir),
                Duration::from_secs(10),
            );
            if wait_bounded(&mut c, Duration::from_secs(10)).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = self.nbdkit.kill();
        let _ = self.nbdkit.wait();
    }
}

fn signal(c: &Child, sig: i32) {
    // SAFETY: a plain syscall on our own child's pid, not reaped yet.
    assert_eq!(unsafe { libc::kill(c.id() as i32, sig) }, 0);
}

fn wait_for(p: &Path, what: &str) {
    let start = Instant::now();
    while !p.exists() {
        assert!(start.elapsed() < Duration::from_secs(30), "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn available(test: &str) -> bool {
    if !require_tools(
        test,
        &["nbdkit", "nbdfuse", "nbdcopy", "fusermount3", "fio"],
    ) {
        return false;
    }
    if let Some(why) = mount_unavailable() {
        skip(&format!("{test}: {why}"));
        return false;
    }
    true
}

fn limits() -> Vec<String> {
    vec![
        "--slow-limit".into(),
        format!("{}ms", SLOW.as_millis()),
        "--fail-limit".into(),
        format!("{}s", FAIL.as_secs()),
        "--shutdown-limit".into(),
        "8s".into(),
    ]
}

/// A raid5 named `name` of three files and, as its fourth member (added and grown onto, so
/// it holds data), a disk that can be made to hang; the member paths.
fn raid5_with_a_hanging_fourth(name: &str) -> (Rig, HangingDisk, Vec<PathBuf>) {
    let rig = Rig::create("raid5", name, 3, SIZE);
    let disk = HangingDisk::start(rig.dir.path(), "d3");
    let mut members = rig.members.clone();
    {
        let srv = rig.serve(&members, &[], "setup");
        rig.add_grow(&disk.path());
        srv.stop();
    }
    members.push(disk.path());
    (rig, disk, members)
}

/// fio's region: after the nbdcopy data, written with crc32c verification headers.
const FIO_OFFSET: u64 = 120 << 20;
const FIO_SIZE: u64 = 32 << 20;

/// fio (nbd engine) writing FIO_SIZE at FIO_OFFSET with crc32c headers and a final flush,
/// or (`verify_only`) reading it back and checking every block.
fn fio_job(dir: &Path, uri: &str, verify_only: bool) -> Command {
    let mut c = Command::new("fio");
    c.current_dir(dir).args([
        "--name=hung",
        "--ioengine=nbd",
        "--rw=write",
        "--bs=64k",
        "--iodepth=4",
        "--verify=crc32c",
        "--verify_fatal=1",
        "--verify_state_save=0",
        "--end_fsync=1",
        "--output-format=json",
    ]);
    c.arg(format!("--uri={uri}"))
        .arg(format!("--offset={FIO_OFFSET}"))
        .arg(format!("--size={FIO_SIZE}"));
    if verify_only {
        c.arg("--verify_only=1");
    } else {
        c.arg("--do_verify=0");
    }
    c
}

/// Polls `status --json` on a thread while the test runs; records the slowest answer.
struct StatusPoller {
    stop: Arc<AtomicBool>,
    worst: Arc<Mutex<(Duration, String)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StatusPoller {
    fn start(rt: &Path) -> StatusPoller {
        let stop = Arc::new(AtomicBool::new(false));
        let worst = Arc::new(Mutex::new((Duration::ZERO, String::new())));
        let (s, w, rt) = (stop.clone(), worst.clone(), rt.to_path_buf());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let t = Instant::now();
                let out = run_timeout(
                    Command::new(bin())
                        .env("XDG_RUNTIME_DIR", &rt)
                        .args(["status", "--json"]),
                    Duration::from_secs(20),
                );
                let took = t.elapsed();
                let mut g = w.lock().unwrap();
                if took > g.0 || !out.status.success() {
                    *g = (took.max(g.0), text(&out));
                }
                drop(g);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        StatusPoller {
            stop,
            worst,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (Duration, String) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.worst.lock().unwrap().clone()
    }
}

#[test]
fn raid5_with_a_hung_member_answers_fails_it_and_rebuilds() {
    if !available("hung member raid5") {
        return;
    }
    let (rig, disk, members) = raid5_with_a_hanging_fourth("hang5");
    let spare = rig.spare("spare.img", SIZE);
    let mut extra = limits();
    extra.push("--on-event".into());
    extra.push(format!("cat >> {}", rig.path("events.jsonl").display()));
    let extra: Vec<&str> = extra.iter().map(|s| s.as_str()).collect();
    let srv = rig.serve(&members, &extra, "hang");
    rig.add_spare(&spare);
    // Data over the whole array (every member holds some), flushed.
    let size = rig.status()["size"].as_u64().unwrap();
    let data = random_bytes(size.min(96 << 20) as usize, 7);
    let src = rig.path("src.bin");
    std::fs::write(&src, &data).unwrap();
    run_ok(Command::new("nbdcopy").arg(&src).arg(&srv.uri));
    // And fio's own verifiable data after it, written and flushed.
    let fio_out = run_ok(&mut fio_job(rig.dir.path(), &srv.uri, false));
    assert!(fio_out.contains("\"jobname\""), "{fio_out}");

    let poller = StatusPoller::start(&rig.rt);
    disk.hang();
    let hung_at = Instant::now();
    // fio verifies what it wrote while the member hangs: no verify error, and no read
    // waits much past the slow limit (answered from the other members).
    let o = run_timeout(
        &mut fio_job(rig.dir.path(), &srv.uri, true),
        Duration::from_secs(60),
    );
    let out = text(&o);
    assert!(o.status.success(), "fio verify with a hung member: {out}");
    assert!(!out.contains("verify:"), "fio verify error: {out}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let js: serde_json::Value =
        serde_json::Deserializer::from_str(&stdout[stdout.find('{').unwrap_or(0)..])
            .into_iter()
            .next()
            .and_then(|v| v.ok())
            .unwrap_or_else(|| panic!("no fio JSON: {out}"));
    let read = &js["jobs"][0]["read"];
    assert_eq!(read["io_bytes"].as_u64(), Some(FIO_SIZE), "{out}");
    let worst = Duration::from_nanos(read["clat_ns"]["max"].as_u64().unwrap_or(u64::MAX));
    eprintln!(
        "fio verified {} MiB with a hung member; slowest read {worst:?}",
        FIO_SIZE >> 20
    );
    assert!(
        worst < SLOW + Duration::from_secs(1),
        "a read took {worst:?} (slow limit {SLOW:?})"
    );
    // Reads: answered from the other members, none waits much past the slow limit.
    let out = rig.path("out.bin");
    let t = Instant::now();
    let o = run_timeout(
        Command::new("nbdcopy")
            .args(["--requests=4", "--connections=1"])
            .arg(&srv.uri)
            .arg(&out),
        Duration::from_secs(60),
    );
    assert!(
        o.status.success(),
        "nbdcopy read with a hung member: {}",
        text(&o)
    );
    assert_same(
        "read with a member hung",
        &std::fs::read(&out).unwrap()[..data.len()],
        &data,
    );
    eprintln!(
        "read {} MiB with a hung member in {:?}",
        data.len() >> 20,
        t.elapsed()
    );
    // The member is failed within the fail limit (plus 5 s), the spare rebuilt.
    let st = rig.wait_status(
        "the hung member failed",
        FAIL + Duration::from_secs(25),
        |st| matches!(state(st, 3), "failed" | "removed"),
    );
    eprintln!("failed after {:?}: {}", hung_at.elapsed(), st["members"][3]);
    assert!(
        hung_at.elapsed() < FAIL + Duration::from_secs(5) + Duration::from_secs(20),
        "the member was failed {:?} after it hung",
        hung_at.elapsed()
    );
    let st = rig.wait_status(
        "the rebuild onto the spare",
        Duration::from_secs(120),
        |st| st["health"] == "ok",
    );
    let (worst, worst_out) = poller.finish();
    assert!(
        worst < Duration::from_secs(1),
        "status took {worst:?} to answer while a member hung:\n{worst_out}"
    );
    // The member's requests are counted: timeouts or slow reads, and what is in flight.
    let io = &st["members"][3]["io"];
    eprintln!("hung member's io: {io}");
    let events = std::fs::read_to_string(rig.path("events.jsonl")).unwrap_or_default();
    assert!(
        events.contains("member-failed"),
        "a member-failed event was sent:\n{events}"
    );
    // Writes still work and read back.
    let more = random_bytes(8 << 20, 8);
    std::fs::write(&src, &more).unwrap();
    run_ok(Command::new("nbdcopy").arg(&src).arg(&srv.uri));
    run_ok(Command::new("nbdcopy").arg(&srv.uri).arg(&out));
    assert_same(
        "written after",
        &std::fs::read(&out).unwrap()[..more.len()],
        &more,
    );
    // The disk answering again does not bring it back into service.
    disk.signal(libc::SIGCONT);
    std::thread::sleep(Duration::from_secs(1));
    let st = rig.status();
    assert!(matches!(state(&st, 3), "failed" | "removed"), "{st:#}");
    assert_eq!(st["health"], "ok", "{st:#}");
    srv.stop();
}

#[test]
fn raid0_with_a_hung_member_gives_eio_at_the_fail_limit_and_serves_the_other() {
    if !available("hung member raid0") {
        return;
    }
    let rig = Rig::create("raid0", "hang0", 2, SIZE);
    let disk = HangingDisk::start(rig.dir.path(), "d1");
    // raid0 of a plain file and the disk that will hang.
    let members = vec![rig.path("r0.img"), disk.path()];
    sparse(&members[0], SIZE);
    run_ok(
        rig.cmd()
            .args(["create", "--level", "raid0", "--name", "hang0"])
            .args(&members),
    );
    let extra = limits();
    let extra: Vec<&str> = extra.iter().map(|s| s.as_str()).collect();
    let srv = rig.serve(&members, &extra, "hang");
    let data = random_bytes(16 << 20, 9);
    let src = rig.path("src.bin");
    std::fs::write(&src, &data).unwrap();
    run_ok(Command::new("nbdcopy").arg(&src).arg(&srv.uri));
    let poller = StatusPoller::start(&rig.rt);
    disk.hang();
    // Stripe units alternate between the members: read each 64 KiB unit of the first
    // MiB on its own; some must fail (EIO at the fail limit), some succeed, none hang.
    let (mut ok, mut failed) = (0, 0);
    let start = Instant::now();
    // nbdcopy cannot read a sub-range; use qemu-io when present, else the NBD URI's
    // whole-volume copy, which must fail with EIO (not hang).
    if which("qemu-io") {
        for unit in 0..16u64 {
            let t = Instant::now();
            let o = run_timeout(
                Command::new("qemu-io")
                    .args(["-f", "raw", "-r"])
                    .arg(&srv.uri)
                    .arg("-c")
                    .arg(format!("read {} 64k", unit * 65536)),
                FAIL + Duration::from_secs(20),
            );
            let out = text(&o);
            let took = t.elapsed();
            if out.contains("read 65536/65536 bytes") {
                ok += 1;
            } else {
                // The first waits for the fail limit; later ones are given up at once
                // (the member has not answered for longer than the limit).
                assert!(
                    took < FAIL + Duration::from_secs(10)
                        && (failed > 0 || took >= FAIL - Duration::from_millis(100)),
                    "a read of the hung member's unit {unit} ended after {took:?}: {out}"
                );
                assert!(out.contains("Input/output error"), "unit {unit}: {out}");
                failed += 1;
            }
        }
        assert!(ok > 0 && failed > 0, "ok {ok}, failed {failed}");
    } else {
        let out = rig.path("out.bin");
        let o = run_timeout(
            Command::new("nbdcopy").arg(&srv.uri).arg(&out),
            FAIL + Duration::from_secs(30),
        );
        assert!(
            !o.status.success(),
            "a copy through a hung raid0 cannot succeed"
        );
    }
    eprintln!(
        "raid0 with a hung member: {ok} units read, {failed} got EIO in {:?}",
        start.elapsed()
    );
    let (worst, worst_out) = poller.finish();
    assert!(
        worst < Duration::from_secs(1),
        "status took {worst:?} while a member hung:\n{worst_out}"
    );
    // The member stays (raid0 cannot do without it); SIGTERM stops in bounded time.
    let t = Instant::now();
    let code = srv.stop_within(Duration::from_secs(8) + Duration::from_secs(5));
    eprintln!("exit status {code:?}");
    eprintln!("stopped in {:?}", t.elapsed());
    drop(disk);
}

fn which(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn sigterm_with_a_hung_member_stops_in_bounded_time_and_the_member_comes_back_stale() {
    if !available("hung member sigterm") {
        return;
    }
    let (rig, disk, members) = raid5_with_a_hanging_fourth("hangterm");
    let extra = limits();
    let extra: Vec<&str> = extra.iter().map(|s| s.as_str()).collect();
    let srv = rig.serve(&members, &extra, "term");
    // The chunks are allocated (and zeroed) first, with the member answering, so that
    // what is written while it hangs only waits in the write buffer.
    let src = rig.path("src.bin");
    std::fs::write(&src, random_bytes(4 << 20, 10)).unwrap();
    run_ok(
        Command::new("nbdcopy")
            .arg("--flush")
            .arg(&src)
            .arg(&srv.uri),
    );
    let data = random_bytes(4 << 20, 11);
    std::fs::write(&src, &data).unwrap();
    disk.hang();
    // Written (buffered, not flushed) while the member hangs, then SIGTERM at once: the
    // final flush waits for the member at most the fail limit, fails it on the others,
    // and the server exits non-zero within the shutdown limit (8 s) plus 5 s.
    run_ok(Command::new("nbdcopy").arg(&src).arg(&srv.uri));
    let t = Instant::now();
    let log = rig.path("serve-term.stderr");
    let code = srv.stop_within(Duration::from_secs(8 + 5));
    let took = t.elapsed();
    let err = std::fs::read_to_string(&log).unwrap_or_default();
    eprintln!("stopped in {took:?} with {code:?}:\n{err}");
    let failed_before_stop = err
        .split("stopping:")
        .next()
        .is_some_and(|before| before.contains("fail"));
    assert!(
        !code.success() || failed_before_stop,
        "a stop that could not flush to a member exits non-zero ({code:?}):\n{err}"
    );
    // The member answers again; a restart with it assembles and does not trust it.
    disk.signal(libc::SIGCONT);
    let srv = rig.serve(&members, &[], "after");
    let st = rig.status();
    assert!(
        matches!(state(&st, 3), "stale" | "failed"),
        "member 3 after the restart: {st:#}"
    );
    // What the stop flushed (on the other three) reads back.
    let out = rig.path("out.bin");
    run_ok(Command::new("nbdcopy").arg(&srv.uri).arg(&out));
    assert_same(
        "written before the stop",
        &std::fs::read(&out).unwrap()[..data.len()],
        &data,
    );
    srv.stop();
}
