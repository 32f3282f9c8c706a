//! Finding damocles members: on block devices (partitions too) and in files and
//! directories, grouped by array, with what each array's assembly would make of them.
//! Used by `damocles scan`, `damocles config check` and `damocles daemon`.

use damocles_engine::{read_label, FileMember, Level, MemberState, OpenMode};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use uuid_fmt::fmt_uuid;

/// How deep a directory given to scan is searched.
const MAX_DEPTH: usize = 4;

/// One device or file that holds a damocles label.
#[derive(Clone, Debug, Serialize)]
pub struct Found {
    pub path: PathBuf,
    pub array_uuid: String,
    pub member_uuid: String,
    pub index: u32,
    /// Generation of the newest valid metadata on it (none: all slots damaged, or a
    /// journal device).
    pub generation: Option<u64>,
    pub journal_device: bool,
    /// The array's name, level and member states as this member's metadata has them.
    #[serde(skip)]
    pub name: String,
    #[serde(skip)]
    level: Option<Level>,
    #[serde(skip)]
    table: Vec<([u8; 16], MemberState)>,
    #[serde(skip)]
    tolerance: Option<usize>,
}

/// One member of an array as the scan sees it.
#[derive(Clone, Debug, Serialize)]
pub struct ScannedMember {
    pub index: usize,
    pub uuid: String,
    /// Where it was found (none: missing).
    pub path: Option<PathBuf>,
    pub generation: Option<u64>,
    /// active, faulty, spare or removed, as the newest metadata records it.
    pub recorded: &'static str,
    /// What the scan makes of it: ok, missing, stale (recorded faulty: missed writes),
    /// older-generation, spare, removed.
    pub state: &'static str,
}

/// One array the scan found members of.
#[derive(Clone, Debug, Serialize)]
pub struct ScannedArray {
    pub name: String,
    pub uuid: String,
    pub level: String,
    pub generation: u64,
    pub tolerance: usize,
    pub members: Vec<ScannedMember>,
    /// Paths with this array's label whose member UUID the newest metadata does not know.
    pub unknown: Vec<PathBuf>,
    /// complete, degraded, or unassemblable.
    pub verdict: &'static str,
    /// The verdict in words, with anything to look at.
    pub notes: Vec<String>,
}

impl ScannedArray {
    pub fn assemblable(&self) -> bool {
        self.verdict != "unassemblable"
    }

    /// The paths of the members that were found (to assemble on).
    pub fn paths(&self) -> Vec<PathBuf> {
        self.members.iter().filter_map(|m| m.path.clone()).collect()
    }

    pub fn label(&self) -> String {
        if self.name.is_empty() {
            format!("unnamed array {}", self.uuid)
        } else {
            format!("'{}' ({})", self.name, self.uuid)
        }
    }
}

mod uuid_fmt {
    /// A UUID as 8-4-4-4-12 hex digits.
    pub fn fmt_uuid(b: &[u8; 16]) -> String {
        let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

/// The block devices of this machine, partitions included (from /sys/class/block).
pub fn block_devices() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/sys/class/block") else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries
        .flatten()
        .map(|e| PathBuf::from("/dev").join(e.file_name()))
        .filter(|p| p.exists())
        .collect();
    v.sort();
    v
}

/// Every file or block device under `paths` (a directory is searched a few levels deep,
/// symbolic links to directories are not followed); a glob pattern is expanded.
pub fn candidates(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in paths {
        let s = p.to_string_lossy();
        if s.contains(['*', '?', '[']) {
            if let Ok(g) = glob::glob(&s) {
                for e in g.flatten() {
                    walk(&e, 0, &mut out);
                }
            }
        } else {
            walk(p, 0, &mut out);
        }
    }
    out.sort();
    out.dedup();
    out
}

fn walk(p: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(p) else {
        return;
    };
    let ft = meta.file_type();
    if ft.is_dir() {
        if depth >= MAX_DEPTH {
            return;
        }
        if let Ok(entries) = std::fs::read_dir(p) {
            for e in entries.flatten() {
                walk(&e.path(), depth + 1, out);
            }
        }
        return;
    }
    // A link to a file or device counts (e.g. /dev/disk/by-id/...); the target is opened.
    let target = if ft.is_symlink() {
        match std::fs::metadata(p) {
            Ok(m) if !m.is_dir() => m.file_type(),
            _ => return,
        }
    } else {
        ft
    };
    if target.is_file() || target.is_block_device() {
        out.push(p.to_path_buf());
    }
}

/// Reads the label of each path; those that are not damocles members (or cannot be read)
/// are left out.
pub fn probe(paths: &[PathBuf]) -> Vec<Found> {
    paths.iter().filter_map(|p| probe_one(p)).collect()
}

fn probe_one(p: &Path) -> Option<Found> {
    let dev = FileMember::open(p, OpenMode::ReadOnly).ok()?;
    let label = read_label(&dev).ok()?;
    let sb = &label.superblock;
    let (generation, name, level, table) = match &label.newest {
        Some((g, m)) => (
            Some(*g),
            m.name.clone(),
            Some(m.template.level),
            m.members.iter().map(|i| (i.uuid, i.state)).collect(),
        ),
        None => (None, String::new(), None, Vec::new()),
    };
    Some(Found {
        path: p.to_path_buf(),
        array_uuid: fmt_uuid(&sb.array_uuid),
        member_uuid: fmt_uuid(&sb.member_uuid),
        index: sb.member_index,
        generation,
        journal_device: sb.is_journal_device(),
        name,
        level,
        table,
        tolerance: label.tolerance,
    })
}

/// Groups what was found by array and judges each.
pub fn group(found: &[Found]) -> Vec<ScannedArray> {
    let mut by_uuid: BTreeMap<&str, Vec<&Found>> = BTreeMap::new();
    for f in found {
        by_uuid.entry(&f.array_uuid).or_default().push(f);
    }
    let mut arrays: Vec<ScannedArray> = by_uuid
        .into_iter()
        .filter_map(|(uuid, fs)| judge(uuid, &fs))
        .collect();
    // Two arrays with one name: a config or command naming it would be ambiguous.
    let names: Vec<String> = arrays.iter().map(|a| a.name.clone()).collect();
    for a in &mut arrays {
        let n = names.iter().filter(|n| **n == a.name).count();
        if n > 1 && !a.name.is_empty() {
            a.notes.push(format!(
                "{n} arrays are named '{}': name this one by its UUID",
                a.name
            ));
        }
    }
    arrays.sort_by(|a, b| (&a.name, &a.uuid).cmp(&(&b.name, &b.uuid)));
    arrays
}

fn judge(uuid: &str, fs: &[&Found]) -> Option<ScannedArray> {
    let newest = fs
        .iter()
        .filter(|f| f.generation.is_some())
        .max_by_key(|f| f.generation)?;
    let generation = newest.generation.unwrap_or(0);
    let mut members = Vec::new();
    let mut missing_active = 0;
    let mut notes = Vec::new();
    for (i, (muuid, state)) in newest.table.iter().enumerate() {
        let muuid = fmt_uuid(muuid);
        let at: Vec<&&Found> = fs.iter().filter(|f| f.member_uuid == muuid).collect();
        if at.len() > 1 {
            notes.push(format!(
                "member {i} found twice: {} (leave all but one out)",
                at.iter()
                    .map(|f| f.path.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" and ")
            ));
        }
        let f = at.iter().max_by_key(|f| f.generation).copied();
        let older = f.is_some_and(|f| f.generation < Some(generation));
        let verdict = match (state, f) {
            (MemberState::Removed, _) => "removed",
            (MemberState::Spare, Some(_)) => "spare",
            (MemberState::Spare, None) => "missing",
            (MemberState::Faulty, _) => "stale",
            (MemberState::Active, None) => "missing",
            (MemberState::Active, Some(_)) if older => "older-generation",
            (MemberState::Active, Some(_)) => "ok",
        };
        if *state == MemberState::Active && f.is_none() {
            missing_active += 1;
        }
        members.push(ScannedMember {
            index: i,
            uuid: muuid,
            path: f.map(|f| f.path.clone()),
            generation: f.and_then(|f| f.generation),
            recorded: state.name(),
            state: verdict,
        });
    }
    let unknown: Vec<PathBuf> = fs
        .iter()
        .filter(|f| !f.journal_device && !members.iter().any(|m| m.uuid == f.member_uuid))
        .map(|f| f.path.clone())
        .collect();
    let tolerance = newest.tolerance.unwrap_or(0);
    let level = newest.level.map(|l| l.to_string()).unwrap_or_default();
    let faulty = members.iter().filter(|m| m.state == "stale").count();
    let verdict = if missing_active > tolerance {
        notes.insert(
            0,
            format!(
                "cannot be assembled: {missing_active} active members missing, {level} \
                 tolerates {tolerance}"
            ),
        );
        "unassemblable"
    } else if missing_active > 0 || faulty > 0 {
        notes.insert(
            0,
            format!("degraded: {missing_active} missing, {faulty} stale (faulty)"),
        );
        "degraded"
    } else {
        "complete"
    };
    for m in members.iter().filter(|m| m.state == "older-generation") {
        notes.push(format!(
            "member {} holds generation {} of {generation}: assembly brings it up to date \
             or refuses it as the engine decides",
            m.index,
            m.generation.unwrap_or(0)
        ));
    }
    for u in &unknown {
        notes.push(format!(
            "{} has this array's label but is not in its member table (a split or \
             leftover member): assembly refuses it",
            u.display()
        ));
    }
    Some(ScannedArray {
        name: newest.name.clone(),
        uuid: uuid.to_string(),
        level,
        generation,
        tolerance,
        members,
        unknown,
        verdict,
        notes,
    })
}
