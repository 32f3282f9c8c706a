//! Prints `damocles_parity::bench::run` as a table.
//! `cargo run --release --example bench -p damocles-parity [-- <ms per row> [isa names...]]`

use std::time::Duration;

use damocles_parity::{bench, Isa};

fn main() {
    let mut args = std::env::args().skip(1);
    let ms = args.next().and_then(|s| s.parse().ok()).unwrap_or(200);
    let mut isas: Vec<Isa> = args.filter_map(|s| Isa::from_name(&s)).collect();
    if isas.is_empty() {
        isas = Isa::available();
    }
    println!(
        "{:<12} {:<20} {:>6} {:>8} {:>9}",
        "isa", "op", "blocks", "block", "GB/s"
    );
    for r in bench::run_with(&isas, &bench::SHAPES, Duration::from_millis(ms)) {
        println!(
            "{:<12} {:<20} {:>6} {:>7}K {:>9.1}",
            r.isa.name(),
            r.op,
            r.data_blocks,
            r.block_len >> 10,
            r.gbps
        );
    }
}
