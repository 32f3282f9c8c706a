//! Hot spares added with plain `add` are taken by a conversion that needs them, as mdadm's
//! `--grow` takes spares: raid0 of two, two disks added, `convert --level raid5` while
//! served. `plan` and `convert` name the spares taken; `--no-spares` refuses and says how
//! many members are needed; the data reads back identical.

mod interop_support;

use interop_support::*;
use std::process::Command;
use std::time::Duration;

const SIZE: u64 = 48 << 20;

#[test]
fn convert_of_raid0_takes_the_two_spares_added_and_names_them() {
    if !require_tools("convert takes spares", &["nbdcopy"]) {
        return;
    }
    let rig = Rig::create("raid0", "spares", 2, SIZE);
    let srv = rig.serve(&rig.members, &[], "conv");
    let size = rig.status()["size"].as_u64().unwrap();
    // More data than two members could hold as raid5 (one member's worth): the spares
    // are needed.
    let data = random_bytes((size * 3 / 4) as usize, 21);
    let src = rig.path("src.bin");
    std::fs::write(&src, &data).unwrap();
    run_ok(
        Command::new("nbdcopy")
            .arg("--flush")
            .arg(&src)
            .arg(&srv.uri),
    );
    let spares = [rig.spare("s2.img", SIZE), rig.spare("s3.img", SIZE)];
    assert_eq!(rig.add(&spares[0]), 2);
    assert_eq!(rig.add(&spares[1]), 3);

    // Without the spares it is refused, saying how many members it needs and that spares
    // were left out.
    let o = run(rig
        .cmd()
        .args(["plan", "convert", "--level", "raid5", "--no-spares"]));
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("more member") && out.contains("2 hot spares left out by --no-spares"),
        "{out}"
    );
    // The plan names the spares it takes.
    let plan = run_ok(rig.cmd().args(["plan", "convert", "--level", "raid5"]));
    assert!(plan.contains("hot spares [2, 3] become members"), "{plan}");
    let out = run_ok(rig.cmd().args(["convert", "--level", "raid5"]));
    assert!(
        out.contains("hot spares [2, 3] become members"),
        "convert does not say which spares it took: {out}"
    );
    assert!(
        !out.contains("already running"),
        "one line per job start: {out}"
    );
    let st = rig.wait_status("raid5 over four", Duration::from_secs(120), |st| {
        st["level"] == "raid5" && st["health"] == "ok"
    });
    for i in 0..4 {
        assert_eq!(state(&st, i), "ok", "{st:#}");
    }
    let out = rig.path("out.bin");
    run_ok(Command::new("nbdcopy").arg(&srv.uri).arg(&out));
    assert_same(
        "after the conversion",
        &std::fs::read(&out).unwrap()[..data.len()],
        &data,
    );
    srv.stop();
}
