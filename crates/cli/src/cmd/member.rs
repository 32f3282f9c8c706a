//! `damocles fail`, `remove`, `add` and `replace`: membership changes, on a served array
//! through its control socket or on members given after `--`.

use crate::cmd::status::summary;
use crate::cmd::{absolute, member_spec, target, Target, Which};
use crate::control::proto::Request;
use crate::control::server::apply;
use crate::members;
use anyhow::{Context, Result};
use damocles_engine::Status;
use std::path::PathBuf;

/// Mark a member failed: it is no longer read or written.
///
/// The metadata on the other members records it at once, so it is never trusted again. On
/// a served array a hot spare (if there is one) takes over and a rebuild starts by itself.
/// Refused when some data would have no copy left to read, unless --force.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  damocles fail /dev/sdb                      (the one served array)
  damocles fail --array tank 2
  damocles fail d1.img -- d0.img d1.img d2.img d3.img   (not served)")]
pub struct FailArgs {
    /// The member: its index (as `status` shows), device path or member UUID.
    #[arg(value_name = "MEMBER")]
    member: String,
    /// Fail it even if that leaves some data with no copy to read.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    which: Which,
}

/// Remove a member from the array.
///
/// A spare, a failed member or an empty member leaves at once (a failed member's data is
/// rebuilt from redundancy). A working member that holds data leaves after its data has
/// moved to the others, chunk by chunk (a reshape: resumable, with progress in `status`;
/// `damocles plan remove MEMBER` shows the moves first). Refused, with the numbers, when the
/// others cannot hold the volume at its redundancy.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  damocles remove 4
  damocles remove d1.img -- d0.img d1.img d2.img d3.img")]
pub struct RemoveArgs {
    /// The member: its index (as `status` shows), device path or member UUID.
    #[arg(value_name = "MEMBER")]
    member: String,
    #[command(flatten)]
    which: Which,
}

/// Add a device to the array as a hot spare, or with --grow as a member that holds data.
///
/// A spare takes over when a member fails; on a served array that is also the moment a
/// rebuild starts by itself, and adding a spare to a degraded served array starts one at
/// once. Refuses a device that holds a filesystem, partition table, damocles superblock or
/// any non-zero byte in its first MiB, unless --force.
///
/// For an array that is not served, list the new device with the members in later
/// commands, and run `damocles rebuild` (or serve the array) to rebuild onto it.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  damocles add /dev/sde
  damocles add d4.img -- d0.img d2.img d3.img")]
pub struct AddArgs {
    /// The new device (block device or file).
    #[arg(value_name = "DEVICE")]
    device: PathBuf,
    /// Use the device even if it holds data.
    #[arg(long)]
    force: bool,
    /// Join as an active member (not a spare) and balance the data over it: the array's
    /// chunks get wider, so more of the space holds data (see `damocles plan balance`);
    /// then the volume grows to what the members hold (as `damocles balance --grow`).
    #[arg(long)]
    grow: bool,
    #[command(flatten)]
    which: Which,
}

/// Replace member OLD by the new device NEW.
///
/// NEW joins the array and a rebuild copies OLD's data to it while OLD stays in service
/// (blocks OLD cannot read are rebuilt from redundancy); then OLD leaves the array. On a
/// served array the copy starts at once; for one that is not served, run `damocles
/// rebuild` with NEW among the members.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  damocles replace /dev/sdb /dev/sde
  damocles replace d1.img d4.img -- d0.img d1.img d2.img d3.img")]
pub struct ReplaceArgs {
    /// The member to replace: its index, device path or member UUID.
    #[arg(value_name = "OLD")]
    old: String,
    /// The new device.
    #[arg(value_name = "NEW")]
    new: PathBuf,
    /// Use NEW even if it holds data.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    which: Which,
}

pub fn fail(a: FailArgs) -> Result<()> {
    let usage = "damocles fail MEMBER -- ARRAY_MEMBER...";
    let served = Request::Fail {
        member: member_spec(&a.member)?,
        force: a.force,
    };
    let offline = Request::Fail {
        member: a.member,
        force: a.force,
    };
    run(a.which, usage, served, offline, None)
}

pub fn remove(a: RemoveArgs) -> Result<()> {
    let usage = "damocles remove MEMBER -- ARRAY_MEMBER...";
    let served = Request::Remove {
        member: member_spec(&a.member)?,
    };
    let offline = Request::Remove { member: a.member };
    run(a.which, usage, served, offline, None)
}

pub fn add(a: AddArgs) -> Result<()> {
    let usage = "damocles add DEVICE -- ARRAY_MEMBER...";
    let device = absolute(&a.device)?;
    let req = Request::Add {
        device,
        force: a.force,
        grow: a.grow,
    };
    run(a.which, usage, req.clone(), req, Some(a.device))
}

pub fn replace(a: ReplaceArgs) -> Result<()> {
    let usage = "damocles replace OLD NEW -- ARRAY_MEMBER...";
    let new = absolute(&a.new)?;
    let served = Request::Replace {
        old: member_spec(&a.old)?,
        new: new.clone(),
        force: a.force,
    };
    let offline = Request::Replace {
        old: a.old,
        new,
        force: a.force,
    };
    run(a.which, usage, served, offline, Some(a.new))
}

/// `new`: a device joining the array (offline, it must be listed from now on).
fn run(
    which: Which,
    usage: &str,
    served: Request,
    offline: Request,
    new: Option<PathBuf>,
) -> Result<()> {
    match target(which.array.as_deref(), which.members, usage)? {
        Target::Served(mut c) => {
            let r = c.call(&served)?;
            if let Some(m) = r.message {
                println!("{m}");
            }
            let st = c
                .call(&Request::Status {})?
                .status
                .context("the server sent no status")?;
            println!("{}", summary(&serde_json::from_value::<Status>(st)?));
        }
        Target::Members(paths) => {
            let array = members::assemble(&paths, false)?;
            let r = apply(&array, offline)?;
            if let Some(m) = r.message {
                println!("{m}");
            }
            let st = array.status();
            println!("{}", summary(&st));
            if let Some(n) = new {
                println!("from now on list {} with the members", n.display());
                let replacing = st.members.iter().any(|m| m.replaces.is_some());
                if st.chunks_degraded > 0 || replacing {
                    let mut all: Vec<String> =
                        paths.iter().map(|p| p.display().to_string()).collect();
                    all.push(n.display().to_string());
                    println!(
                        "to rebuild onto it: damocles rebuild {} (a served array does so by \
                         itself)",
                        all.join(" ")
                    );
                }
            }
        }
    }
    Ok(())
}
