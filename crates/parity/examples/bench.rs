//! Prints `damocles_parity::bench::run` as a table.
//! `cargo run --release --example bench -p damocles-parity [-- <min_ms>]`

use std::time::Duration;

fn main() {
    let ms = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    println!(
        "{:<12} {:<20} {:>6} {:>8} {:>9}",
        "isa", "op", "blocks", "block", "GB/s"
    );
    for r in damocles_parity::bench::run(Duration::from_millis(ms)) {
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
