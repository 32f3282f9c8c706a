//! Turning MEMBER paths into opened member devices.

use anyhow::{bail, Context, Result};
use damocles_engine::{Array, AssembleOptions, Dev, DirectIo, FileMember, OpenMode, DEFAULT_FAIL};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Opens each path once; the same file or device named twice is an error, and so is a
/// path that does not answer within the default fail limit.
pub fn open(paths: &[PathBuf], mode: OpenMode) -> Result<Vec<Dev>> {
    open_with(paths, mode, DirectIo::Auto)
}

/// [`open`] choosing when members use `O_DIRECT` (block devices do by default).
pub fn open_with(paths: &[PathBuf], mode: OpenMode, direct: DirectIo) -> Result<Vec<Dev>> {
    let opened = open_within(paths, mode, DEFAULT_FAIL, direct)?;
    opened
        .into_iter()
        .zip(paths)
        .map(|(d, p)| {
            d.with_context(|| {
                format!(
                    "{}: no answer within {} s",
                    p.display(),
                    DEFAULT_FAIL.as_secs()
                )
            })
        })
        .collect()
}

/// Opens each path once (the same file or device twice is an error); a path whose
/// `stat` or `open` does not answer within `limit` (a hung disk, a stopped FUSE server)
/// is `None`, its thread left behind.
pub fn open_within(
    paths: &[PathBuf],
    mode: OpenMode,
    limit: Duration,
    direct: DirectIo,
) -> Result<Vec<Option<Dev>>> {
    let mut seen: Vec<((u64, u64), &PathBuf)> = Vec::new();
    let mut devs = Vec::with_capacity(paths.len());
    for p in paths {
        let path = p.clone();
        let Some(meta) = within(limit, move || std::fs::metadata(&path))? else {
            devs.push(None);
            continue;
        };
        let meta = meta.with_context(|| format!("{}", p.display()))?;
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
        let path = p.clone();
        match within(limit, move || FileMember::open_with(&path, mode, direct))? {
            None => devs.push(None),
            Some(m) => {
                let m = m.with_context(|| format!("{}", p.display()))?;
                devs.push(Some(Arc::new(m) as Dev));
            }
        }
    }
    Ok(devs)
}

/// Runs `f` on a thread of its own; `None` when it does not return within `limit` (the
/// thread is left to finish or hang).
fn within<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<Option<T>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("damocles-open".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .context("starting a thread to open a member")?;
    Ok(rx.recv_timeout(limit).ok())
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
    assemble_opts(
        paths,
        AssembleOptions {
            read_only,
            dirty_budget,
            ..Default::default()
        },
        DirectIo::Auto,
    )
}

/// Opens (with `O_DIRECT` as `direct` says) and assembles the array on `paths` with
/// `opts`. A member that does not answer within the fail limit is left out (the array
/// assembles without it, degraded) and the log says so.
pub fn assemble_opts(paths: &[PathBuf], opts: AssembleOptions, direct: DirectIo) -> Result<Array> {
    let mode = if opts.read_only {
        OpenMode::ReadOnly
    } else {
        OpenMode::ReadWrite
    };
    let limit = opts.limits().1;
    let mut devs = Vec::with_capacity(paths.len());
    for (d, p) in open_within(paths, mode, limit, direct)?
        .into_iter()
        .zip(paths)
    {
        match d {
            Some(d) => devs.push(d),
            None => tracing::warn!(
                "{}: no answer within the fail limit ({} s): assembling without it",
                p.display(),
                limit.as_secs_f64()
            ),
        }
    }
    if devs.is_empty() {
        bail!(
            "none of the members answered within {} s",
            limit.as_secs_f64()
        );
    }
    let read_only = opts.read_only;
    let array = Array::assemble(devs, opts)?;
    if !read_only {
        if let Some(dir) = write_log_dir() {
            let n = array
                .attach_write_log(&dir)
                .context("replaying the write log a stopped server left")?;
            if n > 0 {
                tracing::info!("write log: {n} acknowledged writes of a stopped server replayed");
            }
        }
    }
    Ok(array)
}

/// Where write logs live (a memory filesystem: they outlive a killed server, not a
/// reboot): `DAMOCLES_WRITE_LOG_DIR` (`off`: none), else `/run/damocles/wlog` when `/run`
/// is a writable tmpfs (root; the service's RuntimeDirectory), else `/dev/shm/damocles-UID`.
/// A log on a disk-backed filesystem would cost the disk a second copy of every write.
pub fn write_log_dir() -> Option<PathBuf> {
    match std::env::var_os("DAMOCLES_WRITE_LOG_DIR") {
        Some(v) if v == "off" => None,
        Some(v) => Some(PathBuf::from(v)),
        None => {
            let run = std::path::Path::new("/run");
            // SAFETY: geteuid has no preconditions and cannot fail.
            let uid = unsafe { libc::geteuid() };
            if uid == 0 && is_tmpfs(run) {
                Some(run.join("damocles/wlog"))
            } else {
                Some(PathBuf::from(format!("/dev/shm/damocles-{uid}")))
            }
        }
    }
}

/// Whether `dir` is on a memory filesystem (tmpfs, or ramfs).
fn is_tmpfs(dir: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs is plain old data; all zeros is a valid value of it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized, writable
    // statfs buffer that outlives the call.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return false;
    }
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    let t = st.f_type as i64;
    t == TMPFS_MAGIC || t == RAMFS_MAGIC
}
