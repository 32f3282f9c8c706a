//! Every available kernel against the reference, the reference against a naive
//! gf::mul definition, and erasure round trips. Buffers are deliberately
//! misaligned (sub-slices starting at offsets 1..=63 of larger Vecs).

use damocles_parity::{gf, Isa, Parity};
use proptest::prelude::*;

/// `n` blocks of `len` bytes, block i starting at a misaligned offset.
struct Bufs {
    store: Vec<Vec<u8>>,
    offs: Vec<usize>,
    len: usize,
}

fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

impl Bufs {
    fn new(n: usize, len: usize, seed: u64) -> Bufs {
        let mut s = seed | 1;
        let mut store = Vec::new();
        let mut offs = Vec::new();
        for _ in 0..n {
            let off = 1 + (rng(&mut s) % 63) as usize;
            let v: Vec<u8> = (0..len + 64).map(|_| rng(&mut s) as u8).collect();
            store.push(v);
            offs.push(off);
        }
        Bufs { store, offs, len }
    }
    fn get(&self, i: usize) -> &[u8] {
        &self.store[i][self.offs[i]..self.offs[i] + self.len]
    }
    fn all(&self) -> Vec<&[u8]> {
        (0..self.store.len()).map(|i| self.get(i)).collect()
    }
}

/// A misaligned output buffer pre-filled with garbage.
struct Out {
    v: Vec<u8>,
    off: usize,
    len: usize,
}

impl Out {
    fn new(len: usize, off: usize) -> Out {
        Out {
            v: vec![0xa5; len + 64],
            off: 1 + off % 63,
            len,
        }
    }
    fn from(src: &[u8], off: usize) -> Out {
        let mut o = Out::new(src.len(), off);
        o.get_mut().copy_from_slice(src);
        o
    }
    fn get(&self) -> &[u8] {
        &self.v[self.off..self.off + self.len]
    }
    fn get_mut(&mut self) -> &mut [u8] {
        &mut self.v[self.off..self.off + self.len]
    }
    /// Bytes around the window must be untouched.
    fn check_guard(&self) {
        assert!(
            self.v[..self.off].iter().all(|&b| b == 0xa5),
            "write before buffer"
        );
        assert!(
            self.v[self.off + self.len..].iter().all(|&b| b == 0xa5),
            "write after buffer"
        );
    }
}

/// Every kernel this CPU runs (the reference first). The first call names,
/// on stderr past the test harness' capture, the kernels it cannot run, so a
/// green run on a machine without AVX-512 or GFNI says what it did not test.
fn simd_kernels() -> Vec<Parity> {
    static NOTE: std::sync::Once = std::sync::Once::new();
    NOTE.call_once(|| {
        let missing: Vec<&str> = Isa::ALL
            .into_iter()
            .filter(|i| !i.is_supported())
            .map(Isa::name)
            .collect();
        let msg = if missing.is_empty() {
            "parity kernels: every kernel ran (this CPU has them all)\n".to_string()
        } else {
            format!(
                "parity kernels NOT tested (this CPU lacks them): {}\n",
                missing.join(", ")
            )
        };
        // `std::io::stderr()` rather than `eprintln!`, which the harness
        // captures for passing tests.
        let _ = std::io::Write::write_all(&mut std::io::stderr(), msg.as_bytes());
    });
    Isa::available()
        .into_iter()
        .map(|i| Parity::new(i).unwrap())
        .collect()
}

fn naive_pq(data: &[&[u8]], len: usize) -> (Vec<u8>, Vec<u8>) {
    let mut p = vec![0u8; len];
    let mut q = vec![0u8; len];
    for (i, d) in data.iter().enumerate() {
        for j in 0..len {
            p[j] ^= d[j];
            q[j] ^= gf::mul(gf::exp2(i), d[j]);
        }
    }
    (p, q)
}

/// Short, page-sized and (rarely) past the SIMD kernels' 16 KiB threshold
/// for peeling an alignment head.
fn lens() -> impl Strategy<Value = usize> {
    prop_oneof![
        8 => 0usize..=130,
        8 => 0usize..=4096,
        1 => 16_000usize..=17_000,
    ]
}

fn pq(par: Parity, data: &[&[u8]], len: usize, off: usize) -> (Vec<u8>, Vec<u8>) {
    let mut p = Out::new(len, off);
    let mut q = Out::new(len, off + 17);
    par.gen_pq(data, p.get_mut(), q.get_mut());
    p.check_guard();
    q.check_guard();
    (p.get().to_vec(), q.get().to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn reference_matches_naive(n in 1usize..=32, len in lens(), seed: u64) {
        let b = Bufs::new(n, len, seed);
        let data = b.all();
        let (np, nq) = naive_pq(&data, len);
        let (p, q) = pq(Parity::reference(), &data, len, seed as usize);
        prop_assert_eq!(&p, &np);
        prop_assert_eq!(&q, &nq);
        let mut gp = Out::new(len, 5);
        Parity::reference().gen_p(&data, gp.get_mut());
        prop_assert_eq!(gp.get(), &np[..]);
        // mul_xor_into / xor_into against gf::mul
        let c = seed as u8;
        let mut d = Out::from(data[0], 9);
        Parity::reference().mul_xor_into(d.get_mut(), data[n - 1], c);
        let want: Vec<u8> = (0..len).map(|j| data[0][j] ^ gf::mul(c, data[n - 1][j])).collect();
        prop_assert_eq!(d.get(), &want[..]);
        let mut d = Out::from(data[0], 3);
        Parity::reference().xor_into(d.get_mut(), data[n - 1]);
        let want: Vec<u8> = (0..len).map(|j| data[0][j] ^ data[n - 1][j]).collect();
        prop_assert_eq!(d.get(), &want[..]);
    }

    #[test]
    fn kernels_match_reference(n in 1usize..=32, len in lens(), seed: u64, coef: u8) {
        let b = Bufs::new(n, len, seed);
        compare_kernels(&b.all(), len, seed, coef)?;
    }
}

/// Every kernel against the reference for every operation on `data`
/// (1..=255 blocks of `len` bytes), with misaligned outputs.
fn compare_kernels(data: &[&[u8]], len: usize, seed: u64, coef: u8) -> Result<(), TestCaseError> {
    let n = data.len();
    let r = Parity::reference();
    let (rp, rq) = pq(r, data, len, 0);
    let mut rgp = Out::new(len, 0);
    r.gen_p(data, rgp.get_mut());
    let mut rx = Out::from(data[0], 0);
    r.xor_into(rx.get_mut(), data[n - 1]);
    let mut rm = Out::from(data[0], 0);
    r.mul_xor_into(rm.get_mut(), data[n - 1], coef);

    let mut s = seed;
    let x = (rng(&mut s) % n as u64) as usize;
    let mut with1: Vec<Option<&[u8]>> = data.iter().copied().map(Some).collect();
    with1[x] = None;
    let mut r1 = Out::new(len, 0);
    r.recover_data_with_q(&with1, &rq, r1.get_mut());
    let two = (n >= 2).then(|| {
        let y = (x + 1 + (rng(&mut s) % (n as u64 - 1)) as usize) % n;
        let (a, b) = (x.min(y), x.max(y));
        let mut with2: Vec<Option<&[u8]>> = data.iter().copied().map(Some).collect();
        with2[a] = None;
        with2[b] = None;
        let mut oa = Out::new(len, 0);
        let mut ob = Out::new(len, 0);
        r.recover_two_data(&with2, &rp, &rq, oa.get_mut(), ob.get_mut());
        (with2, oa.get().to_vec(), ob.get().to_vec())
    });

    for par in simd_kernels() {
        let name = par.isa().name();
        let o = rng(&mut s) as usize;
        let (p, q) = pq(par, data, len, o);
        prop_assert_eq!(&p, &rp, "gen_pq P {}", name);
        prop_assert_eq!(&q, &rq, "gen_pq Q {}", name);

        let mut gp = Out::new(len, o + 1);
        par.gen_p(data, gp.get_mut());
        gp.check_guard();
        prop_assert_eq!(gp.get(), rgp.get(), "gen_p {}", name);

        let mut xo = Out::from(data[0], o + 2);
        par.xor_into(xo.get_mut(), data[n - 1]);
        xo.check_guard();
        prop_assert_eq!(xo.get(), rx.get(), "xor_into {}", name);

        let mut mo = Out::from(data[0], o + 3);
        par.mul_xor_into(mo.get_mut(), data[n - 1], coef);
        mo.check_guard();
        prop_assert_eq!(mo.get(), rm.get(), "mul_xor_into {}", name);

        let qin = Out::from(&rq, o + 4);
        let mut o1 = Out::new(len, o + 5);
        par.recover_data_with_q(&with1, qin.get(), o1.get_mut());
        o1.check_guard();
        prop_assert_eq!(o1.get(), r1.get(), "recover_data_with_q {}", name);
        // Round trip: the recovered block is the erased one.
        prop_assert_eq!(o1.get(), data[x], "recover_data_with_q round trip {}", name);

        if let Some((with2, ra, rb)) = &two {
            let pin = Out::from(&rp, o + 6);
            let mut oa = Out::new(len, o + 7);
            let mut ob = Out::new(len, o + 8);
            par.recover_two_data(with2, pin.get(), qin.get(), oa.get_mut(), ob.get_mut());
            oa.check_guard();
            ob.check_guard();
            prop_assert_eq!(oa.get(), &ra[..], "recover_two_data a {}", name);
            prop_assert_eq!(ob.get(), &rb[..], "recover_two_data b {}", name);
            let a = with2.iter().position(|d| d.is_none()).unwrap();
            let b = with2.iter().rposition(|d| d.is_none()).unwrap();
            prop_assert_eq!(oa.get(), data[a], "recover_two_data round trip a {}", name);
            prop_assert_eq!(ob.get(), data[b], "recover_two_data round trip b {}", name);
        }
    }
    Ok(())
}

/// Long blocks that share one misalignment (as buffers from one allocator
/// do), where the SIMD kernels peel a head column to reach aligned loads,
/// and lengths around the peeling threshold: every kernel, every operation,
/// against the reference.
#[test]
fn long_blocks_shared_misalignment() {
    let shapes = [
        (8usize, 256usize << 10),
        (3, (64 << 10) + 37),
        (5, (16 << 10) - 1),
        (5, 16 << 10),
        (4, (16 << 10) + 1),
        (2, 4095),
    ];
    for (n, len) in shapes {
        for mis in [0usize, 1, 16, 32, 63] {
            let stride = len.div_ceil(64) * 64 + 64;
            let mut s = (n * 131 + len + mis) as u64 | 1;
            let store: Vec<u8> = (0..stride * n + 128).map(|_| rng(&mut s) as u8).collect();
            let base = (64 - store.as_ptr() as usize % 64) % 64 + mis;
            let data: Vec<&[u8]> = (0..n).map(|i| &store[base + i * stride..][..len]).collect();
            assert!(data.iter().all(|d| d.as_ptr() as usize % 64 == mis));
            if let Err(e) = compare_kernels(&data, len, s, (len + mis) as u8) {
                panic!("{n} x {len} at {mis} mod 64: {e}");
            }
        }
    }
}

/// Every single and double erasure of a stripe, every kernel.
#[test]
fn exhaustive_erasures_round_trip() {
    for &(n, len) in &[(1usize, 77usize), (2, 64), (5, 200), (12, 131), (20, 1000)] {
        let b = Bufs::new(n, len, n as u64 * 1000 + len as u64);
        let data = b.all();
        for par in simd_kernels() {
            let (p, q) = pq(par, &data, len, 3);
            for x in 0..n {
                let mut w: Vec<Option<&[u8]>> = data.iter().copied().map(Some).collect();
                w[x] = None;
                let mut out = vec![0u8; len];
                par.recover_data_with_q(&w, &q, &mut out);
                assert_eq!(out, data[x], "{} rec1 n={n} x={x}", par.isa());
                for y in x + 1..n {
                    let mut w2 = w.clone();
                    w2[y] = None;
                    let mut oa = vec![0u8; len];
                    let mut ob = vec![0u8; len];
                    par.recover_two_data(&w2, &p, &q, &mut oa, &mut ob);
                    assert_eq!(oa, data[x], "{} rec2 n={n} x={x} y={y}", par.isa());
                    assert_eq!(ob, data[y], "{} rec2 n={n} x={x} y={y}", par.isa());
                }
            }
        }
    }
}

/// 255 blocks (maximum), long enough to hit the unrolled SIMD loop.
#[test]
fn max_blocks() {
    let (n, len) = (255, 300);
    let b = Bufs::new(n, len, 7);
    let data = b.all();
    let (np, nq) = naive_pq(&data, len);
    for par in simd_kernels() {
        let (p, q) = pq(par, &data, len, 1);
        assert_eq!(p, np, "{}", par.isa());
        assert_eq!(q, nq, "{}", par.isa());
        let mut w: Vec<Option<&[u8]>> = data.iter().copied().map(Some).collect();
        w[0] = None;
        w[254] = None;
        let mut oa = vec![0u8; len];
        let mut ob = vec![0u8; len];
        par.recover_two_data(&w, &p, &q, &mut oa, &mut ob);
        assert_eq!(oa, data[0]);
        assert_eq!(ob, data[254]);
    }
}

/// Known vector: Q of blocks filled with 1 is Σ g^i per byte.
#[test]
fn known_q_vector() {
    let ones = vec![1u8; 100];
    let data: Vec<&[u8]> = vec![&ones; 9];
    let want_q = (0..9).fold(0u8, |a, i| a ^ gf::exp2(i));
    let want_p = 1u8; // nine ones
    for par in simd_kernels() {
        let (p, q) = pq(par, &data, 100, 0);
        assert!(p.iter().all(|&b| b == want_p));
        assert!(q.iter().all(|&b| b == want_q), "{}", par.isa());
    }
    // Single block: P = Q = D0.
    let d0: Vec<u8> = (0..=255u8).collect();
    for par in simd_kernels() {
        let (p, q) = pq(par, &[&d0], 256, 0);
        assert_eq!(p, d0);
        assert_eq!(q, d0);
    }
}

#[test]
fn isa_detection() {
    let av = Isa::available();
    assert_eq!(av[0], Isa::Reference);
    assert_eq!(*av.last().unwrap(), Isa::detect());
    assert_eq!(Parity::best().isa(), Isa::detect());
    assert_eq!(Parity::best().isa(), Isa::detect()); // cached path
    for isa in Isa::ALL {
        assert_eq!(Parity::new(isa).is_some(), av.contains(&isa));
        assert_eq!(Isa::from_name(isa.name()), Some(isa));
    }
    assert_eq!(Isa::Gfni.name(), "avx512+gfni");
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        assert!(av.contains(&Isa::Avx2));
    }
}

#[test]
#[should_panic(expected = "expected 1 missing")]
fn rec1_needs_exactly_one_missing() {
    let a = [0u8; 8];
    let data = [Some(&a[..]), Some(&a[..])];
    Parity::best().recover_data_with_q(&data, &a, &mut [0u8; 8]);
}

#[test]
#[should_panic(expected = "more than 2 missing")]
fn rec2_needs_exactly_two_missing() {
    let a = [0u8; 8];
    let data: [Option<&[u8]>; 3] = [None, None, None];
    Parity::best().recover_two_data(&data, &a, &a, &mut [0u8; 8], &mut [0u8; 8]);
}

#[test]
#[should_panic(expected = "length")]
fn gen_pq_length_mismatch() {
    let a = [0u8; 8];
    let b = [0u8; 9];
    Parity::best().gen_pq(&[&a, &b], &mut [0u8; 8], &mut [0u8; 8]);
}

#[test]
#[should_panic(expected = "1..=255")]
fn gen_pq_too_many_blocks() {
    let a = [0u8; 1];
    let data = vec![&a[..]; 256];
    Parity::best().gen_pq(&data, &mut [0u8; 1], &mut [0u8; 1]);
}

#[test]
#[should_panic(expected = "length mismatch")]
fn xor_into_length_mismatch() {
    Parity::best().xor_into(&mut [0u8; 3], &[0u8; 4]);
}

/// Independent oracle: rusty_erasure's (ISA-L-identical) RAID-6 P+Q.
#[test]
fn matches_rusty_erasure_pq() {
    for &(n, len) in &[
        (2usize, 0usize),
        (2, 1),
        (3, 33),
        (4, 4096),
        (8, 1000),
        (17, 777),
        (32, 65),
    ] {
        let b = Bufs::new(n, len, 0xdead ^ (n * len) as u64);
        let data = b.all();
        let mut ep = vec![0u8; len];
        let mut eq = vec![0u8; len];
        rusty_erasure::raid::pq_gen(&data, &mut ep, &mut eq).unwrap();
        for par in simd_kernels() {
            let (p, q) = pq(par, &data, len, n);
            assert_eq!(p, ep, "{} n={n} len={len}", par.isa());
            assert_eq!(q, eq, "{} n={n} len={len}", par.isa());
        }
    }
}
