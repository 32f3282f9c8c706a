//! Black-box tests of the `damocles` binary on sparse files.

use assert_cmd::Command;
use std::fs;
use std::path::{Path, PathBuf};

fn bin() -> Command {
    Command::cargo_bin("damocles").unwrap()
}

fn members(dir: &Path, n: usize, size: u64) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let p = dir.join(format!("m{i}.img"));
            fs::File::create(&p).unwrap().set_len(size).unwrap();
            p
        })
        .collect()
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed ^ (i >> 9) as u8)
        .collect()
}

#[test]
fn create_write_read_status_round_trip_also_degraded() {
    let dir = tempfile::tempdir().unwrap();
    let m = members(dir.path(), 4, 64 << 20);
    let out = bin()
        .args(["create", "--level", "raid5", "--name", "tank"])
        .args(&m)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains("created raid5 'tank' on 4 members"), "{out}");
    assert!(out.contains("survives 1 member failure"), "{out}");

    let payload = data(3_000_017, 7);
    bin()
        .args(["write", "--offset", "1M"])
        .args(&m)
        .write_stdin(payload.clone())
        .assert()
        .success();
    let got = bin()
        .args([
            "read",
            "--offset",
            "1M",
            "--length",
            &payload.len().to_string(),
        ])
        .args(&m)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert_eq!(got, payload);
    // Any one member left out: still readable.
    for skip in 0..4 {
        let some: Vec<&PathBuf> = m
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, p)| p)
            .collect();
        let got = bin()
            .args([
                "read",
                "--offset",
                "1048576",
                "--length",
                &payload.len().to_string(),
            ])
            .args(&some)
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        assert_eq!(got, payload, "member {skip} missing");
    }
    // Two left out: a clear error, not wrong data.
    bin()
        .args([
            "read",
            "--offset",
            "1M",
            "--length",
            &payload.len().to_string(),
        ])
        .args(&m[..2])
        .assert()
        .failure()
        .stderr(predicates::str::contains("too many members are missing"));

    let json = bin()
        .args(["status", "--json"])
        .args(&m[..3])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(v["level"], "raid5");
    assert_eq!(v["health"], "degraded");
    assert_eq!(v["members"][3]["state"], "missing");
    assert_eq!(v["tolerance"], 1);

    // A degraded write makes the absent member stale once it is back.
    bin()
        .args(["write", "--offset", "0"])
        .args(&m[..3])
        .write_stdin(data(9000, 1))
        .assert()
        .success();
    let json = bin()
        .args(["status", "--json"])
        .args(&m)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(v["members"][3]["state"], "stale");
    let got = bin()
        .args(["read", "--length", "9000"])
        .args(&m)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert_eq!(got, data(9000, 1));
}

#[test]
fn create_refuses_non_empty_members_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let m = members(dir.path(), 3, 32 << 20);
    // An ext4 signature on one member.
    let mut head = vec![0u8; 4096];
    head[1080] = 0x53;
    head[1081] = 0xEF;
    let mut f = fs::OpenOptions::new().write(true).open(&m[2]).unwrap();
    std::io::Write::write_all(&mut f, &head).unwrap();
    drop(f);
    let before: Vec<Vec<u8>> = m.iter().map(|p| fs::read(p).unwrap()).collect();
    bin()
        .args(["create", "--level", "raid5"])
        .args(&m)
        .assert()
        .failure()
        .stderr(predicates::str::contains(
            "m2.img is not empty: an ext2/3/4 filesystem",
        ))
        .stderr(predicates::str::contains("--force"));
    // Nothing was written anywhere.
    for (p, b) in m.iter().zip(&before) {
        assert_eq!(&fs::read(p).unwrap(), b, "{} changed", p.display());
    }
    bin()
        .args(["create", "--level", "raid5", "--force"])
        .args(&m)
        .assert()
        .success();
    // A second create sees the array it made.
    bin()
        .args(["create", "--level", "raid1"])
        .args(&m)
        .assert()
        .failure()
        .stderr(predicates::str::contains("damocles superblock"));
}

#[test]
fn impossible_requests_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let m = members(dir.path(), 3, 32 << 20);
    for (args, msg) in [
        (vec!["--level", "raid6"], "raid6 needs at least 4 members"),
        (vec!["--level", "raid10"], "needs at least 4 members, got 3"),
        (vec!["--level", "raid4"], "unknown RAID level"),
        (
            vec!["--level", "raid5", "--stripe-unit", "3000"],
            "power of two",
        ),
        (
            vec!["--level", "raid5", "--copies", "2"],
            "--copies only applies",
        ),
    ] {
        let out = bin()
            .arg("create")
            .args(&args)
            .args(&m)
            .assert()
            .failure()
            .get_output()
            .stderr
            .clone();
        let err = String::from_utf8(out).unwrap();
        assert!(err.contains(msg), "{args:?}: {err}");
    }
    // Same member twice, a missing path, a member that is not one.
    bin()
        .args(["create", "-l", "raid5"])
        .args([&m[0], &m[0], &m[1]])
        .assert()
        .failure()
        .stderr(predicates::str::contains("same member"));
    bin()
        .args(["status"])
        .arg(dir.path().join("nope"))
        .assert()
        .failure()
        .stderr(predicates::str::contains("nope"));
    let junk = dir.path().join("junk");
    fs::write(&junk, data(1 << 20, 3)).unwrap();
    bin()
        .args(["status"])
        .arg(&junk)
        .assert()
        .failure()
        .stderr(predicates::str::contains("not a damocles member"));
    let small = members(&dir.path().join("."), 1, 1 << 20);
    bin()
        .args(["create", "-l", "raid0"])
        .args([&small[0], &m[1]])
        .assert()
        .failure()
        .stderr(predicates::str::contains("too small"));
}

#[test]
fn read_and_write_check_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let m = members(dir.path(), 2, 32 << 20);
    bin()
        .args(["create", "--level", "raid1"])
        .args(&m)
        .assert()
        .success();
    let json = bin()
        .args(["status", "--json"])
        .args(&m)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let size = serde_json::from_slice::<serde_json::Value>(&json).unwrap()["size"]
        .as_u64()
        .unwrap();
    bin()
        .args([
            "read",
            "--offset",
            &(size - 10).to_string(),
            "--length",
            "11",
        ])
        .args(&m)
        .assert()
        .failure()
        .stderr(predicates::str::contains("past the end"));
    bin()
        .args(["write", "--offset", &(size - 10).to_string()])
        .args(&m)
        .write_stdin(vec![1u8; 20])
        .assert()
        .failure()
        .stderr(predicates::str::contains("past the end"));
    let tail = bin()
        .args(["read", "--offset", &(size - 10).to_string()])
        .args(&m)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert_eq!(tail, vec![1u8; 10]);
}

#[test]
fn help_exists_for_every_command() {
    for c in ["create", "status", "read", "write", "bench"] {
        bin().args([c, "--help"]).assert().success();
    }
    bin().args(["bench", "parity", "--help"]).assert().success();
    for c in ["export", "import"] {
        bin().args(["metadata", c, "--help"]).assert().success();
    }
}

#[test]
fn a_separate_journal_device_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let m = members(dir.path(), 3, 32 << 20);
    let j = dir.path().join("journal.img");
    fs::File::create(&j).unwrap().set_len(8 << 20).unwrap();
    bin()
        .args(["create", "--level", "raid5", "--journal"])
        .arg(&j)
        .args(&m)
        .assert()
        .success()
        .stdout(predicates::str::contains("journal on"));
    let mut all = m.clone();
    all.push(j.clone());
    bin()
        .args(["write", "--offset", "4096"])
        .args(&all)
        .write_stdin(data(100_000, 5))
        .assert()
        .success();
    // Without the journal device, writing is refused and status says it is missing.
    bin()
        .args(["write"])
        .args(&m)
        .write_stdin(data(10, 1))
        .assert()
        .failure()
        .stderr(predicates::str::contains("journal device"));
    let json = bin()
        .args(["status", "--json"])
        .args(&m)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(v["journal"], "device missing");
    let got = bin()
        .args(["read", "--offset", "4096", "--length", "100000"])
        .args(&all)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert_eq!(got, data(100_000, 5));
}

#[test]
fn metadata_export_and_import() {
    let dir = tempfile::tempdir().unwrap();
    let m = members(dir.path(), 4, 64 << 20);
    let file = dir.path().join("tank.meta");
    let snapshot = || -> Vec<Vec<u8>> { m.iter().map(|p| fs::read(p).unwrap()).collect() };
    let status = || -> serde_json::Value {
        let out = bin()
            .args(["status", "--json"])
            .args(&m)
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        serde_json::from_slice(&out).unwrap()
    };
    let read = |off: &str, len: usize| -> Vec<u8> {
        bin()
            .args(["read", "--offset", off, "--length", &len.to_string()])
            .args(&m)
            .assert()
            .success()
            .get_output()
            .stdout
            .clone()
    };
    bin()
        .args(["create", "--level", "raid5", "--name", "tank"])
        .args(&m)
        .assert()
        .success();
    bin()
        .args(["write", "--offset", "1M"])
        .args(&m)
        .write_stdin(data(1_000_000, 3))
        .assert()
        .success();
    let generation = status()["generation"].as_u64().unwrap();
    bin()
        .args(["metadata", "export"])
        .arg(&file)
        .arg("--")
        .args(&m)
        .assert()
        .success()
        .stdout(predicates::str::contains(format!(
            "saved generation {generation} of array"
        )));
    bin()
        .args(["metadata", "export"])
        .arg(&file)
        .arg("--")
        .args(&m)
        .assert()
        .failure()
        .stderr(predicates::str::contains("exists (use --force"));
    let out = bin()
        .args(["metadata", "export", "--json", "--force"])
        .arg(&file)
        .arg("--")
        .args(&m)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["name"], "tank");
    assert_eq!(v["level"], "raid5");
    assert_eq!(v["chunks_allocated"], 1);
    assert_eq!(v["members"].as_array().unwrap().len(), 4);
    assert_eq!(v["members"][2]["state"], "active");

    // More data after the export, in a chunk the export does not have.
    bin()
        .args(["write", "--offset", "100M"])
        .args(&m)
        .write_stdin(data(1_000_000, 4))
        .assert()
        .success();
    assert_eq!(status()["chunks_allocated"], 2);
    let before = snapshot();
    bin()
        .args(["metadata", "import", "--dry-run"])
        .arg(&file)
        .arg("--")
        .args(&m)
        .assert()
        .success()
        .stdout(predicates::str::contains(
            "ROLL BACK:   1 chunk allocated since the export would be forgotten",
        ))
        .stdout(predicates::str::contains(
            "chunks:      2 allocated now, 1 after",
        ))
        .stdout(predicates::str::contains("dry run: nothing written"));
    bin()
        .args(["metadata", "import"])
        .arg(&file)
        .arg("--")
        .args(&m)
        .assert()
        .failure()
        .stderr(predicates::str::contains(
            "can lose writes made since the export",
        ))
        .stderr(predicates::str::contains("--force"));
    assert!(snapshot() == before, "a dry run or refused import wrote");
    bin()
        .args(["metadata", "import", "--force"])
        .arg(&file)
        .arg("--")
        .args(&m)
        .assert()
        .success()
        .stdout(predicates::str::contains("imported"));
    let st = status();
    assert_eq!(st["chunks_allocated"], 1);
    assert_eq!(st["health"], "ok");
    assert!(st["generation"].as_u64().unwrap() > generation);
    assert_eq!(read("1M", 1_000_000), data(1_000_000, 3));
    assert_eq!(read("100M", 1_000_000), vec![0; 1_000_000]);

    // A damaged file, a file that is not one, another array's members.
    let mut bytes = fs::read(&file).unwrap();
    bytes[150] ^= 4;
    let bad = dir.path().join("bad.meta");
    fs::write(&bad, &bytes).unwrap();
    bin()
        .args(["metadata", "import", "--force"])
        .arg(&bad)
        .arg("--")
        .args(&m)
        .assert()
        .failure()
        .stderr(predicates::str::contains("checksum mismatch"));
    fs::write(&bad, &bytes[..100]).unwrap();
    bin()
        .args(["metadata", "import", "--dry-run"])
        .arg(&bad)
        .arg("--")
        .args(&m)
        .assert()
        .failure()
        .stderr(predicates::str::contains("truncated"));
    bin()
        .args(["metadata", "import", "--dry-run"])
        .arg(&m[0])
        .arg("--")
        .args(&m)
        .assert()
        .failure()
        .stderr(predicates::str::contains("not a damocles metadata backup"));
    let other_dir = dir.path().join("other");
    fs::create_dir(&other_dir).unwrap();
    let other = members(&other_dir, 3, 32 << 20);
    bin()
        .args(["create", "--level", "raid5"])
        .args(&other)
        .assert()
        .success();
    bin()
        .args(["metadata", "import", "--force"])
        .arg(&file)
        .arg("--")
        .args(&other)
        .assert()
        .failure()
        .stderr(predicates::str::contains("the backup is of array"));
}

/// The bytes of every file in `paths`.
fn snapshot(paths: &[PathBuf]) -> Vec<Vec<u8>> {
    paths.iter().map(|p| fs::read(p).unwrap()).collect()
}

/// `metadata import ... -- members` with `extra` args before FILE; its output.
fn import(extra: &[&str], file: &Path, members: &[&PathBuf]) -> std::process::Output {
    bin()
        .args(["metadata", "import"])
        .args(extra)
        .arg(file)
        .arg("--")
        .args(members)
        .output()
        .unwrap()
}

/// A refusal: failed, one line on stderr holding every piece of `want`, nothing on any
/// file in `untouched` changed.
fn refused(
    out: &std::process::Output,
    want: &[&str],
    untouched: &[PathBuf],
    before: &[Vec<u8>],
) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "not refused: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    for w in want {
        assert!(err.contains(w), "{w:?} not in: {err}");
    }
    assert!(
        snapshot(untouched) == before,
        "a refused import wrote something: {err}"
    );
    err
}

#[test]
fn metadata_import_refuses_missing_twice_given_and_foreign_members() {
    let dir = tempfile::tempdir().unwrap();
    let m = members(dir.path(), 4, 32 << 20);
    let file = dir.path().join("tank.meta");
    bin()
        .args(["create", "--level", "raid5", "--name", "tank"])
        .args(&m)
        .assert()
        .success();
    bin()
        .args(["write", "--offset", "1M"])
        .args(&m)
        .write_stdin(data(300_000, 9))
        .assert()
        .success();
    bin()
        .args(["metadata", "export"])
        .arg(&file)
        .arg("--")
        .args(&m)
        .assert()
        .success();
    let uuid1 = {
        let out = bin()
            .args(["status", "--json"])
            .args(&m)
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        v["members"][1]["uuid"].as_str().unwrap().to_string()
    };
    // Another array, with a journal device, for foreign members.
    let other_dir = dir.path().join("other");
    fs::create_dir(&other_dir).unwrap();
    let other = members(&other_dir, 3, 32 << 20);
    let journal = other_dir.join("journal.img");
    fs::File::create(&journal)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    bin()
        .args(["create", "--level", "raid5", "--journal"])
        .arg(&journal)
        .args(&other)
        .assert()
        .success();
    // A byte-for-byte copy of member 0: the same member under another path.
    let copy = dir.path().join("copy-of-m0.img");
    fs::copy(&m[0], &copy).unwrap();
    let blank = dir.path().join("blank.img");
    fs::File::create(&blank).unwrap().set_len(32 << 20).unwrap();
    let mut all: Vec<PathBuf> = m.clone();
    all.extend(other.iter().cloned());
    all.extend([journal.clone(), copy.clone(), blank.clone()]);
    let before = snapshot(&all);

    // Member 1 left out: refused without --force, naming it and what --force would do.
    let given: Vec<&PathBuf> = vec![&m[0], &m[2], &m[3]];
    refused(
        &import(&[], &file, &given),
        &[
            &format!("member 1 (uuid {uuid1}, active in the backup) is in the backup but not in the member list"),
            "give every member, or use --force",
            "it then writes members 0, 2, 3 only",
        ],
        &all,
        &before,
    );
    // A dry run says so too.
    let out = import(&["--dry-run"], &file, &given);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("MISSING:     members [1]"), "{text}");
    assert!(text.contains("needs --force: member 1 (uuid"), "{text}");
    assert!(text.contains("dry run: nothing written"), "{text}");
    assert!(snapshot(&all) == before);

    // Refused with or without --force: nothing is written anywhere.
    for force in [&[][..], &["--force"][..]] {
        // The same path twice.
        let twice: Vec<&PathBuf> = vec![&m[0], &m[1], &m[2], &m[3], &m[0]];
        refused(
            &import(force, &file, &twice),
            &["are the same member"],
            &all,
            &before,
        );
        // The same member under two paths.
        let with_copy: Vec<&PathBuf> = vec![&m[0], &m[1], &m[2], &m[3], &copy];
        refused(
            &import(force, &file, &with_copy),
            &[
                "are the same member",
                "copy-of-m0.img",
                "each member may be given only once",
            ],
            &all,
            &before,
        );
        // Another array's member among them, named, whichever place it has in the list.
        for at in [0, 2] {
            let mut mixed: Vec<&PathBuf> = vec![&m[0], &m[1], &m[3]];
            mixed.insert(at, &other[0]);
            refused(
                &import(force, &file, &mixed),
                &[
                    "other/m0.img (array ",
                    "the backup's: leave it off the list",
                ],
                &all,
                &before,
            );
        }
        // Another array's journal device (used to be skipped without a word).
        let with_journal: Vec<&PathBuf> = vec![&m[0], &m[1], &m[2], &m[3], &journal];
        refused(
            &import(force, &file, &with_journal),
            &["journal.img (array ", "leave it off the list"],
            &all,
            &before,
        );
        // Only another array's members.
        let foreign: Vec<&PathBuf> = other.iter().collect();
        refused(
            &import(force, &file, &foreign),
            &["the backup is of array"],
            &all,
            &before,
        );
        // A device that is no member at all.
        let with_blank: Vec<&PathBuf> = vec![&m[0], &m[1], &m[2], &m[3], &blank];
        refused(
            &import(force, &file, &with_blank),
            &["blank.img"],
            &all,
            &before,
        );
    }

    // A member that joined after the export is refused, with or without --force.
    let spare = dir.path().join("spare.img");
    fs::File::create(&spare).unwrap().set_len(32 << 20).unwrap();
    bin()
        .arg("add")
        .arg(&spare)
        .arg("--")
        .args(&m)
        .assert()
        .success();
    all.push(spare.clone());
    let before = snapshot(&all);
    let with_spare: Vec<&PathBuf> = vec![&m[0], &m[1], &m[2], &m[3], &spare];
    for force in [&[][..], &["--force"][..]] {
        refused(
            &import(force, &file, &with_spare),
            &[
                "spare.img (member 4, uuid ",
                "joined the array after the export",
            ],
            &all,
            &before,
        );
    }

    // With --force and member 1 left out: only the three given are written.
    let out = import(&["--force"], &file, &given);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("written to 3 members"), "{text}");
    let after = snapshot(&all);
    for (i, p) in all.iter().enumerate() {
        let written = [0, 2, 3].contains(&i);
        assert_eq!(
            after[i] != before[i],
            written,
            "{}: written {}",
            p.display(),
            !written
        );
    }
    // The array reads back with every member, member 1 included.
    let got = bin()
        .args(["read", "--offset", "1M", "--length", "300000"])
        .args(&m)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert_eq!(got, data(300_000, 9));
}

/// The size of the whole file, in bytes, may not grow past `limit` in a child: a write
/// past it kills the child with SIGXFSZ, as a crash in the middle of writing would.
fn export_with_file_size_limit(
    file: &Path,
    members: &[PathBuf],
    limit: u64,
) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("damocles"));
    cmd.args(["metadata", "export", "--force"])
        .arg(file)
        .arg("--")
        .args(members);
    // SAFETY: the closure runs in the forked child before exec and only calls
    // setrlimit, which is async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            let r = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().unwrap()
}

#[test]
fn metadata_export_force_replaces_the_file_whole_or_not_at_all() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let dir = tempfile::tempdir().unwrap();
    let m = members(dir.path(), 4, 32 << 20);
    let file = dir.path().join("tank.meta");
    bin()
        .args(["create", "--level", "raid5", "--name", "tank"])
        .args(&m)
        .assert()
        .success();
    let export = |force: bool, f: &Path| {
        let mut c = bin();
        c.args(["metadata", "export"]);
        if force {
            c.arg("--force");
        }
        c.arg(f).arg("--").args(&m).output().unwrap()
    };
    let write = |off: &str, seed: u8| {
        bin()
            .args(["write", "--offset", off])
            .args(&m)
            .write_stdin(data(200_000, seed))
            .assert()
            .success();
    };
    let temps = || -> Vec<String> {
        fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect()
    };
    write("1M", 1);
    assert!(export(false, &file).status.success());
    assert_eq!(temps(), Vec::<String>::new());
    let first = fs::read(&file).unwrap();

    // Without --force an existing file is refused and left alone.
    let out = export(false, &file);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists (use --force to overwrite it)"));
    assert_eq!(fs::read(&file).unwrap(), first);

    // --force writes a new file and renames it over the old one: a hard link to the old
    // file still holds the old backup, whole.
    let old = dir.path().join("old.meta");
    fs::hard_link(&file, &old).unwrap();
    write("30M", 2);
    let out = export(true, &file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let second = fs::read(&file).unwrap();
    assert_ne!(second, first);
    assert_eq!(
        fs::read(&old).unwrap(),
        first,
        "the old file was written in place"
    );
    assert_ne!(
        fs::metadata(&file).unwrap().ino(),
        fs::metadata(&old).unwrap().ino()
    );
    assert_eq!(temps(), Vec::<String>::new());
    for f in [&file, &old] {
        bin()
            .args(["metadata", "import", "--dry-run", "--force"])
            .arg(f)
            .arg("--")
            .args(&m)
            .assert()
            .success();
    }

    // Killed in the middle of writing (the file size limit is half a backup): the file
    // still holds the previous backup, whole.
    write("60M", 3);
    let out = export_with_file_size_limit(&file, &m, second.len() as u64 / 2);
    {
        use std::os::unix::process::ExitStatusExt;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.signal() == Some(libc::SIGXFSZ) || err.contains("File too large"),
            "the size limit did not stop the export mid-write: {:?} {err}",
            out.status
        );
    }
    assert_eq!(
        fs::read(&file).unwrap(),
        second,
        "a cut export damaged the backup"
    );
    bin()
        .args(["metadata", "import", "--dry-run"])
        .arg(&file)
        .arg("--")
        .args(&m)
        .assert()
        .success();
    for t in temps() {
        fs::remove_file(dir.path().join(t)).unwrap();
    }

    // A symlink is followed: the file it points at is replaced, the link stays.
    let link = dir.path().join("link.meta");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let out = export(true, &link);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_ne!(fs::read(&file).unwrap(), second);

    // A bare file name: the temporary file goes in the current directory.
    for force in [false, true] {
        let mut c = bin();
        c.current_dir(dir.path()).args(["metadata", "export"]);
        if force {
            c.arg("--force");
        }
        c.arg("bare.meta").arg("--").args(&m).assert().success();
    }
    assert!(fs::read(dir.path().join("bare.meta"))
        .unwrap()
        .starts_with(b"DAMOCLBK"));

    // Anything but a regular file is never replaced.
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a NUL-terminated path that lives across the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let sub = dir.path().join("sub");
    fs::create_dir(&sub).unwrap();
    for p in [&fifo, &sub] {
        let out = export(true, p);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("is not a regular file"), "{err}");
    }
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    assert!(fs::metadata(&sub).unwrap().is_dir());
    assert_eq!(temps(), Vec::<String>::new());
}
