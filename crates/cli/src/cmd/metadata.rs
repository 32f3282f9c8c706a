//! `damocles metadata export` and `import`: a copy of the array metadata in a file, and
//! putting it back. The engine's `backup` module does the work; this parses and prints.

use crate::cmd::status::utc;
use crate::{members, units};
use anyhow::Result;
use damocles_engine::backup::{self, Backup, ImportPlan};
use damocles_engine::MemberState;
use damocles_engine::{Dev, OpenMode};
use std::path::PathBuf;

/// Save the array metadata to a file, or put a saved copy back.
#[derive(clap::Subcommand)]
pub enum Metadata {
    Export(ExportArgs),
    Import(ImportArgs),
}

/// Save the array's newest metadata (member table and chunk map) to FILE.
///
/// Reads the members and changes nothing. FILE holds a small header (array UUID,
/// generation, CRC-32C) and the metadata exactly as the members hold it: the member table,
/// the chunk map (where every chunk's slices are), scrub progress and lost ranges; no data.
/// Keep one before a risky operation; `damocles metadata import` puts it back. The array
/// must not be served: stop `damocles serve` first.
///
/// The file is written crash-safely: into a temporary file in FILE's directory, synced,
/// then renamed to FILE and the directory synced, so FILE never holds a part of a backup
/// (with --force, a crash leaves the old file or the new one).
#[derive(clap::Args)]
#[command(after_help = "Examples:
  damocles metadata export tank.meta -- d0.img d1.img d2.img d3.img
  damocles metadata export --json tank.meta -- /dev/sdb /dev/sdc /dev/sdd")]
pub struct ExportArgs {
    /// The file to write (refused if it exists, unless --force).
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Replace FILE if it exists (a regular file only; the new file is renamed over it).
    #[arg(long)]
    force: bool,
    /// Print what was saved as JSON (name, level, members with UUID, state and size, chunk
    /// counts) instead of one line of text.
    #[arg(long)]
    json: bool,
    /// The array's members, after `--` (a member left out is fine: the newest metadata
    /// of those given is saved).
    #[arg(last = true, required = true, value_name = "MEMBER")]
    members: Vec<PathBuf>,
}

/// Put metadata saved by `damocles metadata export` back on the members.
///
/// Checks FILE (format, checksum, that it is this array's), checks every member given
/// against it, shows what would change (generation, member states, chunks allocated,
/// chunks whose slices differ) and writes it as a new generation, one metadata slot per
/// member and a flush, as every commit does: a crash leaves either the old or the imported
/// metadata. Only the metadata slots of the members given are written, never data.
///
/// A device that is not the member the backup records under its index (another array's,
/// one that joined after the export, a journal device the backup does not record, one
/// smaller than recorded) or a member given twice is refused, with or without --force;
/// nothing is written then.
///
/// Refused without --force when a member the backup has active or spare is not given (the
/// import would not reach it), or when it rolls the array back: chunks allocated since the
/// export would be forgotten or point at the places they had then, or a member out of
/// service now would be trusted again. Writes made since the export can be lost that way
/// (overwrites of chunks the file has are kept: they are in place). With --force and
/// members left out, only the members given are written; those left out keep their
/// metadata, and the imported state for them applies when they are listed again (unless
/// one of them holds a newer generation, which then wins). The array must not be served.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  damocles metadata import --dry-run tank.meta -- d0.img d1.img d2.img d3.img
  damocles metadata import tank.meta -- d0.img d1.img d2.img d3.img")]
pub struct ImportArgs {
    /// A file written by `damocles metadata export`.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Import even if it rolls the array back (can lose writes made since the export), or
    /// with members the backup has in service left out (only those given are written).
    #[arg(long)]
    force: bool,
    /// Only show what would change; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// The array's members, after `--`: every member FILE has active or spare, each once
    /// (leaving one out needs --force; members FILE has faulty or removed may be left out).
    #[arg(last = true, required = true, value_name = "MEMBER")]
    members: Vec<PathBuf>,
}

pub fn run(m: Metadata) -> Result<()> {
    match m {
        Metadata::Export(a) => export(a),
        Metadata::Import(a) => import(a),
    }
}

/// Opens the members; a lock held by a server becomes advice to stop it.
fn open(paths: &[PathBuf], mode: OpenMode) -> Result<Vec<Dev>> {
    members::open(paths, mode).map_err(|e| {
        let busy = e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::ResourceBusy)
        });
        if busy {
            e.context(
                "the array is served (its members are locked): stop `damocles serve`, then \
                 run this again",
            )
        } else {
            e
        }
    })
}

fn export(a: ExportArgs) -> Result<()> {
    let devs = open(&a.members, OpenMode::ReadOnly)?;
    let b = backup::export(&devs)?;
    b.save(&a.file, a.force)?;
    let s = b.summary();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!(
            "saved generation {} of array {} ({}{}, {} members, {} of {} chunks allocated) to {}",
            s.generation,
            s.array_uuid,
            if s.name.is_empty() {
                String::new()
            } else {
                format!("'{}', ", s.name)
            },
            s.level,
            s.members.len(),
            s.chunks_allocated,
            s.chunks_total,
            a.file.display()
        );
    }
    Ok(())
}

fn import(a: ImportArgs) -> Result<()> {
    let b = Backup::load(&a.file)?;
    let mode = if a.dry_run {
        OpenMode::ReadOnly
    } else {
        OpenMode::ReadWrite
    };
    let devs = open(&a.members, mode)?;
    let plan = backup::plan_import(&devs, &b)?;
    print!("{}", plan_text(&plan, &b));
    if a.dry_run {
        if let Some(why) = plan.refusal() {
            println!("needs --force: {why}");
        }
        println!("dry run: nothing written");
        return Ok(());
    }
    plan.apply(a.force)?;
    let written: Vec<String> = plan
        .written
        .iter()
        .map(|&i| plan.members[i].device.clone().unwrap_or_default())
        .collect();
    println!(
        "imported: generation {} written to {} ({})",
        plan.new_generation,
        if written.len() == 1 {
            "1 member".to_string()
        } else {
            format!("{} members", written.len())
        },
        written.join(", ")
    );
    Ok(())
}

fn state(s: Option<MemberState>) -> &'static str {
    s.map_or("-", MemberState::name)
}

fn chunks(n: usize) -> String {
    format!("{n} chunk{}", if n == 1 { "" } else { "s" })
}

/// Up to ten chunk indexes, then how many more.
fn chunk_list(v: &[usize]) -> String {
    let mut s: Vec<String> = v.iter().take(10).map(usize::to_string).collect();
    if v.len() > 10 {
        s.push(format!("and {} more", v.len() - 10));
    }
    s.join(", ")
}

fn plan_text(p: &ImportPlan, b: &Backup) -> String {
    let m = &b.meta;
    let mut o = String::new();
    let mut line = |s: String| {
        o.push_str(&s);
        o.push('\n');
    };
    line(format!(
        "backup:      generation {} of array {}{}, exported {}",
        p.file_generation,
        p.array_uuid,
        if m.name.is_empty() {
            String::new()
        } else {
            format!(" ('{}')", m.name)
        },
        utc(p.exported)
    ));
    line(format!(
        "             {}, {} of {} chunks of {} allocated",
        m.template.level,
        p.chunks_file,
        m.map.chunks.len(),
        units::human(m.map.chunk_size)
    ));
    line(match p.current_generation {
        Some(g) => format!(
            "generation:  members at {g}; import writes {}",
            p.new_generation
        ),
        None => format!(
            "generation:  no valid metadata on the members; import writes {}",
            p.new_generation
        ),
    });
    if let Some(n) = p.chunks_now {
        line(format!(
            "chunks:      {n} allocated now, {} after the import",
            p.chunks_file
        ));
    }
    line("members:".into());
    line(format!(
        "   #  {:<8} {:<8} {:<36}  device",
        "now", "backup", "uuid"
    ));
    for c in &p.members {
        let mark = if c.now != c.file && c.now.is_some() {
            "  (changes)"
        } else {
            ""
        };
        line(format!(
            "  {:>2}  {:<8} {:<8} {:<36}  {}{mark}",
            c.index,
            state(c.now),
            state(c.file),
            c.uuid.to_string(),
            c.device.as_deref().unwrap_or("-")
        ));
    }
    if !p.missing.is_empty() {
        line(format!(
            "MISSING:     members {:?} are in service in the backup but were not given: they would \
             keep their old metadata (needs --force)",
            p.missing
        ));
    }
    if !p.forgotten.is_empty() {
        line(format!(
            "ROLL BACK:   {} allocated since the export would be forgotten (read as zeros): {}",
            chunks(p.forgotten.len()),
            chunk_list(&p.forgotten)
        ));
    }
    if !p.moved.is_empty() {
        line(format!(
            "ROLL BACK:   {} would point at the slices they had at the export: {}",
            chunks(p.moved.len()),
            chunk_list(&p.moved)
        ));
    }
    if !p.revived.is_empty() {
        line(format!(
            "ROLL BACK:   members {:?} are out of service now but in service in the backup (they may have missed writes)",
            p.revived
        ));
    }
    if !p.restored.is_empty() {
        line(format!(
            "restored:    {} in the backup not allocated now: {}",
            chunks(p.restored.len()),
            chunk_list(&p.restored)
        ));
    }
    for n in &p.notes {
        line(format!("note: {n}"));
    }
    o
}
