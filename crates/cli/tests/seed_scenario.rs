//! The seed scenario of issue #6, end to end: the real `damocles` binary, file members, NBD
//! through nbdfuse and a loop device, ext4 on top.
//!
//! 1. `create --level raid0` on 2 members; `serve`; mkfs.ext4, mount, files of known
//!    content written and synced.
//! 2. `add --grow` twice (a balance starts by itself), `plan convert --level raid5` says
//!    the array survives 0 member failures now and 1 after, `convert --level raid5
//!    --background` (rate-limited, so it is still running at the kill).
//! 3. While the conversion runs a writer keeps writing files (each fsynced, with its
//!    directory); once some chunks but not all are converted the server gets SIGKILL. The
//!    stack is torn down as far as a dead server allows.
//! 4. `serve` again on the 4 members: the conversion resumes by itself and finishes (no
//!    chunk left to move, every chunk raid5, tolerance 1). ext4 replays its journal,
//!    `e2fsck -fn` is clean, every file written before the kill and synced reads back
//!    exactly (the file being written at the kill may be partial: not checked).
//! 5. `fail` a member: the array is degraded and I/O goes on (a new file, fsck and the
//!    files read back through reconstruction); `add` a spare: the rebuild ends with the
//!    array whole; the files read back again.
//! 6. SIGTERM: the server exits 0; the members alone say raid5, healthy, nothing to move.
//!
//! Skips (with a SKIP line) without nbdfuse, FUSE, root or a free loop device, as the
//! interop suite's ext4 test does. Every wait has a time limit and panics with the last
//! `status --json`; servers are stopped by their own pid, the mount stack is torn down even
//! when the test fails.

mod interop_support;

use interop_support::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Each member: 2 make a raid0 of about 500 MiB.
const MEMBER: u64 = 256 * MIB;
/// The conversion's rate limit (bytes per second of old slices moved): slow enough that the
/// kill lands in the middle, fast enough that the middle comes soon.
const RATE: &str = "4M";

/// A file the test wrote: its content is `random_bytes(len, seed)`.
#[derive(Clone, Debug)]
struct File {
    name: String,
    len: usize,
    seed: u64,
}

impl File {
    fn new(name: String, len: usize, seed: u64) -> File {
        File { name, len, seed }
    }

    fn data(&self) -> Vec<u8> {
        random_bytes(self.len, self.seed)
    }
}

/// Writes `f` under `mnt` and makes it durable: fsync of the file and of its directory.
fn write_durable(mnt: &Path, f: &File) -> std::io::Result<()> {
    use std::io::Write;
    let p = mnt.join(&f.name);
    let dir = p.parent().unwrap();
    std::fs::create_dir_all(dir)?;
    let mut file = std::fs::File::create(&p)?;
    file.write_all(&f.data())?;
    file.sync_all()?;
    std::fs::File::open(dir)?.sync_all()
}

/// Every file reads back exactly.
fn verify(mnt: &Path, files: &[File], when: &str) {
    for f in files {
        let got = std::fs::read(mnt.join(&f.name))
            .unwrap_or_else(|e| panic!("{when}: reading {}: {e}", f.name));
        assert_same(&format!("{when}: {}", f.name), &got, &f.data());
    }
}

/// Unmounts (ext4 has replayed its journal at mount), checks the filesystem with
/// `e2fsck -fn` and mounts again: what is read next comes from the array, not the page
/// cache.
fn fsck_and_remount(stack: &mut BlockStack, when: &str) {
    stack.umount();
    let o = run(Command::new("e2fsck").args(["-fn", stack.dev()]));
    assert!(
        o.status.success(),
        "{when}: e2fsck -fn found problems\n{}",
        text(&o)
    );
    stack.mount();
}

/// Writes files into the mounted filesystem until stopped or until a write fails (the
/// server was killed). A file counts as written once it and its directory are fsynced.
struct Writer {
    stop: Arc<AtomicBool>,
    synced: Arc<Mutex<Vec<File>>>,
    /// The error that ended the writer, if one did.
    done: mpsc::Receiver<Option<String>>,
}

impl Writer {
    /// At most this many files, so a slow machine does not fill the array.
    const MAX_FILES: u64 = 200;

    fn spawn(mnt: &Path) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let synced = Arc::new(Mutex::new(Vec::new()));
        let (tx, done) = mpsc::channel();
        let (mnt, st, sy) = (mnt.to_path_buf(), stop.clone(), synced.clone());
        std::thread::spawn(move || {
            for i in 0..Writer::MAX_FILES {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let f = File::new(
                    format!("during/w{i:03}"),
                    (128 << 10) + (i as usize % 7) * 61_447,
                    1000 + i,
                );
                if let Err(e) = write_durable(&mnt, &f) {
                    let _ = tx.send(Some(format!("{}: {e}", f.name)));
                    return;
                }
                sy.lock().unwrap().push(f);
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = tx.send(None);
        });
        Writer { stop, synced, done }
    }

    fn count(&self) -> usize {
        self.synced.lock().unwrap().len()
    }

    /// Stops the writer (bounded wait); returns the files it synced and the error that
    /// stopped it, if any.
    fn finish(self) -> (Vec<File>, Option<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let err = self
            .done
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("the writer did not stop within 30 s ({e}): hung I/O?"));
        let files = self.synced.lock().unwrap().clone();
        (files, err)
    }
}

fn num(st: &Value, key: &str) -> u64 {
    st[key]
        .as_u64()
        .unwrap_or_else(|| panic!("status has no number {key}: {st:#}"))
}

/// Every member in `ok` use and nothing amiss: the array as a healthy raid5 over `n`.
fn assert_whole_raid5(st: &Value, n: usize) {
    assert_eq!(st["level"], "raid5", "{st:#}");
    assert_eq!(st["tolerance"], 1, "{st:#}");
    assert_eq!(st["health"], "ok", "{st:#}");
    assert_eq!(st["chunks_degraded"], 0, "{st:#}");
    assert_eq!(st["chunks_to_move"], 0, "{st:#}");
    let working = st["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["state"] == "ok")
        .count();
    assert_eq!(working, n, "{st:#}");
    for k in [
        "read_errors",
        "write_errors",
        "checksum_errors",
        "unrecoverable",
    ] {
        assert_eq!(st["errors"][k], 0, "errors.{k}: {st:#}");
    }
    assert_eq!(st["lost"].as_array().map(Vec::len), Some(0), "{st:#}");
}

#[test]
fn raid0_grown_converted_to_raid5_through_a_kill_then_a_member_fails() {
    if !require_tools(
        "seed scenario",
        &[
            "nbdfuse",
            "fusermount3",
            "losetup",
            "mkfs.ext4",
            "e2fsck",
            "mount",
            "umount",
            "sync",
        ],
    ) {
        return;
    }
    if let Some(why) = mount_unavailable() {
        skip(&format!("seed scenario: {why}"));
        return;
    }
    let t0 = Instant::now();
    let log = |what: &str| eprintln!("seed: {what} ({:.1} s)", t0.elapsed().as_secs_f64());

    // 1. raid0 on two members, served, ext4 with files on it.
    let rig = Rig::create("raid0", "seed", 2, MEMBER);
    let fuse_dir = rig.path("fuse");
    let mnt = rig.path("mnt");
    let srv = rig.serve(&rig.members, &["--rebuild-rate", RATE], "a");
    assert!(srv.line.contains("raid0"), "{}", srv.line);
    let st = rig.status();
    assert_eq!(st["level"], "raid0", "{st:#}");
    assert_eq!(st["tolerance"], 0, "{st:#}");
    let size = num(&st, "size");
    assert!(size > 400 * MIB, "2 x 256 MiB as raid0: {st:#}");

    let mut stack = BlockStack::new(&srv.uri, &fuse_dir, &mnt);
    // Inode tables and journal written now, not by the kernel in the background later.
    run_ok(Command::new("mkfs.ext4").args([
        "-q",
        "-F",
        "-E",
        "lazy_itable_init=0,lazy_journal_init=0",
        stack.dev(),
    ]));
    stack.mount();
    // About 40 MiB: the conversion has real data to move.
    let mut files: Vec<File> = (0..12u64)
        .map(|i| {
            let len = match i {
                0 => 1,
                1 => 4096,
                2 => 777_777,
                _ => ((i % 5 + 2) << 20) as usize + i as usize * 1237,
            };
            File::new(format!("before/d{}/f{i:02}", i % 3), len, 100 + i)
        })
        .collect();
    for f in &files {
        let p = mnt.join(&f.name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, f.data()).unwrap();
    }
    run_ok(Command::new("sync").arg("-f").arg(&mnt));
    let st = rig.status();
    let allocated = num(&st, "chunks_allocated");
    assert!(allocated >= 10, "40 MiB of files fill chunks: {st:#}");
    assert_eq!(st["chunks_to_move"], 0, "{st:#}");
    log(&format!(
        "raid0 served, ext4 with {} files, {allocated} chunks",
        files.len()
    ));

    // 2. Two more members, then the conversion, forecast first.
    let new: Vec<PathBuf> = (2..4)
        .map(|i| rig.spare(&format!("m{i}.img"), MEMBER))
        .collect();
    assert_eq!(rig.add_grow(&new[0]), 2);
    assert_eq!(rig.add_grow(&new[1]), 3);
    let st = rig.status();
    for i in 0..4 {
        assert_eq!(state(&st, i), "ok", "member {i}: {st:#}");
    }
    assert_eq!(st["level"], "raid0", "{st:#}");
    let plan = run_ok(rig.cmd().args(["plan", "convert", "--level", "raid5"]));
    assert!(
        plan.contains("survives 0 member failure(s), 1 after"),
        "plan convert: {plan}"
    );
    assert!(!plan.contains("REFUSED"), "plan convert: {plan}");
    let out = run_ok(rig.cmd().args([
        "convert",
        "--level",
        "raid5",
        "--background",
        "--rate",
        RATE,
    ]));
    log(&format!("convert: {}", out.trim().replace('\n', " / ")));
    let st = rig.status();
    assert_eq!(st["level"], "raid5", "the goal: {st:#}");
    // Until every chunk is converted, one failure can still lose data.
    assert_eq!(st["tolerance"], 0, "{st:#}");
    let to_move0 = num(&st, "chunks_to_move");
    assert!(to_move0 >= 10, "{st:#}");
    assert_eq!(st["reshape"]["running"], true, "{st:#}");

    // 3. Writes during the conversion; SIGKILL once part of it is done.
    let writer = Writer::spawn(&mnt);
    let st = rig.wait_status(
        "a quarter of the chunks converted and the writer under way",
        JOB_LIMIT,
        |s| {
            let left = s["chunks_to_move"].as_u64().unwrap_or(0);
            // Two thirds converted: do not wait any longer for a slow writer.
            left * 4 <= to_move0 * 3 && (writer.count() >= 3 || left * 3 <= to_move0)
        },
    );
    let left = num(&st, "chunks_to_move");
    assert!(
        left > 0 && st["reshape"]["running"] == true,
        "the conversion ended before the kill: lower RATE? {st:#}"
    );
    let human = run_ok(rig.cmd().arg("status"));
    assert!(
        human.contains("reshape:     running") && human.contains("chunks to move"),
        "{human}"
    );
    // SAFETY: plain syscall on our own child, not reaped yet (Server reaps it on drop).
    let r = unsafe { libc::kill(srv.pid(), libc::SIGKILL) };
    assert_eq!(r, 0, "kill -KILL {}", srv.pid());
    drop(srv);
    let (during, err) = writer.finish();
    log(&format!(
        "SIGKILL with {left} of {to_move0} chunks still to move; {} files synced during the \
         conversion; the writer then saw: {}",
        during.len(),
        err.as_deref().unwrap_or("nothing (it was stopped)")
    ));
    assert!(
        !during.is_empty(),
        "no write was synced during the conversion"
    );
    files.extend(during);
    for n in stack.close_after_crash() {
        log(&format!("teardown after the kill: {n}"));
    }

    // 4. Served again: the conversion resumes by itself and ends.
    let all: Vec<PathBuf> = rig.members.iter().chain(&new).cloned().collect();
    let srv = rig.serve(&all, &[], "b");
    let st = rig.wait_status("the conversion to resume and finish", JOB_LIMIT, |s| {
        // `reshape` is there only if this server ran one: nobody asked it to.
        s["reshape"].is_object() && s["reshape"]["running"] != true && s["chunks_to_move"] == 0
    });
    assert_whole_raid5(&st, 4);
    for i in 0..4 {
        assert!(num(&st["members"][i], "used") > 0, "member {i}: {st:#}");
    }
    log(&format!(
        "restarted; the conversion resumed and finished ({} bytes moved)",
        st["reshape"]["done"]
    ));
    let mut stack = BlockStack::new(&srv.uri, &fuse_dir, &mnt);
    // Mounting replays ext4's journal; the check comes after.
    stack.mount();
    fsck_and_remount(&mut stack, "after the restart");
    verify(&mnt, &files, "after the restart");
    log(&format!("e2fsck clean, {} files read back", files.len()));

    // 5. A member fails; I/O goes on; a spare takes its place.
    rig.fail(0);
    let st = rig.status();
    assert_eq!(state(&st, 0), "failed", "{st:#}");
    assert_eq!(st["health"], "degraded", "{st:#}");
    let f = File::new("degraded/one".into(), 3 << 20, 7);
    write_durable(&mnt, &f).unwrap();
    files.push(f);
    fsck_and_remount(&mut stack, "degraded");
    verify(&mnt, &files, "degraded");
    log("member 0 failed: e2fsck clean and the files read back, degraded");

    let spare = rig.spare("spare.img", MEMBER);
    let idx = rig.add_spare(&spare);
    assert_eq!(idx, 4);
    let st = rig.wait_status("the rebuild onto the spare", JOB_LIMIT, |s| {
        s["health"] == "ok" && s["rebuild"]["running"] != true && s["chunks_degraded"] == 0
    });
    assert_whole_raid5(&st, 4);
    assert_eq!(state(&st, 0), "removed", "{st:#}");
    assert_eq!(state(&st, 4), "ok", "{st:#}");
    fsck_and_remount(&mut stack, "after the rebuild");
    verify(&mnt, &files, "after the rebuild");
    let used: Vec<String> = st["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| format!("{}:{}:{}MiB", m["index"], m["state"], num(m, "used") >> 20))
        .collect();
    log(&format!(
        "rebuilt onto the spare ({}); e2fsck clean, files read back",
        used.join(" ")
    ));

    // 6. Graceful stop; the members alone tell the same.
    stack.close();
    srv.stop();
    let now: Vec<PathBuf> = all[1..].iter().chain([&spare]).cloned().collect();
    let out = run_ok(Command::new(bin()).args(["status", "--json"]).args(&now));
    let st: Value = serde_json::from_str(&out).unwrap();
    assert_whole_raid5(&st, 4);
    log("stopped cleanly");
}
