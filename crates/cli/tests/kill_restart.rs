//! Process-level crash test: `damocles serve` is killed with SIGKILL at random moments while
//! fio writes to it with verification patterns and periodic flushes, then restarted on the
//! same members; everything that was flushed must read back exactly (checked byte for byte
//! here and by `fio --verify_only`), and every 4 KiB block of the write that was in flight
//! must be either its old or its new content.
//!
//! Design. The array (raid5, 4 sparse 32 MiB members, 84 MiB) is divided into 1 MiB slots.
//! Each round starts the server and runs a sequence of short fio jobs ("epochs"), each
//! writing one whole slot, no slot twice in a round. An epoch writes with
//! `--verify=pattern --verify_pattern=0x<tag>%o`: every 16 bytes of an I/O are the epoch's
//! unique 8-byte tag followed by the I/O's offset (u64 LE), so the expected bytes are known
//! exactly (no timestamps as in fio's header verifiers) and old and new data are told
//! apart. Epochs vary the order (write/randwrite), block size (4k/64k) and queue depth,
//! and send FLUSHes along the way (`--fsync=32` and `--end_fsync=1`, which the nbd engine
//! turns into NBD_CMD_FLUSH): crash points inside an epoch.
//!
//! fio's exit status does not prove a flush: fio 3.33 (Debian 12) drops the error of a
//! flush that an async engine completes with one (a FLUSH cut by the kill still "succeeds"),
//! and it skips `--end_fsync` when the last I/O to complete was a periodic sync, which at
//! iodepth > 1 may have been sent before the last writes. So after fio exits 0 the test
//! sends its own FLUSH on a connection of its own, and only an epoch whose FLUSH got a
//! success reply counts as flushed: every write of it had been acknowledged before, so the
//! server promised the whole slot (whether the kill came later does not matter). Any other
//! epoch was cut by the kill (if fio fails with the server still alive, the test fails):
//! each of its 4 KiB blocks may be old or new. Since no slot is written twice in a round,
//! "old" is the content read back and verified after the previous restart. Slots not
//! written in the round must be unchanged, byte for byte (this catches stale journal
//! replays and damaged neighbours of a partial-stripe write).
//!
//! The kill delays (0.3-2 s, below the server's 5 s timer commit) come from a seed that is
//! printed; set KILL_RESTART_SEED to replay one.

mod interop_support;

use interop_support::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MEMBER: u64 = 32 * MIB;
const SLOT: u64 = MIB;
const BLOCK: usize = 4096;
const ROUNDS: usize = 6;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One fio job writing one whole slot.
#[derive(Clone, Debug)]
struct Epoch {
    slot: u64,
    tag: u64,
    bs: u64,
    rw: &'static str,
    iodepth: u32,
}

impl Epoch {
    fn offset(&self) -> u64 {
        self.slot * SLOT
    }

    /// fio options for this job; `verify` selects the `--verify_only` form.
    fn args(&self, uri: &str, verify: bool) -> Vec<String> {
        let mut a = vec![
            format!("--name=slot{}-{:016x}", self.slot, self.tag),
            "--ioengine=nbd".into(),
            format!("--uri={uri}"),
            format!("--rw={}", self.rw),
            format!("--bs={}", self.bs),
            format!("--iodepth={}", self.iodepth),
            format!("--offset={}", self.offset()),
            format!("--size={SLOT}"),
            "--verify=pattern".into(),
            format!("--verify_pattern=0x{:016x}%o", self.tag),
            "--verify_state_save=0".into(),
        ];
        if verify {
            a.extend(["--verify_only=1", "--do_verify=1", "--verify_fatal=1"].map(String::from));
        } else {
            a.extend(["--do_verify=0", "--fsync=32", "--end_fsync=1"].map(String::from));
        }
        a
    }

    /// The exact bytes fio writes in the slot: per I/O, 16-byte units of the tag (as
    /// written in the pattern, so big-endian) and the I/O's offset (little-endian).
    fn content(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(SLOT as usize);
        let mut off = self.offset();
        while off < self.offset() + SLOT {
            for _ in 0..self.bs / 16 {
                v.extend_from_slice(&self.tag.to_be_bytes());
                v.extend_from_slice(&off.to_le_bytes());
            }
            off += self.bs;
        }
        v
    }
}

fn new_epoch(rng: &mut Rng, slot: u64) -> Epoch {
    Epoch {
        slot,
        tag: rng.next() | 1,
        bs: [4096, 65536][rng.below(2) as usize],
        rw: ["write", "randwrite"][rng.below(2) as usize],
        iodepth: [1, 4, 16][rng.below(3) as usize],
    }
}

fn start_server(dir: &Path, members: &[PathBuf], n: usize) -> (Server, PathBuf) {
    let err = dir.join(format!("serve-{n}.stderr"));
    let mut c = Command::new(bin());
    c.arg("serve")
        .arg("--socket")
        .arg(dir.join("nbd.sock"))
        .args(members)
        .env("DAMOCLES_LOG", "info");
    let s = Server::start(c, &err);
    assert!(s.line.contains("ok"), "serving line: {}", s.line);
    (s, err)
}

fn spawn_fio(dir: &Path, e: &Epoch, uri: &str, n: usize) -> Child {
    let log = std::fs::File::create(dir.join(format!("fio-{n}.log"))).unwrap();
    Command::new("fio")
        .arg("--thread")
        .current_dir(dir)
        .args(e.args(uri, false))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn fio")
}

/// The whole device, read with nbdcopy.
fn read_all(dir: &Path, uri: &str) -> Vec<u8> {
    let out = dir.join("image.raw");
    let _ = std::fs::remove_file(&out);
    run_ok(Command::new("nbdcopy").arg(uri).arg(&out));
    let v = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    v
}

/// `fio --verify_only` over the given slots' last epochs, as one fio run of several jobs.
fn fio_verify(dir: &Path, uri: &str, epochs: &[&Epoch]) {
    if epochs.is_empty() {
        return;
    }
    let mut c = Command::new("fio");
    // Jobs as threads of one process: killing it leaves no job process behind.
    c.arg("--thread");
    c.current_dir(dir).arg("--output-format=json");
    for e in epochs {
        c.args(e.args(uri, true));
    }
    let desc = format!("{c:?}");
    let o = run(&mut c);
    let t = text(&o);
    assert!(o.status.success(), "fio --verify_only failed: {desc}\n{t}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let js = &stdout[stdout
        .find('{')
        .unwrap_or_else(|| panic!("no fio json\n{t}"))..];
    let j: serde_json::Value =
        serde_json::from_str(js).unwrap_or_else(|e| panic!("fio json: {e}\n{t}"));
    let jobs = j["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), epochs.len(), "{t}");
    for job in jobs {
        assert_eq!(job["error"], 0, "fio verify job error\n{t}");
        assert_eq!(
            job["read"]["io_bytes"].as_u64(),
            Some(SLOT),
            "fio --verify_only did not read the whole slot\n{t}"
        );
    }
}

fn slot_range(slot: u64) -> std::ops::Range<usize> {
    (slot * SLOT) as usize..((slot + 1) * SLOT) as usize
}

#[test]
fn kill9_during_fio_then_restart() {
    if !require_tools("kill_restart", &["fio", "nbdcopy"]) {
        return;
    }
    let t0 = Instant::now();
    let seed = std::env::var("KILL_RESTART_SEED")
        .ok()
        .map(|s| s.parse::<u64>().expect("KILL_RESTART_SEED"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("kill_restart: seed {seed} (KILL_RESTART_SEED={seed} replays the kill delays)");
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);

    let dir = tempfile::Builder::new()
        .prefix("damocles-kill.")
        .tempdir()
        .unwrap();
    let d = dir.path();
    let members: Vec<PathBuf> = (0..4)
        .map(|i| {
            let p = d.join(format!("m{i}.img"));
            std::fs::File::create(&p).unwrap().set_len(MEMBER).unwrap();
            p
        })
        .collect();
    let out = run_ok(
        Command::new(bin())
            .args(["create", "--level", "raid5"])
            .args(&members),
    );
    assert!(out.contains("created raid5"), "{out}");

    let mut starts = 0;
    let (mut srv, _) = start_server(d, &members, starts);
    // The model: the device's exact content, as verified after the last restart.
    let mut image = read_all(d, &srv.uri);
    let size = image.len() as u64;
    assert_eq!(size % SLOT, 0, "device size {size}");
    let nslots = size / SLOT;
    // The last epoch that wrote each slot completely (None: never, or cut by a kill).
    let mut last: Vec<Option<Epoch>> = vec![None; nslots as usize];
    let mut fio_runs = 0;
    let mut replays = 0;

    for round in 0..ROUNDS {
        let delay = Duration::from_millis(300 + rng.below(1700));
        let mut order: Vec<u64> = (0..nslots).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let deadline = Instant::now() + delay;
        let mut done: Vec<Epoch> = Vec::new();
        let mut cut: Option<Epoch> = None;
        let mut killed = false;
        let kill = |srv: &Server| {
            // SAFETY: plain syscall on our own child, not reaped yet (Server reaps on drop).
            let r = unsafe { libc::kill(srv.pid(), libc::SIGKILL) };
            assert_eq!(r, 0, "kill -KILL {}", srv.pid());
        };
        for &slot in &order {
            if killed {
                break;
            }
            let e = new_epoch(&mut rng, slot);
            let mut child = spawn_fio(d, &e, &srv.uri, fio_runs);
            fio_runs += 1;
            let status = loop {
                if let Some(st) = child.try_wait().unwrap() {
                    break st;
                }
                if !killed && Instant::now() >= deadline {
                    kill(&srv);
                    killed = true;
                }
                assert!(
                    Instant::now() < deadline + Duration::from_secs(60),
                    "fio did not end within 60 s of the kill (hang?)"
                );
                std::thread::sleep(Duration::from_millis(2));
            };
            if status.success() && nbd_flush(&srv.uri).is_ok() {
                done.push(e);
            } else if status.success() {
                assert!(killed, "FLUSH failed while the server was alive: {e:?}");
                cut = Some(e);
            } else {
                let log = std::fs::read_to_string(d.join(format!("fio-{}.log", fio_runs - 1)))
                    .unwrap_or_default();
                assert!(
                    killed,
                    "fio failed while the server was alive: {e:?}\n{log}\nserver stderr:\n{}",
                    srv.stderr()
                );
                cut = Some(e);
            }
        }
        if !killed {
            // Every slot was written before the deadline: kill while idle.
            std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
            kill(&srv);
        }
        drop(srv); // reaps the killed process

        starts += 1;
        let (s, err) = start_server(d, &members, starts);
        srv = s;
        let log = std::fs::read_to_string(&err).unwrap_or_default();
        let replay = log
            .lines()
            .find_map(|l| l.find("replayed").map(|i| l[i..].to_owned()));
        replays += replay.is_some() as usize;

        let got = read_all(d, &srv.uri);
        assert_eq!(got.len(), image.len(), "device size changed");
        let mut written = vec![false; nslots as usize];
        for e in &done {
            written[e.slot as usize] = true;
            assert_same(
                &format!("round {round}: flushed slot {} ({e:?})", e.slot),
                &got[slot_range(e.slot)],
                &e.content(),
            );
        }
        let (mut old, mut new) = (0, 0);
        if let Some(e) = &cut {
            written[e.slot as usize] = true;
            let r = slot_range(e.slot);
            let want_new = e.content();
            for (i, ((g, o), n)) in got[r.clone()]
                .chunks(BLOCK)
                .zip(image[r.clone()].chunks(BLOCK))
                .zip(want_new.chunks(BLOCK))
                .enumerate()
            {
                if g == o {
                    old += 1;
                } else if g == n {
                    new += 1;
                } else {
                    let at = r.start + i * BLOCK;
                    panic!(
                        "round {round}: block at {at} of the cut epoch {e:?} is neither old nor \
                         new; first bytes {:02x?}, old {:02x?}, new {:02x?}",
                        &g[..16],
                        &o[..16],
                        &n[..16]
                    );
                }
            }
        }
        for s in 0..nslots {
            if !written[s as usize] {
                assert_same(
                    &format!("round {round}: slot {s}, not written this round"),
                    &got[slot_range(s)],
                    &image[slot_range(s)],
                );
            }
        }
        for e in &done {
            last[e.slot as usize] = Some(e.clone());
        }
        if let Some(e) = &cut {
            last[e.slot as usize] = None;
        }
        // fio's own check of the flushed region (same job options, --verify_only).
        fio_verify(d, &srv.uri, &done.iter().collect::<Vec<_>>());
        eprintln!(
            "round {round}: kill after {delay:?}: {} flushed epochs verified, cut epoch {}; \
             restart: {}",
            done.len(),
            match &cut {
                Some(e) => format!("slot {} ({old} old + {new} new 4 KiB blocks)", e.slot),
                None => "none".into(),
            },
            replay.as_deref().unwrap_or("no journal replay")
        );
        image = got;
    }

    // Finally: a few more epochs, a graceful stop (exit 0), a restart, and a full check.
    let mut slots: Vec<u64> = (0..nslots).collect();
    for _ in 0..3 {
        let slot = slots.remove(rng.below(slots.len() as u64) as usize);
        let e = new_epoch(&mut rng, slot);
        let mut c = Command::new("fio");
        // Jobs as threads of one process: killing it leaves no job process behind.
        c.arg("--thread");
        c.current_dir(d).args(e.args(&srv.uri, false));
        run_ok(&mut c);
        image[slot_range(slot)].copy_from_slice(&e.content());
        last[slot as usize] = Some(e);
    }
    srv.stop();
    starts += 1;
    let (srv, _) = start_server(d, &members, starts);
    let got = read_all(d, &srv.uri);
    assert_same("after SIGTERM and restart: whole device", &got, &image);
    let whole: Vec<&Epoch> = last.iter().flatten().collect();
    fio_verify(d, &srv.uri, &whole);
    srv.stop();
    eprintln!(
        "kill_restart: {ROUNDS} kills, {fio_runs} fio write jobs, {replays} restarts replayed \
         the journal, final check of {} fio-written slots; {:?}",
        whole.len(),
        t0.elapsed()
    );
}

/// One NBD_CMD_FLUSH on a connection of its own (fixed newstyle, NBD_OPT_GO); `Err` when
/// the server is gone or answers with an error. `uri`: `nbd+unix:///NAME?socket=PATH`.
fn nbd_flush(uri: &str) -> std::io::Result<()> {
    use std::io::{Error, Read, Write};
    let rest = uri
        .strip_prefix("nbd+unix:///")
        .ok_or_else(|| Error::other(format!("not a unix NBD URI: {uri}")))?;
    let (name, query) = rest.split_once('?').unwrap_or((rest, ""));
    let socket = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("socket="))
        .ok_or_else(|| Error::other(format!("no socket in {uri}")))?;
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello)?;
    if &hello[..8] != b"NBDMAGIC" || &hello[8..16] != b"IHAVEOPT" {
        return Err(Error::other("not an NBD newstyle server"));
    }
    // Client flags: FIXED_NEWSTYLE | NO_ZEROES.
    s.write_all(&3u32.to_be_bytes())?;
    let mut opt = Vec::new();
    opt.extend_from_slice(b"IHAVEOPT");
    opt.extend_from_slice(&7u32.to_be_bytes()); // NBD_OPT_GO
    opt.extend_from_slice(&(4 + name.len() as u32 + 2).to_be_bytes());
    opt.extend_from_slice(&(name.len() as u32).to_be_bytes());
    opt.extend_from_slice(name.as_bytes());
    opt.extend_from_slice(&0u16.to_be_bytes());
    s.write_all(&opt)?;
    loop {
        let mut h = [0u8; 20];
        s.read_exact(&mut h)?;
        let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data)?;
        match kind {
            1 => break,    // NBD_REP_ACK
            3 => continue, // NBD_REP_INFO
            k => return Err(Error::other(format!("NBD_OPT_GO answered {k:#x}"))),
        }
    }
    let request = |kind: u16| {
        let mut r = Vec::with_capacity(28);
        r.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        r.extend_from_slice(&0u16.to_be_bytes());
        r.extend_from_slice(&kind.to_be_bytes());
        r.extend_from_slice(&7u64.to_be_bytes()); // cookie
        r.extend_from_slice(&[0u8; 12]); // offset, length
        r
    };
    s.write_all(&request(3))?; // NBD_CMD_FLUSH
    let mut reply = [0u8; 16];
    s.read_exact(&mut reply)?;
    let magic = u32::from_be_bytes(reply[..4].try_into().unwrap());
    let error = u32::from_be_bytes(reply[4..8].try_into().unwrap());
    if magic != 0x6744_6698 || reply[8..16] != 7u64.to_be_bytes() {
        return Err(Error::other("bad FLUSH reply"));
    }
    if error != 0 {
        return Err(Error::other(format!("FLUSH failed: error {error}")));
    }
    let _ = s.write_all(&request(2)); // NBD_CMD_DISC
    Ok(())
}

/// Writes qemu-io acknowledged (not flushed), then the server killed with SIGKILL while the
/// client is still connected — what QEMU with `reconnect-delay` lives through: the client
/// will not send those writes again, so the restarted server must have them. The write log
/// (tmpfs) keeps them; without it they are gone (checked too, as the proof that the kill
/// came before any commit).
#[test]
fn acknowledged_writes_survive_a_killed_server_through_the_write_log() {
    if !require_tools("write-log", &["qemu-io"]) {
        return;
    }
    let (lost, out) = run_write_log_case(true);
    assert!(
        !lost,
        "with the write log, acknowledged writes were lost:\n{out}"
    );
    let (lost, out) = run_write_log_case(false);
    if !lost {
        // The 5 s timer may have committed before the kill on a slow machine.
        eprintln!("note: without the write log the writes survived too (a commit came first)");
    } else {
        assert!(out.contains("Pattern verification failed"), "{out}");
    }
}

/// One round: serve, write 3 MiB with qemu-io (kept connected), SIGKILL, restart, verify.
/// Returns whether the data was lost, and qemu-io's output.
fn run_write_log_case(with_log: bool) -> (bool, String) {
    use std::io::{BufRead, BufReader, Write};
    let arr = Array::raid5(None);
    let log_dir = arr.path("wlog");
    let env = if with_log {
        log_dir.display().to_string()
    } else {
        "off".to_string()
    };
    let serve = |n: usize| {
        let mut c = Command::new(bin());
        c.arg("serve")
            .arg("--socket")
            .arg(arr.path("nbd.sock"))
            .args(&arr.members)
            .env("DAMOCLES_LOG", "info")
            .env("DAMOCLES_WRITE_LOG_DIR", &env);
        Server::start(c, &arr.path(&format!("serve-{n}.stderr")))
    };
    let srv = serve(0);
    let mut io = Command::new("qemu-io")
        .args(["-f", "raw"])
        .arg(&srv.uri)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-io");
    let mut stdin = io.stdin.take().unwrap();
    writeln!(stdin, "write -P 0x5a 1M 3M").unwrap();
    stdin.flush().unwrap();
    let mut lines = BufReader::new(io.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = lines.next().expect("qemu-io output").unwrap();
        if line.contains("wrote 3145728/3145728 bytes") {
            break;
        }
        assert!(Instant::now() < deadline, "qemu-io never wrote");
    }
    // SIGKILL, the client still connected.
    drop(srv);
    let _ = io.kill();
    let _ = io.wait();
    let srv = serve(1);
    if with_log {
        let err = std::fs::read_to_string(arr.path("serve-1.stderr")).unwrap_or_default();
        assert!(err.contains("replayed"), "no replay said:\n{err}");
    }
    let out = text(&run_timeout(
        Command::new("qemu-io")
            .args(["-f", "raw", "-r"])
            .arg(&srv.uri)
            .arg("-c")
            .arg("read -P 0x5a 1M 3M"),
        Duration::from_secs(60),
    ));
    srv.stop();
    if with_log {
        // A clean stop leaves no log behind.
        let left: Vec<_> = std::fs::read_dir(&log_dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(
            left.is_empty(),
            "write log left after a clean stop: {left:?}"
        );
    }
    (
        !out.contains("read 3145728/3145728 bytes") || out.contains("failed"),
        out,
    )
}
