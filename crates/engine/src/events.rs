//! Events the array reports (member failure, spare activation, rebuild, checksum repairs,
//! unrecoverable blocks) to whoever listens: the log always, a sink if one is set.

use serde::Serialize;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    MemberFailed,
    /// A member's p99 latency stayed over the slow limit for a minute.
    MemberSlow,
    SpareActivated,
    MemberAdded,
    MemberRemoved,
    RebuildStarted,
    RebuildFinished,
    ChecksumRepaired,
    Unrecoverable,
    ScrubStarted,
    ScrubFinished,
    ReshapeStarted,
    ReshapeFinished,
    VolumeGrown,
    /// Allocated and reserved space passed 80 %, 90 % or 100 % of the raw space, or a
    /// write found no room.
    SpaceLow,
    VolumeCreated,
    VolumeDeleted,
    VolumeResized,
}

/// One event, as `serve --on-event` hands it to its command (JSON on stdin).
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub event: EventKind,
    /// Array name and UUID.
    pub array: String,
    pub uuid: String,
    /// Seconds since the Unix epoch.
    pub time: u64,
    /// Member index and device, when the event is about one member.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Volume byte offset, for checksum repairs and unrecoverable blocks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    pub message: String,
}

pub type EventSink = Arc<dyn Fn(&Event) + Send + Sync>;
