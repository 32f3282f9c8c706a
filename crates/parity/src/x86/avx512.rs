//! AVX-512BW: mask-register ·g, `vpternlogd` three-way XOR, `vpshufb` nibble
//! tables for ·c, masked loads/stores for tails.

use core::arch::x86_64::*;

use super::Vector;
use crate::gf;

pub(crate) struct Avx512;

#[inline(always)]
fn tail_mask(n: usize) -> __mmask64 {
    debug_assert!(n < 64);
    (1u64 << n) - 1
}

/// Masked tail load shared with the GFNI kernels.
///
/// # Safety
/// AVX-512BW available; `p` readable for `n < 64` bytes.
#[inline(always)]
pub(crate) unsafe fn load_n(p: *const u8, n: usize) -> __m512i {
    // SAFETY: masked-off bytes are not accessed (and faults on them are
    // suppressed), so only the `n` readable bytes are touched.
    unsafe { _mm512_maskz_loadu_epi8(tail_mask(n), p as *const i8) }
}

/// Masked tail store shared with the GFNI kernels.
///
/// # Safety
/// AVX-512BW available; `p` writable for `n < 64` bytes.
#[inline(always)]
pub(crate) unsafe fn store_n(p: *mut u8, v: __m512i, n: usize) {
    // SAFETY: only the `n` unmasked bytes are written.
    unsafe { _mm512_mask_storeu_epi8(p as *mut i8, tail_mask(n), v) }
}

// SAFETY: every method only uses AVX-512F/BW intrinsics; the trait contract
// makes the caller guarantee their support.
unsafe impl Vector for Avx512 {
    type V = __m512i;
    type C = (__m512i, __m512i);
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
        unsafe { load_n(p, n) }
    }

    #[inline(always)]
    unsafe fn store_n(p: *mut u8, v: __m512i, n: usize) {
        // SAFETY: forwarded contract.
        unsafe { store_n(p, v, n) }
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
        // SAFETY: AVX-512F/BW guaranteed by the trait contract.
        unsafe {
            let k = _mm512_movepi8_mask(a);
            let a2 = _mm512_add_epi8(a, a);
            _mm512_xor_si512(a2, _mm512_maskz_mov_epi8(k, _mm512_set1_epi8(0x1d)))
        }
    }

    #[inline(always)]
    unsafe fn mul2_xor(a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: AVX-512F/BW guaranteed by the trait contract.
        unsafe {
            let k = _mm512_movepi8_mask(a);
            let a2 = _mm512_add_epi8(a, a);
            let r = _mm512_maskz_mov_epi8(k, _mm512_set1_epi8(0x1d));
            _mm512_ternarylogic_epi32::<0x96>(a2, r, b)
        }
    }

    #[inline(always)]
    unsafe fn prep(c: u8) -> (__m512i, __m512i) {
        let (lo, hi) = gf::nibble_tables(c);
        // SAFETY: the tables are 16 bytes each; AVX-512F by contract.
        unsafe {
            (
                _mm512_broadcast_i32x4(_mm_loadu_si128(lo.as_ptr() as *const __m128i)),
                _mm512_broadcast_i32x4(_mm_loadu_si128(hi.as_ptr() as *const __m128i)),
            )
        }
    }

    #[inline(always)]
    unsafe fn mulc(a: __m512i, (tl, th): (__m512i, __m512i)) -> __m512i {
        // SAFETY: AVX-512F/BW guaranteed by the trait contract.
        unsafe {
            let m = _mm512_set1_epi8(0x0f);
            let lo = _mm512_and_si512(a, m);
            let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(a), m);
            _mm512_xor_si512(_mm512_shuffle_epi8(tl, lo), _mm512_shuffle_epi8(th, hi))
        }
    }
}

super::entry_points!(Avx512, "avx512f,avx512bw", 4);
