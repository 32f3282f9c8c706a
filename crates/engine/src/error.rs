//! One error type for the engine. Member I/O errors carry the operation (as an enum), the
//! member's device and the offset; the rest say what was refused and why.

use std::fmt;
use std::io;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a member was asked to do when it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Read,
    Write,
    Flush,
    /// Making a range read as zeros (hole punch, zero range, or zero writes).
    Zero,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Zero => "zero",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A background job of the array (one of each kind runs at a time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobKind {
    Rebuild,
    Reshape,
    Scrub,
}

impl JobKind {
    pub fn name(self) -> &'static str {
        match self {
            JobKind::Rebuild => "rebuild",
            JobKind::Reshape => "reshape",
            JobKind::Scrub => "scrub",
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A member read/write/flush failed.
    #[error("{op} on {device} at offset {offset}: {source}")]
    Io {
        op: Op,
        /// The member's device (its path), as the member names itself.
        device: String,
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// Opening or inspecting a member failed.
    #[error("{path}: {source}")]
    Open {
        path: String,
        #[source]
        source: io::Error,
    },
    /// On-disk structures that do not check out (bad magic, checksum, version, values).
    #[error("{member}: {msg}")]
    Format { member: String, msg: String },
    /// The members given do not form one array, or the request does not fit the members.
    #[error("{0}")]
    Members(String),
    /// A request the caller should not have made (bad level, bad size, out of range).
    #[error("{0}")]
    Invalid(String),
    /// `create` found something on a member that it would overwrite.
    #[error("{member} is not empty: {found} (use --force to overwrite it)")]
    NotEmpty { member: String, found: String },
    /// Too many members are missing for the data asked for.
    #[error("{0}")]
    Unavailable(String),
    /// No room on the members for what was asked.
    #[error("{0}")]
    NoSpace(String),
    /// The array was opened read-only.
    #[error("the array is open read-only")]
    ReadOnly,
    /// The data asked for is known lost (it could not be rebuilt or repaired).
    #[error("{0}")]
    Lost(String),
    /// A job of this kind is already running.
    #[error("a {0} is already running")]
    Busy(JobKind),
    /// A read passed the member's slow limit; the engine reads the other members instead
    /// (callers of the engine do not see it unless no other member could answer).
    #[error("{device} did not answer within the slow limit")]
    Slow { device: String },
    /// A worker thread of the engine panicked: a bug, not the caller's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub(crate) fn format(member: &str, msg: impl Into<String>) -> Error {
        Error::Format {
            member: member.to_string(),
            msg: msg.into(),
        }
    }

    /// The errno-style kind a block protocol should report for this error.
    pub fn io_kind(&self) -> io::ErrorKind {
        match self {
            Error::Io { source, .. } | Error::Open { source, .. } => source.kind(),
            Error::Invalid(_) => io::ErrorKind::InvalidInput,
            Error::NoSpace(_) => io::ErrorKind::StorageFull,
            Error::ReadOnly => io::ErrorKind::PermissionDenied,
            _ => io::ErrorKind::Other,
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        io::Error::new(e.io_kind(), e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_what_failed() {
        let e = Error::Io {
            op: Op::Flush,
            device: "/dev/sdb".into(),
            offset: 0,
            source: io::Error::other("boom"),
        };
        assert_eq!(e.to_string(), "flush on /dev/sdb at offset 0: boom");
        assert_eq!(
            Error::Busy(JobKind::Rebuild).to_string(),
            "a rebuild is already running"
        );
        assert_eq!(
            Error::Internal("a rebuild thread panicked".into()).to_string(),
            "internal error: a rebuild thread panicked"
        );
    }
}
