//! Interop with libnbd's tools (skipped when they are not installed).

use std::process::Command;
use std::sync::Arc;

use damocles_nbd::{serve, BlockDevice, Listener, MemDevice, ServerConfig};
use tokio::sync::watch;

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_and_nbdcopy() {
    if !have("nbdinfo") || !have("nbdcopy") {
        eprintln!("note: nbdinfo/nbdcopy not installed (apt-get install libnbd-bin); skipping");
        return;
    }
    let size = 8u64 << 20;
    let dev = Arc::new(MemDevice::new(size));
    let tcp = Listener::bind_tcp("127.0.0.1:0").await.unwrap();
    let uri = format!("nbd://{}/mem", tcp.tcp_addr().unwrap());
    let mut cfg = ServerConfig::new("mem");
    cfg.description = "interop".into();
    let (tx, rx) = watch::channel(false);
    let server = tokio::spawn(serve(vec![tcp], dev.clone(), Arc::new(cfg), rx));

    let dir = std::env::temp_dir().join(format!("damocles-nbd-interop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("src.img");
    let dst = dir.join("dst.img");
    // Data, a hole, then more data.
    let mut img: Vec<u8> = (0..size as usize).map(|i| (i * 7 % 251) as u8).collect();
    img[2 << 20..5 << 20].fill(0);
    std::fs::write(&src, &img).unwrap();

    let uri2 = uri.clone();
    let (info, copy_in, copy_out) = tokio::task::spawn_blocking(move || {
        let info = Command::new("nbdinfo")
            .args(["--json", &uri2])
            .output()
            .unwrap();
        let copy_in = Command::new("nbdcopy")
            .args(["--connections=2", src.to_str().unwrap(), &uri2])
            .output()
            .unwrap();
        let copy_out = Command::new("nbdcopy")
            .args([&uri2, dst.to_str().unwrap()])
            .output()
            .unwrap();
        (info, copy_in, copy_out)
    })
    .await
    .unwrap();
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    let json = String::from_utf8_lossy(&info.stdout);
    for needle in [
        "\"export-size\": 8388608",
        "base:allocation",
        "\"can_multi_conn\": true",
        "\"can_flush\": true",
        "\"is_read_only\": false",
        "\"description\": \"interop\"",
        "\"block_size_maximum\": 33554432",
    ] {
        assert!(json.contains(needle), "missing {needle} in {json}");
    }
    assert!(
        copy_in.status.success(),
        "{}",
        String::from_utf8_lossy(&copy_in.stderr)
    );
    assert!(
        copy_out.status.success(),
        "{}",
        String::from_utf8_lossy(&copy_out.stderr)
    );
    let back = std::fs::read(dir.join("dst.img")).unwrap();
    assert!(back == img, "round trip through nbdcopy differs");
    // nbdcopy skips zero regions of a sparse source, leaving holes on our side.
    let ext = dev.block_status(3 << 20, 4096).unwrap();
    assert!(ext[0].hole, "{ext:?}");

    tx.send(true).unwrap();
    server.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
