//! GF(2^8) scalar helpers (polynomial 0x11d, generator 2) — the field used by
//! the Linux md RAID-6 syndrome.

/// The reduction polynomial x^8 + x^4 + x^3 + x^2 + 1.
pub const POLY: u16 = 0x11d;

const fn build_tables() -> ([u8; 256], [u8; 512]) {
    let mut log = [0u8; 256];
    let mut exp = [0u8; 512];
    let mut x: u16 = 1;
    let mut i = 0;
    while i < 255 {
        exp[i] = x as u8;
        exp[i + 255] = x as u8;
        log[x as usize] = i as u8;
        x <<= 1;
        if x & 0x100 != 0 {
            x ^= POLY;
        }
        i += 1;
    }
    // exp[510], exp[511] are never reached by `mul` (max index 254 + 254).
    (log, exp)
}

const TABLES: ([u8; 256], [u8; 512]) = build_tables();
static LOG: [u8; 256] = TABLES.0;
static EXP: [u8; 512] = TABLES.1;

/// a·b in GF(2^8).
#[inline]
pub fn mul(a: u8, b: u8) -> u8 {
    if a == 0 || b == 0 {
        0
    } else {
        EXP[LOG[a as usize] as usize + LOG[b as usize] as usize]
    }
}

/// Multiplicative inverse. Panics on 0.
#[inline]
pub fn inv(a: u8) -> u8 {
    assert!(a != 0, "gf::inv(0)");
    EXP[255 - LOG[a as usize] as usize]
}

/// a / b. Panics if `b == 0`.
#[inline]
pub fn div(a: u8, b: u8) -> u8 {
    mul(a, inv(b))
}

/// g^i with g = 2; `i` is taken mod 255.
#[inline]
pub fn exp2(i: usize) -> u8 {
    EXP[i % 255]
}

/// Discrete logarithm base 2: `exp2(log2(a)) == a`. Panics on 0.
#[inline]
pub fn log2(a: u8) -> u8 {
    assert!(a != 0, "gf::log2(0)");
    LOG[a as usize]
}

/// 16-entry nibble tables for multiplication by `c`:
/// `c·x == lo[x & 15] ^ hi[x >> 4]`.
pub fn nibble_tables(c: u8) -> ([u8; 16], [u8; 16]) {
    let mut lo = [0u8; 16];
    let mut hi = [0u8; 16];
    for i in 0..16u8 {
        lo[i as usize] = mul(c, i);
        hi[i as usize] = mul(c, i << 4);
    }
    (lo, hi)
}

/// 8×8 bit matrix for multiplication by `c`, in the layout expected by the
/// x86 `gf2p8affineqb` instruction (row for output bit `i` in byte `7 - i`).
pub fn affine_matrix(c: u8) -> u64 {
    let mut m = 0u64;
    for i in 0..8 {
        let mut row = 0u8;
        for j in 0..8 {
            if (mul(c, 1 << j) >> i) & 1 != 0 {
                row |= 1 << j;
            }
        }
        m |= (row as u64) << (8 * (7 - i));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Carry-less multiply and reduce, bit by bit.
    fn slow_mul(a: u8, b: u8) -> u8 {
        let mut r: u16 = 0;
        let mut a = a as u16;
        let mut b = b;
        while b != 0 {
            if b & 1 != 0 {
                r ^= a;
            }
            a <<= 1;
            if a & 0x100 != 0 {
                a ^= POLY;
            }
            b >>= 1;
        }
        r as u8
    }

    #[test]
    fn mul_matches_bitwise_definition() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                assert_eq!(mul(a, b), slow_mul(a, b), "{a}*{b}");
            }
        }
    }

    #[test]
    fn known_values() {
        assert_eq!(mul(2, 0x80), 0x1d);
        assert_eq!(mul(0x53, 0xca), slow_mul(0x53, 0xca));
        assert_eq!(exp2(0), 1);
        assert_eq!(exp2(1), 2);
        assert_eq!(exp2(8), 0x1d);
        assert_eq!(exp2(255), 1);
        assert_eq!(exp2(256), 2);
        // First entries of the md raid6 gfexp table.
        let want = [
            0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x1d, 0x3a, 0x74, 0xe8,
        ];
        for (i, w) in want.iter().enumerate() {
            assert_eq!(exp2(i), *w);
        }
        assert_eq!(inv(2), 0x8e);
    }

    #[test]
    fn generator_has_order_255() {
        let mut seen = [false; 256];
        for i in 0..255 {
            let v = exp2(i);
            assert!(!seen[v as usize]);
            seen[v as usize] = true;
            assert_eq!(log2(v) as usize, i);
        }
        assert!(!seen[0]);
    }

    #[test]
    fn inverse() {
        for a in 1..=255u8 {
            assert_eq!(mul(a, inv(a)), 1);
            assert_eq!(div(a, a), 1);
        }
    }

    #[test]
    #[should_panic]
    fn inv_zero_panics() {
        inv(0);
    }

    #[test]
    fn tables_match_mul() {
        for c in 0..=255u8 {
            let (lo, hi) = nibble_tables(c);
            let m = affine_matrix(c);
            for x in 0..=255u8 {
                assert_eq!(lo[(x & 15) as usize] ^ hi[(x >> 4) as usize], mul(c, x));
                // Software model of gf2p8affineqb.
                let mut r = 0u8;
                for i in 0..8 {
                    let row = (m >> (8 * (7 - i))) as u8;
                    r |= (((row & x).count_ones() & 1) as u8) << i;
                }
                assert_eq!(r, mul(c, x));
            }
        }
    }
}
