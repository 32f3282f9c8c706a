//! Progress of a long job: an indicatif bar with ETA on a terminal, plain lines otherwise
//! (logs and pipes get a line every few seconds, not a stream of redraws).

use crate::units::human;
use damocles_engine::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How often plain progress lines are printed.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

pub struct Meter {
    what: String,
    bar: Option<ProgressBar>,
    last_line: Option<Instant>,
}

impl Meter {
    pub fn new(what: &str) -> Meter {
        let bar = std::io::stdout().is_terminal().then(|| {
            let b = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stdout());
            let style = ProgressStyle::with_template("{prefix} [{wide_bar}] {percent:>3}% {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            b.set_style(style);
            b.set_prefix(what.to_string());
            b
        });
        Meter {
            what: what.to_string(),
            bar,
            last_line: None,
        }
    }

    pub fn update(&mut self, p: &Progress) {
        match &self.bar {
            Some(b) => {
                b.set_length(p.total.max(1));
                b.set_position(p.done.min(p.total));
                b.set_message(detail(p));
            }
            None => {
                let due = match self.last_line {
                    None => true,
                    Some(t) => t.elapsed() >= PLAIN_EVERY,
                };
                if due {
                    self.last_line = Some(Instant::now());
                    println!("{}: {}", self.what, line(p));
                }
            }
        }
    }

    /// Prints a line without disturbing the bar.
    pub fn println(&self, s: &str) {
        match &self.bar {
            Some(b) => b.println(s),
            None => println!("{s}"),
        }
    }

    /// Removes the bar; plain output gets a last line with the final figures.
    pub fn finish(self, last: Option<&Progress>) {
        match (self.bar, last) {
            (Some(b), _) => b.finish_and_clear(),
            (None, Some(p)) => println!("{}: {}", self.what, line(p)),
            (None, None) => {}
        }
    }
}

fn percent(p: &Progress) -> u64 {
    if p.total == 0 {
        0
    } else {
        (p.done.min(p.total) as u128 * 100 / p.total as u128) as u64
    }
}

fn detail(p: &Progress) -> String {
    let mut s = format!(
        "{} of {}, {}/s",
        human(p.done),
        human(p.total),
        human(p.rate)
    );
    if p.rate_limit > 0 {
        s += &format!(", limit {}/s", human(p.rate_limit));
    }
    if let Some(eta) = p.eta_seconds.filter(|_| p.done < p.total) {
        s += &format!(", ETA {}", duration(eta));
    }
    s
}

/// "42% (1.2 GiB of 3.0 GiB, 180.0 MiB/s, ETA 12s)"
pub fn line(p: &Progress) -> String {
    format!("{}% ({})", percent(p), detail(p))
}

/// "45s", "3m12s", "2h05m".
pub fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        assert_eq!(duration(45), "45s");
        assert_eq!(duration(192), "3m12s");
        assert_eq!(duration(7500), "2h05m");
        let p = Progress {
            done: 1 << 30,
            total: 4 << 30,
            rate: 100 << 20,
            eta_seconds: Some(30),
            rate_limit: 200 << 20,
        };
        assert_eq!(
            line(&p),
            "25% (1.0 GiB of 4.0 GiB, 100.0 MiB/s, limit 200.0 MiB/s, ETA 30s)"
        );
        let empty = Progress {
            done: 0,
            total: 0,
            rate: 0,
            eta_seconds: None,
            rate_limit: 0,
        };
        assert_eq!(line(&empty), "0% (0 B of 0 B, 0 B/s)");
    }
}
