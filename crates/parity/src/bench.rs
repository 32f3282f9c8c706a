//! Single-threaded throughput benchmark of every available kernel.

use std::hint::black_box;
use std::time::{Duration, Instant};

use crate::{Isa, Parity};

/// One measurement.
#[derive(Clone, Debug)]
pub struct BenchRow {
    pub isa: Isa,
    /// "gen_p", "gen_pq", "recover_two_data" or "recover_data_with_q".
    pub op: &'static str,
    pub data_blocks: usize,
    pub block_len: usize,
    /// 1e9 bytes of data (`data_blocks * block_len`, including the blocks
    /// being recovered) per second; best of several timing windows.
    pub gbps: f64,
}

/// The operations measured, in output order.
pub const OPS: [&str; 4] = ["gen_p", "gen_pq", "recover_two_data", "recover_data_with_q"];

/// Default stripe shapes: (data blocks, block length).
/// (8, 256 KiB) is the shape `snapraid -T` uses.
pub const SHAPES: [(usize, usize); 6] = [
    (4, 64 << 10),
    (8, 64 << 10),
    (10, 64 << 10),
    (4, 4 << 10),
    (8, 4 << 10),
    (8, 256 << 10),
];

/// Every available ISA × [`SHAPES`] × [`OPS`], each measured for at least
/// `min_time`.
pub fn run(min_time: Duration) -> Vec<BenchRow> {
    run_with(&Isa::available(), &SHAPES, min_time)
}

/// Like [`run`] with explicit ISAs and shapes (unsupported ISAs are skipped).
pub fn run_with(isas: &[Isa], shapes: &[(usize, usize)], min_time: Duration) -> Vec<BenchRow> {
    let mut rows = Vec::new();
    for &(n, len) in shapes {
        let stripe = Stripe::new(n, len);
        for &isa in isas {
            let Some(par) = Parity::new(isa) else {
                continue;
            };
            for op in OPS {
                let gbps = stripe.measure(par, op, min_time);
                rows.push(BenchRow {
                    isa,
                    op,
                    data_blocks: n,
                    block_len: len,
                    gbps,
                });
            }
        }
    }
    rows
}

struct Stripe {
    data: Vec<Vec<u8>>,
    p: Vec<u8>,
    q: Vec<u8>,
    len: usize,
}

impl Stripe {
    fn new(n: usize, len: usize) -> Stripe {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let data: Vec<Vec<u8>> = (0..n)
            .map(|_| {
                (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        seed as u8
                    })
                    .collect()
            })
            .collect();
        let mut p = vec![0; len];
        let mut q = vec![0; len];
        let refs: Vec<&[u8]> = data.iter().map(|d| &d[..]).collect();
        Parity::reference().gen_pq(&refs, &mut p, &mut q);
        Stripe { data, p, q, len }
    }

    fn measure(&self, par: Parity, op: &str, min_time: Duration) -> f64 {
        let n = self.data.len();
        let refs: Vec<&[u8]> = self.data.iter().map(|d| &d[..]).collect();
        let mut missing1: Vec<Option<&[u8]>> = refs.iter().copied().map(Some).collect();
        missing1[0] = None;
        let mut missing2 = missing1.clone();
        if n >= 2 {
            missing2[n - 1] = None;
        }
        let mut o1 = vec![0u8; self.len];
        let mut o2 = vec![0u8; self.len];
        let mut once = || match op {
            "gen_p" => par.gen_p(black_box(&refs), black_box(&mut o1)),
            "gen_pq" => par.gen_pq(black_box(&refs), black_box(&mut o1), black_box(&mut o2)),
            "recover_data_with_q" => par.recover_data_with_q(
                black_box(&missing1),
                black_box(&self.q),
                black_box(&mut o1),
            ),
            "recover_two_data" => par.recover_two_data(
                black_box(&missing2),
                black_box(&self.p),
                black_box(&self.q),
                black_box(&mut o1),
                black_box(&mut o2),
            ),
            _ => panic!("unknown op {op}"),
        };
        // Warm caches. Then calibrate a batch that takes ~2 ms (shorter than
        // a scheduler slice), time batches until `min_time` has passed and
        // report the fastest one: on a shared machine the best window is the
        // least disturbed estimate.
        once();
        let window = (min_time / 4).clamp(Duration::from_micros(200), Duration::from_millis(2));
        let mut batch = 1u64;
        loop {
            let t = Instant::now();
            for _ in 0..batch {
                once();
            }
            let e = t.elapsed();
            if e >= window / 2 || batch >= 1 << 24 {
                let scale = window.as_secs_f64() / e.as_secs_f64().max(1e-9);
                batch = ((batch as f64 * scale) as u64).max(1);
                break;
            }
            batch *= 2;
        }
        let bytes = (batch as f64) * (n * self.len) as f64;
        let start = Instant::now();
        let mut best = 0f64;
        let mut trials = 0;
        while trials < 3 || start.elapsed() < min_time {
            let t = Instant::now();
            for _ in 0..batch {
                once();
            }
            best = best.max(bytes / t.elapsed().as_secs_f64());
            trials += 1;
        }
        best / 1e9
    }
}
