//! `damocles status`

use crate::{members, units};
use anyhow::Result;
use damocles_engine::{Health, MemberHealth};
use std::path::PathBuf;

/// Show an array's level, size, health and each member's state.
///
/// Opens the members read-only and changes nothing. Members left out are shown as missing;
/// a member that missed writes while it was away is shown as stale and is not used.
#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    #[arg(required = true, value_name = "MEMBER")]
    members: Vec<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let array = members::assemble(&a.members, true)?;
    let st = array.status();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&st)?);
        return Ok(());
    }
    let health = match st.health {
        Health::Ok => "ok",
        Health::Degraded => "DEGRADED",
        Health::Failed => "FAILED (data beyond redundancy is unreadable)",
    };
    println!(
        "name:        {}",
        if st.name.is_empty() { "-" } else { &st.name }
    );
    println!("uuid:        {}", st.uuid);
    println!(
        "level:       {}{} (stripe unit {})",
        st.level,
        if st.copies > 1 {
            format!(", {} copies", st.copies)
        } else {
            String::new()
        },
        units::human(st.stripe_unit)
    );
    println!("size:        {} ({} bytes)", units::human(st.size), st.size);
    println!(
        "allocated:   {} of {} chunks of {}",
        st.chunks_allocated,
        st.chunks_total,
        units::human(st.chunk_size)
    );
    println!("tolerance:   {} member failure(s)", st.tolerance);
    println!("generation:  {}", st.generation);
    println!("health:      {health}");
    match st.journal.as_str() {
        "none" => println!(
            "journal:     NONE (a power cut during a write can damage that stripe's parity)"
        ),
        "members" => println!("journal:     on the members"),
        j => println!("journal:     {j}"),
    }
    println!("members:");
    for m in &st.members {
        let state = match m.state {
            MemberHealth::Ok => "ok",
            MemberHealth::Missing => "missing",
            MemberHealth::Stale => "stale",
            MemberHealth::Failed => "FAILED",
            MemberHealth::Spare => "spare",
            MemberHealth::Replacing => "replacing",
            MemberHealth::Removed => "removed",
        };
        println!(
            "  {:>2}  {:<8} {:<10} {}  {}",
            m.index,
            state,
            units::human(m.size),
            m.uuid,
            m.device.as_deref().unwrap_or("-")
        );
    }
    for n in &st.notes {
        println!("note: {n}");
    }
    Ok(())
}
