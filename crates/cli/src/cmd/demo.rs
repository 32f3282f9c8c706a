//! `damocles demo`: a raid5 of four sparse files, served on loopback.

use crate::cmd::serve::{serve, ServeOpts};
use crate::members;
use anyhow::{bail, Context, Result};
use damocles_engine::{Array, CreateOptions, Level, OpenMode, Template, VolumeSize, VolumeSpec};
use std::path::PathBuf;
use std::sync::Arc;

const MEMBERS: usize = 4;

/// Serve a demo array over four sparse files (created on first run, reused after): volume
/// `vms` (raid5) and volume `media` (single: no redundancy), each its own NBD export.
///
/// Needs no disks: the members are sparse files in --dir, so they take almost no space until
/// written. Prints how to attach the disk with qemu, nbd-client and nbdfuse. Ctrl-C stops it.
#[derive(clap::Args)]
pub struct Args {
    /// Directory holding the member files.
    #[arg(long, default_value = "demo-array")]
    dir: PathBuf,
    /// Size of each member file when creating them (sparse).
    #[arg(long, default_value = "1G", value_parser = crate::units::parse_size)]
    member_size: u64,
    #[command(flatten)]
    serve: ServeOpts,
}

pub fn run(a: Args) -> Result<()> {
    let paths: Vec<PathBuf> = (0..MEMBERS)
        .map(|i| a.dir.join(format!("member{i}.img")))
        .collect();
    let present = paths.iter().filter(|p| p.exists()).count();
    let array = if present == 0 {
        std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
        for p in &paths {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(p)
                .with_context(|| format!("creating {}", p.display()))?;
            f.set_len(a.member_size)
                .with_context(|| format!("sizing {}", p.display()))?;
        }
        let devs = members::open_with(&paths, OpenMode::ReadWrite, a.serve.direct_io())?;
        let mut o = CreateOptions::new(Level::Raid5);
        o.name = "demo".into();
        o.no_volume = true;
        let array = Array::create(devs, &o)?;
        // The seed's layout: redundancy for the virtual machines, none for the media.
        let volume = |name: &str, level: Level, size: VolumeSize| VolumeSpec {
            name: name.into(),
            template: Template {
                level,
                copies: level.default_copies(),
                stripe_unit: damocles_engine::DEFAULT_STRIPE_UNIT,
            },
            size,
            thin: false,
        };
        array.create_volume(&volume(
            "vms",
            Level::Raid5,
            VolumeSize::Bytes(2 * a.member_size),
        ))?;
        array.create_volume(&volume("media", Level::Single, VolumeSize::Max))?;
        println!(
            "created a demo array on 4 sparse files in {}: volume vms (raid5) and volume media (single)",
            a.dir.display()
        );
        array
    } else {
        if present < MEMBERS - 1 {
            bail!(
                "{} holds only {present} of the {MEMBERS} demo members; move it away to start afresh",
                a.dir.display()
            );
        }
        let have: Vec<PathBuf> = paths.into_iter().filter(|p| p.exists()).collect();
        println!("reusing the demo array in {}", a.dir.display());
        members::assemble_opts(
            &have,
            damocles_engine::AssembleOptions {
                read_only: a.serve.read_only,
                dirty_budget: a.serve.dirty_budget,
                ..Default::default()
            },
            a.serve.direct_io(),
        )?
    };
    serve(Arc::new(array), &a.serve, |uri| {
        println!();
        println!("Attach it with any NBD client, for example:");
        println!("  nbdinfo {uri}");
        println!("  qemu-system-x86_64 ... -drive file={uri},format=raw,if=virtio");
        println!("  qemu-img info {uri}");
        println!("  nbdfuse /tmp/damocles-mnt {uri} &   # then /tmp/damocles-mnt/nbd is a file");
        if let Some((hostport, export)) = uri.strip_prefix("nbd://").and_then(|r| r.split_once('/'))
        {
            let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, "10809"));
            println!(
                "  nbd-client {host} {port} /dev/nbd0 -N {export}   # needs the nbd kernel module"
            );
        }
        println!(
            "See degraded mode and a rebuild: `damocles fail 1`, `damocles status`, then \
             `truncate -s {} spare.img && damocles add spare.img`.",
            a.member_size
        );
        println!("Press Ctrl-C to stop.");
    })
}
