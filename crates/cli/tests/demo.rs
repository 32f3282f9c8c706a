//! The README's main job, `damocles demo`: creates volumes vms (raid5) and media (single)
//! on four sparse files, serves them
//! on loopback, prints how to attach it, answers NBD clients and `status`, stops on
//! SIGTERM with everything flushed, and reuses the same array on the next run.

mod interop_support;

use interop_support::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn demo_creates_serves_and_reuses_its_array() {
    if !require_tools("demo", &["nbdinfo", "nbdcopy"]) {
        return;
    }
    use std::os::unix::fs::DirBuilderExt;
    let dir = tempfile::Builder::new()
        .prefix("damocles-demo.")
        .tempdir()
        .unwrap();
    let rt = dir.path().join("rt");
    std::fs::DirBuilder::new().mode(0o700).create(&rt).unwrap();
    let demo = dir.path().join("demo-array");
    let start = |tag: &str| {
        let mut c = Command::new(bin());
        c.env("XDG_RUNTIME_DIR", &rt).current_dir(dir.path()).args([
            "demo",
            "--member-size",
            "64M",
            "--listen",
            "127.0.0.1:0",
        ]);
        Server::start(c, &dir.path().join(format!("demo-{tag}.stderr")))
    };
    let srv = start("first");
    assert!(srv.uri.starts_with("nbd://127.0.0.1:"), "{}", srv.line);
    assert!(srv.line.contains("raid5 'vms'"), "{}", srv.line);
    assert!(srv.uri.ends_with("/vms"), "{}", srv.uri);
    // The second volume, without redundancy, is its own export.
    let media = srv.uri.replace("/vms", "/media");
    let msize: u64 = run_ok(Command::new("nbdinfo").args(["--size", &media]))
        .trim()
        .parse()
        .unwrap();
    assert!(msize > 20 << 20, "media: {msize}");
    let list = run_ok(Command::new("nbdinfo").args(["--list", &srv.uri]));
    assert!(
        list.contains("vms") && list.contains("media") && list.contains("single"),
        "{list}"
    );
    for i in 0..4 {
        assert!(demo.join(format!("member{i}.img")).exists());
    }
    let size: u64 = run_ok(Command::new("nbdinfo").args(["--size", &srv.uri]))
        .trim()
        .parse()
        .unwrap();
    assert_eq!(size % 4096, 0);
    assert_eq!(size, 128 << 20, "vms: raid5 of twice a member");
    let data = random_bytes(8 << 20, 5);
    let src = dir.path().join("src.bin");
    std::fs::write(&src, &data).unwrap();
    run_ok(Command::new("nbdcopy").arg(&src).arg(&srv.uri));
    let st = run_ok(
        Command::new(bin())
            .env("XDG_RUNTIME_DIR", &rt)
            .args(["status", "--json"]),
    );
    let st: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(st["name"], "demo", "{st:#}");
    assert_eq!(st["health"], "ok", "{st:#}");
    let code = srv.stop_within(Duration::from_secs(30));
    assert!(code.success(), "demo stops cleanly on SIGTERM: {code:?}");

    // Run again: the same array, the data still there.
    let srv = start("second");
    let out = dir.path().join("out.bin");
    run_ok(Command::new("nbdcopy").arg(&srv.uri).arg(&out));
    assert_same(
        "after a restart of the demo",
        &std::fs::read(&out).unwrap()[..data.len()],
        &data,
    );
    srv.stop();
}
