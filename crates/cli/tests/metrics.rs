//! The Prometheus endpoint of `serve --metrics`: during a rebuild, scrapes (with curl) show
//! the job's progress moving; the export's requests and latency histogram count what a
//! client did; member states and array health are there.

mod interop_support;

use interop_support::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scrape(port: u16) -> String {
    run_ok(Command::new("curl").args(["-sf", &format!("http://127.0.0.1:{port}/metrics")]))
}

/// The value of the sample whose line starts with `prefix` (name and labels).
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn a_rebuild_shows_its_progress_moving_and_the_export_counts_requests() {
    if !require_tools("metrics", &["curl", "nbdcopy"]) {
        return;
    }
    let rig = Rig::create("raid1", "m", 2, 64 * MIB);
    let port = free_port();
    let s = rig.serve(
        &rig.members,
        &[
            "--metrics",
            &format!("127.0.0.1:{port}"),
            "--rebuild-rate",
            "8M",
        ],
        "a",
    );
    let data = random_bytes(48 << 20, 3);
    std::fs::write(rig.path("data"), &data).unwrap();
    run_ok(
        Command::new("nbdcopy")
            .arg("--flush")
            .arg(rig.path("data"))
            .arg(&s.uri),
    );
    let m = scrape(port);
    // Flushed: every byte reached both mirrors (and their journals).
    let member_written = m
        .lines()
        .find(|l| {
            l.starts_with("damocles_member_bytes_total{")
                && l.contains("member=\"0\"")
                && l.contains("op=\"write\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no member byte counter:\n{m}"));
    assert!(
        member_written >= (48 << 20) as f64,
        "member 0 wrote {member_written} bytes"
    );
    let writes = sample(
        &m,
        "damocles_export_requests_total{export=\"m\",array=\"m\",op=\"write\"}",
    )
    .unwrap_or_else(|| panic!("no write counter:\n{m}"));
    assert!(writes > 0.0, "{m}");
    let bytes = sample(
        &m,
        "damocles_export_bytes_total{export=\"m\",array=\"m\",op=\"write\"}",
    )
    .unwrap();
    assert!(bytes >= (48 << 20) as f64, "written bytes {bytes}");
    let count = sample(
        &m,
        "damocles_export_request_duration_seconds_count{export=\"m\"",
    )
    .unwrap();
    assert!(count >= writes, "histogram count {count} < writes {writes}");
    assert!(m.contains("damocles_array_health{array=\"m\""), "{m}");
    assert!(m.contains("state=\"ok\"} 1"), "{m}");

    // Member 1 fails; a spare takes over at 8 MiB/s: a few seconds of rebuild.
    let spare = rig.spare("spare.img", 64 * MIB);
    rig.add_spare(&spare);
    rig.fail(1);
    let start = Instant::now();
    let mut seen: Vec<f64> = Vec::new();
    while start.elapsed() < Duration::from_secs(60) {
        let m = scrape(port);
        let running = sample(&m, "damocles_job_running{array=\"m\"").is_some()
            && m.lines().any(|l| {
                l.starts_with("damocles_job_running")
                    && l.contains("job=\"rebuild\"")
                    && l.ends_with(" 1.0")
            });
        let done = m
            .lines()
            .find(|l| l.starts_with("damocles_job_done_bytes") && l.contains("job=\"rebuild\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok());
        if let (true, Some(d)) = (running, done) {
            if seen.last() != Some(&d) {
                seen.push(d);
            }
        }
        if seen.len() >= 3 {
            break;
        }
        if !running && !seen.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        seen.len() >= 2,
        "rebuild progress never moved in the metrics: {seen:?}"
    );
    assert!(
        seen.windows(2).all(|w| w[1] > w[0]),
        "progress went back: {seen:?}"
    );
    rig.wait_rebuilds_idle();
    s.stop();
}

/// The value of the first sample of family `name` whose labels include every `labels` pair.
fn labelled(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with('{')))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn each_volume_has_its_own_figures_and_the_array_its_space() {
    if !require_tools("volume metrics", &["curl", "nbdcopy"]) {
        return;
    }
    let rig = Rig::create("raid5", "tank", 4, 64 * MIB);
    let on = |args: &[&str]| {
        let mut c = rig.cmd();
        c.args(args).arg("--").args(&rig.members);
        run_ok(&mut c);
    };
    on(&["volume", "delete", "tank", "--force"]);
    on(&[
        "volume", "create", "vms", "--level", "raid5", "--size", "48M",
    ]);
    on(&[
        "volume", "create", "media", "--level", "single", "--size", "40M", "--thin",
    ]);
    let port = free_port();
    let s = rig.serve(
        &rig.members,
        &["--metrics", &format!("127.0.0.1:{port}")],
        "v",
    );
    let socket = rig.path("v.nbd");
    let uri = |name: &str| format!("nbd+unix:///{name}?socket={}", socket.display());
    let vol = |op: &'static str, v: &'static str| [("array", "tank"), ("volume", v), ("op", op)];
    let get = |m: &str, fam: &str, labels: &[(&str, &str)]| {
        labelled(m, fam, labels).unwrap_or_else(|| panic!("no {fam} {labels:?}:\n{m}"))
    };

    let st = rig.status();
    let m = scrape(port);
    for name in ["vms", "media"] {
        let v = st["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}: {st:#}"));
        let l = [("array", "tank"), ("volume", name)];
        assert_eq!(
            get(&m, "damocles_volume_size_bytes", &l),
            v["size"].as_u64().unwrap() as f64,
            "{name}"
        );
        assert_eq!(
            get(&m, "damocles_volume_thin", &l),
            f64::from(u8::from(name == "media")),
            "{name}"
        );
        assert_eq!(
            get(&m, "damocles_volume_tolerance", &l),
            v["tolerance"].as_u64().unwrap() as f64
        );
        assert_eq!(
            get(&m, "damocles_volume_can_lose", &l),
            v["can_lose"].as_u64().unwrap() as f64
        );
        assert_eq!(
            get(&m, "damocles_volume_allocated_bytes", &l),
            0.0,
            "{name}"
        );
        assert_eq!(get(&m, "damocles_volume_lost_bytes", &l), 0.0, "{name}");
        let mut ok = l.to_vec();
        ok.push(("health", "ok"));
        assert_eq!(get(&m, "damocles_volume_health", &ok), 1.0, "{name}");
        for op in ["read", "write"] {
            assert_eq!(get(&m, "damocles_volume_bytes_total", &vol(op, name)), 0.0);
        }
    }
    // raid5 survives one member, single none.
    assert_eq!(
        get(&m, "damocles_volume_tolerance", &[("volume", "vms")]),
        1.0
    );
    assert_eq!(
        get(&m, "damocles_volume_tolerance", &[("volume", "media")]),
        0.0
    );
    let space = |m: &str, k: &str| {
        get(
            m,
            &format!("damocles_array_{k}_bytes"),
            &[("array", "tank")],
        )
    };
    for k in ["raw", "allocated", "reserved", "free"] {
        assert_eq!(
            space(&m, k),
            st["space"][k].as_u64().unwrap() as f64,
            "{k}: {:#}",
            st["space"]
        );
    }
    // vms (not thin) reserves its raw space: 48 MiB at raid5 over four members is more.
    assert!(space(&m, "reserved") >= (48 << 20) as f64, "{m}");

    // 8 MiB written through vms's export: vms's counters move, media's do not.
    let data = random_bytes(8 << 20, 5);
    std::fs::write(rig.path("data"), &data).unwrap();
    run_ok(
        Command::new("nbdcopy")
            .arg("--flush")
            .arg(rig.path("data"))
            .arg(uri("vms")),
    );
    let m2 = scrape(port);
    assert!(
        get(&m2, "damocles_volume_bytes_total", &vol("write", "vms")) >= (8 << 20) as f64,
        "{m2}"
    );
    assert!(get(&m2, "damocles_volume_requests_total", &vol("write", "vms")) > 0.0);
    assert_eq!(
        get(&m2, "damocles_volume_bytes_total", &vol("write", "media")),
        0.0
    );
    assert_eq!(
        get(
            &m2,
            "damocles_volume_requests_total",
            &vol("write", "media")
        ),
        0.0
    );
    let vms_alloc = get(&m2, "damocles_volume_allocated_bytes", &[("volume", "vms")]);
    assert!(vms_alloc >= (8 << 20) as f64, "{m2}");
    assert!(space(&m2, "allocated") > space(&m, "allocated"), "{m2}");

    // A read of all of media (holes too: no extents asked) counts there only.
    run_ok(
        Command::new("nbdcopy")
            .arg("--no-extents")
            .arg(uri("media"))
            .arg(rig.path("out")),
    );
    let m3 = scrape(port);
    assert_eq!(
        get(&m3, "damocles_volume_bytes_total", &vol("read", "media")),
        get(&m3, "damocles_volume_size_bytes", &[("volume", "media")]),
        "{m3}"
    );
    assert_eq!(
        get(&m3, "damocles_volume_bytes_total", &vol("write", "vms")),
        get(&m2, "damocles_volume_bytes_total", &vol("write", "vms"))
    );
    s.stop();
}
