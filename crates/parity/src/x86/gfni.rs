//! AVX-512 + GFNI: every constant multiplication (including ·g) is one
//! `gf2p8affineqb` with the constant's 8×8 bit matrix. (`gf2p8mulb` is not
//! usable: it reduces by the AES polynomial 0x11b, not 0x11d.)

use core::arch::x86_64::*;

use super::Vector;
use crate::gf;

pub(crate) struct Gfni;

/// `gf::affine_matrix(2)`, checked by a unit test.
const MUL2_MATRIX: i64 = 0x8001_8284_8810_2040_u64 as i64;
/// `gf::affine_matrix(4)`, checked by a unit test.
const MUL4_MATRIX: i64 = 0x4080_41c2_c488_1020_u64 as i64;

// SAFETY: every method only uses AVX-512F/BW and GFNI intrinsics; the trait
// contract makes the caller guarantee their support.
unsafe impl Vector for Gfni {
    type V = __m512i;
    type C = __m512i;
    const W: usize = 64;

    #[inline(always)]
    unsafe fn zero() -> __m512i {
        // SAFETY: AVX-512F guaranteed by the trait contract.
        unsafe { _mm512_setzero_si512() }
    }

    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m512i {
        // SAFETY: `p` readable for 64 bytes (contract); unaligned load.
        unsafe { _mm512_loadu_si512(p as *const __m512i) }
    }

    #[inline(always)]
    unsafe fn store(p: *mut u8, v: __m512i) {
        // SAFETY: `p` writable for 64 bytes (contract); unaligned store.
        unsafe { _mm512_storeu_si512(p as *mut __m512i, v) }
    }

    #[inline(always)]
    unsafe fn load_n(p: *const u8, n: usize) -> __m512i {
        // SAFETY: forwarded contract.
        unsafe { super::avx512::load_n(p, n) }
    }

    #[inline(always)]
    unsafe fn store_n(p: *mut u8, v: __m512i, n: usize) {
        // SAFETY: forwarded contract.
        unsafe { super::avx512::store_n(p, v, n) }
    }

    #[inline(always)]
    unsafe fn xor(a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: AVX-512F guaranteed by the trait contract.
        unsafe { _mm512_xor_si512(a, b) }
    }

    #[inline(always)]
    unsafe fn xor3(a: __m512i, b: __m512i, c: __m512i) -> __m512i {
        // SAFETY: AVX-512F guaranteed by the trait contract.
        unsafe { _mm512_ternarylogic_epi32::<0x96>(a, b, c) }
    }

    #[inline(always)]
    unsafe fn mul2(a: __m512i) -> __m512i {
        // SAFETY: AVX-512F + GFNI guaranteed by the trait contract.
        unsafe { _mm512_gf2p8affine_epi64_epi8::<0>(a, _mm512_set1_epi64(MUL2_MATRIX)) }
    }

    #[inline(always)]
    unsafe fn horner2(a: __m512i, hi: __m512i, lo: __m512i) -> __m512i {
        // SAFETY: AVX-512F + GFNI guaranteed by the trait contract.
        unsafe {
            let a4 = _mm512_gf2p8affine_epi64_epi8::<0>(a, _mm512_set1_epi64(MUL4_MATRIX));
            let h2 = _mm512_gf2p8affine_epi64_epi8::<0>(hi, _mm512_set1_epi64(MUL2_MATRIX));
            _mm512_ternarylogic_epi32::<0x96>(a4, h2, lo)
        }
    }

    #[inline(always)]
    unsafe fn prep(c: u8) -> __m512i {
        // SAFETY: AVX-512F guaranteed by the trait contract.
        unsafe { _mm512_set1_epi64(gf::affine_matrix(c) as i64) }
    }

    #[inline(always)]
    unsafe fn mulc(a: __m512i, m: __m512i) -> __m512i {
        // SAFETY: AVX-512F + GFNI guaranteed by the trait contract.
        unsafe { _mm512_gf2p8affine_epi64_epi8::<0>(a, m) }
    }
}

super::entry_points!(Gfni, "avx512f,avx512bw,gfni", 4);

#[cfg(test)]
mod tests {
    #[test]
    fn mul2_matrix() {
        assert_eq!(super::MUL2_MATRIX as u64, crate::gf::affine_matrix(2));
        assert_eq!(super::MUL4_MATRIX as u64, crate::gf::affine_matrix(4));
    }
}
