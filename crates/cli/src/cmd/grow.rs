//! `damocles grow`: a larger volume, once the members hold more (bigger replacements,
//! added members).

use crate::cmd::{target, Target};
use crate::control::proto::Request;
use crate::control::server::apply;
use crate::{members, units};
use anyhow::{bail, Context, Result};
use damocles_engine::GrowForecast;
use std::path::PathBuf;

/// Grow the volume to what the members hold (or to --size).
///
/// The new space is added at the end of the virtual disk and reads as zeros; nothing is
/// moved or written but the metadata, so it takes a moment. The volume never shrinks.
/// Clients see the new size when they connect again (then grow the filesystem on it, e.g.
/// `resize2fs`). What the members hold depends on how the data is laid out: after members
/// were added or replaced by larger ones, `damocles balance --grow` first re-lays the data
/// as wide as the members allow and then grows. Refused while the array is degraded or a
/// reshape is under way.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  damocles grow --dry-run
  damocles grow
  damocles grow --size 3T --array tank
  damocles grow d0.img d1.img d2.img   (not served)")]
pub struct Args {
    /// The new volume size (suffixes K, M, G, T), rounded down to whole chunks. Default: all
    /// the members hold as the data is laid out now.
    #[arg(long, value_parser = units::parse_size)]
    size: Option<u64>,
    /// Only show what would happen.
    #[arg(long)]
    dry_run: bool,
    /// The served array: its name, UUID, or control socket path. Optional when only one
    /// array is served.
    #[arg(long, value_name = "NAME", conflicts_with = "members")]
    array: Option<String>,
    /// Members of an array that is not served.
    #[arg(value_name = "MEMBER")]
    members: Vec<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let req = Request::Grow {
        size: a.size,
        dry_run: a.dry_run,
    };
    let r = match target(a.array.as_deref(), a.members, "damocles grow MEMBER...")? {
        Target::Served(mut c) => c.call(&req)?,
        Target::Members(paths) => {
            let array = members::assemble(&paths, a.dry_run)?;
            apply(&array, req)?
        }
    };
    let f = r.grow.context("the server sent no answer to grow")?;
    println!("{}", describe(&f));
    if let Some(why) = f.refusals.first() {
        bail!("cannot grow: {why}");
    }
    if a.dry_run {
        println!("(dry run: nothing changed)");
    } else {
        println!(
            "grown to {} ({} bytes); clients see it when they connect again",
            units::human(f.size_after),
            f.size_after
        );
    }
    Ok(())
}

fn describe(f: &GrowForecast) -> String {
    let mut s = if f.refusals.is_empty() {
        format!(
            "volume        {} now, {} after\n",
            units::human(f.size),
            units::human(f.size_after)
        )
    } else {
        format!("volume        {}\n", units::human(f.size))
    };
    s += &format!(
        "members hold  {} as the data is laid out now",
        units::human(f.max_now)
    );
    if f.max_balanced > f.max_now {
        s += &format!(
            "; about {} after `damocles balance`",
            units::human(f.max_balanced)
        );
    }
    s
}
