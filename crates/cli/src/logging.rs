//! Log lines on stderr: text (level, message, fields such as `array=` and `member=`, no
//! timestamp) or JSON. Under systemd with stderr connected to the journal
//! ($JOURNAL_STREAM names it), each text line starts with its syslog priority (`<4>` for a
//! warning), which journald turns into the entry's PRIORITY.

use std::fmt;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Prefixes each line with its syslog priority, for journald.
struct Priority<F>(F);

impl<S, N, F> FormatEvent<S, N> for Priority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        e: &Event<'_>,
    ) -> fmt::Result {
        let p = match *e.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            _ => 7,
        };
        write!(w, "<{p}>")?;
        self.0.format_event(ctx, w, e)
    }
}

/// Whether stderr is the journal stream systemd set up ($JOURNAL_STREAM is its
/// `device:inode`).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(js) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(m) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    js == format!("{}:{}", m.dev(), m.ino())
}

/// Sets up logging; DAMOCLES_LOG overrides `default` (the level filter).
pub fn init(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DAMOCLES_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let b = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Json => b.json().with_current_span(false).init(),
        LogFormat::Text if stderr_is_journal() => {
            let inner = tracing_subscriber::fmt::format()
                .without_time()
                .with_target(false)
                .with_ansi(false);
            b.event_format(Priority(inner)).init()
        }
        LogFormat::Text => b
            .without_time()
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}
