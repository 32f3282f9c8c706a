//! `damocles daemon` as the machine's storage service: two arrays from one config file (one
//! degraded), `config check` printing the daemon's plan, a reboot simulation (members moved
//! and renamed under the scanned directory), SIGHUP reload (an export added, one removed,
//! an unchanged one keeping its connection) and the systemd notify protocol on a fake
//! NOTIFY_SOCKET (READY=1 only once the exports accept).
//!
//! Every test has its own directory and XDG_RUNTIME_DIR; every daemon is started by the
//! test and killed by its own pid.

mod interop_support;

use interop_support::*;
use std::io::{Read, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SIZE: u64 = 64 * MIB;

struct Env {
    dir: tempfile::TempDir,
    rt: PathBuf,
}

impl Env {
    fn new() -> Env {
        use std::os::unix::fs::DirBuilderExt;
        let dir = tempfile::Builder::new()
            .prefix("damocles-service.")
            .tempdir()
            .unwrap();
        let rt = dir.path().join("rt");
        std::fs::DirBuilder::new().mode(0o700).create(&rt).unwrap();
        Env { dir, rt }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(bin());
        c.env("XDG_RUNTIME_DIR", &self.rt);
        c
    }

    /// An array `name` of `level` on `n` sparse files `DIR/NAME-i.img`.
    fn create(&self, dir: &str, name: &str, level: &str, n: usize) -> Vec<PathBuf> {
        std::fs::create_dir_all(self.path(dir)).unwrap();
        let members: Vec<PathBuf> = (0..n)
            .map(|i| {
                let p = self.path(&format!("{dir}/{name}-{i}.img"));
                sparse(&p, SIZE);
                p
            })
            .collect();
        let out = run_ok(
            Command::new(bin())
                .args(["create", "--level", level, "--name", name])
                .args(&members),
        );
        assert!(out.contains("created"), "{out}");
        members
    }

    fn write_config(&self, text: &str) -> PathBuf {
        let p = self.path("damocles.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn sock(&self, name: &str) -> String {
        self.path(&format!("{name}.sock")).display().to_string()
    }

    fn uri(&self, export: &str, sock: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.sock(sock))
    }
}

/// A running daemon; killed on drop.
struct Daemon {
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
}

impl Daemon {
    /// Starts it and waits until it has printed `exports` "serving export" lines.
    fn start(env: &Env, config: &Path, exports: usize, tag: &str, notify: Option<&Path>) -> Daemon {
        let out = env.path(&format!("daemon-{tag}.out"));
        let err = env.path(&format!("daemon-{tag}.err"));
        let mut c = env.cmd();
        c.arg("daemon")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap());
        if let Some(n) = notify {
            c.env("NOTIFY_SOCKET", n).env("WATCHDOG_USEC", "400000");
        }
        let d = Daemon {
            child: Some(c.spawn().expect("spawn damocles daemon")),
            out,
            err,
        };
        d.wait_for(&format!("{exports} exports"), |o| {
            o.matches("serving export").count() >= exports
        });
        d
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    fn wait_for(&self, what: &str, done: impl Fn(&str) -> bool) {
        let start = Instant::now();
        while !done(&self.stdout()) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "daemon never showed {what}\nstdout:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_log(&self, what: &str) {
        let start = Instant::now();
        while !self.stderr().contains(what) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "daemon never logged {what:?}\nstderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, sig: i32) {
        let pid = self.child.as_ref().unwrap().id() as i32;
        // SAFETY: plain syscall on our own child's pid, which has not been reaped yet.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill {sig} {pid}");
    }

    /// SIGTERM; the daemon must exit 0 within 60 s.
    fn stop(mut self) {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().unwrap();
        let status = wait_bounded(&mut child, Duration::from_secs(60));
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "daemon did not stop within 60 s\nstderr:\n{}",
                self.stderr()
            );
        };
        assert!(
            status.success(),
            "daemon exited {status}\n{}",
            self.stderr()
        );
        assert!(
            self.stderr().contains("all writes flushed"),
            "{}",
            self.stderr()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            if std::thread::panicking() {
                eprintln!("daemon stderr:\n{}", self.stderr());
            }
        }
    }
}

fn nbd_size(uri: &str) -> u64 {
    run_ok(Command::new("nbdinfo").args(["--size", uri]))
        .trim()
        .parse()
        .unwrap()
}

/// Everything the daemon printed before it started serving: its plan.
fn plan_of(stdout: &str) -> String {
    stdout
        .lines()
        .take_while(|l| !l.starts_with("serving export"))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn two_arrays_one_degraded_both_served_and_config_check_prints_the_same_plan() {
    if !require_tools("service", &["nbdinfo"]) {
        return;
    }
    let env = Env::new();
    env.create("disks", "tank", "raid5", 3);
    let pool = env.create("disks", "pool", "raid1", 2);
    std::fs::remove_file(&pool[1]).unwrap();
    let cfg = env.write_config(&format!(
        r#"
[[array]]
name = "tank"
members = ["{d}/disks/tank-*.img"]

[[array]]
name = "pool"
scan = ["{d}/disks"]

[[export]]
array = "tank"
listen = ["unix:{tank}"]

[[export]]
array = "pool"
listen = ["unix:{pool}"]
"#,
        d = env.dir.path().display(),
        tank = env.sock("tank"),
        pool = env.sock("pool"),
    ));
    let check = run_ok(env.cmd().args(["config", "check"]).arg(&cfg));
    assert!(
        check.contains("array 'tank'") && check.contains("complete"),
        "{check}"
    );
    assert!(
        check.contains("array 'pool'") && check.contains("degraded"),
        "{check}"
    );
    assert!(check.contains("member 1  missing"), "{check}");

    let d = Daemon::start(&env, &cfg, 2, "a", None);
    assert_eq!(
        plan_of(&d.stdout()),
        check,
        "the daemon's plan is config check's"
    );
    assert!(nbd_size(&env.uri("tank", "tank")) > 0);
    assert!(nbd_size(&env.uri("pool", "pool")) > 0);
    let st = run_ok(env.cmd().args(["status", "--json", "--array", "pool"]));
    let st: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(st["health"], "degraded", "{st:#}");
    let st = run_ok(env.cmd().args(["status", "--json", "--array", "tank"]));
    let st: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(st["health"], "ok", "{st:#}");
    let log = d.stderr();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("DEGRADED") && l.contains("array=pool")),
        "{log}"
    );
    d.stop();
}

#[test]
fn bad_config_is_refused_with_file_and_line() {
    let env = Env::new();
    let cfg =
        env.write_config("[[array]]\nname = \"a\"\nmembers = [\"/x\"]\nrebuild_rte = \"1M\"\n");
    let o = run(env.cmd().args(["config", "check"]).arg(&cfg));
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("{}:4:1:", cfg.display())) && err.contains("rebuild_rte"),
        "{err}"
    );
    let o = run(env.cmd().args(["daemon", "--config"]).arg(&cfg));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

#[test]
fn reboot_with_members_moved_and_renamed_finds_the_same_array_and_data() {
    if !require_tools("service", &["nbdcopy", "cmp"]) {
        return;
    }
    let env = Env::new();
    let members = env.create("disks/a", "tank", "raid5", 4);
    let cfg = env.write_config(&format!(
        "[[array]]\nname = \"tank\"\nscan = [\"{}\"]\n\n[[export]]\narray = \"tank\"\nlisten = [\"unix:{}\"]\n",
        env.path("disks").display(),
        env.sock("tank")
    ));
    let uri = env.uri("tank", "tank");
    let d = Daemon::start(&env, &cfg, 1, "before", None);
    let size = nbd_size(&uri);
    let data = random_bytes(size as usize, 16);
    std::fs::write(env.path("data"), &data).unwrap();
    run_ok(Command::new("nbdcopy").arg(env.path("data")).arg(&uri));
    let uuid_before = {
        let st = run_ok(env.cmd().args(["status", "--json"]));
        serde_json::from_str::<serde_json::Value>(&st).unwrap()["uuid"].clone()
    };
    d.stop();

    // "Reboot": the disks come back under other names, in another order and directory.
    std::fs::create_dir_all(env.path("disks/b/c")).unwrap();
    for (i, m) in members.iter().enumerate() {
        let to = env.path(&format!("disks/b/c/disk{}.raw", (i + 2) % 4));
        std::fs::rename(m, to).unwrap();
    }
    let check = run_ok(env.cmd().args(["config", "check"]).arg(&cfg));
    assert!(
        check.contains("complete") && check.contains("disks/b/c/disk"),
        "{check}"
    );
    let d = Daemon::start(&env, &cfg, 1, "after", None);
    let st = run_ok(env.cmd().args(["status", "--json"]));
    let st: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(st["uuid"], uuid_before, "same array");
    assert_eq!(st["health"], "ok", "{st:#}");
    run_ok(Command::new("nbdcopy").arg(&uri).arg(env.path("back")));
    let o = run(Command::new("cmp")
        .arg(env.path("data"))
        .arg(env.path("back")));
    assert!(
        o.status.success(),
        "data differs after the move: {}",
        text(&o)
    );
    d.stop();
}

/// A minimal NBD client holding one connection open (oldstyle-free fixed newstyle,
/// NBD_OPT_EXPORT_NAME, simple replies).
struct RawNbd(UnixStream);

impl RawNbd {
    fn connect(sock: &str, export: &str) -> RawNbd {
        let mut s = UnixStream::connect(sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut greet = [0u8; 18];
        s.read_exact(&mut greet).unwrap();
        assert_eq!(&greet[..8], b"NBDMAGIC");
        // Client flags: fixed newstyle, no zeroes.
        s.write_all(&3u32.to_be_bytes()).unwrap();
        let mut opt = Vec::new();
        opt.extend_from_slice(b"IHAVEOPT");
        opt.extend_from_slice(&1u32.to_be_bytes());
        opt.extend_from_slice(&(export.len() as u32).to_be_bytes());
        opt.extend_from_slice(export.as_bytes());
        s.write_all(&opt).unwrap();
        let mut info = [0u8; 10];
        s.read_exact(&mut info).unwrap();
        RawNbd(s)
    }

    /// READ of 4 KiB at `offset`; the reply's error field.
    fn read(&mut self, offset: u64) -> u32 {
        let mut req = Vec::new();
        req.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        req.extend_from_slice(&0u16.to_be_bytes());
        req.extend_from_slice(&0u16.to_be_bytes());
        req.extend_from_slice(&7u64.to_be_bytes());
        req.extend_from_slice(&offset.to_be_bytes());
        req.extend_from_slice(&4096u32.to_be_bytes());
        self.0.write_all(&req).unwrap();
        let mut hdr = [0u8; 16];
        self.0.read_exact(&mut hdr).unwrap();
        assert_eq!(&hdr[..4], &0x6744_6698u32.to_be_bytes());
        let err = u32::from_be_bytes(hdr[4..8].try_into().unwrap());
        if err == 0 {
            let mut data = vec![0u8; 4096];
            self.0.read_exact(&mut data).unwrap();
        }
        err
    }
}

#[test]
fn sighup_adds_and_removes_exports_and_keeps_an_unchanged_one_connected() {
    if !require_tools("service", &["nbdinfo"]) {
        return;
    }
    let env = Env::new();
    env.create("disks", "tank", "raid5", 3);
    env.create("disks", "pool", "raid1", 2);
    let arrays = format!(
        "[[array]]\nname = \"tank\"\nscan = [\"{d}\"]\n\n[[array]]\nname = \"pool\"\nscan = [\"{d}\"]\n",
        d = env.path("disks").display()
    );
    let tank = format!(
        "[[export]]\narray = \"tank\"\nlisten = [\"unix:{}\"]\n",
        env.sock("tank")
    );
    let pool = format!(
        "[[export]]\narray = \"pool\"\nlisten = [\"unix:{}\"]\n",
        env.sock("pool")
    );
    let ro = format!(
        "[[export]]\narray = \"tank\"\nname = \"tank-ro\"\nread_only = true\nlisten = [\"unix:{}\"]\n",
        env.sock("tank-ro")
    );
    let cfg = env.write_config(&format!("{arrays}\n{tank}\n{pool}"));
    let d = Daemon::start(&env, &cfg, 2, "hup", None);
    let mut held = RawNbd::connect(&env.sock("tank"), "tank");
    assert_eq!(held.read(0), 0);

    env.write_config(&format!("{arrays}\n{tank}\n{ro}"));
    d.signal(libc::SIGHUP);
    d.wait_log("reloaded");
    d.wait_for("the new export", |o| o.contains("serving export 'tank-ro'"));
    assert_eq!(
        held.read(4096),
        0,
        "the unchanged export kept its connection"
    );
    let info = run_ok(Command::new("nbdinfo").arg(env.uri("tank-ro", "tank-ro")));
    assert!(info.contains("is_read_only: true"), "{info}");
    assert!(
        !env.path("pool.sock").exists() && UnixStream::connect(env.sock("pool")).is_err(),
        "the removed export still listens"
    );
    // A file that does not check out is refused; what runs stays.
    env.write_config(&format!("{arrays}\n{tank}\nbogus = 1\n"));
    d.signal(libc::SIGHUP);
    d.wait_log("reload refused");
    assert_eq!(held.read(8192), 0);
    drop(held);
    d.stop();
}

#[test]
fn ready_is_sent_after_the_exports_accept_then_watchdog_and_status() {
    if !require_tools("service", &["nbdinfo"]) {
        return;
    }
    let env = Env::new();
    env.create("disks", "tank", "raid1", 2);
    let cfg = env.write_config(&format!(
        "[[array]]\nname = \"tank\"\nmembers = [\"{}/disks/*.img\"]\n[[export]]\narray = \"tank\"\nlisten = [\"unix:{}\", \"127.0.0.1:0\"]\n",
        env.dir.path().display(),
        env.sock("tank")
    ));
    let ns = env.path("notify.sock");
    let rx = UnixDatagram::bind(&ns).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let out = env.path("daemon-n.out");
    let err = env.path("daemon-n.err");
    let child = env
        .cmd()
        .arg("daemon")
        .arg("--config")
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &ns)
        .env("WATCHDOG_USEC", "400000")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let d = Daemon {
        child: Some(child),
        out,
        err,
    };
    let mut buf = vec![0u8; 4096];
    let n = rx.recv(&mut buf).expect("a notification within 60 s");
    let first = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(first.starts_with("READY=1\n"), "first message: {first:?}");
    // Listening already: no retry, no wait.
    let info = run(Command::new("nbdinfo").args(["--size", &env.uri("tank", "tank")]));
    assert!(
        info.status.success(),
        "not accepting at READY=1: {}",
        text(&info)
    );
    assert!(
        first.contains("STATUS=1 array: tank ok; 1 export"),
        "{first:?}"
    );
    let n = rx.recv(&mut buf).expect("a keep-alive");
    let next = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(next.starts_with("WATCHDOG=1\nSTATUS="), "{next:?}");
    d.signal(libc::SIGTERM);
    let start = Instant::now();
    loop {
        let n = rx.recv(&mut buf).expect("STOPPING=1");
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30));
    }
    d.stop_after_signal();
}

impl Daemon {
    fn stop_after_signal(mut self) {
        let mut child = self.child.take().unwrap();
        let status = wait_bounded(&mut child, Duration::from_secs(60)).expect("daemon stops");
        assert!(status.success(), "{}", self.stderr());
    }
}

#[test]
fn logs_carry_level_and_array_for_journald_and_as_json() {
    let env = Env::new();
    let pool = env.create("disks", "pool", "raid1", 2);
    std::fs::remove_file(&pool[1]).unwrap();
    let cfg = env.write_config(&format!(
        "[[array]]\nname = \"pool\"\nscan = [\"{}\"]\n[[export]]\narray = \"pool\"\nlisten = [\"unix:{}\"]\n",
        env.path("disks").display(),
        env.sock("pool")
    ));
    // Under systemd, JOURNAL_STREAM names stderr (device:inode): priorities prefix lines.
    let err = env.path("journal.err");
    let f = std::fs::File::create(&err).unwrap();
    let m = {
        use std::os::unix::fs::MetadataExt;
        let m = f.metadata().unwrap();
        format!("{}:{}", m.dev(), m.ino())
    };
    let mut c = env.cmd();
    c.arg("daemon")
        .arg("--config")
        .arg(&cfg)
        .env("JOURNAL_STREAM", &m);
    let d = Daemon {
        child: Some(
            c.stdin(Stdio::null())
                .stdout(std::fs::File::create(env.path("j.out")).unwrap())
                .stderr(f)
                .spawn()
                .unwrap(),
        ),
        out: env.path("j.out"),
        err: err.clone(),
    };
    d.wait_log("ready");
    let log = d.stderr();
    assert!(
        log.lines()
            .any(|l| l.starts_with("<4>") && l.contains("DEGRADED") && l.contains("array=pool")),
        "{log}"
    );
    assert!(log.lines().any(|l| l.starts_with("<6>")), "{log}");
    d.stop();

    let mut c = env.cmd();
    c.args(["--log-format", "json", "daemon", "--config"])
        .arg(&cfg);
    let d = Daemon {
        child: Some(
            c.stdin(Stdio::null())
                .stdout(std::fs::File::create(env.path("json.out")).unwrap())
                .stderr(std::fs::File::create(env.path("json.err")).unwrap())
                .spawn()
                .unwrap(),
        ),
        out: env.path("json.out"),
        err: env.path("json.err"),
    };
    d.wait_log("ready");
    let log = d.stderr();
    let warn = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["level"] == "WARN")
        .unwrap_or_else(|| panic!("no JSON warning line:\n{log}"));
    assert_eq!(warn["fields"]["array"], "pool", "{warn}");
    assert!(
        warn["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("DEGRADED"),
        "{warn}"
    );
    d.stop();
}

#[test]
fn scheduled_scrubs_run_on_their_interval() {
    let env = Env::new();
    env.create("disks", "tank", "raid5", 3);
    let cfg = env.write_config(&format!(
        "scrub = \"monthly\"\n[[array]]\nname = \"tank\"\nscan = [\"{}\"]\nscrub = \"2s\"\n[[export]]\narray = \"tank\"\nlisten = [\"unix:{}\"]\n",
        env.path("disks").display(),
        env.sock("tank")
    ));
    let check = run_ok(env.cmd().args(["config", "check"]).arg(&cfg));
    assert!(check.contains("scrub every 2 s"), "{check}");
    let d = Daemon::start(&env, &cfg, 1, "scrub", None);
    let start = Instant::now();
    let scrubs = |d: &Daemon| d.stderr().matches("scheduled scrub started").count();
    while scrubs(&d) < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "fewer than 2 scheduled scrubs in 30 s:\n{}",
            d.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Two seconds apart at least: the second waited for the interval after the first.
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    let st = run_ok(env.cmd().args(["status", "--json"]));
    let st: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert!(st["scrub"]["last_finished"].as_u64().unwrap() > 0, "{st:#}");
    d.stop();
}

#[test]
fn an_array_that_cannot_be_assembled_is_logged_and_the_others_served() {
    if !require_tools("service", &["nbdinfo"]) {
        return;
    }
    let env = Env::new();
    env.create("disks", "tank", "raid5", 3);
    std::fs::create_dir_all(env.path("empty")).unwrap();
    let cfg = env.write_config(&format!(
        "[[array]]\nname = \"tank\"\nscan = [\"{d}\"]\n[[array]]\nname = \"ghost\"\nscan = [\"{e}\"]\n\
         [[export]]\narray = \"tank\"\nlisten = [\"unix:{t}\"]\n[[export]]\narray = \"ghost\"\nlisten = [\"unix:{g}\"]\n",
        d = env.path("disks").display(),
        e = env.path("empty").display(),
        t = env.sock("tank"),
        g = env.sock("ghost"),
    ));
    let o = run(env.cmd().args(["config", "check"]).arg(&cfg));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("array 'ghost': NOT ASSEMBLED: no members"),
        "{out}"
    );
    let d = Daemon::start(&env, &cfg, 1, "ghost", None);
    d.wait_log("ready");
    assert!(nbd_size(&env.uri("tank", "tank")) > 0);
    let log = d.stderr();
    assert!(
        log.lines().any(|l| l.contains("ERROR")
            && l.contains("not assembled")
            && l.contains("array=ghost")),
        "{log}"
    );
    assert!(
        log.contains("2 arrays: tank ok, ghost not assembled; 1 export"),
        "{log}"
    );
    assert!(!env.path("ghost.sock").exists());
    d.stop();
}

#[test]
fn a_daemon_export_with_tls_require_serves_psk_clients_and_refuses_plain_ones() {
    if !require_tools("service tls", &["nbdinfo", "psktool"]) {
        return;
    }
    let env = Env::new();
    env.create("disks", "tank", "raid5", 3);
    let keys = env.path("keys.psk");
    run_ok(
        Command::new("psktool")
            .args(["-u", "alice", "-p"])
            .arg(&keys),
    );
    let cfg = env.write_config(&format!(
        r#"
[[array]]
name = "tank"
members = ["{d}/disks/tank-*.img"]

[[export]]
array = "tank"
listen = ["unix:{tank}"]
tls = "require"
tls_psk_file = "{keys}"
"#,
        d = env.dir.path().display(),
        tank = env.sock("tank"),
        keys = keys.display(),
    ));
    let d = Daemon::start(&env, &cfg, 1, "tls", None);
    let tls_uri = format!(
        "nbds+unix://alice@/tank?socket={}&tls-psk-file={}",
        env.sock("tank"),
        keys.display()
    );
    assert!(nbd_size(&tls_uri) > 0);
    let o = run(Command::new("nbdinfo").args(["--size", &env.uri("tank", "tank")]));
    assert!(
        !o.status.success(),
        "a plain client of a tls = \"require\" export is refused: {}",
        text(&o)
    );
    d.stop();
}
