//! AVX2: shift/compare/xor for ·g, two `vpshufb` nibble tables for ·c.

use core::arch::x86_64::*;

use super::Vector;
use crate::gf;

pub(crate) struct Avx2;

// SAFETY: every method only uses AVX2 (and baseline SSE2) intrinsics; the
// trait contract makes the caller guarantee AVX2 support.
unsafe impl Vector for Avx2 {
    type V = __m256i;
    type C = (__m256i, __m256i);
    const W: usize = 32;

    #[inline(always)]
    unsafe fn zero() -> __m256i {
        // SAFETY: AVX support guaranteed by the trait contract.
        unsafe { _mm256_setzero_si256() }
    }

    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m256i {
        // SAFETY: `p` readable for 32 bytes (contract); loadu is unaligned.
        unsafe { _mm256_loadu_si256(p as *const __m256i) }
    }

    #[inline(always)]
    unsafe fn store(p: *mut u8, v: __m256i) {
        // SAFETY: `p` writable for 32 bytes (contract); storeu is unaligned.
        unsafe { _mm256_storeu_si256(p as *mut __m256i, v) }
    }

    #[inline(always)]
    unsafe fn load_n(p: *const u8, n: usize) -> __m256i {
        let mut buf = [0u8; 32];
        // SAFETY: `p` readable for `n < 32` bytes (contract), `buf` has 32.
        unsafe {
            core::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n);
            _mm256_loadu_si256(buf.as_ptr() as *const __m256i)
        }
    }

    #[inline(always)]
    unsafe fn store_n(p: *mut u8, v: __m256i, n: usize) {
        let mut buf = [0u8; 32];
        // SAFETY: `buf` has 32 bytes; `p` writable for `n < 32` (contract).
        unsafe {
            _mm256_storeu_si256(buf.as_mut_ptr() as *mut __m256i, v);
            core::ptr::copy_nonoverlapping(buf.as_ptr(), p, n);
        }
    }

    #[inline(always)]
    unsafe fn xor(a: __m256i, b: __m256i) -> __m256i {
        // SAFETY: AVX2 support guaranteed by the trait contract.
        unsafe { _mm256_xor_si256(a, b) }
    }

    #[inline(always)]
    unsafe fn mul2(a: __m256i) -> __m256i {
        // SAFETY: AVX2 support guaranteed by the trait contract.
        unsafe {
            // 0xff in bytes whose top bit is set.
            let m = _mm256_cmpgt_epi8(_mm256_setzero_si256(), a);
            let a2 = _mm256_add_epi8(a, a);
            _mm256_xor_si256(a2, _mm256_and_si256(m, _mm256_set1_epi8(0x1d)))
        }
    }

    #[inline(always)]
    unsafe fn prep(c: u8) -> (__m256i, __m256i) {
        let (lo, hi) = gf::nibble_tables(c);
        // SAFETY: the tables are 16 bytes each; AVX2 guaranteed by contract.
        unsafe {
            (
                _mm256_broadcastsi128_si256(_mm_loadu_si128(lo.as_ptr() as *const __m128i)),
                _mm256_broadcastsi128_si256(_mm_loadu_si128(hi.as_ptr() as *const __m128i)),
            )
        }
    }

    #[inline(always)]
    unsafe fn mulc(a: __m256i, (tl, th): (__m256i, __m256i)) -> __m256i {
        // SAFETY: AVX2 support guaranteed by the trait contract.
        unsafe {
            let m = _mm256_set1_epi8(0x0f);
            let lo = _mm256_and_si256(a, m);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(a), m);
            _mm256_xor_si256(_mm256_shuffle_epi8(tl, lo), _mm256_shuffle_epi8(th, hi))
        }
    }
}

super::entry_points!(Avx2, "avx2", 4);
