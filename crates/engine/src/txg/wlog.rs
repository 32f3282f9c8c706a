//! The write log: writes acknowledged but not yet committed, kept in two files on a memory
//! filesystem (tmpfs), which outlive the server process but not the machine. A server
//! killed (SIGKILL, OOM) while a client stays connected and reconnects (QEMU's
//! `reconnect-delay`) loses no acknowledged write: the client does not send them again and
//! its next FLUSH, answered by the restarted server, must cover them. The next assemble for
//! writing replays the log into the array and commits it before anything else.
//!
//! A power cut loses the log with the rest of memory, as NBD allows for unflushed writes.
//!
//! Layout of each file: a 4 KiB header (magic, array UUID, a random nonce of this file's
//! current epoch, CRC), then records appended one after another under one lock: `magic u32,
//! len u32, seq u64, offset u64, hcrc u32, 4 bytes zero`, then `len` bytes of data, then a
//! 16-byte trailer `end magic u32, hcrc u32, nonce ^ seq u64`. The header CRC-32C (`hcrc`)
//! covers the nonce, seq, offset and len. A record is one `pwritev` of header, data and
//! trailer; a process killed inside it leaves a prefix (the kernel copies an iovec in
//! order), so the trailer is the last thing to become visible: a record counts only when
//! its trailer matches its header. Before that, the trailer's bytes are zeros or left from
//! an earlier epoch, whose nonce differs (64 random bits), so neither passes. The data
//! itself needs no checksum here (it never leaves memory; the array checksums it when it is
//! committed), which saves a pass over every written byte.
//!
//! Rotation: a commit's swap makes the other file active; once that commit is durable, the
//! file that was active before the swap holds only covered records and is emptied: a new
//! epoch (a new nonce in its header) makes its old records invalid, and the file is written
//! again from its start, over the memory it already has (cut back to [`WriteLog::create`]'s
//! `retain` bytes), so a sustained write does not allocate, zero and free tmpfs pages for
//! every byte. A record is appended *after* its data entered the open set, so it lands in a
//! file rotated at or after the swap that took the data: emptied only once a later commit
//! is durable. Replay applies every valid record of both files in `seq` order (later writes
//! win).

use crate::ondisk::format::crc32c;
use parking_lot::Mutex;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const FILE_MAGIC: &[u8; 8] = b"DAMOWLG2";
/// Files of the first format (a CRC over every record's data, no trailer), still replayed.
const FILE_MAGIC_V1: &[u8; 8] = b"DAMOWLG1";
const REC_MAGIC: u32 = 0x574c_4f47; // "WLOG"
const HEADER: u64 = 4096;
const REC_HEADER: usize = 32;
const REC_END_MAGIC: u32 = 0x444e_4557; // "WEND"
const REC_TRAILER: usize = 16;

struct State {
    /// Given up (the memory filesystem failed a write): the files are gone, nothing is
    /// logged any more and a restart replays nothing.
    off: bool,
    files: [File; 2],
    /// Each file's epoch nonce (in its header; records carry it in their CRC and trailer).
    nonce: [u64; 2],
    end: [u64; 2],
    active: usize,
    seq: u64,
}

pub struct WriteLog {
    paths: [PathBuf; 2],
    uuid: [u8; 16],
    /// Bytes of its memory a file keeps when it is emptied.
    retain: u64,
    state: Mutex<State>,
}

/// The two file paths of the log of array `uuid` in `dir`.
fn paths(dir: &Path, uuid: &[u8; 16]) -> [PathBuf; 2] {
    let id = uuid::Uuid::from_bytes(*uuid);
    [0, 1].map(|k| dir.join(format!("{id}.wlog{k}")))
}

/// The header CRC of a record: over the file's nonce, seq, offset and len.
fn crc(nonce: u64, seq: u64, offset: u64, len: u32) -> u32 {
    let mut b = [0u8; 28];
    b[..8].copy_from_slice(&nonce.to_le_bytes());
    b[8..16].copy_from_slice(&seq.to_le_bytes());
    b[16..24].copy_from_slice(&offset.to_le_bytes());
    b[24..28].copy_from_slice(&len.to_le_bytes());
    crc32c(&b)
}

/// The record CRC of the first format: nonce, seq, offset, len and the data.
fn crc_v1(nonce: u64, seq: u64, offset: u64, data: &[u8]) -> u32 {
    let mut d = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
    d.update(&nonce.to_le_bytes());
    d.update(&seq.to_le_bytes());
    d.update(&offset.to_le_bytes());
    d.update(&(data.len() as u32).to_le_bytes());
    d.update(data);
    d.finalize() as u32
}

/// The trailer that makes a record valid (see the module docs).
fn trailer(nonce: u64, seq: u64, hcrc: u32) -> [u8; REC_TRAILER] {
    let mut t = [0u8; REC_TRAILER];
    t[..4].copy_from_slice(&REC_END_MAGIC.to_le_bytes());
    t[4..8].copy_from_slice(&hcrc.to_le_bytes());
    t[8..16].copy_from_slice(&(nonce ^ seq).to_le_bytes());
    t
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
        || (&bytes[..8] != FILE_MAGIC && &bytes[..8] != FILE_MAGIC_V1)
        || &bytes[8..24] != uuid
        || crc32c(&bytes[..32]).to_le_bytes() != bytes[32..36]
    {
        return Vec::new();
    }
    let v1 = &bytes[..8] == FILE_MAGIC_V1;
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
        let end = start + len + if v1 { 0 } else { REC_TRAILER };
        if magic != REC_MAGIC || end > bytes.len() {
            break;
        }
        let valid = if v1 {
            crc_v1(nonce, seq, offset, &bytes[start..start + len]) == stored
        } else {
            crc(nonce, seq, offset, len as u32) == stored
                && bytes[start + len..end] == trailer(nonce, seq, stored)
        };
        if !valid {
            break;
        }
        out.push((seq, offset, bytes[start..start + len].to_vec()));
        at = end;
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
    /// first). An emptied file keeps up to `retain` bytes of its memory for reuse.
    pub fn create(dir: &Path, uuid: &[u8; 16], retain: u64) -> io::Result<WriteLog> {
        std::fs::create_dir_all(dir)?;
        let paths = paths(dir, uuid);
        let nonce = [rand_nonce(), rand_nonce()];
        let open = |p: &Path, nonce: u64| -> io::Result<File> {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(p)?;
            f.write_all_at(&file_header(uuid, nonce), 0)?;
            Ok(f)
        };
        let files = [open(&paths[0], nonce[0])?, open(&paths[1], nonce[1])?];
        Ok(WriteLog {
            paths,
            uuid: *uuid,
            retain: retain.max(HEADER),
            state: Mutex::new(State {
                off: false,
                files,
                nonce,
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
    /// Once the commit that rotated away from file `k` is durable: empties it (a new epoch;
    /// its memory beyond `retain` is given back).
    pub fn covered(&self, k: usize) {
        let mut st = self.state.lock();
        if st.off || st.active == k {
            return;
        }
        let nonce = rand_nonce();
        let f = &st.files[k];
        let r = f
            .write_all_at(&file_header(&self.uuid, nonce), 0)
            .and_then(|()| match st.end[k] > self.retain {
                true => f.set_len(self.retain),
                false => Ok(()),
            });
        if let Err(e) = r {
            tracing::error!("the write log failed: {e}; it is given up until the next start");
            st.off = true;
            self.remove();
            return;
        }
        st.nonce[k] = nonce;
        st.end[k] = HEADER;
    }

    /// Gives back the memory of files that hold no record (nothing is being written).
    pub fn shrink(&self) {
        let st = self.state.lock();
        if st.off {
            return;
        }
        for k in 0..2 {
            if st.end[k] == HEADER {
                // Failing to shrink loses nothing: the file keeps its memory a while longer.
                let _ = st.files[k].set_len(HEADER);
            }
        }
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
        let len = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a write over 4 GiB"))?;
        st.seq += 1;
        let seq = st.seq;
        let k = st.active;
        let hcrc = crc(st.nonce[k], seq, offset, len);
        let mut h = [0u8; REC_HEADER];
        h[0..4].copy_from_slice(&REC_MAGIC.to_le_bytes());
        h[4..8].copy_from_slice(&len.to_le_bytes());
        h[8..16].copy_from_slice(&seq.to_le_bytes());
        h[16..24].copy_from_slice(&offset.to_le_bytes());
        h[24..28].copy_from_slice(&hcrc.to_le_bytes());
        let t = trailer(st.nonce[k], seq, hcrc);
        let at = st.end[k];
        let f = &st.files[k];
        let parts = [&h[..], data, &t[..]];
        let total = REC_HEADER + data.len() + REC_TRAILER;
        let iov = parts.map(io::IoSlice::new);
        let mut done = rustix::io::pwritev(f, &iov, at).map_err(io::Error::from)?;
        // Short (a signal, or the filesystem filling): finish piece by piece, in order, so
        // the trailer still comes last.
        let mut start = 0;
        for p in parts {
            if done < start + p.len() {
                let from = done.saturating_sub(start);
                f.write_all_at(&p[from..], at + (start + from) as u64)?;
                done = start + p.len();
            }
            start += p.len();
        }
        st.end[k] = at + total as u64;
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

    fn shorten(p: &Path, by: u64) {
        let len = std::fs::metadata(p).unwrap().len();
        let f = OpenOptions::new().write(true).open(p).unwrap();
        f.set_len(len - by).unwrap();
    }

    #[test]
    fn records_come_back_in_order_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let uuid = [7u8; 16];
        let log = WriteLog::create(dir.path(), &uuid, 1 << 20).unwrap();
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
        // A torn last record (its trailer or data cut short) is not replayed; the rest is.
        let p = &paths(dir.path(), &uuid)[1];
        shorten(p, 1);
        assert_eq!(recover(dir.path(), &uuid), vec![(0, vec![2u8; 8192])]);
        shorten(p, 40);
        assert_eq!(recover(dir.path(), &uuid), vec![(0, vec![2u8; 8192])]);
        // Another array's log is not this one's.
        assert!(recover(dir.path(), &[8u8; 16]).is_empty());
        log.remove();
        assert!(recover(dir.path(), &uuid).is_empty());
    }

    #[test]
    fn an_emptied_file_is_reused_and_its_old_records_never_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let uuid = [9u8; 16];
        let log = WriteLog::create(dir.path(), &uuid, 1 << 20).unwrap();
        let p = paths(dir.path(), &uuid)[0].clone();
        for i in 0..4u8 {
            log.lock().append(u64::from(i) * 8192, &[10 + i; 8192]);
        }
        let used = std::fs::metadata(&p).unwrap().len();
        let k = log.lock().rotate();
        log.covered(k);
        assert!(recover(dir.path(), &uuid).is_empty());
        // The file keeps its memory (within `retain`) and is written again from its start.
        assert_eq!(std::fs::metadata(&p).unwrap().len(), used);
        log.lock().rotate();
        log.lock().append(0, &[20u8; 4096]);
        assert_eq!(recover(dir.path(), &uuid), vec![(0, vec![20u8; 4096])]);
        // A record torn in reused space: its header and part of its data are the new
        // epoch's, and where its trailer goes lie bytes of an old record. Not replayed.
        let (nonce, at) = {
            let st = log.state.lock();
            (st.nonce[0], st.end[0])
        };
        let len = 5000u32;
        let hcrc = crc(nonce, 99, 0, len);
        let mut h = [0u8; REC_HEADER];
        h[0..4].copy_from_slice(&REC_MAGIC.to_le_bytes());
        h[4..8].copy_from_slice(&len.to_le_bytes());
        h[8..16].copy_from_slice(&99u64.to_le_bytes());
        h[24..28].copy_from_slice(&hcrc.to_le_bytes());
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(&h, at).unwrap();
        f.write_all_at(&[30u8; 4000], at + REC_HEADER as u64)
            .unwrap();
        assert_eq!(recover(dir.path(), &uuid), vec![(0, vec![20u8; 4096])]);
        // The same record whole is replayed (so the check above is the trailer's).
        f.write_all_at(&[30u8; 1000], at + REC_HEADER as u64 + 4000)
            .unwrap();
        let t = trailer(nonce, 99, hcrc);
        f.write_all_at(&t, at + REC_HEADER as u64 + u64::from(len))
            .unwrap();
        assert_eq!(recover(dir.path(), &uuid).len(), 2);
        // Past `retain`, an emptied file gives its memory back.
        let small = WriteLog::create(dir.path(), &[5u8; 16], 8192).unwrap();
        small.lock().append(0, &[1u8; 65536]);
        let k = small.lock().rotate();
        small.covered(k);
        let q = &paths(dir.path(), &[5u8; 16])[0];
        assert_eq!(std::fs::metadata(q).unwrap().len(), 8192);
        // Idle: files without records give their memory back; one with records keeps it.
        small.lock().append(0, &[2u8; 4096]);
        small.shrink();
        assert_eq!(std::fs::metadata(q).unwrap().len(), HEADER);
        let q1 = &paths(dir.path(), &[5u8; 16])[1];
        assert!(std::fs::metadata(q1).unwrap().len() > HEADER);
        assert_eq!(recover(dir.path(), &[5u8; 16]), vec![(0, vec![2u8; 4096])]);
        small.remove();
        log.remove();
    }

    #[test]
    fn a_log_of_the_first_format_is_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let uuid = [3u8; 16];
        let nonce = 0x1234_5678_9abc_def0;
        let mut file = file_header(&uuid, nonce);
        file[..8].copy_from_slice(FILE_MAGIC_V1);
        let c = crc32c(&file[..32]);
        file[32..36].copy_from_slice(&c.to_le_bytes());
        for (seq, off, b) in [(1u64, 0u64, 4u8), (2, 4096, 5)] {
            let data = vec![b; 4096];
            let mut h = [0u8; REC_HEADER];
            h[0..4].copy_from_slice(&REC_MAGIC.to_le_bytes());
            h[4..8].copy_from_slice(&4096u32.to_le_bytes());
            h[8..16].copy_from_slice(&seq.to_le_bytes());
            h[16..24].copy_from_slice(&off.to_le_bytes());
            h[24..28].copy_from_slice(&crc_v1(nonce, seq, off, &data).to_le_bytes());
            file.extend_from_slice(&h);
            file.extend_from_slice(&data);
        }
        // The second record's data damaged: only the first counts.
        let n = file.len();
        file[n - 1] ^= 1;
        std::fs::write(&paths(dir.path(), &uuid)[0], &file).unwrap();
        assert_eq!(recover(dir.path(), &uuid), vec![(0, vec![4u8; 4096])]);
    }
}
