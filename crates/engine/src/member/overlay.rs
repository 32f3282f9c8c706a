//! A member seen through writes not yet applied to it: how an array opened read-only shows
//! the journal's writes as replayed without writing them.

use super::{Dev, MemberDevice};
use crate::units::MemberWrite;

pub(crate) struct Overlay {
    inner: Dev,
    writes: Vec<MemberWrite>,
}

impl Overlay {
    pub fn new(inner: Dev, writes: Vec<MemberWrite>) -> Overlay {
        Overlay { inner, writes }
    }
}

impl MemberDevice for Overlay {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_at(buf, offset)?;
        let end = offset + buf.len() as u64;
        for w in &self.writes {
            let (ws, we) = (w.offset, w.offset + w.data.len() as u64);
            let (lo, hi) = (ws.max(offset), we.min(end));
            if lo < hi {
                buf[(lo - offset) as usize..(hi - offset) as usize]
                    .copy_from_slice(&w.data[(lo - ws) as usize..(hi - ws) as usize]);
            }
        }
        Ok(())
    }
    fn write_at(&self, _: &[u8], _: u64) -> std::io::Result<()> {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "read-only",
        ))
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}
