//! How an export is protected: the TLS settings shared by `serve` flags and the daemon's
//! config file (`[[export]]` keys of the same names).

use anyhow::{anyhow, bail, Context, Result};
use damocles_nbd::tls::{self as nbd_tls, PskTable, TlsBuilder, TlsConfig};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    /// off, on (offered) or require (default: require when credentials are given or an
    /// address is not loopback, else off).
    #[arg(long, value_enum, value_name = "MODE")]
    pub tls: Option<TlsMode>,
    /// Pre-shared keys in psktool's format (`identity:hexkey` lines, made by `psktool -u
    /// NAME -p FILE`), as qemu-nbd and nbdkit read them. libnbd clients give the identity
    /// as the URI's user (`nbds://NAME@host/export?tls-psk-file=FILE`).
    #[arg(long, value_name = "FILE")]
    pub tls_psk_file: Option<PathBuf>,
    /// Server certificate (PEM, with its chain).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Clients must present a certificate signed by this CA (PEM); clients using a
    /// pre-shared key need none. Needs --tls-cert.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Only these PSK identities or certificate subjects (repeatable; default: any client
    /// that authenticates). A subject matches by its common name, or whole as `openssl x509
    /// -noout -subject -nameopt RFC2253` prints it (`CN=hv1,O=example`).
    #[arg(long, value_name = "ID")]
    pub tls_allow: Vec<String>,
}

impl TlsArgs {
    /// The mode in effect for these listen addresses (None: a Unix socket).
    pub fn mode(&self, tcp: &[SocketAddr]) -> TlsMode {
        self.tls.unwrap_or_else(|| {
            // Credentials given without a mode: they are meant to be used, as qemu-nbd's
            // --tls-creds means TLS required.
            let credentials = self.tls_psk_file.is_some() || self.tls_cert.is_some();
            if credentials || tcp.iter().any(|a| !a.ip().is_loopback()) {
                TlsMode::Require
            } else {
                TlsMode::Off
            }
        })
    }

    /// The NBD server's TLS settings for these listen addresses (None: TLS off), with the
    /// files read and checked. Errors name the flag, the file and what is wrong with it.
    pub fn server(&self, tcp: &[SocketAddr]) -> Result<Option<Arc<TlsConfig>>> {
        let mode = match self.mode(tcp) {
            TlsMode::Off => {
                if self.tls_psk_file.is_some() || self.tls_cert.is_some() {
                    bail!(
                        "--tls off with TLS credentials given (--tls-psk-file / --tls-cert): \
                         say --tls on or --tls require, or drop the credentials"
                    );
                }
                return Ok(None);
            }
            TlsMode::On => nbd_tls::TlsMode::Offer,
            TlsMode::Require => nbd_tls::TlsMode::Require,
        };
        if self.tls_psk_file.is_none() && self.tls_cert.is_none() {
            let why = if self.tls.is_none() {
                " (TLS is required by default on a non-loopback address; --tls off serves \
                 without it)"
            } else {
                ""
            };
            bail!("--tls needs credentials: --tls-psk-file FILE, or --tls-cert and --tls-key{why}");
        }
        let mut b = TlsBuilder::new(mode);
        if let Some(p) = &self.tls_psk_file {
            let text = read_text(p, "--tls-psk-file")?;
            let table = PskTable::parse(&text)
                .with_context(|| format!("--tls-psk-file {}", p.display()))?;
            b.psk(table)
                .with_context(|| format!("--tls-psk-file {}", p.display()))?;
        }
        if let Some(p) = &self.tls_cert {
            b.cert_chain_pem(&read(p, "--tls-cert")?)
                .with_context(|| format!("--tls-cert {}", p.display()))?;
        }
        if let Some(p) = &self.tls_key {
            b.key_pem(&read(p, "--tls-key")?)
                .with_context(|| format!("--tls-key {}", p.display()))?;
        }
        if let Some(p) = &self.tls_ca {
            if self.tls_cert.is_none() {
                bail!("--tls-ca {}: client certificates need a server certificate too (--tls-cert and --tls-key)", p.display());
            }
            b.ca_pem(&read(p, "--tls-ca")?)
                .with_context(|| format!("--tls-ca {}", p.display()))?;
        }
        b.allow(self.tls_allow.iter().cloned());
        let files = || {
            let mut v = Vec::new();
            if let (Some(c), Some(k)) = (&self.tls_cert, &self.tls_key) {
                v.push(format!(
                    "--tls-cert {} and --tls-key {}",
                    c.display(),
                    k.display()
                ));
            }
            if let Some(p) = &self.tls_psk_file {
                v.push(format!("--tls-psk-file {}", p.display()));
            }
            v.join(", ")
        };
        let cfg = match b.build() {
            Ok(c) => c,
            Err(e @ nbd_tls::TlsError::AllowWithoutAuth) => {
                return Err(anyhow!("--tls-allow: {e} (--tls-psk-file or --tls-ca)"))
            }
            Err(e) => return Err(anyhow!("{}: {e}", files())),
        };
        if !cfg.authenticates_clients() {
            eprintln!(
                "warning: TLS encrypts, but without --tls-ca or --tls-psk-file any client may \
                 connect"
            );
        }
        Ok(Some(Arc::new(cfg)))
    }
}

fn read(p: &Path, flag: &str) -> Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("{flag} {}: cannot read", p.display()))
}

fn read_text(p: &Path, flag: &str) -> Result<String> {
    let bytes = read(p, flag)?;
    String::from_utf8(bytes).map_err(|e| anyhow!("{flag} {}: not UTF-8 text ({e})", p.display()))
}
