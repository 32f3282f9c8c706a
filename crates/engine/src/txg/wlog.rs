//! The write log: writes acknowledged but not yet committed, kept in two files on a memory
//! filesystem (tmpfs), which outlive the server process but not the machine. A server
//! killed (SIGKILL, OOM) while a client stays connected and reconnects (QEMU's
//! `reconnect-delay`) loses no acknowledged write: the client does not send them again and
//! its next FLUSH, answered by the restarted server, must cover them. The next assemble for
//! writing replays the log into the array and commits it before anything else.
//!
//! A power cut loses the log with the rest of memory, as NBD allows for unflushed writes.
//!
//! Layout of each file: a 4 KiB header (magic, array UUID, a random nonce of this log, CRC),
//! then records appended one after another under one lock: `magic u32, len u32, seq u64,
//! offset u64, crc u32, 4 bytes zero`, then `len` bytes of data. The CRC-32C covers the nonce,
//! seq, offset, len and data, so a torn record (the process died inside its write) ends the
//! file's valid part, and no record of another log (or data that looks like one) passes.
//!
//! Rotation: a commit's swap makes the other file active; once that commit is durable, the
//! file that was active before the swap holds only covered records and is emptied. A record
//! is appended *after* its data entered the open set, so it lands in a file rotated at or
//! after the swap that took the data: emptied only once a later commit is durable. Replay
//! applies every valid record of both files in `seq` order (later writes win).

use crate::ondisk::format::crc32c;
use parking_lot::Mutex;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const FILE_MAGIC: &[u8; 8] = b"DAMOWLG1";
const REC_MAGIC: u32 = 0x574c_4f47; // "WLOG"
const HEADER: u64 = 4096;
const REC_HEADER: usize = 32;

struct State {
    /// Given up (the memory filesystem failed a write): the files are gone, nothing is
    /// logged any more and a restart replays nothing.
    off: bool,
    files: [File; 2],
    end: [u64; 2],
    active: usize,
    seq: u64,
}

pub struct WriteLog {
    paths: [PathBuf; 2],
    nonce: u64,
    state: Mutex<State>,
}

/// The two file paths of the log of array `uuid` in `dir`.
fn paths(dir: &Path, uuid: &[u8; 16]) -> [PathBuf; 2] {
    let id = uuid::Uuid::from_bytes(*uuid);
    [0, 1].map(|k| dir.join(format!("{id}.wlog{k}")))
}

fn crc(nonce: u64, seq: u64, offset: u64, data: &[u8]) -> u32 {
    let mut d = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
    d.update(&nonce.to_le_bytes());
    d.update(&seq.to_le_bytes());
    d.update(&offset.to_le_bytes());
    d.update(&(data.len() as u32).to_le_bytes());
    d.update(data);
    d.finalize() as u32
}

fn file_header(uuid: &[u8; 16], nonce: u64) -> Vec<u8> {
    let mut h = vec![0u8; HEADER as usize];
    h[..8].copy_from_slice(FILE_MAGIC);
    h[8..24].copy_from_slice(uuid);
    h[24..32].copy_from_slice(&nonce.to_le_bytes());
    let c = crc32c(&h[..32]);
    h[32..36].copy_from_slice(&c.to_le_bytes());
    h
}

/// The valid records of one log file: (seq, volume offset, data).
fn read_file(path: &Path, uuid: &[u8; 16]) -> Vec<(u64, u64, Vec<u8>)> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    if bytes.len() < HEADER as usize
        || &bytes[..8] != FILE_MAGIC
        || &bytes[8..24] != uuid
        || crc32c(&bytes[..32]).to_le_bytes() != bytes[32..36]
    {
        return Vec::new();
    }
    let nonce = u64::from_le_bytes(bytes[24..32].try_into().expect("8 bytes"));
    let mut out = Vec::new();
    let mut at = HEADER as usize;
    while at + REC_HEADER <= bytes.len() {
        let h = &bytes[at..at + REC_HEADER];
        let word = |r: std::ops::Range<usize>| u64::from_le_bytes(h[r].try_into().expect("8"));
        let magic = u32::from_le_bytes(h[0..4].try_into().expect("4"));
        let len = u32::from_le_bytes(h[4..8].try_into().expect("4")) as usize;
        let (seq, offset) = (word(8..16), word(16..24));
        let stored = u32::from_le_bytes(h[24..28].try_into().expect("4"));
        let start = at + REC_HEADER;
        if magic != REC_MAGIC || start + len > bytes.len() {
            break;
        }
        let data = &bytes[start..start + len];
        if crc(nonce, seq, offset, data) != stored {
            break;
        }
        out.push((seq, offset, data.to_vec()));
        at = start + len;
    }
    out
}

/// Writes left in the log of array `uuid` by a process that did not close it: (volume
/// offset, data), in the order to apply them. Reading touches nothing.
pub fn recover(dir: &Path, uuid: &[u8; 16]) -> Vec<(u64, Vec<u8>)> {
    let mut all: Vec<(u64, u64, Vec<u8>)> = paths(dir, uuid)
        .iter()
        .flat_map(|p| read_file(p, uuid))
        .collect();
    all.sort_by_key(|r| r.0);
    all.into_iter().map(|(_, o, d)| (o, d)).collect()
}

impl WriteLog {
    /// A fresh, empty log for array `uuid` in `dir` (replacing any old one: recover it
    /// first).
    pub fn create(dir: &Path, uuid: &[u8; 16]) -> io::Result<WriteLog> {
        std::fs::create_dir_all(dir)?;
        let paths = paths(dir, uuid);
        let nonce = rand_nonce();
        let header = file_header(uuid, nonce);
        let open = |p: &Path| -> io::Result<File> {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(p)?;
            f.write_all_at(&header, 0)?;
            Ok(f)
        };
        let files = [open(&paths[0])?, open(&paths[1])?];
        Ok(WriteLog {
            paths,
            nonce,
            state: Mutex::new(State {
                off: false,
                files,
                end: [HEADER; 2],
                active: 0,
                seq: 0,
            }),
        })
    }

    /// Locks the log. A writer appends its record and puts the write into the open set
    /// under this lock, and a commit swaps the sets and rotates under it, so a record
    /// always lands in the file that was active when its data joined a set.
    pub fn lock(&self) -> Locked<'_> {
        Locked {
            log: self,
            st: self.state.lock(),
        }
    }
    /// Once the commit that rotated away from file `k` is durable: empties it.
    pub fn covered(&self, k: usize) {
        let mut st = self.state.lock();
        if st.off || st.active == k {
            return;
        }
        if let Err(e) = st.files[k].set_len(HEADER) {
            tracing::error!("the write log failed: {e}; it is given up until the next start");
            st.off = true;
            self.remove();
            return;
        }
        st.end[k] = HEADER;
    }

    /// Removes the log (the array closed cleanly: everything is committed).
    pub fn remove(&self) {
        for p in &self.paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The log, locked (see [`WriteLog::lock`]).
pub struct Locked<'a> {
    log: &'a WriteLog,
    st: parking_lot::MutexGuard<'a, State>,
}

impl Locked<'_> {
    /// Appends a write, before it is acknowledged. A failure (the memory filesystem is
    /// full) gives the log up, loudly: the write still succeeds, and only the protection
    /// against a killed process is lost until the next start.
    pub fn append(&mut self, offset: u64, data: &[u8]) {
        if self.st.off {
            return;
        }
        if let Err(e) = self.try_append(offset, data) {
            tracing::error!(
                "the write log ({}) failed: {e}; it is given up until the next start, so \
                 writes acknowledged but not yet flushed die with this process",
                self.log.paths[0].display()
            );
            self.st.off = true;
            self.log.remove();
        }
    }

    fn try_append(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let st = &mut *self.st;
        st.seq += 1;
        let seq = st.seq;
        let mut h = [0u8; REC_HEADER];
        h[0..4].copy_from_slice(&REC_MAGIC.to_le_bytes());
        h[4..8].copy_from_slice(&(data.len() as u32).to_le_bytes());
        h[8..16].copy_from_slice(&seq.to_le_bytes());
        h[16..24].copy_from_slice(&offset.to_le_bytes());
        h[24..28].copy_from_slice(&crc(self.log.nonce, seq, offset, data).to_le_bytes());
        let k = st.active;
        let at = st.end[k];
        let f = &st.files[k];
        let done = rustix::io::pwritev(f, &[io::IoSlice::new(&h), io::IoSlice::new(data)], at)
            .map_err(io::Error::from)?;
        if done != h.len() + data.len() {
            // Short (a signal, or the filesystem filling): finish the plain way.
            let mut all = h.to_vec();
            all.extend_from_slice(data);
            f.write_all_at(&all[done..], at + done as u64)?;
        }
        st.end[k] = at + (h.len() + data.len()) as u64;
        Ok(())
    }

    /// At a commit's swap: makes the other file active; returns the one active before.
    pub fn rotate(&mut self) -> usize {
        let before = self.st.active;
        self.st.active = 1 - before;
        before
    }
}

fn rand_nonce() -> u64 {
    let b = *uuid::Uuid::new_v4().as_bytes();
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_in_order_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let uuid = [7u8; 16];
        let log = WriteLog::create(dir.path(), &uuid).unwrap();
        log.lock().append(4096, &[1u8; 4096]);
        let before = log.lock().rotate();
        log.lock().append(0, &[2u8; 8192]);
        log.lock().append(4096, &[3u8; 100]);
        let got = recover(dir.path(), &uuid);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], (4096, vec![1u8; 4096]));
        assert_eq!(got[2], (4096, vec![3u8; 100]));
        // The first commit is durable: its file's records go.
        log.covered(before);
        assert_eq!(recover(dir.path(), &uuid).len(), 2);
        // A torn last record (its data cut short) is not replayed; the rest is.
        let p = &paths(dir.path(), &uuid)[1];
        let len = std::fs::metadata(p).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(p)
            .unwrap()
            .set_len(len - 10)
            .unwrap();
        let got = recover(dir.path(), &uuid);
        assert_eq!(got, vec![(0, vec![2u8; 8192])]);
        // Another array's log is not this one's.
        assert!(recover(dir.path(), &[8u8; 16]).is_empty());
        log.remove();
        assert!(recover(dir.path(), &uuid).is_empty());
    }
}
