//! Member failures on a served array, with real processes end to end: `damocles serve` on
//! file members, fio (nbd engine, crc32c verification) or nbdcopy as the client, and
//! `damocles fail/add/rebuild/status --json` through the control socket.
//!
//! - raid5: a member fails while fio writes and verifies; the hot spare takes over, the
//!   rebuild runs under the I/O; fio sees no error, and `fio --verify_only` passes after the
//!   rebuild and again after a restart on the new member set.
//! - raid6: the same with two members failing one after the other during fio, two spares.
//! - raid5: the server is SIGKILLed in the middle of a (rate-limited) rebuild; the restarted
//!   server resumes it from its checkpoint instead of starting over, and the data read back
//!   is the data written.
//!
//! Every test has its own temporary directory holding the members, the NBD Unix socket and
//! XDG_RUNTIME_DIR (so the control socket, and the only server commands can find, is its
//! own). Servers are stopped by their own pid.

mod interop_support;

use interop_support::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Right after a failure: a rebuild onto `spare` is under way (the spare is `replacing` the
/// failed member until the rebuild ends), or already over with the spare in use.
fn assert_taking_over(st: &Value, spare: usize) {
    let running = st["rebuild"]["running"] == true;
    let s = state(st, spare);
    assert!(
        (running && s == "replacing") || (st["health"] == "ok" && s == "ok"),
        "no rebuild onto spare {spare} after the failure: {st:#}"
    );
}

fn u64_of(v: &Value, what: &str) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"))
}

/// Nothing went wrong on the I/O path: failures by request count no errors, lose nothing.
fn assert_no_errors(st: &Value) {
    for k in [
        "read_errors",
        "write_errors",
        "checksum_errors",
        "unrecoverable",
    ] {
        assert_eq!(st["errors"][k], 0, "errors.{k}: {st:#}");
    }
    assert_eq!(st["lost"].as_array().map(Vec::len), Some(0), "lost: {st:#}");
}

/// The array is whole again: no rebuild running, nothing degraded, every `failed` member
/// `removed`, every spare in `active` now `ok`, the other members `ok`.
fn assert_whole(st: &Value, n: usize, failed: &[usize], active: &[usize]) {
    assert_eq!(st["health"], "ok", "{st:#}");
    assert_ne!(st["rebuild"]["running"], true, "{st:#}");
    assert_eq!(st["chunks_degraded"], 0, "{st:#}");
    assert!(st["needs"].is_null(), "needs: {st:#}");
    let members = st["members"].as_array().unwrap();
    assert_eq!(members.len(), n + active.len(), "{st:#}");
    for i in 0..members.len() {
        let want = if failed.contains(&i) { "removed" } else { "ok" };
        assert_eq!(state(st, i), want, "member {i}: {st:#}");
    }
    for &i in active {
        assert!(
            u64_of(&st["members"][i]["used"], "used") > 0,
            "spare {i} holds no data: {st:#}"
        );
    }
    assert!(
        u64_of(&st["rebuild"]["total"], "rebuild.total") > 0,
        "{st:#}"
    );
}

// ---------------------------------------------------------------------------------------
// fio

/// Options of every fio run: crc32c verification of everything written, fatal.
const FIO_COMMON: &[&str] = &[
    "--ioengine=nbd",
    "--verify=crc32c",
    "--do_verify=1",
    "--verify_fatal=1",
    "--verify_state_save=0",
    "--output-format=json",
];

/// The jobs written during the failures: random 4 KiB writes at queue depth 16 verified
/// every 512 blocks while writing (reads interleaved with writes across the failure), and
/// sequential 64 KiB writes at queue depth 8 verified after the write phase. Writes are
/// rate-limited (6 MiB/s each) so the write phase lasts about 6 s whatever the machine.
const FIO_JOBS: &[&[&str]] = &[
    &[
        "--name=rand4k",
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=16",
        "--offset=0",
        "--size=36M",
        "--rate=,6m",
        "--verify_backlog=512",
    ],
    &[
        "--name=seq64k",
        "--rw=write",
        "--bs=64k",
        "--iodepth=8",
        "--offset=100M",
        "--size=36M",
        "--rate=,6m",
    ],
];
const FIO_BYTES: u64 = 36 * MIB;

fn fio_command(dir: &Path, uri: &str, verify_only: bool) -> Command {
    let mut c = Command::new("fio");
    // Jobs as threads of one process: killing it leaves no job process behind.
    c.arg("--thread");
    // fio drops *-verify.state files in its working directory: keep them in the tempdir.
    c.current_dir(dir)
        .args(FIO_COMMON)
        .arg(format!("--uri={uri}"));
    for job in FIO_JOBS {
        for a in *job {
            if verify_only && (a.starts_with("--verify_backlog") || a.starts_with("--rate")) {
                continue;
            }
            c.arg(a);
        }
        if verify_only {
            c.arg("--verify_only=1");
        }
    }
    c
}

/// A fio process in the background, killed if the test panics while it runs.
struct Fio {
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
    desc: String,
}

impl Fio {
    fn spawn(dir: &Path, uri: &str, tag: &str) -> Fio {
        let out = dir.join(format!("fio-{tag}.json"));
        let err = dir.join(format!("fio-{tag}.stderr"));
        let mut c = fio_command(dir, uri, false);
        let desc = format!("{c:?}");
        let child = c
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("spawn fio");
        Fio {
            child: Some(child),
            out,
            err,
            desc,
        }
    }

    fn output(&self) -> String {
        format!(
            "{}\nstdout:\n{}\nstderr:\n{}",
            self.desc,
            std::fs::read_to_string(&self.out).unwrap_or_default(),
            std::fs::read_to_string(&self.err).unwrap_or_default()
        )
    }

    /// Panics unless fio is still running (the failure must happen under its I/O).
    fn assert_running(&mut self, when: &str) {
        let st = self.child.as_mut().unwrap().try_wait().unwrap();
        assert!(
            st.is_none(),
            "fio ended ({st:?}) before {when}: the test did not overlap them\n{}",
            self.output()
        );
    }

    /// Waits for fio (bounded) and checks its result: exit 0, no verify error, every job
    /// wrote its whole region and read all of it back.
    fn finish(mut self) {
        let mut child = self.child.take().unwrap();
        let Some(status) = wait_bounded(&mut child, JOB_LIMIT) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "fio still running after {JOB_LIMIT:?} (hang?)\n{}",
                self.output()
            );
        };
        let stdout = std::fs::read_to_string(&self.out).unwrap_or_default();
        let stderr = std::fs::read_to_string(&self.err).unwrap_or_default();
        check_fio(status.success(), &stdout, &stderr, &self.output(), true);
    }
}

impl Drop for Fio {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn check_fio(ok: bool, stdout: &str, stderr: &str, all: &str, wrote: bool) {
    assert!(ok, "fio failed\n{all}");
    assert!(
        !stderr.contains("verify") && !stdout.contains("verify:"),
        "fio verify error\n{all}"
    );
    let js = &stdout[stdout
        .find('{')
        .unwrap_or_else(|| panic!("no fio json\n{all}"))..];
    let j: Value = serde_json::from_str(js).unwrap_or_else(|e| panic!("fio json: {e}\n{all}"));
    let jobs = j["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), FIO_JOBS.len(), "{all}");
    for job in jobs {
        assert_eq!(job["error"], 0, "job error\n{all}");
        let r = job["read"]["io_bytes"].as_u64().unwrap();
        assert_eq!(r, FIO_BYTES, "{} verified {r} bytes\n{all}", job["jobname"]);
        if wrote {
            let w = job["write"]["io_bytes"].as_u64().unwrap();
            assert_eq!(w, FIO_BYTES, "{} wrote {w} bytes\n{all}", job["jobname"]);
        }
    }
}

/// `fio --verify_only` with the jobs' parameters: the data fio wrote is all there.
fn fio_verify_only(dir: &Path, uri: &str) {
    let mut c = fio_command(dir, uri, true);
    let desc = format!("{c:?}");
    let o = run(&mut c);
    let all = format!("{desc}\n{}", text(&o));
    check_fio(
        o.status.success(),
        &String::from_utf8_lossy(&o.stdout),
        &String::from_utf8_lossy(&o.stderr),
        &all,
        false,
    );
}

/// Waits until fio's writes reach the array (its chunks get allocated), so a failure that
/// follows happens under I/O; bounded.
fn wait_for_writes(rig: &Rig) {
    rig.wait_status("fio's first writes", Duration::from_secs(20), |s| {
        s["chunks_allocated"].as_u64().unwrap_or(0) > 0
    });
}

// ---------------------------------------------------------------------------------------
// 1. raid5, one failure under fio

#[test]
fn raid5_fio_verify_through_failure_and_rebuild() {
    if !require_tools("served raid5 failure under fio", &["fio"]) {
        return;
    }
    let t0 = Instant::now();
    let size = 192 * MIB;
    let rig = Rig::create("raid5", "r5", 4, size);
    // A slow rebuild, so it runs under fio's I/O instead of being over at once.
    let srv = rig.serve(&rig.members, &["--rebuild-rate", "8M"], "a");
    assert!(srv.line.contains("ok"), "{}", srv.line);
    let spare = rig.spare("spare.img", size);
    assert_eq!(rig.add(&spare), 4);

    let mut fio = Fio::spawn(rig.dir.path(), &srv.uri, "write");
    wait_for_writes(&rig);
    std::thread::sleep(Duration::from_millis(500));
    fio.assert_running("the failure");
    rig.fail(1);
    let st = rig.status();
    assert_eq!(state(&st, 1), "failed", "{st:#}");
    assert!(
        st["members"][1]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("damocles fail")),
        "{st:#}"
    );
    // The spare took the failed member's place at once.
    assert_taking_over(&st, 4);
    fio.finish();
    eprintln!(
        "raid5: fio through the failure done after {:?}",
        t0.elapsed()
    );

    let mut bugs = Vec::new();
    let st = rig.settle(&mut bugs);
    assert_whole(&st, 4, &[1], &[4]);
    assert_no_errors(&st);
    fio_verify_only(rig.dir.path(), &srv.uri);
    srv.stop();

    // From the members alone, with a fresh process: the rebuilt array holds fio's data.
    let now = vec![
        rig.members[0].clone(),
        rig.members[2].clone(),
        rig.members[3].clone(),
        spare.clone(),
    ];
    let srv = rig.serve(&now, &[], "b");
    assert!(srv.line.contains("ok"), "{}", srv.line);
    let st = rig.status();
    assert_eq!(st["health"], "ok", "{st:#}");
    assert_eq!(st["chunks_degraded"], 0, "{st:#}");
    fio_verify_only(rig.dir.path(), &srv.uri);
    srv.stop();
    eprintln!(
        "raid5_fio_verify_through_failure_and_rebuild: {:?}",
        t0.elapsed()
    );
    assert!(bugs.is_empty(), "{}", bugs.join("\n"));
}

// ---------------------------------------------------------------------------------------
// 2. raid6, two failures under fio

#[test]
fn raid6_survives_two_failures_under_fio() {
    if !require_tools("served raid6 failures under fio", &["fio"]) {
        return;
    }
    let t0 = Instant::now();
    let size = 128 * MIB;
    let rig = Rig::create("raid6", "r6", 5, size);
    let srv = rig.serve(&rig.members, &["--rebuild-rate", "8M"], "a");
    assert!(srv.line.contains("ok"), "{}", srv.line);
    let spares = [rig.spare("spare0.img", size), rig.spare("spare1.img", size)];
    assert_eq!(rig.add(&spares[0]), 5);
    assert_eq!(rig.add(&spares[1]), 6);
    let next = u64_of(
        &rig.control(r#"{"cmd":"events","after":18446744073709551615}"#)["next"],
        "events.next",
    );

    let mut fio = Fio::spawn(rig.dir.path(), &srv.uri, "write");
    wait_for_writes(&rig);
    std::thread::sleep(Duration::from_millis(300));
    fio.assert_running("the first failure");
    rig.fail(1);
    let st = rig.status();
    assert_eq!(state(&st, 1), "failed", "{st:#}");
    assert_taking_over(&st, 5);
    assert_eq!(state(&st, 6), "spare", "{st:#}");
    assert_eq!(st["health"], "degraded", "{st:#}");

    std::thread::sleep(Duration::from_millis(1500));
    fio.assert_running("the second failure");
    rig.fail(3);
    let st = rig.status();
    assert_eq!(state(&st, 3), "failed", "{st:#}");
    assert_taking_over(&st, 6);
    assert_eq!(st["health"], "degraded", "{st:#}");
    for i in [1, 3] {
        assert!(
            matches!(state(&st, i), "failed" | "removed"),
            "member {i}: {st:#}"
        );
    }
    fio.finish();
    eprintln!(
        "raid6: fio through two failures done after {:?}",
        t0.elapsed()
    );

    let mut bugs = Vec::new();
    let st = rig.settle(&mut bugs);
    assert_whole(&st, 5, &[1, 3], &[5, 6]);
    assert_no_errors(&st);
    assert_eq!(st["tolerance"], 2, "{st:#}");

    // The events tell the same story.
    let ev = rig.control(&format!(r#"{{"cmd":"events","after":{next}}}"#));
    let ev = ev["events"].as_array().unwrap();
    let count = |kind: &str, member: Option<u64>| {
        ev.iter()
            .filter(|e| e["event"] == kind && member.is_none_or(|m| e["member"] == m))
            .count()
    };
    assert_eq!(count("member-failed", Some(1)), 1, "{ev:#?}");
    assert_eq!(count("member-failed", Some(3)), 1, "{ev:#?}");
    assert_eq!(count("spare-activated", None), 2, "{ev:#?}");
    assert!(count("rebuild-finished", None) >= 1, "{ev:#?}");
    assert_eq!(count("unrecoverable", None), 0, "{ev:#?}");

    fio_verify_only(rig.dir.path(), &srv.uri);
    srv.stop();

    let now: Vec<PathBuf> = [0, 2, 4]
        .iter()
        .map(|&i| rig.members[i].clone())
        .chain(spares.iter().cloned())
        .collect();
    let srv = rig.serve(&now, &[], "b");
    assert!(srv.line.contains("ok"), "{}", srv.line);
    assert_eq!(rig.status()["health"], "ok");
    fio_verify_only(rig.dir.path(), &srv.uri);
    srv.stop();
    eprintln!("raid6_survives_two_failures_under_fio: {:?}", t0.elapsed());
    assert!(bugs.is_empty(), "{}", bugs.join("\n"));
}

// ---------------------------------------------------------------------------------------
// 3. SIGKILL in the middle of a rebuild

/// Copies the whole served disk out with nbdcopy and compares its first bytes with `src`
/// (and the rest with zeros) using cmp.
fn compare_out(rig: &Rig, uri: &str, src: &Path, what: &str) {
    let out = rig.path("out.img");
    let _ = std::fs::remove_file(&out);
    run_ok(Command::new("nbdcopy").arg(uri).arg(&out));
    let len = std::fs::metadata(src).unwrap().len();
    let o = run(Command::new("cmp")
        .arg("-n")
        .arg(len.to_string())
        .arg(src)
        .arg(&out));
    assert!(o.status.success(), "{what}: data differs\n{}", text(&o));
    let o = run(Command::new("cmp")
        .arg("-i")
        .arg(format!("{len}:{len}"))
        .arg(&out)
        .arg("/dev/zero"));
    // cmp reports EOF on `out` when the rest is all zeros.
    let t = text(&o);
    assert!(
        t.contains("EOF on") && !t.contains("differ"),
        "{what}: bytes past the data are not zero\n{t}"
    );
    std::fs::remove_file(&out).unwrap();
}

#[test]
fn kill_mid_rebuild_resumes_from_checkpoint() {
    if !require_tools("served rebuild killed", &["nbdcopy", "cmp"]) {
        return;
    }
    let t0 = Instant::now();
    let size = 128 * MIB;
    let rig = Rig::create("raid5", "k5", 4, size);
    let src = rig.path("src.bin");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&src).unwrap());
        for i in 0..25 {
            f.write_all(&random_bytes(8 << 20, 300 + i)).unwrap();
        }
        f.flush().unwrap();
    }
    // The server's rebuild rate: slow enough that the kill lands in the middle.
    let rate = "4M";
    let srv = rig.serve(&rig.members, &["--rebuild-rate", rate], "a");
    run_ok(
        Command::new("nbdcopy")
            .arg("--flush")
            .arg(&src)
            .arg(&srv.uri),
    );
    let st = rig.status();
    let allocated = u64_of(&st["chunks_allocated"], "chunks_allocated");
    assert!(allocated >= 20, "200 MiB should fill many chunks: {st:#}");
    let spare = rig.spare("spare.img", size);
    assert_eq!(rig.add(&spare), 4);
    eprintln!(
        "kill: array written, {allocated} chunks, after {:?}",
        t0.elapsed()
    );

    rig.fail(2);
    let st = rig.status();
    let degraded0 = u64_of(&st["chunks_degraded"], "chunks_degraded");
    assert!(
        degraded0 + 1 >= allocated && degraded0 <= allocated,
        "every chunk has a piece on member 2: {st:#}"
    );
    assert_eq!(state(&st, 2), "failed", "{st:#}");
    assert_taking_over(&st, 4);

    // Mid-way: a quarter done, far from the end.
    let st = rig.wait_status("a quarter of the rebuild", JOB_LIMIT, |s| {
        let rb = &s["rebuild"];
        rb["running"] == true
            && rb["done"].as_u64().unwrap_or(0) * 4 >= rb["total"].as_u64().unwrap_or(1)
    });
    let total0 = u64_of(&st["rebuild"]["total"], "rebuild.total");
    let done0 = u64_of(&st["rebuild"]["done"], "rebuild.done");
    let rate_limit = u64_of(&st["rebuild"]["rate_limit"], "rebuild.rate_limit");
    assert_eq!(rate_limit, 4 * MIB, "{st:#}");
    assert!(done0 > 0 && done0 < total0, "{st:#}");
    let degraded_mid = u64_of(&st["chunks_degraded"], "chunks_degraded");
    assert!(degraded_mid < degraded0, "{st:#}");
    // SAFETY: plain syscall on our own child, not reaped yet (Server reaps it on drop).
    let r = unsafe { libc::kill(srv.pid(), libc::SIGKILL) };
    assert_eq!(r, 0, "kill -KILL {}", srv.pid());
    drop(srv);
    eprintln!(
        "kill: SIGKILL at {done0} of {total0} bytes rebuilt ({degraded_mid} of {degraded0} \
         chunks still degraded), after {:?}",
        t0.elapsed()
    );

    // The same devices as before (the failed one included), in a new process.
    let all: Vec<PathBuf> = rig.members.iter().cloned().chain([spare.clone()]).collect();
    let srv = rig.serve(&all, &["--rebuild-rate", rate], "b");
    assert!(srv.line.contains("degraded"), "{}", srv.line);
    let st = rig.status();
    let degraded1 = u64_of(&st["chunks_degraded"], "chunks_degraded");
    assert!(
        degraded1 > 0 && degraded1 < degraded0,
        "after restart {degraded1} chunks are degraded, {degraded0} were at the start: {st:#}"
    );
    // Still known as failed (not just stale) after the restart, and the spare still
    // takes its place.
    assert_eq!(state(&st, 2), "failed", "{st:#}");
    assert_eq!(state(&st, 4), "replacing", "{st:#}");
    // The rebuild resumes by itself, with what was left, not all of it.
    let st = rig.wait_status("the rebuild to resume", Duration::from_secs(20), |s| {
        s["rebuild"]["running"] == true
    });
    let total1 = u64_of(&st["rebuild"]["total"], "rebuild.total");
    assert!(
        total1 > 0 && total1 < total0,
        "resumed rebuild has {total1} bytes to do, the first had {total0}: {st:#}"
    );
    assert!(
        total1 <= total0 - done0 + 8 * MIB,
        "resumed rebuild redoes more than was left ({total1} > {total0} - {done0}): {st:#}"
    );
    eprintln!(
        "kill: restarted, {degraded1} chunks degraded, resumed rebuild of {total1} bytes, after {:?}",
        t0.elapsed()
    );

    // Reads while it runs (degraded chunks reconstructed) give the data.
    compare_out(&rig, &srv.uri, &src, "read during the resumed rebuild");
    assert_eq!(
        rig.status()["rebuild"]["running"],
        true,
        "rebuild ended too soon"
    );

    // No limit for the rest; `rebuild` follows the running job to its end.
    let out = run_ok(rig.cmd().args(["rebuild", "--rate", "0"]));
    assert!(out.contains("array health: ok"), "{out}");
    let st = rig.wait_status("the rebuild to end", JOB_LIMIT, |s| {
        s["health"] == "ok" && s["rebuild"]["running"] != true
    });
    assert_eq!(state(&st, 2), "removed", "{st:#}");
    assert_eq!(state(&st, 4), "ok", "{st:#}");
    assert_eq!(st["chunks_degraded"], 0, "{st:#}");
    assert_no_errors(&st);
    compare_out(&rig, &srv.uri, &src, "read after the rebuild");
    srv.stop();

    // What the members say, not served.
    let now: Vec<PathBuf> = [0, 1, 3]
        .iter()
        .map(|&i| rig.members[i].clone())
        .chain([spare.clone()])
        .collect();
    let out = run_ok(Command::new(bin()).args(["status", "--json"]).args(&now));
    let st: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["health"], "ok", "{st:#}");
    assert_eq!(st["chunks_degraded"], 0, "{st:#}");
    eprintln!(
        "kill_mid_rebuild_resumes_from_checkpoint: {:?}",
        t0.elapsed()
    );
}
