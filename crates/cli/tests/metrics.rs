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
