//! `damocles status`

use crate::cmd::{target, Target};
use crate::control::proto::Request;
use crate::progress;
use crate::{members, units};
use anyhow::{Context, Result};
use damocles_engine::{Health, MemberHealth, Status};
use std::path::PathBuf;

/// Show an array's level, size, health, members, jobs and errors.
///
/// Without MEMBER..., asks the server of a served array (through its control socket), so a
/// running rebuild or scrub shows with its progress. With MEMBER..., opens those members
/// read-only and changes nothing (the array must not be served). Members left out are shown
/// as missing; a member that missed writes while it was away is shown as stale and is not
/// used.
#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of text (docs/control.md describes the fields).
    #[arg(long)]
    json: bool,
    /// The served array: its name, UUID, or control socket path. Optional when only one
    /// array is served.
    #[arg(long, value_name = "NAME", conflicts_with = "members")]
    array: Option<String>,
    /// Members of an array that is not served.
    #[arg(value_name = "MEMBER")]
    members: Vec<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let value = match target(a.array.as_deref(), a.members, "damocles status MEMBER...")? {
        Target::Members(paths) => {
            let array = members::assemble(&paths, true)?;
            serde_json::to_value(array.status())?
        }
        Target::Served(mut c) => c
            .call(&Request::Status {})?
            .status
            .context("the server sent no status")?,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let st: Status = serde_json::from_value(value).context("reading the status the server sent")?;
    print!("{}", text(&st));
    Ok(())
}

/// Lost ranges listed one by one before the rest is summed up.
const LOST_SHOWN: usize = 10;

/// The array's health as `status` and the commands that change the array show it.
pub fn health_text(h: Health) -> &'static str {
    match h {
        Health::Ok => "ok",
        Health::Degraded => "DEGRADED",
        Health::Failed => "FAILED (data beyond redundancy is unreadable)",
    }
}

/// A member's state in the members table: a failed one stands out.
fn state_text(s: MemberHealth) -> &'static str {
    match s {
        MemberHealth::Ok => "ok",
        MemberHealth::Missing => "missing",
        MemberHealth::Stale => "stale",
        MemberHealth::Failed => "FAILED",
        MemberHealth::Spare => "spare",
        MemberHealth::Replacing => "replacing",
        MemberHealth::Removed => "removed",
    }
}

/// The text `damocles status` prints: one line per fact, each ending in a newline.
pub fn text(st: &Status) -> String {
    let mut lines = identity_lines(st);
    lines.extend(state_lines(st));
    lines.extend(member_lines(st));
    lines.extend(volume_lines(st));
    lines.extend(rebuild_line(st));
    lines.extend(reshape_line(st));
    lines.extend(scrub_lines(st));
    lines.extend(error_lines(st));
    lines.extend(st.notes.iter().map(|n| format!("note: {n}")));
    lines.into_iter().map(|l| l + "\n").collect()
}

/// What the array is: name, UUID, level, size, allocation, tolerance, generation.
fn identity_lines(st: &Status) -> Vec<String> {
    vec![
        format!(
            "name:        {}",
            if st.name.is_empty() { "-" } else { &st.name }
        ),
        format!("uuid:        {}", st.uuid),
        format!(
            "level:       {}{} (stripe unit {})",
            st.level,
            if st.copies > 1 {
                format!(", {} copies", st.copies)
            } else {
                String::new()
            },
            units::human(st.stripe_unit)
        ),
        format!(
            "size:        {} ({} bytes){}",
            units::human(st.size),
            st.size,
            if st.grow_after_reshape {
                "; grows to what the members hold when the reshape ends".to_string()
            } else if st.max_size > st.size {
                format!(
                    "; the members hold {}: `damocles grow`",
                    units::human(st.max_size)
                )
            } else {
                String::new()
            }
        ),
        format!(
            "allocated:   {} of {} chunks of {}",
            st.chunks_allocated,
            st.chunks_total,
            units::human(st.chunk_size)
        ),
        format!("tolerance:   {} member failure(s)", st.tolerance),
        format!(
            "generation:  {} (format {})",
            st.generation, st.format_version
        ),
        format!(
            "space:       raw {}, allocated {}, reserved {}, free {} ({} % used)",
            units::human(st.space.raw),
            units::human(st.space.allocated),
            units::human(st.space.reserved),
            units::human(st.space.free),
            st.space.percent_used()
        ),
    ]
}

/// The volumes table; with members missing, what each can still lose and what is lost.
fn volume_lines(st: &Status) -> Vec<String> {
    let mut out = vec![String::new(), "volumes:".to_string()];
    out.extend(
        crate::cmd::volume::table(&st.volumes)
            .lines()
            .map(|l| format!("  {l}")),
    );
    let degraded = st.volumes.iter().any(|v| v.health != "ok");
    for v in st.volumes.iter().filter(|_| degraded) {
        let mut line = format!(
            "  {}: can lose {} more member{}",
            v.name,
            v.can_lose,
            if v.can_lose == 1 { "" } else { "s" }
        );
        if !v.lost.is_empty() {
            let bytes: u64 = v.lost.iter().map(|r| r.len).sum();
            line += &format!(
                "; {} unreadable (EIO) in {} range{}:",
                units::human(bytes),
                v.lost.len(),
                if v.lost.len() == 1 { "" } else { "s" }
            );
            for r in v.lost.iter().take(8) {
                line += &format!(" {}+{}", r.offset, r.len);
            }
            if v.lost.len() > 8 {
                line += " ...";
            }
        }
        out.push(line);
    }
    out
}

/// How the array is: health, what it needs, journal, checksums, control socket.
fn state_lines(st: &Status) -> Vec<String> {
    let mut lines = vec![format!("health:      {}", health_text(st.health))];
    if st.chunks_degraded > 0 {
        lines.push(format!(
            "degraded:    {} chunks lack some of their redundancy",
            st.chunks_degraded
        ));
    }
    if let Some(n) = &st.needs {
        lines.push(format!("needs:       {n}"));
    }
    lines.push(match st.journal.as_str() {
        "none" => {
            "journal:     NONE (a power cut during a write can damage that stripe's parity)".into()
        }
        "members" => "journal:     on the members".into(),
        j => format!("journal:     {j}"),
    });
    lines.push(format!(
        "checksums:   {}",
        if st.checksums { "on" } else { "off" }
    ));
    if let Some(c) = &st.control_socket {
        lines.push(format!("control:     {c}"));
    }
    lines
}

/// The members table, with why a member failed under it.
fn member_lines(st: &Status) -> Vec<String> {
    let mut lines = vec![
        "members:".to_string(),
        format!(
            "   #  {:<9} {:<10} {:<10} {:<36}  device",
            "state", "size", "used", "uuid"
        ),
    ];
    for m in &st.members {
        let mut s = format!(
            "  {:>2}  {:<9} {:<10} {:<10} {:<36}  {}",
            m.index,
            state_text(m.state),
            units::human(m.size),
            units::human(m.used),
            m.uuid,
            m.device.as_deref().unwrap_or("-")
        );
        if let Some(r) = m.replaces {
            s += &format!("  (replacing member {r})");
        }
        lines.push(s);
        if let Some(r) = &m.reason {
            lines.push(format!("      reason: {r}"));
        }
        if m.front_labels_damaged {
            lines.push(
                "      front labels damaged (found by its copies near the end): \
                 `damocles repair --labels` rewrites them"
                    .to_string(),
            );
        }
    }
    lines.extend(member_io_lines(st));
    lines
}

/// Per member: requests in flight and the oldest one's age, latency over the last minute,
/// slow reads, timeouts and errors by kind (none shown when no member has figures).
fn member_io_lines(st: &Status) -> Vec<String> {
    let us = |v: Option<u64>| match v {
        None => "-".to_string(),
        Some(v) if v >= 10_000 => format!("{} ms", v / 1000),
        Some(v) => format!("{v} us"),
    };
    let rows: Vec<String> = st
        .members
        .iter()
        .filter_map(|m| m.io.as_ref().map(|io| (m.index, io)))
        .map(|(i, io)| {
            format!(
                "  {:>2}  {:>8} {:>9} {:>9} {:>9} {:>6} {:>8}  {} read, {} write, {} flush, {} checksum, {} no space",
                i,
                io.in_flight,
                io.oldest_ms.map_or("-".into(), |ms| format!("{ms} ms")),
                us(io.p50_us),
                us(io.p99_us),
                io.slow,
                io.timeouts,
                io.read_errors,
                io.write_errors,
                io.flush_errors,
                io.checksum_errors,
                io.no_space
            )
        })
        .collect();
    if rows.is_empty() {
        return rows;
    }
    let mut lines = vec![
        format!(
            "member requests (last minute; slow limit {} ms, fail limit {} s):",
            st.slow_limit_ms,
            st.fail_limit_ms as f64 / 1000.0
        ),
        format!(
            "   #  {:>8} {:>9} {:>9} {:>9} {:>6} {:>8}  errors",
            "inflight", "oldest", "p50", "p99", "slow", "timeouts"
        ),
    ];
    lines.extend(rows);
    lines
}

/// The rebuild running, or how the last one ended (none: no rebuild ran).
fn rebuild_line(st: &Status) -> Option<String> {
    let r = st.rebuild.as_ref()?;
    let p = &r.progress;
    Some(if r.running {
        format!("rebuild:     running, {}", progress::line(p))
    } else if p.done >= p.total {
        format!("rebuild:     finished ({} rebuilt)", units::human(p.done))
    } else {
        format!("rebuild:     last run ended at {}", progress::line(p))
    })
}

/// The reshape running, paused or finished (none: no reshape ran or is due).
fn reshape_line(st: &Status) -> Option<String> {
    let r = st.reshape.as_ref();
    match r {
        Some(r) if r.running => Some(format!(
            "reshape:     running, {}; {} chunks to move",
            progress::line(&r.progress),
            st.chunks_to_move
        )),
        _ if st.chunks_to_move > 0 => Some(format!(
            "reshape:     {} chunks still to move; {}",
            st.chunks_to_move,
            if r.is_some() {
                "paused (`damocles balance` resumes it)"
            } else {
                "`damocles serve` or `damocles balance` resumes it"
            }
        )),
        Some(r) => Some(format!(
            "reshape:     finished ({} moved)",
            units::human(r.progress.done)
        )),
        None => None,
    }
}

/// The scrub running, or the results of the last one and where an interrupted one resumes.
fn scrub_lines(st: &Status) -> Vec<String> {
    let s = &st.scrub;
    let mut lines = vec![match &s.running {
        Some(p) => format!("scrub:       running, {}", progress::line(p)),
        None if s.last_finished == 0 && s.blocks_checked == 0 => "scrub:       never run".into(),
        None => format!(
            "scrub:       {}{} blocks checked, {} repaired, {} unrecoverable",
            if s.last_finished > 0 {
                format!("last finished {}: ", utc(s.last_finished))
            } else {
                String::new()
            },
            s.blocks_checked,
            s.repaired,
            s.unrecoverable
        ),
    }];
    if let (None, Some(c)) = (&s.running, s.resume_at_chunk) {
        lines.push(format!(
            "             interrupted; `damocles scrub` resumes at chunk {c}"
        ));
    }
    lines
}

/// The error counters, and the lost ranges (the first [`LOST_SHOWN`] of them).
fn error_lines(st: &Status) -> Vec<String> {
    let e = &st.errors;
    let mut lines = vec![format!(
        "errors:      {} read, {} write, {} checksum; {} repaired, {} unrecoverable",
        e.read_errors, e.write_errors, e.checksum_errors, e.repaired, e.unrecoverable
    )];
    if !st.lost.is_empty() {
        let bytes: u64 = st.lost.iter().map(|l| l.len).sum();
        lines.push(format!(
            "lost:        {} in {} ranges of the volume; reads of them fail:",
            units::human(bytes),
            st.lost.len()
        ));
        for l in st.lost.iter().take(LOST_SHOWN) {
            lines.push(format!("             offset {} length {}", l.offset, l.len));
        }
        if st.lost.len() > LOST_SHOWN {
            lines.push(format!(
                "             ... and {} more (status --json lists all)",
                st.lost.len() - LOST_SHOWN
            ));
        }
    }
    if !st.unreadable.is_empty() {
        let bytes: u64 = st.unreadable.iter().map(|l| l.len).sum();
        lines.push(format!(
            "unreadable:  {} in {} ranges of the array are on members that are gone; reads of them fail:",
            units::human(bytes),
            st.unreadable.len()
        ));
        for l in st.unreadable.iter().take(LOST_SHOWN) {
            lines.push(format!("             offset {} length {}", l.offset, l.len));
        }
        if st.unreadable.len() > LOST_SHOWN {
            lines.push(format!(
                "             ... and {} more (status --json lists all)",
                st.unreadable.len() - LOST_SHOWN
            ));
        }
    }
    lines
}

/// One or two lines after a command changed the array: its health, a running rebuild,
/// what it needs.
pub fn summary(st: &Status) -> String {
    let mut s = format!("array health: {}", health_text(st.health));
    if let Some(r) = st.rebuild.as_ref().filter(|r| r.running) {
        s += &format!("; rebuilding, {}", progress::line(&r.progress));
    }
    if let Some(r) = st.reshape.as_ref().filter(|r| r.running) {
        s += &format!(
            "; reshaping, {} ({} chunks to move)",
            progress::line(&r.progress),
            st.chunks_to_move
        );
    }
    if let Some(n) = &st.needs {
        s += &format!("\nneeds: {n}");
    }
    s
}

/// Seconds since the epoch as "2024-05-06 07:08:09 UTC".
pub fn utc(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let t = secs % 86400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        t / 3600,
        t % 3600 / 60,
        t % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }

    #[test]
    fn text_shows_failures_jobs_and_losses() {
        // As the server sends it: every field of the engine's Status, plus one it does
        // not know (ignored).
        let v = serde_json::json!({
            "name": "tank", "uuid": "u", "level": "raid5", "copies": 1,
            "stripe_unit": 65536, "size": 1048576, "chunk_size": 262144,
            "chunks_total": 4, "chunks_allocated": 2, "tolerance": 1, "generation": 9,
            "health": "degraded", "journal": "members", "checksums": true, "dirty": 0,
            "members": [
                {"index": 0, "state": "ok", "device": "/a", "uuid": "m0", "size": 1,
                 "generation": 9, "used": 0},
                {"index": 1, "state": "failed", "device": "/b", "uuid": "m1", "size": 1,
                 "generation": 9, "used": 0, "reason": "read on /b at offset 0: EIO"},
                {"index": 2, "state": "spare", "device": null, "uuid": "m2", "size": 1,
                 "generation": null, "used": 0}
            ],
            "chunks_degraded": 1,
            "rebuild": {"running": true, "done": 50, "total": 100, "rate": 10,
                        "eta_seconds": 5, "rate_limit": 0},
            "chunks_to_move": 7, "max_size": 1048576, "grow_after_reshape": false,
            "reshape": {"running": true, "done": 20, "total": 80, "rate": 10,
                        "eta_seconds": 6, "rate_limit": 10},
            "scrub": {"blocks_checked": 7, "repaired": 1, "unrecoverable": 0,
                      "last_finished": 1700000000},
            "errors": {"read_errors": 3, "write_errors": 0, "checksum_errors": 0,
                       "repaired": 0, "unrecoverable": 0},
            "lost": [{"offset": 4096, "len": 4096}],
            "unreadable": [{"offset": 8388608, "len": 4194304}],
            "needs": "a spare",
            "control_socket": "/run/damocles/u.sock",
            "notes": [],
            "some_future_field": 1
        });
        let st: Status = serde_json::from_value(v).unwrap();
        let t = text(&st);
        for want in [
            "health:      DEGRADED",
            "FAILED",
            "reason: read on /b",
            "spare",
            "rebuild:     running, 50% (50 B of 100 B, 10 B/s, ETA 5s)",
            "reshape:     running, 25% (20 B of 80 B, 10 B/s, limit 10 B/s, ETA 6s); 7 chunks to move",
            "last finished 2023-11-14 22:13:20 UTC: 7 blocks checked, 1 repaired",
            "errors:      3 read",
            "offset 4096 length 4096",
            "unreadable:  4.0 MiB in 1 ranges",
            "offset 8388608 length 4194304",
            "needs:       a spare",
            "control:     /run/damocles/u.sock",
        ] {
            assert!(t.contains(want), "{want:?} missing in\n{t}");
        }
    }
}
