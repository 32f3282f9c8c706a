//! Black box, issue 14's destructive "fix": the first MiB of one member overwritten with
//! random bytes, then of every member. The array is served with every member and the data
//! reads back identical; `status` says whose front labels are damaged; `plan repair
//! --labels` writes nothing; `repair --labels` (served, then on members after `--`)
//! restores the front copies.

mod interop_support;

use interop_support::*;
use serde_json::Value;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

const SIZE: u64 = 64 * MIB;

fn overwrite_first_mib(member: &Path, seed: u64) {
    let f = OpenOptions::new().write(true).open(member).unwrap();
    f.write_all_at(&random_bytes(MIB as usize, seed), 0)
        .unwrap();
}

fn front_is_damocles(member: &Path) -> bool {
    let mut head = vec![0u8; 8192];
    std::fs::File::open(member)
        .unwrap()
        .read_exact_at(&mut head, 0)
        .unwrap();
    &head[..8] == b"DAMOCLSB" && &head[4096..4104] == b"DAMOCLSB"
}

fn damaged(st: &Value) -> Vec<u64> {
    st["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["front_labels_damaged"] == true)
        .map(|m| m["index"].as_u64().unwrap())
        .collect()
}

/// Serves the members, checks every member is in and the data reads back; returns the
/// server and its status.
fn serve_and_check(rig: &Rig, data: &Path, tag: &str) -> (Server, Value) {
    let srv = rig.serve(&rig.members, &[], tag);
    let st = rig.status();
    assert_eq!(st["health"], "ok", "{st:#}");
    for i in 0..rig.members.len() {
        assert_eq!(state(&st, i), "ok", "{st:#}");
    }
    let back = rig.path(&format!("{tag}.back"));
    run_ok(Command::new("nbdcopy").arg(&srv.uri).arg(&back));
    assert_same(
        "the volume read back",
        &std::fs::read(&back).unwrap(),
        &std::fs::read(data).unwrap(),
    );
    (srv, st)
}

#[test]
fn first_mib_overwritten_then_repair_labels_restores_the_front() {
    if !require_tools("repair --labels", &["nbdcopy"]) {
        return;
    }
    let rig = Rig::create("raid5", "tank", 4, SIZE);
    let srv = rig.serve(&rig.members, &[], "fill");
    let size = rig.status()["size"].as_u64().unwrap();
    let data = rig.path("data");
    std::fs::write(&data, random_bytes(size as usize, 14)).unwrap();
    run_ok(
        Command::new("nbdcopy")
            .arg("--flush")
            .arg(&data)
            .arg(&srv.uri),
    );
    srv.stop();

    // One member: served with all four, its front flagged, repaired through the server.
    overwrite_first_mib(&rig.members[1], 1);
    assert!(!front_is_damocles(&rig.members[1]));
    let (srv, st) = serve_and_check(&rig, &data, "one");
    assert_eq!(damaged(&st), vec![1], "{st:#}");
    let shown = run_ok(rig.cmd().arg("status"));
    assert!(shown.contains("front labels damaged"), "{shown}");
    let plan = run_ok(rig.cmd().args(["plan", "repair", "--labels"]));
    assert!(
        plan.contains("2 superblock copies would be rewritten"),
        "{plan}"
    );
    assert!(!front_is_damocles(&rig.members[1]), "a plan wrote");
    let done = run_ok(rig.cmd().args(["repair", "--labels"]));
    assert!(done.contains("2 superblock copies rewritten"), "{done}");
    assert!(front_is_damocles(&rig.members[1]));
    assert!(damaged(&rig.status()).is_empty());
    srv.stop();

    // Every member: served with all four, then repaired on the members themselves.
    for (i, m) in rig.members.iter().enumerate() {
        overwrite_first_mib(m, 20 + i as u64);
    }
    let (srv, st) = serve_and_check(&rig, &data, "all");
    assert_eq!(damaged(&st), vec![0, 1, 2, 3], "{st:#}");
    // Served, the members are held: repairing them from outside is refused.
    let mut busy = rig.cmd();
    busy.args(["repair", "--labels", "--"]).args(&rig.members);
    let out = run(&mut busy);
    assert!(!out.status.success());
    assert!(text(&out).contains("in use"), "{}", text(&out));
    srv.stop();
    let mut plan = rig.cmd();
    plan.args(["plan", "repair", "--labels", "--json", "--"])
        .args(&rig.members);
    let plan: Value = serde_json::from_str(&run_ok(&mut plan)).unwrap();
    let rewrites: Vec<usize> = plan
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["copies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["rewrite"] == true)
                .count()
        })
        .collect();
    assert_eq!(rewrites, vec![2, 2, 2, 2], "{plan:#}");
    let mut fix = rig.cmd();
    fix.args(["repair", "--labels", "--"]).args(&rig.members);
    let done = run_ok(&mut fix);
    assert!(done.contains("8 superblock copies rewritten"), "{done}");
    for m in &rig.members {
        assert!(front_is_damocles(m));
    }
    let (srv, st) = serve_and_check(&rig, &data, "after");
    assert!(damaged(&st).is_empty(), "{st:#}");
    srv.stop();
}

#[test]
fn repair_labels_refuses_to_overwrite_a_filesystem_without_force() {
    let rig = Rig::create("raid1", "tank", 2, SIZE);
    // What mkfs.ext4 leaves at the front: its magic at byte 1080.
    let mut head = vec![0u8; MIB as usize];
    head[1080..1082].copy_from_slice(&[0x53, 0xEF]);
    let f = OpenOptions::new()
        .write(true)
        .open(&rig.members[0])
        .unwrap();
    f.write_all_at(&head, 0).unwrap();
    let mut fix = rig.cmd();
    fix.args(["repair", "--labels", "--"]).args(&rig.members);
    let out = run(&mut fix);
    assert!(!out.status.success());
    let why = text(&out);
    assert!(why.contains("ext2/3/4") && why.contains("--force"), "{why}");
    assert!(!front_is_damocles(&rig.members[0]), "refused, yet written");
    let mut fix = rig.cmd();
    fix.args(["repair", "--labels", "--force", "--"])
        .args(&rig.members);
    let done = run_ok(&mut fix);
    assert!(done.contains("2 superblock copies rewritten"), "{done}");
    assert!(front_is_damocles(&rig.members[0]));
    // `repair` without saying what is refused by clap.
    let out = run(rig.cmd().arg("repair").arg("--").args(&rig.members));
    assert!(!out.status.success());
    assert!(text(&out).contains("--labels"), "{}", text(&out));
}
