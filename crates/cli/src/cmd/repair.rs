//! `damocles repair --labels` and `damocles plan repair --labels`: a member's superblock
//! copies checked and the damaged ones rewritten, on a served array through its control
//! socket or on members given after `--`.

use crate::cmd::{target, Target, Which};
use crate::control::proto::Request;
use crate::members;
use anyhow::{bail, Context, Result};
use damocles_engine::{repair_labels, LabelRepair, OpenMode};

/// Repair what identifies the members: their superblock copies.
///
/// Each member has four superblock copies: A and B in its first 8 KiB, C and D 128 KiB
/// before its end (clear of the last 64 KiB, where a GPT keeps its backup). An installer,
/// `mkfs` or a partition tool that overwrites a member's first MiB destroys A and B; the
/// array still assembles, finding the member by C and D, and `status` says its front
/// labels are damaged. `repair --labels` rewrites every copy that is damaged, missing or
/// older from the newest valid copy of the same member; nothing else is written.
///
/// A device none of whose copies is valid is refused, and so, without --force, is one
/// whose first MiB now holds something known (a filesystem, a partition table): both
/// before anything is written. `damocles plan repair --labels` shows what would be
/// rewritten and writes nothing.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  damocles plan repair --labels
  damocles repair --labels --array tank
  damocles repair --labels -- /dev/sdb /dev/sdc /dev/sdd /dev/sde   (not served)")]
pub struct Args {
    /// Check and rewrite the members' superblock copies (the only repair so far).
    #[arg(long, required = true)]
    pub labels: bool,
    /// Also overwrite a filesystem or partition table found over a member's front copies.
    #[arg(long)]
    pub force: bool,
    /// Print what was found and done as JSON (one entry per device).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub which: Which,
}

pub fn run(a: Args, dry_run: bool) -> Result<()> {
    let usage = "damocles repair --labels -- MEMBER...";
    let found = match target(a.which.array.as_deref(), a.which.members, usage)? {
        Target::Served(mut c) => {
            let req = Request::RepairLabels {
                dry_run,
                force: a.force,
            };
            c.call(&req)?
                .labels
                .context("the server sent no answer to repair --labels")?
        }
        Target::Members(paths) => {
            let mode = if dry_run {
                OpenMode::ReadOnly
            } else {
                OpenMode::ReadWrite
            };
            let devs = members::open(&paths, mode)?;
            repair_labels(&devs, dry_run, a.force)?
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&found)?);
    } else {
        print!("{}", describe(&found, dry_run));
    }
    if dry_run {
        if let Some(r) = found.iter().find(|r| r.front_holds.is_some() && !a.force) {
            bail!(
                "{}: its front holds {} now; `repair --labels` would refuse without --force",
                r.device,
                r.front_holds.as_deref().unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// Per device: which copies are fine, which are (or would be) rewritten.
pub fn describe(found: &[LabelRepair], dry_run: bool) -> String {
    let mut out = String::new();
    for r in found {
        let who = match r.member_index {
            Some(i) => format!("member {i}"),
            None => "journal device".to_string(),
        };
        out += &format!("{} ({who} of array {}):\n", r.device, r.array_uuid);
        for c in &r.copies {
            let what = match (c.rewrite, dry_run || !r.written) {
                (false, _) => "",
                (true, true) => " -> would be rewritten",
                (true, false) => " -> rewritten",
            };
            out += &format!("  copy {} at {:>12}: {}{what}\n", c.copy, c.offset, c.state);
        }
        if !r.tail_copies {
            out += "  (an older superblock without copies near the end)\n";
        }
        if let Some(what) = &r.front_holds {
            out += &format!("  its first MiB holds {what} now\n");
        }
    }
    let n: usize = found.iter().map(|r| r.rewrites().count()).sum();
    out += &match (n, dry_run) {
        (0, _) => "every superblock copy is valid: nothing to repair\n".to_string(),
        (n, true) => format!("{n} superblock copies would be rewritten (nothing written)\n"),
        (n, false) => format!("{n} superblock copies rewritten\n"),
    };
    out
}
