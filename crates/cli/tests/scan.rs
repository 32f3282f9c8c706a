//! `damocles scan`: members found in a directory tree, grouped by array, each with its
//! generation and state, and each array's verdict: complete, degraded (a member missing,
//! a stale one), unassemblable (more missing than the level tolerates), a member of an
//! older generation, two arrays with one name.

mod interop_support;

use interop_support::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn create(dir: &Path, name: &str, level: &str, n: usize) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    let members: Vec<PathBuf> = (0..n)
        .map(|i| {
            let p = dir.join(format!("{name}-{i}.img"));
            sparse(&p, 32 * MIB);
            p
        })
        .collect();
    run_ok(
        Command::new(bin())
            .args(["create", "--level", level, "--name", name])
            .args(&members),
    );
    members
}

fn by_uuid<'a>(arrays: &'a [Value], members: &[PathBuf]) -> &'a Value {
    let st = run_ok(Command::new(bin()).args(["status", "--json"]).args(members));
    let uuid = serde_json::from_str::<Value>(&st).unwrap()["uuid"].clone();
    arrays
        .iter()
        .find(|a| a["uuid"] == uuid)
        .unwrap_or_else(|| panic!("array {uuid} not found: {arrays:#?}"))
}

#[test]
fn scan_groups_members_and_judges_each_array() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("disks");
    let whole = create(&d.join("x"), "whole", "raid5", 3);
    let deg = create(&d.join("y/z"), "deg", "raid5", 3);
    std::fs::remove_file(&deg[2]).unwrap();
    let gone = create(&d, "gone", "raid0", 2);
    let gone_left = vec![gone[0].clone()];
    std::fs::remove_file(&gone[1]).unwrap();
    let d1 = create(&d.join("d1"), "dup", "raid1", 2);
    let d2 = create(&d.join("d2"), "dup", "raid1", 2);
    // An older copy of member 3, then member 0 failed offline (a new generation).
    let gen = create(&d.join("g"), "gen", "raid5", 4);
    let old = dir.path().join("old-gen-3.img");
    std::fs::copy(&gen[3], &old).unwrap();
    run_ok(Command::new(bin()).args(["fail", "0", "--"]).args(&gen));
    std::fs::rename(&old, &gen[3]).unwrap();
    std::fs::write(d.join("not-a-member.img"), vec![7u8; 1 << 20]).unwrap();

    let out = run_ok(Command::new(bin()).args(["scan", "--json"]).arg(&d));
    let arrays: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(arrays.len(), 6, "{out}");

    let w = by_uuid(&arrays, &whole);
    assert_eq!(w["verdict"], "complete", "{w:#}");
    assert!(w["members"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["state"] == "ok"));

    let g = by_uuid(&arrays, &deg[..2]);
    assert_eq!(g["verdict"], "degraded", "{g:#}");
    assert_eq!(g["members"][2]["state"], "missing");
    assert!(g["members"][2]["path"].is_null());

    let x = by_uuid(&arrays, &gone_left);
    assert_eq!(x["verdict"], "unassemblable", "{x:#}");

    let a = by_uuid(&arrays, &d1);
    let b = by_uuid(&arrays, &d2);
    for v in [a, b] {
        let notes = v["notes"].to_string();
        assert!(notes.contains("2 arrays are named 'dup'"), "{v:#}");
    }

    let gn = by_uuid(&arrays, &gen[..3]);
    assert_eq!(gn["members"][0]["state"], "stale", "{gn:#}");
    assert_eq!(gn["members"][3]["state"], "older-generation", "{gn:#}");
    let newest = gn["generation"].as_u64().unwrap();
    assert!(gn["members"][3]["generation"].as_u64().unwrap() < newest);
    assert_eq!(gn["verdict"], "degraded", "{gn:#}");

    let text = run_ok(Command::new(bin()).arg("scan").arg(&d));
    assert!(
        text.contains("array 'whole'") && text.contains("complete"),
        "{text}"
    );
    assert!(text.contains("cannot be assembled"), "{text}");
    assert!(!text.contains("not-a-member"), "{text}");
}
