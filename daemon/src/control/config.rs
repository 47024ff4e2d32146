//! `[control]`: where the HTTP API and the live page listen, and who may use them.
//!
//! On loopback (the default) everything is open, as before. Beyond loopback a bearer token is
//! required (`token_file`): state-changing requests always need it, reads too unless
//! `public_reads`. Errors name the key.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::check::{check_range, ConfigError};

/// `[control]`: the HTTP API and live page of `detingestd serve`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Address to listen on; beyond loopback only with `token_file`.
    pub listen: SocketAddr,
    /// A file holding the bearer token (one line; readable by the daemon's user only).
    pub token_file: Option<PathBuf>,
    /// Let reads (`GET /`, `/run`, `/metrics`, `/events`, `/preview`) go without the token.
    pub public_reads: bool,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: u64,
    /// Live page clients (`GET /events`) served at once.
    pub max_event_clients: usize,
    /// Connections at once (at most half the process's file descriptors): beyond it the one
    /// that has waited longest without a request is closed, or the new one answered `503`.
    pub max_connections: usize,
    /// Time from connect to a complete request head, in milliseconds.
    pub header_timeout_ms: u64,
    /// Time for a request's body to arrive, in milliseconds.
    pub body_timeout_ms: u64,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8450)),
            token_file: None,
            public_reads: false,
            max_body_bytes: 64 * 1024,
            max_event_clients: 64,
            max_connections: 256,
            header_timeout_ms: 5000,
            body_timeout_ms: 10_000,
        }
    }
}

impl ControlConfig {
    /// Refuses a listen address beyond loopback without a token, and sizes out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.listen.ip().is_loopback() && self.token_file.is_none() {
            return Err(ConfigError::new(
                "control.listen",
                format!(
                    "{} is beyond loopback: set control.token_file (a bearer token) first, \
                     or listen on 127.0.0.1",
                    self.listen
                ),
            ));
        }
        if !(256..=16 << 20).contains(&self.max_body_bytes) {
            return Err(ConfigError::new(
                "control.max_body_bytes",
                "must be between 256 and 16777216",
            ));
        }
        check_range(
            "control.max_event_clients",
            self.max_event_clients as u64,
            1..=1024,
        )?;
        check_range(
            "control.max_connections",
            self.max_connections as u64,
            16..=65_536,
        )?;
        check_range(
            "control.header_timeout_ms",
            self.header_timeout_ms,
            100..=60_000,
        )?;
        check_range(
            "control.body_timeout_ms",
            self.body_timeout_ms,
            100..=600_000,
        )?;
        if self.max_event_clients >= self.max_connections {
            return Err(ConfigError::new(
                "control.max_event_clients",
                "must be below control.max_connections (each live page holds a connection)",
            ));
        }
        Ok(())
    }

    /// The bearer token, if configured: the file's first line, at least 16 characters, in a
    /// file no one but its owner may read.
    pub fn token(&self) -> Result<Option<String>, ConfigError> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let err = |m: String| ConfigError::new("control.token_file", m);
        let meta = std::fs::metadata(path)
            .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(err(format!(
                "{} may be read by others (mode {:o}): chmod 600 it",
                path.display(),
                meta.permissions().mode() & 0o777
            )));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
        let token = text.lines().next().unwrap_or("").trim().to_owned();
        if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(err(format!(
                "{}: the token must be at least 16 printable characters on the first line",
                path.display()
            )));
        }
        Ok(Some(token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beyond_loopback_needs_a_token() {
        let mut c = ControlConfig {
            listen: "0.0.0.0:8450".parse().unwrap(),
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "control.listen");
        c.token_file = Some("/nonexistent".into());
        c.validate().unwrap();
        assert_eq!(c.token().unwrap_err().key, "control.token_file");
    }

    #[test]
    fn the_token_file_must_be_private_and_long_enough() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let c = ControlConfig {
            token_file: Some(path.clone()),
            ..Default::default()
        };
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(c.token().unwrap_err().message.contains("chmod 600"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(c.token().unwrap().as_deref(), Some("0123456789abcdef0123"));
        std::fs::write(&path, "short\n").unwrap();
        assert!(c.token().is_err());
    }
}
