//! The control socket and the member lifecycle commands: `damocles serve` answering
//! `status`, `fail`, `add`, `rebuild --watch` through its socket, with data checked through
//! NBD (nbdcopy) before and after; the same commands on members directly; `--on-event`;
//! and the errors a user meets (nothing served, two arrays served, unknown member).
//!
//! Every test points XDG_RUNTIME_DIR at its own directory, so the servers it starts are the
//! only ones its commands can find.

mod interop_support;

use interop_support::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A private runtime directory for one test (XDG_RUNTIME_DIR is 0700 by convention).
fn runtime_dir(arr: &Array) -> PathBuf {
    use std::os::unix::fs::DirBuilderExt;
    let rt = arr.path("rt");
    std::fs::DirBuilder::new().mode(0o700).create(&rt).unwrap();
    rt
}

fn damocles(rt: &Path) -> Command {
    let mut c = Command::new(bin());
    c.env("XDG_RUNTIME_DIR", rt);
    c
}

fn serve(arr: &Array, rt: &Path, members: &[PathBuf], extra: &[&str], tag: &str) -> Server {
    let mut c = damocles(rt);
    c.arg("serve")
        .arg("--socket")
        .arg(arr.path(&format!("{tag}.nbd")))
        .args(extra)
        .args(members);
    Server::start(c, &arr.path(&format!("{tag}.stderr")))
}

fn status(rt: &Path, args: &[&str]) -> Value {
    let out = run_ok(damocles(rt).args(["status", "--json"]).args(args));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json: {e}\n{out}"))
}

fn status_of(members: &[PathBuf]) -> Value {
    let out = run_ok(Command::new(bin()).args(["status", "--json"]).args(members));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json: {e}\n{out}"))
}

/// Runs a command that must fail with exit status 1 and one line on stderr; returns it.
fn one_line_error(cmd: &mut Command) -> String {
    let desc = format!("{cmd:?}");
    let o = run(cmd);
    assert_eq!(o.status.code(), Some(1), "{desc}\n{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr).trim_end().to_string();
    assert_eq!(err.lines().count(), 1, "{desc}: not one line:\n{err}");
    assert!(err.starts_with("damocles: error: "), "{desc}: {err}");
    err
}

/// Polls `status --json` until `done` holds (or panics after `limit`).
fn wait_status(rt: &Path, what: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let st = status(rt, &[]);
        if done(&st) {
            return st;
        }
        assert!(
            start.elapsed() < limit,
            "waited {limit:?} for {what}; status:\n{st:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sparse(path: &Path, size: u64) {
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
}

/// The first `len` bytes of the served disk, read with nbdcopy.
fn nbd_read(arr: &Array, uri: &str, len: usize) -> Vec<u8> {
    let out = arr.path("nbd-out.img");
    let _ = std::fs::remove_file(&out);
    run_ok(Command::new("nbdcopy").arg(uri).arg(&out));
    let mut v = std::fs::read(&out).unwrap();
    v.truncate(len);
    v
}

fn nbd_write(arr: &Array, uri: &str, data: &[u8]) {
    let src = arr.path("nbd-in.bin");
    std::fs::write(&src, data).unwrap();
    run_ok(Command::new("nbdcopy").arg("--flush").arg(&src).arg(uri));
}

/// `damocles write` on the members (the helpers' `run` gives commands no stdin).
fn write_members(arr: &Array, members: &[PathBuf], offset: &str, data: &[u8]) {
    let src = arr.path("write-in.bin");
    std::fs::write(&src, data).unwrap();
    let o = Command::new(bin())
        .args(["write", "--offset", offset])
        .args(members)
        .stdin(std::fs::File::open(&src).unwrap())
        .output()
        .unwrap();
    assert!(o.status.success(), "write: {}", text(&o));
}

fn events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("hook got {l:?}: {e}")))
        .collect()
}

// ---------------------------------------------------------------------------------------

#[test]
fn control_socket_is_private_found_by_name_and_removed_at_exit() {
    let arr = Array::raid5(Some("tank"));
    let rt = runtime_dir(&arr);
    let srv = serve(&arr, &rt, &arr.members, &[], "a");
    let st = status(&rt, &[]);
    assert_eq!(st["name"], "tank");
    assert_eq!(st["health"], "ok");
    let uuid = st["uuid"].as_str().unwrap().to_string();
    let sock = rt.join("damocles").join(format!("{uuid}.sock"));
    assert_eq!(st["control_socket"], sock.display().to_string(), "{st:#}");
    // The NBD export, as the server's export registry has it.
    let exports = st["nbd_exports"].as_array().expect("nbd_exports");
    assert_eq!(exports.len(), 1, "{st:#}");
    assert_eq!(exports[0]["name"], "tank");
    assert_eq!(exports[0]["connections"], 0);
    assert_eq!(exports[0]["size"], st["size"]);

    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let meta = std::fs::metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let dir = std::fs::metadata(rt.join("damocles")).unwrap();
    assert_eq!(dir.permissions().mode() & 0o777, 0o700);

    // The same server by name, by UUID and by socket path; text status names the socket.
    for sel in ["tank", uuid.as_str(), &sock.display().to_string()] {
        assert_eq!(
            status(&rt, &["--array", sel])["uuid"],
            uuid.as_str(),
            "{sel}"
        );
    }
    let text = run_ok(damocles(&rt).arg("status"));
    assert!(
        text.contains(&format!("control:     {}", sock.display())),
        "{text}"
    );
    assert!(text.contains("health:      ok"), "{text}");

    // The socket speaks one JSON object per line, several requests per connection.
    {
        use std::io::{BufRead, BufReader, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        for (req, check) in [
            (r#"{"cmd":"hello"}"#, "\"name\":\"tank\""),
            ("{\"cmd\":\"self-destruct\"}", "\"ok\":false"),
            (r#"{"cmd":"status"}"#, "\"health\":\"ok\""),
        ] {
            writeln!(s, "{req}").unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            assert!(line.contains(check), "{req} -> {line}");
        }
    }
    srv.stop();
    assert!(!sock.exists(), "control socket left behind");

    // A socket file nobody answers on (a killed server's) is replaced; one in use is not.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let srv = serve(&arr, &rt, &arr.members, &[], "b");
    assert_eq!(status(&rt, &[])["uuid"], uuid.as_str());
    let busy = arr.path("busy.sock");
    let _held = std::os::unix::net::UnixListener::bind(&busy).unwrap();
    let other: Vec<PathBuf> = (0..3).map(|i| arr.path(&format!("o{i}.img"))).collect();
    for p in &other {
        sparse(p, 64 * MIB);
    }
    run_ok(
        Command::new(bin())
            .args(["create", "-l", "raid5"])
            .args(&other),
    );
    let err = one_line_error(
        damocles(&rt)
            .args(["serve", "--listen", "127.0.0.1:0", "--control"])
            .arg(&busy)
            .args(&other),
    );
    assert!(
        err.contains("another damocles server answers there"),
        "{err}"
    );
    srv.stop();
}

#[test]
fn served_raid5_spare_takes_over_a_failed_member_with_data_intact_and_hook_events() {
    if !require_tools("served fail/add/rebuild", &["nbdcopy"]) {
        return;
    }
    let arr = Array::raid5(Some("tank"));
    let rt = runtime_dir(&arr);
    let spare = arr.path("spare.img");
    sparse(&spare, MEMBER_SIZE);
    let log = arr.path("events.jsonl");
    let hook = format!("cat >> '{}'", log.display());
    // Slow enough that the rebuild is still running while it is looked at.
    let srv = serve(
        &arr,
        &rt,
        &arr.members,
        &["--on-event", &hook, "--rebuild-rate", "1M"],
        "a",
    );
    let len = 24 << 20;
    let data = random_bytes(len, 11);
    nbd_write(&arr, &srv.uri, &data);
    assert_same("read before fail", &nbd_read(&arr, &srv.uri, len), &data);

    // A hot spare waits while the array is whole.
    let out = run_ok(damocles(&rt).arg("add").arg(&spare));
    assert!(out.contains("hot spare (member 4)"), "{out}");
    assert!(out.contains("array health: ok"), "{out}");
    let st = status(&rt, &[]);
    assert_eq!(st["members"][4]["state"], "spare", "{st:#}");

    // A member fails: the spare takes over by itself.
    let out = run_ok(damocles(&rt).arg("fail").arg(&arr.members[1]));
    assert!(
        out.contains("member 1") && out.contains("marked failed"),
        "{out}"
    );
    assert!(out.contains("DEGRADED"), "{out}");
    let st = status(&rt, &[]);
    assert_eq!(st["health"], "degraded", "{st:#}");
    assert_eq!(st["members"][1]["state"], "failed", "{st:#}");
    assert!(
        st["members"][1]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("damocles fail")),
        "{st:#}"
    );
    let shown = run_ok(damocles(&rt).arg("status"));
    assert!(shown.contains("FAILED"), "{shown}");

    // I/O goes on during the rebuild: old data reads back, new data is accepted.
    assert_same("degraded read", &nbd_read(&arr, &srv.uri, len), &data);
    let data = random_bytes(len, 12);
    nbd_write(&arr, &srv.uri, &data);
    assert_same("degraded write", &nbd_read(&arr, &srv.uri, len), &data);

    // Follow the rebuild from another command until it ends.
    let watch = run_ok(damocles(&rt).args(["rebuild", "--watch"]));
    let st = wait_status(&rt, "the rebuild to end", Duration::from_secs(120), |s| {
        s["rebuild"]["running"] != true
    });
    assert_eq!(st["health"], "ok", "{st:#}\nwatch said:\n{watch}");
    assert!(watch.contains("array health: ok"), "{watch}");
    if !watch.contains("no rebuild is running") {
        // Not a terminal: plain progress lines, and how it ended.
        assert!(
            watch.contains("rebuild: ") && watch.contains("% ("),
            "{watch}"
        );
        assert!(watch.contains("rebuild finished"), "{watch}");
    }
    assert_eq!(st["members"][4]["state"], "ok", "spare now active: {st:#}");
    assert_eq!(st["members"][1]["state"], "removed", "{st:#}");
    assert_eq!(st["chunks_degraded"], 0, "{st:#}");
    assert_eq!(st["lost"].as_array().map(Vec::len), Some(0), "{st:#}");
    assert_same("read after rebuild", &nbd_read(&arr, &srv.uri, len), &data);

    // Another failure, with no spare left: whatever the array does by itself (rebuild into
    // free space, or wait), a spare added then makes it whole again, data intact.
    run_ok(damocles(&rt).arg("fail").arg(&arr.members[2]));
    assert_eq!(status(&rt, &[])["members"][2]["state"], "failed");
    let spare2 = arr.path("spare2.img");
    sparse(&spare2, MEMBER_SIZE);
    run_ok(damocles(&rt).arg("add").arg(&spare2));
    // No limit for the rest (sets the running job's limit, or starts one).
    run_ok(damocles(&rt).args(["rebuild", "--rate", "0", "--background"]));
    let st = wait_status(&rt, "health ok again", Duration::from_secs(120), |s| {
        s["health"] == "ok" && s["rebuild"]["running"] != true
    });
    assert_eq!(st["members"][2]["state"], "removed", "{st:#}");
    assert_same(
        "read after the second rebuild",
        &nbd_read(&arr, &srv.uri, len),
        &data,
    );

    // The hook saw the story (it runs asynchronously: give it a moment).
    let start = Instant::now();
    let want = ["member-failed", "spare-activated", "rebuild-finished"];
    let seen = loop {
        let ev = events(&log);
        if want.iter().all(|w| ev.iter().any(|e| e["event"] == *w))
            || start.elapsed() > Duration::from_secs(20)
        {
            break ev;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for w in want {
        assert!(
            seen.iter().any(|e| e["event"] == w),
            "no {w} event in {seen:#?}"
        );
    }
    let failed = seen.iter().find(|e| e["event"] == "member-failed").unwrap();
    assert_eq!(failed["member"], 1);
    assert_eq!(failed["array"], "tank");
    assert!(
        failed["uuid"].is_string() && failed["time"].is_u64(),
        "{failed}"
    );
    srv.stop();

    // Whole without the failed members, as the members themselves say.
    let now = vec![
        arr.members[0].clone(),
        arr.members[3].clone(),
        spare.clone(),
        spare2.clone(),
    ];
    let st = status_of(&now);
    assert_eq!(st["health"], "ok", "{st:#}");
    let o = run(Command::new(bin())
        .args(["read", "--length", &len.to_string()])
        .args(&now));
    assert!(o.status.success(), "{}", text(&o));
    assert_same("read from the members after stop", &o.stdout, &data);
}

#[test]
fn offline_fail_add_rebuild_replace_remove_on_members() {
    let arr = Array::raid5(Some("cold"));
    let m = arr.members.clone();
    let data = random_bytes(5 << 20, 21);
    write_members(&arr, &m, "1M", &data);
    let read = |members: &[PathBuf]| -> Vec<u8> {
        let o = run(Command::new(bin())
            .args([
                "read",
                "--offset",
                "1M",
                "--length",
                &data.len().to_string(),
            ])
            .args(members));
        assert!(o.status.success(), "{}", text(&o));
        o.stdout
    };

    // fail member 1, named by path, on the members after `--`.
    let out = run_ok(
        Command::new(bin())
            .arg("fail")
            .arg(&m[1])
            .arg("--")
            .args(&m),
    );
    assert!(
        out.contains("member 1") && out.contains("marked failed"),
        "{out}"
    );
    let rest = vec![m[0].clone(), m[2].clone(), m[3].clone()];
    assert_eq!(status_of(&rest)["health"], "degraded");

    // add a spare: it waits until a rebuild runs.
    let spare = arr.path("spare.img");
    sparse(&spare, MEMBER_SIZE);
    let out = run_ok(
        Command::new(bin())
            .arg("add")
            .arg(&spare)
            .arg("--")
            .args(&rest),
    );
    assert!(out.contains("hot spare (member 4)"), "{out}");
    assert!(
        out.contains("damocles rebuild"),
        "says how to rebuild: {out}"
    );
    let mut now = rest.clone();
    now.push(spare.clone());
    assert_eq!(status_of(&now)["members"][4]["state"], "spare");

    // rebuild in the foreground; not a terminal, so plain lines.
    let out = run_ok(Command::new(bin()).arg("rebuild").args(&now));
    assert!(
        out.contains("rebuilt ") && out.contains("array health: ok"),
        "{out}"
    );
    let st = status_of(&now);
    assert_eq!(st["health"], "ok", "{st:#}");
    assert_eq!(st["members"][4]["state"], "ok", "{st:#}");
    assert_eq!(st["members"][1]["state"], "removed", "{st:#}");
    assert_same("after offline rebuild", &read(&now), &data);
    let out = run_ok(Command::new(bin()).arg("rebuild").args(&now));
    assert!(out.contains("nothing to rebuild"), "{out}");

    // replace member 0 (by index) with a new device: copied by the next rebuild.
    let new = arr.path("new.img");
    sparse(&new, MEMBER_SIZE);
    let out = run_ok(
        Command::new(bin())
            .args(["replace", "0"])
            .arg(&new)
            .arg("--")
            .args(&now),
    );
    assert!(out.contains("to replace member 0"), "{out}");
    now.push(new.clone());
    assert_eq!(status_of(&now)["members"][5]["state"], "replacing");
    run_ok(Command::new(bin()).arg("rebuild").args(&now));
    let st = status_of(&now);
    assert_eq!(st["health"], "ok", "{st:#}");
    assert_eq!(st["members"][0]["state"], "removed", "{st:#}");
    assert_eq!(st["members"][5]["state"], "ok", "{st:#}");
    let without_old: Vec<PathBuf> = now[1..].to_vec();
    assert_same("after replace", &read(&without_old), &data);

    // remove a spare that was never used.
    let extra = arr.path("extra.img");
    sparse(&extra, MEMBER_SIZE);
    run_ok(
        Command::new(bin())
            .arg("add")
            .arg(&extra)
            .arg("--")
            .args(&without_old),
    );
    let mut all = without_old.clone();
    all.push(extra.clone());
    let out = run_ok(
        Command::new(bin())
            .arg("remove")
            .arg(&extra)
            .arg("--")
            .args(&all),
    );
    assert!(out.contains("removed"), "{out}");
    assert_eq!(status_of(&without_old)["members"][6]["state"], "removed");
}

#[test]
fn errors_are_one_line_nothing_served_two_served_unknown_member() {
    let arr = Array::raid5(Some("one"));
    let rt = runtime_dir(&arr);
    let spare = arr.path("spare.img");
    sparse(&spare, MEMBER_SIZE);

    // Nothing served: every command that needs a server says so, and how to name members.
    for args in [
        vec!["status"],
        vec!["fail", "1"],
        vec!["remove", "1"],
        vec!["add", spare.to_str().unwrap()],
        vec!["replace", "1", spare.to_str().unwrap()],
        vec!["rebuild", "--watch"],
        vec!["scrub", "--background"],
    ] {
        let err = one_line_error(damocles(&rt).args(&args));
        assert!(err.contains("no array is served"), "{args:?}: {err}");
        assert!(err.contains("MEMBER"), "{args:?}: {err}");
    }
    // An unknown member, not served.
    let err = one_line_error(
        damocles(&rt)
            .args(["fail", "nosuch", "--"])
            .args(&arr.members),
    );
    assert!(err.contains("no member \"nosuch\""), "{err}");

    // One served: an unknown member; a device that is already a member.
    let srv1 = serve(&arr, &rt, &arr.members, &[], "one");
    let err = one_line_error(damocles(&rt).args(["fail", "nosuch"]));
    assert!(err.contains("no member \"nosuch\""), "{err}");
    let err = one_line_error(damocles(&rt).arg("add").arg(&arr.members[2]));
    assert!(err.contains("already member 2"), "{err}");
    let err = one_line_error(damocles(&rt).args(["status", "--array", "nope"]));
    assert!(err.contains("no array named 'nope'"), "{err}");

    // Two served: commands without --array refuse to guess. The second one's hook always
    // fails, which must not matter.
    let other = Array::raid5(Some("two"));
    let srv2 = serve(
        &other,
        &rt,
        &other.members,
        &["--on-event", "exit 3"],
        "two",
    );
    for args in [vec!["status"], vec!["fail", "1"], vec!["rebuild"]] {
        let err = one_line_error(damocles(&rt).args(&args));
        assert!(err.contains("2 arrays are served"), "{args:?}: {err}");
        assert!(err.contains("--array"), "{args:?}: {err}");
    }
    assert_eq!(status(&rt, &["--array", "one"])["name"], "one");
    let out = run_ok(damocles(&rt).args(["fail", "--array", "two", "3"]));
    assert!(out.contains("member 3"), "{out}");
    assert_eq!(status(&rt, &["--array", "two"])["health"], "degraded");
    assert_eq!(status(&rt, &["--array", "one"])["health"], "ok");
    srv1.stop();
    // Still serving after the failing hook ran; then a clean exit.
    assert_eq!(status(&rt, &[])["name"], "two");
    let log = std::fs::read_to_string(other.path("two.stderr")).unwrap();
    srv2.stop();
    let log2 = std::fs::read_to_string(other.path("two.stderr")).unwrap();
    assert!(
        log.contains("exit 3") || log2.contains("exit 3"),
        "the failing hook is logged:\n{log2}"
    );
}

#[test]
fn help_exists_for_the_lifecycle_commands() {
    for c in [
        "fail", "remove", "add", "replace", "rebuild", "scrub", "status", "serve",
    ] {
        let out = run_ok(Command::new(bin()).args([c, "--help"]));
        assert!(out.contains("--array") || c == "serve", "{c}: {out}");
    }
    let out = run_ok(Command::new(bin()).args(["serve", "--help"]));
    for opt in ["--control", "--on-event", "--rebuild-rate"] {
        assert!(out.contains(opt), "serve --help lacks {opt}");
    }
}

#[test]
fn scrub_served_and_offline_reports_blocks_checked() {
    let arr = Array::raid5(Some("s"));
    let rt = runtime_dir(&arr);
    write_members(&arr, &arr.members, "0", &random_bytes(4 << 20, 3));
    let out = run_ok(Command::new(bin()).arg("scrub").args(&arr.members));
    assert!(out.contains("blocks checked"), "{out}");
    let srv = serve(&arr, &rt, &arr.members, &[], "a");
    let out = run_ok(damocles(&rt).arg("scrub"));
    assert!(out.contains("scrub finished"), "{out}");
    let st = status(&rt, &[]);
    assert!(
        st["scrub"]["blocks_checked"].as_u64().unwrap() > 0,
        "{st:#}"
    );
    assert!(st["scrub"]["last_finished"].as_u64().unwrap() > 0, "{st:#}");
    srv.stop();
}

/// Mixed sizes: raid1 on 64 + 128 MiB, full, then `add --grow` of a 192 MiB member while
/// served: the balance runs by itself and the volume ends as large as a fresh raid1 over
/// the three (a new connection sees it), data intact. Then `grow` on members directly:
/// --dry-run, --size, and the refusals (shrink, more than the members hold).
#[test]
fn add_grow_served_then_grow_offline() {
    if !require_tools("add --grow and grow", &["nbdcopy"]) {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("damocles-grow.")
        .tempdir()
        .unwrap();
    let member = |name: &str, size: u64| {
        let p = dir.path().join(name);
        sparse(&p, size);
        p
    };
    let mut members = vec![member("a.img", 64 * MIB), member("b.img", 128 * MIB)];
    let out = run_ok(
        Command::new(bin())
            .args(["create", "--level", "raid1", "--name", "grow"])
            .args(&members),
    );
    assert!(out.contains("created raid1"), "{out}");
    let arr = Array {
        dir,
        members: members.clone(),
    };
    let rt = runtime_dir(&arr);
    let srv = serve(&arr, &rt, &members, &[], "g");
    let before = status(&rt, &[])["size"].as_u64().unwrap();
    let data = random_bytes(before as usize, 21);
    nbd_write(&arr, &srv.uri, &data);
    let err = one_line_error(damocles(&rt).arg("grow"));
    assert!(
        err.contains("cannot grow") && err.contains("already"),
        "{err}"
    );

    let big = arr.path("c.img");
    sparse(&big, 192 * MIB);
    let out = run_ok(damocles(&rt).args(["add", "--grow"]).arg(&big));
    assert!(out.contains("then the volume grows"), "{out}");
    members.push(big);
    let st = wait_status(
        &rt,
        "the balance and growth",
        Duration::from_secs(120),
        |st| {
            st["reshape"]["running"] == false
                && st["grow_after_reshape"] == false
                && st["size"].as_u64() > Some(before)
        },
    );
    let size = st["size"].as_u64().unwrap();
    // A fresh raid1 over 64 + 128 + 192 MiB holds about 192 MiB (less its metadata).
    assert!(size > 170 * MIB && size <= 192 * MIB, "{st:#}");
    assert_eq!(st["chunks_to_move"], 0, "{st:#}");
    let got = nbd_read(&arr, &srv.uri, size as usize);
    assert_eq!(got.len() as u64, size, "a new connection sees the new size");
    assert_same("data after the growth", &got[..data.len()], &data);
    assert!(got[data.len()..].iter().all(|&b| b == 0));
    srv.stop();

    // Offline: nothing more to take; refusals are one line and change nothing.
    let err = one_line_error(Command::new(bin()).arg("grow").args(&members));
    assert!(err.contains("already"), "{err}");
    let err = one_line_error(
        Command::new(bin())
            .args(["grow", "--size", "32M"])
            .args(&members),
    );
    assert!(err.contains("shrink"), "{err}");
    let err = one_line_error(
        Command::new(bin())
            .args(["grow", "--size", "10G"])
            .args(&members),
    );
    assert!(err.contains("at most"), "{err}");
    assert_eq!(status_of(&members)["size"].as_u64(), Some(size));
}

/// `grow --dry-run` and `grow --size` on an array created smaller than its members.
#[test]
fn grow_dry_run_and_size_offline() {
    let dir = tempfile::Builder::new()
        .prefix("damocles-grow.")
        .tempdir()
        .unwrap();
    let members: Vec<PathBuf> = (0..3)
        .map(|i| {
            let p = dir.path().join(format!("m{i}.img"));
            sparse(&p, 64 * MIB);
            p
        })
        .collect();
    run_ok(
        Command::new(bin())
            .args(["create", "--level", "raid5", "--size", "40M"])
            .args(&members),
    );
    let before = status_of(&members)["size"].as_u64().unwrap();
    let out = run_ok(
        Command::new(bin())
            .args(["grow", "--dry-run"])
            .args(&members),
    );
    assert!(out.contains("dry run") && out.contains("after"), "{out}");
    assert_eq!(status_of(&members)["size"].as_u64(), Some(before));
    let st = status_of(&members);
    assert!(st["max_size"].as_u64() > Some(before), "{st:#}");
    let out = run_ok(Command::new(bin()).arg("status").args(&members));
    assert!(
        out.contains("damocles grow"),
        "status says what to run:\n{out}"
    );
    let out = run_ok(
        Command::new(bin())
            .args(["grow", "--size", "60M"])
            .args(&members),
    );
    assert!(out.contains("grown to"), "{out}");
    let after = status_of(&members)["size"].as_u64().unwrap();
    assert!(after > before && after <= 60 * MIB, "{before} -> {after}");
    // The whole volume is usable: data up to the old end, zeros after it.
    let data = random_bytes(before as usize, 22);
    let src = dir.path().join("in.bin");
    std::fs::write(&src, &data).unwrap();
    let o = Command::new(bin())
        .arg("write")
        .args(&members)
        .stdin(std::fs::File::open(&src).unwrap())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let o = Command::new(bin())
        .arg("read")
        .args(&members)
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(o.stdout.len() as u64, after);
    assert_same("read after grow", &o.stdout[..data.len()], &data);
    assert!(o.stdout[data.len()..].iter().all(|&b| b == 0));
}
