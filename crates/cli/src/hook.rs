//! `serve --on-event CMD`: runs CMD through `sh -c` for each event, with the event's JSON
//! on stdin, one at a time on a worker thread, so the I/O path that raised the event never
//! waits for it.

use damocles_engine::Event;
use std::io::Write;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Events waiting for the hook; beyond this they are dropped (and logged).
const QUEUE: usize = 1024;
/// A hook running longer than this is killed.
const HOOK_TIMEOUT: Duration = Duration::from_secs(60);

/// The sending side, cloned into the array's event sink.
#[derive(Clone)]
pub struct Hook {
    tx: SyncSender<(String, String)>,
}

pub struct Worker(JoinHandle<()>);

pub fn start(cmd: String) -> std::io::Result<(Hook, Worker)> {
    let (tx, rx) = sync_channel(QUEUE);
    let h = std::thread::Builder::new()
        .name("damocles-on-event".into())
        .spawn(move || worker(&cmd, rx))?;
    Ok((Hook { tx }, Worker(h)))
}

impl Hook {
    /// Queues an event; never blocks.
    pub fn send(&self, e: &Event) {
        let Ok(json) = serde_json::to_string(e) else {
            return;
        };
        let kind = serde_json::to_value(e.event)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        match self.tx.try_send((kind, json)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                tracing::warn!("--on-event: {QUEUE} events waiting for the hook; one dropped")
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

impl Worker {
    /// Waits (at most `limit`) for queued events to be handed to the hook. Call after every
    /// `Hook` is dropped, or this always waits the whole limit.
    pub fn finish(self, limit: Duration) {
        let start = Instant::now();
        while !self.0.is_finished() && start.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn worker(cmd: &str, rx: Receiver<(String, String)>) {
    for (kind, json) in rx {
        if let Err(e) = run_one(cmd, &kind, &json) {
            tracing::warn!("--on-event hook for {kind}: {e}");
        }
    }
}

fn run_one(cmd: &str, kind: &str, json: &str) -> Result<(), String> {
    // The hook's output goes to our stderr (the log), not into the serve banner on stdout.
    let to_log = || {
        std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .map_or(Stdio::null(), Stdio::from)
    };
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("DAMOCLES_EVENT", kind)
        .stdin(Stdio::piped())
        .stdout(to_log())
        .stderr(to_log())
        .spawn()
        .map_err(|e| format!("cannot run sh: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its input is fine: ignore EPIPE.
        let _ = stdin.write_all(json.as_bytes());
        let _ = stdin.write_all(b"\n");
    }
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => return Err(format!("`{cmd}` exited with {st}")),
            Ok(None) if start.elapsed() > HOOK_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "`{cmd}` still ran after {} s: killed",
                    HOOK_TIMEOUT.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for `{cmd}`: {e}")),
        }
    }
}
