//! A power-loss simulator for tests: members that keep what a real disk would keep.
//!
//! Each [`SimMember`] holds its content and the writes since its last flush (with what they
//! overwrote, which gives back the durable content). Reads see everything written. At a
//! [`PowerGrid::cut`], every unflushed write is — independently per member and per write,
//! from a seed — dropped, kept, or torn at 512-byte boundaries (a random subset of its
//! sectors survives). Keeping some later writes and dropping earlier
//! ones is how reordering shows. The grid can also cut at the N-th member I/O: from then on
//! every I/O fails, as if the machine had died mid-request.

use crate::member::{MemMember, MemberDevice};
use parking_lot::Mutex;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

const SECTOR: usize = 512;

/// A small deterministic generator (xorshift64*), so a failing case replays from its seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

struct Pending {
    offset: u64,
    data: Vec<u8>,
    /// What the write overwrote: undone in reverse order, the pending writes give back the
    /// durable content (kept this way rather than as a second copy of the member).
    old: Vec<u8>,
}

struct SimState {
    current: Vec<u8>,
    pending: Vec<Pending>,
}

/// The power supply of one simulated machine: counts I/Os and knows when it fails.
#[derive(Default)]
struct Power {
    ios: AtomicU64,
    /// Cut when the I/O count reaches this (u64::MAX: never).
    cut_at: AtomicU64,
    dead: AtomicBool,
}

/// The members of one simulated machine.
#[derive(Default)]
pub struct PowerGrid {
    power: Arc<Power>,
    members: Mutex<Vec<Arc<SimMember>>>,
}

pub struct SimMember {
    name: String,
    size: u64,
    power: Arc<Power>,
    state: Mutex<SimState>,
}

impl PowerGrid {
    pub fn new() -> Arc<PowerGrid> {
        let g = PowerGrid::default();
        g.power.cut_at.store(u64::MAX, Ordering::SeqCst);
        Arc::new(g)
    }

    /// A member whose durable (and current) content is `data`.
    pub fn member(self: &Arc<Self>, name: impl Into<String>, data: Vec<u8>) -> Arc<SimMember> {
        let m = Arc::new(SimMember {
            name: name.into(),
            size: data.len() as u64,
            power: self.power.clone(),
            state: Mutex::new(SimState {
                current: data,
                pending: Vec::new(),
            }),
        });
        self.members.lock().push(m.clone());
        m
    }

    /// Member I/Os so far (reads, writes, flushes).
    pub fn io_count(&self) -> u64 {
        self.power.ios.load(Ordering::SeqCst)
    }

    /// Power fails when the I/O count reaches `n`: that I/O and all later ones fail.
    pub fn cut_at_io(&self, n: u64) {
        self.power.cut_at.store(n, Ordering::SeqCst);
    }

    pub fn is_dead(&self) -> bool {
        self.power.dead.load(Ordering::SeqCst)
    }
}

impl Power {
    fn tick(&self) -> io::Result<()> {
        let n = self.ios.fetch_add(1, Ordering::SeqCst);
        if n >= self.cut_at.load(Ordering::SeqCst) {
            self.dead.store(true, Ordering::SeqCst);
        }
        if self.dead.load(Ordering::SeqCst) {
            return Err(io::Error::other("simulated power cut"));
        }
        Ok(())
    }
}

impl PowerGrid {
    /// Cuts the power: decides for every unflushed write what reached the media, and
    /// returns each member's surviving content (in creation order) as fresh memory members.
    pub fn cut(&self, seed: u64) -> Vec<Arc<MemMember>> {
        self.cut_as(seed, false)
    }

    /// [`PowerGrid::cut`] for the last time: the members give up their content instead of
    /// copying it (a later `cut` finds them empty). Saves a copy of every member per crash.
    pub fn cut_final(&self, seed: u64) -> Vec<Arc<MemMember>> {
        self.cut_as(seed, true)
    }

    fn cut_as(&self, seed: u64, last: bool) -> Vec<Arc<MemMember>> {
        self.power.dead.store(true, Ordering::SeqCst);
        let mut rng = Rng::new(seed);
        self.members
            .lock()
            .iter()
            .map(|m| {
                let mut st = m.state.lock();
                let mut img = if last {
                    std::mem::take(&mut st.current)
                } else {
                    st.current.clone()
                };
                for w in st.pending.iter().rev() {
                    img[w.offset as usize..][..w.old.len()].copy_from_slice(&w.old);
                }
                for w in &st.pending {
                    match rng.below(3) {
                        0 => {} // lost
                        1 => img[w.offset as usize..][..w.data.len()].copy_from_slice(&w.data),
                        _ => {
                            // Torn: a random subset of the sectors made it.
                            for (k, sector) in w.data.chunks(SECTOR).enumerate() {
                                if rng.chance(50) {
                                    let o = w.offset as usize + k * SECTOR;
                                    img[o..o + sector.len()].copy_from_slice(sector);
                                }
                            }
                        }
                    }
                }
                Arc::new(MemMember::from_bytes(m.name.clone(), img))
            })
            .collect()
    }
}

impl SimMember {
    fn check(&self, offset: u64, len: usize) -> io::Result<()> {
        match offset.checked_add(len as u64) {
            Some(e) if e <= self.size => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "beyond the member",
            )),
        }
    }
}

impl MemberDevice for SimMember {
    fn name(&self) -> &str {
        &self.name
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check(offset, buf.len())?;
        self.power.tick()?;
        let st = self.state.lock();
        buf.copy_from_slice(&st.current[offset as usize..][..buf.len()]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check(offset, buf.len())?;
        self.power.tick()?;
        let mut st = self.state.lock();
        let range = offset as usize..offset as usize + buf.len();
        let old = st.current[range.clone()].to_vec();
        st.current[range].copy_from_slice(buf);
        st.pending.push(Pending {
            offset,
            data: buf.to_vec(),
            old,
        });
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        self.power.tick()?;
        // What was written is what is durable now.
        self.state.lock().pending.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flushed_writes_survive_unflushed_ones_may_not() {
        let grid = PowerGrid::new();
        let m = grid.member("a", vec![0; 8192]);
        m.write_at(&[1; 1024], 0).unwrap();
        m.flush().unwrap();
        m.write_at(&[2; 4096], 2048).unwrap();
        let mut seen_lost = false;
        let mut seen_kept = false;
        let mut seen_torn = false;
        for seed in 0..64 {
            let img = grid.cut(seed)[0].snapshot();
            assert!(img[..1024].iter().all(|&b| b == 1), "flushed write lost");
            let sectors: Vec<bool> = (0..8).map(|k| img[2048 + k * 512] == 2).collect();
            for k in 0..8 {
                let s = &img[2048 + k * 512..][..512];
                assert!(s.iter().all(|&b| b == s[0]), "sector {k} torn inside");
            }
            match sectors.iter().filter(|&&x| x).count() {
                0 => seen_lost = true,
                8 => seen_kept = true,
                _ => seen_torn = true,
            }
        }
        assert!(seen_lost && seen_kept && seen_torn);
    }

    #[test]
    fn cut_at_io_fails_everything_after() {
        let grid = PowerGrid::new();
        let m = grid.member("a", vec![0; 4096]);
        grid.cut_at_io(2);
        m.write_at(&[1; 512], 0).unwrap();
        m.flush().unwrap();
        assert!(m.write_at(&[2; 512], 0).is_err());
        assert!(grid.is_dead());
        let img = grid.cut(1)[0].snapshot();
        assert_eq!(img[0], 1);
    }
}
