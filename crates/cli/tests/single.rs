//! `create --level single`, served, written through NBD: every member's space counts, the
//! data reads back identical; with one member failed (`fail` needs `--force`), exactly the
//! ranges `status` lists as lost read as EIO and every other chunk reads back as written.

mod interop_support;

use interop_support::*;
use serde_json::Value;
use std::process::Command;

/// The (offset, len) ranges of a status list (`lost` or `unreadable`).
fn ranges(st: &Value, key: &str) -> Vec<(u64, u64)> {
    st[key]
        .as_array()
        .map(|v| {
            v.iter()
                .map(|r| (r["offset"].as_u64().unwrap(), r["len"].as_u64().unwrap()))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn single_served_loses_only_the_failed_members_chunks() {
    if !require_tools("single served", &["nbdcopy", "qemu-img"]) {
        return;
    }
    let rig = Rig::create("single", "media", 3, 64 * MIB);
    let srv = rig.serve(&rig.members, &[], "media");
    let st = rig.status();
    assert_eq!(st["level"], "single", "{st:#}");
    assert_eq!(st["tolerance"], 0);
    let size = st["size"].as_u64().unwrap();
    let chunk = st["chunk_size"].as_u64().unwrap();
    // Every member's space counts (less each member's metadata, journal and checksum
    // areas, a few MiB on members this small).
    assert!(size > 3 * 54 * MIB, "every member's space counts: {size}");

    let data = random_bytes(size as usize, 17);
    let src = rig.path("src.bin");
    std::fs::write(&src, &data).unwrap();
    run_ok(
        Command::new("nbdcopy")
            .arg("--flush")
            .arg(&src)
            .arg(&srv.uri),
    );
    let back = rig.path("back.bin");
    run_ok(Command::new("nbdcopy").arg(&srv.uri).arg(&back));
    assert_same("read back", &std::fs::read(&back).unwrap(), &data);
    std::fs::remove_file(&back).unwrap();
    let text_status = run_ok(rig.cmd().arg("status"));
    assert!(text_status.contains("single"), "{text_status}");
    // Written whole: each chunk one slice, on all three members.
    let st = rig.status();
    let used: Vec<u64> = (0..3)
        .map(|i| st["members"][i]["used"].as_u64().unwrap())
        .collect();
    assert!(used.iter().all(|&u| u > 0), "{used:?}");
    assert_eq!(used.iter().sum::<u64>(), size);

    // Failing a member that holds single chunks loses them: refused without --force.
    let on_1 = rig.status()["members"][1]["used"].as_u64().unwrap();
    assert!(on_1 > 0);
    let o = run(rig.cmd().args(["fail", "1"]));
    assert!(!o.status.success(), "fail without --force: {}", text(&o));
    assert!(text(&o).contains("--force"), "{}", text(&o));
    run_ok(rig.cmd().args(["fail", "1", "--force"]));
    let st = rig.wait_rebuilds_idle();
    // Lost once the rebuild gave them up; unreadable while it has not.
    let mut gone = ranges(&st, "lost");
    gone.extend(ranges(&st, "unreadable"));
    gone.sort_unstable();
    assert_eq!(
        gone.iter().map(|r| r.1).sum::<u64>(),
        on_1,
        "the ranges listed are member 1's chunks: {st:#}"
    );
    let text_status = run_ok(rig.cmd().arg("status"));
    assert!(
        text_status.contains("lost:") || text_status.contains("unreadable:"),
        "{text_status}"
    );

    // Chunk by chunk through NBD: listed ones fail, the others read back as written.
    let out = rig.path("chunk.bin");
    // nbd+unix:///EXPORT?socket=PATH
    let rest = srv
        .uri
        .strip_prefix("nbd+unix:///")
        .expect("a unix socket URI");
    let (export, sock) = rest.split_once("?socket=").expect("socket in the URI");
    for i in 0..size / chunk {
        let off = i * chunk;
        let listed = gone.iter().any(|&(o, l)| o <= off && off < o + l);
        let _ = std::fs::remove_file(&out);
        // The raw driver's offset and size cut one chunk out of the export.
        let window = serde_json::json!({
            "driver": "raw", "offset": off, "size": chunk,
            "file": {"driver": "nbd", "export": export, "server": {"type": "unix", "path": sock}},
        });
        let o = run_timeout(
            Command::new("qemu-img")
                .args(["convert", "-O", "raw"])
                .arg(format!("json:{window}"))
                .arg(&out),
            TOOL_TIMEOUT,
        );
        if listed {
            assert!(!o.status.success(), "chunk {i} is listed lost yet reads");
            assert!(
                text(&o).contains("Input/output error"),
                "chunk {i}: {}",
                text(&o)
            );
        } else {
            assert!(o.status.success(), "chunk {i}: {}", text(&o));
            assert_same(
                &format!("chunk {i}"),
                &std::fs::read(&out).unwrap(),
                &data[off as usize..(off + chunk) as usize],
            );
        }
    }
    srv.stop();
}

/// A minimal NBD client over a Unix socket (fixed newstyle, `NBD_OPT_EXPORT_NAME`, simple
/// replies): one connection whose requests' errors the test sees one by one.
struct Nbd(std::os::unix::net::UnixStream);

impl Nbd {
    fn connect(sock: &std::path::Path, export: &str) -> Nbd {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(sock).expect("connect");
        s.set_read_timeout(Some(TOOL_TIMEOUT)).unwrap();
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello).unwrap();
        assert_eq!(&hello[..8], b"NBDMAGIC");
        // Client flags: fixed newstyle, no zeroes.
        s.write_all(&3u32.to_be_bytes()).unwrap();
        let mut opt = Vec::new();
        opt.extend_from_slice(&0x4948_4156_454F_5054u64.to_be_bytes());
        opt.extend_from_slice(&1u32.to_be_bytes()); // NBD_OPT_EXPORT_NAME
        opt.extend_from_slice(&(export.len() as u32).to_be_bytes());
        opt.extend_from_slice(export.as_bytes());
        s.write_all(&opt).unwrap();
        let mut info = [0u8; 10]; // size, transmission flags
        s.read_exact(&mut info).unwrap();
        Nbd(s)
    }

    /// Sends one request and returns its reply's error (0: success).
    fn request(&mut self, kind: u16, offset: u64, data: &[u8]) -> u32 {
        use std::io::{Read, Write};
        let mut r = Vec::with_capacity(28 + data.len());
        r.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        r.extend_from_slice(&0u16.to_be_bytes());
        r.extend_from_slice(&kind.to_be_bytes());
        r.extend_from_slice(&7u64.to_be_bytes());
        r.extend_from_slice(&offset.to_be_bytes());
        r.extend_from_slice(&(data.len() as u32).to_be_bytes());
        r.extend_from_slice(data);
        self.0.write_all(&r).unwrap();
        let mut reply = [0u8; 16];
        self.0.read_exact(&mut reply).unwrap();
        assert_eq!(reply[..4], 0x6744_6698u32.to_be_bytes(), "a simple reply");
        u32::from_be_bytes(reply[4..8].try_into().unwrap())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> u32 {
        self.request(1, offset, data)
    }

    fn flush(&mut self) -> u32 {
        self.request(3, 0, &[])
    }
}

impl Drop for Nbd {
    fn drop(&mut self) {
        use std::io::Write;
        let mut r = Vec::new();
        r.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        r.extend_from_slice(&[0, 0, 0, 2]); // NBD_CMD_DISC
        r.extend_from_slice(&[0u8; 20]);
        let _ = self.0.write_all(&r);
    }
}

const EIO: u32 = 5;

/// Writes acknowledged on a connection, then lost before any commit took them (their
/// `single` chunk's member fails): that connection's next FLUSH fails with EIO, once; so
/// does that of another connection open at the time; a connection made afterwards (qemu-io)
/// flushes fine, and the lost range reads as EIO. `None` when the background committer
/// made the writes durable on the member before it failed (nothing was lost then).
fn flush_after_lost_writes(attempt: u64) -> Option<()> {
    let rig = Rig::create("single", "media", 2, 64 * MIB);
    let srv = rig.serve(&rig.members, &[], "media");
    let st = rig.status();
    let (size, chunk) = (
        st["size"].as_u64().unwrap(),
        st["chunk_size"].as_u64().unwrap(),
    );
    let sock = rig.path("media.nbd");
    let (mut conn, mut other) = (Nbd::connect(&sock, "media"), Nbd::connect(&sock, "media"));
    // A block of its own in every chunk: each member gets chunks.
    let block = random_bytes(4096, 900 + attempt);
    for i in 0..size / chunk {
        assert_eq!(conn.write(i * chunk, &block), 0, "write to chunk {i}");
    }
    run_ok(rig.cmd().args(["fail", "1", "--force"]));
    let first = conn.flush();
    if first == 0 {
        let m1 = std::fs::read(&rig.members[1]).unwrap();
        let reached = m1.chunks(4096).any(|b| b == block);
        assert!(
            reached,
            "the flush answered success though writes were lost"
        );
        srv.stop();
        return None;
    }
    assert_eq!(first, EIO, "the flush after the loss");
    assert_eq!(conn.flush(), 0, "the loss is told once per connection");
    assert_eq!(
        other.flush(),
        EIO,
        "the other connection open at the loss is told too"
    );
    assert_eq!(other.flush(), 0);
    run_ok(
        Command::new("qemu-io")
            .args(["-f", "raw", "-c", "flush"])
            .arg(&srv.uri),
    );
    let st = rig.status();
    let mut gone = ranges(&st, "lost");
    gone.extend(ranges(&st, "unreadable"));
    let &(off, _) = gone.first().expect("lost ranges listed");
    let o = run_timeout(
        Command::new("qemu-io")
            .args(["-f", "raw", "-c", &format!("read {off} 4096")])
            .arg(&srv.uri),
        TOOL_TIMEOUT,
    );
    assert!(text(&o).contains("Input/output error"), "{}", text(&o));
    drop((conn, other));
    srv.stop();
    Some(())
}

#[test]
fn a_flush_after_writes_were_lost_fails_once_per_connection() {
    if !require_tools("flush after lost writes", &["qemu-io"]) {
        return;
    }
    // The background committer (every 5 s) may take the writes before the member fails:
    // then nothing is lost, and the scenario is tried again.
    for attempt in 0..4 {
        if flush_after_lost_writes(attempt).is_some() {
            return;
        }
    }
    panic!("the writes were never lost: the background committer took them each time");
}
