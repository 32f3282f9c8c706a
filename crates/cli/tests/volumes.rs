//! `damocles volume ...` on an array that is not served: create, list (text and JSON),
//! plan, resize, rename, delete; `read`/`write --volume`; `convert --volume`'s refusal
//! without a volume on a multi-volume array; status's volumes table and space line.

use assert_cmd::Command;
use std::fs;
use std::path::{Path, PathBuf};

fn bin() -> Command {
    Command::cargo_bin("damocles").unwrap()
}

fn members(dir: &Path, sizes: &[u64]) -> Vec<PathBuf> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let p = dir.join(format!("m{i}.img"));
            fs::File::create(&p).unwrap().set_len(*s).unwrap();
            p
        })
        .collect()
}

fn run_ok(args: &[&str], m: &[PathBuf]) -> String {
    let out = bin()
        .args(args)
        .arg("--")
        .args(m)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    String::from_utf8(out).unwrap()
}

fn run_err(args: &[&str], m: &[PathBuf]) -> String {
    let out = bin()
        .args(args)
        .arg("--")
        .args(m)
        .assert()
        .failure()
        .get_output()
        .stderr
        .clone();
    String::from_utf8(out).unwrap()
}

#[test]
fn volumes_on_members_given() {
    let dir = tempfile::tempdir().unwrap();
    let m = members(dir.path(), &[64 << 20, 64 << 20, 96 << 20, 128 << 20]);
    let out = bin()
        .args([
            "create",
            "--level",
            "raid5",
            "--name",
            "tank",
            "--no-volume",
        ])
        .args(&m)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert!(String::from_utf8(out).unwrap().contains("no volume yet"));
    // A plan changes nothing and says what the volume takes.
    let plan = bin()
        .args([
            "plan", "volume", "create", "vms", "--level", "raid5", "--size", "60M",
        ])
        .arg("--")
        .args(&m)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let plan = String::from_utf8(plan).unwrap();
    assert!(
        plan.contains("reserved at its level") && plan.contains("nothing changed"),
        "{plan}"
    );
    assert!(run_ok(&["volume", "list"], &m).contains("no volumes"));
    run_ok(
        &[
            "volume", "create", "vms", "--level", "raid5", "--size", "60M",
        ],
        &m,
    );
    run_ok(
        &[
            "volume", "create", "media", "--level", "raid1", "--size", "max", "--thin",
        ],
        &m,
    );
    // Too big for what is left unreserved: refused with the numbers.
    let e = run_err(
        &[
            "volume", "create", "more", "--level", "raid1", "--size", "200M",
        ],
        &m,
    );
    assert!(e.contains("raw space") && e.contains("free"), "{e}");
    let e = run_err(
        &[
            "volume", "create", "bad name", "--level", "raid1", "--size", "1M",
        ],
        &m,
    );
    assert!(e.contains("only letters, digits"), "{e}");
    let json = run_ok(&["volume", "list", "--json"], &m);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let vols = v.as_array().unwrap();
    assert_eq!(vols.len(), 2);
    assert_eq!(vols[0]["name"], "vms");
    assert_eq!(vols[0]["level"], "raid5");
    assert_eq!(vols[0]["size"], 60u64 << 20);
    assert_eq!(vols[0]["thin"], false);
    assert_eq!(vols[1]["thin"], true);
    assert_eq!(vols[1]["tolerance"], 1);
    let text = run_ok(&["volume", "list"], &m);
    assert!(
        text.contains("NAME") && text.contains("vms") && text.contains("reserved"),
        "{text}"
    );

    // Data to one volume does not show in the other.
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    bin()
        .args(["write", "--volume", "media", "--offset", "1M"])
        .args(&m)
        .write_stdin(payload.clone())
        .assert()
        .success();
    let e = bin()
        .args(["read", "--length", "4096"])
        .args(&m)
        .assert()
        .failure()
        .get_output()
        .stderr
        .clone();
    let e = String::from_utf8(e).unwrap();
    assert!(e.contains("several volumes (vms, media)"), "{e}");
    let got = bin()
        .args(["read", "--volume", "media", "--offset", "1M", "--length"])
        .arg(payload.len().to_string())
        .args(&m)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert!(got == payload);
    let zeros = bin()
        .args([
            "read", "--volume", "vms", "--offset", "1M", "--length", "1M",
        ])
        .args(&m)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert!(zeros.iter().all(|&b| b == 0));

    // A conversion must name the volume when there are several.
    let e = run_err(&["convert", "--level", "raid1"], &m);
    assert!(
        e.contains("several volumes") && e.contains("--volume"),
        "{e}"
    );
    let plan = run_ok(
        &["plan", "convert", "--volume", "media", "--level", "raid5"],
        &m,
    );
    assert!(
        plan.contains("redundancy") && plan.contains("chunk moves"),
        "{plan}"
    );

    // Resize, rename, delete.
    let e = run_err(&["volume", "resize", "vms", "--size", "20M"], &m);
    assert!(e.contains("--force"), "{e}");
    let out = run_ok(&["volume", "resize", "vms", "--size", "20M", "--force"], &m);
    assert!(out.contains("resized"), "{out}");
    run_ok(&["volume", "rename", "media", "movies"], &m);
    let e = run_err(&["volume", "delete", "vms"], &m);
    assert!(e.contains("--force"), "{e}");
    run_ok(&["volume", "delete", "vms", "--force"], &m);
    let status = bin()
        .args(["status"])
        .args(&m)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let status = String::from_utf8(status).unwrap();
    assert!(
        status.contains("movies") && !status.contains("vms "),
        "{status}"
    );
    assert!(
        status.contains("(format 2)") && status.contains("space:"),
        "{status}"
    );
    let got = bin()
        .args(["read", "--offset", "1M", "--length"])
        .arg(payload.len().to_string())
        .args(&m)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert!(got == payload, "the renamed volume kept its data");
}
