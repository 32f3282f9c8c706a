//! Four NBD connections writing 1 KiB pieces of the same 4 KiB blocks, with flushes, while
//! a member fails and a hot spare is rebuilt underneath — the host-side image of the VM test
//! `kernel_nbd_client_in_the_guest_on_a_damocles_it_serves` (the guest's `nbd-client -C 4`
//! under ext4 with 1 KiB blocks, whose neighbouring block bitmaps are separate 1 KiB
//! writes in flight together, with jbd2's FLUSH among them). mkfs.ext4 on a 276 MiB
//! image here puts the block bitmaps of groups 3 and 4 — the ones that VM run's `e2fsck`
//! found stale — at 1 KiB blocks 264 and 265: the first two quarters of one 4 KiB block.
//!
//! Four `qemu-io` processes (one connection each) write: process `t` owns the 1 KiB slot
//! `t` of each block, so the last write of every slot is known whatever the interleaving.
//! After each write a process reads back a slot it wrote earlier; at the end every slot
//! must read back as last written, also after a restart without member 0 (so the rebuilt
//! spare answers). Before the fix of a partial-block write racing a commit
//! (`Txg::buffer_write`) it lost writes in each of 4 runs here.

mod interop_support;

use interop_support::*;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const CLIENTS: u64 = 4;
const BLOCKS: u64 = 4;
const WRITES: u64 = 4000;
const SLOT: u64 = 1024;

/// A slot's byte: writes of one slot differ from the one before.
fn value(t: u64, n: u64) -> u64 {
    (n * CLIENTS + t) % 255 + 1
}

fn slot_off(t: u64, b: u64) -> u64 {
    b * 4096 + t * SLOT
}

/// The qemu-io commands of client `t`, and the last value of each of its slots.
fn script(t: u64) -> (String, Vec<u64>) {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (t + 1);
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut s = String::new();
    let mut last = vec![0u64; BLOCKS as usize];
    for n in 1..=WRITES {
        let b = next() % BLOCKS;
        let v = value(t, n);
        writeln!(s, "write -q -P {v} {} {SLOT}", slot_off(t, b)).unwrap();
        last[b as usize] = v;
        let c = next() % BLOCKS;
        if c != b && last[c as usize] != 0 {
            let want = last[c as usize];
            writeln!(s, "read -q -P {want} {} {SLOT}", slot_off(t, c)).unwrap();
        }
        if n % 2 == 0 {
            s.push_str("flush\n");
        }
    }
    s.push_str("quit\n");
    (s, last)
}

/// Runs `qemu-io` on `uri` with `commands` on its stdin; its output (stdout and stderr).
fn qemu_io(dir: &Path, tag: &str, uri: &str, commands: &str) -> std::process::Child {
    let input = dir.join(format!("{tag}.in"));
    std::fs::write(&input, commands).unwrap();
    let out = std::fs::File::create(dir.join(format!("{tag}.out"))).unwrap();
    Command::new("qemu-io")
        .args(["-f", "raw", uri])
        .stdin(std::fs::File::open(&input).unwrap())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("spawn qemu-io")
}

/// Waits (bounded) for a qemu-io; its output, which must show no failed command.
fn finish(dir: &Path, tag: &str, mut child: std::process::Child) -> String {
    let status = wait_bounded(&mut child, TOOL_TIMEOUT);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let out = std::fs::read_to_string(dir.join(format!("{tag}.out"))).unwrap();
    // The prompts ("qemu-io> ") share lines with the messages.
    let bad: Vec<&str> = out
        .split("qemu-io> ")
        .map(str::trim)
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("fail") || l.contains("error")
        })
        .take(10)
        .collect();
    assert!(
        status.is_some_and(|s| s.success()) && bad.is_empty(),
        "qemu-io {tag} ({status:?}): {bad:#?}"
    );
    out
}

/// Reads every slot back through `uri`: each must hold its last value.
fn check_all(dir: &Path, tag: &str, uri: &str, lasts: &[Vec<u64>]) {
    let mut s = String::new();
    for (t, last) in lasts.iter().enumerate() {
        for (b, &v) in last.iter().enumerate() {
            writeln!(s, "read -P {v} {} {SLOT}", slot_off(t as u64, b as u64)).unwrap();
        }
    }
    s.push_str("quit\n");
    let out = finish(dir, tag, qemu_io(dir, tag, uri, &s));
    let reads = out.matches("read 1024/1024 bytes").count();
    assert_eq!(reads, (CLIENTS * BLOCKS) as usize, "{tag}: {out}");
}

#[test]
fn four_connections_writing_1k_pieces_of_blocks_across_a_failure_and_rebuild() {
    let test = "sub-block writes";
    if !require_tools(test, &["qemu-io"]) {
        return;
    }
    let rig = Rig::create("raid5", "g", 4, 64 * MIB);
    let dir = rig.dir.path().to_path_buf();
    let srv = rig.serve(&rig.members, &[], "a");
    let scripts: Vec<(String, Vec<u64>)> = (0..CLIENTS).map(script).collect();
    let clients: Vec<_> = scripts
        .iter()
        .enumerate()
        .map(|(t, (s, _))| qemu_io(&dir, &format!("client{t}"), &srv.uri, s))
        .collect();
    // Under the writes: a member fails and a hot spare takes over and is rebuilt.
    std::thread::sleep(Duration::from_secs(2));
    rig.fail(1);
    let spare = rig.spare("s.img", 64 * MIB);
    std::thread::sleep(Duration::from_millis(500));
    rig.add_spare(&spare);
    for (t, c) in clients.into_iter().enumerate() {
        finish(&dir, &format!("client{t}"), c);
    }
    let st = rig.wait_rebuilds_idle();
    assert_eq!(st["health"], "ok", "{st:#}");
    let lasts: Vec<Vec<u64>> = scripts.into_iter().map(|(_, l)| l).collect();
    check_all(&dir, "check-served", &srv.uri, &lasts);
    srv.stop();
    // Without member 0: member 1's blocks come from the rebuilt spare or through parity
    // it took part in.
    let again = vec![rig.members[2].clone(), rig.members[3].clone(), spare];
    let srv = rig.serve(&again, &[], "b");
    check_all(&dir, "check-restarted", &srv.uri, &lasts);
    srv.stop();
}
