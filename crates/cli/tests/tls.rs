//! NBD over TLS with real clients: libnbd (nbdinfo, nbdcopy over `nbds://` with
//! `tls-psk-file=` / `tls-certificates=`) and qemu-img (`tls-creds-psk` / `tls-creds-x509`)
//! against `damocles serve --tls require`, with pre-shared keys made by GnuTLS's psktool
//! and certificates made by the openssl CLI in the test. Also: plain clients, wrong keys,
//! identities and subjects outside --tls-allow, certificates from another CA, are refused;
//! bad credential files are refused at start with the file and the fault.
//!
//! Tools come from Debian packages (see `.ci/install-test-deps.sh`). A missing tool skips a
//! test with a printed reason, unless the environment variable CI is set: then it fails.

mod interop_support;

use interop_support::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A small raid5 (3 × 24 MiB sparse members) in its own directory, which is also the
/// server's XDG_RUNTIME_DIR (its control socket lands there).
struct Small {
    dir: tempfile::TempDir,
    members: Vec<PathBuf>,
}

impl Small {
    fn new() -> Small {
        let dir = tempfile::Builder::new()
            .prefix("damocles-tls.")
            .tempdir()
            .unwrap();
        let members: Vec<PathBuf> = (0..3)
            .map(|i| {
                let p = dir.path().join(format!("m{i}.img"));
                sparse(&p, 24 * MIB);
                p
            })
            .collect();
        let out = run_ok(
            Command::new(bin())
                .args(["create", "--level", "raid5", "--name", "tank"])
                .args(&members),
        );
        assert!(out.contains("created raid5"), "{out}");
        Small { dir, members }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn size(&self) -> u64 {
        let out = run_ok(
            Command::new(bin())
                .args(["status", "--json"])
                .args(&self.members),
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["size"].as_u64().expect("size")
    }

    fn serve_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.env("XDG_RUNTIME_DIR", self.dir.path())
            .env("DAMOCLES_LOG", "damocles_nbd=info")
            .arg("serve")
            .args(args)
            .args(&self.members);
        c
    }

    /// `damocles serve ARGS` on 127.0.0.1 (a free port); the server and its port.
    fn serve_tcp(&self, tag: &str, args: &[&str]) -> (Server, u16) {
        let mut all = vec!["--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let s = Server::start(self.serve_cmd(&all), &self.path(&format!("{tag}.stderr")));
        let port = s
            .uri
            .rsplit_once(':')
            .and_then(|(_, rest)| rest.split('/').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {}", s.uri));
        (s, port)
    }

    /// `damocles serve ARGS` that must refuse to start; its stderr.
    fn serve_refused(&self, args: &[&str]) -> String {
        let mut all = vec!["--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let o = run(&mut self.serve_cmd(&all));
        assert!(
            !o.status.success(),
            "serve {args:?} should fail\n{}",
            text(&o)
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `nbdinfo --size URI`, with LIBNBD_DEBUG on so refusals show the server's message.
fn nbdinfo_size(uri: &str) -> Output {
    run(Command::new("nbdinfo")
        .env("LIBNBD_DEBUG", "1")
        .arg("--size")
        .arg(uri))
}

fn assert_size(o: &Output, size: u64) {
    assert!(o.status.success(), "nbdinfo failed\n{}", text(o));
    let got = String::from_utf8_lossy(&o.stdout);
    assert_eq!(got.trim(), size.to_string(), "{}", text(o));
}

fn assert_refused(what: &str, o: &Output) {
    assert!(
        !o.status.success(),
        "{what}: should be refused\n{}",
        text(o)
    );
}

/// `psktool -u USER -p FILE` (a new random key, appended to FILE).
fn psktool(user: &str, file: &Path) {
    run_ok(Command::new("psktool").args(["-u", user, "-p", s(file)]));
}

fn qemu_img_info(object: &str, image_opts: &str) -> Output {
    run(Command::new("qemu-img").args(["info", "--object", object, "--image-opts", image_opts]))
}

fn assert_qemu_size(o: &Output, size: u64) {
    assert!(o.status.success(), "qemu-img info failed\n{}", text(o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(&format!("({size} bytes)")), "{}", text(o));
}

// ---------------------------------------------------------------------------------------
// Pre-shared keys

#[test]
fn psk_clients_read_the_size_and_bad_ones_are_refused() {
    if !require_tools(
        "psk_clients_read_the_size_and_bad_ones_are_refused",
        &["nbdinfo", "qemu-img", "psktool"],
    ) {
        return;
    }
    let a = Small::new();
    let size = a.size();
    let keys = a.path("keys.psk");
    psktool("alice", &keys);
    psktool("carol", &keys);
    let (srv, port) = a.serve_tcp(
        "psk",
        &[
            "--tls",
            "require",
            "--tls-psk-file",
            s(&keys),
            "--tls-allow",
            "alice",
        ],
    );
    assert!(srv.uri.starts_with("nbds://"), "{}", srv.line);
    let uri = |user: &str, file: &Path| {
        format!(
            "nbds://{user}@127.0.0.1:{port}/tank?tls-psk-file={}",
            file.display()
        )
    };

    // libnbd, TLS 1.3 (GnuTLS's choice).
    assert_size(&nbdinfo_size(&uri("alice", &keys)), size);
    // (libnbd 1.14, Debian 12's, takes the PSK identity from the URI's user only; its
    // tls-username= query parameter came later.)

    // A plain client gets NBD_REP_ERR_TLS_REQD (libnbd logs the server's message).
    let o = nbdinfo_size(&format!("nbd://127.0.0.1:{port}/tank"));
    assert_refused("plain client", &o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("TLS required"), "{}", text(&o));

    // The right identity with a wrong key.
    let wrong = a.path("wrong.psk");
    psktool("alice", &wrong);
    assert_refused("wrong key", &nbdinfo_size(&uri("alice", &wrong)));
    // An identity the server does not know.
    let bob = a.path("bob.psk");
    psktool("bob", &bob);
    assert_refused("unknown identity", &nbdinfo_size(&uri("bob", &bob)));
    // A known identity with its right key, but not in --tls-allow.
    assert_refused("identity not allowed", &nbdinfo_size(&uri("carol", &keys)));

    // qemu: tls-creds-psk reads DIR/keys.psk.
    let qdir = a.path("qemu-psk");
    std::fs::create_dir(&qdir).unwrap();
    std::fs::copy(&keys, qdir.join("keys.psk")).unwrap();
    let opts = format!("driver=nbd,host=127.0.0.1,port={port},export=tank,tls-creds=tls0");
    let obj = format!(
        "tls-creds-psk,id=tls0,endpoint=client,dir={},username=alice",
        qdir.display()
    );
    assert_qemu_size(&qemu_img_info(&obj, &opts), size);
    // The same over TLS 1.2 (PSK cipher suites rather than TLS 1.3 external PSK).
    let obj12 = format!("{obj},priority=NORMAL:-VERS-TLS1.3");
    assert_qemu_size(&qemu_img_info(&obj12, &opts), size);
    // qemu with carol's right key, outside the allow list.
    let obj_carol = obj.replace("username=alice", "username=carol");
    let o = qemu_img_info(&obj_carol, &opts);
    assert!(
        !o.status.success(),
        "carol via qemu should be refused\n{}",
        text(&o)
    );

    let log = srv.stderr();
    assert!(
        log.contains("TLSv1.3") && log.contains("PSK identity \"alice\""),
        "{log}"
    );
    assert!(log.contains("TLSv1.2"), "qemu's TLS 1.2 connection: {log}");
    assert!(log.contains("not in the allow list"), "{log}");
    srv.stop();
}

#[test]
fn data_written_over_tls_reads_back_identical() {
    if !require_tools(
        "data_written_over_tls_reads_back_identical",
        &["nbdcopy", "psktool"],
    ) {
        return;
    }
    let a = Small::new();
    let size = a.size() as usize;
    let keys = a.path("keys.psk");
    psktool("alice", &keys);
    let data = random_bytes(size, 16);
    let src = a.path("src.bin");

    // Over TCP, then over a Unix socket (nbds+unix), each written and read back.
    for unix in [false, true] {
        let sock = a.path("nbd.sock");
        let (srv, uri) = if unix {
            let srv = Server::start(
                a.serve_cmd(&[
                    "--socket",
                    s(&sock),
                    "--tls",
                    "require",
                    "--tls-psk-file",
                    s(&keys),
                ]),
                &a.path("unix.stderr"),
            );
            assert!(srv.uri.starts_with("nbds+unix://"), "{}", srv.line);
            let uri = format!(
                "nbds+unix://alice@/tank?socket={}&tls-psk-file={}",
                sock.display(),
                keys.display()
            );
            (srv, uri)
        } else {
            let (srv, port) =
                a.serve_tcp("copy", &["--tls", "require", "--tls-psk-file", s(&keys)]);
            let uri = format!(
                "nbds://alice@127.0.0.1:{port}/tank?tls-psk-file={}",
                keys.display()
            );
            (srv, uri)
        };
        let data = if unix {
            data.iter().map(|b| !b).collect()
        } else {
            data.clone()
        };
        std::fs::write(&src, &data).unwrap();
        run_ok(Command::new("nbdcopy").args(["--flush", s(&src), &uri]));
        let back = a.path("back.bin");
        let _ = std::fs::remove_file(&back);
        run_ok(Command::new("nbdcopy").args([&uri, s(&back)]));
        assert_same(
            if unix {
                "read back over nbds+unix"
            } else {
                "read back over nbds"
            },
            &std::fs::read(&back).unwrap(),
            &data,
        );
        srv.stop();
        let _ = std::fs::remove_file(&sock);
    }
    // And the data is on the members: read back through a plain server.
    let plain = Server::start(
        a.serve_cmd(&["--socket", s(&a.path("plain.sock"))]),
        &a.path("plain.stderr"),
    );
    let back = a.path("plain.bin");
    run_ok(Command::new("nbdcopy").args([&plain.uri, s(&back)]));
    let want: Vec<u8> = data.iter().map(|b| !b).collect();
    assert_same(
        "read back without TLS",
        &std::fs::read(&back).unwrap(),
        &want,
    );
    plain.stop();
}

// ---------------------------------------------------------------------------------------
// X.509

/// A CA, a server certificate for 127.0.0.1/localhost, and client directories in the
/// layout libnbd's `tls-certificates=` and qemu's `tls-creds-x509,dir=` read (ca-cert.pem,
/// client-cert.pem, client-key.pem).
struct Pki {
    dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    run_ok(Command::new("openssl").current_dir(dir).args(args));
}

impl Pki {
    fn new(dir: PathBuf) -> Pki {
        std::fs::create_dir_all(&dir).unwrap();
        let p = Pki { dir };
        p.self_signed("ca", "/CN=damocles test CA");
        p.signed("server", "/O=damocles/CN=localhost", "server");
        p
    }

    fn key(&self, name: &str) {
        openssl(
            &self.dir,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                &format!("{name}-key.pem"),
            ],
        );
    }

    fn self_signed(&self, name: &str, subject: &str) {
        self.key(name);
        openssl(
            &self.dir,
            &[
                "req",
                "-x509",
                "-key",
                &format!("{name}-key.pem"),
                "-out",
                &format!("{name}-cert.pem"),
                "-days",
                "2",
                "-subj",
                subject,
            ],
        );
    }

    /// A certificate signed by the CA; `role` server (with the addresses) or client.
    fn signed(&self, name: &str, subject: &str, role: &str) {
        self.key(name);
        openssl(
            &self.dir,
            &[
                "req",
                "-new",
                "-key",
                &format!("{name}-key.pem"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                subject,
            ],
        );
        let ext = if role == "server" {
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
        } else {
            "extendedKeyUsage=clientAuth\n"
        };
        std::fs::write(self.dir.join(format!("{name}.ext")), ext).unwrap();
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca-cert.pem",
                "-CAkey",
                "ca-key.pem",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &format!("{name}-cert.pem"),
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A client directory with the CA and, if given, the client's certificate and key.
    fn client_dir(&self, name: &str, cert: Option<&str>) -> PathBuf {
        let d = self.dir.join(format!("client-{name}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(self.file("ca-cert.pem"), d.join("ca-cert.pem")).unwrap();
        if let Some(c) = cert {
            std::fs::copy(
                self.file(&format!("{c}-cert.pem")),
                d.join("client-cert.pem"),
            )
            .unwrap();
            std::fs::copy(self.file(&format!("{c}-key.pem")), d.join("client-key.pem")).unwrap();
        }
        d
    }
}

#[test]
fn x509_clients_read_the_size_and_bad_ones_are_refused() {
    if !require_tools(
        "x509_clients_read_the_size_and_bad_ones_are_refused",
        &["nbdinfo", "qemu-img", "openssl"],
    ) {
        return;
    }
    let a = Small::new();
    let size = a.size();
    let pki = Pki::new(a.path("pki"));
    pki.signed("hv1", "/O=damocles/CN=hv1", "client");
    pki.signed("intruder", "/O=damocles/CN=intruder", "client");
    pki.self_signed("rogue", "/O=damocles/CN=hv1");
    let (srv, port) = a.serve_tcp(
        "x509",
        &[
            "--tls",
            "require",
            "--tls-cert",
            s(&pki.file("server-cert.pem")),
            "--tls-key",
            s(&pki.file("server-key.pem")),
            "--tls-ca",
            s(&pki.file("ca-cert.pem")),
            // By whole subject (RFC 2253), and by common name.
            "--tls-allow",
            "CN=hv1,O=damocles",
            "--tls-allow",
            "hv2",
        ],
    );
    let uri = |dir: &Path| {
        format!(
            "nbds://localhost:{port}/tank?tls-certificates={}",
            dir.display()
        )
    };
    let hv1 = pki.client_dir("hv1", Some("hv1"));
    assert_size(&nbdinfo_size(&uri(&hv1)), size);
    // The server certificate names 127.0.0.1 too.
    assert_size(
        &nbdinfo_size(&format!(
            "nbds://127.0.0.1:{port}/tank?tls-certificates={}",
            hv1.display()
        )),
        size,
    );

    let o = nbdinfo_size(&format!("nbd://127.0.0.1:{port}/tank"));
    assert_refused("plain client", &o);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("TLS required"),
        "{}",
        text(&o)
    );
    // Signed by the CA, but its subject is not allowed.
    assert_refused(
        "intruder",
        &nbdinfo_size(&uri(&pki.client_dir("intruder", Some("intruder")))),
    );
    // The allowed subject, but self-signed.
    assert_refused(
        "rogue",
        &nbdinfo_size(&uri(&pki.client_dir("rogue", Some("rogue")))),
    );
    // No client certificate at all.
    assert_refused(
        "no certificate",
        &nbdinfo_size(&uri(&pki.client_dir("none", None))),
    );

    let opts = format!("driver=nbd,host=localhost,port={port},export=tank,tls-creds=tls0");
    let obj = format!(
        "tls-creds-x509,id=tls0,endpoint=client,dir={}",
        hv1.display()
    );
    assert_qemu_size(&qemu_img_info(&obj, &opts), size);
    assert_qemu_size(
        &qemu_img_info(&format!("{obj},priority=NORMAL:-VERS-TLS1.3"), &opts),
        size,
    );

    let log = srv.stderr();
    assert!(log.contains("certificate \"CN=hv1,O=damocles\""), "{log}");
    assert!(log.contains("not in the allow list"), "{log}");
    srv.stop();

    // Allowed by common name alone, on a server without a client allow list for others.
    let (srv, port) = a.serve_tcp(
        "x509-cn",
        &[
            "--tls",
            "require",
            "--tls-cert",
            s(&pki.file("server-cert.pem")),
            "--tls-key",
            s(&pki.file("server-key.pem")),
            "--tls-ca",
            s(&pki.file("ca-cert.pem")),
            "--tls-allow",
            "intruder",
        ],
    );
    let uri = |dir: &Path| {
        format!(
            "nbds://localhost:{port}/tank?tls-certificates={}",
            dir.display()
        )
    };
    assert_size(&nbdinfo_size(&uri(&pki.file("client-intruder"))), size);
    assert_refused("hv1 not allowed here", &nbdinfo_size(&uri(&hv1)));
    srv.stop();
}

// ---------------------------------------------------------------------------------------
// Settings refused at start

#[test]
fn bad_tls_settings_are_refused_with_the_file_and_the_fault() {
    if !require_tools(
        "bad_tls_settings_are_refused_with_the_file_and_the_fault",
        &["openssl"],
    ) {
        return;
    }
    let a = Small::new();
    let bad = a.path("bad.psk");
    std::fs::write(&bad, "alice:00ff\nbob:12zz\n").unwrap();
    let e = a.serve_refused(&["--tls", "require", "--tls-psk-file", s(&bad)]);
    assert!(
        e.contains(s(&bad)) && e.contains("line 2") && e.contains("'z'"),
        "{e}"
    );

    let missing = a.path("missing.psk");
    let e = a.serve_refused(&["--tls", "require", "--tls-psk-file", s(&missing)]);
    assert!(e.contains(s(&missing)) && e.contains("cannot read"), "{e}");

    let e = a.serve_refused(&["--tls", "require"]);
    assert!(e.contains("needs credentials"), "{e}");

    let pki = Pki::new(a.path("pki"));
    pki.signed("other", "/CN=other", "client");
    let (cert, other_key) = (pki.file("server-cert.pem"), pki.file("other-key.pem"));
    let e = a.serve_refused(&[
        "--tls",
        "require",
        "--tls-cert",
        s(&cert),
        "--tls-key",
        s(&other_key),
    ]);
    assert!(
        e.contains("does not match") && e.contains(s(&other_key)),
        "{e}"
    );

    let e = a.serve_refused(&[
        "--tls",
        "require",
        "--tls-cert",
        s(&bad),
        "--tls-key",
        s(&other_key),
    ]);
    assert!(e.contains(s(&bad)) && e.contains("PEM"), "{e}");

    // An allow list needs clients to authenticate.
    let key = pki.file("server-key.pem");
    let e = a.serve_refused(&[
        "--tls",
        "require",
        "--tls-cert",
        s(&cert),
        "--tls-key",
        s(&key),
        "--tls-allow",
        "hv1",
    ]);
    assert!(e.contains("--tls-allow"), "{e}");

    // Credentials with TLS off is a contradiction, not a silent plain server.
    let e = a.serve_refused(&["--tls", "off", "--tls-cert", s(&cert), "--tls-key", s(&key)]);
    assert!(e.contains("--tls off"), "{e}");
}

#[test]
fn a_non_loopback_address_requires_tls_by_default() {
    let a = Small::new();
    // Refused before anything is bound: TLS is required there and no credentials are given.
    let mut c = a.serve_cmd(&["--listen", "0.0.0.0:0"]);
    let o = run(&mut c);
    assert!(!o.status.success(), "{}", text(&o));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("required by default on a non-loopback address"),
        "{e}"
    );
}

#[test]
fn sigterm_with_tls_clients_connected_stops_promptly() {
    if !require_tools(
        "sigterm_with_tls_clients_connected_stops_promptly",
        &["nbdcopy", "qemu-io", "psktool"],
    ) {
        return;
    }
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let a = Small::new();
    let keys = a.path("keys.psk");
    psktool("alice", &keys);
    let (srv, port) = a.serve_tcp("stop", &["--tls", "require", "--tls-psk-file", s(&keys)]);
    let uri = format!(
        "nbds://alice@127.0.0.1:{port}/tank?tls-psk-file={}",
        keys.display()
    );
    // An idle client: qemu-io connected over TLS, waiting for commands on its stdin.
    let qdir = a.path("qemu-psk");
    std::fs::create_dir(&qdir).unwrap();
    std::fs::copy(&keys, qdir.join("keys.psk")).unwrap();
    let mut idle = Command::new("qemu-io")
        .args([
            "--object",
            &format!(
                "tls-creds-psk,id=tls0,endpoint=client,dir={},username=alice",
                qdir.display()
            ),
            "--image-opts",
            &format!("driver=nbd,host=127.0.0.1,port={port},export=tank,tls-creds=tls0"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Busy clients reading the export over and over until the server goes away.
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let uri = uri.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                while start.elapsed() < Duration::from_secs(60) {
                    let o = run(Command::new("nbdcopy").args(["--no-extents", &uri, "null:"]));
                    if !o.status.success() {
                        break;
                    }
                }
            })
        })
        .collect();
    // Until all three are in (their TLS handshakes logged).
    let start = Instant::now();
    while srv.stderr().matches("TLS client:").count() < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{}",
            srv.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    // A connection blocked reading its TLS socket must see the stop, not wait out the
    // 30 s grace.
    let status = srv.stop_within(Duration::from_secs(15));
    assert!(status.success(), "serve exited with {status}");
    for r in readers {
        r.join().unwrap();
    }
    drop(idle.stdin.take());
    let _ = idle.kill();
    let _ = idle.wait();
}

#[test]
fn tls_on_serves_plain_and_tls_clients() {
    if !require_tools(
        "tls_on_serves_plain_and_tls_clients",
        &["nbdinfo", "psktool"],
    ) {
        return;
    }
    let a = Small::new();
    let size = a.size();
    let keys = a.path("keys.psk");
    psktool("alice", &keys);
    let (srv, port) = a.serve_tcp("on", &["--tls", "on", "--tls-psk-file", s(&keys)]);
    assert_size(&nbdinfo_size(&format!("nbd://127.0.0.1:{port}/tank")), size);
    let tls = format!(
        "nbds://alice@127.0.0.1:{port}/tank?tls-psk-file={}",
        keys.display()
    );
    assert_size(&nbdinfo_size(&tls), size);
    // Offered, not forced: a TLS client with a wrong key is still refused.
    let wrong = a.path("wrong.psk");
    psktool("alice", &wrong);
    let bad = format!(
        "nbds://alice@127.0.0.1:{port}/tank?tls-psk-file={}",
        wrong.display()
    );
    assert_refused("wrong key", &nbdinfo_size(&bad));
    assert_eq!(
        srv.stderr().matches("TLS client:").count(),
        1,
        "{}",
        srv.stderr()
    );
    srv.stop();
}
