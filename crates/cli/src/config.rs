//! The daemon's configuration file (TOML): arrays, how their members are found, exports and
//! metrics. See docs/config.md.
//!
//! Unknown keys and bad values are refused with the file, line and column and what was
//! expected; so are references that do not resolve (an export of an array not declared).

use crate::tls::{TlsArgs, TlsMode};
use crate::units;
use anyhow::{bail, Result};
use serde::{Deserialize, Deserializer};
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// Where the daemon reads its configuration unless told otherwise.
pub const DEFAULT_PATH: &str = "/etc/damocles/damocles.toml";

/// The file as written.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Event hook command (as `serve --on-event`).
    pub on_event: Option<String>,
    #[serde(default, deserialize_with = "size")]
    pub rebuild_rate: Option<u64>,
    #[serde(default, deserialize_with = "size")]
    pub scrub_rate: Option<u64>,
    /// How often to scrub: daily, weekly, monthly, or a duration ("36h").
    #[serde(default, deserialize_with = "schedule")]
    pub scrub: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub slow_limit: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub fail_limit: Option<Duration>,
    #[serde(default, deserialize_with = "size")]
    pub dirty_budget: Option<u64>,
    /// O_DIRECT member I/O: true for member files too (as `serve --direct`), false for
    /// none (as `serve --buffered`); unset, block devices only.
    pub direct: Option<bool>,
    #[serde(default)]
    pub array: Vec<ArrayConfig>,
    #[serde(default)]
    pub export: Vec<ExportConfig>,
    pub metrics: Option<MetricsConfig>,
    /// Where the arrays' control sockets go (default: as `serve`).
    pub control_dir: Option<PathBuf>,
}

/// Settings an array may set and the file may default at its top.
#[derive(Debug, Default, Clone)]
pub struct ArrayDefaults {
    pub on_event: Option<String>,
    pub rebuild_rate: Option<u64>,
    pub scrub_rate: Option<u64>,
    pub scrub: Option<Duration>,
    pub slow_limit: Option<Duration>,
    pub fail_limit: Option<Duration>,
    pub dirty_budget: Option<u64>,
    pub direct: Option<bool>,
}

macro_rules! settings {
    ($v:expr) => {
        ArrayDefaults {
            on_event: $v.on_event.clone(),
            rebuild_rate: $v.rebuild_rate,
            scrub_rate: $v.scrub_rate,
            scrub: $v.scrub,
            slow_limit: $v.slow_limit,
            fail_limit: $v.fail_limit,
            dirty_budget: $v.dirty_budget,
            direct: $v.direct,
        }
    };
}

impl Config {
    /// The file's defaults for every array.
    pub fn defaults(&self) -> ArrayDefaults {
        settings!(self)
    }
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct ArrayConfig {
    pub name: Option<Spanned<String>>,
    pub uuid: Option<Spanned<String>>,
    /// Member paths or glob patterns.
    #[serde(default)]
    pub members: Vec<PathBuf>,
    /// Files, directories, devices or globs to search for members (default, when no
    /// `members`: every block device).
    #[serde(default)]
    pub scan: Vec<PathBuf>,
    #[serde(default)]
    pub read_only: bool,
    /// Event hook command (as `serve --on-event`).
    pub on_event: Option<String>,
    #[serde(default, deserialize_with = "size")]
    pub rebuild_rate: Option<u64>,
    #[serde(default, deserialize_with = "size")]
    pub scrub_rate: Option<u64>,
    /// How often to scrub: daily, weekly, monthly, or a duration ("36h").
    #[serde(default, deserialize_with = "schedule")]
    pub scrub: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub slow_limit: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub fail_limit: Option<Duration>,
    #[serde(default, deserialize_with = "size")]
    pub dirty_budget: Option<u64>,
    /// O_DIRECT member I/O (see [`Config::direct`]).
    pub direct: Option<bool>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// The array's name or UUID as its `[[array]]` gives it.
    pub array: Spanned<String>,
    /// The volume to serve (default: the array's only volume).
    pub volume: Option<Spanned<String>>,
    /// Export name (default: the array's name).
    pub name: Option<String>,
    /// TCP addresses and `unix:PATH` sockets.
    pub listen: Spanned<Vec<String>>,
    #[serde(default)]
    pub read_only: bool,
    /// Allow non-loopback TCP addresses.
    #[serde(default)]
    pub allow_remote: bool,
    pub tls: Option<TlsMode>,
    pub tls_psk_file: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    #[serde(default)]
    pub tls_allow: Vec<String>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// TCP address of the Prometheus endpoint (`/metrics`).
    pub listen: String,
}

/// One address an export listens on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ListenAddr {
    Tcp(String),
    Unix(PathBuf),
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl ExportConfig {
    pub fn addrs(&self) -> Vec<ListenAddr> {
        self.listen
            .get_ref()
            .iter()
            .map(|l| match l.strip_prefix("unix:") {
                Some(p) => ListenAddr::Unix(PathBuf::from(p)),
                None => ListenAddr::Tcp(l.clone()),
            })
            .collect()
    }

    /// The TCP addresses among `listen`, resolved (those that do not resolve are left
    /// out: binding them fails later with the reason).
    pub fn tcp_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.addrs()
            .iter()
            .filter_map(|a| match a {
                ListenAddr::Tcp(t) => std::net::ToSocketAddrs::to_socket_addrs(t).ok(),
                ListenAddr::Unix(_) => None,
            })
            .flatten()
            .collect()
    }

    /// The export's TLS settings, as `serve`'s flags would give them.
    pub fn tls_args(&self) -> TlsArgs {
        TlsArgs {
            tls: self.tls,
            tls_psk_file: self.tls_psk_file.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            tls_ca: self.tls_ca.clone(),
            tls_allow: self.tls_allow.clone(),
        }
    }
}

impl ArrayConfig {
    /// This array's settings, the file's defaults filling the gaps.
    pub fn settings(&self, cfg: &Config) -> ArrayDefaults {
        settings!(self).or(&cfg.defaults())
    }

    /// The name or UUID exports use to point at this array.
    pub fn key(&self) -> &str {
        self.name
            .as_ref()
            .or(self.uuid.as_ref())
            .map(|s| s.get_ref().as_str())
            .unwrap_or("")
    }

    pub fn matches(&self, name_or_uuid: &str) -> bool {
        self.name
            .as_ref()
            .is_some_and(|n| n.get_ref() == name_or_uuid)
            || self
                .uuid
                .as_ref()
                .is_some_and(|u| u.get_ref() == name_or_uuid)
    }
}

impl ArrayDefaults {
    /// This array's settings with the file's defaults filling the gaps.
    pub fn or(&self, d: &ArrayDefaults) -> ArrayDefaults {
        ArrayDefaults {
            on_event: self.on_event.clone().or(d.on_event.clone()),
            rebuild_rate: self.rebuild_rate.or(d.rebuild_rate),
            scrub_rate: self.scrub_rate.or(d.scrub_rate),
            scrub: self.scrub.or(d.scrub),
            slow_limit: self.slow_limit.or(d.slow_limit),
            fail_limit: self.fail_limit.or(d.fail_limit),
            dirty_budget: self.dirty_budget.or(d.dirty_budget),
            direct: self.direct.or(d.direct),
        }
    }
}

fn size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let s = String::deserialize(d)?;
    units::parse_size(&s)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("a size such as \"200M\": {e}")))
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    units::parse_duration(&s)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("a duration such as \"30s\": {e}")))
}

/// daily, weekly, monthly (30 days) or a duration.
pub fn parse_schedule(s: &str) -> Result<Duration, String> {
    let day = 86_400;
    Ok(Duration::from_secs(match s {
        "daily" => day,
        "weekly" => 7 * day,
        "monthly" => 30 * day,
        other => {
            return units::parse_duration(other).and_then(|d| {
                if d.is_zero() {
                    Err("a zero interval".into())
                } else {
                    Ok(d)
                }
            })
        }
    }))
}

fn schedule<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse_schedule(&s).map(Some).map_err(|e| {
        serde::de::Error::custom(format!(
            "daily, weekly, monthly or a duration such as \"36h\": {e}"
        ))
    })
}

/// `file:line:column` of byte offset `at` in `text`.
fn position(file: &Path, text: &str, at: usize) -> String {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("{}:{line}:{col}", file.display())
}

/// Reads and checks the file.
pub fn load(file: &Path) -> Result<Config> {
    let text =
        std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    parse(file, &text)
}

/// Parses and checks `text`, read from `file` (for the messages).
pub fn parse(file: &Path, text: &str) -> Result<Config> {
    let cfg: Config = toml::from_str(text).map_err(|e| {
        let at = e
            .span()
            .map(|s| position(file, text, s.start))
            .unwrap_or_else(|| file.display().to_string());
        anyhow::anyhow!("{at}: {}", e.message().trim_end())
    })?;
    check(&cfg, file, text)?;
    Ok(cfg)
}

fn check(cfg: &Config, file: &Path, text: &str) -> Result<()> {
    let at = |span: std::ops::Range<usize>| position(file, text, span.start);
    for (i, a) in cfg.array.iter().enumerate() {
        let Some(key) = a.name.as_ref().or(a.uuid.as_ref()) else {
            bail!(
                "{}: [[array]] number {}: expected `name` or `uuid`",
                file.display(),
                i + 1
            );
        };
        if let Some(u) = &a.uuid {
            if !is_uuid(u.get_ref()) {
                bail!(
                    "{}: uuid: expected 8-4-4-4-12 hex digits, found \"{}\"",
                    at(u.span()),
                    u.get_ref()
                );
            }
        }
        if !a.members.is_empty() && !a.scan.is_empty() {
            bail!(
                "{}: array '{}': give `members` or `scan`, not both",
                at(key.span()),
                key.get_ref()
            );
        }
        if let Some(prev) = cfg.array[..i]
            .iter()
            .find(|b| b.matches(key.get_ref()) || a.matches(b.key()))
        {
            bail!(
                "{}: array '{}' is declared twice (also as '{}')",
                at(key.span()),
                key.get_ref(),
                prev.key()
            );
        }
    }
    let mut seen: Vec<(ListenAddr, String)> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for e in &cfg.export {
        let want = e.array.get_ref();
        let Some(arr) = cfg.array.iter().find(|a| a.matches(want)) else {
            bail!(
                "{}: export of array '{want}': expected the name or uuid of an [[array]] \
                 declared in this file",
                at(e.array.span())
            );
        };
        if let Some(v) = &e.volume {
            if let Err(why) = damocles_engine::layout::volumes::check_name(v.get_ref()) {
                bail!("{}: volume: {why}", at(v.span()));
            }
        }
        if e.listen.get_ref().is_empty() {
            bail!(
                "{}: listen: expected at least one address",
                at(e.listen.span())
            );
        }
        if e.tls_cert.is_some() != e.tls_key.is_some() {
            bail!(
                "{}: export of array '{want}': tls_cert and tls_key go together",
                at(e.array.span())
            );
        }
        let name = e.name.clone().unwrap_or_else(|| arr.key().to_string());
        for l in e.addrs() {
            if let ListenAddr::Unix(p) = &l {
                if !p.is_absolute() {
                    bail!(
                        "{}: listen \"{l}\": expected an absolute socket path",
                        at(e.listen.span())
                    );
                }
            }
            // Two exports may share an address only under different export names.
            if seen.iter().any(|(a, _)| *a == l) {
                bail!(
                    "{}: listen \"{l}\": another export already listens there",
                    at(e.listen.span())
                );
            }
            seen.push((l, name.clone()));
        }
        if names.contains(&name) {
            bail!(
                "{}: export name '{name}' is used twice (set `name`)",
                at(e.array.span())
            );
        }
        names.push(name);
    }
    if let Some(m) = &cfg.metrics {
        use std::net::ToSocketAddrs;
        if m.listen.to_socket_addrs().is_err() {
            bail!(
                "{}: [metrics] listen \"{}\": expected HOST:PORT",
                file.display(),
                m.listen
            );
        }
    }
    Ok(())
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && parts
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        format!("{:#}", parse(Path::new("d.toml"), text).unwrap_err())
    }

    const GOOD: &str = r#"
[[array]]
name = "tank"
members = ["/srv/disks/tank-*.img"]

[[export]]
array = "tank"
listen = ["127.0.0.1:10809", "unix:/run/damocles/tank.sock"]
tls = "require"
tls_psk_file = "/etc/damocles/keys.psk"

[metrics]
listen = "127.0.0.1:9860"
"#;

    #[test]
    fn the_issue_example_parses() {
        let c = parse(Path::new("d.toml"), GOOD).unwrap();
        assert_eq!(c.array.len(), 1);
        let e = &c.export[0];
        assert_eq!(e.addrs().len(), 2);
        let t = e.tls_args();
        assert_eq!(t.tls, Some(TlsMode::Require));
        assert_eq!(
            t.tls_psk_file.as_deref(),
            Some(Path::new("/etc/damocles/keys.psk"))
        );
        assert_eq!(c.metrics.unwrap().listen, "127.0.0.1:9860");
    }

    #[test]
    fn the_documented_example_parses() {
        let text = include_str!("../../../docs/damocles.toml.example");
        let c = parse(Path::new("damocles.toml.example"), text).unwrap();
        assert_eq!((c.array.len(), c.export.len()), (2, 2));
        assert_eq!(c.defaults().scrub, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(
            c.array[1].settings(&c).scrub,
            Some(Duration::from_secs(7 * 86_400))
        );
        assert_eq!(c.export[1].tls_args().tls_allow, vec!["pve1".to_string()]);
    }

    #[test]
    fn direct_is_per_array_over_the_top_level() {
        let c = parse(
            Path::new("d.toml"),
            "direct = false\n[[array]]\nname = \"a\"\ndirect = true\n[[array]]\nname = \"b\"\n[[array]]\nname = \"c\"\n",
        )
        .unwrap();
        let got: Vec<Option<bool>> = c.array.iter().map(|a| a.settings(&c).direct).collect();
        assert_eq!(got, [Some(true), Some(false), Some(false)]);
        let c = parse(Path::new("d.toml"), "[[array]]\nname = \"a\"\n").unwrap();
        assert_eq!(c.array[0].settings(&c).direct, None);
        let e = err("[[array]]\nname = \"a\"\ndirect = \"yes\"\n");
        assert!(e.starts_with("d.toml:3:10:") && e.contains("bool"), "{e}");
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_line() {
        let e = err("[[array]]\nname = \"a\"\nmembrs = [\"x\"]\n");
        assert!(e.starts_with("d.toml:3:1:"), "{e}");
        assert!(e.contains("membrs") && e.contains("expected"), "{e}");
        let e = err("rebuild_rate = \"fast\"\n");
        assert!(e.starts_with("d.toml:1:16:") && e.contains("a size"), "{e}");
        let e = err("[[array]]\nname = \"a\"\nscan=[\"/x\"]\n[[export]]\narray = \"a\"\nlisten = [\"127.0.0.1:1\"]\ntls = \"maybe\"\n");
        assert!(e.starts_with("d.toml:7:7:") && e.contains("require"), "{e}");
        let e = err("scrub = \"sometimes\"\n");
        assert!(e.contains("monthly"), "{e}");
    }

    #[test]
    fn references_are_checked() {
        let e = err("[[export]]\narray = \"nope\"\nlisten = [\"127.0.0.1:1\"]\n");
        assert!(
            e.starts_with("d.toml:2:9:") && e.contains("[[array]]"),
            "{e}"
        );
        let e = err("[[array]]\nname = \"a\"\n[[array]]\nname = \"a\"\n");
        assert!(e.starts_with("d.toml:4:8:") && e.contains("twice"), "{e}");
        let e = err("[[array]]\nmembers = [\"x\"]\n");
        assert!(e.contains("`name` or `uuid`"), "{e}");
        let e = err("[[array]]\nname = \"a\"\n[[export]]\narray = \"a\"\nlisten = [\"127.0.0.1:1\"]\n[[export]]\narray = \"a\"\nname = \"b\"\nlisten = [\"127.0.0.1:1\"]\n");
        assert!(e.starts_with("d.toml:9:") && e.contains("already"), "{e}");
    }
}
