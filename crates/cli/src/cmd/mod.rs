pub mod bench;
pub mod config;
pub mod create;
pub mod daemon;
pub mod demo;
pub mod grow;
pub mod job;
pub mod member;
pub mod metadata;
pub mod rawio;
pub mod repair;
pub mod reshape;
pub mod scan;
pub mod serve;
pub mod status;
pub mod volume;

use crate::control::{self, Client};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Which array: a served one (--array) or, after `--`, the members of one that is not.
#[derive(clap::Args)]
pub struct Which {
    /// The served array: its name, UUID, or control socket path. Optional when only one
    /// array is served.
    #[arg(long, value_name = "NAME")]
    pub array: Option<String>,
    /// For an array that is not served: all its members, after `--`. The array is
    /// assembled read-write from them, changed, and closed.
    #[arg(last = true, value_name = "ARRAY_MEMBER", conflicts_with = "array")]
    pub members: Vec<PathBuf>,
}

/// What a command works on: a served array, or members it assembles itself.
pub enum Target {
    Served(Client),
    Members(Vec<PathBuf>),
}

/// Members given: those. Otherwise the served array `array` names (or the only one).
/// `usage` is the command line that names members instead, for the error message.
pub fn target(array: Option<&str>, members: Vec<PathBuf>, usage: &str) -> Result<Target> {
    if !members.is_empty() {
        return Ok(Target::Members(members));
    }
    Ok(Target::Served(control::select(array, usage)?))
}

/// A member named on the command line, as the server (another process, another working
/// directory) can match it: an index or UUID as given, an existing path made absolute.
pub fn member_spec(s: &str) -> Result<String> {
    if s.parse::<usize>().is_ok() || !Path::new(s).exists() {
        return Ok(s.to_string());
    }
    absolute(Path::new(s))
}

/// A device path made absolute, for the server to open.
pub fn absolute(p: &Path) -> Result<String> {
    let abs = std::fs::canonicalize(p).with_context(|| format!("{}", p.display()))?;
    abs.to_str()
        .map(str::to_string)
        .with_context(|| format!("{}: the path is not UTF-8", abs.display()))
}
