//! gen_pq on snapraid's test shape (8 data blocks, 256 KiB by default) over
//! four buffer layouts: one allocation with the blocks back to back at a
//! page boundary (every block at the same offset in its page), the same with
//! snapraid's 1792-byte displacement between blocks, and both again with
//! every buffer 16 bytes past a 64-byte boundary (what `Vec`s of this size
//! get from the allocator). GB/s of data, best of 40 batches.
//! `cargo run --release -p damocles-parity --example layout [-- <block bytes> [isa]]`

use std::hint::black_box;
use std::time::Instant;

use damocles_parity::{Isa, Parity};

fn time(par: Parity, data: &[&[u8]], p: &mut [u8], q: &mut [u8]) -> f64 {
    let bytes = (data.len() * p.len()) as f64;
    let mut best = 0f64;
    for _ in 0..40 {
        let t = Instant::now();
        for _ in 0..50 {
            par.gen_pq(black_box(data), black_box(&mut *p), black_box(&mut *q));
        }
        best = best.max(50.0 * bytes / t.elapsed().as_secs_f64());
    }
    best / 1e9
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let len: usize = match args.first() {
        Some(s) => s.parse().unwrap_or_else(|_| {
            eprintln!("layout: block bytes: expected a number, got {s:?}");
            std::process::exit(2)
        }),
        None => 256 << 10,
    };
    let isa = match args.get(1) {
        Some(s) => Isa::from_name(s).unwrap_or_else(|| {
            eprintln!("layout: unknown kernel {s:?}");
            std::process::exit(2)
        }),
        None => Isa::detect(),
    };
    let Some(par) = Parity::new(isa) else {
        eprintln!("layout: this CPU cannot run {isa}");
        std::process::exit(2)
    };
    let nd = 8;
    for (gap, skew) in [(0usize, 0usize), (1792, 0), (0, 16), (1792, 16)] {
        let stride = len.div_ceil(64) * 64 + gap;
        let mut big = vec![0u8; stride * (nd + 2) + 8192];
        for (i, b) in big.iter_mut().enumerate() {
            *b = (i * 7 + i / 13) as u8;
        }
        let base = (4096 - big.as_ptr() as usize % 4096) % 4096 + skew;
        let (d, pq) = big[base..].split_at_mut(stride * nd);
        let data: Vec<&[u8]> = (0..nd).map(|i| &d[i * stride..][..len]).collect();
        let (p, q) = pq.split_at_mut(stride);
        let g = time(par, &data, &mut p[..len], &mut q[..len]);
        println!("{isa} {nd} x {len} B, gap {gap:>4}, {skew:>2} mod 64: {g:5.1} GB/s");
    }
}
