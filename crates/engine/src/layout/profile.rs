//! RAID levels and the geometry of one chunk: which slice holds which data or parity block
//! of a stripe row.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Raid0,
    /// Each chunk whole on one member, no redundancy (btrfs `single`): a lost member loses
    /// only the chunks on it.
    Single,
    Raid1,
    Raid5,
    Raid6,
    Raid10,
}

impl Level {
    pub fn code(self) -> u8 {
        match self {
            Level::Raid0 => 0,
            Level::Raid1 => 1,
            Level::Single => 2,
            Level::Raid5 => 5,
            Level::Raid6 => 6,
            Level::Raid10 => 10,
        }
    }

    pub fn from_code(c: u8) -> Option<Level> {
        Some(match c {
            0 => Level::Raid0,
            1 => Level::Raid1,
            2 => Level::Single,
            5 => Level::Raid5,
            6 => Level::Raid6,
            10 => Level::Raid10,
            _ => return None,
        })
    }

    /// Parity blocks per stripe row.
    pub fn parity_count(self) -> usize {
        match self {
            Level::Raid5 => 1,
            Level::Raid6 => 2,
            _ => 0,
        }
    }

    /// Default number of copies of each block (mirrors); 1 for striped and parity levels.
    pub fn default_copies(self) -> usize {
        match self {
            Level::Raid1 | Level::Raid10 => 2,
            _ => 1,
        }
    }

    /// Smallest chunk width (slices on distinct members) this level can use.
    pub fn min_width(self, copies: usize) -> usize {
        match self {
            Level::Raid0 | Level::Single => 1,
            Level::Raid1 => copies,
            Level::Raid5 => 3,
            Level::Raid6 => 4,
            Level::Raid10 => 2 * copies,
        }
    }

    /// Most slices a chunk of this level has (`None`: as many as there are members).
    pub fn max_width(self, copies: usize) -> Option<usize> {
        match self {
            Level::Raid1 => Some(copies),
            Level::Single => Some(1),
            _ => None,
        }
    }

    /// Fewest members `create` accepts.
    pub fn min_members(self, copies: usize) -> usize {
        match self {
            Level::Raid0 => 2,
            _ => self.min_width(copies),
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Level::Single => f.write_str("single"),
            _ => write!(f, "raid{}", self.code()),
        }
    }
}

impl FromStr for Level {
    type Err = Error;
    fn from_str(s: &str) -> Result<Level> {
        let t = s.trim().to_ascii_lowercase();
        if t == "single" {
            return Ok(Level::Single);
        }
        let t = t.strip_prefix("raid").unwrap_or(&t);
        match t {
            "0" => Ok(Level::Raid0),
            "1" => Ok(Level::Raid1),
            "5" => Ok(Level::Raid5),
            "6" => Ok(Level::Raid6),
            "10" => Ok(Level::Raid10),
            _ => Err(Error::Invalid(format!(
                "unknown RAID level '{s}' (expected single, raid0, raid1, raid5, raid6 or raid10)"
            ))),
        }
    }
}

/// The profile of one chunk: level, how many slices, copies, stripe unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Profile {
    pub level: Level,
    /// Number of slices, each on a distinct member.
    pub width: usize,
    /// Copies of each block (raid1/raid10); 1 otherwise.
    pub copies: usize,
    pub stripe_unit: u64,
}

impl Profile {
    /// Data blocks per stripe row.
    pub fn data_count(&self) -> usize {
        match self.level {
            Level::Raid5 | Level::Raid6 => self.width - self.level.parity_count(),
            _ => self.width / self.copies,
        }
    }

    /// Member failures every chunk of this profile survives.
    pub fn tolerance(&self) -> usize {
        match self.level {
            Level::Raid0 | Level::Single => 0,
            Level::Raid5 => 1,
            Level::Raid6 => 2,
            Level::Raid1 | Level::Raid10 => self.copies - 1,
        }
    }

    pub fn row_bytes(&self) -> u64 {
        self.stripe_unit * self.data_count() as u64
    }

    /// Bytes each slice needs to hold `chunk_size` bytes of data.
    pub fn slice_len(&self, chunk_size: u64) -> u64 {
        chunk_size.div_ceil(self.row_bytes()) * self.stripe_unit
    }

    /// Checks the shape; every stored profile passes this before it is used.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(m));
        if !self.stripe_unit.is_power_of_two() || !(4096..=(16 << 20)).contains(&self.stripe_unit) {
            return bad(format!(
                "stripe unit {} must be a power of two from 4K to 16M",
                self.stripe_unit
            ));
        }
        let copies_ok = match self.level {
            Level::Raid1 | Level::Raid10 => (2..=16).contains(&self.copies),
            _ => self.copies == 1,
        };
        if !copies_ok {
            return bad(format!("{} cannot keep {} copies", self.level, self.copies));
        }
        if self.width < self.level.min_width(self.copies) || self.width > 255 {
            return bad(format!(
                "{} needs at least {} slices, got {}",
                self.level,
                self.level.min_width(self.copies),
                self.width
            ));
        }
        match self.level {
            Level::Single if self.width != 1 => bad(format!(
                "single has one slice per chunk, got {}",
                self.width
            )),
            Level::Raid1 if self.width != self.copies => bad(format!(
                "raid1 width {} != copies {}",
                self.width, self.copies
            )),
            Level::Raid10 if !self.width.is_multiple_of(self.copies) => bad(format!(
                "raid10 width {} is not a multiple of copies {}",
                self.width, self.copies
            )),
            _ => Ok(()),
        }
    }

    /// Slice positions holding data block `i` of stripe row `row` (several for mirrors).
    pub fn data_positions(&self, row: u64, i: usize) -> std::ops::Range<usize> {
        match self.level {
            Level::Raid5 | Level::Raid6 => {
                let p = self.parity_position(row);
                let k = self.level.parity_count();
                let pos = (p + k + i) % self.width;
                pos..pos + 1
            }
            _ => i * self.copies..(i + 1) * self.copies,
        }
    }

    /// Position of P in a raid5/raid6 row (left-symmetric rotation, as Linux md); Q follows it.
    pub fn parity_position(&self, row: u64) -> usize {
        self.width - 1 - (row % self.width as u64) as usize
    }

    pub fn q_position(&self, row: u64) -> usize {
        (self.parity_position(row) + 1) % self.width
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prof(level: Level, width: usize) -> Profile {
        Profile {
            level,
            width,
            copies: level.default_copies(),
            stripe_unit: 65536,
        }
    }

    #[test]
    fn every_row_uses_every_slice_once() {
        for (level, w) in [
            (Level::Raid5, 3),
            (Level::Raid5, 7),
            (Level::Raid6, 4),
            (Level::Raid6, 9),
            (Level::Raid0, 5),
            (Level::Raid10, 6),
            (Level::Raid1, 2),
            (Level::Single, 1),
        ] {
            let p = prof(level, w);
            p.validate().unwrap();
            for row in 0..20 {
                let mut seen = vec![0; w];
                for i in 0..p.data_count() {
                    for pos in p.data_positions(row, i) {
                        seen[pos] += 1;
                    }
                }
                if level.parity_count() > 0 {
                    seen[p.parity_position(row)] += 1;
                }
                if level == Level::Raid6 {
                    seen[p.q_position(row)] += 1;
                }
                assert!(
                    seen.iter().all(|&n| n == 1),
                    "{level} w{w} row {row}: {seen:?}"
                );
            }
        }
    }

    #[test]
    fn parity_rotates_left_symmetric() {
        let p = prof(Level::Raid5, 4);
        assert_eq!(
            (0..4).map(|r| p.parity_position(r)).collect::<Vec<_>>(),
            [3, 2, 1, 0]
        );
        // Data starts right after parity and wraps.
        assert_eq!(p.data_positions(1, 0), 3..4);
        assert_eq!(p.data_positions(1, 1), 0..1);
    }

    #[test]
    fn slice_len_covers_the_chunk() {
        let p = prof(Level::Raid5, 4);
        let c = 4 << 20;
        assert!(p.slice_len(c) * 3 >= c);
        assert_eq!(p.slice_len(c) % p.stripe_unit, 0);
        assert!(prof(Level::Raid6, 4).validate().is_ok());
        assert!(prof(Level::Raid6, 3).validate().is_err());
        assert!(Profile {
            copies: 2,
            ..prof(Level::Raid10, 5)
        }
        .validate()
        .is_err());
    }

    #[test]
    fn level_parses() {
        assert_eq!("raid5".parse::<Level>().unwrap(), Level::Raid5);
        assert_eq!("10".parse::<Level>().unwrap(), Level::Raid10);
        assert!("raid4".parse::<Level>().is_err());
        assert_eq!("Single".parse::<Level>().unwrap(), Level::Single);
        assert_eq!(Level::Single.to_string(), "single");
        assert_eq!(Level::from_code(Level::Single.code()), Some(Level::Single));
        assert!("raid2".parse::<Level>().is_err());
    }

    /// A single chunk is one slice holding the chunk's bytes in order: row `r` of the
    /// slice is bytes `r × stripe unit ..` of the chunk.
    #[test]
    fn single_is_one_slice_in_order() {
        let p = prof(Level::Single, 1);
        p.validate().unwrap();
        assert_eq!(
            (p.data_count(), p.tolerance(), p.row_bytes()),
            (1, 0, 65536)
        );
        assert_eq!(p.slice_len(4 << 20), 4 << 20);
        for row in 0..8 {
            assert_eq!(p.data_positions(row, 0), 0..1);
        }
        assert!(prof(Level::Single, 2).validate().is_err());
        assert!(Profile {
            copies: 2,
            ..prof(Level::Single, 1)
        }
        .validate()
        .is_err());
    }
}
