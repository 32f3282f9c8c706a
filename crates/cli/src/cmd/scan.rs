//! `damocles scan`: which damocles members are where, by array, and whether each array
//! can be assembled.

use crate::scan::{self, ScannedArray};
use anyhow::Result;
use std::path::PathBuf;

/// Find damocles members on block devices and in files, grouped by array.
///
/// Without PATH, every block device of the machine (partitions too) is read. A PATH is a
/// file, a block device, a directory (searched 4 levels deep) or a glob pattern. Only
/// labels are read; nothing is written and no array is assembled.
///
/// For each array: its name, UUID, level and newest generation; each member's path,
/// generation and state (ok, missing, stale: recorded faulty so it missed writes,
/// older-generation, spare, removed), and whether it can be assembled: complete,
/// degraded, or not (more members missing than the level tolerates). Members found twice,
/// labels the member table does not know (split or leftover members) and two arrays with
/// one name are pointed out.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  damocles scan
  damocles scan /srv/disks
  damocles scan --json '/srv/disks/tank-*.img' /dev/sdb1")]
pub struct Args {
    /// Files, block devices, directories or glob patterns to search (default: every block
    /// device).
    #[arg(value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Print the arrays as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let paths = if a.paths.is_empty() {
        scan::block_devices()
    } else {
        a.paths
    };
    let arrays = scan::group(&scan::probe(&scan::candidates(&paths)));
    if a.json {
        println!("{}", serde_json::to_string_pretty(&arrays)?);
        return Ok(());
    }
    if arrays.is_empty() {
        println!("no damocles members found");
        return Ok(());
    }
    for (i, arr) in arrays.iter().enumerate() {
        if i > 0 {
            println!();
        }
        print!("{}", describe(arr));
    }
    Ok(())
}

/// The array and its members as text (what `scan` and `config check` print).
pub fn describe(a: &ScannedArray) -> String {
    let mut s = format!(
        "array {}: {}, generation {}, {}\n",
        a.label(),
        a.level,
        a.generation,
        a.verdict
    );
    for m in &a.members {
        let at = m
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "-".into());
        let generation = m
            .generation
            .map(|g| format!("generation {g}"))
            .unwrap_or_default();
        s += &format!(
            "  member {:<2} {:<16} {at} {generation}\n",
            m.index, m.state
        );
    }
    for n in &a.notes {
        s += &format!("  note: {n}\n");
    }
    s
}
