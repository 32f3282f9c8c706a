//! x86_64 SIMD kernels. The algorithms are written once, generically over a
//! [`Vector`] implementation, as `#[inline(always)]` functions; each ISA module
//! instantiates them inside `#[target_feature]` entry points so that the
//! intrinsics get inlined with the right features enabled.

use crate::Blocks;

pub(crate) mod avx2;
pub(crate) mod avx512;
pub(crate) mod gfni;

/// One SIMD register width of GF(2^8) operations.
///
/// # Safety
/// All methods may only be called when the CPU supports the ISA the
/// implementation is written for (callers are `#[target_feature]` entry
/// points that are only reached after run-time detection). Pointer methods
/// have the usual raw-pointer requirements, spelled out on each method.
pub(crate) unsafe trait Vector {
    type V: Copy;
    /// A constant multiplier prepared for [`Vector::mulc`].
    type C: Copy;
    /// Bytes per vector.
    const W: usize;

    unsafe fn zero() -> Self::V;
    /// `p` must be valid for reading `W` bytes (no alignment requirement).
    unsafe fn load(p: *const u8) -> Self::V;
    /// `p` must be valid for writing `W` bytes (no alignment requirement).
    unsafe fn store(p: *mut u8, v: Self::V);
    /// Load `n < W` bytes (rest zero); `p` valid for reading `n` bytes.
    unsafe fn load_n(p: *const u8, n: usize) -> Self::V;
    /// Store the first `n < W` bytes; `p` valid for writing `n` bytes.
    unsafe fn store_n(p: *mut u8, v: Self::V, n: usize);
    unsafe fn xor(a: Self::V, b: Self::V) -> Self::V;
    /// a ^ b ^ c
    unsafe fn xor3(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        // SAFETY: forwarded trait contract.
        unsafe { Self::xor(Self::xor(a, b), c) }
    }
    /// g·a
    unsafe fn mul2(a: Self::V) -> Self::V;
    /// g·a ^ b
    unsafe fn mul2_xor(a: Self::V, b: Self::V) -> Self::V {
        // SAFETY: forwarded trait contract.
        unsafe { Self::xor(Self::mul2(a), b) }
    }
    /// Two Horner steps: (g·a ^ hi)·g ^ lo.
    unsafe fn horner2(a: Self::V, hi: Self::V, lo: Self::V) -> Self::V {
        // SAFETY: forwarded trait contract.
        unsafe { Self::mul2_xor(Self::mul2_xor(a, hi), lo) }
    }
    unsafe fn prep(c: u8) -> Self::C;
    /// c·a
    unsafe fn mulc(a: Self::V, c: Self::C) -> Self::V;
}

/// How a column touches memory (the `M` parameter of [`Column::run`]).
/// `FULL`: `U` whole vectors. `PART`: `U == 1`, only the first `n < W`
/// bytes are valid. `HEAD`: `U == 1`, a whole vector may be read but only the
/// first `n < W` bytes are written (the peeled head of a buffer of at least
/// `W` bytes).
const FULL: u8 = 0;
const PART: u8 = 1;
const HEAD: u8 = 2;

#[inline(always)]
unsafe fn ld<K: Vector, const M: u8>(p: *const u8, n: usize) -> K::V {
    // SAFETY: forwarded; for PART, `p` is valid for `n` bytes, else for `W`.
    unsafe {
        if M == PART {
            K::load_n(p, n)
        } else {
            K::load(p)
        }
    }
}

#[inline(always)]
unsafe fn st<K: Vector, const M: u8>(p: *mut u8, v: K::V, n: usize) {
    // SAFETY: forwarded; for PART and HEAD, `p` is valid for `n` bytes, else
    // for `W`.
    unsafe {
        if M == FULL {
            K::store(p, v)
        } else {
            K::store_n(p, v, n)
        }
    }
}

/// One operation, applied to a column of `U` vectors starting at byte `off`
/// of every buffer; `M` is [`FULL`], [`PART`] or [`HEAD`].
trait Column<K: Vector> {
    /// # Safety
    /// `off + U*W` (or `off + n` with `PART`) must not exceed the length of
    /// any buffer the operation was built with (with `HEAD`: `off == 0`,
    /// `n < W` and every buffer holds at least `W` bytes); CPU supports `K`.
    unsafe fn run<const U: usize, const M: u8>(&mut self, off: usize, n: usize);
}

/// Blocks shorter than this are walked from offset 0 without peeling a head:
/// they sit in L1/L2, where a split load costs little, and at 4 KiB the
/// extra column was a few per cent slower (AVX2 more, its partial store goes
/// through a copy).
pub(crate) const PEEL_MIN: usize = 16 << 10;

/// Walk `len` bytes: a partial head vector that brings `align` (the start of
/// the buffer most loads come from) to a `W`-byte boundary, then `U`-vector
/// columns, single vectors and a partial tail vector.
///
/// Callers usually hand in buffers that share one misalignment (all from
/// the same allocator); a vector load that straddles two cache lines costs
/// two, which took a quarter off gen_pq at 8 × 256 KiB with every buffer at
/// 16 mod 64. The head column reads whole vectors and writes only its `n`
/// bytes (masked with AVX-512, through a copy with AVX2).
#[inline(always)]
unsafe fn drive<K: Vector, const U: usize, C: Column<K>>(c: &mut C, len: usize, align: *const u8) {
    let big = U * K::W;
    let mut off = 0;
    let mis = align as usize % K::W;
    if mis != 0 && len >= PEEL_MIN {
        // `K::W - mis < W <= PEEL_MIN <= len`.
        off = K::W - mis;
        // SAFETY: `off < W` and every buffer holds `len >= W` bytes; CPU
        // support is the caller's contract.
        unsafe { c.run::<1, HEAD>(0, off) };
    }
    // Each column below lies within `0..len`, the common length of all
    // buffers (checked by the public API).
    while off + big <= len {
        // SAFETY: `off + U*W <= len`; CPU support is the caller's contract.
        unsafe { c.run::<U, FULL>(off, 0) };
        off += big;
    }
    while off + K::W <= len {
        // SAFETY: `off + W <= len`; CPU support is the caller's contract.
        unsafe { c.run::<1, FULL>(off, 0) };
        off += K::W;
    }
    if off < len {
        // SAFETY: `off + (len - off) == len` and `len - off < W`.
        unsafe { c.run::<1, PART>(off, len - off) };
    }
}

/// Horner accumulation of P (if `WANT_P`) and Q over all blocks for one
/// column; missing blocks count as zero.
#[inline(always)]
unsafe fn accum<K: Vector, B: Blocks + ?Sized, const U: usize, const M: u8, const WANT_P: bool>(
    data: &B,
    off: usize,
    n: usize,
) -> ([K::V; U], [K::V; U]) {
    // SAFETY: the caller guarantees every present block covers the column
    // (see `Column::run`) and that the CPU supports K.
    unsafe {
        let top = data.count() - 1;
        let mut p = [K::zero(); U];
        let mut q = [K::zero(); U];
        if let Some(ptr) = data.ptr(top) {
            for u in 0..U {
                let v = ld::<K, M>(ptr.add(off + u * K::W), n);
                p[u] = v;
                q[u] = v;
            }
        }
        // Blocks top-1 .. 0, two at a time where both are present.
        let mut i = top;
        while i > 0 {
            if i >= 2 {
                if let (Some(hi), Some(lo)) = (data.ptr(i - 1), data.ptr(i - 2)) {
                    for u in 0..U {
                        let vh = ld::<K, M>(hi.add(off + u * K::W), n);
                        let vl = ld::<K, M>(lo.add(off + u * K::W), n);
                        if WANT_P {
                            p[u] = K::xor3(p[u], vh, vl);
                        }
                        q[u] = K::horner2(q[u], vh, vl);
                    }
                    i -= 2;
                    continue;
                }
            }
            match data.ptr(i - 1) {
                Some(ptr) => {
                    for u in 0..U {
                        let v = ld::<K, M>(ptr.add(off + u * K::W), n);
                        if WANT_P {
                            p[u] = K::xor(p[u], v);
                        }
                        q[u] = K::mul2_xor(q[u], v);
                    }
                }
                None => {
                    for qu in q.iter_mut() {
                        *qu = K::mul2(*qu);
                    }
                }
            }
            i -= 1;
        }
        (p, q)
    }
}

struct XorInto {
    dst: *mut u8,
    src: *const u8,
}

impl<K: Vector> Column<K> for XorInto {
    #[inline(always)]
    unsafe fn run<const U: usize, const M: u8>(&mut self, off: usize, n: usize) {
        // SAFETY: column within both buffers (trait contract).
        unsafe {
            for u in 0..U {
                let o = off + u * K::W;
                let d = ld::<K, M>(self.dst.add(o), n);
                let s = ld::<K, M>(self.src.add(o), n);
                st::<K, M>(self.dst.add(o), K::xor(d, s), n);
            }
        }
    }
}

struct MulXorInto<K: Vector> {
    dst: *mut u8,
    src: *const u8,
    c: K::C,
}

impl<K: Vector> Column<K> for MulXorInto<K> {
    #[inline(always)]
    unsafe fn run<const U: usize, const M: u8>(&mut self, off: usize, n: usize) {
        // SAFETY: column within both buffers (trait contract).
        unsafe {
            for u in 0..U {
                let o = off + u * K::W;
                let d = ld::<K, M>(self.dst.add(o), n);
                let s = ld::<K, M>(self.src.add(o), n);
                st::<K, M>(self.dst.add(o), K::xor(d, K::mulc(s, self.c)), n);
            }
        }
    }
}

struct GenP<'a> {
    data: &'a [&'a [u8]],
    p: *mut u8,
}

impl<K: Vector> Column<K> for GenP<'_> {
    #[inline(always)]
    unsafe fn run<const U: usize, const M: u8>(&mut self, off: usize, n: usize) {
        // SAFETY: column within every buffer (trait contract).
        unsafe {
            let nb = self.data.len();
            let mut acc = [K::zero(); U];
            let d0 = self.data[nb - 1].as_ptr().add(off);
            for (u, a) in acc.iter_mut().enumerate() {
                *a = ld::<K, M>(d0.add(u * K::W), n);
            }
            let mut i = nb - 1;
            while i >= 2 {
                let d1 = self.data[i - 1].as_ptr().add(off);
                let d2 = self.data[i - 2].as_ptr().add(off);
                for (u, a) in acc.iter_mut().enumerate() {
                    let v1 = ld::<K, M>(d1.add(u * K::W), n);
                    let v2 = ld::<K, M>(d2.add(u * K::W), n);
                    *a = K::xor3(*a, v1, v2);
                }
                i -= 2;
            }
            if i == 1 {
                let d1 = self.data[0].as_ptr().add(off);
                for (u, a) in acc.iter_mut().enumerate() {
                    *a = K::xor(*a, ld::<K, M>(d1.add(u * K::W), n));
                }
            }
            for (u, a) in acc.iter().enumerate() {
                st::<K, M>(self.p.add(off + u * K::W), *a, n);
            }
        }
    }
}

struct GenPq<'a> {
    data: &'a [&'a [u8]],
    p: *mut u8,
    q: *mut u8,
}

impl<K: Vector> Column<K> for GenPq<'_> {
    #[inline(always)]
    unsafe fn run<const U: usize, const M: u8>(&mut self, off: usize, n: usize) {
        // SAFETY: column within every buffer (trait contract).
        unsafe {
            let (p, q) = accum::<K, _, U, M, true>(self.data, off, n);
            for u in 0..U {
                st::<K, M>(self.p.add(off + u * K::W), p[u], n);
                st::<K, M>(self.q.add(off + u * K::W), q[u], n);
            }
        }
    }
}

struct Rec1<'a, K: Vector> {
    data: &'a [Option<&'a [u8]>],
    q: *const u8,
    out: *mut u8,
    c: K::C,
}

impl<K: Vector> Column<K> for Rec1<'_, K> {
    #[inline(always)]
    unsafe fn run<const U: usize, const M: u8>(&mut self, off: usize, n: usize) {
        // SAFETY: column within every buffer (trait contract).
        unsafe {
            let (_, qx) = accum::<K, _, U, M, false>(self.data, off, n);
            for (u, qx) in qx.iter().enumerate() {
                let o = off + u * K::W;
                let dq = K::xor(*qx, ld::<K, M>(self.q.add(o), n));
                st::<K, M>(self.out.add(o), K::mulc(dq, self.c), n);
            }
        }
    }
}

struct Rec2<'a, K: Vector> {
    data: &'a [Option<&'a [u8]>],
    p: *const u8,
    q: *const u8,
    out_x: *mut u8,
    out_y: *mut u8,
    ca: K::C,
    cb: K::C,
}

impl<K: Vector> Column<K> for Rec2<'_, K> {
    #[inline(always)]
    unsafe fn run<const U: usize, const M: u8>(&mut self, off: usize, n: usize) {
        // SAFETY: column within every buffer (trait contract).
        unsafe {
            let (pxy, qxy) = accum::<K, _, U, M, true>(self.data, off, n);
            for u in 0..U {
                let o = off + u * K::W;
                let dp = K::xor(pxy[u], ld::<K, M>(self.p.add(o), n));
                let dq = K::xor(qxy[u], ld::<K, M>(self.q.add(o), n));
                let dx = K::xor(K::mulc(dp, self.ca), K::mulc(dq, self.cb));
                st::<K, M>(self.out_x.add(o), dx, n);
                st::<K, M>(self.out_y.add(o), K::xor(dp, dx), n);
            }
        }
    }
}

/// Start of the first present data block (null if none: then the loads come
/// from P/Q, and alignment is left alone).
#[inline(always)]
fn first_present(data: &[Option<&[u8]>]) -> *const u8 {
    data.iter()
        .flatten()
        .next()
        .map_or(core::ptr::null(), |d| d.as_ptr())
}

// Generic operations. Preconditions for all: the CPU supports `K`, and the
// public API has checked block counts and that all buffers have equal length.

#[inline(always)]
pub(crate) unsafe fn xor_into<K: Vector, const U: usize>(dst: &mut [u8], src: &[u8]) {
    let mut c = XorInto {
        dst: dst.as_mut_ptr(),
        src: src.as_ptr(),
    };
    // SAFETY: equal lengths checked by the caller.
    unsafe { drive::<K, U, _>(&mut c, dst.len(), dst.as_ptr()) }
}

#[inline(always)]
pub(crate) unsafe fn mul_xor_into<K: Vector, const U: usize>(dst: &mut [u8], src: &[u8], coef: u8) {
    // SAFETY: CPU support is the caller's precondition.
    let c = unsafe { K::prep(coef) };
    let mut col = MulXorInto::<K> {
        dst: dst.as_mut_ptr(),
        src: src.as_ptr(),
        c,
    };
    // SAFETY: equal lengths checked by the caller.
    unsafe { drive::<K, U, _>(&mut col, dst.len(), dst.as_ptr()) }
}

#[inline(always)]
pub(crate) unsafe fn gen_p<K: Vector, const U: usize>(data: &[&[u8]], p: &mut [u8]) {
    let mut c = GenP {
        data,
        p: p.as_mut_ptr(),
    };
    // SAFETY: equal lengths and data.len() >= 1 checked by the caller.
    unsafe { drive::<K, U, _>(&mut c, p.len(), data[0].as_ptr()) }
}

#[inline(always)]
pub(crate) unsafe fn gen_pq<K: Vector, const U: usize>(data: &[&[u8]], p: &mut [u8], q: &mut [u8]) {
    let mut c = GenPq {
        data,
        p: p.as_mut_ptr(),
        q: q.as_mut_ptr(),
    };
    // SAFETY: equal lengths and data.len() >= 1 checked by the caller.
    unsafe { drive::<K, U, _>(&mut c, p.len(), data[0].as_ptr()) }
}

#[inline(always)]
pub(crate) unsafe fn recover_data_with_q<K: Vector, const U: usize>(
    data: &[Option<&[u8]>],
    x: usize,
    q: &[u8],
    out: &mut [u8],
) {
    let coef = crate::gf::inv(crate::gf::exp2(x));
    // SAFETY: CPU support is the caller's precondition.
    let c = unsafe { K::prep(coef) };
    let mut col = Rec1::<K> {
        data,
        q: q.as_ptr(),
        out: out.as_mut_ptr(),
        c,
    };
    // SAFETY: equal lengths and block counts checked by the caller.
    unsafe { drive::<K, U, _>(&mut col, out.len(), first_present(data)) }
}

#[inline(always)]
pub(crate) unsafe fn recover_two_data<K: Vector, const U: usize>(
    data: &[Option<&[u8]>],
    (x, y): (usize, usize),
    p: &[u8],
    q: &[u8],
    out_x: &mut [u8],
    out_y: &mut [u8],
) {
    let (a, b) = crate::rec2_coefs(x, y);
    // SAFETY: CPU support is the caller's precondition.
    let (ca, cb) = unsafe { (K::prep(a), K::prep(b)) };
    let mut col = Rec2::<K> {
        data,
        p: p.as_ptr(),
        q: q.as_ptr(),
        out_x: out_x.as_mut_ptr(),
        out_y: out_y.as_mut_ptr(),
        ca,
        cb,
    };
    // SAFETY: equal lengths and block counts checked by the caller.
    unsafe { drive::<K, U, _>(&mut col, p.len(), first_present(data)) }
}

/// Generates the `#[target_feature]` entry points of one ISA module.
macro_rules! entry_points {
    ($k:ty, $feat:literal, $u:literal) => {
        // Safety contract of every entry point: the CPU supports the features
        // named in `target_feature`, and the public API in lib.rs has checked
        // lengths and block counts.

        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn xor_into(dst: &mut [u8], src: &[u8]) {
            // SAFETY: see the module contract above.
            unsafe { super::xor_into::<$k, $u>(dst, src) }
        }

        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn mul_xor_into(dst: &mut [u8], src: &[u8], coef: u8) {
            // SAFETY: see the module contract above.
            unsafe { super::mul_xor_into::<$k, $u>(dst, src, coef) }
        }

        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn gen_p(data: &[&[u8]], p: &mut [u8]) {
            // SAFETY: see the module contract above.
            unsafe { super::gen_p::<$k, $u>(data, p) }
        }

        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn gen_pq(data: &[&[u8]], p: &mut [u8], q: &mut [u8]) {
            // SAFETY: see the module contract above.
            unsafe { super::gen_pq::<$k, $u>(data, p, q) }
        }

        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn recover_data_with_q(
            data: &[Option<&[u8]>],
            x: usize,
            q: &[u8],
            out: &mut [u8],
        ) {
            // SAFETY: see the module contract above.
            unsafe { super::recover_data_with_q::<$k, $u>(data, x, q, out) }
        }

        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn recover_two_data(
            data: &[Option<&[u8]>],
            xy: (usize, usize),
            p: &[u8],
            q: &[u8],
            out_x: &mut [u8],
            out_y: &mut [u8],
        ) {
            // SAFETY: see the module contract above.
            unsafe { super::recover_two_data::<$k, $u>(data, xy, p, q, out_x, out_y) }
        }
    };
}
pub(crate) use entry_points;
