//! `damocles bench`

use anyhow::Result;
use damocles_parity::{bench, Isa};
use std::time::Duration;

/// Measure the speed of this machine's building blocks.
#[derive(clap::Subcommand)]
pub enum Bench {
    /// GB/s (10^9 bytes of data per second, one core) of every parity kernel this CPU
    /// supports, at realistic stripe shapes.
    Parity {
        /// Seconds to spend on each measurement.
        #[arg(long, default_value_t = 0.2)]
        seconds: f64,
    },
}

pub fn run(b: Bench) -> Result<()> {
    match b {
        Bench::Parity { seconds } => {
            let t = Duration::from_secs_f64(seconds.clamp(0.01, 60.0));
            println!("best kernel on this CPU: {}", Isa::detect().name());
            println!(
                "{:<12} {:<20} {:>6} {:>9} {:>9}",
                "kernel", "operation", "data", "block", "GB/s"
            );
            for r in bench::run(t) {
                println!(
                    "{:<12} {:<20} {:>6} {:>8}K {:>9.1}",
                    r.isa.name(),
                    r.op,
                    r.data_blocks,
                    r.block_len / 1024,
                    r.gbps
                );
            }
            Ok(())
        }
    }
}
