//! `damocles volume create|list|resize|delete|rename` and `damocles plan volume create`:
//! the volumes of an array, on a served array through its control socket or on members
//! given after `--`.

use crate::cmd::{target, Target, Which};
use crate::control::proto::{Request, Response, VolumeOp};
use crate::control::server::apply;
use crate::{members, units};
use anyhow::{bail, Context, Result};
use damocles_engine::{Level, VolumeForecast, VolumeStatus};

/// Volumes: several virtual disks on one array, each with its own level and size.
///
/// Every volume is its own NBD export, named after it. All volumes share the members'
/// free space: a volume reserves the raw space its size needs at its level when it is
/// made (no overcommit), unless it is --thin (it takes space as it is written; thin sizes
/// may add up to more than the array, and a thin volume that finds no room gets ENOSPC
/// while reserved volumes keep theirs).
#[derive(clap::Subcommand)]
pub enum VolumeCmd {
    Create(CreateArgs),
    List(ListArgs),
    Resize(ResizeArgs),
    Delete(DeleteArgs),
    Rename(RenameArgs),
}

/// Make a volume.
///
/// Refused, with the numbers, when a reserved volume does not fit beside what the others
/// hold and were promised. A volume made while the array is served is exported at once.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  damocles volume create vms --level raid5 --size 2T
  damocles volume create media --level single --size max --array tank
  damocles volume create scratch --level raid0 --size 500G --thin
  damocles plan volume create vms --level raid6 --size 1T
  damocles volume create vms --level raid1 --size 10G -- d0.img d1.img   (not served)")]
pub struct CreateArgs {
    /// The volume's name: 1–64 characters of letters, digits, '.', '_' and '-'.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// single, raid0, raid1, raid5, raid6 or raid10 (single: each chunk whole on one
    /// member, no redundancy; a lost member loses only the chunks on it).
    #[arg(long, short)]
    pub level: Level,
    /// Copies for raid1/raid10 (default 2).
    #[arg(long)]
    pub copies: Option<usize>,
    /// Stripe unit (default 64K).
    #[arg(long, value_parser = units::parse_size)]
    pub stripe_unit: Option<u64>,
    /// The size (suffixes K, M, G, T), or `max`: all the free space allows at this level.
    #[arg(long, value_parser = parse_size_or_max, value_name = "SIZE|max")]
    pub size: SizeArg,
    /// Reserve nothing: take space as it is written.
    #[arg(long)]
    pub thin: bool,
    #[command(flatten)]
    pub which: Which,
}

/// List the volumes: name, level, size, allocated, tolerance, health, thin or reserved.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  damocles volume list
  damocles volume list --json --array tank
  damocles volume list -- d0.img d1.img d2.img   (not served)")]
pub struct ListArgs {
    /// Print JSON (an array of volumes).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    which: Which,
}

/// Grow a volume (or shrink it, with --force).
///
/// Growing takes free space (reserving it unless the volume is thin); clients see the new
/// size when they connect again. Shrinking frees the chunks past the new end: their data
/// is gone, and a filesystem on the volume would lose its end — hence --force.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  damocles volume resize vms --size 3T
  damocles volume resize media --size max
  damocles volume resize scratch --size 100G --force")]
pub struct ResizeArgs {
    #[arg(value_name = "NAME")]
    name: String,
    /// The new size (suffixes K, M, G, T), or `max`.
    #[arg(long, value_parser = parse_size_or_max, value_name = "SIZE|max")]
    size: SizeArg,
    /// Allow a smaller size (the data past it is lost).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    which: Which,
}

/// Delete a volume and free its space (its data is gone).
///
/// Needs --force. Refused while an NBD client is connected to it, and while a rebuild or
/// reshape is moving chunks.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  damocles volume delete scratch --force")]
pub struct DeleteArgs {
    #[arg(value_name = "NAME")]
    name: String,
    /// Really delete it.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    which: Which,
}

/// Rename a volume (its export is renamed with it; refused while an NBD client is
/// connected to it).
#[derive(clap::Args)]
#[command(after_help = "Examples:
  damocles volume rename media movies")]
pub struct RenameArgs {
    #[arg(value_name = "OLD")]
    old: String,
    #[arg(value_name = "NEW")]
    new: String,
    #[command(flatten)]
    which: Which,
}

/// A size, or `max`.
#[derive(Clone, Copy, Debug)]
pub struct SizeArg(pub Option<u64>);

fn parse_size_or_max(s: &str) -> Result<SizeArg, String> {
    if s.eq_ignore_ascii_case("max") {
        return Ok(SizeArg(None));
    }
    units::parse_size(s).map(|n| SizeArg(Some(n)))
}

pub fn run(c: VolumeCmd) -> Result<()> {
    match c {
        VolumeCmd::Create(a) => create(a, false),
        VolumeCmd::List(a) => list(a),
        VolumeCmd::Resize(a) => {
            let op = VolumeOp::Resize {
                name: a.name,
                size: a.size.0,
                force: a.force,
            };
            let r = call(a.which, op)?;
            println!("{}", r.message.unwrap_or_default());
            Ok(())
        }
        VolumeCmd::Delete(a) => {
            if !a.force {
                bail!(
                    "deleting volume {:?} destroys its data: add --force to do it",
                    a.name
                );
            }
            let op = VolumeOp::Delete {
                name: a.name,
                force: true,
            };
            let r = call(a.which, op)?;
            println!("{}", r.message.unwrap_or_default());
            Ok(())
        }
        VolumeCmd::Rename(a) => {
            let op = VolumeOp::Rename {
                old: a.old,
                new: a.new,
            };
            let r = call(a.which, op)?;
            println!("{}", r.message.unwrap_or_default());
            Ok(())
        }
    }
}

/// `volume create`, or with `dry_run` `plan volume create`.
pub fn create(a: CreateArgs, dry_run: bool) -> Result<()> {
    let op = VolumeOp::Create {
        name: a.name,
        level: a.level.to_string(),
        copies: a.copies,
        stripe_unit: a.stripe_unit,
        size: a.size.0,
        thin: a.thin,
        dry_run,
    };
    let r = call(a.which, op)?;
    let f = r
        .volume
        .context("the server sent no answer to volume create")?;
    println!("{}", describe(&f));
    if let Some(why) = f.refusals.first() {
        bail!("the volume would be refused: {why}");
    }
    if dry_run {
        println!("(plan: nothing changed)");
    } else if let Some(m) = r.message {
        println!("{m}");
    }
    Ok(())
}

fn list(a: ListArgs) -> Result<()> {
    let r = call(a.which, VolumeOp::List {})?;
    let vols = r.volumes.unwrap_or_default();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&vols)?);
    } else {
        print!("{}", table(&vols));
    }
    Ok(())
}

/// Sends `op` to the served array, or applies it to the members given (assembled
/// read-only for a list or a plan).
fn call(which: Which, op: VolumeOp) -> Result<Response> {
    let read_only = matches!(
        op,
        VolumeOp::List {} | VolumeOp::Create { dry_run: true, .. }
    );
    let req = Request::Volume { op };
    let usage = "damocles volume ... -- MEMBER...";
    let r = match target(which.array.as_deref(), which.members, usage)? {
        Target::Served(mut c) => c.call(&req)?,
        Target::Members(paths) => {
            let array = members::assemble(&paths, read_only)?;
            apply(&array, req)?
        }
    };
    Ok(r)
}

pub fn describe(f: &VolumeForecast) -> String {
    format!(
        "volume        {} ({} bytes, {} chunks){}\nraw space     {} {}; free {} now, {} after",
        f.name,
        f.size,
        f.chunks,
        if f.thin { ", thin" } else { "" },
        units::human(f.raw_needed),
        if f.thin {
            "reserved (thin: space is taken as it is written)"
        } else {
            "reserved at its level"
        },
        units::human(f.free_before),
        units::human(f.free_after),
    )
}

/// The text table of `volume list` and `status`.
pub fn table(vols: &[VolumeStatus]) -> String {
    if vols.is_empty() {
        return "no volumes (damocles volume create NAME --level L --size SIZE)\n".to_string();
    }
    let mut s = format!(
        "{:<20} {:<7} {:>10} {:>10} {:>9} {:<9} {}\n",
        "NAME", "LEVEL", "SIZE", "ALLOCATED", "TOLERANCE", "HEALTH", "SPACE"
    );
    for v in vols {
        s += &format!(
            "{:<20} {:<7} {:>10} {:>10} {:>9} {:<9} {}\n",
            v.name,
            v.level.to_string(),
            units::human(v.size),
            units::human(v.allocated),
            v.tolerance,
            v.health,
            if v.thin { "thin" } else { "reserved" }
        );
    }
    s
}
