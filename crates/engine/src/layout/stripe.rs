//! Stripe geometry: how a stretch of a chunk splits into stripe rows and data blocks, and
//! where a slice position's data lies in the volume.

use super::chunkmap::Chunk;
use super::profile::Profile;
use std::ops::Range;

/// One row's share of a stretch: (data block index, column in the block, range of the
/// caller's buffer).
pub(crate) type RowSeg = (usize, u64, Range<usize>);

/// Calls `f(row, segments)` for each stripe row that `[co, co+data_len)` of a chunk with
/// profile `p` touches.
pub(crate) fn for_rows<E>(
    p: &Profile,
    co: u64,
    data_len: usize,
    mut f: impl FnMut(u64, Vec<RowSeg>) -> Result<(), E>,
) -> Result<(), E> {
    let su = p.stripe_unit;
    let rb = p.row_bytes();
    let mut pos = 0usize;
    while pos < data_len {
        let off = co + pos as u64;
        let row = off / rb;
        let mut ro = off % rb;
        let mut segs = Vec::new();
        while pos < data_len && ro < rb {
            let i = (ro / su) as usize;
            let col = ro % su;
            let n = ((su - col) as usize).min(data_len - pos);
            segs.push((i, col, pos..pos + n));
            pos += n;
            ro += n as u64;
        }
        f(row, segs)?;
    }
    Ok(())
}

/// Splits `[offset, offset+len)` of a volume of `chunk_size`-byte chunks at chunk
/// boundaries: (chunk index, offset in chunk, position in the request, length).
pub(crate) fn pieces(
    chunk_size: u64,
    offset: u64,
    len: usize,
) -> impl Iterator<Item = (usize, u64, usize, usize)> {
    let c = chunk_size;
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        if pos >= len {
            return None;
        }
        let off = offset + pos as u64;
        let co = off % c;
        let n = ((c - co) as usize).min(len - pos);
        let item = ((off / c) as usize, co, pos, n);
        pos += n;
        Some(item)
    })
}

/// The volume offset of data at slice position `pos`, `row`, column `col` of chunk `idx`
/// (`None` for parity, or past the chunk's end).
pub(crate) fn data_volume_offset(
    chunk_size: u64,
    idx: usize,
    c: &Chunk,
    pos: usize,
    row: u64,
    col: u64,
) -> Option<u64> {
    let p = &c.profile;
    let i = (0..p.data_count()).find(|&i| p.data_positions(row, i).contains(&pos))?;
    let off = row * p.row_bytes() + i as u64 * p.stripe_unit + col;
    (off < chunk_size).then(|| idx as u64 * chunk_size + off)
}
