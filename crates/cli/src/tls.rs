//! How an export is protected: the TLS settings shared by `serve` flags and the daemon's
//! config file (`[[export]]` keys of the same names).

use anyhow::{bail, Result};
use std::net::SocketAddr;
use std::path::PathBuf;

/// `--tls`: whether clients must, may or cannot negotiate TLS (NBD_OPT_STARTTLS).
#[derive(clap::ValueEnum, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// No TLS: NBD_OPT_STARTTLS is refused.
    Off,
    /// TLS offered: clients may negotiate it or not.
    On,
    /// TLS required: a client that skips it gets NBD_REP_ERR_TLS_REQD.
    Require,
}

/// TLS settings of one export.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// off, on (offered) or require (default: require for a non-loopback address, else off).
    #[arg(long, value_enum, value_name = "MODE")]
    pub tls: Option<TlsMode>,
    /// Pre-shared keys in psktool's format (`identity:hexkey` lines), as qemu-nbd and
    /// nbdkit read them.
    #[arg(long, value_name = "FILE")]
    pub tls_psk_file: Option<PathBuf>,
    /// Server certificate (PEM, with its chain).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Clients must present a certificate signed by this CA (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Only these PSK identities or certificate subjects (repeatable; default: any client
    /// that authenticates).
    #[arg(long, value_name = "ID")]
    pub tls_allow: Vec<String>,
}

impl TlsArgs {
    /// The mode in effect for these listen addresses (None: a Unix socket).
    pub fn mode(&self, tcp: &[SocketAddr]) -> TlsMode {
        self.tls.unwrap_or_else(|| {
            if tcp.iter().any(|a| !a.ip().is_loopback()) {
                TlsMode::Require
            } else {
                TlsMode::Off
            }
        })
    }

    /// Refuses settings this build cannot serve.
    pub fn check(&self, tcp: &[SocketAddr]) -> Result<()> {
        if self.mode(tcp) != TlsMode::Off || self.tls_psk_file.is_some() || self.tls_cert.is_some()
        {
            bail!("TLS is not built into this version yet (--tls off serves without it)");
        }
        Ok(())
    }
}
