//! An in-memory member, for tests and examples.

use super::{check_range, MemberDevice};
use parking_lot::RwLock;
use std::io;

/// An in-memory member, for tests and examples.
pub struct MemMember {
    name: String,
    data: RwLock<Vec<u8>>,
}

impl MemMember {
    pub fn new(name: impl Into<String>, size: u64) -> MemMember {
        MemMember {
            name: name.into(),
            data: RwLock::new(vec![0; size as usize]),
        }
    }

    /// A copy of the whole content, e.g. to corrupt it and build a new member from it.
    pub fn snapshot(&self) -> Vec<u8> {
        self.data.read().clone()
    }

    pub fn from_bytes(name: impl Into<String>, data: Vec<u8>) -> MemMember {
        MemMember {
            name: name.into(),
            data: RwLock::new(data),
        }
    }
}

impl MemberDevice for MemMember {
    fn name(&self) -> &str {
        &self.name
    }
    fn size(&self) -> u64 {
        self.data.read().len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let data = self.data.read();
        check_range(data.len() as u64, offset, buf.len())?;
        let o = offset as usize;
        buf.copy_from_slice(&data[o..o + buf.len()]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut data = self.data.write();
        check_range(data.len() as u64, offset, buf.len())?;
        let o = offset as usize;
        data[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}
