//! Watching member requests against the limits: a member whose oldest request has waited
//! past the fail limit is failed as on an I/O error (recorded on the others, event sent,
//! rebuild asked for), and a member whose p99 latency stays over the slow limit for a
//! minute is reported. The façade runs [`Watch::tick`] on a thread of its own.

use super::Meta;
use crate::events::EventKind;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a member's p99 must stay over the slow limit before it is reported.
const SLOW_FOR: Duration = Duration::from_secs(60);

/// What the watch remembers between ticks, by member index.
#[derive(Default)]
pub(crate) struct Watch {
    /// Since when the p99 has been over the slow limit (and whether it was reported).
    slow_since: HashMap<usize, (Instant, bool)>,
    /// Members past the fail limit that could not be failed (already logged).
    stuck: HashMap<usize, Instant>,
}

impl Watch {
    pub fn tick(&mut self, meta: &Meta) {
        let members = meta.members();
        let (slow, fail) = meta.set.limits();
        for (i, d) in members.iter().enumerate() {
            let Some((dev, g)) = d.as_ref().and_then(|d| Some((d, d.guard()?))) else {
                self.slow_since.remove(&i);
                continue;
            };
            match g.oldest() {
                Some(p) if p.age > fail => {
                    if self.stuck.contains_key(&i) {
                        continue;
                    }
                    let why = format!(
                        "no answer to a {} at offset {} for {} s (fail limit {} s)",
                        p.op,
                        p.offset,
                        p.age.as_secs(),
                        fail.as_secs_f64()
                    );
                    if let Err(e) = meta.fail_member(i, &why, false) {
                        tracing::error!(
                            member = i,
                            device = dev.name(),
                            "{why}; the member cannot be failed ({e}): its requests get EIO"
                        );
                        self.stuck.insert(i, Instant::now());
                    }
                }
                _ => {
                    self.stuck.remove(&i);
                }
            }
            let over = g.p99().is_some_and(|p| p > slow);
            if !over {
                self.slow_since.remove(&i);
                continue;
            }
            let (since, told) = self.slow_since.entry(i).or_insert((Instant::now(), false));
            if !*told && since.elapsed() >= SLOW_FOR {
                *told = true;
                let p99 = g.p99().unwrap_or_default();
                meta.emit(
                    EventKind::MemberSlow,
                    Some(i),
                    None,
                    format!(
                        "member {i} is slow: p99 latency {} ms over the last minute (slow limit {} ms)",
                        p99.as_millis(),
                        slow.as_millis()
                    ),
                );
            }
        }
    }
}

impl Meta {
    /// The (slow, fail) limits of member requests.
    pub fn limits(&self) -> (Duration, Duration) {
        self.set.limits()
    }

    /// Sets the limits of every member's requests (the slow limit at most the fail limit).
    pub fn set_limits(&self, slow: Duration, fail: Duration) {
        self.set.set_limits(slow, fail);
    }
}
