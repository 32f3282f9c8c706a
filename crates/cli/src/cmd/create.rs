//! `damocles create`

use crate::{members, units};
use anyhow::Result;
use damocles_engine::{Array, CreateOptions, Level, OpenMode};
use std::path::PathBuf;

/// Create a new array on MEMBER... (block devices or files).
///
/// Refuses any member that holds a damocles superblock, a filesystem or partition
/// signature, or any non-zero byte in its first MiB, unless --force. Nothing is written
/// until every member has been checked.
#[derive(clap::Args)]
pub struct Args {
    /// RAID level: single, raid0, raid1, raid5, raid6 or raid10. `single` puts each chunk
    /// whole on one member (the emptiest), no redundancy: every member's space counts, and
    /// losing a member loses only the chunks on it.
    #[arg(long, short)]
    level: Level,
    /// Bytes per member in each stripe (power of two, 4K to 16M).
    #[arg(long, default_value = "64K", value_parser = units::parse_size)]
    stripe_unit: u64,
    /// Copies of every block for raid1/raid10 (raid1 over N members with 2 copies
    /// gives half the total space, as btrfs raid1 does).
    #[arg(long)]
    copies: Option<usize>,
    /// Volume size (e.g. 500G), rounded down to whole chunks; default: all the members
    /// can hold. Room left free lets a rebuild without a spare restore redundancy on the
    /// other members (distributed rebuild).
    #[arg(long, value_parser = units::parse_size)]
    size: Option<u64>,
    /// A name for the array (at most 64 bytes).
    #[arg(long, default_value = "")]
    name: String,
    /// Overwrite members that are not empty.
    #[arg(long)]
    force: bool,
    /// Run without the write journal. Faster writes, weaker promise: a power cut during a
    /// write can leave that stripe's parity wrong (the RAID write hole), so a later member
    /// failure can return wrong data there. `status` says so.
    #[arg(long, conflicts_with = "journal")]
    no_journal: bool,
    /// Keep the write journal on this separate device (an SSD, say) instead of on the
    /// members. Give it in the member list of later commands (serve, status, ...); writing
    /// without it is refused, since it may hold the newest writes.
    #[arg(long, value_name = "DEVICE")]
    journal: Option<PathBuf>,
    /// Keep member files sparse instead of reserving their space. A sparse member's writes
    /// fail with ENOSPC when its filesystem fills up (the array keeps the member and the
    /// client gets ENOSPC), so only use this where the space is certain to be there.
    #[arg(long)]
    sparse: bool,
    /// Make the array with no volume yet (add them with `damocles volume create`); by
    /// default it holds one volume named after the array (`--name`, else "damocles") of the
    /// whole size.
    #[arg(long, conflicts_with = "size")]
    no_volume: bool,
    /// Members (at least 2; raid5 3, raid6 4, raid10 4).
    #[arg(required = true, value_name = "MEMBER")]
    members: Vec<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let mut paths = a.members.clone();
    if let Some(j) = &a.journal {
        paths.push(j.clone());
    }
    if !a.sparse {
        // Allocating changes no byte of the members: safe before `create` checks them, and
        // done before they are opened, so zeroing keeps the blocks (see FileMember).
        reserve(&paths)?;
    }
    let mut devs = members::open(&paths, OpenMode::ReadWrite)?;
    let journal_device = a.journal.as_ref().and_then(|_| devs.pop());
    let mut o = CreateOptions::new(a.level);
    o.copies = a.copies;
    o.stripe_unit = a.stripe_unit;
    o.name = a.name;
    o.size = a.size;
    o.force = a.force;
    o.journal = !a.no_journal;
    o.journal_device = journal_device;
    o.no_volume = a.no_volume;
    let array = Array::create(devs, &o)?;
    let st = array.status();
    let name = if st.name.is_empty() {
        String::new()
    } else {
        format!(" '{}'", st.name)
    };
    println!(
        "created {}{name} on {} members: usable {} ({} bytes), survives {} member failure{}",
        st.level,
        st.members.len(),
        units::human(st.size),
        st.size,
        st.tolerance,
        if st.tolerance == 1 { "" } else { "s" }
    );
    println!("uuid {}", st.uuid);
    match st.volumes.as_slice() {
        [] => println!("no volume yet: damocles volume create NAME --level L --size SIZE"),
        vols => {
            for v in vols {
                println!("volume {} ({}, {})", v.name, v.level, units::human(v.size));
            }
        }
    }
    if let Some(j) = &a.journal {
        println!(
            "journal on {}: list it with the members in every later command",
            j.display()
        );
    }
    if a.sparse {
        println!(
            "warning: member files kept sparse: a write finds no room if their filesystem fills up"
        );
    }
    if a.no_journal {
        println!(
            "warning: no write journal: a power cut during a write can damage that stripe's parity"
        );
    }
    Ok(())
}

/// Allocates the space of member files (block devices need nothing). A filesystem that
/// cannot allocate ahead (FUSE, some network filesystems) gets a warning.
fn reserve(paths: &[PathBuf]) -> Result<()> {
    for p in paths {
        let holes = damocles_engine::unallocated_bytes(p)?.unwrap_or(0);
        if holes == 0 {
            continue;
        }
        match damocles_engine::reserve_file(p) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => anyhow::bail!(
                "{}: its filesystem cannot hold it ({} more needed, {} free): free space \
                 there, or create with --sparse to accept ENOSPC when it fills; nothing was \
                 written",
                p.display(),
                units::human(holes),
                units::human(
                    damocles_engine::filesystem_free(p)
                        .ok()
                        .flatten()
                        .unwrap_or(0)
                )
            ),
            Err(e) => eprintln!(
                "warning: {}: cannot reserve its space ({e}); it stays sparse",
                p.display()
            ),
        }
    }
    Ok(())
}
