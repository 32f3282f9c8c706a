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
