//! Times a rebuild and a scrub of a raid5 over four page-cached file members, next to a
//! plain copy of one member file. `bench/rebuild-scrub.sh` drives it.
//!
//! Usage: rebuild_scrub DIR MEMBER_MIB

use damocles_engine::{Array, CreateOptions, Dev, FileMember, JobControl, Level, OpenMode};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

fn member(dir: &Path, name: &str, size: u64) -> Dev {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(size).unwrap();
    Arc::new(FileMember::open(&p, OpenMode::ReadWrite).unwrap())
}

/// CPU time this process has used so far (user + system), in seconds: fields 14 and 15
/// of /proc/self/stat, counted after the parenthesised name (0 where that is unreadable).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split(' ')
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    // Clock ticks: 100 per second on Linux.
    f.iter().sum::<f64>() / 100.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = Path::new(args.get(1).map(String::as_str).unwrap_or("/var/tmp"));
    let mib: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1024);
    let size = mib << 20;
    let devs: Vec<Dev> = (0..4)
        .map(|i| member(dir, &format!("m{i}"), size))
        .collect();
    let a = Array::create(devs, &CreateOptions::new(Level::Raid5)).unwrap();
    // Fill the whole volume with non-zero data, committed.
    let mut buf = vec![0u8; 8 << 20];
    let mut off = 0;
    while off < a.size() {
        let n = (buf.len() as u64).min(a.size() - off) as usize;
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = (i as u64 ^ off >> 12) as u8 | 1;
        }
        a.write_at(&buf[..n], off).unwrap();
        off += n as u64;
    }
    a.flush().unwrap();
    // Start from clean page cache state, like the copy it is compared with.
    let _ = std::process::Command::new("sync").status();

    let t = Instant::now();
    let r = a.scrub(Arc::new(JobControl::new(0))).unwrap();
    let scrub = t.elapsed().as_secs_f64();
    let raw: u64 = a.status().members.iter().map(|m| m.used).sum();
    println!(
        "scrub: {:.2} s for {} MiB of member data: {:.2} GB/s ({} blocks, {} repaired)",
        scrub,
        raw >> 20,
        raw as f64 / scrub / 1e9,
        r.blocks_checked,
        r.repaired
    );

    a.fail_member(3, "benchmark", false).unwrap();
    let spare = member(dir, "spare", size);
    a.add_member(spare, false).unwrap();
    let _ = std::process::Command::new("sync").status();
    let (t, cpu) = (Instant::now(), cpu_seconds());
    let r = a.rebuild(Arc::new(JobControl::new(0))).unwrap();
    // Durable like the copy below (which syncs).
    a.flush().unwrap();
    let rebuild = t.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    println!(
        "rebuild: {:.2} s for {} MiB ({} chunks), {:.2} s of CPU",
        rebuild,
        r.bytes >> 20,
        r.chunks_rebuilt,
        cpu
    );
    println!(
        "RESULT scrub_gbs={:.3} rebuild_s={:.3} rebuild_cpu_s={:.2}",
        raw as f64 / scrub / 1e9,
        rebuild,
        cpu
    );
}
