//! Helpers for the interop suite: arrays on sparse files, a `damocles serve` child with a
//! readiness wait and a kill-on-drop guard, a served array with the control commands
//! pointed at it (`Rig`), external tools with time limits, and the nbdfuse + loop device +
//! mount stack with its own cleanup guard.

#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const MIB: u64 = 1 << 20;
/// Each member's size; 4 members give a 736 MiB raid5.
pub const MEMBER_SIZE: u64 = 256 * MIB;
/// Time limit for one external command (a hang is a failure, not a stuck suite).
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_damocles")
}

// ---------------------------------------------------------------------------------------
// Tools

fn in_path(tool: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].iter().map(PathBuf::from))
        .any(|d| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(d.join(tool))
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// True when every tool is installed. When one is missing: panics if `CI` is set (CI must
/// have run `.ci/install-test-deps.sh`), otherwise prints a SKIP line and returns false.
pub fn require_tools(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !in_path(t)).collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "{test}: missing tool(s) {} (run .ci/install-test-deps.sh)",
        missing.join(", ")
    );
    if std::env::var_os("CI").is_some() {
        panic!("{msg}; CI is set, so this is a failure, not a skip");
    }
    skip(&msg);
    false
}

/// Prints a SKIP line past libtest's output capture, so it shows even when the test passes,
/// and appends it to `skips_file()`, which `.ci/test` empties before a run and lists at its
/// end (a run that skipped anything says so last, not only somewhere in its output).
pub fn skip(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIP {msg}");
    // The test binary without cargo's hash, and the test (libtest names its thread).
    let exe = std::env::current_exe().ok();
    let bin = exe
        .as_deref()
        .and_then(|p| p.file_stem())
        .and_then(|s| s.to_str())
        .map(|s| s.rsplit_once('-').map_or(s, |(b, _)| b))
        .unwrap_or("?")
        .to_string();
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let line = format!("{bin}::{test}: {msg}\n");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(skips_file());
    // One write(2) per line on an O_APPEND file: lines of parallel tests do not mix.
    if let Ok(mut f) = f {
        let _ = f.write_all(line.as_bytes());
    }
}

/// `target/test-skips.txt`: one line per skipped test, appended by `skip`.
pub fn skips_file() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("../test-skips.txt")
}

/// Runs a command to completion with a time limit, capturing stdout and stderr.
pub fn run(cmd: &mut Command) -> Output {
    run_timeout(cmd, TOOL_TIMEOUT)
}

pub fn run_timeout(cmd: &mut Command, limit: Duration) -> Output {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {desc}: {e}"));
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let to = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let te = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let out = String::from_utf8_lossy(&to.join().unwrap()).into_owned();
            let err = String::from_utf8_lossy(&te.join().unwrap()).into_owned();
            panic!("TIMEOUT after {limit:?} (hang?): {desc}\nstdout:\n{out}\nstderr:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: to.join().unwrap(),
        stderr: te.join().unwrap(),
    }
}

pub fn text(o: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs and asserts exit status 0; returns stdout as text.
pub fn run_ok(cmd: &mut Command) -> String {
    let desc = format!("{cmd:?}");
    let o = run(cmd);
    assert!(o.status.success(), "{desc} failed\n{}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

// ---------------------------------------------------------------------------------------
// Data

/// Deterministic pseudo-random bytes (xorshift64*), fast enough for tens of MiB.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        v.extend_from_slice(&s.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Panics with the first differing offset rather than dumping megabytes.
pub fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {i} (got {:#04x}, want {:#04x})",
            got[i], want[i]
        );
    }
    assert_eq!(got.len(), want.len(), "{what}: length differs");
}

// ---------------------------------------------------------------------------------------
// Arrays

/// Which members a server gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Clean,
    /// Served without the member with this index.
    Degraded(usize),
}

/// A raid5 array on 4 sparse file members in its own temporary directory.
pub struct Array {
    pub dir: tempfile::TempDir,
    pub members: Vec<PathBuf>,
}

impl Array {
    pub fn raid5(name: Option<&str>) -> Array {
        let dir = tempfile::Builder::new()
            .prefix("damocles-interop.")
            .tempdir()
            .unwrap();
        let members: Vec<PathBuf> = (0..4)
            .map(|i| {
                let p = dir.path().join(format!("m{i}.img"));
                std::fs::File::create(&p)
                    .unwrap()
                    .set_len(MEMBER_SIZE)
                    .unwrap();
                p
            })
            .collect();
        let mut c = Command::new(bin());
        c.args(["create", "--level", "raid5"]);
        if let Some(n) = name {
            c.args(["--name", n]);
        }
        let out = run_ok(c.args(&members));
        assert!(out.contains("created raid5"), "{out}");
        Array { dir, members }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn members_for(&self, mode: Mode) -> Vec<PathBuf> {
        match mode {
            Mode::Clean => self.members.clone(),
            Mode::Degraded(skip) => self
                .members
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, p)| p.clone())
                .collect(),
        }
    }

    /// `damocles status --json` on the members `mode` selects.
    pub fn status(&self, mode: Mode) -> serde_json::Value {
        let out = run_ok(
            Command::new(bin())
                .args(["status", "--json"])
                .args(self.members_for(mode)),
        );
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json: {e}\n{out}"))
    }

    pub fn size(&self, mode: Mode) -> u64 {
        let s = self.status(mode);
        let health = s["health"].as_str().unwrap().to_string();
        match mode {
            Mode::Clean => assert_eq!(health, "ok", "{s}"),
            Mode::Degraded(_) => assert_eq!(health, "degraded", "{s}"),
        }
        s["size"].as_u64().expect("status size")
    }

    pub fn serve(&self, mode: Mode, extra: &[&str]) -> Server {
        let sock = self.path("nbd.sock");
        let mut c = Command::new(bin());
        c.arg("serve").arg("--socket").arg(&sock).args(extra);
        c.args(self.members_for(mode));
        let s = Server::start(c, &self.path("serve.stderr"));
        let want = match mode {
            Mode::Clean => "ok",
            Mode::Degraded(_) => "degraded",
        };
        assert!(
            s.line.contains(want),
            "serving line should say {want}: {}",
            s.line
        );
        s
    }
}

// ---------------------------------------------------------------------------------------
// An array in its own directory, served, with the control commands pointed at it

/// Longest wait for a job (rebuild, reshape) to end; the tests take far less.
pub const JOB_LIMIT: Duration = Duration::from_secs(60);

pub struct Rig {
    pub dir: tempfile::TempDir,
    /// XDG_RUNTIME_DIR of every command: the control socket lands here.
    pub rt: PathBuf,
    pub members: Vec<PathBuf>,
}

impl Rig {
    /// `damocles create --level LEVEL --name NAME` on `n` sparse files of `size` bytes.
    pub fn create(level: &str, name: &str, n: usize, size: u64) -> Rig {
        use std::os::unix::fs::DirBuilderExt;
        let dir = tempfile::Builder::new()
            .prefix("damocles-served.")
            .tempdir()
            .unwrap();
        let rt = dir.path().join("rt");
        std::fs::DirBuilder::new().mode(0o700).create(&rt).unwrap();
        let members: Vec<PathBuf> = (0..n)
            .map(|i| {
                let p = dir.path().join(format!("m{i}.img"));
                sparse(&p, size);
                p
            })
            .collect();
        let out = run_ok(
            Command::new(bin())
                .args(["create", "--level", level, "--name", name])
                .args(&members),
        );
        assert!(out.contains(&format!("created {level}")), "{out}");
        Rig { dir, rt, members }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A new empty sparse file (absolute path: the server has its own working directory).
    pub fn spare(&self, name: &str, size: u64) -> PathBuf {
        let p = self.path(name);
        sparse(&p, size);
        p
    }

    /// `damocles` with XDG_RUNTIME_DIR set to this test's runtime directory.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(bin());
        c.env("XDG_RUNTIME_DIR", &self.rt);
        c
    }

    pub fn serve(&self, members: &[PathBuf], extra: &[&str], tag: &str) -> Server {
        let mut c = self.cmd();
        c.arg("serve")
            .arg("--socket")
            .arg(self.path(&format!("{tag}.nbd")))
            .args(extra)
            .args(members);
        let s = Server::start(c, &self.path(&format!("serve-{tag}.stderr")));
        assert!(s.uri.starts_with("nbd+unix://"), "{}", s.line);
        s
    }

    pub fn status(&self) -> Value {
        let out = run_ok(self.cmd().args(["status", "--json"]));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json: {e}\n{out}"))
    }

    /// Polls `status --json` until `done` holds; panics after `limit`.
    pub fn wait_status(&self, what: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let st = self.status();
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

    /// Waits until no rebuild has run for 2 s (an automatic one may follow another).
    pub fn wait_rebuilds_idle(&self) -> Value {
        let start = Instant::now();
        let mut idle_since: Option<Instant> = None;
        loop {
            let st = self.status();
            if st["rebuild"]["running"] == true {
                idle_since = None;
            } else if idle_since.get_or_insert_with(Instant::now).elapsed()
                >= Duration::from_secs(2)
            {
                return st;
            }
            assert!(
                start.elapsed() < JOB_LIMIT,
                "rebuilds still running after {JOB_LIMIT:?}; status:\n{st:#}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the automatic rebuilds to end; they must leave the array whole. When they
    /// do not, that goes into `bugs` (the test fails at its end) and `damocles rebuild`
    /// finishes the job, so the rest of the test still runs.
    pub fn settle(&self, bugs: &mut Vec<String>) -> Value {
        let st = self.wait_rebuilds_idle();
        // The last rebuild's progress shows it ran to its end.
        let rb = &st["rebuild"];
        if rb["done"] != rb["total"] {
            bugs.push(format!(
                "the automatic rebuild ended with its progress at done {} of total {}",
                rb["done"], rb["total"]
            ));
        }
        if st["health"] == "ok" && st["chunks_degraded"] == 0 {
            return st;
        }
        let members: Vec<String> = st["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| format!("{}:{}:used={}", m["index"], m["state"], m["used"]))
            .collect();
        bugs.push(format!(
            "the automatic rebuild ended and left the array {} with {} of {} chunks degraded \
             (needs: {}; last rebuild {}; members {})",
            st["health"],
            st["chunks_degraded"],
            st["chunks_allocated"],
            st["needs"],
            st["rebuild"],
            members.join(" ")
        ));
        let out = run_ok(self.cmd().args(["rebuild", "--rate", "0"]));
        assert!(out.contains("array health: ok"), "{out}");
        self.wait_rebuilds_idle()
    }

    /// `damocles fail MEMBER` through the control socket.
    pub fn fail(&self, member: usize) {
        let out = run_ok(self.cmd().arg("fail").arg(member.to_string()));
        assert!(
            out.contains(&format!("member {member}")) && out.contains("marked failed"),
            "{out}"
        );
    }

    /// `damocles add DEVICE` through the control socket; returns the new member's index.
    pub fn add(&self, dev: &Path) -> usize {
        let idx = self.add_spare(dev);
        assert_eq!(self.status()["members"][idx]["state"], "spare");
        idx
    }

    /// `damocles add DEVICE` (a hot spare, which a failed member takes at once); returns
    /// the new member's index.
    pub fn add_spare(&self, dev: &Path) -> usize {
        let out = run_ok(self.cmd().arg("add").arg(dev));
        out.split("hot spare (member ")
            .nth(1)
            .and_then(|s| s.split(')').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("add did not name the new member: {out}"))
    }

    /// `damocles add --grow DEVICE`: a member that holds data, with a balance started to
    /// spread the data over it; returns the new member's index.
    pub fn add_grow(&self, dev: &Path) -> usize {
        let out = run_ok(self.cmd().args(["add", "--grow"]).arg(dev));
        let idx = out
            .split(" added as member ")
            .nth(1)
            .and_then(|s| s.split(';').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("add --grow did not name the new member: {out}"));
        assert!(out.contains("balancing"), "{out}");
        idx
    }

    /// One request on the control socket (docs/control.md), e.g. `{"cmd":"events","after":0}`.
    pub fn control(&self, req: &str) -> Value {
        use std::io::{BufRead, BufReader, Write};
        let sock = self.status()["control_socket"]
            .as_str()
            .unwrap()
            .to_string();
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        writeln!(s, "{req}").unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        let v: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{req} -> {line:?}: {e}"));
        assert_eq!(v["ok"], true, "{req} -> {v}");
        v
    }
}

pub fn sparse(path: &Path, size: u64) {
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
}

pub fn state(st: &Value, member: usize) -> &str {
    st["members"][member]["state"].as_str().unwrap_or("?")
}

// ---------------------------------------------------------------------------------------
// Server

/// A running `damocles serve`. Dropping it kills the process (for panicking tests);
/// `stop` is the graceful path and checks the exit status.
pub struct Server {
    child: Option<Child>,
    pub uri: String,
    pub line: String,
    stderr_path: PathBuf,
}

impl Server {
    pub fn start(mut cmd: Command, stderr_path: &Path) -> Server {
        let err = std::fs::File::create(stderr_path).unwrap();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("spawn damocles serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("serving ") {
                    let _ = tx.send(line);
                }
            }
        });
        let mut s = Server {
            child: Some(child),
            uri: String::new(),
            line: String::new(),
            stderr_path: stderr_path.to_path_buf(),
        };
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => {
                let uri = line
                    .rsplit_once(" at ")
                    .map(|(_, u)| u.trim().to_string())
                    .unwrap_or_else(|| panic!("no URI in {line:?}"));
                s.uri = uri;
                s.line = line;
            }
            Err(e) => {
                let status = s.child.as_mut().unwrap().try_wait().ok().flatten();
                panic!(
                    "damocles serve never said \"serving ... at URI\" ({e}); exit: {status:?}\n\
                     stderr:\n{}",
                    s.stderr()
                );
            }
        }
        s
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// SIGTERM; panics unless the server exits within `limit`; its exit status.
    pub fn stop_within(mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let pid = child.id() as i32;
        // SAFETY: plain syscall on our own child's pid, which has not been reaped yet.
        assert_eq!(
            unsafe { libc::kill(pid, libc::SIGTERM) },
            0,
            "kill -TERM {pid}"
        );
        match wait_bounded(&mut child, limit) {
            Some(s) => s,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "damocles serve did not exit within {limit:?} of SIGTERM\nstderr:\n{}",
                    self.stderr()
                );
            }
        }
    }

    /// SIGTERM, wait (bounded), assert exit status 0.
    pub fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        let pid = child.id() as i32;
        // SAFETY: plain syscall on our own child's pid, which has not been reaped yet.
        let r = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(r, 0, "kill -TERM {pid}");
        let status = wait_bounded(&mut child, Duration::from_secs(60));
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "damocles serve did not exit within 60 s of SIGTERM (hang)\nstderr:\n{}",
                self.stderr()
            );
        };
        assert!(
            status.success(),
            "damocles serve exited with {status} after SIGTERM\nstderr:\n{}",
            self.stderr()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            if std::thread::panicking() {
                eprintln!("damocles serve stderr:\n{}", self.stderr());
            }
        }
    }
}

pub fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------
// nbdfuse + loop device + mount

/// Why the mount stack cannot run here, if it cannot.
pub fn mount_unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (losetup, mount)".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("no /dev/fuse (nbdfuse)".into());
    }
    let o = run(Command::new("losetup").arg("--find"));
    if !o.status.success() {
        return Some(format!("no free loop device: {}", text(&o)));
    }
    None
}

/// nbdfuse on `dir`, a loop device on `dir/nbd`, and a mount point; everything that was set
/// up is torn down on drop, in reverse order, even when the test panics.
pub struct BlockStack {
    fuse_dir: PathBuf,
    fuse: Option<Child>,
    pub loopdev: Option<String>,
    pub mnt: PathBuf,
    mounted: bool,
}

impl BlockStack {
    pub fn new(uri: &str, fuse_dir: &Path, mnt: &Path) -> BlockStack {
        std::fs::create_dir_all(fuse_dir).unwrap();
        std::fs::create_dir_all(mnt).unwrap();
        let child = Command::new("nbdfuse")
            .arg(fuse_dir)
            .arg(uri)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn nbdfuse");
        let mut s = BlockStack {
            fuse_dir: fuse_dir.to_path_buf(),
            fuse: Some(child),
            loopdev: None,
            mnt: mnt.to_path_buf(),
            mounted: false,
        };
        let file = fuse_dir.join("nbd");
        let start = Instant::now();
        while !file.exists() {
            if let Some(st) = s.fuse.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "nbdfuse exited with {st} before {} appeared",
                    file.display()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{} did not appear within 30 s",
                file.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let dev = run_ok(
            Command::new("losetup")
                .arg("--find")
                .arg("--show")
                .arg(&file),
        );
        let dev = dev.trim().to_string();
        assert!(dev.starts_with("/dev/loop"), "losetup said {dev:?}");
        s.loopdev = Some(dev);
        s
    }

    pub fn dev(&self) -> &str {
        self.loopdev.as_deref().unwrap()
    }

    pub fn mount(&mut self) {
        run_ok(
            Command::new("mount")
                .args(["-t", "ext4", self.dev()])
                .arg(&self.mnt),
        );
        self.mounted = true;
    }

    /// Unmounts, retrying while the target is busy: seen once in 25 runs right after the
    /// files were written and synced, so some holder was transient (a child another test
    /// forked still has the files this one had open until its exec, for one).
    pub fn umount(&mut self) {
        let start = Instant::now();
        loop {
            let o = run(Command::new("umount").arg(&self.mnt));
            if o.status.success() {
                break;
            }
            let why = text(&o);
            assert!(
                why.contains("busy") && start.elapsed() < Duration::from_secs(20),
                "umount {} failed: {why}",
                self.mnt.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.mounted = false;
    }

    /// Tears down in order and checks each step (the graceful path).
    pub fn close(mut self) {
        if self.mounted {
            self.umount();
        }
        self.detach();
    }

    /// Tears down after the server died under the stack: the filesystem cannot write back
    /// what it still holds and `umount` may say so (a lazy unmount is the fallback); then
    /// the loop device and nbdfuse go as in `close`. Returns what went wrong on the way.
    pub fn close_after_crash(mut self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.mounted {
            let o = run_timeout(
                Command::new("umount").arg(&self.mnt),
                Duration::from_secs(30),
            );
            if !o.status.success() {
                notes.push(format!("umount: {}", text(&o)));
                run_ok(Command::new("umount").arg("-l").arg(&self.mnt));
            }
            self.mounted = false;
        }
        self.detach();
        notes
    }

    /// Detaches the loop device and unmounts nbdfuse, checking each step.
    fn detach(&mut self) {
        if let Some(d) = self.loopdev.take() {
            run_ok(Command::new("losetup").args(["-d", &d]));
            wait_loop_released(&d);
        }
        // The kernel drops the loop device's hold on the FUSE file only after the last opener
        // (udev's probe, say) closes it, so EBUSY here is transient: retry for a while.
        let start = Instant::now();
        loop {
            let o = run(Command::new("fusermount3").arg("-u").arg(&self.fuse_dir));
            if o.status.success() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "fusermount3 -u {} kept failing: {}",
                self.fuse_dir.display(),
                text(&o)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut c = self.fuse.take().unwrap();
        let st = wait_bounded(&mut c, Duration::from_secs(30));
        if st.is_none() {
            let _ = c.kill();
            let _ = c.wait();
            panic!("nbdfuse did not exit after fusermount3 -u");
        }
    }
}

/// Waits (bounded) until `dev` no longer has a backing file, i.e. `losetup -d` took effect.
fn wait_loop_released(dev: &str) {
    let name = dev.trim_start_matches("/dev/");
    let backing = PathBuf::from(format!("/sys/block/{name}/loop/backing_file"));
    let start = Instant::now();
    while backing.exists() && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for BlockStack {
    fn drop(&mut self) {
        if self.mounted {
            let o = run(Command::new("umount").arg(&self.mnt));
            if !o.status.success() {
                let _ = run(Command::new("umount").arg("-l").arg(&self.mnt));
            }
        }
        if let Some(d) = self.loopdev.take() {
            let _ = run(Command::new("losetup").args(["-d", &d]));
        }
        if let Some(mut c) = self.fuse.take() {
            let o = run(Command::new("fusermount3").arg("-u").arg(&self.fuse_dir));
            if !o.status.success() {
                let _ = run(Command::new("fusermount3").arg("-uz").arg(&self.fuse_dir));
            }
            if wait_bounded(&mut c, Duration::from_secs(10)).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
