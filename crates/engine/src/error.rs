//! One error type for the engine, carrying the member, offset and operation that failed.

use std::io;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A member read/write/flush failed.
    #[error("{op} on {member} at offset {offset}: {source}")]
    Io {
        op: &'static str,
        member: String,
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
