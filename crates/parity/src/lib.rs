//! GF(2^8) arithmetic and RAID parity kernels (no I/O).
//!
//! * P = XOR of the data blocks.
//! * Q = Σ gⁱ·Dᵢ over GF(2^8) with g = 2 and polynomial 0x11d — the Linux md
//!   RAID-6 syndrome — where `i` is the block's index in the slice given.
//!
//! A portable reference implementation plus x86_64 SIMD kernels (AVX2,
//! AVX-512BW, AVX-512 + GFNI) selected at run time. All kernels process every
//! data block per vector column in a single pass (P and Q accumulate in
//! registers, Q by Horner's rule from the highest index down), and handle any
//! length and alignment. On blocks of 16 KiB and more the SIMD kernels first
//! peel a partial column so that the loads from the first data block (and
//! from every block sharing its misalignment) start on a vector boundary.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod bench;
pub mod gf;
mod reference;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::atomic::{AtomicU8, Ordering};

/// A kernel family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable (u64 SWAR + tables); available everywhere.
    Reference,
    /// AVX2 (`vpshufb` nibble tables).
    Avx2,
    /// AVX-512F + AVX-512BW.
    Avx512,
    /// AVX-512F + AVX-512BW + GFNI (`gf2p8affineqb`).
    Gfni,
}

impl Isa {
    /// All variants, slowest first.
    pub const ALL: [Isa; 4] = [Isa::Reference, Isa::Avx2, Isa::Avx512, Isa::Gfni];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Reference => "reference",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Gfni => "avx512+gfni",
        }
    }

    /// Inverse of [`Isa::name`].
    pub fn from_name(name: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.name() == name)
    }

    /// Whether this CPU can run the kernel.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Reference => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => std::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Gfni => {
                std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("gfni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The best kernel this CPU supports.
    pub fn detect() -> Isa {
        *Isa::available()
            .last()
            .expect("Reference is always available")
    }

    /// All kernels this CPU supports, `Reference` first, best last.
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.is_supported()).collect()
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Access to a list of (possibly missing) data blocks.
pub(crate) trait Blocks {
    fn count(&self) -> usize;
    fn block(&self, i: usize) -> Option<&[u8]>;
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn ptr(&self, i: usize) -> Option<*const u8> {
        self.block(i).map(<[u8]>::as_ptr)
    }
}

impl Blocks for [&[u8]] {
    #[inline(always)]
    fn count(&self) -> usize {
        self.len()
    }
    #[inline(always)]
    fn block(&self, i: usize) -> Option<&[u8]> {
        Some(self[i])
    }
}

impl Blocks for [Option<&[u8]>] {
    #[inline(always)]
    fn count(&self) -> usize {
        self.len()
    }
    #[inline(always)]
    fn block(&self, i: usize) -> Option<&[u8]> {
        self[i]
    }
}

/// Coefficients (A, B) with Dx = A·(P⊕Pxy) ⊕ B·(Q⊕Qxy) for missing x < y.
pub(crate) fn rec2_coefs(x: usize, y: usize) -> (u8, u8) {
    let (gx, gy) = (gf::exp2(x), gf::exp2(y));
    let denom = gf::inv(gx ^ gy);
    (gf::mul(gy, denom), denom)
}

/// Maximum number of data blocks for Q (the generator has order 255).
pub const MAX_Q_DATA_BLOCKS: usize = 255;

const ISA_UNKNOWN: u8 = u8::MAX;
static BEST: AtomicU8 = AtomicU8::new(ISA_UNKNOWN);

/// Parity engine bound to one kernel family.
#[derive(Clone, Copy, Debug)]
pub struct Parity {
    isa: Isa,
}

macro_rules! dispatch {
    ($self:ident, $f:ident($($arg:expr),*)) => {
        match $self.isa {
            Isa::Reference => reference::$f($($arg),*),
            // A `Parity` holding a SIMD ISA is only constructed after
            // run-time detection (`Parity::new`/`best`), and the caller
            // checked lengths and block counts.
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX2 detected (see above); lengths/counts checked.
            Isa::Avx2 => unsafe { x86::avx2::$f($($arg),*) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX-512F/BW detected; lengths/counts checked.
            Isa::Avx512 => unsafe { x86::avx512::$f($($arg),*) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX-512F/BW + GFNI detected; lengths/counts checked.
            Isa::Gfni => unsafe { x86::gfni::$f($($arg),*) },
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!("SIMD kernel on a non-x86_64 target"),
        }
    };
}

fn check_lens(what: &str, len: usize, blocks: impl IntoIterator<Item = usize>) {
    for (i, l) in blocks.into_iter().enumerate() {
        assert!(l == len, "{what}: block {i} has length {l}, expected {len}");
    }
}

/// Indices of the `None` entries; asserts there are exactly `want`.
fn missing(what: &str, data: &[Option<&[u8]>], want: usize) -> [usize; 2] {
    let mut idx = [usize::MAX; 2];
    let mut k = 0;
    for (i, d) in data.iter().enumerate() {
        if d.is_none() {
            assert!(k < want, "{what}: more than {want} missing data block(s)");
            idx[k] = i;
            k += 1;
        }
    }
    assert!(
        k == want,
        "{what}: expected {want} missing data block(s), found {k}"
    );
    idx
}

impl Parity {
    /// `None` if this CPU lacks the ISA.
    pub fn new(isa: Isa) -> Option<Parity> {
        isa.is_supported().then_some(Parity { isa })
    }

    /// The best supported kernel; detection is cached, cheap to call per I/O.
    #[inline]
    pub fn best() -> Parity {
        let v = BEST.load(Ordering::Relaxed);
        if let Some(&isa) = Isa::ALL.get(v as usize) {
            return Parity { isa };
        }
        let isa = Isa::detect();
        BEST.store(isa as u8, Ordering::Relaxed);
        Parity { isa }
    }

    /// The portable kernel (always available).
    pub fn reference() -> Parity {
        Parity {
            isa: Isa::Reference,
        }
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// `dst ^= src`.
    pub fn xor_into(&self, dst: &mut [u8], src: &[u8]) {
        assert_eq!(dst.len(), src.len(), "xor_into: length mismatch");
        dispatch!(self, xor_into(dst, src))
    }

    /// `p = XOR of data` (`data.len() >= 1`).
    pub fn gen_p(&self, data: &[&[u8]], p: &mut [u8]) {
        assert!(!data.is_empty(), "gen_p: no data blocks");
        check_lens("gen_p", p.len(), data.iter().map(|d| d.len()));
        dispatch!(self, gen_p(data, p))
    }

    /// P and Q of `data` (`data.len()` in `1..=255`).
    pub fn gen_pq(&self, data: &[&[u8]], p: &mut [u8], q: &mut [u8]) {
        assert!(
            (1..=MAX_Q_DATA_BLOCKS).contains(&data.len()),
            "gen_pq: {} data blocks (must be 1..=255)",
            data.len()
        );
        assert_eq!(p.len(), q.len(), "gen_pq: P/Q length mismatch");
        check_lens("gen_pq", p.len(), data.iter().map(|d| d.len()));
        dispatch!(self, gen_pq(data, p, q))
    }

    /// `dst ^= coef·src` (read-modify-write update of Q).
    pub fn mul_xor_into(&self, dst: &mut [u8], src: &[u8], coef: u8) {
        assert_eq!(dst.len(), src.len(), "mul_xor_into: length mismatch");
        match coef {
            0 => {}
            1 => self.xor_into(dst, src),
            _ => dispatch!(self, mul_xor_into(dst, src, coef)),
        }
    }

    /// Exactly one entry of `data` is `None` (index x): `out = D_x`,
    /// recovered from Q and the other data blocks.
    pub fn recover_data_with_q(&self, data: &[Option<&[u8]>], q: &[u8], out: &mut [u8]) {
        assert!(
            data.len() <= MAX_Q_DATA_BLOCKS,
            "recover_data_with_q: more than 255 data blocks"
        );
        let [x, _] = missing("recover_data_with_q", data, 1);
        assert_eq!(
            q.len(),
            out.len(),
            "recover_data_with_q: Q/out length mismatch"
        );
        check_lens(
            "recover_data_with_q",
            q.len(),
            data.iter().flatten().map(|d| d.len()),
        );
        dispatch!(self, recover_data_with_q(data, x, q, out))
    }

    /// Exactly two entries are `None` (indices a < b): recover both from P
    /// and Q into `out_a` (D_a) and `out_b` (D_b).
    pub fn recover_two_data(
        &self,
        data: &[Option<&[u8]>],
        p: &[u8],
        q: &[u8],
        out_a: &mut [u8],
        out_b: &mut [u8],
    ) {
        assert!(
            data.len() <= MAX_Q_DATA_BLOCKS,
            "recover_two_data: more than 255 data blocks"
        );
        let [a, b] = missing("recover_two_data", data, 2);
        let len = p.len();
        check_lens("recover_two_data", len, [q.len(), out_a.len(), out_b.len()]);
        check_lens(
            "recover_two_data",
            len,
            data.iter().flatten().map(|d| d.len()),
        );
        dispatch!(self, recover_two_data(data, (a, b), p, q, out_a, out_b))
    }
}
