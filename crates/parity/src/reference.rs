//! Portable reference kernels (u64 SWAR for the bulk, scalar tables for
//! constant multiplication). Used on every target and as the test oracle.

use crate::gf;
use crate::Blocks;

const LO7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
const HI1: u64 = 0x8080_8080_8080_8080;

/// Multiply each of the 8 bytes by g = 2.
#[inline(always)]
fn mul2_u64(x: u64) -> u64 {
    ((x & LO7) << 1) ^ (((x & HI1) >> 7) * 0x1d)
}

#[inline(always)]
fn rd(s: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(s[off..off + 8].try_into().unwrap())
}

#[inline(always)]
fn wr(s: &mut [u8], off: usize, v: u64) {
    s[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

fn mul_table(c: u8) -> [u8; 256] {
    let mut t = [0u8; 256];
    for (x, e) in t.iter_mut().enumerate() {
        *e = gf::mul(c, x as u8);
    }
    t
}

pub(crate) fn xor_into(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= *s;
    }
}

pub(crate) fn mul_xor_into(dst: &mut [u8], src: &[u8], coef: u8) {
    let t = mul_table(coef);
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= t[*s as usize];
    }
}

pub(crate) fn gen_p(data: &[&[u8]], p: &mut [u8]) {
    p.copy_from_slice(data[0]);
    for d in &data[1..] {
        xor_into(p, d);
    }
}

/// P and Q over `data`, missing blocks counting as zero. `p`/`q` are
/// overwritten. If `p` is `None` only Q is computed.
fn syndrome<B: Blocks + ?Sized>(data: &B, mut p: Option<&mut [u8]>, q: &mut [u8]) {
    const COL: usize = 32; // 4 u64 lanes per column for instruction-level parallelism
    let len = q.len();
    let n = data.count();
    let bulk = len - len % COL;
    let mut off = 0;
    while off < bulk {
        let (mut pv, mut qv) = ([0u64; 4], [0u64; 4]);
        for i in (0..n).rev() {
            for v in qv.iter_mut() {
                *v = mul2_u64(*v);
            }
            if let Some(s) = data.block(i) {
                let col = &s[off..off + COL];
                for k in 0..4 {
                    let v = rd(col, 8 * k);
                    pv[k] ^= v;
                    qv[k] ^= v;
                }
            }
        }
        for k in 0..4 {
            if let Some(p) = p.as_deref_mut() {
                wr(p, off + 8 * k, pv[k]);
            }
            wr(q, off + 8 * k, qv[k]);
        }
        off += COL;
    }
    for off in bulk..len {
        let (mut pv, mut qv) = (0u8, 0u8);
        for i in (0..n).rev() {
            qv = gf::mul(qv, 2);
            if let Some(s) = data.block(i) {
                pv ^= s[off];
                qv ^= s[off];
            }
        }
        if let Some(p) = p.as_deref_mut() {
            p[off] = pv;
        }
        q[off] = qv;
    }
}

pub(crate) fn gen_pq(data: &[&[u8]], p: &mut [u8], q: &mut [u8]) {
    syndrome(data, Some(p), q);
}

pub(crate) fn recover_data_with_q(data: &[Option<&[u8]>], x: usize, q: &[u8], out: &mut [u8]) {
    syndrome(data, None, out);
    let t = mul_table(gf::inv(gf::exp2(x)));
    for (o, q) in out.iter_mut().zip(q) {
        *o = t[(*o ^ *q) as usize];
    }
}

pub(crate) fn recover_two_data(
    data: &[Option<&[u8]>],
    (x, y): (usize, usize),
    p: &[u8],
    q: &[u8],
    out_x: &mut [u8],
    out_y: &mut [u8],
) {
    syndrome(data, Some(out_x), out_y);
    let (ca, cb) = crate::rec2_coefs(x, y);
    let ta = mul_table(ca);
    let tb = mul_table(cb);
    for i in 0..p.len() {
        let dp = p[i] ^ out_x[i];
        let dq = q[i] ^ out_y[i];
        let dx = ta[dp as usize] ^ tb[dq as usize];
        out_x[i] = dx;
        out_y[i] = dp ^ dx;
    }
}
