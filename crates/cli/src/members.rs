//! Turning MEMBER paths into opened member devices.

use anyhow::{bail, Context, Result};
use damocles_engine::{Array, AssembleOptions, Dev, FileMember, OpenMode};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;

/// Opens each path once; the same file or device named twice is an error.
pub fn open(paths: &[PathBuf], mode: OpenMode) -> Result<Vec<Dev>> {
    let mut seen: Vec<((u64, u64), &PathBuf)> = Vec::new();
    let mut devs = Vec::with_capacity(paths.len());
    for p in paths {
        let meta = std::fs::metadata(p).with_context(|| format!("{}", p.display()))?;
        // Block devices are identified by their device number, files by inode.
        let id = if meta.file_type_is_block() {
            (meta.rdev(), 0)
        } else {
            (meta.dev(), meta.ino())
        };
        if let Some((_, first)) = seen.iter().find(|(i, _)| *i == id) {
            bail!(
                "{} and {} are the same member",
                first.display(),
                p.display()
            );
        }
        seen.push((id, p));
        let m = FileMember::open(p, mode).with_context(|| format!("{}", p.display()))?;
        devs.push(Arc::new(m) as Dev);
    }
    Ok(devs)
}

trait BlockType {
    fn file_type_is_block(&self) -> bool;
}

impl BlockType for std::fs::Metadata {
    fn file_type_is_block(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.file_type().is_block_device()
    }
}

/// Opens and assembles the array on `paths`.
pub fn assemble(paths: &[PathBuf], read_only: bool) -> Result<Array> {
    assemble_with(paths, read_only, None)
}

/// Like [`assemble`], with a dirty budget for buffered writes.
pub fn assemble_with(
    paths: &[PathBuf],
    read_only: bool,
    dirty_budget: Option<u64>,
) -> Result<Array> {
    let mode = if read_only {
        OpenMode::ReadOnly
    } else {
        OpenMode::ReadWrite
    };
    let devs = open(paths, mode)?;
    Ok(Array::assemble(
        devs,
        AssembleOptions {
            read_only,
            dirty_budget,
        },
    )?)
}
