//! `damocles convert`, `balance` and `plan`: reshapes, as jobs (see cmd/job.rs), with a
//! forecast first.

use crate::cmd::job::{run_job, JobArgs};
use crate::cmd::{member_spec, target, Target};
use crate::control::proto::{ChangeSpec, JobKind, Request};
use crate::control::server::{describe_forecast, to_change};
use crate::{members, units};
use anyhow::{bail, Context, Result};
use damocles_engine::{Array, Forecast, Level};

/// Change the RAID level (or copies, or stripe unit) while the array is in use.
///
/// Chunk by chunk: each chunk is written anew in the new layout, flushed, and only then
/// does the chunk map point at it, so the old layout stays intact until the new one is
/// durable and a power cut or restart loses nothing; a served array resumes the conversion
/// by itself. A change that lowers redundancy (raid5 -> raid0, raid1 -> single, raid6 -> raid5) needs
/// --force; one the members cannot hold, or that leaves no room to work in, is refused with
/// the reason. `damocles plan convert ...` (or --dry-run) shows what would happen.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  damocles plan convert --level raid5
  damocles convert --level raid5 --watch
  damocles convert --level raid6 d0.img d1.img d2.img d3.img d4.img   (not served)")]
pub struct ConvertArgs {
    /// The new level: single, raid0, raid1, raid5, raid6 or raid10.
    #[arg(long, short)]
    level: Level,
    /// Copies for raid1/raid10 (default: as now for the same level, else 2).
    #[arg(long)]
    copies: Option<usize>,
    /// New stripe unit (default: as now).
    #[arg(long, value_parser = units::parse_size)]
    stripe_unit: Option<u64>,
    /// Do not let hot spares join the new layout. By default a layout that needs more room
    /// than the members in service have takes the spares it needs (as mdadm --grow does),
    /// and the plan names them.
    #[arg(long)]
    no_spares: bool,
    /// The volume to convert (needed when the array holds several; the others' chunks
    /// stay where they are).
    #[arg(long, value_name = "NAME")]
    volume: Option<String>,
    #[command(flatten)]
    common: ReshapeArgs,
}

/// Spread the data evenly over the members, as wide as they allow.
///
/// After `add --grow` or mixed-size changes, re-lays every chunk that could be wider, so the
/// space holds as much data as a fresh array would. Also finishes a conversion or removal
/// under way. Resumable, like `convert`. With --grow the volume then grows to what the
/// members hold (as `damocles grow`).
#[derive(clap::Args)]
#[command(after_help = "Examples:
  damocles plan balance --grow
  damocles balance --watch
  damocles balance --grow d0.img d1.img d2.img d3.img   (not served)")]
pub struct BalanceArgs {
    /// When the data has moved, grow the volume to what the members then hold.
    #[arg(long)]
    grow: bool,
    #[command(flatten)]
    common: ReshapeArgs,
}

#[derive(clap::Args)]
pub struct ReshapeArgs {
    /// Allow a change that lowers redundancy.
    #[arg(long)]
    force: bool,
    /// Only show what would happen (as `damocles plan`).
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    job: JobArgs,
}

/// Show what a change would do, without doing it.
///
/// Usable capacity and tolerance before and after, how many chunks move and how much data
/// is read and written, the least time it takes at the rate limit, warnings, and whether
/// the change would be refused and why. The figures come from the same planner the change
/// runs, so they are what it then does.
#[derive(clap::Subcommand)]
pub enum PlanArgs {
    /// Plan a level conversion (as `damocles convert`).
    Convert(ConvertArgs),
    /// Plan a balance (as `damocles balance`).
    Balance(BalanceArgs),
    /// Plan the removal of a member that holds data (as `damocles remove`).
    Remove(PlanRemoveArgs),
    /// Plan a volume: the raw space it takes at its level and what remains.
    #[command(subcommand)]
    Volume(PlanVolume),
    /// Plan a repair (as `damocles repair`): which superblock copies would be rewritten.
    Repair(crate::cmd::repair::Args),
}

#[derive(clap::Subcommand)]
pub enum PlanVolume {
    /// Plan `damocles volume create` (same arguments).
    Create(crate::cmd::volume::CreateArgs),
}

#[derive(clap::Args)]
pub struct PlanRemoveArgs {
    /// The member: its index, device path or member UUID.
    #[arg(value_name = "MEMBER")]
    member: String,
    #[command(flatten)]
    job: JobArgs,
}

pub fn convert(a: ConvertArgs) -> Result<()> {
    let spec = ChangeSpec {
        level: Some(a.level.to_string()),
        copies: a.copies,
        stripe_unit: a.stripe_unit,
        no_spares: a.no_spares,
        volume: a.volume.clone(),
        ..Default::default()
    };
    let what = match &a.volume {
        Some(v) => format!("convert --volume {v} --level {}", a.level),
        None => format!("convert --level {}", a.level),
    };
    reshape(&what, spec, a.common)
}

pub fn balance(a: BalanceArgs) -> Result<()> {
    let spec = ChangeSpec {
        balance: true,
        grow: a.grow,
        ..Default::default()
    };
    reshape(
        if a.grow { "balance --grow" } else { "balance" },
        spec,
        a.common,
    )
}

pub fn plan(p: PlanArgs) -> Result<()> {
    match p {
        PlanArgs::Convert(mut a) => {
            a.common.dry_run = true;
            convert(a)
        }
        PlanArgs::Balance(mut a) => {
            a.common.dry_run = true;
            balance(a)
        }
        PlanArgs::Volume(PlanVolume::Create(a)) => crate::cmd::volume::create(a, true),
        PlanArgs::Repair(a) => crate::cmd::repair::run(a, true),
        PlanArgs::Remove(a) => {
            let spec = ChangeSpec {
                remove: vec![member_spec(&a.member)?],
                ..Default::default()
            };
            reshape(
                "plan remove",
                spec,
                ReshapeArgs {
                    force: false,
                    dry_run: true,
                    job: a.job,
                },
            )
        }
    }
}

/// `command`: what the user typed after `damocles` (for messages).
fn reshape(command: &str, spec: ChangeSpec, a: ReshapeArgs) -> Result<()> {
    let rate = a.job.rate;
    if a.dry_run {
        let usage = "damocles plan ... MEMBER...";
        let f: Forecast = match target(a.job.array.as_deref(), a.job.members, usage)? {
            Target::Served(mut c) => {
                let r = c.call(&Request::Reshape {
                    change: spec,
                    force: a.force,
                    dry_run: true,
                    rate,
                })?;
                serde_json::from_value(r.forecast.context("the server sent no forecast")?)?
            }
            Target::Members(paths) => {
                let array = members::assemble(&paths, true)?;
                array.forecast(&to_change(&array, &spec)?)?
            }
        };
        println!(
            "{}",
            describe_forecast(&f, rate.unwrap_or(damocles_engine::DEFAULT_RATE))
        );
        if !f.refusals.is_empty() {
            bail!("this change would be refused");
        }
        return Ok(());
    }
    let start = Request::Reshape {
        change: spec.clone(),
        force: a.force,
        dry_run: false,
        rate,
    };
    let force = a.force;
    let prepare = move |array: &Array| -> Result<()> {
        let f = array.start_reshape(&to_change(array, &spec)?, force)?;
        println!("{}", describe_forecast(&f, rate.unwrap_or(0)));
        Ok(())
    };
    run_job(JobKind::Reshape, command, a.job, start, &prepare)
}
