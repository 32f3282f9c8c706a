//! `damocles read` and `damocles write`: raw access to the virtual disk, no server needed.

use crate::{members, units};
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::path::PathBuf;

const PIECE: usize = 1 << 20;

/// Copy bytes of the virtual disk to standard output (works degraded).
///
/// The tool to pull data off an array without a server: leave out members that are
/// missing or broken and the rest is reconstructed from redundancy.
#[derive(clap::Args)]
pub struct ReadArgs {
    /// Where to start, in bytes (suffixes K, M, G, T).
    #[arg(long, default_value = "0", value_parser = units::parse_size)]
    offset: u64,
    /// How many bytes (default: to the end of the array).
    #[arg(long, value_parser = units::parse_size)]
    length: Option<u64>,
    /// The volume (default: the array's only volume).
    #[arg(long, value_name = "NAME")]
    volume: Option<String>,
    #[arg(required = true, value_name = "MEMBER")]
    members: Vec<PathBuf>,
}

/// Write standard input to the virtual disk at --offset, then flush.
#[derive(clap::Args)]
pub struct WriteArgs {
    /// Where to start, in bytes (suffixes K, M, G, T).
    #[arg(long, default_value = "0", value_parser = units::parse_size)]
    offset: u64,
    /// The volume (default: the array's only volume).
    #[arg(long, value_name = "NAME")]
    volume: Option<String>,
    #[arg(required = true, value_name = "MEMBER")]
    members: Vec<PathBuf>,
}

pub fn read(a: ReadArgs) -> Result<()> {
    let array = members::assemble(&a.members, true)?;
    let (id, size) = volume(&array, a.volume.as_deref())?;
    if a.offset > size {
        bail!(
            "offset {} is beyond the end of the volume ({size} bytes)",
            a.offset
        );
    }
    let len = a.length.unwrap_or(size - a.offset);
    if len > size - a.offset {
        bail!(
            "{} bytes from offset {} run past the end of the volume ({size} bytes)",
            len,
            a.offset
        );
    }
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; PIECE];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(PIECE as u64) as usize;
        let off = a.offset + done;
        array.volume_read(id, &mut buf[..n], off)?;
        match out.write_all(&buf[..n]) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            r => r.context("writing to standard output")?,
        }
        done += n as u64;
    }
    out.flush().ok();
    Ok(())
}

pub fn write(a: WriteArgs) -> Result<()> {
    let array = members::assemble(&a.members, false)?;
    let (id, size) = volume(&array, a.volume.as_deref())?;
    if a.offset > size {
        bail!(
            "offset {} is beyond the end of the volume ({size} bytes)",
            a.offset
        );
    }
    let mut input = std::io::stdin().lock();
    let mut buf = vec![0u8; PIECE];
    let mut off = a.offset;
    loop {
        let n = fill(&mut input, &mut buf)?;
        if n == 0 {
            break;
        }
        if off + n as u64 > size {
            let fits = (size - off) as usize;
            array.volume_write(id, &buf[..fits], off)?;
            array.flush()?;
            bail!(
                "input runs past the end of the volume: wrote {} bytes up to its end ({size} bytes), the rest was not written",
                off + fits as u64 - a.offset
            );
        }
        array.volume_write(id, &buf[..n], off)?;
        off += n as u64;
    }
    array.flush()?;
    eprintln!("wrote {} bytes at offset {}", off - a.offset, a.offset);
    Ok(())
}

/// Reads until `buf` is full or input ends.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("reading standard input"),
        }
    }
    Ok(n)
}

/// The volume named (or the only one): its id and size.
fn volume(array: &damocles_engine::Array, name: Option<&str>) -> Result<(u32, u64)> {
    let v = match name {
        Some(n) => array.volume_named(n)?,
        None => match array.volume_list().as_slice() {
            [v] => v.clone(),
            [] => bail!("the array has no volume"),
            vols => bail!(
                "the array holds several volumes ({}): name one with --volume",
                vols.iter()
                    .map(|v| v.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    };
    Ok((v.id, v.size))
}
