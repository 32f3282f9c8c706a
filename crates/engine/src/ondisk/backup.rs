//! The metadata backup file: one generation's metadata payload with the layout it needs,
//! in a self-describing, checksummed file (`docs/format.md`, "Metadata backup file"), and
//! its crash-safe save (a synced temporary file renamed into place).

use crate::error::{Error, Result};
use crate::layout::Level;
use crate::ondisk::format::{
    MAX_SLOT_SIZE, META_VERSION, MIN_SLOT_SIZE, SLOT_AREA_OFFSET, SLOT_HEADER_LEN,
};
use crate::ondisk::metadata::{ArrayMeta, MemberState};
use serde::Serialize;
use std::io::Write;
use std::path::Path;
use uuid::Uuid;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

pub const BACKUP_MAGIC: [u8; 8] = *b"DAMOCLBK";
/// Version of the backup file layout (the payload follows the on-disk format version).
pub const BACKUP_VERSION: u32 = 1;
pub const BACKUP_HEADER_LEN: usize = 128;
/// Largest file that can be a backup: a header and a payload that fits the largest slot.
pub const MAX_BACKUP_LEN: u64 = BACKUP_HEADER_LEN as u64 + MAX_SLOT_SIZE;
pub(crate) const CRC_AT: usize = 124;

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone)]
#[repr(C)]
struct BackupHeaderRaw {
    magic: [u8; 8],
    version: U32,
    header_len: U32,
    array_uuid: [u8; 16],
    generation: U64,
    payload_len: U64,
    format_version: U32,
    reserved0: U32,
    data_offset: U64,
    slot_size: U64,
    exported: U64,
    reserved: [u8; 44],
    crc: U32,
}

const _: () = assert!(size_of::<BackupHeaderRaw>() == BACKUP_HEADER_LEN);

/// CRC-32C of the whole file with the crc field taken as zero.
pub(crate) fn file_crc(bytes: &[u8]) -> u32 {
    let mut d = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
    d.update(&bytes[..CRC_AT]);
    d.update(&[0; 4]);
    d.update(&bytes[CRC_AT + 4..]);
    d.finalize() as u32
}

/// Creates a new file `.NAME.tmp-PID-N` in `dir` for [`Backup::save`] to write and rename.
fn create_temp(dir: &Path, name: &str) -> Result<(std::path::PathBuf, std::fs::File)> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut n = 0u32;
    loop {
        let tmp = dir.join(format!(".{name}.tmp-{}-{}", std::process::id(), nanos + n));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => n += 1,
            Err(source) => {
                return Err(Error::Open {
                    path: format!(
                        "cannot create a temporary file in {} (the backup is written there, \
                         then renamed)",
                        dir.display()
                    ),
                    source,
                })
            }
        }
    }
}

/// Renames `from` to `to` unless `to` exists (`AlreadyExists` then). Atomic with
/// RENAME_NOREPLACE; on a filesystem without it, `to` is checked just before the rename.
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    use rustix::io::Errno;
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(e) if e == Errno::INVAL || e == Errno::NOSYS || e == Errno::OPNOTSUPP => {
            if std::fs::symlink_metadata(to).is_ok() {
                return Err(std::io::ErrorKind::AlreadyExists.into());
            }
            std::fs::rename(from, to)
        }
        Err(e) => Err(e.into()),
    }
}

/// A metadata backup: one generation's payload exactly as a slot stored it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backup {
    pub array_uuid: [u8; 16],
    /// The generation the payload had on the members.
    pub generation: u64,
    /// The members' layout; the payload only makes sense with it.
    pub data_offset: u64,
    pub slot_size: u64,
    /// Unix time of the export.
    pub exported: u64,
    pub payload: Vec<u8>,
    pub meta: ArrayMeta,
}

impl Backup {
    pub fn encode(&self) -> Vec<u8> {
        let mut h = BackupHeaderRaw::new_zeroed();
        h.magic = BACKUP_MAGIC;
        h.version.set(BACKUP_VERSION);
        h.header_len.set(BACKUP_HEADER_LEN as u32);
        h.array_uuid = self.array_uuid;
        h.generation.set(self.generation);
        h.payload_len.set(self.payload.len() as u64);
        h.format_version.set(META_VERSION);
        h.data_offset.set(self.data_offset);
        h.slot_size.set(self.slot_size);
        h.exported.set(self.exported);
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(&self.payload);
        let crc = file_crc(&out);
        out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses and checks a backup file's bytes; `name` names it in errors. Never panics.
    pub fn decode(name: &str, bytes: &[u8]) -> Result<Backup> {
        let bad = |m: String| Error::format(name, m);
        let head = &bytes[..bytes.len().min(8)];
        if !BACKUP_MAGIC.starts_with(head) {
            return Err(bad(
                "not a damocles metadata backup (no DAMOCLBK magic)".into()
            ));
        }
        let Ok((h, payload)) = BackupHeaderRaw::read_from_prefix(bytes) else {
            return Err(bad(format!(
                "truncated: {} bytes, shorter than the {BACKUP_HEADER_LEN}-byte header",
                bytes.len()
            )));
        };
        // The version first: a newer layout may differ in everything after it.
        if h.version.get() != BACKUP_VERSION {
            return Err(bad(format!(
                "backup format version {} is not supported (this damocles reads version {BACKUP_VERSION})",
                h.version.get()
            )));
        }
        if !(1..=META_VERSION).contains(&h.format_version.get()) {
            return Err(bad(format!(
                "the metadata in it is on-disk format version {} (this damocles reads versions 1 to {META_VERSION})",
                h.format_version.get()
            )));
        }
        if h.header_len.get() as usize != BACKUP_HEADER_LEN {
            return Err(bad(format!("bad header length {}", h.header_len.get())));
        }
        let want = h.payload_len.get();
        let have = payload.len() as u64;
        if want > have {
            return Err(bad(format!(
                "truncated: the header announces {want} bytes of metadata, the file holds {have}"
            )));
        }
        if want < have {
            return Err(bad(format!(
                "{} unexpected bytes after the metadata",
                have - want
            )));
        }
        if file_crc(bytes) != h.crc.get() {
            return Err(bad(
                "checksum mismatch: the file is damaged (or was edited)".into(),
            ));
        }
        if h.reserved0.get() != 0 || h.reserved.iter().any(|&x| x != 0) {
            return Err(bad("reserved header bytes are not zero".into()));
        }
        let (slot_size, data_offset) = (h.slot_size.get(), h.data_offset.get());
        let layout_ok = slot_size.is_power_of_two()
            && (MIN_SLOT_SIZE..=MAX_SLOT_SIZE).contains(&slot_size)
            && want + SLOT_HEADER_LEN as u64 <= slot_size
            && data_offset.is_multiple_of(4096)
            && data_offset >= SLOT_AREA_OFFSET + 2 * slot_size;
        if !layout_ok {
            return Err(bad(format!(
                "impossible layout (slot size {slot_size}, data offset {data_offset}, {want} bytes of metadata)"
            )));
        }
        let meta = ArrayMeta::decode(name, payload, data_offset)?;
        Ok(Backup {
            array_uuid: h.array_uuid,
            generation: h.generation.get(),
            data_offset,
            slot_size,
            exported: h.exported.get(),
            payload: payload.to_vec(),
            meta,
        })
    }

    /// Reads and checks a backup file.
    pub fn load(path: &Path) -> Result<Backup> {
        let name = path.display().to_string();
        let open = |source| Error::Open {
            path: name.clone(),
            source,
        };
        let len = std::fs::metadata(path).map_err(open)?.len();
        if len > MAX_BACKUP_LEN {
            return Err(Error::format(
                &name,
                format!("{len} bytes is too large to be a metadata backup"),
            ));
        }
        let bytes = std::fs::read(path).map_err(open)?;
        Backup::decode(&name, &bytes)
    }

    /// Writes the file so that a crash never leaves a part of it at `path`: the bytes go to
    /// a new temporary file in the same directory, which is synced and then renamed to
    /// `path`, and the directory is synced. `path` then holds what it held before (or
    /// nothing) or the whole new file. An existing `path` is refused unless `overwrite`
    /// (the rename itself refuses to replace it, where the filesystem supports that); a
    /// symlink is followed, and anything but a regular file is never replaced.
    pub fn save(&self, path: &Path, overwrite: bool) -> Result<()> {
        let exists = || {
            Error::Invalid(format!(
                "{} exists (use --force to overwrite it)",
                path.display()
            ))
        };
        let io = |p: &Path| {
            let p = p.display().to_string();
            move |source| Error::Open { path: p, source }
        };
        let mut target = path.to_path_buf();
        let mut mode = None;
        match std::fs::symlink_metadata(path) {
            Ok(_) if !overwrite => return Err(exists()),
            Ok(m) => {
                if m.file_type().is_symlink() {
                    target = std::fs::canonicalize(path).map_err(io(path))?;
                }
                let m = std::fs::metadata(&target).map_err(io(&target))?;
                if !m.is_file() {
                    return Err(Error::Invalid(format!(
                        "{} is not a regular file: it is not replaced by a backup",
                        target.display()
                    )));
                }
                mode = Some(m.permissions());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(path)(e)),
        }
        let Some(file_name) = target.file_name() else {
            return Err(Error::Invalid(format!(
                "{} does not name a file",
                path.display()
            )));
        };
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        let (tmp, mut f) = create_temp(&dir, &file_name.to_string_lossy())?;
        let written = (|| {
            f.write_all(&self.encode())?;
            if let Some(m) = mode {
                f.set_permissions(m)?;
            }
            f.sync_all()
        })();
        drop(f);
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(&tmp)(e));
        }
        let renamed = if overwrite {
            std::fs::rename(&tmp, &target)
        } else {
            rename_noreplace(&tmp, &target)
        };
        if let Err(e) = renamed {
            let _ = std::fs::remove_file(&tmp);
            return Err(if e.kind() == std::io::ErrorKind::AlreadyExists {
                exists()
            } else {
                io(&target)(e)
            });
        }
        // The rename is only durable once the directory is.
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| Error::Open {
                path: format!(
                    "{} was written, but syncing its directory {} failed (a crash now could \
                     lose it)",
                    target.display(),
                    dir.display()
                ),
                source,
            })
    }

    pub fn summary(&self) -> Summary {
        let m = &self.meta;
        Summary {
            array_uuid: Uuid::from_bytes(self.array_uuid).to_string(),
            generation: self.generation,
            exported: self.exported,
            name: m.name.clone(),
            level: m.template.level,
            copies: m.template.copies,
            stripe_unit: m.template.stripe_unit,
            size: m.map.virtual_size(),
            chunk_size: m.map.chunk_size,
            chunks_total: m.map.chunks.len(),
            chunks_allocated: m.map.allocated().count(),
            journal_device: m.journal_device.map(|u| Uuid::from_bytes(u).to_string()),
            lost_ranges: m.health.lost.len(),
            metadata_bytes: self.payload.len(),
            members: m
                .members
                .iter()
                .enumerate()
                .map(|(index, x)| MemberSummary {
                    index,
                    uuid: Uuid::from_bytes(x.uuid).to_string(),
                    state: x.state,
                    failed: x.failed,
                    size: x.size,
                    replaces: x.replaces,
                })
                .collect(),
        }
    }
}

/// What a backup holds, for people (`metadata export --json`).
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub array_uuid: String,
    pub generation: u64,
    pub exported: u64,
    pub name: String,
    pub level: Level,
    pub copies: usize,
    pub stripe_unit: u64,
    pub size: u64,
    pub chunk_size: u64,
    pub chunks_total: usize,
    pub chunks_allocated: usize,
    pub journal_device: Option<String>,
    pub lost_ranges: usize,
    pub metadata_bytes: usize,
    pub members: Vec<MemberSummary>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MemberSummary {
    pub index: usize,
    pub uuid: String,
    pub state: MemberState,
    pub failed: bool,
    /// End of the member's data area (bytes).
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaces: Option<u16>,
}
