//! Several named exports on one server, changed while it serves: the handshake's
//! choice of export, NBD_OPT_LIST, and removal with clients connected. Checked with our
//! spec client and with libnbd's tools (their part is skipped when not installed).

mod common;

use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use damocles_nbd::wire::*;
use damocles_nbd::{
    serve_exports, BlockDevice, Export, ExportError, Exports, Listener, MemDevice, ServerConfig,
};
use tokio::net::TcpStream;
use tokio::sync::watch;

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A memory export of `mib` MiB whose first 4 KiB hold `pattern(seed)`.
fn export(name: &str, mib: u64, seed: u8, description: &str) -> Export {
    let dev = MemDevice::new(mib * MIB);
    dev.write_at(&pattern(seed, 4096), 0, false).unwrap();
    let mut e = Export::new(name, Arc::new(dev));
    e.description = description.into();
    e
}

async fn run(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || Command::new(&args[0]).args(&args[1..]).output().unwrap())
        .await
        .unwrap()
}

async fn nbdinfo(args: &[&str]) -> Output {
    let mut v = vec!["nbdinfo".to_string()];
    v.extend(args.iter().map(|s| s.to_string()));
    run(v).await
}

/// Waits (a little) for the server to see the connections on `name` end.
async fn idle(exports: &Exports, name: &str) {
    for _ in 0..250 {
        if exports.connections(name) == Some(0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("connections on {name} did not end");
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

/// A fixed-newstyle client past the greeting.
async fn client(addr: std::net::SocketAddr) -> Client {
    let mut c = Client::new(Box::new(TcpStream::connect(addr).await.unwrap()));
    c.greeting().await;
    c.client_flags(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)
        .await;
    c
}

/// NBD_OPT_GO on `name`: the final reply's type and data.
async fn go(addr: std::net::SocketAddr, name: &str) -> (u32, String) {
    let mut c = client(addr).await;
    let r = c.opt(OPT_GO, &export_request(name, &[INFO_NAME])).await;
    let last = r.last().unwrap();
    (last.rep, text(&last.data))
}

struct Server {
    addr: std::net::SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), damocles_nbd::NbdError>>,
}

async fn start(exports: &Exports) -> Server {
    let tcp = Listener::bind_tcp("127.0.0.1:0").await.unwrap();
    let addr = tcp.tcp_addr().unwrap();
    let (stop, rx) = watch::channel(false);
    let cfg = Arc::new(ServerConfig::default());
    let task = tokio::spawn(serve_exports(vec![tcp], exports.clone(), cfg, rx));
    Server { addr, stop, task }
}

impl Server {
    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_name_picks_the_export() {
    let exports = Exports::new();
    exports.add(export("alpha", 1, 1, "first disk")).unwrap();
    exports.add(export("beta", 2, 2, "second disk")).unwrap();
    let s = start(&exports).await;

    // By name: each reads its own device.
    for (name, seed, size) in [("alpha", 1, MIB), ("beta", 2, 2 * MIB)] {
        let mut c = Client::new(Box::new(TcpStream::connect(s.addr).await.unwrap()));
        c.negotiate(name, false, false).await;
        assert_eq!(c.size, size, "{name}");
        let r = c.read(0, 4096).await;
        assert_eq!(r.error, 0);
        assert!(r.data == pattern(seed, 4096), "{name} read another device");
        c.disc().await;
    }

    // LIST: both, with their descriptions.
    let mut c = client(s.addr).await;
    let r = c.opt(OPT_LIST, &[]).await;
    let servers: Vec<(String, String)> = r
        .iter()
        .filter(|r| r.rep == REP_SERVER)
        .map(|r| {
            let n = u32::from_be_bytes(r.data[0..4].try_into().unwrap()) as usize;
            (text(&r.data[4..4 + n]), text(&r.data[4 + n..]))
        })
        .collect();
    assert_eq!(
        servers,
        [
            ("alpha".into(), "first disk".into()),
            ("beta".into(), "second disk".into())
        ]
    );
    assert_eq!(r.last().unwrap().rep, REP_ACK);

    // The empty name with two exports: refused, naming both; INFO the same.
    let (rep, msg) = go(s.addr, "").await;
    assert_eq!(rep, REP_ERR_UNKNOWN);
    assert!(msg.contains("'alpha'") && msg.contains("'beta'"), "{msg}");
    let mut c = client(s.addr).await;
    let r = c.opt(OPT_INFO, &export_request("", &[])).await;
    assert_eq!(r.last().unwrap().rep, REP_ERR_UNKNOWN);
    // An unknown name: refused with the names, and the connection may go on.
    let r = c.opt(OPT_GO, &export_request("gamma", &[])).await;
    let msg = text(&r.last().unwrap().data);
    assert_eq!(r.last().unwrap().rep, REP_ERR_UNKNOWN);
    assert!(msg.contains("unknown export 'gamma'"), "{msg}");
    let r = c.opt(OPT_GO, &export_request("beta", &[INFO_NAME])).await;
    assert_eq!(r.last().unwrap().rep, REP_ACK);
    c.disc().await;
    assert!(c.closed().await);
    // EXPORT_NAME of an unknown name cannot carry an error: closed.
    let mut c = client(s.addr).await;
    c.send_opt(OPT_EXPORT_NAME, b"gamma").await;
    assert!(c.closed().await);

    // With one export left, the empty name selects it, and INFO_NAME names it.
    idle(&exports, "beta").await;
    exports.remove("beta", false).unwrap();
    let (rep, _) = go(s.addr, "beta").await;
    assert_eq!(rep, REP_ERR_UNKNOWN, "a removed export is refused");
    let mut c = client(s.addr).await;
    let r = c.opt(OPT_GO, &export_request("", &[INFO_NAME])).await;
    assert_eq!(r.last().unwrap().rep, REP_ACK, "{r:?}");
    let name = r
        .iter()
        .find(|r| r.rep == REP_INFO && r.data[0..2] == INFO_NAME.to_be_bytes())
        .expect("NBD_INFO_NAME");
    assert_eq!(&name.data[2..], b"alpha");
    c.disc().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_at_once_and_removal_waits_for_clients() {
    let exports = Exports::new();
    exports.add(export("alpha", 1, 1, "")).unwrap();
    let s = start(&exports).await;
    let (rep, _) = go(s.addr, "gamma").await;
    assert_eq!(rep, REP_ERR_UNKNOWN);
    // Added while serving: reachable by the next handshake.
    exports.add(export("gamma", 1, 3, "")).unwrap();
    assert_eq!(
        exports.add(export("gamma", 1, 4, "")),
        Err(ExportError::Exists("gamma".into()))
    );
    let mut c = Client::new(Box::new(TcpStream::connect(s.addr).await.unwrap()));
    c.negotiate("gamma", true, false).await;
    assert!(c.read(0, 4096).await.data == pattern(3, 4096));
    assert_eq!(exports.connections("gamma"), Some(1));
    assert_eq!(exports.connections("alpha"), Some(0));

    // Busy: refused and still served.
    assert_eq!(
        exports.remove("gamma", false).unwrap_err(),
        ExportError::Busy {
            name: "gamma".into(),
            connections: 1
        }
    );
    assert_eq!(c.write(0, b"still here").await, 0);
    // Forced: the client's connection is closed, new ones refused.
    let removed = exports.remove("gamma", true).unwrap();
    assert_eq!(removed.connections, 1);
    assert!(
        c.closed().await,
        "connection of a removed export stays open"
    );
    let waited = tokio::task::spawn_blocking(move || removed.wait_closed(Duration::from_secs(5)));
    assert!(waited.await.unwrap());
    let (rep, _) = go(s.addr, "gamma").await;
    assert_eq!(rep, REP_ERR_UNKNOWN);
    // Once the client is gone, a removal without force goes through.
    let mut c = Client::new(Box::new(TcpStream::connect(s.addr).await.unwrap()));
    c.negotiate("alpha", false, false).await;
    c.disc().await;
    assert!(c.closed().await);
    idle(&exports, "alpha").await;
    exports.remove("alpha", false).unwrap();
    assert!(exports.is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libnbd_tools_see_the_exports() {
    if !have("nbdinfo") || !have("nbdcopy") {
        eprintln!("note: nbdinfo/nbdcopy not installed (apt-get install libnbd-bin); skipping");
        return;
    }
    let exports = Exports::new();
    exports.add(export("alpha", 1, 1, "first disk")).unwrap();
    exports.add(export("beta", 2, 2, "second disk")).unwrap();
    let s = start(&exports).await;
    let base = format!("nbd://{}", s.addr);

    let o = nbdinfo(&["--list", "--json", &base]).await;
    assert!(o.status.success(), "{}", text(&o.stderr));
    let json = text(&o.stdout);
    for needle in [
        "\"export-name\": \"alpha\"",
        "\"description\": \"first disk\"",
        "\"export-name\": \"beta\"",
        "\"description\": \"second disk\"",
        "\"export-size\": 1048576",
        "\"export-size\": 2097152",
    ] {
        assert!(json.contains(needle), "missing {needle} in {json}");
    }

    // nbdcopy reads each by name: its own content.
    let dir = tempfile::tempdir().unwrap();
    for (name, seed, size) in [("alpha", 1, MIB), ("beta", 2, 2 * MIB)] {
        let out = dir.path().join(format!("{name}.img"));
        let o = run(vec![
            "nbdcopy".into(),
            format!("{base}/{name}"),
            out.to_str().unwrap().into(),
        ])
        .await;
        assert!(o.status.success(), "{}", text(&o.stderr));
        let back = std::fs::read(&out).unwrap();
        assert_eq!(back.len() as u64, size);
        assert!(back[..4096] == pattern(seed, 4096)[..], "{name}");
    }

    // The empty name with two exports: nbdinfo fails; libnbd shows our message in its
    // debug output.
    let o = run(vec![
        "env".into(),
        "LIBNBD_DEBUG=1".into(),
        "nbdinfo".into(),
        format!("{base}/"),
    ])
    .await;
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("'alpha'") && err.contains("'beta'"), "{err}");

    // Added at once, removed at once.
    exports.add(export("gamma", 3, 3, "third")).unwrap();
    let o = nbdinfo(&["--size", &format!("{base}/gamma")]).await;
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).trim(), (3 * MIB).to_string());
    exports.remove("gamma", false).unwrap();
    exports.remove("beta", false).unwrap();
    let o = nbdinfo(&["--size", &format!("{base}/gamma")]).await;
    assert!(!o.status.success(), "a removed export is still served");
    assert!(text(&o.stderr).contains("'gamma'"), "{}", text(&o.stderr));
    // One export left: the empty name is it.
    let o = nbdinfo(&["--size", &format!("{base}/")]).await;
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).trim(), MIB.to_string());
    s.stop().await;
}
