//! Volumes on a served array, black box: volumes made through the control socket are
//! exported at once under their own names and listed with descriptions; the empty export
//! name is refused naming them; data written to `vms` (raid5) and `media` (single) reads
//! back; `convert --volume media --level raid1` while served keeps both volumes' data;
//! a volume with a client connected cannot be deleted, and once deleted is no longer
//! exported.

mod interop_support;

use interop_support::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

/// A raw NBD client that negotiates export `name` (NBD_OPT_GO) and stays connected.
fn connect(socket: &std::path::Path, name: &str) -> UnixStream {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting[..8], b"NBDMAGIC");
    s.write_all(&3u32.to_be_bytes()).unwrap(); // fixed newstyle, no zeroes
    let mut opt = Vec::new();
    opt.extend_from_slice(b"IHAVEOPT");
    opt.extend_from_slice(&7u32.to_be_bytes()); // NBD_OPT_GO
    opt.extend_from_slice(&((4 + name.len() + 2) as u32).to_be_bytes());
    opt.extend_from_slice(&(name.len() as u32).to_be_bytes());
    opt.extend_from_slice(name.as_bytes());
    opt.extend_from_slice(&0u16.to_be_bytes());
    s.write_all(&opt).unwrap();
    loop {
        let mut hdr = [0u8; 20];
        s.read_exact(&mut hdr).unwrap();
        let kind = u32::from_be_bytes(hdr[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(hdr[16..20].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).unwrap();
        assert!(
            kind < 1 << 31,
            "export {name} refused: {}",
            String::from_utf8_lossy(&body)
        );
        if kind == 1 {
            return s; // NBD_REP_ACK: in transmission now
        }
    }
}

#[test]
fn volumes_are_exports_of_a_served_array() {
    if !require_tools("served volumes", &["nbdinfo", "nbdcopy"]) {
        return;
    }
    let rig = Rig::create("raid5", "tank", 4, 64 * MIB);
    // Start from an empty array: the volume `create` made goes.
    let mut c = rig.cmd();
    c.args(["volume", "delete", "tank", "--force", "--"])
        .args(&rig.members);
    run_ok(&mut c);
    let srv = rig.serve(&rig.members, &[], "vols");
    assert!(srv.line.contains("no volume yet"), "{}", srv.line);
    let socket = rig.path("vols.nbd");
    let uri = |name: &str| format!("nbd+unix:///{name}?socket={}", socket.display());
    run_ok(rig.cmd().args([
        "volume", "create", "vms", "--level", "raid5", "--size", "48M",
    ]));
    run_ok(rig.cmd().args([
        "volume", "create", "media", "--level", "single", "--size", "40M",
    ]));
    let list = run_ok(Command::new("nbdinfo").arg("--list").arg(uri("vms")));
    assert!(list.contains("vms") && list.contains("media"), "{list}");
    assert!(list.contains("raid5") && list.contains("single"), "{list}");
    // nbdinfo prints the server's reason only in libnbd's debug output.
    let empty = run(Command::new("nbdinfo")
        .env("LIBNBD_DEBUG", "1")
        .arg(uri("")));
    assert!(!empty.status.success());
    let why = text(&empty);
    assert!(why.contains("vms") && why.contains("media"), "{why}");

    let vms = random_bytes(48 << 20, 1);
    let size: u64 = run_ok(Command::new("nbdinfo").args(["--size", &uri("media")]))
        .trim()
        .parse()
        .unwrap();
    let media = random_bytes(size as usize, 2);
    for (name, data) in [("vms", &vms), ("media", &media)] {
        let src = rig.path(&format!("{name}.src"));
        std::fs::write(&src, data).unwrap();
        run_ok(
            Command::new("nbdcopy")
                .arg("--flush")
                .arg(&src)
                .arg(uri(name)),
        );
    }
    let check = |what: &str| {
        for (name, data) in [("vms", &vms), ("media", &media)] {
            let out = rig.path(&format!("{name}.out"));
            run_ok(Command::new("nbdcopy").arg(uri(name)).arg(&out));
            assert_same(
                &format!("{name} {what}"),
                &std::fs::read(&out).unwrap(),
                data,
            );
        }
    };
    check("written");

    // One volume converted while served; both keep their data.
    run_ok(
        rig.cmd()
            .args(["convert", "--volume", "media", "--level", "raid1"]),
    );
    rig.wait_status("the conversion", Duration::from_secs(120), |st| {
        st["chunks_to_move"] == 0 && st["reshape"]["running"] != true
    });
    let st = rig.status();
    let level = |n: &str| {
        st["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == n)
            .map(|v| v["level"].clone())
    };
    assert_eq!(level("media"), Some("raid1".into()), "{st:#}");
    assert_eq!(level("vms"), Some("raid5".into()), "{st:#}");
    check("after converting media");

    // A connected client keeps its volume from being deleted.
    let client = connect(&socket, "vms");
    let busy = run(rig.cmd().args(["volume", "delete", "vms", "--force"]));
    assert!(!busy.status.success());
    assert!(text(&busy).contains("in use"), "{}", text(&busy));
    drop(client);
    let mut deleted = false;
    for _ in 0..50 {
        if run(rig.cmd().args(["volume", "delete", "vms", "--force"]))
            .status
            .success()
        {
            deleted = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(deleted, "delete still refused after the client left");
    let list = run_ok(Command::new("nbdinfo").arg("--list").arg(uri("media")));
    assert!(
        !list.contains("export=\"vms\"") && list.contains("media"),
        "{list}"
    );
    assert!(!run(Command::new("nbdinfo").arg(uri("vms")))
        .status
        .success());
    let out = rig.path("media.out");
    run_ok(Command::new("nbdcopy").arg(uri("media")).arg(&out));
    assert_same(
        "media after deleting vms",
        &std::fs::read(&out).unwrap(),
        &media,
    );
    srv.stop();
}
