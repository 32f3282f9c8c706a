//! `damocles config check`: what the daemon would assemble and serve with a config file,
//! worked out exactly as the daemon does (the daemon prints the same plan at start).

use crate::config::{self, ArrayConfig, Config, ExportConfig};
use crate::scan::{self, ScannedArray};
use crate::units;
use anyhow::Result;
use std::path::PathBuf;

/// The daemon's configuration file.
#[derive(clap::Subcommand)]
pub enum ConfigCmd {
    Check(CheckArgs),
}

/// Check a config file and print what `damocles daemon` would assemble and serve.
///
/// Parses FILE (unknown keys and bad values are refused with the file, line and what was
/// expected), searches for each array's members as the daemon does (reading labels only),
/// and prints each array with its members and whether it can be assembled, each export
/// with its addresses and TLS mode, the scrub schedules and the metrics address. Nothing
/// is written, assembled or served. Exits 1 when the file is refused or an array cannot be
/// assembled.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  damocles config check
  damocles config check ./damocles.toml")]
pub struct CheckArgs {
    /// The config file.
    #[arg(value_name = "FILE", default_value = config::DEFAULT_PATH)]
    file: PathBuf,
}

pub fn run(c: ConfigCmd) -> Result<()> {
    let ConfigCmd::Check(a) = c;
    let cfg = config::load(&a.file)?;
    let plan = plan(&cfg);
    print!("{}", plan.text(&cfg));
    let bad: Vec<&str> = plan
        .arrays
        .iter()
        .filter(|p| p.found.is_err())
        .map(|p| p.key.as_str())
        .collect();
    if !bad.is_empty() {
        anyhow::bail!("cannot be assembled: {}", bad.join(", "));
    }
    Ok(())
}

/// One configured array and what the search found for it.
pub struct ArrayPlan {
    /// Its name or UUID as the config gives it.
    pub key: String,
    pub found: Result<ScannedArray, String>,
}

pub struct Plan {
    pub arrays: Vec<ArrayPlan>,
}

/// Where to look for an array's members: its `members` (paths, globs), its `scan`, or
/// every block device.
pub fn search_paths(a: &ArrayConfig) -> Vec<PathBuf> {
    if !a.members.is_empty() {
        a.members.clone()
    } else if !a.scan.is_empty() {
        a.scan.clone()
    } else {
        scan::block_devices()
    }
}

/// Finds the members of the array `a` describes.
pub fn find_array(a: &ArrayConfig) -> Result<ScannedArray, String> {
    let paths = search_paths(a);
    let arrays = scan::group(&scan::probe(&scan::candidates(&paths)));
    let list = || {
        paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut pick: Vec<ScannedArray> = arrays
        .into_iter()
        .filter(|s| match (&a.uuid, &a.name) {
            (Some(u), _) => s.uuid.eq_ignore_ascii_case(u.get_ref()),
            (None, Some(n)) => s.name == *n.get_ref(),
            (None, None) => false,
        })
        .collect();
    match pick.len() {
        0 => Err(format!(
            "no members of array '{}' found in {}",
            a.key(),
            list()
        )),
        1 => {
            let s = pick.remove(0);
            if s.assemblable() {
                Ok(s)
            } else {
                Err(format!(
                    "array {}: {}",
                    s.label(),
                    s.notes.first().cloned().unwrap_or_default()
                ))
            }
        }
        n => Err(format!(
            "{n} arrays named '{}' found in {} ({}): set `uuid` to choose one",
            a.key(),
            list(),
            pick.iter()
                .map(|s| s.uuid.clone())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// What the daemon would assemble: each array's members as found now.
pub fn plan(cfg: &Config) -> Plan {
    Plan {
        arrays: cfg
            .array
            .iter()
            .map(|a| ArrayPlan {
                key: a.key().to_string(),
                found: find_array(a),
            })
            .collect(),
    }
}

/// An export in one line: name, array, addresses, TLS mode, read-only.
pub fn describe_export(e: &ExportConfig, array_key: &str) -> String {
    let addrs: Vec<String> = e.addrs().iter().map(|a| a.to_string()).collect();
    let tcp = e.tcp_addrs();
    let tls = format!("{:?}", e.tls_args().mode(&tcp)).to_lowercase();
    format!(
        "export '{}' of array '{array_key}' at {} (tls {tls}{}{})",
        e.name.as_deref().unwrap_or(array_key),
        addrs.join(", "),
        if e.tls_psk_file.is_some() {
            ", psk"
        } else {
            ""
        },
        if e.read_only { ", read-only" } else { "" },
    )
}

impl Plan {
    /// The plan as `config check` prints it and the daemon logs it.
    pub fn text(&self, cfg: &Config) -> String {
        let mut s = String::new();
        for (p, a) in self.arrays.iter().zip(&cfg.array) {
            match &p.found {
                Ok(found) => s += &scan_text(found),
                Err(e) => s += &format!("array '{}': NOT ASSEMBLED: {e}\n", p.key),
            }
            let st = a.settings(cfg);
            s += &format!(
                "  rebuild rate {}, scrub {}{}{}\n",
                rate(st.rebuild_rate.unwrap_or(damocles_engine::DEFAULT_RATE)),
                match st.scrub {
                    Some(d) => format!(
                        "every {} at {}",
                        every(d),
                        rate(st.scrub_rate.unwrap_or(damocles_engine::DEFAULT_RATE))
                    ),
                    None => "not scheduled".into(),
                },
                if a.read_only { ", read-only" } else { "" },
                st.on_event
                    .as_ref()
                    .map(|c| format!(", on_event: {c}"))
                    .unwrap_or_default()
            );
        }
        for e in &cfg.export {
            let key = cfg
                .array
                .iter()
                .find(|a| a.matches(e.array.get_ref()))
                .map(|a| a.key())
                .unwrap_or(e.array.get_ref());
            s += &describe_export(e, key);
            s.push('\n');
        }
        if let Some(m) = &cfg.metrics {
            s += &format!("metrics at http://{}/metrics\n", m.listen);
        }
        s
    }
}

fn scan_text(a: &ScannedArray) -> String {
    super::scan::describe(a)
}

fn rate(r: u64) -> String {
    if r == 0 {
        "unlimited".into()
    } else {
        format!("{}/s", units::human(r))
    }
}

fn every(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        86_400 => "day".into(),
        604_800 => "week".into(),
        2_592_000 => "30 days".into(),
        s if s % 86_400 == 0 => format!("{} days", s / 86_400),
        s if s % 3600 == 0 => format!("{} h", s / 3600),
        _ => format!("{} s", d.as_secs_f64()),
    }
}
