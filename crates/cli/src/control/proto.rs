//! The control protocol: one JSON request per line, one JSON response per line
//! (docs/control.md).

use damocles_engine::Progress;
use serde::{Deserialize, Serialize};

/// Bumped when a request or response changes incompatibly.
pub const PROTOCOL: u32 = 1;

/// Longest request line the server accepts.
pub const MAX_LINE: usize = 64 << 10;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Who is there: array name and UUID (used to find an array by name).
    Hello {},
    Status {},
    /// `member`: index, device path (absolute) or member UUID.
    Fail {
        member: String,
        #[serde(default)]
        force: bool,
    },
    Remove {
        member: String,
    },
    /// `device`: an absolute path the server opens read-write.
    Add {
        device: String,
        #[serde(default)]
        force: bool,
        /// Join as an active member and balance the data over it (not as a spare).
        #[serde(default)]
        grow: bool,
    },
    Replace {
        old: String,
        new: String,
        #[serde(default)]
        force: bool,
    },
    /// Starts a job, or sets the rate limit (bytes/s, 0 = none) of the one running.
    Rebuild {
        #[serde(default)]
        rate: Option<u64>,
    },
    Scrub {
        #[serde(default)]
        rate: Option<u64>,
    },
    /// Records a reshape goal (new level, members to remove, balance) and starts moving
    /// chunks towards it; `dry_run` only answers with the forecast.
    Reshape {
        #[serde(default)]
        change: ChangeSpec,
        #[serde(default)]
        force: bool,
        #[serde(default)]
        dry_run: bool,
        #[serde(default)]
        rate: Option<u64>,
    },
    /// Grows the volume to `size` bytes (`None`: all the members hold now);
    /// `dry_run` only answers with the forecast.
    Grow {
        #[serde(default)]
        size: Option<u64>,
        #[serde(default)]
        dry_run: bool,
    },
    /// The state of a job.
    Job {
        job: JobKind,
    },
    Cancel {
        job: JobKind,
    },
    /// Events with a sequence number above `after` (the server keeps the latest 256).
    Events {
        #[serde(default)]
        after: u64,
    },
    /// Volume create, list, resize, delete, rename.
    Volume {
        op: VolumeOp,
    },
    /// Checks every member's superblock copies and rewrites the damaged ones (`dry_run`:
    /// only says which); `force` also overwrites a known signature over the front copies.
    RepairLabels {
        #[serde(default)]
        dry_run: bool,
        #[serde(default)]
        force: bool,
    },
}

/// What `damocles volume` asks for.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum VolumeOp {
    Create {
        name: String,
        level: String,
        #[serde(default)]
        copies: Option<usize>,
        #[serde(default)]
        stripe_unit: Option<u64>,
        /// Bytes; `None`: as large as the free space allows.
        #[serde(default)]
        size: Option<u64>,
        #[serde(default)]
        thin: bool,
        /// Only answer with the forecast (`damocles plan volume create`).
        #[serde(default)]
        dry_run: bool,
    },
    List {},
    Resize {
        name: String,
        /// Bytes; `None`: as large as the free space allows.
        #[serde(default)]
        size: Option<u64>,
        #[serde(default)]
        force: bool,
    },
    Delete {
        name: String,
        #[serde(default)]
        force: bool,
    },
    Rename {
        old: String,
        new: String,
    },
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    Rebuild,
    Scrub,
    Reshape,
}

/// A reshape request: what changes (unset fields keep their value).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ChangeSpec {
    #[serde(default)]
    pub level: Option<String>,
    #[serde(default)]
    pub copies: Option<usize>,
    #[serde(default)]
    pub stripe_unit: Option<u64>,
    /// Members to move data off and remove: index, device path or member UUID.
    #[serde(default)]
    pub remove: Vec<String>,
    #[serde(default)]
    pub balance: bool,
    /// Keep hot spares out of the new layout.
    #[serde(default)]
    pub no_spares: bool,
    /// Grow the volume to what the members hold when the chunks have moved.
    #[serde(default)]
    pub grow: bool,
    /// The volume whose level changes (needed when the array holds several).
    #[serde(default)]
    pub volume: Option<String>,
}

impl JobKind {
    pub fn name(self) -> &'static str {
        match self {
            JobKind::Rebuild => "rebuild",
            JobKind::Scrub => "scrub",
            JobKind::Reshape => "reshape",
        }
    }
}

/// Every response has `ok`; the other fields depend on the request.
#[derive(Serialize, Deserialize, Debug, Default, Clone)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What was done, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The member index a request acted on or created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<usize>,
    /// Exactly what `damocles status --json` prints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobState>,
    /// Events as `serve --on-event` gets them, each with a `seq` number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<serde_json::Value>>,
    /// The sequence number to ask for events after next time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
    /// What a reshape will do (`damocles plan`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forecast: Option<serde_json::Value>,
    /// What `grow` did or would do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grow: Option<damocles_engine::GrowForecast>,
    /// What `volume create` did or would do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<damocles_engine::VolumeForecast>,
    /// `volume list`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Vec<damocles_engine::VolumeStatus>>,
    /// What `repair --labels` found and did (or would do), per device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<damocles_engine::LabelRepair>>,
}

impl Response {
    pub fn ok() -> Response {
        Response {
            ok: true,
            ..Default::default()
        }
    }

    pub fn error(msg: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(msg.into()),
            ..Default::default()
        }
    }

    pub fn with_message(mut self, msg: impl Into<String>) -> Response {
        self.message = Some(msg.into());
        self
    }
}

#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
pub struct JobState {
    pub running: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// How the last run of this job ended, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<String>,
    /// Whether that run ended with an error.
    #[serde(default)]
    pub last_failed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_garbage_is_refused() {
        let r: Request = serde_json::from_str(r#"{"cmd":"fail","member":"2"}"#).unwrap();
        assert_eq!(
            r,
            Request::Fail {
                member: "2".into(),
                force: false
            }
        );
        let r: Request = serde_json::from_str(r#"{"cmd":"rebuild"}"#).unwrap();
        assert_eq!(r, Request::Rebuild { rate: None });
        let r: Request = serde_json::from_str(r#"{"cmd":"job","job":"scrub"}"#).unwrap();
        assert_eq!(
            r,
            Request::Job {
                job: JobKind::Scrub
            }
        );
        for bad in [
            "",
            "{}",
            r#"{"cmd":"format-everything"}"#,
            r#"{"cmd":"fail"}"#,
            r#"{"cmd":"fail","member":2}"#,
            r#"{"cmd":"status","extra":1}"#,
            "[1,2,3]",
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
        let s = serde_json::to_string(&Request::Hello {}).unwrap();
        assert_eq!(s, r#"{"cmd":"hello"}"#);
    }
}
