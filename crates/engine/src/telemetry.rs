//! What the array tells about itself while it runs: error counters, events (to the log
//! always, to a sink if one is set) and notes for `status`. Owns its own locks; takes
//! nothing from the layers above, which fill in the names an event carries.

use crate::events::{Event, EventKind, EventSink};
use parking_lot::{Mutex, RwLock};
use std::sync::atomic::AtomicU64;

/// Error counters since the array was opened.
#[derive(Default)]
pub(crate) struct Counters {
    pub read_errors: AtomicU64,
    pub write_errors: AtomicU64,
    pub checksum_errors: AtomicU64,
    pub repaired: AtomicU64,
    pub unrecoverable: AtomicU64,
}

#[derive(Default)]
pub(crate) struct Telemetry {
    pub counters: Counters,
    sink: RwLock<Option<EventSink>>,
    notes: Mutex<Vec<String>>,
}

impl Telemetry {
    pub fn new(notes: Vec<String>) -> Telemetry {
        Telemetry {
            notes: Mutex::new(notes),
            ..Default::default()
        }
    }

    pub fn set_sink(&self, sink: EventSink) {
        *self.sink.write() = Some(sink);
    }

    /// Logs the event and hands it to the sink, if any.
    pub fn send(&self, e: Event) {
        let (event, member, device, offset) = (e.event, e.member, &e.device, e.offset);
        let (message, array) = (&e.message, &e.array);
        match event {
            EventKind::Unrecoverable => {
                tracing::error!(%array, ?event, ?member, ?device, ?offset, "{message}")
            }
            EventKind::MemberFailed | EventKind::MemberSlow | EventKind::ChecksumRepaired => {
                tracing::warn!(%array, ?event, ?member, ?device, ?offset, "{message}")
            }
            _ => tracing::info!(%array, ?event, ?member, ?device, "{message}"),
        }
        let sink = self.sink.read().clone();
        if let Some(sink) = sink {
            sink(&e);
        }
    }

    /// Whether events go anywhere besides the log.
    pub fn has_sink(&self) -> bool {
        self.sink.read().is_some()
    }

    pub fn note(&self, note: String) {
        self.notes.lock().push(note);
    }

    pub fn notes(&self) -> Vec<String> {
        self.notes.lock().clone()
    }
}
